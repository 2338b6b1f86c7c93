"""Label issues by confident learning: rows whose given label the out-of-sample probe disputes."""

from __future__ import annotations

import numpy as np

from labelkit.checks.base import Check, CheckContext, CheckResult, register


@register
class LabelIssues(Check):
    """Confident learning (cleanlab) over the shared out-of-sample probabilities.

    The mask, quality scores and joint are computed once by ``issues`` (``ctx.label_issues``);
    this check names them, counts them and writes a reason per flagged row from the evidence:
    the probe's out-of-sample probability of its suggestion and, when neighbours are known, how
    many of the row's nearest rows carry that label.

    References
    ----------
    Northcutt, Jiang, Chuang. "Confident Learning: Estimating Uncertainty in Dataset Labels". JAIR 2021.
    """

    name = "label_issues"
    title = "Label issues"
    description = ("Rows whose given label confident learning finds unlikely, from out-of-sample probabilities "
                   "(the probe's or --pred-probs).")
    needs = ("probs",)
    tasks = ("multiclass",)
    metrics = {"label_issue_rate": "fraction of checked rows flagged as label issues",
               "label_issues": "number of rows flagged as label issues"}
    columns = {"is_label_issue": "confident learning flags the given label",
               "label_quality": "cleanlab label quality in [0, 1], lower is worse (NaN: class left out of the probe)",
               "suggested_label": "the probe's most likely class"}
    flag = "is_label_issue"
    score = "label_quality"
    order = 10
    default_columns = {"is_label_issue": "false", "label_quality": "null_float", "suggested_label": "null_string"}
    prunable = True
    baseline_title = "label issue"
    params = {"filter_by": "cleanlab's filter_by", "rank_by": "cleanlab's rank_by (the label quality score)"}

    def run(self, ctx: CheckContext) -> CheckResult:
        found = ctx.label_issues
        flags = np.asarray(found["is_label_issue"], bool)
        quality = np.asarray(found["label_quality"], np.float64)
        judged = ~np.isnan(quality)
        measured = bool(judged.any())
        suggested = np.asarray(found["suggested_label"], np.int64)
        rows = np.flatnonzero(flags)
        reasons = {}
        if len(rows):
            p_suggested = ctx.pred_probs[rows, suggested[rows]]
            p_given = ctx.pred_probs[rows, ctx.labels[rows]]
            agree = None
            if ctx.neighbor_idx is not None:
                nbr = ctx.neighbor_idx[rows]
                valid = nbr >= 0
                agree = ((ctx.labels[np.maximum(nbr, 0)] == suggested[rows, None]) & valid).sum(1)
                total = valid.sum(1)
            for j, row in enumerate(rows.tolist()):
                text = (f"labelled {ctx.classes[ctx.labels[row]]!r} ({p_given[j]:.2f}); probe says "
                        f"{ctx.classes[suggested[row]]!r} ({p_suggested[j]:.2f}, out of sample)")
                if agree is not None and total[j]:
                    text += f"; {agree[j]} of its {total[j]} nearest rows are {ctx.classes[suggested[row]]!r}"
                reasons[row] = text
        import pyarrow as pa

        return CheckResult(
            columns={"is_label_issue": flags,
                     "label_quality": pa.array(quality, pa.float32(), mask=~judged),
                     "suggested_label": pa.array(ctx.classes, pa.string()).take(pa.array(suggested, mask=suggested < 0))},
            metrics={"label_issues": int(flags.sum()) if measured else None,
                     "label_issue_rate": float(flags.sum() / judged.sum()) if measured else None},
            reasons=reasons)
