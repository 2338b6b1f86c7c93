"""Class balance: how many usable rows each class has."""

from __future__ import annotations

import numpy as np

from labelkit.checks.base import Check, CheckContext, CheckResult, register


@register
class ClassBalance(Check):
    """Counts per class; the gate can fail on the smallest class or the max/min ratio."""

    name = "class_balance"
    title = "Class balance"
    description = "Usable rows per class: the smallest class and the ratio of the largest to the smallest."
    tasks = ("multiclass", "multiannotator")
    metrics = {"class_min_count": "usable rows in the smallest class",
               "imbalance_ratio": "largest class count / smallest class count (classes with rows)"}
    order = 40

    def run(self, ctx: CheckContext) -> CheckResult:
        K = len(ctx.classes)
        counts = np.bincount(ctx.labels[ctx.labels >= 0], minlength=K)
        nonzero = counts[counts > 0]
        order = np.argsort(counts, kind="stable")
        table = {"title": "Smallest classes", "columns": ["class", "rows", "share"],
                 "rows": [[ctx.classes[k], int(counts[k]), round(float(counts[k] / max(1, counts.sum())), 4)]
                          for k in order[:10]]}
        return CheckResult(metrics={"class_min_count": int(counts.min()) if K else 0,
                                    "imbalance_ratio": float(nonzero.max() / nonzero.min()) if len(nonzero) else None},
                           tables=[table] if K > 1 else [])
