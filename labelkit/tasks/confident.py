"""Confident learning over class probabilities (cleanlab), shared by the multiclass and multi-annotator task types.

Moved verbatim from :mod:`labelkit.issues`, which re-exports these names.

References
----------
Northcutt, Jiang, Chuang. "Confident Learning: Estimating Uncertainty in Dataset Labels". JAIR 2021.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from labelkit.errors import LabelkitError, check_in_range

FILTER_BY = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
             "low_normalized_margin", "low_self_confidence")
RANK_BY = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
Progress = Callable[[int, "int | None"], None]


# Above this many bytes of probabilities, confident learning streams them in batches
# (cleanlab.experimental.label_issues_batched): cleanlab's in-memory path holds several
# temporaries the size of the matrix (a boolean mask, a float copy for argmax), which at
# 1M x 1000 (4 GB) would put the peak far past the 3x(embeddings + probabilities) + 1 GB budget.
CL_MAX_BYTES = 1 << 30
CL_BATCH_BYTES = 64 << 20  # per batch of the batched path: a few temporaries of this size
BATCHED_FILTERS = {"self_confidence": "low_self_confidence", "normalized_margin": "low_normalized_margin"}


def find_label_issues(labels: np.ndarray, pred_probs: np.ndarray, *, filter_by: str = "prune_by_noise_rate",
                      rank_by: str = "self_confidence", max_bytes: int | None = CL_MAX_BYTES,
                      batch_rows: int | None = None, progress: Progress | None = None) -> dict:
    """Return the label-issue mask, label quality scores, suggested labels and noise estimates.

    Wraps cleanlab: the confident joint is computed once and shared by
    `cleanlab.filter.find_label_issues` and `cleanlab.count.estimate_joint`. When `pred_probs`
    is larger than `max_bytes`, the matrix is read in batches of `batch_rows` rows through
    cleanlab's `LabelInspector` instead: memory is O(batch x K) beyond the inputs. That path
    flags as ``filter_by='low_self_confidence'`` does (``'low_normalized_margin'`` when
    ranking by normalized margin): the number of issues is the confident joint's off-diagonal
    count and the lowest-scoring rows are flagged. Any other `filter_by` is replaced by it there
    and the substitution is recorded under ``'cl'``.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
    pred_probs : ndarray of shape (n_samples, n_classes)
        Out-of-sample probabilities; float32 is used as is (no copy).
    filter_by, rank_by : str
        As in cleanlab.
    max_bytes : int or None
        Size of `pred_probs` above which the batched path runs; None never batches.
    batch_rows : int or None
        Rows per batch of the batched path; None is as many as fit 64 MB of probabilities.
    progress : callable or None
        ``progress(done, total)`` per batch (batched path only).

    Returns
    -------
    dict with keys ``is_label_issue`` (bool, n), ``label_quality`` (float in [0, 1], lower is worse),
    ``suggested_label`` (int, n), ``joint`` (K×K, P(given=i, true=j)), ``noise_matrix``
    (K×K, P(given=i | true=j), columns sum to 1) and ``cl`` (``path`` 'in-memory' or 'batched',
    the ``filter_by`` applied, ``batch_rows``).

    References
    ----------
    Northcutt, Jiang, Chuang. "Confident Learning: Estimating Uncertainty in Dataset Labels". JAIR 2021.
    """
    from cleanlab import rank
    from cleanlab.count import compute_confident_joint, estimate_joint
    from cleanlab.filter import find_label_issues as cl_find

    if filter_by not in FILTER_BY:
        raise LabelkitError(f"The 'filter_by' parameter of find_label_issues must be one of {', '.join(FILTER_BY)}. "
                            f"Got {filter_by!r} instead.")
    if rank_by not in RANK_BY:
        raise LabelkitError(f"The 'rank_by' parameter of find_label_issues must be one of {', '.join(RANK_BY)}. "
                            f"Got {rank_by!r} instead.")
    if max_bytes is not None:
        check_in_range(max_bytes, "max_bytes", "find_label_issues", low=0, kind="an int")
    labels = np.asarray(labels, dtype=np.int64)
    pred_probs = np.asarray(pred_probs, dtype=np.float32)
    if batch_rows is None:
        batch_rows = max(1024, CL_BATCH_BYTES // (4 * max(1, pred_probs.shape[-1])))
    check_in_range(batch_rows, "batch_rows", "find_label_issues", low=1, kind="an int")
    if max_bytes is not None and pred_probs.nbytes > max_bytes:
        return _find_label_issues_batched(labels, pred_probs, filter_by=filter_by, rank_by=rank_by,
                                          batch_rows=batch_rows, progress=progress)
    cj = compute_confident_joint(labels, pred_probs)
    # cleanlab re-estimates the joint itself for 'confident_learning' (and warns if given one).
    mask = cl_find(labels, pred_probs, filter_by=filter_by,
                   confident_joint=None if filter_by == "confident_learning" else cj)
    # cleanlab.filter has validated the inputs; the per-method scorer skips a second validation pass.
    quality = getattr(rank, f"get_{rank_by}_for_each_label")(labels, pred_probs)
    joint = estimate_joint(labels, pred_probs, confident_joint=cj)
    return {"is_label_issue": np.asarray(mask, bool), "label_quality": np.asarray(quality, np.float64),
            "suggested_label": pred_probs.argmax(1), "joint": joint, "noise_matrix": _noise_matrix(joint),
            "cl": {"path": "in-memory", "filter_by": filter_by}}


def _noise_matrix(joint: np.ndarray) -> np.ndarray:
    col = joint.sum(0, keepdims=True)
    return np.divide(joint, col, out=np.zeros_like(joint), where=col > 0)


def _find_label_issues_batched(labels: np.ndarray, pred_probs: np.ndarray, *, filter_by: str, rank_by: str,
                               batch_rows: int, progress: Progress | None) -> dict:
    """The batched path of `find_label_issues`: two passes of `batch_rows` rows (thresholds, then scores)."""
    from cleanlab import rank
    from cleanlab.count import estimate_joint
    from cleanlab.experimental.label_issues_batched import LabelInspector
    from cleanlab.internal.constants import FLOATING_POINT_COMPARISON

    n, K = pred_probs.shape
    method = rank_by if rank_by in BATCHED_FILTERS else "self_confidence"
    inspector = LabelInspector(num_class=K, store_results=False, verbose=False, n_jobs=1,
                               quality_score_kwargs={"method": method})
    batches = [(s, min(n, s + batch_rows)) for s in range(0, n, batch_rows)]
    for done, (s, e) in enumerate(batches, 1):
        inspector.update_confident_thresholds(labels[s:e], pred_probs[s:e])
        if progress:
            progress(done, 2 * len(batches))
    thresholds = inspector.get_confident_thresholds(silent=True) - FLOATING_POINT_COMPARISON
    flag_score = np.empty(n, np.float64)  # the score cleanlab ranks issues by
    quality = np.empty(n, np.float64)  # the score the user asked for
    suggested = np.empty(n, np.int64)
    is_argmax = np.empty(n, bool)
    cj = np.zeros((K, K), np.int64)
    n_issues = 0
    for done, (s, e) in enumerate(batches, len(batches) + 1):
        y, p = labels[s:e], pred_probs[s:e]
        flag_score[s:e] = inspector.score_label_quality(y, p, update_num_issues=False)
        quality[s:e] = flag_score[s:e] if rank_by == method else getattr(rank, f"get_{rank_by}_for_each_label")(y, p)
        suggested[s:e] = p.argmax(1)
        # cleanlab's _reduce_issues, per batch instead of on a copy of the whole matrix: a row whose
        # given label is (within float tolerance) the argmax is never an issue.
        given = p[np.arange(e - s), y]
        is_argmax[s:e] = given + FLOATING_POINT_COMPARISON >= p.max(1)
        # Confident joint, as cleanlab.count.compute_confident_joint counts it: the most likely
        # class among those at or above their per-class threshold; rows with none are not counted.
        above = p >= thresholds
        confident = above.any(1)
        true_class = np.where(above, p, np.float32(-1)).argmax(1)
        np.add.at(cj, (y[confident], true_class[confident]), 1)
        # The number of issues as cleanlab.count.num_label_issues ('off_diagonal') counts it in memory,
        # exactly, rather than LabelInspector's faster overall-argmax estimate.
        n_issues += int((confident & (true_class != y) & ~is_argmax[s:e]).sum())
        if progress:
            progress(done, 2 * len(batches))
    mask = np.zeros(n, bool)
    if n_issues:
        mask[np.argsort(flag_score, kind="stable")[:n_issues]] = True
    mask &= ~is_argmax
    joint = estimate_joint(labels, None, confident_joint=cj)
    return {"is_label_issue": mask, "label_quality": quality, "suggested_label": suggested, "joint": joint,
            "noise_matrix": _noise_matrix(joint),
            "cl": {"path": "batched", "filter_by": BATCHED_FILTERS[method], "requested_filter_by": filter_by,
                   "batch_rows": batch_rows}}


def probe_classes(labels: np.ndarray, n_classes: int, n_folds: int) -> np.ndarray:
    """Return the mask of classes with enough training rows for `n_folds` stratified folds.

    A class with fewer rows than folds cannot appear in every fold's training and test part; it is
    left out of the probe (its rows get no label-issue verdict) instead of shrinking every class's
    folds to its size. Classes without rows are left out too.
    """
    counts = np.bincount(np.asarray(labels, np.int64), minlength=n_classes)
    return counts >= n_folds


def _label_issues_for_classes(labels: np.ndarray, probs: np.ndarray, included: np.ndarray, *, filter_by: str,
                              rank_by: str, progress: Progress | None = None) -> dict:
    """Return :func:`find_label_issues` over the rows of `included` classes, expanded to every row.

    Rows of other classes get no verdict: not flagged, quality NaN, suggested label -1; their rows
    and columns of the joint and noise matrices are 0.
    """
    K = len(included)
    if included.all():
        return find_label_issues(labels, probs, filter_by=filter_by, rank_by=rank_by, progress=progress)
    kept = np.flatnonzero(included)
    rows = included[labels]
    remap = np.full(K, -1, np.int64)
    remap[kept] = np.arange(len(kept))
    sub = probs[rows][:, kept].astype(np.float32)
    sub /= np.maximum(sub.sum(1, keepdims=True), np.float32(1e-12))
    part = find_label_issues(remap[labels[rows]], sub, filter_by=filter_by, rank_by=rank_by, progress=progress)
    n = len(labels)
    out = {"is_label_issue": np.zeros(n, bool), "label_quality": np.full(n, np.nan),
           "suggested_label": np.full(n, -1, np.int64), "joint": np.zeros((K, K)), "noise_matrix": np.zeros((K, K)),
           "cl": part["cl"]}
    out["is_label_issue"][rows] = part["is_label_issue"]
    out["label_quality"][rows] = part["label_quality"]
    out["suggested_label"][rows] = kept[part["suggested_label"]]
    out["joint"][np.ix_(kept, kept)] = part["joint"]
    out["noise_matrix"][np.ix_(kept, kept)] = part["noise_matrix"]
    return out
