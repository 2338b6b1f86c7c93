"""Class-pair overlap: pairs of classes the labels and the probe confuse most, from the confident joint.

Two classes with a large share of their rows in each other's off-diagonal cells of the joint
distribution of given and true labels are, for this data, one concept (or an ill-defined
boundary): the view that tells a user to merge them or write a clearer labelling rule.

A pair overlaps when its *confusion rate* — the larger of P(true = B | given = A) and
P(true = A | given = B), read off the joint — is at least 10 %. Why 10 %: label noise spread
evenly (a fraction eta of every class mislabelled uniformly as one of the K - 1 others) gives
every pair a rate of eta / (K - 1), at most 5 % for any eta <= 10 % once K >= 3. A pair at twice
that is a concentrated confusion between two particular classes, not the background noise
confident learning already flags row by row. Two classes drawn from one distribution reach
about 50 %.
"""

from __future__ import annotations

import numpy as np

from labelkit.checks.base import Check, CheckContext, CheckResult, register

MIN_RATE = 0.10  # a pair overlaps when P(true = B | given = A) or the reverse is at least this
MIN_PAIR_ROWS = 5  # … and at least this many rows do
MAX_TABLE_PAIRS = 20
MAX_DETAIL_PAIRS = 50
EXAMPLES = 3
CLEANLAB_MAX_CLASSES = 300  # cleanlab lists the K^2 cells in Python; numpy does the same sum beyond this


