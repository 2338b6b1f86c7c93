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
from labelkit.heads import FitPlan, OutputLoss, Trainer, TrainTargets, model_outputs
from labelkit.tasks.base import (TASK_LABEL_COL, IssuesOptions, ProbeInputs, ProbeOutput, Targets, TaskSpec, TaskType,
                                 register)

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
# The task type


@register
class Regression(TaskType):
    """A numeric target per item: the ridge / kNN probe and robust residual flags.

    probs.parquet holds each usable row's out-of-sample ``prediction`` (float64), ``fold`` and
    ``origin`` (docs/workspace.md); issues.parquet the core columns (``given_label`` and
    ``suggested_label`` are the target and the prediction as text) and the regression check's
    ``target``, ``predicted_value``, ``residual``, ``residual_z``.
    """

    name = "regression"
    label_check = "regression_targets"
    default_modality = "embedding"
    uses_filter_by = False  # filter_by, rank_by and classes_file are classification options, ignored here
    finder_phase = None
    issues_dictionary = False  # targets rarely repeat

    def prepare_table(self, df, source, *, options: dict):
        return prepare_table(df, source, options=options)

    def check_options(self, options: IssuesOptions) -> None:
        super().check_options(options)
        if options.probe not in PROBE_FAMILIES:
            raise LabelkitError(f"The 'probe' parameter of issues must be one of {', '.join(PROBE_FAMILIES)} for "
                                f"--task regression ('logreg' is ridge regression). Got {options.probe!r} instead.")
        if options.pred_probs is not None:
            raise LabelkitError("--pred-probs is not supported for --task regression: the targets are predicted by the "
                                "probe on the workspace embeddings (run `labelkit embed`, or ingest with --embedding-col).")

    def read_targets(self, ws, manifest: dict, items: pa.Table) -> Targets:
        target = items.column("target").to_numpy(zero_copy_only=False).astype(np.float64)
        usable = items.column("error").is_null().to_numpy(zero_copy_only=False) & np.isfinite(target)
        y = target[usable]
        return Targets(usable=usable, values=y, classes=[], check_labels=y, check_classes=[],
                       ingest_record=manifest.get("target"))

    def probe_neighbors(self, options: IssuesOptions, held: np.ndarray) -> int:
        if "knn" not in PROBE_FAMILIES[options.probe]:
            return 0
        return _knn_search_k(max(KNN_K_GRID), options.n_folds, float(held.mean()))

    def probe(self, targets: Targets, inputs: ProbeInputs) -> ProbeOutput:
        opts = inputs.options
        idx = None
        wanted = self.probe_neighbors(opts, inputs.held)
        if wanted and inputs.neighbors is not None:  # the skeleton's search, at least this wide
            idx = inputs.neighbors(min(max(wanted, opts.k_neighbors), len(inputs.embeddings) - 1))[0]
        predictions, folds, choice = get_out_of_sample_predictions(
            inputs.embeddings, targets.values, holdout=inputs.held, n_folds=opts.n_folds, probe=opts.probe,
            neighbor_idx=idx, device=inputs.device, seed=opts.seed)
        return ProbeOutput(predictions, folds, "probe", info=choice.to_dict())

    def fingerprint(self, options: IssuesOptions, out: ProbeOutput, heldout_fp: str) -> tuple:
        return (options.n_folds, options.probe, options.dup_threshold, options.k_neighbors, options.seed, Z_THRESHOLD,
                heldout_fp)

    def probs_table(self, ids: pa.Array, out: ProbeOutput, *, items_fp: str, options_fp: str,
                    heldout_fp: str) -> pa.Table:
        from labelkit.splits import HELDOUT_FINGERPRINT_KEY
        from labelkit.workspace import with_fingerprint

        table = with_fingerprint(pa.table({
            "id": ids, "prediction": pa.array(out.predictions, pa.float64()), "fold": pa.array(out.folds, pa.int16()),
            "origin": pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(ids), np.int8)), pa.array([out.origin]))}),
            items_fp, options_fp)
        return table.replace_schema_metadata(table.schema.metadata | {HELDOUT_FINGERPRINT_KEY: heldout_fp.encode()})

    def find_issues(self, targets: Targets, out: ProbeOutput, options: IssuesOptions, progress) -> dict:
        """Return :func:`find_regression_issues`'s dict plus ``predictions`` and ``z_threshold``."""
        return find_regression_issues(targets.values, out.predictions) | {"predictions": out.predictions,
                                                                          "z_threshold": Z_THRESHOLD}

    def check_inputs(self, targets: Targets, out: ProbeOutput, found: dict) -> dict:
        return {"label_issues": found, "targets": targets.values, "predictions": out.predictions}

    def issues_columns(self, targets: Targets, found: dict) -> dict:
        return {"given_label": format_numbers(targets.values)}

    def summary(self, targets: Targets, out: ProbeOutput, found: dict, *, n_rows: int) -> dict:
        flags, n = found["is_label_issue"], targets.n
        return {"task": "regression", "rows": n_rows, "usable_rows": n, "unusable_rows": n_rows - n,
                "n_classes": 0, "class_counts": {}, "per_class": {},
                "label_issues": int(flags.sum()), "label_issue_rate": float(flags.mean()) if n else None,
                "label_issues_checked_rows": n,
                "regression": {"residual_center": found["center"], "residual_scale": found["scale"],
                               "z_threshold": Z_THRESHOLD, "probe": out.info, "target": targets.ingest_record,
                               "quality_method": "cleanlab.regression.rank residual, on the robust residual scale"},
                "probe": None}

    def top_issues(self, ids: pa.Array, targets: Targets, found: dict, limit: int = 20) -> list[dict]:
        return top_issues(ids, targets.values, found["predictions"], found, limit)

    # --- select / train / report / explain ----------------------------------------------------

    select_methods = ("prune",)  # rs2/dsir/smote read class ids, which numeric targets do not have

    def prune_rows(self, ws, issues_df, keep: np.ndarray):
        return prune_rows(issues_df, keep)

    def trainer(self, request):
        return RegressionTrainer(request)

    def report_data(self, ws) -> tuple[dict, dict]:
        return report_data(ws)

    def explain_fields(self, ws, row_id: str, issue_row: dict | None, *, top_classes: int) -> dict:
        return explain_prediction(ws, row_id, issue_row)


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


