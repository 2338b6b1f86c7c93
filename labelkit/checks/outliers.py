"""Outliers: rows far from all others in embedding space."""

from __future__ import annotations

import numpy as np

from labelkit.checks.base import Check, CheckContext, CheckResult, register


@register
class Outliers(Check):
    """Mean cosine distance to the k nearest rows, turned into a score in [0, 1] (lower is more
    isolated); see :func:`labelkit.neighbors.get_outlier_scores` for the cut."""

    name = "outliers"
    title = "Outliers"
    description = "Rows far from all others in embedding space (by their k nearest neighbours)."
    needs = ("neighbors",)
    metrics = {"outliers": "rows far from all others in embedding space"}
    columns = {"outlier_score": "in [0, 1], lower is more isolated", "is_outlier": "flagged as an outlier"}
    flag = "is_outlier"
    score = "outlier_score"
    order = 30
    default_columns = {"outlier_score": "nan", "is_outlier": "false"}
    prunable = True
    baseline_title = "outlier"
    params = {"k_neighbors": "nearest rows the score averages over"}

    def run(self, ctx: CheckContext) -> CheckResult:
        from labelkit.neighbors import get_outlier_scores, mean_neighbor_similarity

        score, flags = get_outlier_scores(ctx.neighbor_sims, ctx.neighbor_idx)
        rows = np.flatnonzero(flags)
        mean_sim = mean_neighbor_similarity(ctx.neighbor_sims, ctx.neighbor_idx)
        typical = float(np.median(mean_sim)) if ctx.n else 0.0
        k = ctx.neighbor_sims.shape[1]
        reasons = {int(r): f"far from every other row: mean cosine to its {k} nearest rows is {mean_sim[r]:.3f} "
                           f"(median row {typical:.3f})" for r in rows}
        return CheckResult(columns={"outlier_score": score.astype(np.float32), "is_outlier": flags},
                           metrics={"outliers": int(flags.sum())}, reasons=reasons)
