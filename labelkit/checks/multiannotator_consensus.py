"""Multi-annotator consensus: items whose CROWDLAB consensus is weak or overturns the majority vote.

Reads the consensus the multi-annotator task type computed (``ctx.label_issues``, a
:func:`labelkit.tasks.multiannotator.get_consensus` result, with the annotators' labels in
``ctx.annotator_labels``) and turns it into the per-row columns of issues.parquet (the core label
columns among them), evidence, the gate's metrics and the report's annotator table.

References
----------
Goh, Tkachenko, Mueller. "CROWDLAB: Supervised learning to infer consensus labels and quality
scores for data with multiple annotators". NeurIPS 2022 Human in the Loop Learning Workshop.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from labelkit.checks._task_common import annotator_records
from labelkit.checks.base import Check, CheckContext, CheckResult, register


@register
class AnnotatorConsensus(Check):
    name = "annotator_consensus"
    title = "Annotator consensus (CROWDLAB)"
    description = ("The consensus of the annotators and the probe differs from the majority vote, or its quality "
                   "is unusually low (below both 0.5 and Q1 - 1.5 IQR of the dataset's consensus quality).")
    needs = ("probs",)
    tasks = ("multiannotator",)
    metrics = {
        "annotator_min_quality": "lowest CROWDLAB quality of an annotator (0-1, higher is better)",
        "consensus_changed_rows": "items whose CROWDLAB consensus differs from the majority vote",
        "mean_annotator_agreement": "mean fraction of an item's annotators who gave its consensus label "
                                    "(items with two or more labels)",
    }
    columns = {
        "is_label_issue": "the item's consensus is an issue (is_consensus_issue)",
        "label_quality": "CROWDLAB quality of the consensus label (0-1, lower is worse)",
        "suggested_label": "the CROWDLAB consensus label",
        "consensus_label": "CROWDLAB consensus label",
        "consensus_quality": "CROWDLAB quality of the consensus label (0-1, lower is worse)",
        "annotator_agreement": "fraction of the item's annotators who gave the consensus label",
        "num_annotations": "how many annotators labelled the item",
        "consensus_changed": "the consensus differs from the majority vote",
        "worst_annotator": "the annotator whose label of this item CROWDLAB rates lowest",
        "is_consensus_issue": "consensus changed, or consensus quality below min(0.5, Q1 - 1.5 IQR)",
    }
    flag = "is_consensus_issue"
    score = "consensus_quality"
    score_ascending = True
    order = 20
    default_columns = {"is_label_issue": "false", "label_quality": "null_float", "suggested_label": "null_string"}
    prunable = True
    baseline_title = "consensus issue"

    def applies(self, ctx: CheckContext) -> str | None:
        why = super().applies(ctx)
        if why is None and ctx.label_issues is None:
            return "needs the annotators' consensus (labelkit issues on multi-annotator data)"
        return why

    def run(self, ctx: CheckContext) -> CheckResult:
        found = ctx.label_issues
        classes = np.asarray(ctx.classes, dtype=object)
        names = np.asarray(found["annotators"], dtype=object)
        consensus = found["consensus_label"]
        quality = found["consensus_quality"]
        per_annotator = found["label_quality_per_annotator"]
        labelled = ~np.isnan(per_annotator)
        worst = np.where(labelled, per_annotator, np.inf).argmin(1)
        flags = found["is_issue"]
        multi = found["num_annotations"] >= 2
        ann_quality = found["annotator_quality"]
        result = CheckResult(columns={
            "is_label_issue": flags, "label_quality": pa.array(quality, pa.float32()),
            "suggested_label": pa.array(ctx.classes, pa.string()).take(pa.array(consensus)),
            "consensus_label": classes[consensus],
            "consensus_quality": quality.astype(np.float32),
            "annotator_agreement": found["annotator_agreement"].astype(np.float32),
            "num_annotations": found["num_annotations"].astype(np.int32),
            "consensus_changed": found["consensus_changed"],
            "worst_annotator": names[worst],
            "is_consensus_issue": flags,
        })
        result.metrics = {
            "annotator_min_quality": float(np.nanmin(ann_quality)) if np.isfinite(ann_quality).any() else None,
            "consensus_changed_rows": int(found["consensus_changed"].sum()),
            "mean_annotator_agreement": float(found["annotator_agreement"][multi].mean()) if multi.any() else None,
        }
        matrix = ctx.annotator_labels
        probs = ctx.pred_probs
        for row in np.flatnonzero(flags):  # a loop over flagged rows only
            result.reasons[int(row)] = self._reason(int(row), found, matrix, probs, classes, names)
        records = annotator_records(found, list(ctx.classes))
        result.tables.append({
            "title": "Annotators, lowest CROWDLAB quality first",
            "columns": ["annotator", "items labelled", "agreement with consensus", "quality", "worst class"],
            "rows": [[r["annotator"], r["items_labelled"], r["agreement_with_consensus"], r["quality"],
                      r["worst_class"]] for r in records],
        })
        result.details = {"quality_threshold": found["quality_threshold"], "model_weight": found["model_weight"],
                          "low_quality_rows": int(found["low_quality"].sum())}
        unlabelled = [r["annotator"] for r in records if r["items_labelled"] == 0]
        if unlabelled:
            result.warnings.append(f"{len(unlabelled)} annotator(s) labelled no usable item and get no quality: "
                                   + ", ".join(unlabelled[:10]) + ".")
        return result

    @staticmethod
    def _reason(row: int, found: dict, matrix, probs, classes, names) -> str:
        """Return one line of evidence for a flagged row: who said what, the vote, the consensus, the probe."""
        parts = []
        if matrix is not None:
            given = np.flatnonzero(~np.isnan(matrix[row]))
            shown = ", ".join(f"{names[a]} {classes[int(matrix[row, a])]!r}" for a in given[:6])
            parts.append(f"annotators: {shown}{', …' if len(given) > 6 else ''}")
        majority, consensus = found["majority_label"][row], found["consensus_label"][row]
        quality = float(found["consensus_quality"][row])
        if found["consensus_changed"][row]:
            parts.append(f"majority {classes[majority]!r} → consensus {classes[consensus]!r} (quality {quality:.2f})")
        else:
            parts.append(f"consensus {classes[consensus]!r} has low quality {quality:.2f} "
                         f"(< {found['quality_threshold']:.2f}, this dataset's cut-off)")
        if probs is not None:
            top = int(probs[row].argmax())
            parts.append(f"probe {classes[top]!r} {float(probs[row, top]):.2f} (out of sample)")
        return "; ".join(parts)