def explain_prediction(ws, row_id: str, issue_row: dict | None) -> dict:
    """Return the row's out-of-sample ``prediction`` and ``residual`` (target − prediction) for ``explain``."""
    import pyarrow.parquet as pq

    if "prediction" not in pq.read_schema(ws.probs_path).names:
        raise LabelkitError(f"{ws.probs_path} has no prediction column; run `labelkit issues -w {ws.root}` again.")
    table = pq.read_table(ws.probs_path, columns=["id", "prediction"], filters=pc.field("id").isin([row_id]))
    value = table.column("prediction")[0].as_py() if table.num_rows else None
    prediction = None if value is None else float(value)
    target = (issue_row or {}).get("target")
    known = prediction is not None and target is not None and not np.isnan(target)
    return {"prediction": prediction, "residual": float(target) - prediction if known else None}


# ---------------------------------------------------------------------------------------------
# select prune


def prune_rows(issues_df, keep: np.ndarray):
    """Return what ``select prune`` writes for a regression workspace: no class counts, the target's mean before/after."""
    from labelkit.tasks.base import PruneRows

    target = issues_df["target"].to_numpy(np.float64)
    return PruneRows(label=pa.array(issues_df["given_label"][keep], pa.string(), from_pandas=True), before={}, after={},
                     details={"task": "regression", "rows_before": int(len(issues_df)),
                              "target_mean_before": float(target.mean()) if len(target) else None,
                              "target_mean_after": float(target[keep].mean()) if keep.any() else None})


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


