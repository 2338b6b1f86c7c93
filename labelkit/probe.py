"""Out-of-sample predicted probabilities from a probe on embeddings.

Confident learning is only as good as the probabilities it is given. On embeddings a fixed probe
either overfits (and floods the flagged set with over-confident mistakes) or leaves accuracy on the
table where class boundaries are curved; so :func:`get_out_of_sample_probs` picks, among a few
candidate families, the one with the lowest cross-validated log-loss:

- logistic regression on standardised features and on raw features (C on a grid);
- k-nearest neighbours on unit-normalised embeddings (k, smoothing and a power on a grid), which
  costs one neighbour search for every setting;
- a one-hidden-layer MLP with early stopping (by log-loss) on an inner split of each training fold:
  scikit-learn's up to 20,000 training rows on the CPU, the minibatched torch one above or on a GPU
  (as for logistic regression), so a small CPU run never pays torch's import (3-4 s with the
  `torch._dynamo` that `torch.optim` pulls in);
- the average of the best two when their log-losses are within 2 % of each other.

At scale the choice is made on a stratified subsample (at most ``max_selection_rows`` rows), then
one k-fold at the chosen setting runs over all rows, minibatched in float32; each fold model trains
on at most ``max_fold_rows`` stratified rows of its training folds and predicts all of its own fold.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from labelkit.errors import LabelkitError, check_in_range

PROBES = ("auto", "sklearn", "torch", "logreg", "knn", "mlp")
DEFAULT_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
# Unit-norm embeddings (CLIP, MiniLM, pixels) also get a probe in their own geometry, where the
# useful C is larger because features are small.
RAW_C_GRID = (0.1, 1.0, 10.0, 100.0)
KNN_K_GRID = (5, 10, 20, 40)
# Probability mass spread over the training-fold class prior, so no class gets exactly 0 ...
KNN_SMOOTHING_GRID = (0.1, 0.3, 0.5, 0.7)
# ... then a power and renormalisation: temperature scaling of the smoothed vote. Smoothing alone
# ties the mass an outvoted class keeps to how sure the majority is; the power sets the sharpness
# apart (and reaches the floors small smoothings gave). Both grids were fixed by the kNN's CV
# log-loss on digits (bench/detect.py's rows, noise seeds 0-2: mean 0.940 with smoothing
# 0.01-0.3 and no power, 0.912 now), then checked on the sample text set and 4 regenerations
# of it: 0.334 -> 0.306.
KNN_POWER_GRID = (1.0, 1.5, 2.0, 3.0)
SKLEARN_MAX_ROWS = 20_000
MAX_SELECTION_ROWS = 20_000
# Training rows of each model of the final k-fold (a stratified subsample of the fold's training
# rows above it); every row is still predicted, out of sample. A torch fold runs about 400 steps of
# 4,096 rows but at least 2 epochs, so without a cap its cost grows with n above ~800k training
# rows; with it, it is fixed. On bench/scale.py's data the linear probe's flip recall went 0.926,
# 0.923, 0.939, 0.946 at 25k, 50k, 100k, 200k training rows (docs/scale.md): nearly flat by here.
MAX_FOLD_ROWS = 200_000
# Rows of each class a capped fold keeps at least (all of them when the class is smaller), so a
# rare class is never thinned below what its probe needs.
FOLD_MIN_PER_CLASS = 100
# Two candidates this close (relative log-loss) are averaged as a further candidate.
AVERAGE_WITHIN = 0.02
# An expensive candidate is abandoned once its log-loss on the folds done so far is this much
# (relative) worse than the best candidate's on the same rows ...
ABANDON_ABOVE = 0.05
# ... and that gap is this many standard errors of the rows' paired log-loss differences (one-sided,
# about 1 in 1,000 by chance): on a small selection one fold's log-loss is too noisy to judge by
# a margin alone. (A fixed floor of 2,000 rows did this before; yet sample_data/digits' 1,437
# selection rows of 768 pixels spent 25 s on logistic regressions trailing kNN by 30 %.)
ABANDON_Z = 3.0
# Below this many rows done, no candidate is abandoned (the standard error itself is unreliable).
ABANDON_MIN_ROWS = 100
# lbfgs's tolerance for a logistic-regression fit that may still be abandoned (10× scikit-learn's
# default 1e-4), from zero weights: on a fold of bench/detect.py's 5,000 PNGs it took 40-50 % fewer
# iterations and moved the log-loss by at most 1.3 % (0.783 -> 0.794 at raw C=10), far inside the 5 %
# abandoning margin. A setting that is not abandoned is finished at the default tolerance from there.
SCREEN_TOL = 1e-3
Progress = Callable[[int, "int | None"], None]


@dataclass
class ProbeChoice:
    """Which probe produced the out-of-sample probabilities, and how every candidate scored.

    ``cv_log_loss`` maps each candidate's name to its out-of-fold log-loss on the selection rows;
    ``candidates`` adds accuracy and seconds; ``skipped`` says which candidates were abandoned and
    why. ``features`` is the winner's family (standardized, raw, knn, mlp or average), ``C`` its
    regularisation for a logistic regression (else None). ``max_fold_rows`` is the cap on the
    training rows of each model of the final k-fold and ``fold_train_rows`` the most rows any of
    those models trained on (0 when the selection's own folds were final).
    """

    engine: str
    features: str
    C: float | None
    n_folds: int
    cv_log_loss: dict[str, float]
    cv_accuracy: float
    chosen: str = ""
    candidates: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    selection_rows: int = 0
    rows: int = 0
    max_fold_rows: int | None = None
    fold_train_rows: int = 0
    holdout_rows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


@dataclass(frozen=True)
class _Setting:
    family: str  # standardized | raw | knn | mlp | average
    C: float | None = None
    k: int | None = None
    smoothing: float | None = None
    parts: tuple = ()
    power: float = 1.0

    @property
    def name(self) -> str:
        if self.family in ("standardized", "raw"):
            return f"{self.family} C={self.C:g}"
        if self.family == "knn":
            return f"knn k={self.k} smoothing={self.smoothing:g} power={self.power:g}"
        if self.family == "average":
            return "average(" + " + ".join(p.name for p in self.parts) + ")"
        return self.family


# ---------------------------------------------------------------------------------------------
# Folds and subsample


def _check_classes(labels: np.ndarray) -> np.ndarray:
    counts = np.bincount(labels)
    present = counts[counts > 0]
    if present.min() < 2:
        raise LabelkitError(f"Class id {int(np.flatnonzero(counts == present.min())[0])} has only 1 usable example; "
                            "out-of-sample probabilities need at least 2 per class (drop or merge that class).")
    return present


def _fold_ids(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Return a stratified fold id per row (k = min(n_folds, smallest class count))."""
    from sklearn.model_selection import StratifiedKFold

    present = _check_classes(labels)
    k = int(min(n_folds, present.min()))
    fold_of = np.empty(len(labels), dtype=np.int16)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fold_of[test] = f
    return fold_of


def _stratified_subsample(labels: np.ndarray, max_rows: int, min_per_class: int, seed: int) -> np.ndarray:
    """Return sorted positions of a class-proportional random subsample of at most ~`max_rows` rows.

    Every class keeps at least ``min(count, min_per_class)`` rows so the folds stay stratified.
    One sort over (class, random key): O(n log n), no loop over rows.
    """
    n = len(labels)
    if n <= max_rows:
        return np.arange(n)
    counts = np.bincount(labels)
    quota = np.maximum(np.ceil(counts * (max_rows / n)).astype(np.int64), np.minimum(counts, min_per_class))
    order = np.lexsort((np.random.default_rng(seed).random(n), labels))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(n) - starts[labels[order]]
    return np.sort(order[rank < quota[labels[order]]])


# ---------------------------------------------------------------------------------------------
# Logistic regression


def _rms_norm(X: np.ndarray, rows: np.ndarray, chunk: int = 65536) -> float:
    """Return the root-mean-square row norm of X[rows] (1 where it is 0)."""
    total = sum(float(np.square(X[rows[s:s + chunk]], dtype=np.float64).sum()) for s in range(0, len(rows), chunk))
    return math.sqrt(total / max(1, len(rows))) or 1.0


class _RmsNormScaler:
    """Divide every feature by one number, the training rows' RMS norm: the geometry of the raw
    features is kept (unlike standardising), while lbfgs stays well conditioned on features in the
    tens (pixels 0..16 took 30× longer unscaled), and the C grid means the same for any scale."""

    def fit(self, X):
        self.scale_ = _rms_norm(X, np.arange(len(X)))
        return self

    def transform(self, X):
        return np.asarray(X, np.float32) / np.float32(self.scale_)


class _SklearnProbe:
    """(Standardise +) multinomial logistic regression, warm-started as C grows along the grid."""

    def __init__(self, seed: int, standardize: bool = True):
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        self.scaler = StandardScaler() if standardize else _RmsNormScaler()
        self.model = LogisticRegression(max_iter=1000, warm_start=True, random_state=seed)
        self.fitted_scaler = False

    def fit_predict(self, X_train, y_train, X_test, C: float, n_classes: int, tol: float = 1e-4,
                    warm: bool = True) -> np.ndarray:
        """Fit at `C` to `tol`; from the previous fit's weights when `warm` (and there is one), else from 0."""
        from threadpoolctl import threadpool_limits

        if not self.fitted_scaler:
            self.scaler.fit(X_train)
            self.X_train, self.X_test = self.scaler.transform(X_train), self.scaler.transform(X_test)
            self.fitted_scaler = True
        self.model.set_params(C=C, tol=tol, warm_start=warm)
        out = np.zeros((len(X_test), n_classes), dtype=np.float32)
        # BLAS on one thread: lbfgs's products are skinny (rows x features by features x classes) and
        # OpenBLAS's threads cost more than they give there. bench/detect.py's 5,000 PNGs, 5 screening
        # fits: 2.2 s on 2 threads, 1.0 s on 1. (The MLP's wider products gain: 0.50 -> 0.35 s a fold.)
        with threadpool_limits(1, user_api="blas"):
            self.model.fit(self.X_train, y_train)
            out[:, self.model.classes_] = self.model.predict_proba(self.X_test)
        return out


def _mlp_shape(d: int, n_fit: int) -> tuple[int, int]:
    """Return (hidden units, minibatch size) of the probe's MLP: 2d units within [64, 256]; about 20
    steps an epoch on small data, so early stopping sees progress every epoch."""
    return int(min(256, max(64, 2 * d))), int(min(1024, max(32, n_fit // 20)))


def _sklearn_mlp_fit_predict(X: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, n_classes: int,
                             *, seed: int) -> np.ndarray:
    """Return probabilities for rows `test` of scikit-learn's MLPClassifier fit on rows `train`.

    The architecture and stopping rule of the torch MLP: standardised inputs, one ReLU hidden layer,
    Adam at scikit-learn's defaults (learning rate 1e-3, L2 penalty 1e-4), an inner 10 % split of
    `train` held back, one epoch at a time (``partial_fit``) until its log-loss has not improved for
    3 epochs (at most 40), then the best epoch's weights. (MLPClassifier's own ``early_stopping``
    watches accuracy, which plateaus while the probabilities still improve.)
    """
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    perm = train[np.random.default_rng(seed).permutation(len(train))]
    n_val = max(1, len(train) // 10)
    val, fit_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    scaler = StandardScaler().fit(X[fit_rows])
    X_fit, X_val = scaler.transform(X[fit_rows]), scaler.transform(X[val])
    hidden, batch_size = _mlp_shape(X.shape[1], len(fit_rows))
    model = MLPClassifier((hidden,), batch_size=batch_size, random_state=seed)
    classes = np.arange(n_classes)
    best, best_weights, bad = np.inf, None, 0
    for _ in range(_epochs_for(len(fit_rows), batch_size, steps=1500, low=5, high=40)):
        model.partial_fit(X_fit, labels[fit_rows], classes=classes)
        v = _log_loss(labels[val], _normalise(model.predict_proba(X_val).astype(np.float32)))
        if v < best - 1e-4:
            best, bad = v, 0
            best_weights = ([w.copy() for w in model.coefs_], [b.copy() for b in model.intercepts_])
        else:
            bad += 1
            if bad >= 3:
                break
    if best_weights is not None:  # None only if no epoch gave a finite validation log-loss
        model.coefs_, model.intercepts_ = best_weights
    out = np.empty((len(test), n_classes), np.float32)
    for start in range(0, len(test), 65536):
        out[start:start + 65536] = model.predict_proba(scaler.transform(X[test[start:start + 65536]]))
    return out


def _epochs_for(n_train: int, batch_size: int, *, steps: int, low: int, high: int) -> int:
    """Epochs giving about `steps` optimiser steps: many passes over small data, few over large."""
    return int(min(high, max(low, math.ceil(steps * batch_size / max(1, n_train)))))


def _moments(X: np.ndarray, rows: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Return per-feature mean and std of X[rows], in chunks (no copy of X[rows])."""
    s = np.zeros(X.shape[1], np.float64)
    ss = np.zeros(X.shape[1], np.float64)
    for start in range(0, len(rows), chunk):
        block = X[rows[start:start + chunk]].astype(np.float64)
        s += block.sum(0)
        ss += np.square(block).sum(0)
    n = max(1, len(rows))
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean ** 2, 0.0))
    std[std < 1e-12] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def _torch_fit_predict(X: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, n_classes: int, *,
                       setting: _Setting, seed: int, device: str = "cpu") -> np.ndarray:
    """Return probabilities for rows `test` of a torch probe (logistic regression or MLP) fit on rows `train`.

    Rows are gathered per minibatch from X, so memory is O(batch × d) besides X and the output.
    Logistic regression minimises the same objective as scikit-learn's LogisticRegression, mean
    cross-entropy + ||W||² / (2 C n), by minibatch Adam; the MLP stops early on an inner 10 %
    split of `train` (patience 3 epochs) and keeps its best epoch's weights.
    """
    import torch

    threads = torch.get_num_threads()
    # Small minibatches are slower on several threads than on one (synchronisation dominates).
    if device == "cpu" and min(len(train), 4096) * X.shape[1] < (1 << 20):
        torch.set_num_threads(1)
    try:
        return _torch_fit_predict_inner(X, labels, train, test, n_classes, setting=setting, seed=seed, device=device)
    finally:
        torch.set_num_threads(threads)


def _torch_fit_predict_inner(X: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, n_classes: int,
                             *, setting: _Setting, seed: int, device: str) -> np.ndarray:
    import torch

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if setting.family == "raw":  # one scale for all features, as _RmsNormScaler
        mean, std = np.zeros(X.shape[1], np.float32), np.full(X.shape[1], _rms_norm(X, train), np.float32)
    else:
        mean, std = _moments(X, train)
    mean_t, std_t = torch.as_tensor(mean, device=device), torch.as_tensor(std, device=device)
    d = X.shape[1]

    def batch(rows: np.ndarray) -> "torch.Tensor":
        return (torch.as_tensor(X[rows], device=device) - mean_t) / std_t

    if setting.family == "mlp":
        perm = train[torch.randperm(len(train), generator=g).numpy()]
        n_val = max(1, len(train) // 10)
        val, fit_rows = perm[:n_val], perm[n_val:]
        hidden, batch_size = _mlp_shape(d, len(fit_rows))
        model = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                    torch.nn.Linear(hidden, n_classes)).to(device)
        epochs = _epochs_for(len(fit_rows), batch_size, steps=1500, low=5, high=40)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        penalty = 0.0
    else:
        model = torch.nn.Linear(d, n_classes).to(device)
        torch.nn.init.zeros_(model.weight)
        torch.nn.init.zeros_(model.bias)
        fit_rows, val = train, None
        batch_size = 4096
        epochs = _epochs_for(len(fit_rows), batch_size, steps=400, low=2, high=30)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        penalty = 1.0 / (2.0 * setting.C * len(fit_rows))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    y_all = torch.as_tensor(labels, dtype=torch.long)
    best, best_state, bad = np.inf, None, 0
    for _ in range(epochs):
        model.train()
        order = fit_rows[torch.randperm(len(fit_rows), generator=g).numpy()]
        for start in range(0, len(order), batch_size):
            rows = np.sort(order[start:start + batch_size])  # sorted gathers are cache-friendlier
            logits = model(batch(rows))
            loss = torch.nn.functional.cross_entropy(logits, y_all[rows].to(device))
            if penalty:
                loss = loss + penalty * model.weight.square().sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if val is not None:
            model.eval()
            with torch.no_grad():
                v = float(torch.nn.functional.cross_entropy(model(batch(val)), y_all[val].to(device)))
            if v < best - 1e-4:
                best, bad = v, 0
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            else:
                bad += 1
                if bad >= 3:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    out = np.empty((len(test), n_classes), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(test), 65536):
            rows = test[start:start + 65536]
            out[start:start + len(rows)] = torch.softmax(model(batch(rows)), dim=1).float().cpu().numpy()
    return out


def _fit_predict_torch(X_train, y_train, X_test, C: float, n_classes: int, seed: int, *, device: str = "cpu",
                       standardize: bool = True) -> np.ndarray:
    """Return softmax-regression probabilities for `X_test` from a torch fit on (`X_train`, `y_train`)."""
    X = np.concatenate([np.asarray(X_train, np.float32), np.asarray(X_test, np.float32)])
    labels = np.concatenate([np.asarray(y_train, np.int64), np.zeros(len(X_test), np.int64)])
    setting = _Setting("standardized" if standardize else "raw", C=C)
    return _torch_fit_predict(X, labels, np.arange(len(X_train)), np.arange(len(X_train), len(X)), n_classes,
                              setting=setting, seed=seed, device=device)


# ---------------------------------------------------------------------------------------------
# k nearest neighbours


def _knn_counts(nbr_labels: np.ndarray, valid: np.ndarray, k: int, n_classes: int,
                chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Return (label counts of each row's first k valid neighbours, shape (n, n_classes), float32; number used)."""
    n = len(nbr_labels)
    use = valid & (np.cumsum(valid, axis=1) <= k)
    counts = np.empty((n, n_classes), np.float32)
    for start in range(0, n, chunk):
        u = use[start:start + chunk]
        rows = np.nonzero(u)[0]
        flat = rows * n_classes + nbr_labels[start:start + chunk][u]
        counts[start:start + len(u)] = np.bincount(flat, minlength=len(u) * n_classes).reshape(len(u), n_classes)
    return counts, use.sum(1)


def _knn_probs(counts: np.ndarray, used: np.ndarray, prior: np.ndarray, smoothing: float,
               power: float = 1.0) -> np.ndarray:
    """Return ((1 - smoothing) · neighbour label frequencies + smoothing · prior) ** power, renormalised
    (the prior alone for a row without neighbours).

    References
    ----------
    Guo, Pleiss, Sun, Weinberger. "On Calibration of Modern Neural Networks". ICML 2017 (temperature
    scaling: the power is 1 / temperature on the log-probabilities).
    """
    out = counts / np.maximum(used, 1)[:, None].astype(np.float32)
    out *= 1.0 - smoothing
    out += smoothing * prior
    if power != 1.0:
        np.power(out, np.float32(power), out=out)
        out /= np.maximum(out.sum(1, keepdims=True), np.float32(1e-30))
    empty = used == 0
    out[empty] = prior[empty]
    return out


def _neighbours(X: np.ndarray, k: int, device: str, shared: "Callable | None" = None) -> np.ndarray:
    """Return each row's k nearest other rows (missing ones as the row itself, which every caller
    drops as same-fold); through `shared` (``shared(k) -> (idx, sims, info)`` over these same rows,
    -1 where missing) when given, so the search is also the checks' search."""
    k = int(min(k, len(X) - 1))
    if shared is not None:
        idx = shared(k)[0]
        return np.where(idx < 0, np.arange(len(X))[:, None], idx) if (idx < 0).any() else idx
    from labelkit.neighbors import find_nearest_neighbors

    # Called by keyword: the search may grow options (an approximate index above a size).
    idx, _ = find_nearest_neighbors(X, k=k, device=device)
    return idx


def _within(shared: Callable, rows: np.ndarray, n: int) -> Callable:
    """Return ``search(k)`` over rows `rows` alone, from `shared`, a search over all n rows (see
    :func:`_neighbours`): it asks `shared` for k / (len(rows) / n) neighbours, so that about k are
    in `rows`, and gives those as positions in `rows`, -1 for the others (dropped like missing ones).

    With an exact search, a row's neighbours in `rows` come in the same order as a search over
    `rows` would give them; so the probe's selection on all but the held-out rows costs no search
    of its own besides the one the held-out rows and the checks use.
    """
    pos = np.full(n, -1, np.int64)
    pos[rows] = np.arange(len(rows))

    def search(k: int):
        idx, sims, info = shared(int(min(n - 1, math.ceil(k * n / max(1, len(rows))))))
        idx, sims = idx[rows], sims[rows]
        mapped = np.where(idx >= 0, pos[np.maximum(idx, 0)], -1)
        return mapped, np.where(mapped >= 0, sims, np.float32(-1.0)), info

    return search


def _knn_search_k(k: int, n_folds: int, holdout_fraction: float = 0.0) -> int:
    """Neighbours to search so that about k remain after dropping same-fold and held-out ones."""
    keep = (1 - 1 / n_folds if n_folds > 1 else 1.0) * (1 - holdout_fraction)
    return int(math.ceil(k / max(keep, 0.05) * 1.2)) + 5


def _fold_priors(labels: np.ndarray, fold_of: np.ndarray, n_classes: int) -> np.ndarray:
    """Return the class prior of each fold's training rows, shape (n_folds + 1, n_classes); the last row
    is the prior of all rows (what a held-out row sees)."""
    n_folds = int(fold_of.max()) + 1
    total = np.bincount(labels, minlength=n_classes).astype(np.float64)
    priors = np.empty((n_folds + 1, n_classes), np.float32)
    for f in range(n_folds):
        c = total - np.bincount(labels[fold_of == f], minlength=n_classes)
        priors[f] = c / c.sum() if c.sum() else 1.0 / n_classes
    priors[n_folds] = total / total.sum()
    return priors


# ---------------------------------------------------------------------------------------------
# The search


def _log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = probs[np.arange(len(labels)), labels].astype(np.float64)
    return float(-np.mean(np.log(np.clip(p, 1e-12, 1.0))))


def _normalise(probs: np.ndarray) -> np.ndarray:
    np.clip(probs, 1e-12, 1.0, out=probs)
    probs /= probs.sum(1, keepdims=True)
    return probs


class _Search:
    """Candidates evaluated on the same folds of the selection rows; keeps every score and the best per family."""

    def __init__(self, labels: np.ndarray, fold_of: np.ndarray, n_classes: int):
        self.labels, self.fold_of, self.n_classes = labels, fold_of, n_classes
        self.n_folds = int(fold_of.max()) + 1
        self.scores: dict[str, dict] = {}
        self.skipped: dict[str, str] = {}
        self.best_of: dict[str, tuple[float, _Setting, np.ndarray]] = {}

    def add(self, setting: _Setting, probs: np.ndarray, seconds: float) -> float:
        loss = _log_loss(self.labels, probs)
        self.scores[setting.name] = {"log_loss": loss, "accuracy": float((probs.argmax(1) == self.labels).mean()),
                                     "seconds": round(seconds, 3)}
        key = setting.family if setting.family != "raw" else "raw"
        if key not in self.best_of or loss < self.best_of[key][0]:
            self.best_of[key] = (loss, setting, probs)
        return loss

    def best(self) -> tuple[float, _Setting, np.ndarray] | None:
        return min(self.best_of.values(), key=lambda t: t[0]) if self.best_of else None


def _clearly_worse(labels: np.ndarray, mine: np.ndarray, theirs: np.ndarray) -> tuple[bool, float, float, float]:
    """Return (abandon?, my log-loss, theirs, z) on the same rows: abandon when mine is above theirs by
    more than ABANDON_ABOVE (relative) and by more than ABANDON_Z standard errors of the paired
    per-row differences, on at least ABANDON_MIN_ROWS rows."""
    rows = np.arange(len(labels))
    a = -np.log(np.clip(mine[rows, labels].astype(np.float64), 1e-12, 1.0))
    b = -np.log(np.clip(theirs[rows, labels].astype(np.float64), 1e-12, 1.0))
    d = a - b
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.inf
    z = float(d.mean() / se) if se > 0 else (math.inf if d.mean() > 0 else 0.0)
    worse = len(d) >= ABANDON_MIN_ROWS and a.mean() > b.mean() * (1 + ABANDON_ABOVE) and z > ABANDON_Z
    return worse, float(a.mean()), float(b.mean()), z


def _evaluate_logreg(X, labels, fold_of, search: _Search, *, family: str, grid: Sequence[float], engine: str,
                     device: str, seed: int, tick: Callable[[], None]) -> None:
    """Walk the C grid upwards on the search folds; stop once the out-of-fold log-loss worsens
    (it is unimodal in C in practice).

    When another family leads, a setting is abandoned fold by fold as in :func:`_evaluate_mlp`;
    the walk then goes on only while its improvement over the previous setting (on the rows both
    have predicted) is at least its remaining gap to the leader. While it may still be abandoned, a
    scikit-learn fit first runs to the looser SCREEN_TOL, and is finished only if it stays.
    """
    n_folds = search.n_folds
    folds = [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(n_folds)]
    probes = [_SklearnProbe(seed, family == "standardized") for _ in folds] if engine == "sklearn" else None
    leader = search.best()
    leader = leader if leader is not None and leader[1].family != family else None
    prev: tuple[np.ndarray, np.ndarray] | None = None  # previous setting's probabilities and rows done
    family_best = np.inf
    for C in sorted(grid):
        started = time.perf_counter()
        setting = _Setting(family, C=float(C))
        probs = np.zeros((len(labels), search.n_classes), np.float32)
        done = np.zeros(len(labels), bool)
        abandoned = False
        for f, (train, test) in enumerate(folds):
            screen = probes is not None and leader is not None and f < n_folds - 1
            if probes is not None:
                # A screening fit starts from 0: from the previous C's weights a loose tolerance is met
                # at once, and the fit would only repeat the previous C.
                probs[test] = probes[f].fit_predict(X[train], labels[train], X[test], C, search.n_classes,
                                                    tol=SCREEN_TOL if screen else 1e-4, warm=not screen)
            else:
                probs[test] = _torch_fit_predict(X, labels, train, test, search.n_classes, setting=setting,
                                                 seed=seed, device=device)
            done[test] = True
            tick()
            if leader is not None and f < n_folds - 1:
                worse, mine, theirs, z = _clearly_worse(labels[done], _normalise(probs[done].copy()), leader[2][done])
                if worse:
                    search.skipped[setting.name] = (f"abandoned after {f + 1} of {n_folds} folds"
                                                    f"{f' (fit to tolerance {SCREEN_TOL:g})' if screen else ''}: "
                                                    f"log-loss {mine:.4f} vs {theirs:.4f} for {leader[1].name} "
                                                    f"(z = {z:.1f})")
                    abandoned = True
                    break
                if screen:  # it stays: finish the fit at the default tolerance
                    probs[test] = probes[f].fit_predict(X[train], labels[train], X[test], C, search.n_classes)
        if abandoned:
            # Walk on only while one more step at this rate of improvement could close the gap to
            # the leader: the loss is unimodal in C, so the steps shrink towards its minimum.
            both = done & prev[1] if prev is not None else done
            if prev is not None and both.any():
                gain = _log_loss(labels[both], prev[0][both]) - _log_loss(labels[both], _normalise(probs[both].copy()))
                if gain < mine - theirs:
                    break
            prev = (_normalise(probs), done)
            continue
        loss = search.add(setting, _normalise(probs), time.perf_counter() - started)
        prev = (probs, done)
        if loss >= family_best:
            break
        family_best = loss


def _evaluate_knn(X, labels, fold_of, search: _Search, *, k_grid: Sequence[int], smoothing_grid: Sequence[float],
                  device: str, power_grid: Sequence[float] = KNN_POWER_GRID, shared: "Callable | None" = None) -> None:
    """Every (k, smoothing, power) from one neighbour search: a row's neighbours in its own fold are dropped.
    Each (k, smoothing) is one candidate, at the power with the lowest log-loss on the folds."""
    started = time.perf_counter()
    idx = _neighbours(X, _knn_search_k(max(k_grid), search.n_folds), device, shared)
    valid = fold_of[idx] != fold_of[:, None]
    nbr_labels = labels[idx]
    prior = _fold_priors(labels, fold_of, search.n_classes)[fold_of]
    shared = time.perf_counter() - started
    for k in sorted(k_grid):
        counts, used = _knn_counts(nbr_labels, valid, int(k), search.n_classes)
        for s in smoothing_grid:
            t = time.perf_counter()
            loss, power, probs = min(((_log_loss(labels, q), float(p), q) for p in power_grid
                                      for q in [_knn_probs(counts, used, prior, s, p)]), key=lambda v: v[:2])
            search.add(_Setting("knn", k=int(k), smoothing=float(s), power=power), probs,
                       shared / len(k_grid) + time.perf_counter() - t)


def _evaluate_mlp(X, labels, fold_of, search: _Search, *, engine: str, device: str, seed: int,
                  tick: Callable[[], None]) -> None:
    """Fold by fold (on `engine`: 'sklearn' or 'torch'); abandoned as soon as it clearly trails the best
    candidate on the folds done so far (:func:`_clearly_worse`), since the remaining folds would have to
    undo that gap."""
    started = time.perf_counter()
    setting = _Setting("mlp")
    probs = np.zeros((len(labels), search.n_classes), np.float32)
    leader = search.best()
    done = np.zeros(len(labels), bool)
    for f in range(search.n_folds):
        train, test = np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)
        probs[test] = fit_fold(X, labels, FoldJob(train, test, setting, search.n_classes, engine, device, seed + f))
        tick()
        done[test] = True
        if leader is not None and f < search.n_folds - 1:
            worse, mine, theirs, z = _clearly_worse(labels[done], probs[done], leader[2][done])
            if worse:
                search.skipped["mlp"] = (f"abandoned after {f + 1} of {search.n_folds} folds: log-loss {mine:.4f} "
                                         f"vs {theirs:.4f} for {leader[1].name} (z = {z:.1f})")
                return
    search.add(setting, probs, time.perf_counter() - started)


def _evaluate_average(search: _Search) -> None:
    ranked = sorted(search.best_of.values(), key=lambda t: t[0])
    if len(ranked) >= 2 and ranked[1][0] <= ranked[0][0] * (1 + AVERAGE_WITHIN):
        (_, a, pa), (_, b, pb) = ranked[:2]
        search.add(_Setting("average", parts=(a, b)), (pa + pb) / 2, 0.0)


# ---------------------------------------------------------------------------------------------
# Every row at the chosen setting


def _cap_rows(train: np.ndarray, labels: np.ndarray, max_rows: int | None, seed: int) -> np.ndarray:
    """Return `train`, or a stratified subsample of it of about `max_rows` rows when it is larger."""
    if max_rows is None or len(train) <= max_rows:
        return train
    return train[_stratified_subsample(labels[train], max_rows, FOLD_MIN_PER_CLASS, seed)]


@dataclass(frozen=True)
class FoldJob:
    """One model of the final k-fold (or the held-out rows' model): fit rows `train`, predict rows `test`.

    Plain data (index arrays, a setting, a few scalars), so a job pickles cheaply and a
    :data:`FoldMap` can run it anywhere that holds the embedding matrix and the labels.
    """

    train: np.ndarray
    test: np.ndarray
    setting: _Setting
    n_classes: int
    engine: str  # 'sklearn' | 'torch' (logistic regression and MLP)
    device: str
    seed: int


def fit_fold(X: np.ndarray, labels: np.ndarray, job: FoldJob) -> np.ndarray:
    """Return float32 probabilities, shape (len(job.test), n_classes), of rows `job.test` from a model fit on
    rows `job.train` at `job.setting` (labels of test rows are not read)."""
    mlp = job.setting.family == "mlp"
    if job.engine == "sklearn" and mlp and not job.device.startswith("cuda"):  # an MLP on a GPU is torch's
        probs = _sklearn_mlp_fit_predict(X, labels, job.train, job.test, job.n_classes, seed=job.seed)
    elif job.engine == "sklearn" and not mlp:
        model = _SklearnProbe(job.seed, job.setting.family == "standardized")
        probs = model.fit_predict(X[job.train], labels[job.train], X[job.test], job.setting.C, job.n_classes)
    else:
        probs = _torch_fit_predict(X, labels, job.train, job.test, job.n_classes, setting=job.setting,
                                   seed=job.seed, device=job.device)
    return _normalise(probs)


FoldMap = Callable[[Callable, np.ndarray, np.ndarray, "list[FoldJob]"], Iterable[np.ndarray]]
"""``fold_map(fit_fold, X, labels, jobs)``: one result per job, in job order (the local default runs them
one after the other in this process; ``labelkit.engines.ray`` runs them as tasks)."""


def serial_fold_map(fit: Callable, X: np.ndarray, labels: np.ndarray, jobs: "list[FoldJob]") -> Iterator[np.ndarray]:
    """Run `jobs` one after the other in this process."""
    for job in jobs:
        yield fit(X, labels, job)


def _predict_rows(setting: _Setting, X, labels, fold_of, holdout, n_classes: int, *, engine: str, device: str,
                  seed: int, tick: Callable[[], None], max_fold_rows: int | None = None,
                  trained: list | None = None, fold_map: FoldMap | None = None,
                  neighbors: "Callable | None" = None) -> np.ndarray:
    """Return probabilities for every row: in-fold rows from the model fit on the other folds, held-out
    rows from the model fit on all non-held-out rows (their labels are never read).

    Above `max_fold_rows` training rows a model fits a stratified subsample of them (seeded per
    fold); the rows it predicts are unchanged. The training-row count of every model is appended
    to `trained` when given. The models are fit through `fold_map` (default: one after the other).
    """
    n = len(X)
    probs = np.zeros((n, n_classes), np.float32)
    train_rows = np.flatnonzero(~holdout)
    held = np.flatnonzero(holdout)
    if setting.family == "average":
        for part in setting.parts:
            probs += _predict_rows(part, X, labels, fold_of, holdout, n_classes, engine=engine, device=device,
                                   seed=seed, tick=tick, max_fold_rows=max_fold_rows, trained=trained,
                                   fold_map=fold_map, neighbors=neighbors)
        return _normalise(probs / len(setting.parts))
    n_folds = int(fold_of[train_rows].max()) + 1
    if setting.family == "knn":
        idx = _neighbours(X, _knn_search_k(setting.k, n_folds, len(held) / n), device, neighbors)
        # A held-out row's neighbours must be training rows; an in-fold row's, training rows of other folds.
        own = np.where(holdout, -1, fold_of).astype(np.int32)
        valid = (~holdout[idx]) & ((own[:, None] < 0) | (fold_of[idx] != own[:, None]))
        # Held-out labels are masked out by `valid` anyway; int32 halves the (n, k) gather.
        safe_labels = np.where(holdout, 0, labels).astype(np.int32)
        counts, used = _knn_counts(safe_labels[idx], valid, setting.k, n_classes)
        fold_train = np.where(holdout, 0, fold_of)
        priors = _fold_priors(safe_labels[train_rows], fold_train[train_rows], n_classes)
        prior = priors[np.where(holdout, n_folds, fold_of)]
        tick()
        return _normalise(_knn_probs(counts, used, prior, setting.smoothing, setting.power))
    pairs = [(train_rows[fold_of[train_rows] != f], train_rows[fold_of[train_rows] == f]) for f in range(n_folds)]
    if len(held):
        pairs.append((train_rows, held))
    jobs = []
    for j, (train, test) in enumerate(pairs):
        train = _cap_rows(train, labels, max_fold_rows, seed + j)
        if trained is not None:
            trained.append(len(train))
        jobs.append(FoldJob(train, test, setting, n_classes, engine, device,
                            seed + (j if setting.family == "mlp" else 0)))
    for job, out in zip(jobs, (fold_map or serial_fold_map)(fit_fold, X, labels, jobs)):
        probs[job.test] = out
        tick()
    return _normalise(probs)


def get_out_of_sample_probs(embeddings: np.ndarray, labels: np.ndarray, *, n_classes: int | None = None,
                            n_folds: int = 5, C_grid: Sequence[float] = DEFAULT_C_GRID,
                            raw_C_grid: Sequence[float] | None = RAW_C_GRID, probe: str = "auto",
                            k_grid: Sequence[int] = KNN_K_GRID, holdout: np.ndarray | None = None,
                            folds: np.ndarray | None = None, max_selection_rows: int = MAX_SELECTION_ROWS,
                            max_fold_rows: int | None = MAX_FOLD_ROWS, device: str = "cpu", seed: int = 0,
                            progress: Progress | None = None,
                            fold_map: FoldMap | None = None,
                            neighbors: Callable | None = None) -> tuple[np.ndarray, np.ndarray, ProbeChoice]:
    """Return (pred_probs of shape (n_samples, n_classes) float32, fold per row, the probe chosen).

    Candidates (see the module docstring) run through the same stratified folds of a selection
    subsample of at most `max_selection_rows` non-held-out rows; the one with the lowest
    out-of-fold log-loss wins. If the subsample is all non-held-out rows its out-of-fold
    probabilities are returned; otherwise one k-fold at the chosen setting runs over all of them.
    Cheap candidates run first (kNN: one neighbour search for all its settings; then logistic
    regression); logistic regression and the MLP are abandoned fold by fold once they clearly trail the
    leader (by more than 5 % and 3 standard errors of the rows' paired log-loss differences).

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, n_features)
    labels : ndarray of shape (n_samples,)
        Integer class ids in [0, n_classes). Labels of held-out rows are never read.
    probe : {'auto', 'sklearn', 'torch', 'logreg', 'knn', 'mlp'}
        'auto' tries every family. 'sklearn' and 'torch' are logistic regression only, on that
        engine; 'logreg', 'knn' and 'mlp' restrict the search to one family. Logistic regression
        runs on scikit-learn up to 20,000 training rows, on the minibatched torch probe above.
    holdout : ndarray of bool of shape (n_samples,), optional
        Held-out rows (a test split): never in a training fold nor in the selection subsample;
        predicted by a model fit on all non-held-out rows at the chosen setting. Their fold is -1.
    folds : ndarray of int of shape (n_samples,), optional
        A fold id per row in [0, n_folds) instead of the seeded stratified split (entries of
        held-out rows are ignored).
    max_selection_rows : int
        Rows of the stratified subsample on which the candidate and its setting are chosen.
    max_fold_rows : int or None
        Most training rows of each model of the final k-fold over all rows (logistic regression,
        MLP): above it a model fits a stratified subsample of its fold's training rows (every
        class keeps at least 100 rows, or all it has), and still predicts all its fold's rows, so
        the k-fold's cost stops growing with n. None: no cap. kNN always searches all rows.
    fold_map : callable, optional
        Runs the models of the final k-fold and the held-out model: ``fold_map(fit_fold, X, labels,
        jobs)`` returns one probability block per :class:`FoldJob`, in order. None: one after the
        other in this process; ``labelkit.engines.ray`` provides one that runs them as Ray tasks.
        The selection's candidates always run here (their walk is sequential: warm starts, abandoning).
    neighbors : callable, optional
        ``neighbors(k) -> (neighbor_idx, neighbor_sims, info)`` over all rows of `embeddings` (-1
        where missing), e.g. :class:`labelkit.neighbors.SharedNeighbors`: the kNN candidate's
        searches over all rows go through it, so the caller's own neighbour search can reuse them.
        None: the probe searches by itself.

    Returns
    -------
    pred_probs : ndarray of shape (n_samples, n_classes), float32
        A row's probabilities never come from a fitted model that saw that row. (Which candidate
        wins is decided on the selection rows' labels.)
    fold : ndarray of int16 of shape (n_samples,)
        The fold in which each row was predicted; -1 for held-out rows.
    choice : ProbeChoice
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    n_classes = int(n_classes or labels.max() + 1)
    check_in_range(n_folds, "n_folds", "get_out_of_sample_probs", low=2, kind="an int")
    check_in_range(max_selection_rows, "max_selection_rows", "get_out_of_sample_probs", low=2 * n_classes,
                   kind="an int")
    if max_fold_rows is not None:
        check_in_range(max_fold_rows, "max_fold_rows", "get_out_of_sample_probs", low=2 * n_classes, kind="an int")
    if probe not in PROBES:
        raise LabelkitError(f"The 'probe' parameter of get_out_of_sample_probs must be one of {', '.join(PROBES)}. "
                            f"Got {probe!r} instead.")
    holdout = np.zeros(n, bool) if holdout is None else np.asarray(holdout, bool)
    if holdout.shape != (n,):
        raise LabelkitError(f"The 'holdout' parameter of get_out_of_sample_probs must be a bool mask of shape ({n},). "
                            f"Got shape {holdout.shape} instead.")
    train_rows = np.flatnonzero(~holdout)
    if len(train_rows) < 2:
        raise LabelkitError(f"Only {len(train_rows)} rows are not held out; out-of-sample probabilities need more.")
    X = np.asarray(embeddings, dtype=np.float32)
    started = time.perf_counter()
    fold_of = np.full(n, -1, np.int16)
    if folds is not None:
        fold_of[train_rows] = np.asarray(folds)[train_rows]
        if fold_of[train_rows].min() < 0:
            raise LabelkitError("The 'folds' parameter of get_out_of_sample_probs must hold ids >= 0 for rows "
                                "that are not held out.")
    else:
        fold_of[train_rows] = _fold_ids(labels[train_rows], n_folds, seed)
    _check_classes(labels[train_rows])
    sel = train_rows[_stratified_subsample(labels[train_rows], max_selection_rows, n_folds, seed)]
    n_train = len(train_rows)
    engine_of = lambda rows: "sklearn" if rows <= SKLEARN_MAX_ROWS else "torch"
    lr_engine = {"sklearn": "sklearn", "torch": "torch"}.get(probe, engine_of(len(sel)))
    full_engine = probe if probe in ("sklearn", "torch") else engine_of(n_train)
    # The MLP runs on scikit-learn where logistic regression does, on torch above and on a GPU.
    mlp_engine = "torch" if device.startswith("cuda") else engine_of(len(sel))

    done = [0]

    def tick():
        done[0] += 1
        if progress:
            progress(done[0], None)

    # Selection folds: the full split restricted to the subsample (still stratified: both are).
    Xs, ys, fs = (X, labels, fold_of) if len(sel) == n else (X[sel], labels[sel], fold_of[sel])
    fs = np.unique(fs, return_inverse=True)[1].astype(np.int16)  # contiguous ids
    search = _Search(ys, fs, n_classes)
    families = {"auto": ("knn", "logreg", "mlp"), "sklearn": ("logreg",), "torch": ("logreg",)}.get(probe, (probe,))
    if "knn" in families:
        # The caller's search over all rows serves the selection when it holds every row, or every
        # row but the held-out ones while they are at most half (it then asks n / len(sel) <= 2 times
        # the neighbours, keeping those in the selection); else the selection searches its own rows.
        shared = None
        if neighbors is not None and len(sel) == n:
            shared = neighbors
        elif neighbors is not None and len(sel) == n_train and 2 * n_train >= n:
            shared = _within(neighbors, sel, n)
        _evaluate_knn(Xs, ys, fs, search, k_grid=k_grid, smoothing_grid=KNN_SMOOTHING_GRID, device=device,
                      shared=shared)
    if "logreg" in families:
        _evaluate_logreg(Xs, ys, fs, search, family="standardized", grid=C_grid, engine=lr_engine, device=device,
                         seed=seed, tick=tick)
        if raw_C_grid:
            _evaluate_logreg(Xs, ys, fs, search, family="raw", grid=raw_C_grid, engine=lr_engine, device=device,
                             seed=seed, tick=tick)
    if "mlp" in families:
        _evaluate_mlp(Xs, ys, fs, search, engine=mlp_engine, device=device, seed=seed, tick=tick)
    if len(families) > 1:
        _evaluate_average(search)
    _, setting, sel_probs = search.best()
    selection_seconds = time.perf_counter() - started

    trained: list[int] = []
    if len(sel) == n_train:
        # The selection's out-of-fold probabilities are final; only held-out rows need a model.
        probs = sel_probs if len(sel) == n else np.zeros((n, n_classes), np.float32)
        if len(sel) < n:
            probs[sel] = sel_probs
            probs[holdout] = _predict_held(setting, X, labels, train_rows, np.flatnonzero(holdout), n_classes,
                                           engine=full_engine, device=device, seed=seed, tick=tick, fold_map=fold_map,
                                           neighbors=neighbors)
    else:
        probs = _predict_rows(setting, X, labels, fold_of, holdout, n_classes, engine=full_engine,
                              device=device, seed=seed, tick=tick, max_fold_rows=max_fold_rows, trained=trained,
                              fold_map=fold_map, neighbors=neighbors)
    fold_of[holdout] = -1
    fam = setting.family
    losses = {name: s["log_loss"] for name, s in search.scores.items()}
    choice = ProbeChoice(engine=lr_engine if fam in ("standardized", "raw") else (mlp_engine if fam == "mlp" else fam),
                         features=fam, C=setting.C, n_folds=search.n_folds, cv_log_loss=losses,
                         cv_accuracy=search.scores[setting.name]["accuracy"], chosen=setting.name,
                         candidates=search.scores, skipped=search.skipped, selection_rows=len(sel), rows=n,
                         holdout_rows=int(holdout.sum()), max_fold_rows=max_fold_rows,
                         fold_train_rows=max(trained, default=0),
                         seconds={"selection": round(selection_seconds, 3),
                                  "total": round(time.perf_counter() - started, 3)})
    # The selection rows' out-of-fold probabilities of each family's best setting, for the bench.
    choice._family_probs = {fam: (setting.name, p) for fam, (_, setting, p) in search.best_of.items()}
    return probs, fold_of, choice


def _predict_held(setting: _Setting, X, labels, train_rows, held, n_classes: int, *, engine: str, device: str,
                  seed: int, tick: Callable[[], None], fold_map: FoldMap | None = None,
                  neighbors: Callable | None = None) -> np.ndarray:
    """Return probabilities for held-out rows from a model fit on all training rows at `setting`."""
    if setting.family == "average":
        return _normalise(sum(_predict_held(p, X, labels, train_rows, held, n_classes, engine=engine, device=device,
                                            seed=seed, tick=tick, fold_map=fold_map, neighbors=neighbors)
                              for p in setting.parts) / len(setting.parts))
    if setting.family == "knn":
        mask = np.ones(len(X), bool)
        mask[train_rows] = False
        fold_of = np.zeros(len(X), np.int16)
        return _predict_rows(setting, X, labels, fold_of, mask, n_classes, engine=engine, device=device, seed=seed,
                             tick=tick, neighbors=neighbors)[held]
    tick()
    job = FoldJob(train_rows, held, setting, n_classes, engine, device, seed)
    return next(iter((fold_map or serial_fold_map)(fit_fold, X, labels, [job])))
