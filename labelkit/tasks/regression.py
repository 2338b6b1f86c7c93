"""Regression targets: a numeric label per row, checked against out-of-sample predictions.

``ingest --task regression --label-col COL`` reads a numeric column into the items column
``target`` (float64); a cell that is not a finite number makes its row unusable with the error
``non-numeric target: '<cell>'``. ``issues`` predicts every usable row's target out of sample
(:func:`get_out_of_sample_predictions`: ridge regression and a k-nearest-neighbour regressor on
the embeddings, chosen by cross-validated squared error, held-out rows never fit), scores each
label with cleanlab's regression label quality and flags rows whose residual is an outlier on a
robust scale (:func:`find_regression_issues`). ``report``, ``select prune`` and ``train`` call the
functions at the end of this module.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelkit.checks._task_common import format_numbers, residual_reason, residual_reasons  # noqa: F401  (public API)
from labelkit.errors import LabelkitError, check_in_range
from labelkit.tasks import TASK_LABEL_COL, TaskSpec

# Column names recognised as the target when --label-col is not given (case-insensitive).
TARGET_COLUMNS = ("target", "label", "y", "value", "score")
# --probe values: which candidate families they allow ('logreg' and the engines mean the linear model).
PROBE_FAMILIES = {"auto": ("ridge", "knn"), "logreg": ("ridge",), "sklearn": ("ridge",), "torch": ("ridge",),
                  "knn": ("knn",)}
# Ridge penalties, in units of the mean eigenvalue of the training rows' (standardised) Gram matrix,
# so the grid means the same for any number of rows and features.
ALPHA_GRID = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)
KNN_K_GRID = (5, 10, 20, 40)
MAX_SELECTION_ROWS = 20_000
# The two best families are averaged as a further candidate when their CV errors are this close.
AVERAGE_WITHIN = 0.10
# Modified z-score above which a residual is flagged (Iglewicz & Hoaglin 1993).
Z_THRESHOLD = 3.5
MAD_TO_SIGMA = 1.4826  # MAD × this estimates σ of a normal distribution
Progress = Callable[[int, "int | None"], None]


# ---------------------------------------------------------------------------------------------
# Ingest


def _target_column(columns: list[str], given: str | None, source) -> str:
    if given is not None:
        if given not in columns:
            raise LabelkitError(f"Label column {given!r} not found in {source}; available columns: "
                                f"{', '.join(map(str, columns))}.")
        return given
    lower = {str(c).lower(): c for c in columns}
    for name in TARGET_COLUMNS:
        if name in lower:
            return lower[name]
    raise LabelkitError(f"No target column found in {source} (looked for {', '.join(TARGET_COLUMNS)}); pass "
                        f"--label-col. Available columns: {', '.join(map(str, columns))}.")


def prepare_table(df, source, *, options: dict):
    """Return (df with the display-label column, TaskSpec) for a table with a numeric target column.

    The target column is ``options['label_col']`` or the first of :data:`TARGET_COLUMNS`. Empty
    cells are missing labels (ingest's "missing label"); a cell that does not parse as a finite
    number is the row error ``non-numeric target: '<cell>'``. Items get a ``target`` float64 column.
    """
    import pandas as pd

    col = _target_column(list(df.columns), options.get("label_col"), source)
    raw = df[col]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    missing = raw.isna().to_numpy()
    if raw.dtype == object:  # blank strings are missing, as in ingest
        missing |= raw.astype(str).str.strip().eq("").to_numpy()
    finite = np.isfinite(values)
    bad = ~missing & ~finite
    display = format_numbers(values).to_numpy(zero_copy_only=False).astype(object)
    errors = None
    if bad.any():
        errors = np.full(len(df), None, object)
        for i in np.flatnonzero(bad):  # only the bad rows
            cell = raw.iat[int(i)]
            errors[i] = f"non-numeric target: {str(cell)!r}"
            display[i] = str(cell)  # kept as given, so the row is not also "missing label"
        errors = errors.tolist()
    df[TASK_LABEL_COL] = display
    ok = values[finite]
    stats = ({"min": float(ok.min()), "max": float(ok.max()), "mean": float(ok.mean()), "std": float(ok.std())}
             if len(ok) else {})
    spec = TaskSpec(task="regression", classes=[], errors=errors,
                    columns={"target": pa.array(values, pa.float64(), mask=~finite)},
                    manifest={"target": {"column": str(col), **stats}})
    return df, spec


# ---------------------------------------------------------------------------------------------
# Out-of-sample predictions


@dataclass
class RegressionProbeChoice:
    """Which regression probe produced the out-of-sample predictions, and how every candidate scored.

    ``candidates`` maps each candidate's name to its out-of-fold ``mse``, ``mae`` and ``r2`` on the
    selection rows; the chosen one has the lowest ``mse``.
    """

    chosen: str
    family: str
    alpha: float | None
    k: int | None
    n_folds: int
    candidates: dict[str, dict] = field(default_factory=dict)
    selection_rows: int = 0
    rows: int = 0
    holdout_rows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _ridge_predictions(X: np.ndarray, y: np.ndarray, group: np.ndarray, n_groups: int, fits_on: np.ndarray,
                       alphas: Sequence[float], chunk: int = 65536) -> np.ndarray:
    """Return ridge predictions of shape (n_rows, len(alphas)): the rows of group g from the model fit
    on the `fits_on` rows outside group g (one eigendecomposition per group serves every alpha).

    Features are standardised by the `fits_on` rows; the intercept is not penalised. Only sums per
    group are kept (Gram matrix, feature sums, target sums), so memory is O(groups × d²) besides X.
    Penalties are ``alpha × mean eigenvalue`` of each model's Gram matrix.
    """
    n, d = X.shape
    train_rows = np.flatnonzero(fits_on)
    # probe's private helper, on purpose: the same float64-accumulated mean and std (1 where 0), as float32
    from labelkit.probe import _moments

    mean32, std32 = _moments(X, train_rows, chunk)
    G = np.zeros((n_groups, d, d))
    sx = np.zeros((n_groups, d))
    sxy = np.zeros((n_groups, d))
    sy = np.zeros(n_groups)
    cnt = np.zeros(n_groups)
    for start in range(0, len(train_rows), chunk):
        rows = train_rows[start:start + chunk]
        Z = (X[rows] - mean32) / std32
        g, t = group[rows], y[rows]
        for j in np.unique(g):
            m = g == j
            Zj = Z[m]
            G[j] += (Zj.T @ Zj).astype(np.float64)
            sx[j] += Zj.sum(0, dtype=np.float64)
            sxy[j] += Zj.T.astype(np.float64) @ t[m]
            sy[j] += t[m].sum()
            cnt[j] += m.sum()
    out = np.zeros((n, len(alphas)), np.float64)
    for j in range(n_groups):
        test = np.flatnonzero(group == j)
        if not len(test):
            continue
        keep = np.arange(n_groups) != j
        n_t = cnt[keep].sum()
        if n_t < 2:
            out[test] = sy[keep].sum() / max(n_t, 1)
            continue
        mu, ybar = sx[keep].sum(0) / n_t, sy[keep].sum() / n_t
        Gc = G[keep].sum(0) - n_t * np.outer(mu, mu)  # centred Gram matrix
        b = sxy[keep].sum(0) - n_t * mu * ybar
        lam, V = np.linalg.eigh(Gc)
        lam = np.maximum(lam, 0.0)
        scale = max(lam.mean(), 1e-12)
        coef_basis = (V.T @ b)[:, None] / (lam[:, None] + scale * np.asarray(alphas)[None, :])  # (d, n_alphas)
        W = V @ coef_basis
        for start in range(0, len(test), chunk):
            rows = test[start:start + chunk]
            Z = ((X[rows] - mean32) / std32).astype(np.float64) - mu
            out[rows] = ybar + Z @ W
    return out


def _knn_predictions(nbr_idx: np.ndarray, y: np.ndarray, group: np.ndarray, fits_on: np.ndarray,
                     ks: Sequence[int], chunk: int = 65536) -> np.ndarray:
    """Return kNN-regression predictions of shape (n_rows, len(ks)): the mean target of each row's first
    k neighbours that are `fits_on` rows of another group (the training-row mean where none is).

    `nbr_idx` holds each row's neighbours, most similar first, -1 where missing, self excluded.
    """
    n = len(nbr_idx)
    fallback = float(y[fits_on].mean()) if fits_on.any() else 0.0
    out = np.empty((n, len(ks)), np.float64)
    safe_y = np.where(fits_on, y, 0.0)
    for start in range(0, n, chunk):
        idx = nbr_idx[start:start + chunk]
        safe = np.maximum(idx, 0)
        valid = (idx >= 0) & fits_on[safe] & (group[safe] != group[start:start + len(idx), None])
        rank = np.cumsum(valid, axis=1)
        vals = safe_y[safe]
        for c, k in enumerate(ks):
            use = valid & (rank <= k)
            used = use.sum(1)
            total = np.where(use, vals, 0.0).sum(1)
            out[start:start + len(idx), c] = np.where(used > 0, total / np.maximum(used, 1), fallback)
    return out


def _knn_search_k(k: int, n_folds: int, holdout_fraction: float = 0.0) -> int:
    """Neighbours to search so that about k remain after dropping same-fold and held-out ones."""
    keep = (1 - 1 / n_folds) * (1 - holdout_fraction)
    return int(math.ceil(k / max(keep, 0.05) * 1.2)) + 5


def _scores(y: np.ndarray, pred: np.ndarray) -> dict:
    err = pred - y
    var = float(np.var(y))
    mse = float(np.mean(err ** 2))
    return {"mse": mse, "mae": float(np.mean(np.abs(err))), "r2": 1.0 - mse / var if var > 0 else None}


def _search_neighbours(X: np.ndarray, k: int, device: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from labelkit.neighbors import find_nearest_neighbors

    unit = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), np.float32(1e-12))
    return find_nearest_neighbors(unit.astype(np.float32, copy=False), k=int(min(k, len(X) - 1)), device=device,
                                  seed=seed)


def get_out_of_sample_predictions(embeddings: np.ndarray, targets: np.ndarray, *, holdout: np.ndarray | None = None,
                                  n_folds: int = 5, probe: str = "auto", alpha_grid: Sequence[float] = ALPHA_GRID,
                                  k_grid: Sequence[int] = KNN_K_GRID, max_selection_rows: int = MAX_SELECTION_ROWS,
                                  neighbor_idx: np.ndarray | None = None, device: str = "cpu", seed: int = 0,
                                  ) -> tuple[np.ndarray, np.ndarray, RegressionProbeChoice]:
    """Return (out-of-sample predictions float64 (n,), fold per row int16 (-1 held out), the probe chosen).

    Candidates run through the same k folds of a random selection subsample of at most
    `max_selection_rows` non-held-out rows: ridge regression on standardised embeddings for every
    penalty in `alpha_grid` (closed form from one eigendecomposition per fold), a k-nearest-
    neighbour regressor (mean target of the k most cosine-similar training rows) for every k in
    `k_grid` (one neighbour search), and the average of the best of each when their CV errors are
    within 10 %. The lowest out-of-fold mean squared error wins. Then every non-held-out row is
    predicted by the chosen setting fit on the other folds, and every held-out row by it fit on
    all non-held-out rows: no prediction comes from a model that saw that row's target, and
    held-out targets are never read.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, n_features)
    targets : ndarray of shape (n_samples,)
        Finite numbers (held-out entries are never read).
    holdout : ndarray of bool of shape (n_samples,), optional
    probe : {'auto', 'logreg', 'sklearn', 'torch', 'knn'}
        'auto' tries ridge and kNN; 'knn' only kNN; the others only ridge (the linear probe).
    neighbor_idx : ndarray of shape (n_samples, k), optional
        Each row's nearest rows (self excluded, most similar first, -1 missing) from a search the
        caller already ran; enough columns are needed for the largest k after dropping same-fold and
        held-out rows. Searched here when None.

    References
    ----------
    Hoerl, Kennard. "Ridge Regression: Biased Estimation for Nonorthogonal Problems". Technometrics 1970.
    """
    y = np.asarray(targets, np.float64)
    n = len(y)
    if probe not in PROBE_FAMILIES:
        raise LabelkitError(f"The 'probe' parameter of issues must be one of {', '.join(PROBE_FAMILIES)} for "
                            f"--task regression ('logreg' is ridge regression). Got {probe!r} instead.")
    from labelkit.tasks._common import probe_training_rows

    holdout, train_rows, X = probe_training_rows(embeddings, holdout, n, n_folds=n_folds,
                                                 max_selection_rows=max_selection_rows,
                                                 caller="get_out_of_sample_predictions", rows_word="usable rows",
                                                 probe_name=f"the {n_folds}-fold regression probe")
    families = PROBE_FAMILIES[probe]
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    # Folds of the non-held-out rows; held-out rows form one more group, fit on every training row.
    fold_of = np.full(n, n_folds, np.int16)
    fold_of[train_rows] = rng.permutation(len(train_rows)) % n_folds
    fits_on = ~holdout
    search_k = _knn_search_k(max(k_grid), n_folds, float(holdout.mean()))
    subsample = len(train_rows) > max_selection_rows
    if subsample:  # candidates compared on a random subsample; the winner then runs over every row
        sel = np.sort(rng.choice(train_rows, size=max_selection_rows, replace=False))
        Xs, ys, gs, fits, n_groups = X[sel], y[sel], fold_of[sel], np.ones(len(sel), bool), n_folds
    else:  # every row at once: held-out rows are the last group, predicted by a fit on all the others
        sel = train_rows
        Xs, ys, gs, fits, n_groups = X, y, fold_of, fits_on, n_folds + 1
    preds: dict[str, np.ndarray] = {}
    settings: dict[str, tuple] = {}
    if "ridge" in families:
        R = _ridge_predictions(Xs, ys, gs, n_groups, fits, alpha_grid)
        for c, a in enumerate(alpha_grid):
            preds[f"ridge alpha={a:g}"] = R[:, c]
            settings[f"ridge alpha={a:g}"] = ("ridge", float(a), None)
    if "knn" in families:
        if not subsample and neighbor_idx is not None:
            idx = neighbor_idx
        else:
            idx = _search_neighbours(Xs, search_k if not subsample else _knn_search_k(max(k_grid), n_folds),
                                     device, seed)[0]
        Kp = _knn_predictions(idx, ys, gs, fits, k_grid)
        for c, k in enumerate(k_grid):
            preds[f"knn k={k}"] = Kp[:, c]
            settings[f"knn k={k}"] = ("knn", None, int(k))
    scores = {name: _scores(ys[fits], p[fits]) for name, p in preds.items()}
    best_of = {}
    for name, s in scores.items():
        fam = settings[name][0]
        if fam not in best_of or s["mse"] < scores[best_of[fam]]["mse"]:
            best_of[fam] = name
    if len(best_of) == 2:
        a, b = sorted(best_of.values(), key=lambda m: scores[m]["mse"])
        if scores[b]["mse"] <= scores[a]["mse"] * (1 + AVERAGE_WITHIN):
            name = f"average({a} + {b})"
            preds[name] = (preds[a] + preds[b]) / 2
            scores[name] = _scores(ys[fits], preds[name][fits])
            settings[name] = ("average", a, b)
    chosen = min(scores, key=lambda m: scores[m]["mse"])
    selection_seconds = time.perf_counter() - started

    def predict_all(name: str) -> np.ndarray:
        fam, alpha, k = settings[name]
        if fam == "average":
            return (predict_all(alpha) + predict_all(k)) / 2
        if fam == "ridge":
            return _ridge_predictions(X, y, fold_of, n_folds + 1, fits_on, [alpha])[:, 0]
        idx = neighbor_idx if neighbor_idx is not None else _search_neighbours(X, search_k, device, seed)[0]
        return _knn_predictions(idx, y, fold_of, fits_on, [k])[:, 0]

    predictions = predict_all(chosen) if subsample else preds[chosen]
    fam, alpha, k = settings[chosen]
    fold_of = np.where(holdout, -1, fold_of).astype(np.int16)
    choice = RegressionProbeChoice(
        chosen=chosen, family=fam, alpha=alpha if fam == "ridge" else None, k=k if fam == "knn" else None,
        n_folds=n_folds, candidates={m: {key: (round(v, 6) if v is not None else None) for key, v in s.items()}
                                     for m, s in scores.items()},
        selection_rows=int(len(sel)), rows=n, holdout_rows=int(holdout.sum()),
        seconds={"selection": round(selection_seconds, 3), "total": round(time.perf_counter() - started, 3)})
    return np.asarray(predictions, np.float64), fold_of, choice


# ---------------------------------------------------------------------------------------------
# Label issues


def find_regression_issues(targets: np.ndarray, predictions: np.ndarray, *, z_threshold: float = Z_THRESHOLD) -> dict:
    """Return the label-issue mask, cleanlab's label quality and the residuals of regression targets.

    The residual is ``target − prediction`` (predictions out of sample). Its centre and scale are
    robust — the median and 1.4826 × the median absolute deviation — so the errors being looked for
    do not inflate the scale that judges them. A row is flagged when its modified z-score
    ``|residual − median| / scale`` exceeds `z_threshold` (Iglewicz & Hoaglin's 3.5). The label
    quality is cleanlab's residual score (:func:`cleanlab.regression.rank.get_label_quality_scores`,
    ``method='residual'``) on targets and predictions in units of that scale, i.e. ``exp(−|z|)`` in
    [0, 1], lower is worse; a row is flagged exactly when its quality is below ``exp(−z_threshold)``.
    (cleanlab's default ``'outre'`` method searches n/2 neighbours per row, quadratic in n; measured
    51 s at 10,000 rows, so it cannot serve 1M rows.)

    Parameters
    ----------
    targets, predictions : ndarray of shape (n_samples,)

    Returns
    -------
    dict with ``is_label_issue`` (bool), ``label_quality`` (float), ``residual``, ``residual_z``
    (float, signed), ``center`` and ``scale`` (floats).

    References
    ----------
    Iglewicz, Hoaglin. "How to Detect and Handle Outliers". ASQC Quality Press 1993.
    Zhou, Mueller. "Detecting Errors in Numerical Data via any Regression Model". TMLR 2023 (cleanlab.regression).
    """
    from cleanlab.regression.rank import get_label_quality_scores

    check_in_range(z_threshold, "z_threshold", "find_regression_issues", low=0, low_closed=False)
    y = np.asarray(targets, np.float64)
    p = np.asarray(predictions, np.float64)
    residual = y - p
    if not len(y):
        return {"is_label_issue": np.zeros(0, bool), "label_quality": np.zeros(0), "residual": residual,
                "residual_z": residual.copy(), "center": None, "scale": None}
    center = float(np.median(residual))
    scale = MAD_TO_SIGMA * float(np.median(np.abs(residual - center)))
    if not scale > 0:  # more than half the residuals equal: fall back on the standard deviation
        scale = float(np.std(residual)) or 1.0
    z = (residual - center) / scale
    quality = get_label_quality_scores(y / scale, (p + center) / scale, method="residual")
    return {"is_label_issue": np.abs(z) > z_threshold, "label_quality": np.asarray(quality, np.float64),
            "residual": residual, "residual_z": z, "center": center, "scale": scale}


# ---------------------------------------------------------------------------------------------
# The issues verb for regression


def issues(ws, *, pred_probs=None, classes_file=None, n_folds: int = 5, probe: str = "auto",
           filter_by: str = "prune_by_noise_rate", rank_by: str = "self_confidence", dup_threshold: float | None = None,
           k_neighbors: int = 10, embedding_key: str | None = None, device: str = "auto", seed: int = 0,
           progress: Progress | None = None, engine: str = "local", ray_address: str | None = None,
           checks: Sequence[str] | None = None):
    """Return the issues summary of a regression workspace; writes probs.parquet and issues.parquet.

    ``probs.parquet`` holds each usable row's out-of-sample ``prediction`` (float64) and ``fold``;
    ``issues.parquet`` the core columns (``given_label`` and ``suggested_label`` are the target
    and the prediction as text), ``target``, ``predicted_value``, ``residual``, ``residual_z``,
    the shared checks' columns and ``reason``. `filter_by`, `rank_by` and `classes_file` are
    classification options and are ignored; `checks` limits the shared checks as in
    :func:`labelkit.issues.issues`.
    """
    from labelkit.checks.base import CheckContext, checks_summary, get_checks, merged_reasons, run_checks
    from labelkit.engines import check_engine
    from labelkit.features import load_embedding_inputs
    from labelkit.arrays import string_array as _string_array
    from labelkit.issues import IssuesResult, check_issues_options
    from labelkit.neighbors import find_nearest_neighbors, phase_progress
    from labelkit.splits import HELDOUT_FINGERPRINT_KEY, heldout_mask
    from labelkit.workspace import (current_items_fingerprint, fingerprint, with_fingerprint, write_issues_table,
                                    write_table)

    check_engine(engine, "issues")
    check_issues_options(filter_by=filter_by, rank_by=rank_by, dup_threshold=dup_threshold, k_neighbors=k_neighbors,
                         n_folds=n_folds, probe=probe, seed=seed)
    if probe not in PROBE_FAMILIES:
        raise LabelkitError(f"The 'probe' parameter of issues must be one of {', '.join(PROBE_FAMILIES)} for "
                            f"--task regression ('logreg' is ridge regression). Got {probe!r} instead.")
    if pred_probs is not None:
        raise LabelkitError("--pred-probs is not supported for --task regression: the targets are predicted by the "
                            "probe on the workspace embeddings (run `labelkit embed`, or ingest with --embedding-col).")
    started = time.perf_counter()
    phase_seconds: dict[str, float] = {}
    manifest = ws.read_manifest()
    items_fp = current_items_fingerprint(ws)
    items = ws.read_items_table()
    target = items.column("target").to_numpy(zero_copy_only=False).astype(np.float64)
    usable = items.column("error").is_null().to_numpy(zero_copy_only=False) & np.isfinite(target)
    items_usable = items if usable.all() else items.filter(pa.array(usable))
    ids = _string_array(items_usable.column("id"))
    y = target[usable]
    n = len(y)

    key, emb, dup_threshold, device = load_embedding_inputs(
        ws, manifest, ids, _string_array(items_usable.column("content_hash")),
        embedding_key=embedding_key, dup_threshold=dup_threshold, device=device)

    held, held_record = heldout_mask(ws, ids)
    families = PROBE_FAMILIES[probe]
    # One neighbour search serves the kNN probe and the shared checks (duplicates, outliers).
    phase = time.perf_counter()
    k_search = max(k_neighbors, _knn_search_k(max(KNN_K_GRID), n_folds, float(held.mean())) if "knn" in families
                   else 0)
    k_search = int(min(k_search, n - 1))
    if engine == "ray":
        from labelkit.engines.ray import find_nearest_neighbors as ray_neighbors

        nn_idx, nn_sim = ray_neighbors(_unit(emb), k=k_search, address=ray_address, seed=seed)
        neighbors_info = {"index": "ray"}
    else:
        nn_idx, nn_sim, neighbors_info = find_nearest_neighbors(_unit(emb), k=k_search, device=device, seed=seed,
                                                                progress=phase_progress(progress, "neighbours"),
                                                                return_info=True)
    phase_seconds["neighbours"] = round(time.perf_counter() - phase, 3)
    phase = time.perf_counter()
    predictions, folds, choice = get_out_of_sample_predictions(emb, y, holdout=held, n_folds=n_folds, probe=probe,
                                                               neighbor_idx=nn_idx, device=device, seed=seed)
    phase_seconds["probe"] = round(time.perf_counter() - phase, 3)
    found = find_regression_issues(y, predictions)
    options_fp = fingerprint(items_fp, "regression", key, n_folds, probe, dup_threshold, k_neighbors, seed,
                             Z_THRESHOLD, held_record["ids_fingerprint"])

    ctx = CheckContext(ids=ids, labels=y, classes=[], task="regression", modality=manifest.get("modality", "embedding"),
                       items=items_usable, embeddings=emb, embedding_key=key, folds=folds,
                       neighbor_idx=nn_idx[:, :k_neighbors], neighbor_sims=nn_sim[:, :k_neighbors],
                       options={"dup_threshold": dup_threshold, "k_neighbors": k_neighbors, "n_folds": n_folds,
                                "probe": probe, "seed": seed, "heldout": held},
                       extra={"regression": {"targets": y, "predictions": predictions, **found,
                                             "z_threshold": Z_THRESHOLD, "probe": choice.to_dict()}},
                       seed=seed)
    phase = time.perf_counter()
    results, skipped = run_checks(ctx, checks)
    phase_seconds["checks"] = round(time.perf_counter() - phase, 3)

    given = format_numbers(y)
    columns = {
        "id": ids,
        "is_label_issue": pa.array(found["is_label_issue"]),
        "label_quality": pa.array(found["label_quality"], pa.float32()),
        "given_label": given,
        "suggested_label": format_numbers(predictions, reference=y),
        "target": pa.array(y, pa.float64()),
        "predicted_value": pa.array(predictions, pa.float64()),
        "residual": pa.array(found["residual"], pa.float64()),
        "residual_z": pa.array(found["residual_z"], pa.float32()),
        # present (empty) when the outlier check did not run, as in the multiclass table
        "outlier_score": pa.array(np.full(n, np.nan, np.float32)), "is_outlier": pa.array(np.zeros(n, bool)),
    }
    for result in results.values():
        for name, values in result.columns.items():
            if name not in columns or name in ("outlier_score", "is_outlier"):
                columns[name] = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    columns["reason"] = pa.array(merged_reasons(n, results), pa.string())
    write_issues_table(ws, columns, items_fp, options_fp, use_dictionary=False)
    probs_table = with_fingerprint(pa.table({
        "id": ids, "prediction": pa.array(predictions, pa.float64()), "fold": pa.array(folds, pa.int16()),
        "origin": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int8)), pa.array(["probe"]))}),
        items_fp, options_fp)
    probs_table = probs_table.replace_schema_metadata(
        probs_table.schema.metadata | {HELDOUT_FINGERPRINT_KEY: held_record["ids_fingerprint"].encode()})
    write_table(probs_table, ws.probs_path, row_group_size=65536)

    flags = found["is_label_issue"]
    summary = {
        "task": "regression", "rows": items.num_rows, "usable_rows": n, "unusable_rows": items.num_rows - n,
        "n_classes": 0, "class_counts": {}, "per_class": {},
        "label_issues": int(flags.sum()), "label_issue_rate": float(flags.mean()) if n else None,
        "label_issues_checked_rows": n,
        "regression": {"residual_center": found["center"], "residual_scale": found["scale"],
                       "z_threshold": Z_THRESHOLD, "probe": choice.to_dict(),
                       "target": manifest.get("target"),
                       "quality_method": "cleanlab.regression.rank residual, on the robust residual scale"},
        "probe": None, "origin": "probe", "embedding_key": key, "dup_threshold": dup_threshold,
        "heldout": {"rows": int(held.sum()), "ids_fingerprint": held_record["ids_fingerprint"],
                    "in_probe_training": False},
        "items_fingerprint": items_fp, "fingerprint": options_fp, "neighbors": neighbors_info,
        "phase_seconds": phase_seconds,
    }
    for check in get_checks(checks):  # every metric of the checks asked for: None when not measured
        summary |= dict.fromkeys(check.metrics) | (results[check.name].metrics if check.name in results else {})
    # label_issue_rate is the label check's metric (multiclass); here it is this task's flag rate.
    summary |= {"label_issues": int(flags.sum()), "label_issue_rate": float(flags.mean()) if n else None}
    summary["checks"] = checks_summary(results, skipped)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    warnings = [w for r in results.values() for w in r.warnings]
    ws.update_stage("issues", summary, warnings=warnings)
    return IssuesResult(summary=summary, top=top_issues(ids, y, predictions, found), warnings=warnings)


def _unit(X: np.ndarray) -> np.ndarray:
    return (X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), np.float32(1e-12))).astype(np.float32, copy=False)


def top_issues(ids, y: np.ndarray, predictions: np.ndarray, found: dict, limit: int = 20) -> list[dict]:
    """Return the `limit` flagged rows of lowest label quality, worst first, for printing."""
    flagged = np.flatnonzero(found["is_label_issue"])
    flagged = flagged[np.argsort(found["label_quality"][flagged], kind="stable")][:limit]
    given = format_numbers(y[flagged], reference=y).to_pylist()
    pred = format_numbers(predictions[flagged], reference=y).to_pylist()
    return [{"id": ids[int(i)].as_py(), "given_label": g, "suggested_label": p,
             "label_quality": float(f"{found['label_quality'][i]:.4g}"),
             "residual": round(float(found["residual"][i]), 6)} for i, g, p in zip(flagged, given, pred)]


# ---------------------------------------------------------------------------------------------
# report


def report_data(ws) -> tuple[dict, dict]:
    """Return (the regression numbers for report.json, kept there as ``task_data``; figures).

    The figures are a histogram of the out-of-sample residuals with the flagging band, and the
    given targets against their predictions (at most 4,000 points, every flagged row among them).
    """
    import pyarrow.parquet as pq

    from labelkit.plots import figure_uri as _figure_uri, mpl as _mpl
    from labelkit.workspace import require_current

    summary = ws.read_manifest().get("stages", {}).get("issues")
    if summary is None or not ws.issues_path.exists():
        return {}, {}
    require_current(ws, ws.issues_path)
    table = pq.read_table(ws.issues_path, columns=["target", "predicted_value", "residual", "is_label_issue"])
    y = table.column("target").to_numpy()
    pred = table.column("predicted_value").to_numpy()
    residual = table.column("residual").to_numpy()
    flags = table.column("is_label_issue").to_numpy(zero_copy_only=False)
    info = summary.get("regression") or {}
    center, scale, z = info.get("residual_center") or 0.0, info.get("residual_scale") or 1.0, info.get("z_threshold")
    band = [center - z * scale, center + z * scale] if z is not None else None
    probe = info.get("probe") or {}
    data = {
        "rows": int(len(y)), "flagged": int(flags.sum()), "residual_mae": summary.get("residual_mae"),
        "residual_r2": summary.get("residual_r2"), "residual_center": center, "residual_scale": scale,
        "z_threshold": z, "flag_band": band, "target": info.get("target"), "probe": probe.get("chosen"),
        "probe_candidates": probe.get("candidates"), "selection_rows": probe.get("selection_rows")}
    plt = _mpl()
    figures = {}
    fig, ax = plt.subplots(figsize=(6.2, 2.4))
    ax.hist(residual[~flags], bins=40, color="#64748b", label="not flagged")
    if flags.any():
        ax.hist(residual[flags], bins=40, color="#dc2626", label="flagged")
    if band is not None:
        for x in band:
            ax.axvline(x, color="#dc2626", lw=0.8, ls="--")
    ax.set_xlabel("residual: target − out-of-sample prediction")
    ax.set_ylabel("rows")
    ax.legend(frameon=False)
    figures["residual_histogram"] = _figure_uri(fig)
    rng = np.random.default_rng(0)  # at most 4,000 points, every flagged row among them
    keep = np.flatnonzero(flags)[:4000]
    rest = np.flatnonzero(~flags)
    keep = np.concatenate([keep, rng.choice(rest, size=min(len(rest), 4000 - len(keep)), replace=False)])
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.scatter(pred[keep], y[keep], s=4, c=np.where(flags[keep], "#dc2626", "#94a3b8"), linewidths=0)
    lo, hi = float(np.nanmin(np.r_[y, pred])), float(np.nanmax(np.r_[y, pred]))
    ax.plot([lo, hi], [lo, hi], color="#0f172a", lw=0.6)
    ax.set_xlabel("out-of-sample prediction")
    ax.set_ylabel("given target")
    figures["predicted_vs_target"] = _figure_uri(fig)
    return data, figures


# ---------------------------------------------------------------------------------------------
# select prune


def select_prune(ws, issues_df, keep: np.ndarray, *, name: str, drop: Sequence[str],
                 keep_fraction: float | None):
    """Write ``subsets/NAME.parquet`` with the kept rows of a regression workspace; return the SelectResult.

    As the multiclass prune, without class counts: the record holds the rows and the target's
    mean before and after (``class_counts_*`` are empty).
    """
    from labelkit.arrays import empty_lists
    from labelkit.selection import SelectResult
    from labelkit.workspace import current_items_fingerprint, with_fingerprint, write_table

    kept = issues_df[keep]
    n = len(kept)
    table = pa.table({"id": pa.array(kept["id"], pa.string(), from_pandas=True),
                      "label": pa.array(kept["given_label"], pa.string(), from_pandas=True),
                      "synthetic": pa.array(np.zeros(n, bool)),
                      "parent_ids": empty_lists(n),
                      "epoch": pa.nulls(n, pa.int32())})
    items_fp = current_items_fingerprint(ws)
    path = write_table(with_fingerprint(table, items_fp), ws.subset_path(name))
    target = issues_df["target"].to_numpy(np.float64)
    details = {"dropped": int((~keep).sum()), "drop": list(drop) if keep_fraction is None else [],
               "keep_fraction": keep_fraction, "task": "regression", "rows_before": int(len(issues_df)),
               "target_mean_before": float(target.mean()) if len(target) else None,
               "target_mean_after": float(target[keep].mean()) if keep.any() else None}
    result = SelectResult(name=name, method="prune", path=path.relative_to(ws.root), size=n,
                          class_counts_before={}, class_counts_after={}, details=details)
    record = dict(ws.read_manifest().get("stages", {}).get("select", {}))
    record[name] = {k: v for k, v in result.to_dict().items() if k != "name"} | {"items_fingerprint": items_fp}
    ws.update_stage("select", record)
    return result


# ---------------------------------------------------------------------------------------------
# train

TRAIN_METRICS = {
    "mae": "held-out mean absolute error",
    "rmse": "held-out root mean squared error",
    "r2": "held-out coefficient of determination R²",
}
LOSSES = ("mse", "huber")


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    """Return MAE, RMSE and R² of `pred` against `y` (R² None when `y` is constant)."""
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    if not len(y):
        return {"mae": None, "rmse": None, "r2": None, "rows": 0}
    err = pred - y
    var = float(np.var(y))
    mse = float(np.mean(err ** 2))
    return {"mae": float(np.mean(np.abs(err))), "rmse": math.sqrt(mse), "r2": 1.0 - mse / var if var > 0 else None,
            "rows": int(len(y))}


def train(ws, *, loss: str = "mse", loss_params: dict | None = None, labels: str = "label", subset: str | None = None,
          eval_labels: str = "label", name: str | None = None, head: str = "mlp", hidden: int = 256,
          max_epochs: int = 200, batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 1e-4,
          patience: int = 20, teachers: Sequence[str] = (), check: bool = False, fail_on: list[str] | None = None,
          config_start=".", device: str = "auto", seed: int = 0, progress: Progress | None = None,
          heldout_fraction: float | None = None):
    """Train a regression head (linear or MLP, one output) with MSE or Huber loss; return a TrainResult.

    Called by :func:`labelkit.train.train` for a regression workspace, with its arguments.
    Targets are standardised by the training rows' mean and std for optimisation; the model card
    records MAE, RMSE and R² on the held-out rows fixed at ingest (in target units). Early stopping
    watches the MSE of an inner 10 % of the training rows. ``loss='ce'`` (the CLI default) means
    MSE here; `loss_params` may set Huber's ``delta`` (in standardised units, default 1.0).
    """
    import hashlib
    from datetime import datetime, timezone

    import torch

    from labelkit import gate
    from labelkit.features import load_workspace_embeddings, resolve_device
    from labelkit.splits import heldout_mask, heldout_split
    from labelkit.heads import HEADS, head_class as _head_class
    from labelkit.train import TrainResult, read_subset
    from labelkit.workspace import versions as _versions
    from labelkit.workspace import atomic_path, current_items_fingerprint, require_current_embeddings, write_json

    started = time.perf_counter()
    loss = "mse" if loss == "ce" else loss
    if loss not in LOSSES:
        raise LabelkitError(f"The 'loss' parameter of train must be one of {', '.join(LOSSES)} for --task regression. "
                            f"Got {loss!r} instead.")
    if head not in HEADS:
        raise LabelkitError(f"The 'head' parameter of train must be one of {', '.join(HEADS)}. Got {head!r} instead.")
    if labels != "label" or eval_labels != "label" or teachers:
        raise LabelkitError("train --task regression trains on the given targets only (no --labels/--eval-labels "
                            "versions, no --teacher).")
    params = dict(loss_params or {})
    unknown = set(params) - ({"delta"} if loss == "huber" else set())
    if unknown:
        raise LabelkitError(f"Loss {loss!r} has no parameter {sorted(unknown)[0]!r}"
                            + ("; it takes delta." if loss == "huber" else "; it takes none."))
    delta = float(params.get("delta", 1.0))
    if loss == "huber":
        check_in_range(delta, "delta", "train", low=0, low_closed=False)
    check_in_range(max_epochs, "max_epochs", "train", low=1, kind="an int")
    rules, rules_source = gate.resolve_check_rules(check, fail_on, config_start=config_start, metrics=TRAIN_METRICS,
                                                   example="r2<0.8")
    device = resolve_device(device)
    key, emb_ids, matrix = load_workspace_embeddings(ws)
    items_fp = current_items_fingerprint(ws)
    items = ws.read_items_table(["id", "target", "content_hash", "error"])
    require_current_embeddings(ws, key, items.column("id").combine_chunks(),
                               items.column("content_hash").combine_chunks())
    target = items.column("target").to_numpy(zero_copy_only=False).astype(np.float64)
    usable = items.column("error").is_null().to_numpy(zero_copy_only=False) & np.isfinite(target)
    from labelkit.arrays import positions as _positions, string_array as _string_array

    ids_arr = _string_array(items.column("id")).filter(pa.array(usable))
    row = _positions(ids_arr, emb_ids)
    ids_arr, y_all = ids_arr.filter(pa.array(row >= 0)), target[usable][row >= 0]
    X_all = matrix[row[row >= 0]]
    held, held_record = heldout_mask(ws, ids_arr)
    if heldout_fraction is not None and heldout_fraction != held_record.get("fraction"):
        raise LabelkitError(f"The held-out split of {ws.root} was fixed at ingest ({held_record['rows']} rows, "
                            f"{held_record['source']}, fraction {held_record.get('fraction')}); 'heldout_fraction' "
                            f"{heldout_fraction} cannot change it.")
    train_mask = ~held
    if subset is not None:
        sub = read_subset(ws, subset)
        train_mask &= pc.is_in(ids_arr, value_set=pa.array(sub["id"].astype(str).tolist(), pa.string())) \
            .to_numpy(zero_copy_only=False)
    train_rows = np.flatnonzero(train_mask)
    eval_rows = np.flatnonzero(held)
    if len(train_rows) < 10:
        raise LabelkitError(f"Only {len(train_rows)} training rows remain (held-out split"
                            + (f", subset {subset!r}" if subset else "") + "); nothing to train on.")
    train_ids = ids_arr.take(pa.array(train_rows)).to_pylist()  # the training rows' ids only, for the hashes
    inner = heldout_split(train_ids, np.zeros(len(train_rows), np.int64), fraction=0.1,
                          salt="inner")
    fit_rows, val_rows = train_rows[~inner], train_rows[inner]
    mu, sd = float(y_all[fit_rows].mean()), float(y_all[fit_rows].std()) or 1.0

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    Head = _head_class()
    hidden_units = hidden if head == "mlp" else 0
    model = Head(X_all.shape[1], 1, hidden=hidden_units)
    Xf = X_all[fit_rows]
    scale = Xf.std(0)
    model.mean.copy_(torch.as_tensor(Xf.mean(0)))
    model.scale.copy_(torch.as_tensor(np.where(scale > 1e-6, scale, 1.0)))
    model.to(device)
    Xt = torch.as_tensor(Xf, dtype=torch.float32, device=device)
    Yt = torch.as_tensor((y_all[fit_rows] - mu) / sd, dtype=torch.float32, device=device)
    Xv = torch.as_tensor(X_all[val_rows], dtype=torch.float32, device=device)
    yv = (y_all[val_rows] - mu) / sd
    loss_fn = torch.nn.MSELoss() if loss == "mse" else torch.nn.HuberLoss(delta=delta)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, since, history = np.inf, None, 0, {"val_mse": [], "epochs": 0, "best_epoch": 0}
    for epoch in range(max_epochs):
        model.train()
        order = torch.randperm(len(Xt), generator=gen).to(device)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            if len(idx) < 2 and len(order) > 1:
                continue
            value = loss_fn(model(Xt[idx])[:, 0], Yt[idx])
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            val = float(np.mean((model(Xv)[:, 0].cpu().numpy() - yv) ** 2)) if len(yv) else 0.0
        history["val_mse"].append(val)
        history["epochs"] = epoch + 1
        if progress:
            progress(epoch + 1, max_epochs)
        if val < best - 1e-6:
            best, since, history["best_epoch"] = val, 0, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since += 1
            if since >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    with torch.inference_mode():
        pred = (model(torch.as_tensor(X_all[eval_rows], dtype=torch.float32, device=device))[:, 0].cpu().numpy()
                .astype(np.float64) * sd + mu)
    metrics = regression_metrics(y_all[eval_rows], pred)

    name = name or "-".join([loss, labels] + ([subset] if subset else []))
    out_dir = ws.model_dir(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = {"state_dict": model.state_dict(), "d_in": int(X_all.shape[1]), "n_classes": 1, "hidden": hidden_units,
            "classes": [], "embedding_key": key, "task": "regression", "target_mean": mu, "target_std": sd}
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save(ckpt, tmp)
    data_hash = hashlib.sha256("\n".join(f"{i}\t{t!r}" for i, t in zip(train_ids, y_all[train_rows]))
                               .encode()).hexdigest()
    card = {
        "name": name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "task": "regression",
        "embedding_key": key, "labels": labels, "eval_labels": eval_labels, "subset": subset,
        "loss": {"name": loss, "params": {"delta": delta} if loss == "huber" else {}}, "teachers": [],
        "head": {"type": head, "hidden": hidden_units},
        "optimizer": {"name": "AdamW", "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size},
        "training": {"rows": int(len(fit_rows)), "synthetic_rows": 0, "inner_validation_rows": int(len(val_rows)),
                     "epochs": history["epochs"], "best_epoch": history["best_epoch"],
                     "best_val_mse": best if np.isfinite(best) else None, "early_stopping_patience": patience,
                     "monitor": "val_mse", "schedule": "full passes", "target_mean": mu, "target_std": sd},
        "heldout": {"rows": int(len(eval_rows)), "fraction": held_record.get("fraction"),
                    "source": held_record["source"], "ids_fingerprint": held_record["ids_fingerprint"]},
        "items_fingerprint": items_fp, "data_hash": data_hash, "metrics": metrics, "classes": [], "seed": seed,
        "device": device, "versions": _versions(), "seconds": round(time.perf_counter() - started, 3),
    }
    verdict = None
    if rules is not None:
        verdict = gate.evaluate(rules, metrics) | {"source": rules_source}
        card["check"] = verdict
    write_json(card, out_dir / "model_card.json")
    ws.update_stage("train", {"latest": name, "metrics": metrics})
    return TrainResult(name=name, model_dir=out_dir, card=card, check=verdict)
