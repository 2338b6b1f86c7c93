"""Spurious correlations: properties (brightness, blur, size, text length, …) that alone predict the label.

A classifier can learn a shortcut instead of the content when a property that has nothing to do
with the class tells the classes apart: every "cat" photo dark, every negative review short. This
check measures, property by property, how well that one number predicts the label out of sample.

After cleanlab Datalab's spurious-correlation check (``cleanlab/datalab/internal/
spurious_correlation.py``, cleanlab 2.9): one single-feature classifier per property,
cross-validated, its accuracy compared with the majority-class baseline as the
``label_uncorrelatedness`` score ``(1 - accuracy) / (1 - baseline)`` in [0, 1] (lower = the property
predicts the label better). labelkit differs in three places, each for a reason:

- The classifier is a histogram (quantile bins, the majority class of each bin on the training
  folds) rather than Gaussian naive Bayes, so a class that sits in the middle of a property's range
  or a property with two modes is seen as well as a monotone shift.
- The baseline is the majority class's share of the rows. (Datalab 2.9 divides the majority
  class's *index* by the number of rows, ``np.bincount(labels).argmax() / n``, so its baseline is 0
  whenever class 0 is the most frequent and its score is then ``1 - accuracy``.)
- The flag also looks at each class on its own. Accuracy over all classes dilutes a property that
  singles out one class of K by 1/(K-1): with 10 balanced classes, "all cats are dark" lowers the
  uncorrelatedness to only about 0.9. So each class's out-of-fold score P(class | bin) is also
  ranked against the rest (the one-vs-rest AUC).

A property is flagged when, significantly at 0.001 after a Bonferroni correction over properties
and classes, either

- the label as a whole is predicted with an uncorrelatedness of at most 0.3 (the default threshold
  of Datalab's check in cleanlab 2.9, ``SPURIOUS_CORRELATION_ISSUE``), or
- some class is told apart from the rest with a one-vs-rest AUC of at least 0.93: the same cut
  carried over to one class. For two equal classes whose property values are normal with unit
  variance and means d apart, uncorrelatedness 0.3 means accuracy Φ(d/2) = 0.85, so d = 2.07,
  and the AUC is Φ(d/√2) = 0.93 ("outstanding discrimination", above 0.9, on Hosmer &
  Lemeshow's scale). Properties that follow the content rather than a shortcut rarely get there:
  on the sample digits, histogram entropy tells '1' (less ink) from the rest with AUC 0.90.

References
----------
.. [1] Cleanlab Inc., "Spurious correlations" issue type of Datalab, cleanlab 2.7+ (PR #1140).
.. [2] D. W. Hosmer, S. Lemeshow and R. X. Sturdivant, *Applied Logistic Regression*, 3rd ed.,
   Wiley 2013, section 5.2.4 (the AUC scale).
.. [3] H. B. Mann and D. R. Whitney, "On a test of whether one of two random variables is
   stochastically larger than the other", Ann. Math. Statist. 18(1), 1947 (AUC and its z-test).
"""

from __future__ import annotations

import numpy as np

from labelkit.checks.base import Check, CheckContext, CheckResult, register
from labelkit.errors import check_in_range

AUC_THRESHOLD = 0.93
UNCORRELATEDNESS_THRESHOLD = 0.3
ALPHA = 0.001
MAX_ROWS = 50_000
N_FOLDS = 5
MAX_BINS = 32
MIN_ROWS_PER_BIN = 100


