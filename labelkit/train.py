"""`labelkit train`: a checked model on the curated data, trained through `labelkit.losses`.

A linear or one-hidden-layer head on the workspace embeddings, trained on a fixed stratified
split (the held-out part never changes between runs of the same workspace, so models trained on
the data as labelled, as pruned and as relabelled are compared on the same rows), with early
stopping on an inner validation part of the training rows. The model card records accuracy,
macro-F1, NLL, ECE (15 bins) and Brier score on the held-out rows, and `--check` turns thresholds
on them into exit code 1.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow.parquet as pq

from labelkit.errors import LabelkitError, check_in_range
from labelkit.heads import HEADS, head_class as _head_class, predict_proba  # noqa: F401  (public API)
# The split is fixed once at ingest (labelkit.splits) and shared with `issues`, so the probe never
# trains on the rows `train` evaluates on; heldout_split is re-exported for existing callers.
from labelkit.splits import HELDOUT_SPLITS, heldout_mask, heldout_split, read_heldout_fingerprint  # noqa: F401
from labelkit.workspace import (Workspace, atomic_path, current_items_fingerprint, read_probs, require_current,
                                require_current_embeddings, write_json)
from labelkit.workspace import check_name
from labelkit.workspace import versions as _versions

TRAIN_METRICS = {
    "accuracy": "held-out accuracy",
    "macro_f1": "held-out macro-averaged F1",
    "nll": "held-out negative log-likelihood (log-loss)",
    "ece": "held-out expected calibration error, 15 equal-width bins",
    "brier": "held-out multi-class Brier score",
}
Progress = Callable[[int, "int | None"], None]


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


# ---------------------------------------------------------------------------------------------
# The model and the loop


def fit_head(X: np.ndarray, targets: np.ndarray, *, loss, n_classes: int, X_val: np.ndarray, y_val: np.ndarray,
             hidden: int = 256, dropout: float = 0.0, max_epochs: int = 200, batch_size: int = 128,
             lr: float = 1e-3, weight_decay: float = 1e-4, patience: int = 20,
             epoch_rows: list[np.ndarray] | None = None, monitor: str | None = "accuracy", seed: int = 0,
             device: str = "cpu", progress: Progress | None = None):
    """Train a head with `loss`; return (model at its best validation NLL, history dict).

    `targets` is class indices (n,) or soft labels (n, n_classes). `y_val` (class indices) drives
    early stopping: training stops after `patience` epochs without a lower validation NLL.
    `epoch_rows` is an explicit per-epoch schedule of training rows (an RS2 subset); without it
    every epoch is a shuffled pass over all rows.
    """
    import torch

    torch.manual_seed(seed)  # weight init; the loss and the batch order have their own generators
    gen = torch.Generator().manual_seed(seed)
    Head = _head_class()
    model = Head(X.shape[1], n_classes, hidden=hidden, dropout=dropout)
    mean = X.mean(0)
    scale = X.std(0)
    model.mean.copy_(torch.as_tensor(mean))
    model.scale.copy_(torch.as_tensor(np.where(scale > 1e-6, scale, 1.0)))
    model.to(device)
    loss.to(device)
    Xt = torch.as_tensor(X, dtype=torch.float32, device=device)
    Yt = torch.as_tensor(targets, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n_epochs = len(epoch_rows) if epoch_rows is not None else max_epochs
    if monitor not in ("nll", "accuracy", None):
        raise LabelkitError(f"The 'monitor' parameter of fit_head must be nll, accuracy or None. Got {monitor!r} instead.")
    best = (np.inf,) if monitor == "nll" else (np.inf, np.inf)
    best_state, since, history = None, 0, {"val_nll": [], "epochs": 0, "best_epoch": 0}
    yv = np.asarray(y_val)
    for epoch in range(n_epochs):
        model.train()
        loss.train()
        rows = (torch.as_tensor(epoch_rows[epoch], device=device)[torch.randperm(len(epoch_rows[epoch]), generator=gen).to(device)]
                if epoch_rows is not None else torch.randperm(len(X), generator=gen).to(device))
        for s in range(0, len(rows), batch_size):
            idx = rows[s:s + batch_size]
            if len(idx) < 2 and len(rows) > 1:
                continue
            value = loss.compute(model, Xt[idx], Yt[idx], index=idx)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
        probs = predict_proba(model, X_val, device=device)
        nll = float(-np.log(np.clip(probs[np.arange(len(yv)), yv], 1e-12, 1)).mean()) if len(yv) else 0.0
        history["val_nll"].append(nll)
        history["epochs"] = epoch + 1
        if progress:
            progress(epoch + 1, n_epochs)
        if monitor is None:
            continue
        # accuracy first, NLL breaking ties: small validation sets tie often, and the later,
        # better-calibrated epoch of equal accuracy is the one to keep
        acc = float((probs.argmax(1) == yv).mean()) if len(yv) else 0.0
        score = (nll,) if monitor == "nll" else (-acc, nll)
        if score[:-1] < best[:-1] or (score[:-1] == best[:-1] and score[-1] < best[-1] - 1e-4):
            best, since = score, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            history["best_epoch"] = epoch + 1
        else:
            since += 1
            if since >= patience and epoch_rows is None:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    if monitor is None:
        history["best_epoch"] = history["epochs"]
    history["best_val_nll"] = history["val_nll"][history["best_epoch"] - 1] if history["val_nll"] else None
    return model, history


# ---------------------------------------------------------------------------------------------
# Reading labels, subsets and teachers from the workspace


def read_labels(ws: Workspace, version: str, ids: Sequence[str], classes: list[str]) -> np.ndarray:
    """Return the class ids (−1 = none) of `ids` under label `version`, or soft labels for 'soft'."""
    if version == "label":
        if ws.read_manifest().get("task") == "multiannotator":  # the CROWDLAB consensus, not the majority vote
            from labelkit.tasks.multiannotator import read_consensus_labels

            return read_consensus_labels(ws, ids, classes)
        items = ws.read_items(columns=["id", "label_id"])
        where = dict(zip(items["id"], items["label_id"]))
        return np.array([where.get(i, -1) for i in ids], np.int64)
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


def read_subset(ws: Workspace, name: str):
    """Return the subset table NAME as a DataFrame, or raise the user error naming known subsets."""
    path = ws.subset_path(name)
    if not path.exists():
        known = sorted(p.stem for p in (ws.root / "subsets").glob("*.parquet"))
        raise LabelkitError(f"No subset {name!r} in {ws.root}; known: {', '.join(known) or 'none'} "
                            "(make one with `labelkit select`).")
    require_current(ws, path, rerun=f"select METHOD --name {name}")
    return pq.read_table(path).to_pandas()


def load_model(path: Path | str, device: str = "cpu"):
    """Return (model, checkpoint dict) saved by :func:`train` in `path` (a models/<name> folder)."""
    import torch

    ckpt = torch.load(Path(path) / "model.pt", map_location=device, weights_only=True)
    Head = _head_class()
    model = Head(ckpt["d_in"], ckpt["n_classes"], hidden=ckpt["hidden"]).to(device)
    model.load_state_dict(ckpt["state_dict"])
    return model, ckpt


# ---------------------------------------------------------------------------------------------
# The verb


@dataclass
class TrainResult:
    name: str
    model_dir: Path
    card: dict
    check: dict | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.check is None or self.check["passed"]

    def to_dict(self) -> dict:
        return {"name": self.name, "model_dir": str(self.model_dir), "card": self.card, "check": self.check,
                "warnings": self.warnings}


def train(workspace: Workspace | Path | str = "labelkit-out", *, loss: str = "ce", loss_params: dict | None = None,
          labels: str = "label", subset: str | None = None, eval_labels: str = "label", name: str | None = None,
          head: str = "mlp", hidden: int = 256, max_epochs: int = 200, batch_size: int = 128, lr: float = 1e-3,
          weight_decay: float = 1e-4, patience: int = 20, monitor: str | None = "accuracy",
          heldout_fraction: float | None = None,
          teachers: Sequence[str] = (), check: bool = False, fail_on: list[str] | None = None,
          config_start: Path | str = ".", device: str = "auto", seed: int = 0,
          progress: Progress | None = None) -> TrainResult:
    """Train a head on the workspace embeddings with a loss from :mod:`labelkit.losses`.

    Writes ``models/<name>/model.pt`` and ``model_card.json``. With `check` (or `fail_on` rules,
    else ``[tool.labelkit.train] fail_on`` in the nearest pyproject.toml), the result carries a
    verdict and the CLI exits 1 when a rule holds (e.g. ``accuracy<0.9``).
    """
    import torch

    from labelkit import gate
    from labelkit.features import resolve_device
    from labelkit.losses import LOSSES

    started = time.perf_counter()
    if head not in HEADS:
        raise LabelkitError(f"The 'head' parameter of train must be one of {', '.join(HEADS)}. Got {head!r} instead.")
    if heldout_fraction is not None:
        check_in_range(heldout_fraction, "heldout_fraction", "train", low=0, high=1, low_closed=False, high_closed=False)
    check_in_range(max_epochs, "max_epochs", "train", low=1, kind="an int")
    for param, value in (("name", name), ("subset", subset), *(("teachers", t) for t in teachers)):
        if value is not None:  # names become paths under models/ and subsets/
            check_name(value, "train", param=param)
    task_ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    if task_ws.manifest_path.exists() and task_ws.read_manifest().get("task") == "regression":
        from labelkit.tasks.regression import train as regression_train  # MSE/Huber head, MAE/RMSE/R²

        return regression_train(task_ws, loss=loss, loss_params=loss_params, labels=labels, subset=subset,
                                eval_labels=eval_labels, name=name, head=head, hidden=hidden, max_epochs=max_epochs,
                                batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience,
                                teachers=teachers, check=check, fail_on=fail_on, config_start=config_start,
                                device=device, seed=seed, progress=progress, heldout_fraction=heldout_fraction)
    if task_ws.manifest_path.exists() and task_ws.read_manifest().get("task") == "multilabel":
        from labelkit.tasks.multilabel import train as multilabel_train  # per-tag sigmoid head, BCE, micro/macro F1

        return multilabel_train(task_ws, loss=loss, labels=labels, subset=subset, name=name, head=head, hidden=hidden,
                                max_epochs=max_epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                patience=patience, check=check, fail_on=fail_on, config_start=config_start,
                                device=device, seed=seed, progress=progress, teachers=teachers,
                                eval_labels=eval_labels, loss_params=loss_params)
    rules, rules_source = gate.resolve_check_rules(check, fail_on, config_start=config_start, metrics=TRAIN_METRICS,
                                                   example="accuracy<0.9")
    if loss not in LOSSES:
        raise LabelkitError(f"Unknown loss {loss!r}; known: {', '.join(sorted(LOSSES))}.")

    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    device = resolve_device(device)
    data = _load_training_data(ws, labels=labels, eval_labels=eval_labels, heldout_fraction=heldout_fraction)
    train_rows, epoch_ids, synth = _training_rows(ws, data, labels=labels, subset=subset)
    X_train, Y_train, n_synthetic = _with_synthetic_rows(data, train_rows, synth)
    fit_rows, val_rows, y_val, epoch_rows = _inner_split(data, train_rows, X_train, Y_train, epoch_ids)
    loss_fn, targets, teacher_names = _loss(ws, data, loss=loss, loss_params=loss_params, teachers=teachers,
                                            X_fit=X_train[fit_rows], Y_fit=Y_train[fit_rows],
                                            fit_ids=[data.ids[train_rows[r]] for r in fit_rows if r < len(train_rows)],
                                            n_fit=len(fit_rows), seed=seed, device=device)
    model, history = fit_head(X_train[fit_rows], targets, loss=loss_fn, n_classes=data.K, X_val=X_train[val_rows],
                              y_val=y_val, hidden=hidden if head == "mlp" else 0, max_epochs=max_epochs,
                              batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience,
                              epoch_rows=epoch_rows, monitor=monitor, seed=seed, device=device, progress=progress)
    probs = predict_proba(model, data.X_all[data.eval_rows], device=device)
    metrics = classification_metrics(probs, data.y_eval[data.eval_rows])

    name = name or "-".join([loss, labels] + ([subset] if subset else []))
    out_dir = ws.model_dir(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = {"state_dict": model.state_dict(), "d_in": int(data.X_all.shape[1]), "n_classes": data.K,
            "hidden": hidden if head == "mlp" else 0, "classes": data.classes, "embedding_key": data.key}
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save(ckpt, tmp)
    data_hash = hashlib.sha256("\n".join(f"{data.ids[r]}\t{_label_repr(Y_train[j])}"
                                          for j, r in enumerate(train_rows)).encode()).hexdigest()
    card = {
        "name": name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "embedding_key": data.key, "labels": labels, "eval_labels": eval_labels, "subset": subset,
        "loss": {"name": loss, "params": {k: v for k, v in loss_fn.params().items()}},
        "teachers": teacher_names,
        "head": {"type": head, "hidden": hidden if head == "mlp" else 0},
        "optimizer": {"name": "AdamW", "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size},
        "training": {"rows": int(len(fit_rows)), "synthetic_rows": n_synthetic, "inner_validation_rows": int(len(val_rows)),
                     "epochs": history["epochs"], "best_epoch": history["best_epoch"],
                     "best_val_nll": history["best_val_nll"], "early_stopping_patience": patience, "monitor": monitor,
                     "schedule": "rs2 subset" if epoch_rows is not None else "full passes"},
        "heldout": {"rows": int(len(data.eval_rows)), "fraction": data.held_record.get("fraction"),
                    "source": data.held_record["source"], "ids_fingerprint": data.held_record["ids_fingerprint"]},
        "items_fingerprint": data.items_fp,
        "data_hash": data_hash, "metrics": metrics, "classes": data.classes, "seed": seed, "device": device,
        "versions": _versions(), "seconds": round(time.perf_counter() - started, 3),
    }
    verdict = None
    if rules is not None:
        verdict = gate.evaluate(rules, metrics) | {"source": rules_source}
        card["check"] = verdict
    write_json(card, out_dir / "model_card.json")
    ws.update_stage("train", {"latest": name, "metrics": {k: v for k, v in metrics.items() if k != "reliability"}})
    return TrainResult(name=name, model_dir=out_dir, card=card, check=verdict)


@dataclass
class _TrainingData:
    """The usable embedded rows of a workspace, with their labels and the held-out split."""

    classes: list[str]
    key: str  # embedding table
    items_fp: str
    ids: list[str]
    X_all: np.ndarray
    given: np.ndarray  # the ingested labels
    held: np.ndarray  # held-out mask (fixed at ingest)
    held_record: dict
    y_eval: np.ndarray  # labels the held-out rows are scored against (-1: none)
    eval_rows: np.ndarray
    y_train_all: np.ndarray  # the training labels: class indices, or soft rows (n, K)
    has_label: np.ndarray

    @property
    def K(self) -> int:
        return len(self.classes)


def _load_training_data(ws: Workspace, *, labels: str, eval_labels: str,
                        heldout_fraction: float | None) -> _TrainingData:
    """Step 1: read the embeddings of the usable rows, their label versions and the held-out split."""
    from labelkit.features import load_workspace_embeddings

    classes = ws.read_manifest()["classes"]
    key, emb_ids, matrix = load_workspace_embeddings(ws)
    items_fp = current_items_fingerprint(ws)
    items_table = ws.read_items_table(["id", "label_id", "split", "content_hash", "error"])
    require_current_embeddings(ws, key, items_table.column("id").combine_chunks(),
                               items_table.column("content_hash").combine_chunks())
    items = items_table.to_pandas()
    usable = items["error"].isna().to_numpy() & (items["label_id"].to_numpy() >= 0)
    row_of = {i: r for r, i in enumerate(emb_ids)}
    ids = [i for i, u in zip(items["id"], usable) if u and i in row_of]
    if not ids:
        raise LabelkitError(f"No usable embedded rows in {ws.root}; run `labelkit embed -w {ws.root}`.")
    X_all = matrix[[row_of[i] for i in ids]]
    given = read_labels(ws, "label", ids, classes)
    # The held-out rows were fixed at ingest; every model, probe and subset of this workspace
    # is scored on (and kept away from) the same ids.
    held, held_record = heldout_mask(ws, ids)
    if heldout_fraction is not None and heldout_fraction != held_record.get("fraction"):
        raise LabelkitError(f"The held-out split of {ws.root} was fixed at ingest ({held_record['rows']} rows, "
                            f"{held_record['source']}, fraction {held_record.get('fraction')}); 'heldout_fraction' "
                            f"{heldout_fraction} cannot change it.")
    y_eval = given if eval_labels == "label" else read_labels(ws, eval_labels, ids, classes)
    if y_eval.ndim == 2:
        y_eval = np.where(np.isnan(y_eval).any(1), -1, np.nan_to_num(y_eval).argmax(1))
    y_train_all = read_labels(ws, labels, ids, classes)
    if y_train_all.ndim == 2:  # soft labels; rows without one fall back to the given label
        missing = np.isnan(y_train_all).any(1)
        y_train_all[missing] = np.eye(len(classes), dtype=np.float32)[given[missing]]
        has_label = np.ones(len(ids), bool)
    else:
        has_label = y_train_all >= 0
    return _TrainingData(classes=classes, key=key, items_fp=items_fp, ids=ids, X_all=X_all, given=given, held=held,
                         held_record=held_record, y_eval=y_eval, eval_rows=np.flatnonzero(held & (y_eval >= 0)),
                         y_train_all=y_train_all, has_label=has_label)


def _training_rows(ws: Workspace, data: _TrainingData, *, labels: str, subset: str | None):
    """Step 2: the rows a model may train on — not held out, labelled, in the subset when one is named.

    Returns (row indices, RS2 epoch id sets or None, synthetic SMOTE rows or None).
    """
    train_mask = ~data.held & data.has_label
    epoch_ids, synth = None, None
    if subset is not None:
        sub = read_subset(ws, subset)
        is_synthetic = sub["synthetic"].astype(bool) if "synthetic" in sub.columns else np.zeros(len(sub), bool)
        real = sub[~is_synthetic]
        keep = set(real["id"])
        train_mask &= np.array([i in keep for i in data.ids])
        if "epoch" in sub.columns and sub["epoch"].notna().any():
            epoch_ids = [set(g["id"]) for _, g in real.groupby("epoch", sort=True)]
        if is_synthetic.any():
            synth = sub[is_synthetic]
    train_rows = np.flatnonzero(train_mask)
    if len(train_rows) < 2:
        raise LabelkitError(f"Only {len(train_rows)} training rows remain (held-out split, labels {labels!r}"
                            + (f", subset {subset!r}" if subset else "") + "); nothing to train on.")
    return train_rows, epoch_ids, synth


def _with_synthetic_rows(data: _TrainingData, train_rows: np.ndarray, synth):
    """Step 3: the training matrix plus SMOTE rows, dropping any whose parents include a held-out row."""
    X_train, Y_train = data.X_all[train_rows], data.y_train_all[train_rows]
    if synth is None:
        return X_train, Y_train, 0
    held_ids = {data.ids[r] for r in np.flatnonzero(data.held)}
    ok = synth[[not (set(p) & held_ids) for p in synth["parent_ids"]]]
    if not len(ok):
        return X_train, Y_train, 0
    index = {c: k for k, c in enumerate(data.classes)}
    Xs = np.stack(ok["embedding"].to_numpy()).astype(np.float32)
    ys = np.array([index[c] for c in ok["label"]], np.int64)
    X_train = np.concatenate([X_train, Xs])
    Y_train = (np.concatenate([Y_train, np.eye(data.K, dtype=np.float32)[ys]]) if Y_train.ndim == 2
               else np.concatenate([Y_train, ys]))
    return X_train, Y_train, len(ok)


def _inner_split(data: _TrainingData, train_rows: np.ndarray, X_train: np.ndarray, Y_train: np.ndarray, epoch_ids):
    """Step 4: a fixed 10 % of the real training rows for early stopping; RS2 epochs over the rest.

    Returns (fit rows, validation rows, validation labels, per-epoch row lists or None), as
    indices into `X_train`.
    """
    inner = heldout_split([data.ids[r] for r in train_rows], data.given[train_rows], fraction=0.1, salt="inner")
    fit_rows = np.concatenate([np.flatnonzero(~inner), np.arange(len(train_rows), len(X_train))])
    val_rows = np.flatnonzero(inner)
    y_val = Y_train[val_rows] if Y_train.ndim == 1 else Y_train[val_rows].argmax(1)
    epoch_rows = None
    if epoch_ids is not None:
        fit_ids = [data.ids[train_rows[r]] if r < len(train_rows) else None for r in fit_rows]
        epoch_rows = [np.array([j for j, i in enumerate(fit_ids) if i in e], np.int64) for e in epoch_ids]
        epoch_rows = [e for e in epoch_rows if len(e)]
    return fit_rows, val_rows, y_val, epoch_rows


def _loss(ws: Workspace, data: _TrainingData, *, loss: str, loss_params: dict | None, teachers: Sequence[str],
          X_fit: np.ndarray, Y_fit: np.ndarray, fit_ids: list[str], n_fit: int, seed: int, device: str):
    """Step 5: the loss from labelkit.losses and its targets (the teachers' for distillation)."""
    from labelkit.losses import LOSSES, get_loss

    params = dict(loss_params or {})
    if "seed" in LOSSES[loss].param_names():  # mixing draws follow --seed unless a loss seed is given
        params.setdefault("seed", seed)
    if LOSSES[loss].needs_index:
        params |= {"n_samples": n_fit, "n_classes": data.K}
    if loss != "distill" and teachers:
        raise LabelkitError("--teacher only applies to --loss distill.")
    targets, teacher_names = Y_fit, []
    if loss == "distill":
        targets, teacher_names = _teacher_targets(ws, teachers, X_fit, fit_ids, device=device,
                                                  heldout_record=data.held_record)
    return get_loss(loss, **params), targets, teacher_names


def _label_repr(y) -> str:
    return str(int(y)) if np.ndim(y) == 0 else ",".join(f"{v:.4f}" for v in y)


def _teacher_targets(ws: Workspace, teachers: Sequence[str], X: np.ndarray, real_ids: list[str], *, device: str,
                     heldout_record: dict):
    """Return (averaged teacher probabilities for the rows of X, teacher names) for distillation."""
    from labelkit.losses import ensemble_soft_targets
    import torch

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

