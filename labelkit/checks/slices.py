"""Underperforming slices: regions of the embedding space where the probe is right far less often.

The embedding space is cut into k-means clusters ("slices"); a slice is *weak* when its
out-of-sample accuracy is significantly more than a margin below the dataset's. A weak slice
is where a model trained on these labels will fail: a sub-population it has too few clean
examples of, or one whose labels are inconsistent (a blob of random labels inside otherwise
well-separated classes is the extreme case).
"""

from __future__ import annotations

import numpy as np

from labelkit.checks.base import Check, CheckContext, CheckResult, register
from labelkit.errors import check_in_range

MAX_FIT_ROWS = 50_000  # k-means is fitted on at most this many rows, then every row is assigned
ASSIGN_ROWS = 65_536  # rows normalised and assigned to their slice at a time
MIN_SLICES, MAX_SLICES = 8, 100
MIN_SLICE_ROWS = 20  # smaller slices are listed but never tested: too few rows to call weak
ALPHA = 0.05  # family-wise error rate over the slices tested (Bonferroni)
MIN_GAP = 0.10  # a weak slice's accuracy is significantly more than this below the dataset's
EXAMPLES = 5


def choose_n_slices(n_samples: int, *, min_slice_rows: int = MIN_SLICE_ROWS) -> int:
    """Return the number of k-means slices for `n` rows: clip(sqrt(n/2), 8, 100), at most n/min_slice_rows.

    ``sqrt(n/2)`` is the classic rule of thumb for the number of clusters (Mardia, Kent and Bibby
    1979): slices grow with the data, as ``sqrt(2n)`` rows each. At least 8 so a small dataset is
    still cut finer than its classes usually are; at most 100 so each slice of a large dataset
    is a population a user can look at in one table row (10,000 rows per slice at 1M rows);
    and never so many that the average slice has fewer than `min_slice_rows` rows, the size
    below which no slice is tested.
    """
    check_in_range(n_samples, "n_samples", "choose_n_slices", low=0, kind="an int")
    check_in_range(min_slice_rows, "min_slice_rows", "choose_n_slices", low=1, kind="an int")
    k = int(np.clip(round(np.sqrt(n_samples / 2)), MIN_SLICES, MAX_SLICES))
    return max(1, min(k, n_samples // max(1, min_slice_rows)))


def find_slices(embeddings: np.ndarray, n_slices: int, *, max_fit_rows: int = MAX_FIT_ROWS, seed: int = 0) -> np.ndarray:
    """Return the k-means slice of every row (int32 in [0, n_slices)).

    MiniBatchKMeans is fitted on a random subsample of at most `max_fit_rows` rows and then
    assigns every row to its nearest centre, so time and memory stay linear in the rows. Rows
    are L2-normalised first, so Euclidean k-means ranks centres as cosine similarity does.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, n_features)
        Float32; rows are L2-normalised here (chunk by chunk) if they are not already.
    n_slices : int
        Number of clusters.
    max_fit_rows : int, default=50_000
        Rows the clustering is fitted on.
    seed : int, default=0
        Seed of the subsample and of k-means.

    References
    ----------
    Sculley. "Web-scale k-means clustering". WWW 2010.
    """
    from sklearn.cluster import MiniBatchKMeans

    n = len(embeddings)
    check_in_range(n_slices, "n_slices", "find_slices", low=1, high=max(1, n), kind="an int")
    check_in_range(max_fit_rows, "max_fit_rows", "find_slices", low=1, kind="an int")
    if n_slices == 1:
        return np.zeros(n, np.int32)
    rng = np.random.default_rng(seed)
    fit_rows = np.sort(rng.choice(n, size=max_fit_rows, replace=False)) if n > max_fit_rows else slice(None)
    # One k-means++ initialisation (scikit-learn's default for it): a second costs as much as the fit.
    km = MiniBatchKMeans(n_clusters=n_slices, random_state=seed, n_init=1, batch_size=2048)
    km.fit(_unit_rows(embeddings[fit_rows]))
    out = np.empty(n, np.int32)
    for start in range(0, n, ASSIGN_ROWS):  # in chunks: no normalised copy of the whole matrix
        out[start:start + ASSIGN_ROWS] = km.predict(_unit_rows(embeddings[start:start + ASSIGN_ROWS]))
    return out


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Return `x` as float32 with unit-length rows (user-supplied embeddings need not be normalised)."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


def weak_slice_pvalues(correct: np.ndarray, size: np.ndarray, overall_accuracy: float, *,
                       min_gap: float = MIN_GAP) -> np.ndarray:
    """Return, per slice, the one-sided binomial p-value of "accuracy >= overall_accuracy - min_gap".

    A small p-value says the slice's accuracy is below the dataset's by more than `min_gap`
    beyond what chance allows: the test holds both statistical significance (which alone
    flags a 1-point dip once slices hold 10,000 rows) and a practical effect size.

    Parameters
    ----------
    correct : ndarray of shape (n_slices,)
        Rows per slice the probe predicts correctly.
    size : ndarray of shape (n_slices,)
        Rows per slice.
    overall_accuracy : float
        The dataset's out-of-sample accuracy.
    min_gap : float, default=0.1
        Accuracy points below the dataset's that the test must see past.
    """
    from scipy.stats import binom

    check_in_range(overall_accuracy, "overall_accuracy", "weak_slice_pvalues", low=0, high=1)
    check_in_range(min_gap, "min_gap", "weak_slice_pvalues", low=0, high=1)
    p0 = float(np.clip(overall_accuracy - min_gap, 0.0, 1.0))
    if p0 <= 0.0:  # no slice can be significantly below an accuracy of zero
        return np.ones(len(size))
    return binom.cdf(correct, np.maximum(size, 1), p0)


def _id(ids, row) -> str:
    value = ids[int(row)]
    return value.as_py() if hasattr(value, "as_py") else str(value)


def _top(counts: np.ndarray, classes: list[str], size: int, n: int = 3) -> list[tuple[str, float]]:
    order = np.argsort(-counts, kind="stable")[:n]
    return [(classes[k], counts[k] / max(1, size)) for k in order if counts[k] > 0]


def _share_text(top: list[tuple[str, float]]) -> str:
    return ", ".join(f"{c} {s:.0%}" for c, s in top)


@register
class WeakSlices(Check):
    """Weak slices: k-means clusters of the embeddings whose out-of-sample accuracy is far below the dataset's.

    Accuracy is the probe's argmax against the given label, on the shared out-of-sample
    probabilities, over the rows the label check judged (rows of a class the probe left out have
    no verdict and take no part). The rows are cut into :func:`choose_n_slices` slices (:func:`find_slices`);
    slices of at least :data:`MIN_SLICE_ROWS` rows (20) are tested with the one-sided binomial
    test of :func:`weak_slice_pvalues` (the slice's accuracy is at least the dataset's minus
    :data:`MIN_GAP`, 0.10) at level :data:`ALPHA` (0.05) divided by the number of slices tested
    (Bonferroni). These are module constants, not run options; the pure functions take them as
    keyword parameters for library use.

    References
    ----------
    Eyuboglu, Varma, Saab, et al. "Domino: Discovering Systematic Errors with Cross-Modal
    Embeddings". ICLR 2022 (slice discovery in embedding space).
    Sculley. "Web-scale k-means clustering". WWW 2010.
    """

    name = "weak_slices"
    title = "Underperforming slices"
    description = ("The row lies in a k-means slice of the embedding space where the probe's out-of-sample accuracy "
                   "is significantly (one-sided binomial test, Bonferroni over slices) more than 10 points below "
                   "the dataset's: a sub-population a model trained on these labels gets wrong.")
    needs = ("embeddings", "probs")
    tasks = ("multiclass",)
    metrics = {
        "weak_slices": "number of weak slices",
        "weak_slice_rows": "rows in weak slices",
        "worst_slice_accuracy": f"lowest out-of-sample accuracy of a slice of at least {MIN_SLICE_ROWS} rows",
    }
    columns = {
        "slice": "the row's k-means slice of the embedding space",
        "in_weak_slice": "the row's slice is weak",
        "slice_accuracy": "out-of-sample accuracy of the row's slice",
    }
    flag = "in_weak_slice"
    score = "slice_accuracy"
    score_ascending = True
    order = 60

    def run(self, ctx: CheckContext) -> CheckResult:
        alpha, min_gap, min_rows = ALPHA, MIN_GAP, MIN_SLICE_ROWS
        n, K = ctx.n, len(ctx.classes)
        labels = np.asarray(ctx.labels, np.int64)
        pred = np.asarray(ctx.pred_probs).argmax(1)
        # Rows the label check gave no verdict (a class the probe left out: quality NaN) cannot be
        # right, so counting them would make their slices look weak; they take no part here.
        quality = (ctx.label_issues or {}).get("label_quality")
        judged = ~np.isnan(np.asarray(quality, np.float64)) if quality is not None else np.ones(n, bool)
        correct = (pred == labels) & judged
        n_judged = int(judged.sum())
        overall = float(correct.sum() / n_judged) if n_judged else float("nan")
        n_slices = choose_n_slices(n_judged, min_slice_rows=min_rows)
        result = CheckResult()
        if n_slices < 2:
            result.columns = {"slice": np.zeros(n, np.int32), "in_weak_slice": np.zeros(n, bool),
                              "slice_accuracy": np.full(n, overall, np.float32)}
            result.metrics = dict.fromkeys(self.metrics)
            rows = f"{n_judged} rows" + (" with a label verdict" if n_judged < n else "")
            result.warnings.append(f"Weak slices were not searched: {rows} make fewer than two slices of "
                                   f"{min_rows} rows.")
            return result

        slice_of = find_slices(np.asarray(ctx.embeddings, np.float32), int(n_slices), seed=ctx.seed)
        size = np.bincount(slice_of[judged], minlength=n_slices)
        hits = np.bincount(slice_of, weights=correct, minlength=n_slices).astype(np.int64)
        acc = hits / np.maximum(size, 1)
        tested = size >= min_rows
        pvalue = weak_slice_pvalues(hits, size, overall, min_gap=min_gap)
        weak = tested & (pvalue < alpha / max(1, int(tested.sum())))
        in_weak = weak[slice_of] & judged
        given = np.bincount(slice_of[judged].astype(np.int64) * K + labels[judged],
                            minlength=n_slices * K).reshape(n_slices, K)
        predicted = np.bincount(slice_of[judged].astype(np.int64) * K + pred[judged],
                                minlength=n_slices * K).reshape(n_slices, K)

        result.columns = {"slice": slice_of, "in_weak_slice": in_weak,
                          "slice_accuracy": acc[slice_of].astype(np.float32)}
        result.metrics = {"weak_slices": int(weak.sum()), "weak_slice_rows": int(size[weak].sum()),
                          "worst_slice_accuracy": float(acc[tested].min()) if tested.any() else None}

        # Rows grouped by slice once; a slice's examples put the rows the probe gets wrong first.
        by_slice = np.flatnonzero(judged)
        by_slice = by_slice[np.lexsort((correct[by_slice], slice_of[by_slice]))]
        starts = np.concatenate([[0], np.cumsum(size)])
        ids = ctx.ids
        shown = np.flatnonzero(weak if weak.any() else tested)
        shown = shown[np.argsort(acc[shown], kind="stable")][: None if weak.any() else 3]
        rows, per_slice = [], []
        for s in shown:
            top_given = _top(given[s], ctx.classes, size[s])
            examples = [_id(ids, r) for r in by_slice[starts[s]:starts[s] + EXAMPLES]]
            rows.append([int(s), int(size[s]), round(float(acc[s]), 4), _share_text(top_given),
                         _share_text(_top(predicted[s], ctx.classes, size[s])), ", ".join(examples),
                         "yes" if weak[s] else "no"])
        result.tables.append({"title": "Weak slices" if weak.any() else "Lowest-accuracy slices (none is weak)",
                              "columns": ["slice", "rows", "accuracy", "given classes", "predicted classes",
                                          "example ids", "weak"], "rows": rows})
        for s in range(n_slices):
            per_slice.append({"slice": s, "rows": int(size[s]), "accuracy": round(float(acc[s]), 4),
                              "p_value": float(pvalue[s]), "weak": bool(weak[s])})
        result.details = {"n_slices": int(n_slices), "overall_accuracy": overall, "alpha": alpha,
                          "min_gap": min_gap, "min_slice_rows": int(min_rows), "fit_rows": min(n, MAX_FIT_ROWS),
                          "rows_without_verdict": n - n_judged,
                          "slices": per_slice}

        # One reason per weak slice, shared by its rows (the loop is over flagged rows only).
        text = {}
        for s in np.flatnonzero(weak):
            mostly = ", ".join(f"{c!r} ({share:.0%})" for c, share in _top(given[s], ctx.classes, size[s], 2))
            text[s] = (f"in slice {s} ({size[s]} rows) where the probe is right {acc[s]:.0%} of the time vs "
                       f"{overall:.0%} overall; mostly {mostly}")
        result.reasons = {int(r): text[slice_of[r]] for r in np.flatnonzero(in_weak)}
        return result