def get_property_label_scores(values: np.ndarray, labels: np.ndarray, n_classes: int, *, n_folds: int = N_FOLDS,
                              n_bins: int | None = None, seed: int = 0) -> dict:
    """Return how well one property alone predicts the labels, cross-validated.

    Parameters
    ----------
    values : ndarray of shape (n_samples,)
        The property; rows that are not finite are left out.
    labels : ndarray of shape (n_samples,)
        Class index per row, in ``range(n_classes)``.
    n_classes : int
    n_folds : int, default=5
        Stratified folds; each fold's rows are predicted by bins fitted on the others.
    n_bins : int or None, default=None
        Quantile bins of the property; None: one per 100 rows, between 2 and 32.
    seed : int, default=0
        Seeds the fold assignment.

    Returns
    -------
    scores : dict
        ``n`` rows used; ``accuracy`` of the histogram classifier out of fold; ``baseline``, the
        majority class's share; ``label_uncorrelatedness`` = min(1, (1 - accuracy) / (1 - baseline)),
        lower = more predictive (1 when there is a single class); ``accuracy_z``, the binomial
        z-score of accuracy over baseline; ``class_auc`` and ``class_auc_z``, ndarrays of shape
        (n_classes,): per class the one-vs-rest AUC of its out-of-fold probability and the
        Mann–Whitney z-score of that AUC over 0.5 (NaN for classes absent from the rows).
    """
    check_in_range(n_folds, "n_folds", "get_property_label_scores", low=2, kind="an int")
    values = np.asarray(values, np.float64)
    labels = np.asarray(labels, np.int64)
    keep = np.isfinite(values)
    values, labels = values[keep], labels[keep]
    n = len(values)
    out = {"n": n, "accuracy": float("nan"), "baseline": float("nan"), "label_uncorrelatedness": 1.0,
           "accuracy_z": 0.0, "class_auc": np.full(n_classes, np.nan), "class_auc_z": np.full(n_classes, np.nan)}
    if n < 2 * n_folds:
        return out
    class_counts = np.bincount(labels, minlength=n_classes)
    baseline = float(class_counts.max() / n)
    out["baseline"] = baseline

    if n_bins is None:
        n_bins = int(np.clip(n // MIN_ROWS_PER_BIN, 2, MAX_BINS))
    edges = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]))
    bins = np.searchsorted(edges, values, side="right")
    n_bins = len(edges) + 1

    # Stratified folds: rows of each class dealt round-robin in a random order.
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    order = perm[np.argsort(labels[perm], kind="stable")]
    folds = np.empty(n, np.int64)
    folds[order] = np.arange(n) % n_folds

    # counts[f, b, c]: rows of fold f in bin b with label c. A fold is predicted from the others'.
    counts = np.bincount((folds * n_bins + bins) * n_classes + labels,
                         minlength=n_folds * n_bins * n_classes).reshape(n_folds, n_bins, n_classes).astype(np.float64)
    train = counts.sum(0, keepdims=True) - counts
    prior = train.sum(1, keepdims=True) / np.maximum(train.sum((1, 2), keepdims=True), 1)
    # P(class | bin) on the training folds, with one pseudo-row spread by the class prior.
    proba = (train + prior) / (train.sum(2, keepdims=True) + 1.0)
    pred = proba.argmax(2)
    correct = np.take_along_axis(counts, pred[..., None], 2).sum()
    accuracy = float(correct / n)
    out["accuracy"] = accuracy
    if baseline < 1.0:
        out["label_uncorrelatedness"] = float(min(1.0, (1.0 - accuracy) / (1.0 - baseline)))
        out["accuracy_z"] = float((accuracy - baseline) / np.sqrt(baseline * (1.0 - baseline) / n))

    # One-vs-rest AUC of each class's out-of-fold probability: every row of a (fold, bin) cell
    # shares one score, so the rank sums are taken over cells (ties get their average rank).
    cell_rows = counts.sum(2).ravel()
    cell_pos = counts.reshape(-1, n_classes)
    cell_score = proba.reshape(-1, n_classes)
    for c in np.flatnonzero((class_counts > 0) & (class_counts < n)):
        uniq, inverse = np.unique(cell_score[:, c], return_inverse=True)
        block = np.bincount(inverse, weights=cell_rows, minlength=len(uniq))
        mean_rank = np.cumsum(block) - (block - 1.0) / 2.0
        pos, neg = float(class_counts[c]), float(n - class_counts[c])
        u = float(cell_pos[:, c] @ mean_rank[inverse]) - pos * (pos + 1.0) / 2.0
        out["class_auc"][c] = u / (pos * neg)
        out["class_auc_z"][c] = (u - pos * neg / 2.0) / np.sqrt(pos * neg * (pos + neg + 1.0) / 12.0)
    return out


