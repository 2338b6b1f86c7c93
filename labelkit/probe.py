"""Out-of-sample predicted probabilities from a probe on embeddings.

Confident learning is only as good as the probabilities it is given. On embeddings, a fixed
unregularised probe overfits and is over-confident, which floods the flagged set; so
:func:`get_out_of_sample_probs` picks the probe among a few candidates by cross-validated log-loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from labelkit.errors import LabelkitError, check_in_range

PROBES = ("auto", "sklearn", "torch")
DEFAULT_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
# Unit-norm embeddings (CLIP, MiniLM, pixels) also get a probe in their own geometry, where the
# useful C is larger because features are small.
RAW_C_GRID = (0.1, 1.0, 10.0, 100.0)
SKLEARN_MAX_ROWS = 20_000
Progress = Callable[[int, "int | None"], None]


@dataclass
class ProbeChoice:
    """Which probe produced the out-of-sample probabilities, and how the candidates scored."""

    engine: str
    features: str
    C: float
    n_folds: int
    cv_log_loss: dict[str, float]
    cv_accuracy: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _folds(labels: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels)
    present = counts[counts > 0]
    if present.min() < 2:
        raise LabelkitError(f"Class id {int(np.flatnonzero(counts == present.min())[0])} has only 1 usable example; "
                            "out-of-sample probabilities need at least 2 per class (drop or merge that class).")
    k = int(min(n_folds, present.min()))
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels))


class _SklearnProbe:
    """(Standardise +) multinomial logistic regression, warm-started as C grows along the grid."""

    def __init__(self, seed: int, standardize: bool = True):
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import FunctionTransformer, StandardScaler

        self.scaler = StandardScaler() if standardize else FunctionTransformer()
        self.model = LogisticRegression(max_iter=1000, warm_start=True, random_state=seed)
        self.fitted_scaler = False

    def fit_predict(self, X_train, y_train, X_test, C: float, n_classes: int) -> np.ndarray:
        if not self.fitted_scaler:
            self.scaler.fit(X_train)
            self.X_train, self.X_test = self.scaler.transform(X_train), self.scaler.transform(X_test)
            self.fitted_scaler = True
        self.model.set_params(C=C)
        self.model.fit(self.X_train, y_train)
        out = np.zeros((len(X_test), n_classes))
        out[:, self.model.classes_] = self.model.predict_proba(self.X_test)
        return out


class _TorchProbe:
    def __init__(self, seed: int, device: str, standardize: bool = True):
        self.seed, self.device, self.standardize = seed, device, standardize

    def fit_predict(self, X_train, y_train, X_test, C: float, n_classes: int) -> np.ndarray:
        return _fit_predict_torch(X_train, y_train, X_test, C, n_classes, self.seed, device=self.device,
                                  standardize=self.standardize)


def _fit_predict_torch(X_train, y_train, X_test, C: float, n_classes: int, seed: int, *, device: str = "cpu",
                       epochs: int = 30, batch_size: int = 4096, standardize: bool = True) -> np.ndarray:
    """Return softmax-regression probabilities trained by minibatch Adam on the same objective as
    scikit-learn's LogisticRegression: mean cross-entropy + ||W||² / (2 C n)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    mean, std = X_train.mean(0), X_train.std(0)
    std[std == 0] = 1.0
    if not standardize:
        mean, std = np.zeros_like(mean), np.ones_like(std)
    Xt = torch.as_tensor((X_train - mean) / std, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y_train, dtype=torch.long, device=device)
    n, d = Xt.shape
    layer = torch.nn.Linear(d, n_classes).to(device)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    penalty = 1.0 / (2.0 * C * n)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g).to(device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = torch.nn.functional.cross_entropy(layer(Xt[idx]), yt[idx]) + penalty * layer.weight.square().sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    with torch.no_grad():
        Xs = torch.as_tensor((X_test - mean) / std, dtype=torch.float32, device=device)
        return torch.softmax(layer(Xs), dim=1).double().cpu().numpy()


def get_out_of_sample_probs(embeddings: np.ndarray, labels: np.ndarray, *, n_classes: int | None = None,
                            n_folds: int = 5, C_grid: Sequence[float] = DEFAULT_C_GRID,
                            raw_C_grid: Sequence[float] | None = RAW_C_GRID, probe: str = "auto",
                            device: str = "cpu", seed: int = 0,
                            progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray, ProbeChoice]:
    """Return (pred_probs of shape (n_samples, n_classes), fold per row, the probe chosen).

    Candidates are logistic regressions on standardised features (C in `C_grid`) and on the raw
    features (C in `raw_C_grid`; None skips them). Each runs through the same stratified k folds;
    the one with the lowest out-of-fold log-loss wins and its out-of-fold probabilities are returned.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, n_features)
    labels : ndarray of shape (n_samples,)
        Integer class ids in [0, n_classes).
    probe : {'auto', 'sklearn', 'torch'}
        'auto' is scikit-learn logistic regression up to 20,000 rows, the torch probe above.
    """
    from sklearn.metrics import log_loss

    labels = np.asarray(labels, dtype=np.int64)
    n_classes = int(n_classes or labels.max() + 1)
    check_in_range(n_folds, "n_folds", "get_out_of_sample_probs", low=2, kind="an int")
    if probe not in PROBES:
        raise LabelkitError(f"The 'probe' parameter of get_out_of_sample_probs must be one of {', '.join(PROBES)}. "
                            f"Got {probe!r} instead.")
    engine = probe if probe != "auto" else ("sklearn" if len(labels) <= SKLEARN_MAX_ROWS else "torch")
    folds = _folds(labels, n_folds, seed)
    fold_of = np.empty(len(labels), dtype=np.int16)
    for f, (_, test) in enumerate(folds):
        fold_of[test] = f
    X = np.asarray(embeddings, dtype=np.float32)
    families = [("standardized", True, sorted(C_grid))]
    if raw_C_grid:
        families.append(("raw", False, sorted(raw_C_grid)))
    best, scores, done = None, {}, 0
    total = sum(len(g) for _, _, g in families) * len(folds)
    for family, standardize, grid in families:
        probes = [_SklearnProbe(seed, standardize) if engine == "sklearn" else _TorchProbe(seed, device, standardize)
                  for _ in folds]
        family_best = np.inf
        # Out-of-fold log-loss is unimodal in C in practice: walk the grid upwards, stop once it worsens.
        for C in grid:
            probs = np.zeros((len(labels), n_classes))
            for (train, test), model in zip(folds, probes):
                probs[test] = model.fit_predict(X[train], labels[train], X[test], C, n_classes)
                done += 1
                if progress:
                    progress(done, total)
            probs = np.clip(probs, 1e-12, 1.0)
            probs /= probs.sum(1, keepdims=True)
            name = f"{family} C={C:g}"
            scores[name] = float(log_loss(labels, probs, labels=np.arange(n_classes)))
            if best is None or scores[name] < best[0]:
                best = (scores[name], C, probs, family)
            if scores[name] >= family_best:
                break
            family_best = scores[name]
    _, C, probs, family = best
    acc = float((probs.argmax(1) == labels).mean())
    return probs, fold_of, ProbeChoice(engine=engine, features=family, C=C, n_folds=len(folds), cv_log_loss=scores,
                                       cv_accuracy=acc)
