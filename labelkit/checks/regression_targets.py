"""Regression targets far from their out-of-sample prediction (``--task regression``).

The predictions, residuals and flags are computed once by :func:`labelkit.tasks.regression.issues`
(probe, cleanlab's regression label quality, robust residual scale) and handed over in
``ctx.extra['regression']``; this check turns them into per-row columns, evidence and the gate's
metrics. ``label_issue_rate`` (declared by the label check) is in the summary too.
"""

from __future__ import annotations

import numpy as np

from labelkit.checks._task_common import residual_reasons
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
        "predicted_value": "the probe's out-of-sample prediction of the target",
        "residual": "target − predicted_value",
    }
    flag = "is_label_issue"
    score = "label_quality"
    score_ascending = True
    order = 10

    def run(self, ctx: CheckContext) -> CheckResult:
        r = ctx.extra["regression"]
        y = np.asarray(r["targets"], np.float64)
        pred = np.asarray(r["predictions"], np.float64)
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
            columns={"is_label_issue": flags, "label_quality": np.asarray(r["label_quality"], np.float64),
                     "predicted_value": pred, "residual": y - pred},
            metrics=metrics, reasons=reasons, tables=[table],
            details={"residual_center": r["center"], "residual_scale": r["scale"], "z_threshold": r["z_threshold"],
                     "probe": r["probe"]["chosen"]})
