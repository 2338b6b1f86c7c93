"""Multi-label data: each item carries a set of tags (none, one or several).

The pipeline is the multiclass one with the label set as a 0/1 matrix: ``ingest`` reads a list
column (Parquet/JSONL) or a string column split by ``--label-sep``; ``issues`` fits a
one-vs-rest probe out of sample (a kNN vote per tag and a per-tag logistic regression, the
better by cross-validated binary log-loss) and runs cleanlab's multi-label confident learning,
which treats every tag as its own binary problem; per row it names the suspect tags (given but
improbable, missing but probable). ``report`` shows per-tag bars and the tag co-occurrence
matrix, ``select prune`` drops flagged rows and ``train`` fits a sigmoid head with BCE.

References
----------
Northcutt, Jiang, Chuang. "Confident Learning: Estimating Uncertainty in Dataset Labels". JAIR 2021.
Thyagarajan, Snorrason, Northcutt, Mueller. "Identifying Incorrect Annotations in Multi-Label
Classification Data". ICLR 2023 Workshop on Trustworthy ML (arXiv:2211.13895).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelkit.checks._task_common import (DISPLAY_SEP, NO_LABELS, display_labels, rows_from_pairs,  # noqa: F401
                                          tag_lists)
from labelkit.errors import LabelkitError, check_in_range
from labelkit.heads import FitPlan, OutputLoss, Trainer, TrainTargets
from labelkit.tasks.base import (TASK_LABEL_COL, IssuesOptions, ProbeInputs, ProbeOutput, Targets, TaskSpec, TaskType,
                                 register)

LABELS_COLUMN = "labels"  # items column: list<string>, the row's tags in class order
LABELS_CANDIDATES = ("labels", "tags", "label", "categories")
KNN_K_GRID = (5, 10, 20, 40)
KNN_SMOOTHING_GRID = (0.01, 0.03, 0.1, 0.3)
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
MAX_SELECTION_ROWS = 20_000
LBFGS_MAX_VALUES = 20_000_000  # rows x features below which a logistic fit is one full-batch L-BFGS
FILTER_BY = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
             "low_normalized_margin", "low_self_confidence")
RANK_BY = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
Progress = Callable[[int, "int | None"], None]


# ---------------------------------------------------------------------------------------------
# Ingest


def parse_labels(values, *, sep: str = ";", column: str = "labels", source=None) -> tuple[pa.ListArray, list[str]]:
    """Return (each row's tags as a list<string> in class order, the classes) from a label column.

    A cell is a list (Parquet list, JSON array) or a string split at `sep`; tags are stripped of
    surrounding whitespace, blank tags dropped and repeats kept once. A missing or empty cell is
    a row with no tags, which is valid. Column-wise in Arrow: no Python object per row unless the
    column mixes lists and strings.
    """
    from labelkit.workspace import sort_classes

    if not isinstance(sep, str) or not sep:
        raise LabelkitError(f"The 'label_sep' parameter of ingest must be a non-empty string. Got {sep!r} instead.")
    n = len(values)
    try:
        arr = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        arr = None
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr is not None and (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        lists = pc.split_pattern(arr.cast(pa.string()), sep)
    elif arr is not None and (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        lists = arr
    elif arr is not None and pa.types.is_null(arr.type):
        lists = pa.array([[]] * n, pa.list_(pa.string()))
    else:  # mixed lists and strings, numbers: cell by cell
        lists = pa.array([_cell_tags(v, sep, column, source, i) for i, v in enumerate(values)], pa.list_(pa.string()))
    lists = lists.fill_null(pa.scalar([], lists.type))
    flat = lists.flatten()
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    if not (pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type)):
        try:
            flat = flat.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise LabelkitError(f"Column {column!r} of {source}: labels must be strings or lists of strings; "
                                f"got {lists.type}.") from None
    flat = pc.utf8_trim_whitespace(flat.cast(pa.string()))
    keep = pc.and_(pc.is_valid(flat), pc.not_equal(flat, "")).fill_null(False)
    flat, parents = flat.filter(keep), parents[keep.to_numpy(zero_copy_only=False)]
    classes = sort_classes(pc.unique(flat).to_pylist()) if len(flat) else []
    return rows_from_pairs(n, parents, _positions(flat, classes), classes), classes


def _cell_tags(value, sep: str, column: str, source, row: int) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return value.split(sep)
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value if v is not None]
    if isinstance(value, (int, float, np.integer, np.floating)):
        return [str(int(value)) if float(value).is_integer() else str(value)]
    raise LabelkitError(f"Row {row + 1} of column {column!r} in {source}: labels must be a list or a string; "
                        f"got {type(value).__name__}.")


def _positions(values: pa.Array, value_set: Sequence[str]) -> np.ndarray:
    if not len(value_set):
        return np.full(len(values), -1, np.int64)
    return pc.index_in(values, value_set=pa.array(value_set, pa.string())).fill_null(-1).to_numpy(
        zero_copy_only=False).astype(np.int64)


def lists_from_display(display: pa.Array) -> pa.ListArray:
    """Return the tag lists of display labels (inverse of :func:`display_labels`): "a; b" → [a, b],
    "(no labels)" → [] (Arrow kernels, no Python loop over rows)."""
    list_type = pa.list_(pa.string())
    return pc.if_else(pc.equal(display, NO_LABELS), pa.scalar([], list_type),
                      pc.split_pattern(display, DISPLAY_SEP)).cast(list_type)


def multi_hot(lists: pa.ListArray | pa.ChunkedArray, classes: Sequence[str]) -> np.ndarray:
    """Return the (n, K) bool matrix of a list<string> column (tags outside `classes` are ignored)."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    n = len(lists)
    Y = np.zeros((n, len(classes)), bool)
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    cid = _positions(lists.flatten(), classes)
    Y[parents[cid >= 0], cid[cid >= 0]] = True
    return Y


def prepare_table(df, source, *, options: dict):
    """Return (df with the display-label column, TaskSpec) for a multi-label table (see labelkit.tasks)."""
    col = options.get("labels_col") or options.get("label_col")
    if col is None:
        lower = {str(c).lower(): c for c in df.columns}
        col = next((lower[c] for c in LABELS_CANDIDATES if c in lower), None)
        if col is None:
            raise LabelkitError(f"No labels column found in {source} (looked for {', '.join(LABELS_CANDIDATES)}); "
                                f"pass --labels-col. Available columns: {', '.join(map(str, df.columns))}.")
    if col not in df.columns:
        raise LabelkitError(f"Labels column {col!r} not found in {source}; available columns: "
                            f"{', '.join(map(str, df.columns))}.")
    sep = options.get("label_sep") or ";"
    lists, classes = parse_labels(df[col], sep=sep, column=col, source=source)
    if not classes:
        raise LabelkitError(f"Column {col!r} of {source} holds no labels in any row (separator {sep!r}).")
    df = df.copy()
    df[TASK_LABEL_COL] = display_labels(lists).to_pandas().to_numpy()
    tags_per_row = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    return df, TaskSpec(task="multilabel", classes=classes, columns={LABELS_COLUMN: lists},
                        manifest={"multilabel": {"labels_col": col, "label_sep": sep,
                                                 "rows_without_labels": int((tags_per_row == 0).sum()),
                                                 "mean_labels_per_row": float(tags_per_row.mean()) if len(df) else 0.0}})


# ---------------------------------------------------------------------------------------------
# One-vs-rest out-of-sample probabilities


@dataclass
class OvrChoice:
    """Which one-vs-rest probe produced the probabilities, and how every candidate scored (mean binary log-loss)."""

    chosen: str
    family: str
    C: float | None = None
    k: int | None = None
    smoothing: float | None = None
    n_folds: int = 0
    cv_log_loss: dict[str, float] = field(default_factory=dict)
    cv_accuracy: float | None = None  # share of right (row, tag) decisions at 0.5 on the selection rows
    selection_rows: int = 0
    rows: int = 0
    holdout_rows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _binary_log_loss(Y: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(probs.astype(np.float64), 1e-6, 1 - 1e-6)
    return float(-np.mean(np.where(Y, np.log(p), np.log1p(-p))))


def _tag_priors(Y: np.ndarray, fold_of: np.ndarray, train: np.ndarray, n_folds: int) -> np.ndarray:
    """Return the tag frequency of each fold's training rows, shape (n_folds + 1, K); the last row is all training rows'."""
    total = Y[train].sum(0, dtype=np.float64)
    out = np.empty((n_folds + 1, Y.shape[1]), np.float32)
    for f in range(n_folds):
        in_f = train[fold_of[train] == f]
        rest = len(train) - len(in_f)
        out[f] = (total - Y[in_f].sum(0)) / max(1, rest)
    out[n_folds] = total / max(1, len(train))
    return np.clip(out, 1e-4, 1 - 1e-4)


def _knn_tag_fractions(idx: np.ndarray, valid: np.ndarray, Y: np.ndarray, k: int,
                       chunk_values: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """Return (share of each row's first k valid neighbours carrying each tag, (n, K) float32; neighbours used)."""
    n, kk = idx.shape
    K = Y.shape[1]
    use = valid & (np.cumsum(valid, axis=1) <= k)
    used = use.sum(1)
    out = np.empty((n, K), np.float32)
    step = max(1, chunk_values // max(1, kk * K))
    Yf = Y.astype(np.float32)
    for s in range(0, n, step):
        u = use[s:s + step].astype(np.float32)
        out[s:s + step] = np.einsum("rj,rjk->rk", u, Yf[np.maximum(idx[s:s + step], 0)])
    out /= np.maximum(used, 1)[:, None]
    return out, used


def _knn_probs(fractions, used, prior, smoothing) -> np.ndarray:
    out = (1.0 - smoothing) * fractions + smoothing * prior
    out[used == 0] = prior[used == 0]
    return out.astype(np.float32)


def _fit_predict_logistic(X: np.ndarray, Y: np.ndarray, train: np.ndarray, test: np.ndarray, *, C: float,
                          seed: int, device: str = "cpu") -> np.ndarray:
    """Return per-tag sigmoid probabilities for rows `test` of K logistic regressions fit on rows `train`.

    One linear layer with a sigmoid per tag on standardised features, minimising the sum over tags
    of scikit-learn's LogisticRegression objective: mean binary cross-entropy + ||W||² / (2 C n).
    Full-batch L-BFGS while the training rows fit in memory, minibatch Adam above.
    """
    import torch

    threads = torch.get_num_threads()
    # Small fits are slower on several threads than on one (synchronisation dominates), as in labelkit.probe.
    if device == "cpu" and min(len(train), 4096) * X.shape[1] < (1 << 20):
        torch.set_num_threads(1)
    try:
        return _fit_predict_logistic_inner(X, Y, train, test, C=C, seed=seed, device=device)
    finally:
        torch.set_num_threads(threads)


def _fit_predict_logistic_inner(X, Y, train, test, *, C: float, seed: int, device: str) -> np.ndarray:
    import torch

    from labelkit.probe import _epochs_for, _moments

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    mean, std = _moments(X, train)
    mean_t, std_t = torch.as_tensor(mean, device=device), torch.as_tensor(std, device=device)
    batch = lambda rows: (torch.as_tensor(X[rows], device=device) - mean_t) / std_t
    d, K = X.shape[1], Y.shape[1]
    model = torch.nn.Linear(d, K).to(device)
    torch.nn.init.zeros_(model.weight)
    prior = np.clip(Y[train].mean(0), 1e-3, 1 - 1e-3)
    with torch.no_grad():
        model.bias.copy_(torch.as_tensor(np.log(prior / (1 - prior)), dtype=torch.float32))
    penalty = 1.0 / (2.0 * C * len(train))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    if len(train) * d <= LBFGS_MAX_VALUES:
        Xt, Yt = batch(train), torch.as_tensor(Y[train], dtype=torch.float32, device=device)
        opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=200, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

        def closure():
            opt.zero_grad()
            loss = bce(model(Xt), Yt, reduction="sum") / len(train) + penalty * model.weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
    else:
        batch_size = 4096
        epochs = _epochs_for(len(train), batch_size, steps=400, low=2, high=30)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        for _ in range(epochs):
            order = train[torch.randperm(len(train), generator=g).numpy()]
            for s in range(0, len(order), batch_size):
                rows = np.sort(order[s:s + batch_size])
                target = torch.as_tensor(Y[rows], dtype=torch.float32, device=device)
                loss = bce(model(batch(rows)), target, reduction="sum") / len(rows) + penalty * model.weight.square().sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
    out = np.empty((len(test), K), np.float32)
    with torch.no_grad():
        for s in range(0, len(test), 65536):
            rows = test[s:s + 65536]
            out[s:s + len(rows)] = torch.sigmoid(model(batch(rows))).float().cpu().numpy()
    return out


def _neighbour_index(X: np.ndarray, k: int, device: str) -> np.ndarray:
    from labelkit.neighbors import find_nearest_neighbors

    idx, _ = find_nearest_neighbors(X, k=int(min(k, len(X) - 1)), device=device)
    return idx


def _search_k(k: int, n_folds: int, holdout_fraction: float = 0.0) -> int:
    keep = (1 - 1 / n_folds) * (1 - holdout_fraction)
    return int(math.ceil(k / max(keep, 0.05) * 1.2)) + 5


def get_multilabel_out_of_sample_probs(embeddings: np.ndarray, labels: np.ndarray, *, holdout: np.ndarray | None = None,
                                       n_folds: int = 5, probe: str = "auto", C_grid: Sequence[float] = C_GRID,
                                       k_grid: Sequence[int] = KNN_K_GRID,
                                       max_selection_rows: int = MAX_SELECTION_ROWS, device: str = "cpu",
                                       seed: int = 0, progress: Progress | None = None,
                                       ) -> tuple[np.ndarray, np.ndarray, OvrChoice]:
    """Return (per-tag probabilities of shape (n_samples, n_tags) float32, fold per row, the probe chosen).

    One-vs-rest: each tag is its own binary problem and probabilities need not sum to 1. Two
    candidate families run on the same seeded folds of a subsample of at most
    `max_selection_rows` non-held-out rows: a kNN vote per tag (the share of a row's nearest
    training rows carrying the tag, smoothed towards the tag's training frequency; k and the
    smoothing on a grid, one neighbour search for all) and a per-tag logistic regression (C on a
    grid, walked upwards while the log-loss improves). The lowest mean binary log-loss wins; if
    the subsample is every training row its out-of-fold probabilities are kept, otherwise one
    k-fold at the chosen setting runs over all rows. Held-out rows are never trained on: they are
    predicted by a model fit on all other rows (fold -1).

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, n_features)
    labels : ndarray of bool of shape (n_samples, n_tags)
        The given tags (multi-hot). Rows of `holdout` are never read.
    holdout : ndarray of bool of shape (n_samples,), optional
    probe : {'auto', 'knn', 'logreg'}
        Other values of :data:`labelkit.probe.PROBES` ('sklearn', 'torch', 'mlp') mean logistic regression here.
    max_selection_rows : int

    Returns
    -------
    pred_probs : ndarray of shape (n_samples, n_tags), float32
    fold : ndarray of int16 of shape (n_samples,)
    choice : OvrChoice
    """
    Y = np.asarray(labels, bool)
    n, K = Y.shape
    from labelkit.tasks._common import probe_training_rows

    holdout, train, X = probe_training_rows(embeddings, holdout, n, n_folds=n_folds,
                                            max_selection_rows=max_selection_rows,
                                            caller="get_multilabel_out_of_sample_probs", rows_word="rows",
                                            probe_name=f"a {n_folds}-fold one-vs-rest probe")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    fold_of = np.full(n, -1, np.int16)
    fold_of[train[rng.permutation(len(train))]] = np.arange(len(train)) % n_folds
    sel = train if len(train) <= max_selection_rows else np.sort(rng.choice(train, max_selection_rows, replace=False))
    families = {"knn": ("knn",), "auto": ("knn", "logreg")}.get(probe, ("logreg",))
    done = [0]

    def tick():
        done[0] += 1
        if progress:
            progress(done[0], None)

    Xs, Ys, fs = X[sel], Y[sel], fold_of[sel]
    all_sel = np.arange(len(sel))
    priors = _tag_priors(Ys, fs, all_sel, n_folds)
    scores: dict[str, float] = {}
    best: tuple[float, dict, np.ndarray] | None = None
    if "knn" in families:
        idx = _neighbour_index(Xs, _search_k(max(k_grid), n_folds), device)
        valid = fs[idx] != fs[:, None]
        for k in sorted(k_grid):
            fractions, used = _knn_tag_fractions(idx, valid, Ys, int(k))
            for s in KNN_SMOOTHING_GRID:
                probs = _knn_probs(fractions, used, priors[fs], s)
                setting = {"family": "knn", "k": int(k), "smoothing": float(s)}
                loss = scores[f"knn k={k} smoothing={s:g}"] = _binary_log_loss(Ys, probs)
                if best is None or loss < best[0]:
                    best = (loss, setting, probs)
        tick()
    if "logreg" in families:
        family_best = np.inf
        for C in sorted(C_grid):
            probs = np.empty((len(sel), K), np.float32)
            for f in range(n_folds):
                tr, te = np.flatnonzero(fs != f), np.flatnonzero(fs == f)
                probs[te] = _fit_predict_logistic(Xs, Ys, tr, te, C=float(C), seed=seed, device=device)
                tick()
            loss = scores[f"logreg C={C:g}"] = _binary_log_loss(Ys, probs)
            if best is None or loss < best[0]:
                best = (loss, {"family": "logreg", "C": float(C)}, probs)
            if loss >= family_best:  # unimodal in C in practice
                break
            family_best = loss
    _, setting, sel_probs = best
    selection_seconds = time.perf_counter() - started
    out = np.zeros((n, K), np.float32)
    if len(sel) == len(train):
        out[sel] = sel_probs
        held = np.flatnonzero(holdout)
        if len(held):
            out[held] = _predict(setting, X, Y, fold_of, holdout, n_folds, device=device, seed=seed, held_only=True)
    else:
        out = _predict(setting, X, Y, fold_of, holdout, n_folds, device=device, seed=seed, held_only=False)
    name = (f"knn k={setting['k']} smoothing={setting['smoothing']:g}" if setting["family"] == "knn"
            else f"logreg C={setting['C']:g}")
    choice = OvrChoice(chosen=name, family=setting["family"], C=setting.get("C"), k=setting.get("k"),
                       smoothing=setting.get("smoothing"), n_folds=n_folds, cv_log_loss=scores,
                       cv_accuracy=float(((sel_probs >= 0.5) == Ys).mean()),
                       selection_rows=len(sel), rows=n, holdout_rows=int(holdout.sum()),
                       seconds={"selection": round(selection_seconds, 3),
                                "total": round(time.perf_counter() - started, 3)})
    return out, fold_of, choice


def _predict(setting: dict, X, Y, fold_of, holdout, n_folds: int, *, device: str, seed: int,
             held_only: bool) -> np.ndarray:
    """Return probabilities at `setting`: in-fold rows from the other folds' fit, held-out rows from all training rows."""
    n, K = Y.shape
    train = np.flatnonzero(~holdout)
    held = np.flatnonzero(holdout)
    if setting["family"] == "knn":
        idx = _neighbour_index(X, _search_k(setting["k"], n_folds, len(held) / n), device)
        own = np.where(holdout, -1, fold_of).astype(np.int32)
        valid = (~holdout[idx]) & ((own[:, None] < 0) | (fold_of[idx] != own[:, None]))
        fractions, used = _knn_tag_fractions(idx, valid, np.where(holdout[:, None], False, Y), setting["k"])
        priors = _tag_priors(Y, fold_of, train, n_folds)
        probs = _knn_probs(fractions, used, priors[np.where(holdout, n_folds, fold_of)], setting["smoothing"])
        return probs[held] if held_only else probs
    if held_only:
        return _fit_predict_logistic(X, Y, train, held, C=setting["C"], seed=seed, device=device)
    out = np.zeros((n, K), np.float32)
    for f in range(n_folds):
        tr, te = train[fold_of[train] != f], train[fold_of[train] == f]
        out[te] = _fit_predict_logistic(X, Y, tr, te, C=setting["C"], seed=seed, device=device)
    if len(held):
        out[held] = _fit_predict_logistic(X, Y, train, held, C=setting["C"], seed=seed, device=device)
    return out


# ---------------------------------------------------------------------------------------------
# Label issues


def _cleanlab_labels(Y: np.ndarray) -> list[list[int]]:
    """Return cleanlab's multi-label format (a list of class-index lists) of a multi-hot matrix."""
    rows, cid = np.nonzero(Y)
    offsets = np.searchsorted(rows, np.arange(1, len(Y)))
    return [part.tolist() for part in np.split(cid, offsets)]


def find_multilabel_label_issues(labels: np.ndarray, pred_probs: np.ndarray, *,
                                 filter_by: str = "prune_by_noise_rate", rank_by: str = "self_confidence") -> dict:
    """Return cleanlab's multi-label verdicts: flagged rows, quality per row, and which tag of each row is suspect.

    Confident learning runs per tag (one-vs-rest, as cleanlab's multi-label module does): tag k
    of row i is suspect when the binary problem "has tag k" flags row i, i.e. the tag is given but
    confidently absent, or missing but confidently present. A row is a label issue when any of its
    tags is (`cleanlab.multilabel_classification.filter.find_label_issues`).

    Parameters
    ----------
    labels : ndarray of bool of shape (n_samples, n_tags)
    pred_probs : ndarray of shape (n_samples, n_tags)
        Out-of-sample probability of each tag (need not sum to 1).
    filter_by, rank_by : str
        As in cleanlab.

    Returns
    -------
    dict with ``is_label_issue`` (bool, n), ``label_quality`` (float in [0, 1], lower is worse;
    cleanlab's multi-label score), ``suspect`` (bool, n x K: tag k of row i is suspect),
    ``suggested`` (bool, n x K: the given tags with the suspect ones flipped), ``health_score``
    (cleanlab's overall multi-label health: 1 - share of flagged rows) and ``per_tag`` (a list of
    dicts: count, given-but-suspect, missing-but-suspect, tag quality).

    References
    ----------
    Thyagarajan, Snorrason, Northcutt, Mueller. "Identifying Incorrect Annotations in Multi-Label
    Classification Data". arXiv:2211.13895, 2022.
    """
    from cleanlab.multilabel_classification import rank
    from cleanlab.multilabel_classification.filter import find_label_issues, find_multilabel_issues_per_class

    from labelkit.errors import parameter_error

    for name, value, allowed in (("filter_by", filter_by, FILTER_BY), ("rank_by", rank_by, RANK_BY)):
        if value not in allowed:
            raise parameter_error(name, "find_multilabel_label_issues", f"one of {', '.join(allowed)}", value)
    Y = np.asarray(labels, bool)
    probs = np.clip(np.asarray(pred_probs, np.float64), 0.0, 1.0)
    cl_labels = _cleanlab_labels(Y)
    # n_jobs=1: cleanlab's process pool costs more than it saves on K binary problems of this size.
    if filter_by.startswith("low_"):
        # These filters rank rows instead of flagging tags; the tags are then named by confident learning.
        import warnings

        with warnings.catch_warnings():  # cleanlab calls its own deprecated multi_label path here
            warnings.simplefilter("ignore", DeprecationWarning)
            mask = np.asarray(find_label_issues(cl_labels, probs, filter_by=filter_by, n_jobs=1), bool)
        suspect = np.asarray(find_multilabel_issues_per_class(cl_labels, probs, filter_by="confident_learning",
                                                              n_jobs=1), bool) & mask[:, None]
        # A flagged row always names at least one tag: the one its probabilities contradict most.
        none = mask & ~suspect.any(1)
        worst = np.abs(Y[none].astype(np.float64) - probs[none]).argmax(1)
        suspect[np.flatnonzero(none), worst] = True
    else:
        # For every other filter cleanlab's find_label_issues is exactly the OR over tags of these
        # per-tag verdicts (cleanlab.filter._find_label_issues_multilabel): computed once, not twice.
        suspect = np.asarray(find_multilabel_issues_per_class(cl_labels, probs, filter_by=filter_by, n_jobs=1), bool)
        mask = suspect.any(1)
    quality = np.asarray(rank.get_label_quality_scores(cl_labels, probs, method=rank_by), np.float64)
    return {"is_label_issue": mask, "label_quality": quality, "suspect": suspect, "suggested": Y ^ suspect,
            "health_score": float(1.0 - mask.mean()) if len(mask) else None,
            "per_tag": per_tag_counts(Y, suspect), "cl": {"filter_by": filter_by, "rank_by": rank_by}}


def per_tag_counts(Y: np.ndarray, suspect: np.ndarray) -> dict[str, np.ndarray]:
    """Return per-tag counts: rows with the tag, given-but-suspect, missing-but-suspect, and the tag's quality.

    A tag's quality is the Jaccard agreement of the rows that carry it and the rows that should
    (given ∩ suggested / given ∪ suggested), in [0, 1]; 1 when cleanlab disputes none of them.
    These are the counts of ``cleanlab.multilabel_classification.dataset.common_multilabel_issues``
    ("In Given Label" True / False), from the same per-tag verdicts.
    """
    count = Y.sum(0)
    given_bad = (Y & suspect).sum(0)
    missing_bad = (~Y & suspect).sum(0)
    union = count + missing_bad
    quality = np.where(union > 0, (count - given_bad) / np.maximum(union, 1), 1.0)
    return {"count": count, "given_suspect": given_bad, "missing_suspect": missing_bad, "quality": quality}


# ---------------------------------------------------------------------------------------------
# The user's own probabilities


def load_multilabel_pred_probs(path, *, ids: pa.Array, usable: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Return the user's per-tag probabilities for the usable rows, columns in workspace tag order.

    A ``.npy`` matrix, or a CSV/Parquet table with an optional ``id`` column and either a
    ``pred_probs`` list column or one column per tag (named by the tags, any order; unnamed
    columns, or columns numbered 0..K-1, are taken in workspace order; any other header is an error
    naming the first unknown column). One row per item or per usable item, or keyed by id.
    Every value must be a finite probability in [0, 1]; rows need not sum to 1.
    """
    from pathlib import Path

    from labelkit.predfile import read_pred_probs_file

    path = Path(path)
    matrix, row_ids, names = read_pred_probs_file(path)
    K = len(classes)
    if (names is not None and set(names) != set(classes) and names != [str(k) for k in range(len(names))]
            and not all(n.startswith("Unnamed: ") for n in names)):
        # Named columns must be the tags: a header that is not is never read in workspace order.
        unknown = next((n for n in names if n not in classes), None)
        what = f"unknown column {unknown!r}" if unknown is not None else f"{len(names)} columns for {K} tags"
        raise LabelkitError(f"--pred-probs {path}: {what}; name the columns by the workspace's tags "
                            f"({', '.join(classes[:8])}{', …' if K > 8 else ''}), or number them 0..{K - 1}.")
    if matrix.ndim != 2 or matrix.shape[1] != K:
        raise LabelkitError(f"--pred-probs {path} must be a matrix with one column per tag ({K}: "
                            f"{', '.join(classes[:8])}{', …' if K > 8 else ''}); got shape {matrix.shape}.")
    if names is not None and set(names) == set(classes):
        matrix = matrix[:, [names.index(c) for c in classes]]
    source_rows = np.flatnonzero(usable)
    usable_ids = ids.filter(pa.array(usable)) if not usable.all() else ids
    if row_ids is not None:
        position = _positions(usable_ids, row_ids)
        if (position < 0).any():
            first = int(np.flatnonzero(position < 0)[0])
            raise LabelkitError(f"--pred-probs {path} has no row for id {usable_ids[first].as_py()!r} "
                                f"({int((position < 0).sum())} usable items missing).")
        matrix = matrix[position]
    elif len(matrix) == len(ids):
        matrix = matrix[usable]
    elif len(matrix) != len(source_rows):
        raise LabelkitError(f"--pred-probs {path} has {len(matrix)} rows; expected {len(ids)} (one per item) or "
                            f"{len(source_rows)} (one per usable item), or an 'id' column.")
    bad = ~(np.isfinite(matrix) & (matrix >= 0) & (matrix <= 1)).all(1)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise LabelkitError(f"--pred-probs {path}: the row for id {usable_ids[r].as_py()!r} has a value that is not a "
                            "probability in [0, 1] (per-tag sigmoid outputs, not logits).")
    return matrix


# ---------------------------------------------------------------------------------------------
# The issues verb for multi-label workspaces


def label_set_codes(Y: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Return (an int64 id of each row's tag set, the display label of each distinct set).

    The shared checks compare labels as ids (duplicates and texts with different labels): for
    multi-label rows two labels are equal when the whole tag sets are.
    """
    if not len(Y):
        return np.zeros(0, np.int64), []
    packed = np.packbits(Y, axis=1) if Y.shape[1] else np.zeros((len(Y), 1), np.uint8)
    distinct, codes = np.unique(packed, axis=0, return_inverse=True)
    sets = np.unpackbits(distinct, axis=1, count=Y.shape[1]).astype(bool) if Y.shape[1] else np.zeros((len(distinct), 0), bool)
    return codes.reshape(-1).astype(np.int64), display_labels(tag_lists(sets, classes)).to_pylist()


def read_multilabel_items(ws, classes: Sequence[str]) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Return (items table, usable-row mask, multi-hot tags of the usable rows) of a multi-label workspace."""
    items = ws.read_items_table()
    if LABELS_COLUMN not in items.column_names:
        raise LabelkitError(f"{ws.items_path} has no {LABELS_COLUMN!r} column; run `labelkit ingest --task multilabel` "
                            "again.")
    usable = items.column("error").is_null().to_numpy(zero_copy_only=False)
    lists = items.column(LABELS_COLUMN).combine_chunks()
    return items, usable, multi_hot(lists.filter(pa.array(usable)) if not usable.all() else lists, classes)


def rare_tag_warnings(Y: np.ndarray, held: np.ndarray, classes: Sequence[str], n_folds: int) -> list[str]:
    """Return the warning for tags with fewer training rows than folds (their verdicts rest on little evidence)."""
    train_counts = Y[~held].sum(0)
    rare = [f"{classes[k]} ({int(train_counts[k])} rows)" for k in np.flatnonzero(train_counts < n_folds)]
    if not rare:
        return []
    return [f"{len(rare)} tag(s) have fewer than {n_folds} training rows; their verdicts rest on very little "
            "evidence: " + ", ".join(rare[:10]) + (", …" if len(rare) > 10 else "") + "."]


@register
class Multilabel(TaskType):
    """A set of tags per item: the one-vs-rest probe and cleanlab's multi-label confident learning.

    ``issues.parquet`` holds the core columns (``given_label`` and ``suggested_label`` are display
    labels "a; b"), ``given_labels`` and the multi-label check's per-row tag lists.
    """

    name = "multilabel"
    label_check = "multilabel_label_issues"

    def prepare_table(self, df, source, *, options: dict):
        return prepare_table(df, source, options=options)

    def check_options(self, options: IssuesOptions) -> None:
        super().check_options(options)
        if options.classes_file is not None:
            raise LabelkitError("--classes-file is not used with --task multilabel: the tags found at ingest are the "
                                "classes.")

    def read_targets(self, ws, manifest: dict, items: pa.Table) -> Targets:
        classes = list(manifest["classes"])
        if LABELS_COLUMN not in items.column_names:
            raise LabelkitError(f"{ws.items_path} has no {LABELS_COLUMN!r} column; run `labelkit ingest --task "
                                "multilabel` again.")
        usable = items.column("error").is_null().to_numpy(zero_copy_only=False)
        lists = items.column(LABELS_COLUMN).combine_chunks()
        Y = multi_hot(lists.filter(pa.array(usable)) if not usable.all() else lists, classes)
        # The shared checks compare labels as ids: two multi-label rows agree when their whole tag sets do.
        set_codes, set_names = label_set_codes(Y, classes)
        return Targets(usable=usable, values=Y, classes=classes, check_labels=set_codes, check_classes=set_names)

    def load_pred_probs(self, path, *, ids: pa.Array, targets: Targets, held: np.ndarray,
                        options: IssuesOptions) -> ProbeOutput:
        probs = load_multilabel_pred_probs(path, ids=ids, usable=targets.usable, classes=targets.classes)
        return ProbeOutput(probs, np.full(targets.n, -1, np.int16), "user",
                           warnings=rare_tag_warnings(targets.values, held, targets.classes, options.n_folds))

    def probe(self, targets: Targets, inputs: ProbeInputs) -> ProbeOutput:
        from labelkit.neighbors import phase_progress

        opts = inputs.options
        probs, folds, choice = get_multilabel_out_of_sample_probs(
            inputs.embeddings, targets.values, holdout=inputs.held, n_folds=opts.n_folds, probe=opts.probe,
            device=inputs.device, seed=opts.seed, progress=phase_progress(inputs.progress, "probe"))
        return ProbeOutput(probs, folds, "probe", info=choice.to_dict(),
                           warnings=rare_tag_warnings(targets.values, inputs.held, targets.classes, opts.n_folds))

    def find_issues(self, targets: Targets, out: ProbeOutput, options: IssuesOptions, progress) -> dict:
        return find_multilabel_label_issues(targets.values, out.predictions, filter_by=options.filter_by,
                                            rank_by=options.rank_by)

    def check_inputs(self, targets: Targets, out: ProbeOutput, found: dict) -> dict:
        return {"pred_probs": out.predictions, "label_issues": found, "tags": targets.classes,
                "tag_labels": targets.values}

    def issues_columns(self, targets: Targets, found: dict) -> dict:
        given_lists = tag_lists(targets.values, targets.classes)
        return {"given_label": display_labels(given_lists), "given_labels": given_lists}

    def summary(self, targets: Targets, out: ProbeOutput, found: dict, *, n_rows: int) -> dict:
        return multilabel_summary(targets.values, targets.classes, out.predictions, found, n_rows=n_rows)

    def top_issues(self, ids: pa.Array, targets: Targets, found: dict, limit: int = 20) -> list[dict]:
        Y, classes = targets.values, targets.classes
        flagged = np.flatnonzero(found["is_label_issue"])
        flagged = flagged[np.argsort(found["label_quality"][flagged], kind="stable")][:limit]
        suggested_display = display_labels(tag_lists(found["suggested"][flagged], classes)).to_pylist()
        given_display = display_labels(tag_lists(Y[flagged], classes)).to_pylist()
        return [{"id": ids[int(i)].as_py(), "given_label": g, "suggested_label": s,
                 "label_quality": round(float(found["label_quality"][i]), 4)}
                for i, g, s in zip(flagged.tolist(), given_display, suggested_display)]

    # --- select / train / report / explain ----------------------------------------------------

    def prune_rows(self, ws, issues_df, keep: np.ndarray):
        return prune_rows(ws, issues_df, keep)

    def trainer(self, request):
        return MultilabelTrainer(request)

    def report_data(self, ws) -> tuple[dict, dict]:
        return report_data(ws)

    def explain_fields(self, ws, row_id: str, issue_row: dict | None, *, top_classes: int) -> dict:
        # Tags are scored independently: the row's own tags are listed too, so a given tag the
        # probe doubts is shown even when it is not among the most likely.
        from labelkit.tasks._classify import top_probabilities

        also = (issue_row or {}).get("given_labels") or []
        return {"probabilities": top_probabilities(ws, row_id, top_classes, also=also)}


def multilabel_summary(Y: np.ndarray, classes: Sequence[str], probs: np.ndarray, found: dict, *, n_rows: int) -> dict:
    """Return the multi-label part of the issues summary: counts per tag, probe agreement, tag frequencies."""
    n, K = Y.shape
    flags = found["is_label_issue"]
    per_tag = found["per_tag"]
    quality_sum = found["label_quality"] @ Y
    per_class = {c: {"count": int(per_tag["count"][k]), "label_issues": int(per_tag["given_suspect"][k]),
                     "missing_label_issues": int(per_tag["missing_suspect"][k]),
                     "issue_rate": float(per_tag["given_suspect"][k] / per_tag["count"][k]) if per_tag["count"][k]
                     else None,
                     "tag_quality": float(per_tag["quality"][k]),
                     "mean_label_quality": float(quality_sum[k] / per_tag["count"][k]) if per_tag["count"][k] else None}
                 for k, c in enumerate(classes)}
    present = per_tag["count"][per_tag["count"] > 0]
    return {"rows": n_rows, "usable_rows": n, "unusable_rows": n_rows - n, "n_classes": K, "task": "multilabel",
            "label_issues": int(flags.sum()), "label_issue_rate": float(flags.mean()) if n else None,
            "label_issues_checked_rows": n, "class_counts": {c: int(x) for c, x in zip(classes, per_tag["count"])},
            "per_class": per_class, "rows_without_labels": int((~Y.any(1)).sum()),
            "mean_labels_per_row": float(Y.sum(1).mean()) if n else 0.0,
            # Tag frequencies in the fields the report's facts panel reads for classes.
            "imbalance_ratio": float(present.max() / present.min()) if len(present) else None,
            "class_min_count": int(per_tag["count"].min()) if K else 0,
            # Out of sample: rows whose predicted tag set (probability >= 0.5) is exactly the given set.
            "probe_accuracy": float(((probs >= 0.5) == Y).all(1).mean()) if n else None,
            "probe_tag_accuracy": float(((probs >= 0.5) == Y).mean()) if n and K else None,
            "label_issues_not_measured": None, "confident_learning": found["cl"]}


# ---------------------------------------------------------------------------------------------
# Report


MAX_COOCCURRENCE_TAGS = 40


def cooccurrence(Y: np.ndarray) -> np.ndarray:
    """Return the (K, K) matrix P(tag j | tag i): the share of rows with tag i that also carry tag j."""
    counts = Y.T.astype(np.float32) @ Y.astype(np.float32)
    diag = np.diag(counts).copy()
    return np.divide(counts, diag[:, None], out=np.zeros_like(counts), where=diag[:, None] > 0)


def plot_tag_bars(tags: Sequence[str], counts, given_suspect, missing_suspect):
    """Return an SVG of rows per tag, with the suspect given tags (red) and suspect missing tags (orange)."""
    from labelkit.plots import plot_hbars

    return plot_hbars(tags, [(counts, "#94a3b8", "rows with the tag"), (given_suspect, "#dc2626", "given but suspect"),
                             (missing_suspect, "#f59e0b", "missing but suspect", counts)], pad=0.9)


def plot_cooccurrence(tags: Sequence[str], matrix: np.ndarray):
    """Return an SVG heat map of P(column tag | row tag)."""
    from labelkit.plots import plot_heatmap

    return plot_heatmap(tags, matrix, cmap="Blues", xlabel="also tagged", ylabel="rows tagged",
                        colorbar="P(column tag | row tag)")


def report_data(ws) -> tuple[dict, dict]:
    """Return (the multi-label numbers the report shows as ``task_data``, figures): per-tag bars with
    the suspect tags, the tag co-occurrence matrix (the 40 most frequent tags) and how often the
    probe agrees with each given tag."""
    import pyarrow.parquet as pq

    from labelkit.workspace import require_current

    manifest = ws.read_manifest()
    tags = list(manifest["classes"])
    _, _, Y = read_multilabel_items(ws, tags)
    frequent = np.argsort(-Y.sum(0), kind="stable")
    shown = [tags[k] for k in frequent[:MAX_COOCCURRENCE_TAGS]]
    matrix = cooccurrence(Y[:, frequent[:MAX_COOCCURRENCE_TAGS]])
    data = {"tags": len(tags), "rows": int(len(Y)), "rows_without_labels": int((~Y.any(1)).sum()),
            "mean_labels_per_row": float(Y.sum(1).mean()) if len(Y) else 0.0,
            "cooccurrence": {"tags": shown, "p_column_given_row": np.round(matrix, 4).tolist()},
            "cooccurrence_tags_shown": len(shown)}
    figures = {"multilabel_cooccurrence": plot_cooccurrence(shown, matrix)}
    summary = manifest.get("stages", {}).get("issues")
    if summary is None or not ws.issues_path.exists():
        return data, figures
    require_current(ws, ws.issues_path)
    per = summary["per_class"]
    bars = [tags[k] for k in frequent[:60]]
    figures["multilabel_tags"] = plot_tag_bars(bars, [per[t]["count"] for t in bars],
                                               [per[t]["label_issues"] for t in bars],
                                               [per[t]["missing_label_issues"] for t in bars])
    data |= {"probe": (summary.get("probe") or {}).get("chosen"), "health_score": summary.get("multilabel_health_score"),
             "suspect_given": summary.get("multilabel_suspect_given"),
             "suspect_missing": summary.get("multilabel_suspect_missing"), "flagged": summary.get("label_issues"),
             "per_tag": [{"tag": t, **per[t]} for t in bars]}
    if ws.probs_path.exists():
        require_current(ws, ws.probs_path)
        issue_ids = pq.read_table(ws.issues_path, columns=["id"]).column("id").combine_chunks()
        prob_table = pq.read_table(ws.probs_path, columns=["id", "pred_probs"])
        same_rows = prob_table.column("id").combine_chunks().equals(issue_ids)  # Arrow compare, no Python ids
        if same_rows and len(issue_ids):
            flat = prob_table.column("pred_probs").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            probs = flat.astype(np.float32, copy=False).reshape(len(issue_ids), -1)
        if same_rows and len(issue_ids) and probs.shape == Y.shape:
            predicted = probs >= 0.5
            # Out of sample: rows whose predicted set equals the given set, and per tag the share
            # of the rows given it where the probe agrees (probability >= 0.5).
            data["probe_agreement"] = {
                "exact_set": float((predicted == Y).all(1).mean()),
                "per_tag": {t: float((predicted & Y)[:, k].sum() / Y[:, k].sum()) if Y[:, k].any() else None
                            for k, t in enumerate(tags)}}
            for row in data["per_tag"]:
                row["probe_agrees"] = data["probe_agreement"]["per_tag"][row["tag"]]
    return data, figures


# ---------------------------------------------------------------------------------------------
# select prune


def prune_rows(ws, issues_df, keep: np.ndarray):
    """Return what ``select prune`` writes for a multi-label workspace.

    ``label`` is the display label ("a; b") and ``labels`` the tag list; the class counts are
    per tag (a row counts once for each of its tags).
    """
    from labelkit.tasks.base import PruneRows

    tags = ws.classes()
    if "given_labels" in issues_df:
        given = pa.array(issues_df["given_labels"], pa.list_(pa.string()), from_pandas=True)
    else:
        given = lists_from_display(pa.array(issues_df["given_label"], pa.string(), from_pandas=True))
    Y = multi_hot(given, tags)
    keep = np.asarray(keep, bool)
    kept = given.filter(pa.array(keep))
    counts = lambda M: {t: int(c) for t, c in zip(tags, M.sum(0))}  # noqa: E731
    return PruneRows(label=display_labels(kept), before=counts(Y), after=counts(Y[keep]), columns={LABELS_COLUMN: kept},
                     details={"task": "multilabel", "rows_before": int(len(issues_df))})


# ---------------------------------------------------------------------------------------------
# train


TRAIN_METRICS = {"micro_f1": "held-out micro-averaged F1 over every (row, tag) decision at probability 0.5",
                 "macro_f1": "held-out F1 per tag at probability 0.5, averaged over tags present in the held-out rows",
                 "subset_accuracy": "held-out rows whose predicted tag set equals the given set",
                 "hamming_loss": "held-out share of wrong (row, tag) decisions",
                 "bce": "held-out mean binary cross-entropy per (row, tag)"}


def training_lines(ids: pa.Array, Y: np.ndarray) -> bytes:
    """Return the bytes the training-data hash is taken of: ``"<id>\\t[<tag ids>]"`` per row, joined by newlines.

    Built with Arrow string kernels (no Python loop over rows); equal to
    ``"\\n".join(f"{i}\\t{np.flatnonzero(y).tolist()}" for i, y in zip(ids, Y)).encode()``.
    """
    rows, cid = np.nonzero(Y)
    offsets = np.searchsorted(rows, np.arange(len(Y) + 1)).astype(np.int32)
    tag_ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(cid.astype(np.int64)).cast(pa.string()))
    lines = pc.binary_join_element_wise(ids.cast(pa.string()), pc.binary_join_element_wise(
        "[", pc.binary_join(tag_ids, ", "), "]", ""), "\t")
    if not len(lines):
        return b""
    whole = pa.LargeListArray.from_arrays(pa.array([0, len(lines)], pa.int64()), lines.cast(pa.large_string()))
    return pc.binary_join(whole, pa.scalar("\n", pa.large_string()))[0].as_py().encode()


def multilabel_metrics(probs: np.ndarray, labels: np.ndarray, *, threshold: float = 0.5) -> dict:
    """Return micro/macro F1, subset accuracy, Hamming loss and BCE of per-tag probabilities against tags."""
    Y = np.asarray(labels, bool)
    pred = np.asarray(probs) >= threshold
    tp, fp, fn = (pred & Y).sum(0), (pred & ~Y).sum(0), (~pred & Y).sum(0)
    micro = 2 * tp.sum() / max(1, 2 * tp.sum() + fp.sum() + fn.sum())
    present = (tp + fn) > 0
    per_tag = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(len(tp), np.float64), where=(2 * tp + fp + fn) > 0)
    return {"micro_f1": float(micro), "macro_f1": float(per_tag[present].mean()) if present.any() else None,
            "subset_accuracy": float((pred == Y).all(1).mean()) if len(Y) else None,
            "hamming_loss": float((pred != Y).mean()) if Y.size else None,
            "bce": _binary_log_loss(Y, np.asarray(probs)) if Y.size else None, "rows": int(len(Y))}


class MultilabelTrainer(Trainer):
    """A per-tag sigmoid head with binary cross-entropy, scored on the held-out rows (micro/macro F1).

    ``loss`` 'ce' or 'bce' (both mean BCE here); ``labels`` 'label' (the given tags) or
    'suggested' (the tags after the issues run's suspect ones are flipped); held-out rows are
    scored against the given tags. Early stopping on the BCE of the inner validation rows.
    """

    task = "multilabel"
    metrics_doc = TRAIN_METRICS
    check_example = "micro_f1<0.9"
    link = "sigmoid"
    min_batch = 1
    tolerance = 1e-5
    standardize = False
    all_embedded = True
    value_name = "val_bce"
    item_columns = ("id", LABELS_COLUMN, "content_hash", "error")

    def __init__(self, request):
        super().__init__(request)
        if request.teachers:
            raise LabelkitError("train --task multilabel does not support 'teachers' yet.")
        if request.loss not in ("ce", "bce"):
            raise LabelkitError(f"train --task multilabel trains with binary cross-entropy (--loss bce); "
                                f"--loss {request.loss} is not supported for multi-label data yet.")
        if request.labels not in ("label", "suggested"):
            raise LabelkitError(f"The 'labels' parameter of train must be 'label' or 'suggested' for multi-label data. "
                                f"Got {request.labels!r} instead.")
        self.loss_name = "bce"

    def targets(self, ws, ids, items) -> TrainTargets:
        self.classes = ws.classes()
        Y = multi_hot(items.column(LABELS_COLUMN).combine_chunks(), self.classes)
        Y_train = Y
        if self.request.labels == "suggested":
            import pyarrow.parquet as pq

            from labelkit.arrays import positions
            from labelkit.workspace import require_current

            if not ws.issues_path.exists():
                raise LabelkitError(f"--labels suggested needs `labelkit issues -w {ws.root}` first.")
            require_current(ws, ws.issues_path)
            iss = pq.read_table(ws.issues_path, columns=["id", "suggested_labels"])
            at = positions(iss.column("id").combine_chunks(), pa.array(ids, pa.string()))
            Y_train = Y.copy()
            Y_train[at[at >= 0]] = multi_hot(iss.column("suggested_labels"), self.classes)[at >= 0]
        n = len(Y)
        return TrainTargets(y_train=Y_train, y_eval=Y, trainable=np.ones(n, bool), scored=np.ones(n, bool),
                            strata=np.zeros(n, np.int64))

    def outputs(self, data) -> int:
        return len(self.classes)

    def plan(self, ws, data, fit_ids, Y_fit, X_fit, X_val, Y_val) -> FitPlan:
        import torch

        bce = torch.nn.functional.binary_cross_entropy_with_logits
        device = self.request.device
        Xv = torch.as_tensor(X_val, device=device)
        Yv = torch.as_tensor(Y_val, dtype=torch.float32, device=device)

        def validate(model):
            model.eval()
            with torch.no_grad():
                v = float(bce(model(Xv), Yv)) if len(Xv) else 0.0
            return (v,), v

        return FitPlan(loss=OutputLoss(bce), targets=Y_fit.astype(np.float32), validate=validate)

    def metrics(self, outputs, y_eval) -> dict:
        return multilabel_metrics(outputs, y_eval)

    def hash_lines(self, ids, Y) -> bytes:
        return training_lines(pa.array(list(ids), pa.string()), Y)

    def extras(self) -> dict:
        return {"card": {"monitor": "val_bce"}, "ckpt": {"output": "sigmoid"}}
