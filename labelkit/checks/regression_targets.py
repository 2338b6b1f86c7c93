"""Regression targets far from their out-of-sample prediction (``--task regression``).

The predictions and flags are computed once by the regression task type (the probe, then
:func:`labelkit.tasks.regression.find_regression_issues`: cleanlab's regression label quality on
a robust residual scale) and handed over as ``ctx.targets``, ``ctx.predictions`` and
``ctx.label_issues``; this check turns them into the per-row columns of issues.parquet, evidence
and the gate's metrics. ``label_issue_rate`` (declared by the label check) is in the summary too.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from labelkit.checks._task_common import format_numbers, residual_reasons
from labelkit.checks.base import Check, CheckContext, CheckResult, register


@register
class RegressionTargets(Check):
    name = "regression_targets"
    title = "Regression targets"
    description = ("A numeric target is flagged when it lies more than 3.5 robust standard deviations (1.4826 × MAD of "
                   "the residuals) from the probe's out-of-sample prediction of it.")
    needs = ("embeddings",)
    tasks = ("regression",)
    metrics = {
        "residual_mae": "mean absolute error of the out-of-sample predictions against the given targets",
        "residual_r2": "R² of the out-of-sample predictions against the given targets (1 = fully predictable)",
    }
    columns = {
        "is_label_issue": "the target's residual is beyond the robust threshold",
        "label_quality": "cleanlab's regression label quality exp(−abs(z)) in [0, 1], lower is worse",
        "suggested_label": "the out-of-sample prediction as text, rounded to the targets' scale",
        "target": "the given target",
        "predicted_value": "the probe's out-of-sample prediction of the target",
        "residual": "target − predicted_value",
        "residual_z": "the residual's robust z-score: (residual − median) / (1.4826 × MAD)",
    }
    flag = "is_label_issue"
    score = "label_quality"
    score_ascending = True
    order = 10
    default_columns = {"is_label_issue": "false", "label_quality": "null_float", "suggested_label": "null_string"}
    prunable = True
    baseline_title = "label issue"

    def run(self, ctx: CheckContext) -> CheckResult:
        r = ctx.label_issues
        y = np.asarray(ctx.targets, np.float64)
        pred = np.asarray(ctx.predictions, np.float64)
        flags = np.asarray(r["is_label_issue"], bool)
        err = pred - y
        var = float(np.var(y))
        metrics = {"residual_mae": float(np.mean(np.abs(err))) if len(y) else None,
                   "residual_r2": float(1.0 - np.mean(err ** 2) / var) if len(y) and var > 0 else None}
        rows = np.flatnonzero(flags)
        lines = residual_reasons(y[rows], pred[rows], np.asarray(r["residual_z"])[rows], reference=y)
        reasons = dict(zip(rows.tolist(), lines))  # the numbers formatted once for all flagged rows
        worst = rows[np.argsort(r["label_quality"][rows], kind="stable")][:20]
        table = {"title": "Targets furthest from their prediction",
                 "columns": ["id", "target", "predicted", "residual", "robust z"],
                 "rows": [[ctx.ids[int(i)].as_py(), float(y[i]), round(float(pred[i]), 6),
                           round(float(y[i] - pred[i]), 6), round(float(r["residual_z"][i]), 2)] for i in worst]}
        return CheckResult(
            columns={"is_label_issue": pa.array(flags), "label_quality": pa.array(r["label_quality"], pa.float32()),
                     "suggested_label": format_numbers(pred, reference=y), "target": pa.array(y, pa.float64()),
                     "predicted_value": pa.array(pred, pa.float64()), "residual": pa.array(r["residual"], pa.float64()),
                     "residual_z": pa.array(r["residual_z"], pa.float32())},
            metrics=metrics, reasons=reasons, tables=[table],
            details={"residual_center": r["center"], "residual_scale": r["scale"], "z_threshold": r["z_threshold"],
                     "probe": (ctx.probe_info or {}).get("chosen")})
