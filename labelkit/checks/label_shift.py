"""Label shift between splits: class distributions, unseen classes, per-split label-issue rates."""

from __future__ import annotations

import numpy as np

from labelkit.checks.base import Check, CheckContext, CheckResult, register
from labelkit.checks.split_leakage import split_codes

MAX_CLASS_ROWS = 30  # classes shown in the distribution table (the most shifted ones)


def jensen_shannon_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Return the Jensen–Shannon divergence (base 2, in [0, 1]) between each row of `p` and `q`.

    Parameters
    ----------
    p : ndarray of shape (n_splits, n_classes)
        Counts or probabilities per row (normalised here).
    q : ndarray of shape (n_classes,)
        The reference distribution (normalised here).

    Returns
    -------
    ndarray of shape (n_splits,)
        ``JSD(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m)`` with ``m = ½ (p + q)``: 0 for equal
        distributions, 1 for disjoint supports. Finite when a class is absent from either side.

    References
    ----------
    Lin, J. (1991). Divergence measures based on the Shannon entropy. IEEE Transactions on
    Information Theory 37(1), 145–151.
    """
    p = np.atleast_2d(np.asarray(p, np.float64))
    q = np.asarray(q, np.float64)
    p = p / np.maximum(p.sum(1, keepdims=True), 1e-300)
    q = q / max(q.sum(), 1e-300)
    m = (p + q) / 2

    def kl(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * np.log2(a / np.where(b > 0, b, 1.0)), 0.0).sum(-1)

    return np.clip(kl(p, m) / 2 + kl(q[None, :], m) / 2, 0.0, 1.0)


def homogeneity_test(a: np.ndarray, b: np.ndarray) -> tuple[float | None, int, float | None, float]:
    """Return (chi-square statistic, degrees of freedom, p-value, share of expected counts < 5).

    Pearson's chi-square test of homogeneity on the 2 × K table of class counts `a` and `b`
    (classes absent from both dropped; Yates' correction for a 2 × 2 table). The statistic and
    p-value are None when fewer than two classes remain. The approximation is rough when more
    than 20% of expected counts are below 5 (Cochran's rule), the returned share.

    References
    ----------
    Pearson, K. (1900). On the criterion that a given system of deviations from the probable in
    the case of a correlated system of variables is such that it can be reasonably supposed to
    have arisen from random sampling. Philosophical Magazine 50(302), 157–175.
    """
    from scipy.stats import chi2_contingency

    table = np.stack([a, b]).astype(np.float64)
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2 or (table.sum(1) == 0).any():
        return None, 0, None, 0.0
    res = chi2_contingency(table)
    small = float((res.expected_freq < 5).mean())
    return float(res.statistic), int(res.dof), float(res.pvalue), small


@register
class LabelShift(Check):
    """Class distribution of every split against train, classes that train lacks, and whether a
    split's labels are noisier than train's (label-issue rate per split)."""

    name = "label_shift"
    title = "Label shift between splits"
    description = ("Class proportions that differ between train and val/test (Jensen–Shannon divergence, "
                   "chi-square test), classes with no train rows, and per-split label-issue rates; a flagged row "
                   "belongs to a class that train does not have.")
    needs = ("split",)
    tasks = ("multiclass",)
    metrics = {"label_shift_max_jsd": "largest Jensen–Shannon divergence (base 2, 0–1) between a split's class "
                                      "distribution and train's",
               "label_shift_min_p": "smallest chi-square p-value of a split's class counts against train's "
                                    "(homogeneity test)",
               "unseen_classes": "classes present in a non-train split and absent from train",
               "max_split_issue_rate_ratio": "largest label-issue rate of a non-train split / train's rate "
                                             "(train's taken as at least one row's worth)"}
    columns = {"is_unseen_class": "a non-train row whose class has no train rows"}
    flag = "is_unseen_class"
    order = 71

    def run(self, ctx: CheckContext) -> CheckResult:
        names, codes, train, note = split_codes(ctx)
        S, K = len(names), len(ctx.classes)
        labels = np.asarray(ctx.labels, np.int64)
        ok = (codes >= 0) & (labels >= 0)
        counts = np.bincount(codes[ok] * K + labels[ok], minlength=S * K).reshape(S, K)
        others = [s for s in range(S) if s != train]
        jsd = jensen_shannon_divergence(counts, counts[train])
        unseen_mask = (counts[others].sum(0) > 0) & (counts[train] == 0)
        is_unseen = ok & (codes != train) & unseen_mask[np.maximum(labels, 0)]
        warnings = [note] if note else []

        tests = {s: homogeneity_test(counts[train], counts[s]) for s in others}
        rough = [names[s] for s in others if tests[s][3] > 0.2]
        if rough:
            warnings.append(f"Chi-square p-values of {', '.join(rough)} are approximate: over 20% of expected class "
                            "counts are below 5.")
        rates, rate_metric = self._issue_rates(ctx, codes, S, train)

        r_train = rates.get(train, {})
        rows = [[f"{names[train]} (reference)", int(counts[train].sum()), int((counts[train] > 0).sum()), 0.0,
                 None, None, None, 0, r_train.get("rate"), 1.0 if r_train else None, None]]
        for s in others:
            stat, dof, p, _ = tests[s]
            r = rates.get(s, {})
            rows.append([names[s], int(counts[s].sum()), int((counts[s] > 0).sum()), round(float(jsd[s]), 4),
                         None if stat is None else round(stat, 3), dof, None if p is None else float(f"{p:.3g}"),
                         int((unseen_mask & (counts[s] > 0)).sum()), r.get("rate"), r.get("ratio"), r.get("p")])
        tables = [{"title": f"Splits against '{names[train]}'",
                   "columns": ["split", "rows", "classes", "JSD vs train", "chi-square", "dof", "p-value",
                               "unseen classes", "label-issue rate", "rate / train's", "Fisher p (rates)"],
                   "rows": rows}]
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        gap = np.abs(share[others] - share[train]).max(0) if others else np.zeros(K)
        shown = np.argsort(-gap, kind="stable")[:MAX_CLASS_ROWS]
        shown = shown[counts[:, shown].sum(0) > 0]
        order = [train, *others]
        tables.append({"title": "Class counts per split" + (f" ({len(shown)} of {K} classes, largest share gap first)"
                                                            if K > MAX_CLASS_ROWS else ""),
                       "columns": ["class", *(f"{names[s]} rows (share)" for s in order)],
                       "rows": [[ctx.classes[k], *(f"{int(counts[s, k])} ({share[s, k]:.1%})" for s in order)]
                                for k in shown.tolist()]})

        reasons = {}
        for row in np.flatnonzero(is_unseen).tolist():
            k, s = int(labels[row]), int(codes[row])
            reasons[row] = f"class {ctx.classes[k]!r} has no {names[train]} rows ({int(counts[s, k])} in {names[s]})"
        ps = [tests[s][2] for s in others if tests[s][2] is not None]
        return CheckResult(
            columns={"is_unseen_class": is_unseen},
            metrics={"label_shift_max_jsd": float(jsd[others].max()) if others else None,
                     "label_shift_min_p": float(min(ps)) if ps else None,
                     "unseen_classes": int(unseen_mask.sum()),
                     "max_split_issue_rate_ratio": rate_metric},
            reasons=reasons,
            details={"train_split": names[train],
                     "class_counts": {names[s]: {ctx.classes[k]: int(counts[s, k]) for k in np.flatnonzero(counts[s])}
                                      for s in range(S)},
                     "jsd": {names[s]: float(jsd[s]) for s in others},
                     "chi_square": {names[s]: {"statistic": tests[s][0], "dof": tests[s][1], "p": tests[s][2],
                                               "expected_below_5": round(tests[s][3], 4)} for s in others},
                     "unseen_classes": [ctx.classes[k] for k in np.flatnonzero(unseen_mask)],
                     "label_issue_rates": {names[s]: v for s, v in rates.items()}},
            tables=tables, warnings=warnings)

    @staticmethod
    def _issue_rates(ctx: CheckContext, codes: np.ndarray, S: int, train: int) -> tuple[dict, float | None]:
        """Return ({split: {rows, flagged, rate, ratio, p}}, worst ratio) from the label-issue verdicts.

        Only rows with a verdict count (``label_quality`` not NaN). Train's rate is floored at
        one row's worth (1 / its judged rows), so a clean train split gives a finite ratio that
        understates, never overstates, how much noisier a split is. ``p`` is Fisher's exact test
        of the split's flagged/unflagged counts against train's.
        """
        from scipy.stats import fisher_exact

        li = ctx.label_issues
        if not li or li.get("is_label_issue") is None:
            return {}, None
        flags = np.asarray(li["is_label_issue"], bool)
        quality = li.get("label_quality")
        judged = (codes >= 0) & (~np.isnan(np.asarray(quality, np.float64)) if quality is not None else True)
        n = np.bincount(codes[judged], minlength=S)
        f = np.bincount(codes[judged], weights=flags[judged], minlength=S).astype(np.int64)
        if n[train] == 0:
            return {}, None
        base = max(f[train] / n[train], 1.0 / n[train])
        out, ratios = {}, []
        for s in range(S):
            if n[s] == 0:
                continue
            rate = f[s] / n[s]
            entry = {"rows": int(n[s]), "flagged": int(f[s]), "rate": round(float(rate), 4)}
            if s != train:
                entry["ratio"] = round(float(rate / base), 4)
                entry["p"] = float(f"{fisher_exact([[f[s], n[s] - f[s]], [f[train], n[train] - f[train]]])[1]:.3g}")
                ratios.append(rate / base)
            out[s] = entry
        return out, float(max(ratios)) if ratios else None
