"""The torch head every task's ``train`` fits on the embeddings, the one training loop, and the trainer hook.

A :class:`Trainer` is a task type's part of a ``train`` run (its targets, loss, validation score
and metrics); :func:`labelkit.train.train` is the skeleton that calls it, and :func:`fit_model`
the loop every task trains through. torch is imported inside the functions that need it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import numpy as np

from labelkit.errors import LabelkitError

HEADS = ("linear", "mlp")
Progress = Callable[[int, "int | None"], None]


def head_class():
    """Return the ``Head`` module class (built on first use so that importing labelkit needs no torch)."""
    import torch
    from torch import nn

    class Head(nn.Module):
        """Standardise, then linear, or Linear → ReLU → Linear; `features` / `classifier` split for mixup."""

        def __init__(self, d_in: int, n_classes: int, *, hidden: int = 0, dropout: float = 0.0):
            super().__init__()
            self.n_classes, self.hidden = n_classes, hidden
            self.register_buffer("mean", torch.zeros(d_in))
            self.register_buffer("scale", torch.ones(d_in))
            self.body = (nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout)) if hidden
                         else nn.Identity())
            self.classifier = nn.Linear(hidden or d_in, n_classes)

        def features(self, x):
            return self.body((x - self.mean) / self.scale)

        def forward(self, x):
            return self.classifier(self.features(x))

    return Head


def model_outputs(model, X: np.ndarray, *, link: str = "softmax", device: str = "cpu",
                  batch_size: int = 8192) -> np.ndarray:
    """Return `model`'s outputs on the rows of `X` through `link` ('softmax', 'sigmoid' or 'identity')."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(X), batch_size):
            z = model(torch.as_tensor(X[s:s + batch_size], dtype=torch.float32, device=device)).float()
            out.append((torch.softmax(z, 1) if link == "softmax" else torch.sigmoid(z) if link == "sigmoid"
                        else z).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.n_classes), np.float32)


def load_model(path, device: str = "cpu"):
    """Return (model, checkpoint dict) saved by :func:`labelkit.train.train` in `path` (a models/<name> folder)."""
    from pathlib import Path

    import torch

    ckpt = torch.load(Path(path) / "model.pt", map_location=device, weights_only=True)
    model = head_class()(ckpt["d_in"], ckpt["n_classes"], hidden=ckpt["hidden"]).to(device)
    model.load_state_dict(ckpt["state_dict"])
    return model, ckpt


def predict_proba(model, X: np.ndarray, *, device: str = "cpu", batch_size: int = 8192) -> np.ndarray:
    """Return softmax probabilities of `model` on the rows of `X`."""
    return model_outputs(model, X, device=device, batch_size=batch_size)


class OutputLoss:
    """A loss of the head's outputs alone, ``fn(model(x)[, 0], y)``, in the shape of :class:`labelkit.losses.Loss`."""

    def __init__(self, fn, *, first_column: bool = False):
        self.fn, self.first_column = fn, first_column

    def compute(self, model, x, target, *, index=None):
        out = model(x)
        return self.fn(out[:, 0] if self.first_column else out, target)

    def to(self, device):
        return self

    def train(self, mode: bool = True):
        return self


@dataclass
class FitResult:
    """The model at its best validation score and its history (one value per epoch)."""

    model: object
    values: list[float] = field(default_factory=list)
    epochs: int = 0
    best_epoch: int = 0

    @property
    def best_value(self) -> float | None:
        return self.values[self.best_epoch - 1] if self.best_epoch and self.values else None