class RegressionTrainer(Trainer):
    """A one-output head with MSE or Huber loss on standardised targets; MAE, RMSE and R² in target units.

    Targets are standardised by the fit rows' mean and std for optimisation; early stopping
    watches the MSE of the inner validation rows. ``loss='ce'`` (the CLI default) means MSE here;
    `loss_params` may set Huber's ``delta`` (in standardised units, default 1.0). Trains on the
    given targets only (no label versions, no teachers).
    """

    task = "regression"
    metrics_doc = TRAIN_METRICS
    check_example = "r2<0.8"
    link = "identity"
    value_name = "val_mse"
    item_columns = ("id", "target", "content_hash", "error")
    classes: list = []

    def __init__(self, request):
        super().__init__(request)
        self.loss_name = "mse" if request.loss == "ce" else request.loss
        if self.loss_name not in LOSSES:
            raise LabelkitError(f"The 'loss' parameter of train must be one of {', '.join(LOSSES)} for --task "
                                f"regression. Got {self.loss_name!r} instead.")
        if request.labels != "label" or request.eval_labels != "label" or request.teachers:
            raise LabelkitError("train --task regression trains on the given targets only (no --labels/--eval-labels "
                                "versions, no --teacher).")
        params = dict(request.loss_params or {})
        unknown = set(params) - ({"delta"} if self.loss_name == "huber" else set())
        if unknown:
            raise LabelkitError(f"Loss {self.loss_name!r} has no parameter {sorted(unknown)[0]!r}"
                                + ("; it takes delta." if self.loss_name == "huber" else "; it takes none."))
        self.delta = float(params.get("delta", 1.0))
        if self.loss_name == "huber":
            check_in_range(self.delta, "delta", "train", low=0, low_closed=False)

    def usable(self, items) -> np.ndarray:
        target = items.column("target").to_numpy(zero_copy_only=False).astype(np.float64)
        return super().usable(items) & np.isfinite(target)

    def targets(self, ws, ids, items) -> TrainTargets:
        y = items.column("target").to_numpy(zero_copy_only=False).astype(np.float64)
        n = len(y)
        return TrainTargets(y_train=y, y_eval=y, trainable=np.ones(n, bool), scored=np.ones(n, bool),
                            strata=np.zeros(n, np.int64))

    def outputs(self, data) -> int:
        return 1

    def plan(self, ws, data, fit_ids, Y_fit, X_fit, X_val, Y_val) -> FitPlan:
        import torch

        self.mu, self.sd = float(Y_fit.mean()), float(Y_fit.std()) or 1.0
        fn = torch.nn.MSELoss() if self.loss_name == "mse" else torch.nn.HuberLoss(delta=self.delta)
        yv = (Y_val - self.mu) / self.sd

        def validate(model):
            model.eval()
            with torch.inference_mode():
                Xv = torch.as_tensor(X_val, dtype=torch.float32, device=self.request.device)
                val = float(np.mean((model(Xv)[:, 0].cpu().numpy() - yv) ** 2)) if len(yv) else 0.0
            return (val,), val

        return FitPlan(loss=OutputLoss(fn, first_column=True), targets=((Y_fit - self.mu) / self.sd).astype(np.float32),
                       validate=validate, params={"delta": self.delta} if self.loss_name == "huber" else {})

    def predict(self, model, X, device) -> np.ndarray:
        return model_outputs(model, X, link="identity", device=device)[:, 0].astype(np.float64) * self.sd + self.mu

    def metrics(self, outputs, y_eval) -> dict:
        return regression_metrics(y_eval, outputs)

    def extras(self) -> dict:
        stats = {"target_mean": self.mu, "target_std": self.sd}
        return {"card": {"monitor": "val_mse", **stats}, "ckpt": stats}