def collect_properties(ctx: CheckContext) -> dict[str, np.ndarray]:
    """Return the numeric properties of the rows: every ``prop_*`` column, and size or text length.

    Images: ``width``, ``height``, ``aspect_ratio`` (width / height) and ``file_bytes``; texts:
    ``text_length`` (characters, ends trimmed). Missing values are NaN; columns with fewer than
    two distinct values are left out (they cannot predict anything).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    items = ctx.items
    out: dict[str, np.ndarray] = {}

    def numeric(name: str) -> np.ndarray | None:
        if items is None or name not in items.column_names:
            return None
        col = items.column(name)
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
            return None
        return col.cast(pa.float64()).fill_null(np.nan).to_numpy()

    for name in sorted(c for c in (items.column_names if items is not None else []) if c.startswith("prop_")):
        values = numeric(name)
        if values is not None:
            out[name[len("prop_"):]] = values
    if ctx.modality == "image":
        width, height = numeric("width"), numeric("height")
        if width is not None:
            out["width"] = width
        if height is not None:
            out["height"] = height
        if width is not None and height is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                out["aspect_ratio"] = np.where(height > 0, width / height, np.nan)
        size = numeric("bytes")
        if size is not None:
            out["file_bytes"] = size
    elif ctx.modality == "text" and items is not None and "text" in items.column_names:
        length = pc.utf8_length(pc.utf8_trim_whitespace(items.column("text")))
        out["text_length"] = length.cast(pa.float64()).fill_null(np.nan).to_numpy()

    def varies(v: np.ndarray) -> bool:
        finite = v[np.isfinite(v)]
        return len(finite) > 1 and finite.min() < finite.max()

    return {name: v.astype(np.float64) for name, v in out.items() if len(v) == ctx.n and varies(v)}


def _fmt(x: float) -> str:
    return f"{x:.3g}" if np.isfinite(x) else "—"


@register
class SpuriousCorrelations(Check):
    """Dataset-level: per property, a cross-validated one-property classifier of the label; see the
    module docstring for the score, the flag rule and how it relates to cleanlab Datalab's."""

    name = "spurious_correlations"
    title = "Spurious correlations"
    description = ("Properties (brightness, blur, size, aspect ratio, text length, …) that alone predict the label "
                   "far above chance, which a model may learn as a shortcut.")
    tasks = ("multiclass", "multiannotator")  # one class index per row (multi-annotator: the consensus)
    metrics = {"spurious_correlations": "properties that alone predict the label far above chance",
               "max_spurious_correlation": "1 - the lowest label uncorrelatedness over the properties "
                                           "(0: no property helps, 1: one predicts the label perfectly)"}
    columns = {}
    order = 300

    def run(self, ctx: CheckContext) -> CheckResult:
        from scipy.stats import norm

        props = collect_properties(ctx)
        if not props:
            return CheckResult(metrics={"spurious_correlations": None, "max_spurious_correlation": None},
                               details={"not_measured": "no property varies across the rows"})
        K = len(ctx.classes)
        labels = np.asarray(ctx.labels, np.int64)
        rng = np.random.default_rng(ctx.seed)
        # The classifiers learn labels: held-out rows (kept away from every model) are not fit.
        held = ctx.options.get("heldout")
        fit = np.flatnonzero(~np.asarray(held, bool)) if held is not None else np.arange(ctx.n)
        sample = np.sort(rng.choice(fit, MAX_ROWS, replace=False)) if len(fit) > MAX_ROWS else fit
        z_crit = float(norm.isf(ALPHA / (len(props) * max(K, 1))))
        class_rows = np.bincount(labels, minlength=K)

        found, rows, findings = {}, [], []
        for name, values in props.items():
            s = get_property_label_scores(values[sample], labels[sample], K, seed=ctx.seed)
            finite = np.isfinite(values)
            sums = np.bincount(labels[finite], weights=values[finite], minlength=K)
            cnt = np.bincount(labels[finite], minlength=K)
            with np.errstate(invalid="ignore", divide="ignore"):
                class_mean = sums / cnt
                rest_mean = (sums.sum() - sums) / (cnt.sum() - cnt)
            auc = np.nan_to_num(s["class_auc"], nan=0.0)
            strong = (auc >= AUC_THRESHOLD) & (np.nan_to_num(s["class_auc_z"]) >= z_crit)
            top = int(np.argmax(auc))
            overall = s["label_uncorrelatedness"] <= UNCORRELATEDNESS_THRESHOLD and s["accuracy_z"] >= z_crit
            flagged = bool(strong.any() or overall)
            found[name] = {"label_uncorrelatedness": s["label_uncorrelatedness"],
                           "accuracy": s["accuracy"] if np.isfinite(s["accuracy"]) else None,
                           "baseline": s["baseline"] if np.isfinite(s["baseline"]) else None, "rows": s["n"],
                           "flagged": flagged,
                           "class_auc": {ctx.classes[c]: float(a) for c, a in enumerate(s["class_auc"]) if np.isfinite(a)},
                           "class_mean": {ctx.classes[c]: float(m) for c, m in enumerate(class_mean) if np.isfinite(m)}}
            if flagged:
                if strong.any():
                    c = int(np.flatnonzero(strong)[np.argmax(auc[strong])])
                    rest = f"{ctx.classes[1 - c]!r}" if K == 2 else "the other classes"
                    where = f"in {rest}" if K == 2 else "elsewhere"
                    findings.append(f"{name} alone tells {ctx.classes[c]!r} from {rest} (AUC {auc[c]:.2f}): "
                                    f"mean {_fmt(class_mean[c])} in {ctx.classes[c]!r} vs {_fmt(rest_mean[c])} {where}")
                else:
                    findings.append(f"{name} alone predicts the label with accuracy {s['accuracy']:.2f} "
                                    f"(majority class {s['baseline']:.2f})")
            # The classes whose mean differs most from the rest (in pooled standard deviations).
            spread = np.nanstd(values) or 1.0
            shown = np.argsort(-np.nan_to_num(np.abs(class_mean - rest_mean) / spread, nan=-1.0))[:6]
            shown = [c for c in shown if class_rows[c] > 0 and np.isfinite(class_mean[c])]
            rows.append([name, round(s["label_uncorrelatedness"], 4),
                         f"{_fmt(s['accuracy'])} ({_fmt(s['baseline'])})",
                         *((ctx.classes[top], round(float(auc[top]), 3)) if np.isfinite(s["class_auc"][top])
                           else ("—", None)),
                         ", ".join(f"{ctx.classes[c]} {_fmt(class_mean[c])}" for c in shown) + (" …" if K > len(shown) else ""),
                         "yes" if flagged else ""])
        rows.sort(key=lambda r: (r[-1] != "yes", r[1]))
        n_flagged = sum(p["flagged"] for p in found.values())
        table = {"title": "How well each property alone predicts the label (cross-validated)",
                 "columns": ["property", "label uncorrelatedness", "accuracy (majority class)", "most separated class",
                             "its AUC", "mean per class", "flagged"],
                 "rows": rows}
        return CheckResult(
            metrics={"spurious_correlations": int(n_flagged),
                     "max_spurious_correlation": float(1.0 - min(p["label_uncorrelatedness"] for p in found.values()))},
            details={"properties": found, "findings": findings, "rows_scored": len(sample),
                     "rule": f"class AUC >= {AUC_THRESHOLD} or label uncorrelatedness <= {UNCORRELATEDNESS_THRESHOLD}, "
                             f"z >= {z_crit:.2f} (alpha {ALPHA}, Bonferroni over {len(props)} properties x {K} classes)"},
            tables=[table])