def fit_model(X: np.ndarray, targets: np.ndarray, *, loss, n_outputs: int, validate: Callable,
              hidden: int = 256, dropout: float = 0.0, standardize: bool = True, max_epochs: int = 200,
              batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 1e-4, patience: int = 20,
              tolerance: float = 1e-4, min_batch: int = 2, epoch_rows: list[np.ndarray] | None = None, seed: int = 0,
              device: str = "cpu", progress: Progress | None = None) -> FitResult:
    """Train a :func:`head_class` head with `loss` (AdamW); return it at its best validation score.

    `validate(model)` returns ``(score, value)`` after each epoch: `score` a tuple, lower is
    better, compared on all but its last entry first and on the last one with `tolerance` (None:
    keep the last epoch); `value` is recorded. Training stops after `patience` epochs without a
    better score, unless `epoch_rows` gives an explicit per-epoch schedule of training rows (an
    RS2 subset); without it every epoch is a shuffled pass over all rows. Batches smaller than
    `min_batch` are skipped (batch norm of one row is undefined for some losses).
    """
    import torch

    torch.manual_seed(seed)  # weight init; the loss and the batch order have their own generators
    gen = torch.Generator().manual_seed(seed)
    model = head_class()(X.shape[1], n_outputs, hidden=hidden, dropout=dropout)
    if standardize:
        scale = X.std(0)
        model.mean.copy_(torch.as_tensor(X.mean(0)))
        model.scale.copy_(torch.as_tensor(np.where(scale > 1e-6, scale, 1.0)))
    model.to(device), loss.to(device)
    Xt, Yt = torch.as_tensor(X, dtype=torch.float32, device=device), torch.as_tensor(targets, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n_epochs = len(epoch_rows) if epoch_rows is not None else max_epochs
    best, best_state, since, fit = None, None, 0, FitResult(model)
    for epoch in range(n_epochs):
        model.train()
        loss.train()
        rows = (torch.as_tensor(epoch_rows[epoch], device=device)[torch.randperm(len(epoch_rows[epoch]), generator=gen).to(device)]
                if epoch_rows is not None else torch.randperm(len(X), generator=gen).to(device))
        for s in range(0, len(rows), batch_size):
            idx = rows[s:s + batch_size]
            if len(idx) < min_batch and len(rows) > 1:
                continue
            value = loss.compute(model, Xt[idx], Yt[idx], index=idx)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
        score, recorded = validate(model)
        fit.values.append(recorded)
        fit.epochs = epoch + 1
        if progress:
            progress(epoch + 1, n_epochs)
        if score is None:
            fit.best_epoch = fit.epochs
            continue
        best = best or (np.inf,) * len(score)
        if score[:-1] < best[:-1] or (score[:-1] == best[:-1] and score[-1] < best[-1] - tolerance):
            best, since, fit.best_epoch = score, 0, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since += 1
            if since >= patience and epoch_rows is None:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return fit


# ---------------------------------------------------------------------------------------------
# The trainer hook


@dataclass(frozen=True)
class TrainRequest:
    """The options of one ``train`` run that a task's :class:`Trainer` reads (the skeleton checked the rest)."""

    loss: str = "ce"
    loss_params: dict | None = None
    labels: str = "label"
    eval_labels: str = "label"
    subset: str | None = None
    teachers: Sequence[str] = ()
    monitor: str | None = "accuracy"
    seed: int = 0
    device: str = "cpu"


@dataclass
class TrainTargets:
    """What a :class:`Trainer` learns and scores, one entry per usable embedded row (see :meth:`Trainer.targets`)."""

    y_train: np.ndarray  # the training target: class ids, soft rows (n, K), multi-hot (n, K), floats
    y_eval: np.ndarray  # what held-out rows are scored against
    trainable: np.ndarray  # bool: the row has a training target
    scored: np.ndarray  # bool: the row has an evaluation target
    strata: np.ndarray  # int64: the inner validation split keeps these proportions (zeros: none)


@dataclass
class FitPlan:
    """The loss, the targets and the validation of one fit (:meth:`Trainer.plan`)."""

    loss: object  # has compute(model, x, y, index=) and to(device) / train()
    targets: np.ndarray  # the training targets of the fit rows, in the dtype the loss takes
    validate: Callable  # validate(model) -> (score tuple or None, recorded value)
    params: dict = field(default_factory=dict)  # the loss's parameters, for the model card
    teachers: list[str] = field(default_factory=list)


class Trainer:
    """A task type's part of a ``train`` run; the skeleton (:func:`labelkit.train.train`) does the rest.

    The skeleton reads the usable embedded rows (:meth:`usable`), their targets (:meth:`targets`),
    keeps the held-out rows fixed at ingest for scoring, picks the training rows (subset, inner
    validation split), fits a :func:`head_class` head with :meth:`plan`'s loss through
    :func:`fit_model`, scores :meth:`predict` of the held-out rows with :meth:`metrics` and writes
    the model and its card.
    """

    task: ClassVar[str | None] = None  # recorded in the card and checkpoint (None: multiclass, as before)
    metrics_doc: ClassVar[dict[str, str]] = {}  # held-out metric -> description (train --check)
    check_example: ClassVar[str] = "accuracy<0.9"
    link: ClassVar[str] = "softmax"  # how outputs become predictions (model_outputs)
    min_rows: ClassVar[int] = 10
    min_batch: ClassVar[int] = 2
    tolerance: ClassVar[float] = 1e-6
    standardize: ClassVar[bool] = True
    schedules: ClassVar[bool] = False  # whether RS2 epochs and SMOTE rows of a subset apply
    all_embedded: ClassVar[bool] = False  # True: a usable row without an embedding is an error
    value_name: ClassVar[str] = "val_loss"  # the card's name of the recorded validation value (best_<name>)

    def __init__(self, request: TrainRequest):
        self.request = request
        self.loss_name = request.loss

    def usable(self, items) -> np.ndarray:
        """Return the bool mask of the items rows (an Arrow table of :attr:`item_columns`) that train may use."""
        return items.column("error").is_null().to_numpy(zero_copy_only=False)

    item_columns: ClassVar[tuple[str, ...]] = ("id", "content_hash", "error")

    def targets(self, ws, ids, items) -> TrainTargets:
        """Return the targets of the usable embedded rows `ids` (`items`: their items rows)."""
        raise NotImplementedError

    def outputs(self, data) -> int:
        """Return the number of outputs of the head."""
        raise NotImplementedError

    def plan(self, ws, data, fit_ids: list, Y_fit: np.ndarray, X_fit: np.ndarray, X_val: np.ndarray,
             Y_val: np.ndarray) -> FitPlan:
        """Return the loss, targets and validation of the fit rows."""
        raise NotImplementedError

    def predict(self, model, X: np.ndarray, device: str) -> np.ndarray:
        """Return the model's predictions of the rows of `X` (in target units)."""
        return model_outputs(model, X, link=self.link, device=device)

    def metrics(self, outputs: np.ndarray, y_eval: np.ndarray) -> dict:
        """Return the held-out metrics (keys of :attr:`metrics_doc`)."""
        raise NotImplementedError

    def hash_lines(self, ids: Sequence[str], Y: np.ndarray) -> bytes:
        """Return the bytes the card's ``data_hash`` is taken of: one line per training row."""
        return "\n".join(f"{i}\t{y!r}" for i, y in zip(ids, Y)).encode()

    def extras(self) -> dict:
        """Return what the checkpoint and the card's ``training`` record besides the shared fields."""
        return {}


def check_head(head: str) -> str:
    """Return `head` if it is one of :data:`HEADS`, else raise the user error."""
    if head not in HEADS:
        raise LabelkitError(f"The 'head' parameter of train must be one of {', '.join(HEADS)}. Got {head!r} instead.")
    return head
