"""`labelkit train`: a checked model on the curated data, trained through `labelkit.losses`.

A linear or one-hidden-layer head on the workspace embeddings, trained on a fixed stratified
split (the held-out part never changes between runs of the same workspace, so models trained on
the data as labelled, as pruned and as relabelled are compared on the same rows), with early
stopping on an inner validation part of the training rows. The model card records the task's
held-out metrics (multiclass: accuracy, macro-F1, NLL, ECE (15 bins) and Brier score), and
`--check` turns thresholds on them into exit code 1.

:func:`train` is written once for every task type: the task's :class:`labelkit.heads.Trainer`
(from :meth:`labelkit.tasks.base.TaskType.trainer`) gives the targets, the loss, the validation
score and the metrics; the rows, the split, the loop (:func:`labelkit.heads.fit_model`) and the
files are the same for all.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from labelkit.errors import LabelkitError, check_in_range
from labelkit.heads import HEADS, head_class as _head_class, load_model, predict_proba  # noqa: F401  (public API)
from labelkit.heads import TrainRequest, Trainer, check_head, fit_model
# The split is fixed once at ingest (labelkit.splits) and shared with `issues`, so the probe never
# trains on the rows `train` evaluates on; heldout_split is re-exported for existing callers.
from labelkit.splits import HELDOUT_SPLITS, heldout_mask, heldout_split, read_heldout_fingerprint  # noqa: F401
from labelkit.tasks import get_task, task_of_manifest
from labelkit.tasks._classify import (TRAIN_METRICS, check_monitor, classification_metrics,  # noqa: F401  (public API)
                                      expected_calibration_error, validation_score)
from labelkit.workspace import (Workspace, atomic_path, current_items_fingerprint, require_current,
                                require_current_embeddings, write_json)
from labelkit.workspace import check_name
from labelkit.workspace import versions as _versions

Progress = Callable[[int, "int | None"], None]


def fit_head(X: np.ndarray, targets: np.ndarray, *, loss, n_classes: int, X_val: np.ndarray, y_val: np.ndarray,
             hidden: int = 256, dropout: float = 0.0, max_epochs: int = 200, batch_size: int = 128,
             lr: float = 1e-3, weight_decay: float = 1e-4, patience: int = 20,
             epoch_rows: list[np.ndarray] | None = None, monitor: str | None = "accuracy", seed: int = 0,
             device: str = "cpu", progress: Progress | None = None):
    """Train a classification head with `loss`; return (model at its best validation score, history dict).

    `targets` is class indices (n,) or soft labels (n, n_classes). `y_val` (class indices) drives
    early stopping: training stops after `patience` epochs without a better validation score
    (`monitor`: accuracy with NLL breaking ties, or NLL; None keeps the last epoch).
    `epoch_rows` is an explicit per-epoch schedule of training rows (an RS2 subset); without it
    every epoch is a shuffled pass over all rows.
    """
    check_monitor(monitor, "fit_head")
    yv = np.asarray(y_val)
    fit = fit_model(X, targets, loss=loss, n_outputs=n_classes, hidden=hidden, dropout=dropout,
                    validate=lambda model: validation_score(predict_proba(model, X_val, device=device), yv, monitor),
                    max_epochs=max_epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience,
                    tolerance=1e-4, epoch_rows=epoch_rows, seed=seed, device=device, progress=progress)
    return fit.model, {"val_nll": fit.values, "epochs": fit.epochs, "best_epoch": fit.best_epoch,
                       "best_val_nll": fit.best_value}


# ---------------------------------------------------------------------------------------------
# Reading labels and subsets from the workspace


def read_labels(ws: Workspace, version: str, ids: Sequence[str], classes: list[str]) -> np.ndarray:
    """Return the class ids (−1 = none) of `ids` under label `version`, or soft labels for 'soft'.

    ``'label'`` is the task's own label (multi-annotator: the CROWDLAB consensus, the majority
    vote on held-out rows).
    """
    trainer = task_of_manifest(ws.read_manifest()).trainer(TrainRequest())
    return trainer.read_labels(ws, version, ids, classes)


def read_subset(ws: Workspace, name: str):
    """Return the subset table NAME as a DataFrame, or raise the user error naming known subsets."""
    path = ws.subset_path(name)
    if not path.exists():
        known = sorted(p.stem for p in (ws.root / "subsets").glob("*.parquet"))
        raise LabelkitError(f"No subset {name!r} in {ws.root}; known: {', '.join(known) or 'none'} "
                            "(make one with `labelkit select`).")
    require_current(ws, path, rerun=f"select METHOD --name {name}")
    return pq.read_table(path).to_pandas()


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
    """Train a head on the workspace embeddings with the task's loss (multiclass: :mod:`labelkit.losses`).

    Writes ``models/<name>/model.pt`` and ``model_card.json``. With `check` (or `fail_on` rules,
    else ``[tool.labelkit.train] fail_on`` in the nearest pyproject.toml), the result carries a
    verdict and the CLI exits 1 when a rule holds (e.g. ``accuracy<0.9``).
    """
    from labelkit import gate
    from labelkit.features import resolve_device

    started = time.perf_counter()
    check_head(head)
    if heldout_fraction is not None:
        check_in_range(heldout_fraction, "heldout_fraction", "train", low=0, high=1, low_closed=False, high_closed=False)
    check_in_range(max_epochs, "max_epochs", "train", low=1, kind="an int")
    for param, value in (("name", name), ("subset", subset), *(("teachers", t) for t in teachers)):
        if value is not None:  # names become paths under models/ and subsets/
            check_name(value, "train", param=param)
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    task = task_of_manifest(ws.read_manifest()) if ws.manifest_path.exists() else get_task(None)
    device = resolve_device(device)
    trainer = task.trainer(TrainRequest(loss=loss, loss_params=loss_params, labels=labels, eval_labels=eval_labels,
                                        subset=subset, teachers=tuple(teachers), monitor=monitor, seed=seed,
                                        device=device))
    rules, rules_source = gate.resolve_check_rules(check, fail_on, config_start=config_start,
                                                   metrics=trainer.metrics_doc, example=trainer.check_example)
    data = _load_training_data(ws, trainer, heldout_fraction=heldout_fraction)
    rows = _training_rows(ws, data, trainer, labels=labels, subset=subset)
    fit_rows, val_rows, epoch_rows = _inner_split(data, rows)
    fit_ids = [data.ids[rows.train[r]] for r in fit_rows if r < len(rows.train)]
    plan = trainer.plan(ws, data, fit_ids, rows.Y[fit_rows], rows.X[fit_rows], rows.X[val_rows], rows.Y[val_rows])
    hidden = hidden if head == "mlp" else 0
    fit = fit_model(rows.X[fit_rows], plan.targets, loss=plan.loss, n_outputs=trainer.outputs(data),
                    validate=plan.validate, hidden=hidden, standardize=trainer.standardize, max_epochs=max_epochs,
                    batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience,
                    tolerance=trainer.tolerance, min_batch=trainer.min_batch, epoch_rows=epoch_rows, seed=seed,
                    device=device, progress=progress)
    outputs = trainer.predict(fit.model, data.X_all[data.eval_rows], device)
    metrics = trainer.metrics(outputs, data.targets.y_eval[data.eval_rows])
    name = name or "-".join([trainer.loss_name, labels] + ([subset] if subset else []))
    run = {"head": head, "hidden": hidden, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
           "patience": patience, "seed": seed, "device": device, "started": started}
    card = _write_model(ws, trainer, data, rows, plan, fit, metrics, name=name, labels=labels,
                        eval_labels=eval_labels, subset=subset, fit_rows=fit_rows, val_rows=val_rows,
                        schedule="rs2 subset" if epoch_rows is not None else "full passes", run=run)
    verdict = None
    if rules is not None:
        verdict = gate.evaluate(rules, metrics) | {"source": rules_source}
        card["check"] = verdict
    out_dir = ws.model_dir(name)
    write_json(card, out_dir / "model_card.json")
    ws.update_stage("train", {"latest": name, "metrics": {k: v for k, v in metrics.items() if k != "reliability"}})
    return TrainResult(name=name, model_dir=out_dir, card=card, check=verdict)


@dataclass
class _TrainingData:
    """The usable embedded rows of a workspace, with their targets and the held-out split."""

    key: str  # embedding table
    items_fp: str
    ids: list[str]
    X_all: np.ndarray
    held: np.ndarray  # held-out mask (fixed at ingest)
    held_record: dict
    targets: object  # labelkit.heads.TrainTargets
    eval_rows: np.ndarray


@dataclass
class _TrainingRows:
    """The rows a model trains on: indices into the data, their matrix (plus SMOTE rows) and targets."""

    train: np.ndarray
    X: np.ndarray
    Y: np.ndarray
    synthetic: int = 0
    epoch_ids: list | None = None


def _load_training_data(ws: Workspace, trainer: Trainer, *, heldout_fraction: float | None) -> _TrainingData:
    """Step 1: read the embeddings of the usable rows, their targets and the held-out split."""
    from labelkit.arrays import positions
    from labelkit.features import load_workspace_embeddings

    key, emb_ids, matrix = load_workspace_embeddings(ws)
    items_fp = current_items_fingerprint(ws)
    items = ws.read_items_table(list(trainer.item_columns))
    require_current_embeddings(ws, key, items.column("id").combine_chunks(),
                               items.column("content_hash").combine_chunks())
    usable = items.filter(pa.array(trainer.usable(items)))
    row = positions(usable.column("id").combine_chunks(), emb_ids)
    if trainer.all_embedded and (row < 0).any():
        raise LabelkitError(f"{int((row < 0).sum())} usable rows have no embedding; run `labelkit embed -w {ws.root}`.")
    usable = usable.filter(pa.array(row >= 0))
    ids = usable.column("id").to_pylist()
    if not ids:
        raise LabelkitError(f"No usable embedded rows in {ws.root}; run `labelkit embed -w {ws.root}`.")
    # The held-out rows were fixed at ingest; every model, probe and subset of this workspace
    # is scored on (and kept away from) the same ids.
    held, held_record = heldout_mask(ws, ids)
    if heldout_fraction is not None and heldout_fraction != held_record.get("fraction"):
        raise LabelkitError(f"The held-out split of {ws.root} was fixed at ingest ({held_record['rows']} rows, "
                            f"{held_record['source']}, fraction {held_record.get('fraction')}); 'heldout_fraction' "
                            f"{heldout_fraction} cannot change it.")
    targets = trainer.targets(ws, ids, usable)
    return _TrainingData(key=key, items_fp=items_fp, ids=ids, X_all=np.asarray(matrix[row[row >= 0]], np.float32),
                         held=held, held_record=held_record, targets=targets,
                         eval_rows=np.flatnonzero(held & targets.scored))


def _training_rows(ws: Workspace, data: _TrainingData, trainer: Trainer, *, labels: str,
                   subset: str | None) -> _TrainingRows:
    """Step 2: the rows a model may train on — not held out, with a target, in the subset when one is named.

    A subset's RS2 epochs and SMOTE rows are used where the task trains on them (:attr:`Trainer.schedules`).
    """
    train_mask = ~data.held & data.targets.trainable
    epoch_ids, synth = None, None
    if subset is not None:
        sub = read_subset(ws, subset)
        is_synthetic = sub["synthetic"].astype(bool) if "synthetic" in sub.columns else np.zeros(len(sub), bool)
        real = sub[~is_synthetic]
        train_mask &= pc.is_in(pa.array(data.ids, pa.string()), value_set=pa.array(real["id"].astype(str).tolist(),
                                                                                   pa.string())).to_numpy(zero_copy_only=False)
        if trainer.schedules and "epoch" in sub.columns and sub["epoch"].notna().any():
            epoch_ids = [set(g["id"]) for _, g in real.groupby("epoch", sort=True)]
        if trainer.schedules and is_synthetic.any():
            synth = sub[is_synthetic]
    train_rows = np.flatnonzero(train_mask)
    if len(train_rows) < trainer.min_rows:
        raise LabelkitError(f"Only {len(train_rows)} training rows remain (held-out split, labels {labels!r}"
                            + (f", subset {subset!r}" if subset else "") + "); nothing to train on.")
    rows = _TrainingRows(train=train_rows, X=data.X_all[train_rows], Y=data.targets.y_train[train_rows],
                         epoch_ids=epoch_ids)
    return _with_synthetic_rows(data, rows, synth, trainer)


def _with_synthetic_rows(data: _TrainingData, rows: _TrainingRows, synth, trainer: Trainer) -> _TrainingRows:
    """Step 3: the training matrix plus SMOTE rows, dropping any whose parents include a held-out row."""
    if synth is None:
        return rows
    held_ids = {data.ids[r] for r in np.flatnonzero(data.held)}
    ok = synth[[not (set(p) & held_ids) for p in synth["parent_ids"]]]
    if not len(ok):
        return rows
    Xs = np.stack(ok["embedding"].to_numpy()).astype(np.float32)
    ys = trainer.synthetic_targets(ok["label"])
    rows.X = np.concatenate([rows.X, Xs])
    rows.Y = (np.concatenate([rows.Y, np.eye(rows.Y.shape[1], dtype=np.float32)[ys]]) if rows.Y.ndim == 2
              else np.concatenate([rows.Y, ys]))
    rows.synthetic = len(ok)
    return rows


def _inner_split(data: _TrainingData, rows: _TrainingRows):
    """Step 4: a fixed 10 % of the real training rows for early stopping; RS2 epochs over the rest.

    Returns (fit rows, validation rows, per-epoch row lists or None), as indices into ``rows.X``.
    """
    train_rows = rows.train
    inner = heldout_split([data.ids[r] for r in train_rows], data.targets.strata[train_rows], fraction=0.1,
                          salt="inner")
    fit_rows = np.concatenate([np.flatnonzero(~inner), np.arange(len(train_rows), len(rows.X))])
    val_rows = np.flatnonzero(inner)
    epoch_rows = None
    if rows.epoch_ids is not None:
        fit_ids = [data.ids[train_rows[r]] if r < len(train_rows) else None for r in fit_rows]
        epoch_rows = [np.array([j for j, i in enumerate(fit_ids) if i in e], np.int64) for e in rows.epoch_ids]
        epoch_rows = [e for e in epoch_rows if len(e)]
    return fit_rows, val_rows, epoch_rows


def _write_model(ws: Workspace, trainer: Trainer, data: _TrainingData, rows: _TrainingRows, plan, fit, metrics: dict,
                 *, name: str, labels: str, eval_labels: str, subset: str | None, fit_rows, val_rows, schedule: str,
                 run: dict) -> dict:
    """Step 5: write ``models/NAME/model.pt``; return the model card (written by the caller after the verdict)."""
    import torch

    extras = trainer.extras()
    task = {"task": trainer.task} if trainer.task else {}
    out_dir = ws.model_dir(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = {"state_dict": fit.model.state_dict(), "d_in": int(data.X_all.shape[1]), "n_classes": trainer.outputs(data),
            "hidden": run["hidden"], "classes": getattr(trainer, "classes", []), "embedding_key": data.key, **task,
            **extras.get("ckpt", {})}
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save(ckpt, tmp)
    n_real = len(rows.train)
    data_hash = hashlib.sha256(trainer.hash_lines([data.ids[r] for r in rows.train], rows.Y[:n_real])).hexdigest()
    return {
        "name": name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **task,
        "embedding_key": data.key, "labels": labels, "eval_labels": eval_labels, "subset": subset,
        "loss": {"name": trainer.loss_name, "params": plan.params}, "teachers": plan.teachers,
        "head": {"type": run["head"], "hidden": run["hidden"]},
        "optimizer": {"name": "AdamW", "lr": run["lr"], "weight_decay": run["weight_decay"],
                      "batch_size": run["batch_size"]},
        "training": {"rows": int(len(fit_rows)), "synthetic_rows": rows.synthetic,
                     "inner_validation_rows": int(len(val_rows)), "epochs": fit.epochs, "best_epoch": fit.best_epoch,
                     f"best_{trainer.value_name}": fit.best_value, "early_stopping_patience": run["patience"],
                     "schedule": schedule, **extras.get("card", {})},
        "heldout": {"rows": int(len(data.eval_rows)), "fraction": data.held_record.get("fraction"),
                    "source": data.held_record["source"], "ids_fingerprint": data.held_record["ids_fingerprint"]},
        "items_fingerprint": data.items_fp,
        "data_hash": data_hash, "metrics": metrics, "classes": getattr(trainer, "classes", []), "seed": run["seed"],
        "device": run["device"], "versions": _versions(), "seconds": round(time.perf_counter() - run["started"], 3),
    }