def overlapping_classes(joint: np.ndarray, n_examples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (class a, class b, joint probability, rows) per unordered pair, largest probability first.

    The pair's joint probability is ``joint[a, b] + joint[b, a]``: the mass of rows given one
    label whose true label is estimated to be the other, in either direction. Uses
    :func:`cleanlab.dataset.find_overlapping_classes` (symmetric) up to 300 classes and the
    same sum in numpy above that, where cleanlab's per-cell Python list would be slow.

    Parameters
    ----------
    joint : ndarray of shape (n_classes, n_classes)
        Estimated P(given label = i, true label = j), summing to 1.
    n_examples : int
        Rows the joint was estimated from (the counts are ``round(probability * n_examples)``).

    References
    ----------
    Northcutt, Jiang, Chuang. "Confident Learning: Estimating Uncertainty in Dataset Labels". JAIR 2021.
    """
    joint = np.asarray(joint, np.float64)
    K = len(joint)
    if K <= CLEANLAB_MAX_CLASSES:
        from cleanlab.dataset import find_overlapping_classes

        df = find_overlapping_classes(joint=joint, num_examples=n_examples)
        return (df["Class Index A"].to_numpy(np.int64), df["Class Index B"].to_numpy(np.int64),
                df["Joint Probability"].to_numpy(np.float64), df["Num Overlapping Examples"].to_numpy(np.int64))
    a, b = np.triu_indices(K, 1)
    prob = joint[a, b] + joint[b, a]
    order = np.argsort(-prob, kind="stable")
    return a[order], b[order], prob[order], np.round(prob[order] * n_examples).astype(np.int64)


@register
class ClassOverlap(Check):
    """Overlapping class pairs from the joint of given and true labels (confident learning).

    Reads the joint ``issues`` estimated (``ctx.label_issues['joint']``), or estimates it from
    the labels and out-of-sample probabilities. A pair overlaps at a confusion rate of at least
    :data:`MIN_RATE` (10 %, see the module docstring) over at least :data:`MIN_PAIR_ROWS` rows;
    both are module constants, not run options. Per-row columns: none (the finding is
    about classes, not rows); the table lists example rows of each pair.

    References
    ----------
    Northcutt, Jiang, Chuang. "Confident Learning: Estimating Uncertainty in Dataset Labels". JAIR 2021.
    """

    name = "class_overlap"
    title = "Overlapping classes"
    description = ("Pairs of classes whose rows the confident joint assigns to each other; a pair overlaps when at "
                   f"least {MIN_RATE:.0%} of the rows given one label (and {MIN_PAIR_ROWS} or more) are estimated to "
                   "truly be the other — consider merging the two classes or defining their boundary.")
    needs = ("probs",)
    tasks = ("multiclass",)
    metrics = {
        "max_class_overlap": "largest joint probability of a pair of classes (given one, truly the other, either way)",
        "overlapping_class_pairs": f"pairs of classes where at least {MIN_RATE:.0%} of one class's rows are "
                                   "estimated to truly be the other",
    }
    columns: dict[str, str] = {}
    order = 70

    def run(self, ctx: CheckContext) -> CheckResult:
        min_rate = MIN_RATE
        result = CheckResult()
        labels = np.asarray(ctx.labels, np.int64)
        probs = np.asarray(ctx.pred_probs)
        K, n = len(ctx.classes), ctx.n
        joint = (ctx.label_issues or {}).get("joint")
        if joint is None and np.bincount(labels, minlength=K).astype(bool).sum() >= 2:
            from cleanlab.count import estimate_joint

            joint = estimate_joint(labels, probs)
        if joint is None or K < 2 or not np.asarray(joint).sum() > 0:
            result.metrics = dict.fromkeys(self.metrics)
            result.warnings.append("Class overlap was not measured: the joint of given and true labels needs at "
                                   "least two classes.")
            return result
        joint = np.asarray(joint, np.float64)
        a, b, prob, count = overlapping_classes(joint, n)
        # P(true = j | given = i): each row of the joint divided by its given-label prior.
        prior = joint.sum(1, keepdims=True)
        rate = np.divide(joint, prior, out=np.zeros_like(joint), where=prior > 0)
        confusion = np.maximum(rate[a, b], rate[b, a])
        overlapping = (confusion >= min_rate) & (count >= MIN_PAIR_ROWS)
        result.metrics = {"max_class_overlap": float(prob[0]) if len(prob) else 0.0,
                          "overlapping_class_pairs": int(overlapping.sum())}

        pred = probs.argmax(1)
        ids = ctx.ids

        def examples(given: int, predicted: int) -> list[str]:
            rows = np.flatnonzero((labels == given) & (pred == predicted))
            rows = rows[np.argsort(-probs[rows, predicted], kind="stable")[:EXAMPLES]]
            return [_id(ids, r) for r in rows]

        shown = np.flatnonzero(overlapping)[:MAX_TABLE_PAIRS] if overlapping.any() else np.arange(min(5, len(prob)))
        shown = shown[prob[shown] > 0]
        rows = []
        for p in shown:
            ca, cb = ctx.classes[a[p]], ctx.classes[b[p]]
            rows.append([ca, cb, round(float(prob[p]), 5), int(count[p]), round(float(confusion[p]), 4),
                         ", ".join(examples(a[p], b[p])), ", ".join(examples(b[p], a[p])),
                         "yes" if overlapping[p] else "no"])
        result.tables.append({"title": "Overlapping class pairs" if overlapping.any()
                              else "Most confused class pairs (none overlaps)",
                              "columns": ["class A", "class B", "joint probability", "rows", "confusion rate",
                                          "given A, predicted B", "given B, predicted A", "overlapping"],
                              "rows": rows})
        top = np.arange(min(MAX_DETAIL_PAIRS, len(prob)))
        result.details = {"min_rate": min_rate, "min_pair_rows": MIN_PAIR_ROWS, "pairs": [
            {"a": ctx.classes[a[p]], "b": ctx.classes[b[p]], "joint_probability": float(prob[p]),
             "rows": int(count[p]), "confusion_rate": float(confusion[p]), "overlapping": bool(overlapping[p])}
            for p in top if prob[p] > 0]}
        return result


def _id(ids, row) -> str:
    value = ids[int(row)]
    return value.as_py() if hasattr(value, "as_py") else str(value)
