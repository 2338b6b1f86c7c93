"""The verb hooks the classification task types share (multiclass, multi-annotator): train, select prune.

:class:`ClassificationTrainer` trains on one class per row with a loss from
:mod:`labelkit.losses` (label versions, soft labels, distillation teachers, RS2 and SMOTE
subsets) and scores accuracy, macro-F1, NLL, ECE and Brier on the held-out rows;
:func:`class_prune_rows` is what ``select prune`` writes for them.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from labelkit.errors import LabelkitError
from labelkit.heads import FitPlan, Trainer, TrainTargets, model_outputs
from labelkit.splits import read_heldout_fingerprint
from labelkit.workspace import current_items_fingerprint, read_probs, require_current

TRAIN_METRICS = {
    "accuracy": "held-out accuracy",
    "macro_f1": "held-out macro-averaged F1",
    "nll": "held-out negative log-likelihood (log-loss)",
    "ece": "held-out expected calibration error, 15 equal-width bins",
    "brier": "held-out multi-class Brier score",
}


# ---------------------------------------------------------------------------------------------
# Metrics


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> tuple[float, list[dict]]:
    """Return (ECE, reliability bins) of the top-class confidence in `n_bins` equal-width bins.

    ECE = Σ_b (|B_b| / n) · |accuracy(B_b) − confidence(B_b)| (Guo et al., "On Calibration of
    Modern Neural Networks", ICML 2017). Bins are (lo, hi], the first one [0, hi].
    """
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece, reliability = 0.0, []
    for b in range(n_bins):
        m = bins == b
        if not m.any():
            continue
        acc, avg = float(correct[m].mean()), float(conf[m].mean())
        ece += m.mean() * abs(acc - avg)
        reliability.append({"bin": b, "confidence": avg, "accuracy": acc, "count": int(m.sum())})
    return float(ece), reliability


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Return accuracy, macro-F1, NLL, ECE-15, Brier and the reliability bins."""
    from sklearn.metrics import f1_score

    K = probs.shape[1]
    p = np.clip(probs, 1e-12, 1.0)
    onehot = np.eye(K)[labels]
    ece, reliability = expected_calibration_error(probs, labels)
    return {
        "n": int(len(labels)),
        "accuracy": float((probs.argmax(1) == labels).mean()),
        "macro_f1": float(f1_score(labels, probs.argmax(1), average="macro", labels=np.unique(labels))),
        "nll": float(-np.log(p[np.arange(len(labels)), labels]).mean()),
        "ece": ece,
        "brier": float(((probs - onehot) ** 2).sum(1).mean()),
        "reliability": reliability,
    }


def validation_score(probs: np.ndarray, yv: np.ndarray, monitor: str | None) -> tuple[tuple | None, float]:
    """Return (the early-stopping score, lower is better, or None; the validation NLL) of softmax outputs.

    Accuracy first, NLL breaking ties: small validation sets tie often, and the later,
    better-calibrated epoch of equal accuracy is the one to keep.
    """
    nll = float(-np.log(np.clip(probs[np.arange(len(yv)), yv], 1e-12, 1)).mean()) if len(yv) else 0.0
    if monitor is None:
        return None, nll
    acc = float((probs.argmax(1) == yv).mean()) if len(yv) else 0.0
    return ((nll,) if monitor == "nll" else (-acc, nll)), nll


def check_monitor(monitor: str | None, caller: str) -> None:
    if monitor not in ("nll", "accuracy", None):
        raise LabelkitError(f"The 'monitor' parameter of {caller} must be nll, accuracy or None. Got {monitor!r} instead.")


# ---------------------------------------------------------------------------------------------
# Labels


def item_labels(ws, ids: Sequence[str]) -> np.ndarray:
    """Return the ingested class id of each of `ids` (−1 = none)."""
    items = ws.read_items(columns=["id", "label_id"])
    where = dict(zip(items["id"], items["label_id"]))
    return np.array([where.get(i, -1) for i in ids], np.int64)


def read_label_version(ws, version: str, ids: Sequence[str], classes: list[str], given) -> np.ndarray:
    """Return the class ids (−1 = none) of `ids` under label `version`, or soft labels for 'soft'.

    `given(ws, ids)` returns the task's own labels for ``version='label'``.
    """
    if version == "label":
        return given(ws, ids)
    if version == "soft":
        path = ws.soft_labels_path
        if not path.exists():
            raise LabelkitError(f"No soft labels in {ws.root}; run `labelkit relabel -w {ws.root}` first.")
        require_current(ws, path, rerun="relabel")
        table = pq.read_table(path, columns=["id", "soft_label"])
        soft = np.asarray(table.column("soft_label").to_pylist(), np.float32)
        where = dict(zip(table.column("id").to_pylist(), range(len(soft))))
        out = np.full((len(ids), len(classes)), np.nan, np.float32)
        for r, i in enumerate(ids):
            if i in where:
                out[r] = soft[where[i]]
        return out
    versions = ws.read_manifest().get("label_versions", {})
    if version not in versions:
        raise LabelkitError(f"Unknown label version {version!r} in {ws.root}; known: "
                            f"{', '.join(['label', 'soft', *versions])}.")
    require_current(ws, ws.label_version_path(version), rerun="relabel --apply")
    table = pq.read_table(ws.label_version_path(version), columns=["id", "label"])
    index = {c: k for k, c in enumerate(classes)}
    where = dict(zip(table.column("id").to_pylist(), table.column("label").to_pylist()))
    return np.array([index.get(where.get(i), -1) for i in ids], np.int64)


# ---------------------------------------------------------------------------------------------
# The trainer


class ClassificationTrainer(Trainer):
    """One class per row: a softmax head, any loss of :mod:`labelkit.losses`, label versions and teachers."""

    metrics_doc = TRAIN_METRICS
    check_example = "accuracy<0.9"
    min_rows = 2
    tolerance = 1e-4
    schedules = True
    value_name = "val_nll"
    item_columns = ("id", "label_id", "content_hash", "error")

    def __init__(self, request):
        from labelkit.losses import LOSSES

        super().__init__(request)
        if request.loss not in LOSSES:
            raise LabelkitError(f"Unknown loss {request.loss!r}; known: {', '.join(sorted(LOSSES))}.")
        check_monitor(request.monitor, "fit_head")
        if request.loss != "distill" and request.teachers:
            raise LabelkitError("--teacher only applies to --loss distill.")

    def given(self, ws, ids: Sequence[str]) -> np.ndarray:
        """Return the task's own label of each row (multi-annotator: the CROWDLAB consensus)."""
        return item_labels(ws, ids)

    def read_labels(self, ws, version: str, ids: Sequence[str], classes: list[str]) -> np.ndarray:
        return read_label_version(ws, version, ids, classes, self.given)

    def usable(self, items) -> np.ndarray:
        return super().usable(items) & (items.column("label_id").to_numpy(zero_copy_only=False) >= 0)

    def targets(self, ws, ids, items) -> TrainTargets:
        self.classes = ws.read_manifest()["classes"]
        ids = list(ids)
        given = self.read_labels(ws, "label", ids, self.classes)
        y_eval = given if self.request.eval_labels == "label" else self.read_labels(ws, self.request.eval_labels, ids,
                                                                                   self.classes)
        if y_eval.ndim == 2:
            y_eval = np.where(np.isnan(y_eval).any(1), -1, np.nan_to_num(y_eval).argmax(1))
        y_train = self.read_labels(ws, self.request.labels, ids, self.classes)
        if y_train.ndim == 2:  # soft labels; rows without one fall back to the given label
            missing = np.isnan(y_train).any(1)
            y_train[missing] = np.eye(len(self.classes), dtype=np.float32)[given[missing]]
            trainable = np.ones(len(ids), bool)
        else:
            trainable = y_train >= 0
        return TrainTargets(y_train=y_train, y_eval=y_eval, trainable=trainable, scored=y_eval >= 0, strata=given)

    def outputs(self, data) -> int:
        return len(self.classes)

    def synthetic_targets(self, labels) -> np.ndarray:
        """Return the class ids of SMOTE rows from their label names."""
        index = {c: k for k, c in enumerate(self.classes)}
        return np.array([index[c] for c in labels], np.int64)

    def plan(self, ws, data, fit_ids, Y_fit, X_fit, X_val, Y_val) -> FitPlan:
        """The loss from labelkit.losses and its targets (the teachers' for distillation)."""
        from labelkit.losses import LOSSES, get_loss

        req = self.request
        params = dict(req.loss_params or {})
        if "seed" in LOSSES[req.loss].param_names():  # mixing draws follow --seed unless a loss seed is given
            params.setdefault("seed", req.seed)
        if LOSSES[req.loss].needs_index:
            params |= {"n_samples": len(Y_fit), "n_classes": len(self.classes)}
        targets, teachers = Y_fit, []
        if req.loss == "distill":
            targets, teachers = teacher_targets(ws, req.teachers, X_fit, fit_ids, device=req.device,
                                                heldout_record=data.held_record)
        loss = get_loss(req.loss, **params)
        yv = Y_val if Y_val.ndim == 1 else Y_val.argmax(1)
        validate = lambda model: validation_score(model_outputs(model, X_val, device=req.device), yv,  # noqa: E731
                                                  req.monitor)
        return FitPlan(loss=loss, targets=targets, validate=validate, params=dict(loss.params()), teachers=teachers)

    def metrics(self, outputs, y_eval) -> dict:
        return classification_metrics(outputs, y_eval)

    def hash_lines(self, ids, Y) -> bytes:
        return "\n".join(f"{i}\t{_label_repr(y)}" for i, y in zip(ids, Y)).encode()

    def extras(self) -> dict:
        return {"card": {"monitor": self.request.monitor}, "ckpt": {"classes": self.classes}}


def _label_repr(y) -> str:
    return str(int(y)) if np.ndim(y) == 0 else ",".join(f"{v:.4f}" for v in y)


def teacher_targets(ws, teachers: Sequence[str], X: np.ndarray, real_ids: list[str], *, device: str,
                    heldout_record: dict):
    """Return (averaged teacher probabilities for the rows of X, teacher names) for distillation."""
    import torch

    from labelkit.heads import load_model, predict_proba
    from labelkit.losses import ensemble_soft_targets

    if teachers:
        probs = []
        for t in teachers:
            d = ws.model_dir(t)
            if not (d / "model.pt").exists():
                raise LabelkitError(f"No model {t!r} in {ws.root}/models; train it first.")
            card_path = d / "model_card.json"
            card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.exists() else {}
            if card.get("items_fingerprint") != current_items_fingerprint(ws):
                raise LabelkitError(f"{d} was trained on different data; run `labelkit train -w {ws.root} --name {t}` again.")
            model, _ = load_model(d, device)
            probs.append(torch.as_tensor(predict_proba(model, X, device=device)))
        return ensemble_soft_targets(probs).numpy(), list(teachers)
    # Default teacher: the out-of-sample probe of `labelkit issues`.
    if not ws.probs_path.exists():
        raise LabelkitError(f"--loss distill needs teachers: pass --teacher MODEL or run `labelkit issues -w {ws.root}`.")
    require_current(ws, ws.probs_path)
    # The probe must have been kept off the held-out rows train evaluates on (labelkit.splits).
    if read_heldout_fingerprint(ws.probs_path) != heldout_record["ids_fingerprint"]:
        raise LabelkitError(f"{ws.probs_path} was not computed with this workspace's held-out split; "
                            f"run `labelkit issues -w {ws.root}` again.")
    prob_ids, P = read_probs(ws.probs_path)
    where = dict(zip(prob_ids, range(len(prob_ids))))
    if len(real_ids) != len(X):
        raise LabelkitError("--loss distill with the probe as teacher cannot use synthetic rows; pass --teacher MODEL.")
    return P[[where[i] for i in real_ids]], ["issues probe (probs.parquet)"]


# ---------------------------------------------------------------------------------------------
# select prune


def class_prune_rows(issues_df, keep: np.ndarray, classes: Sequence[str]):
    """Return what ``select prune`` writes for a classification workspace: the given labels, counts per class."""
    from labelkit.tasks.base import PruneRows

    given = issues_df["given_label"]
    before = class_counts(given, classes)
    after = class_counts(given[keep], classes)
    return PruneRows(label=pa.array(given[keep].tolist(), pa.string()), before=before, after=after)


def class_counts(labels, classes) -> dict:
    """Return {class: rows} over `classes` (and any other value met) of the labels."""
    s = {c: 0 for c in classes}
    for v in labels:
        s[v] = s.get(v, 0) + 1
    return s


# ---------------------------------------------------------------------------------------------
# explain


def top_probabilities(ws, row_id: str, n: int, *, also=()) -> list[dict] | None:
    """Return the row's `n` most likely classes from probs.parquet, then the classes in `also` not among them.

    None when the row has none.
    """
    import pyarrow.compute as pc

    if "pred_probs" not in pq.read_schema(ws.probs_path).names:
        raise LabelkitError(f"{ws.probs_path} has no pred_probs column; run `labelkit issues -w {ws.root}` again.")
    table = pq.read_table(ws.probs_path, columns=["id", "pred_probs"], filters=pc.field("id").isin([row_id]))
    if table.num_rows == 0:
        return None
    probs = np.asarray(table.column("pred_probs")[0].as_py(), np.float32)
    classes = ws.classes()
    order = np.argsort(-probs, kind="stable")
    wanted = set(also)
    order = [j for rank, j in enumerate(order.tolist()) if rank < n or classes[j] in wanted]
    return [{"class": classes[j], "probability": round(float(probs[j]), 4)} for j in order]
