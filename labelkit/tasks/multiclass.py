"""Multiclass data: one class per item, judged by confident learning over out-of-sample probabilities.

The default task type. ``ingest`` needs no task step (the label column is the class); ``issues``
fits the shared probe (:func:`labelkit.probe.get_out_of_sample_probs`) out of sample, held-out
rows never in training, and runs confident learning (:mod:`labelkit.tasks.confident`) over the
classes with enough rows for the folds.

References
----------
Northcutt, Jiang, Chuang. "Confident Learning: Estimating Uncertainty in Dataset Labels". JAIR 2021.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from labelkit.neighbors import phase_progress
from labelkit.predfile import load_pred_probs
from labelkit.tasks._classify import ClassificationTrainer, class_prune_rows
from labelkit.tasks.base import IssuesOptions, ProbeInputs, ProbeOutput, Targets, TaskType, register
from labelkit.tasks.confident import _label_issues_for_classes, probe_classes


def class_targets(items: pa.Table, classes: list[str]) -> Targets:
    """Return the Targets of a table with one class index per row (``label_id``; -1 or an ``error``: unusable)."""
    label_id = items.column("label_id").to_numpy()
    usable = items.column("error").is_null().to_numpy(zero_copy_only=False) & (label_id >= 0)
    labels = label_id[usable].astype(np.int64)
    return Targets(usable=usable, values=labels, classes=list(classes), check_labels=labels,
                   check_classes=list(classes))


def class_probe(labels: np.ndarray, classes: list[str], inputs: ProbeInputs, *, rows_word: str = "training rows",
                never_predicts: bool = False) -> ProbeOutput:
    """Return the shared probe's out-of-sample probabilities of class labels (classes too small for the folds left out).

    Rows of a left-out class and held-out rows are predicted by a model that never saw them.
    ``never_predicts`` words the warning for a task whose probe must still cover every row
    (multi-annotator); otherwise those classes' rows get no label-issue verdict.
    """
    from labelkit.probe import get_out_of_sample_probs

    opts, held, K = inputs.options, inputs.held, len(classes)
    n_folds = opts.n_folds
    train_counts = np.bincount(labels[~held], minlength=K)
    included = probe_classes(labels[~held], K, n_folds)
    present = np.bincount(labels, minlength=K) > 0
    excluded = ({classes[k]: int(train_counts[k]) for k in np.flatnonzero(present & ~included)}
                if inputs.wants_probs else {})
    warnings = []
    if excluded:
        tail = (" probe, which never predicts them: " if never_predicts else
                " probe and get no label-issue verdict: ")
        warnings.append(f"{len(excluded)} class(es) have fewer than {n_folds} {rows_word} for the {n_folds}-fold"
                        + tail + ", ".join(f"{c} ({n} rows)" for c, n in list(excluded.items())[:10])
                        + (", …" if len(excluded) > 10 else "") + ".")
    out = ProbeOutput(None, None, "probe", excluded=excluded, included=included, warnings=warnings)
    if not inputs.wants_probs:  # the probe is the costliest step: skipped when no selected check needs it
        out.not_measured = "no check that needs probabilities was selected (--checks)"
        return out
    if included.sum() < 2:
        return out
    out.predictions, out.folds, choice = get_out_of_sample_probs(
        inputs.embeddings, labels, holdout=held | ~included[labels], n_classes=K, n_folds=n_folds, probe=opts.probe,
        device=inputs.device, seed=opts.seed, progress=phase_progress(inputs.progress, "probe"),
        fold_map=inputs.fold_map, neighbors=inputs.neighbors)
    # Where the final k-fold's (or the held-out rows') models ran; None when no model was fit after
    # the selection (its out-of-fold probabilities were final, or kNN won).
    fitted_after = choice.features != "knn" and (choice.fold_train_rows > 0 or choice.holdout_rows > 0)
    out.info = choice.to_dict() | {"fold_engine": opts.engine if fitted_after else None}
    return out


def class_top_issues(ids: pa.Array, labels: np.ndarray, classes: list[str], flags: np.ndarray, quality: np.ndarray,
                     suggested: np.ndarray, limit: int = 20) -> list[dict]:
    """Return the `limit` flagged rows of lowest quality, worst first, with class names."""
    flagged = np.flatnonzero(flags)
    flagged = flagged[np.argsort(quality[flagged], kind="stable")][:limit]
    return [{"id": ids[int(i)].as_py(), "given_label": classes[labels[i]], "suggested_label": classes[suggested[i]],
             "label_quality": round(float(quality[i]), 4)} for i in flagged]


@register
class Multiclass(TaskType):
    """One class per item: the shared probe and confident learning."""

    name = "multiclass"
    label_check = "label_issues"
    fingerprint_tag = "label"  # the options fingerprint's tag before task types existed: old workspaces stay current
    default_modality = "image"
    relabel = True

    def prepare_table(self, df, source, *, options: dict):
        raise AssertionError("multiclass tables need no task step at ingest")  # ingest calls no hook for multiclass

    def read_targets(self, ws, manifest: dict, items: pa.Table) -> Targets:
        return class_targets(items, manifest["classes"])

    def load_pred_probs(self, path, *, ids: pa.Array, targets: Targets, held: np.ndarray,
                        options: IssuesOptions) -> ProbeOutput:
        probs = load_pred_probs(path, ids=ids, usable=targets.usable, classes=targets.classes,
                                classes_file=options.classes_file)
        present = np.bincount(targets.values, minlength=len(targets.classes)) > 0
        return self._judged(targets, ProbeOutput(probs, np.full(len(probs), -1, np.int16), "user", included=present),
                            options)

    def probe(self, targets: Targets, inputs: ProbeInputs) -> ProbeOutput:
        return self._judged(targets, class_probe(targets.values, targets.classes, inputs), inputs.options)

    def _judged(self, targets: Targets, out: ProbeOutput, options: IssuesOptions) -> ProbeOutput:
        """Return `out` with ``not_measured`` set (and its warning) when fewer than two classes can be compared."""
        if out.not_measured is None and out.included.sum() < 2:
            present = np.bincount(targets.values, minlength=len(targets.classes)) > 0
            out.not_measured = ("the data has one class" if present.sum() < 2 else
                                f"{'no class' if not out.included.any() else 'only one class'} has at least "
                                f"{options.n_folds} training rows")
            out.warnings.append(f"Label issues cannot be computed: {out.not_measured}; confident learning compares at "
                                "least two classes. Duplicates and outliers are still checked.")
        return out

    def find_issues(self, targets: Targets, out: ProbeOutput, options: IssuesOptions, progress) -> dict:
        n = targets.n
        if out.not_measured is not None:
            return {"is_label_issue": np.zeros(n, bool), "label_quality": np.full(n, np.nan),
                    "suggested_label": np.full(n, -1, np.int64), "joint": None, "noise_matrix": None}
        return _label_issues_for_classes(targets.values, out.predictions, out.included, filter_by=options.filter_by,
                                         rank_by=options.rank_by, progress=phase_progress(progress, "confident learning"))

    def check_inputs(self, targets: Targets, out: ProbeOutput, found: dict) -> dict:
        measured = out.not_measured is None
        return {"pred_probs": out.predictions if measured else None, "label_issues": found if measured else None}

    def issues_columns(self, targets: Targets, found: dict) -> dict:
        return {"given_label": pa.array(targets.classes, pa.string()).take(pa.array(targets.values))}

    def summary(self, targets: Targets, out: ProbeOutput, found: dict, *, n_rows: int) -> dict:
        labels = targets.values
        judged = found["suggested_label"] >= 0
        return summarize(labels, targets.classes, found, n_rows=n_rows) | {
            "probe_accuracy": float((found["suggested_label"] == labels)[judged].mean()) if judged.any() else None,
            "label_issues_not_measured": out.not_measured, "confident_learning": found.get("cl")}

    def top_issues(self, ids: pa.Array, targets: Targets, found: dict, limit: int = 20) -> list[dict]:
        return class_top_issues(ids, targets.values, targets.classes, found["is_label_issue"], found["label_quality"],
                                found["suggested_label"], limit)

    # --- select / train / report / explain (labelkit.tasks._classify) ----------------------------

    report_sections = ("class_balance", "probe_agreement")

    def prune_rows(self, ws, issues_df, keep: np.ndarray):
        return class_prune_rows(issues_df, keep, ws.classes())

    def trainer(self, request):
        return ClassificationTrainer(request)


def summarize(labels: np.ndarray, classes: list[str], found: dict, *, n_rows: int) -> dict:
    """Return the dataset-level part of the issues summary (the checks add their metrics)."""
    K = len(classes)
    counts = np.bincount(labels, minlength=K)
    flags = found["is_label_issue"]
    # Rows of classes left out of the probe have no verdict (quality NaN): their class's numbers are None, not 0.
    judged = ~np.isnan(found["label_quality"])
    judged_counts = np.bincount(labels, weights=judged, minlength=K)
    flagged = np.bincount(labels, weights=flags, minlength=K)
    quality_sum = np.bincount(labels, weights=np.where(judged, found["label_quality"], 0.0), minlength=K)
    per_class = {c: {"count": int(counts[k]), "label_issues": int(flagged[k]) if judged_counts[k] else None,
                     "issue_rate": float(flagged[k] / counts[k]) if judged_counts[k] else None,
                     "mean_label_quality": float(quality_sum[k] / judged_counts[k]) if judged_counts[k] else None}
                 for k, c in enumerate(classes)}
    n = len(labels)
    matrix = lambda m: np.round(m, 6).tolist() if m is not None else None
    return {"rows": n_rows, "usable_rows": n, "unusable_rows": n_rows - n, "n_classes": K,
            "label_issues_checked_rows": int(judged.sum()), "class_counts": {c: int(x) for c, x in zip(classes, counts)},
            "per_class": per_class, "noise_matrix": matrix(found["noise_matrix"]), "joint": matrix(found["joint"])}

