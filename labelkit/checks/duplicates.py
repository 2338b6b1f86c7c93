"""Exact and near-duplicates, and duplicates whose labels disagree."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelkit.checks.base import Check, CheckContext, CheckResult, register
from labelkit.errors import check_in_range

DEFAULT_THRESHOLD = 0.985  # when the run names none (the embedder's own threshold is used where there is one)


def find_duplicates(content_hash: Sequence[str], neighbor_idx: np.ndarray | None = None,
                    neighbor_sims: np.ndarray | None = None, *, threshold: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (duplicate_of index or -1, near_duplicate_score, is_exact) per row.

    A row duplicates the first row with the same content hash (exact), or else its nearest
    earlier neighbour with cosine similarity ≥ `threshold` (near). The first row of a group is not
    itself marked.
    """
    check_in_range(threshold, "threshold", "find_duplicates", low=-1.0, high=1.0)
    n = len(content_hash)
    # First occurrence of each hash, vectorised. Arrow numbers the distinct hashes in order of
    # first appearance, so a row is a group's first exactly where its code exceeds all before it.
    encoded = pc.dictionary_encode(_as_array(content_hash), null_encoding="encode")
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    seen_max = np.maximum.accumulate(codes)
    first_row = np.flatnonzero(codes > np.concatenate(([-1], seen_max[:-1])))
    first_of = first_row[codes]
    exact = first_of < np.arange(n)
    dup_of = np.where(exact, first_of, -1).astype(np.int64)
    score = np.full(n, np.nan, dtype=np.float32)
    if neighbor_idx is not None:
        score = neighbor_sims[:, 0].astype(np.float32)
        score[exact] = 1.0
        # Neighbours come most similar first, so the first earlier row at or above the threshold
        # is the nearest one: one pass over the (n, k) matrix, no loop over rows.
        earlier = (neighbor_sims >= threshold) & (neighbor_idx < np.arange(n)[:, None]) & (neighbor_idx >= 0)
        first = earlier.argmax(1)
        near = (dup_of < 0) & earlier[np.arange(n), first]
        dup_of[near] = neighbor_idx[near, first[near]]
    return dup_of, score, exact



def _as_array(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    return values if isinstance(values, pa.Array) else pa.array([str(v) for v in values], pa.string())


@register
class Duplicates(Check):
    """A row duplicates the first row with the same content hash (exact), or else its nearest
    earlier row with cosine similarity at or above the embedder's threshold (near; needs
    neighbours). The first row of a group is not marked. See :func:`find_duplicates`.
    """

    name = "duplicates"
    title = "Duplicates"
    description = ("Rows that repeat an earlier row: the same bytes (exact) or nearly the same embedding (near); "
                   "conflicting when their labels differ.")
    metrics = {"duplicates": "rows that duplicate an earlier row (exact or near)",
               "exact_duplicates": "rows with the same content hash as an earlier row",
               "near_duplicates": "rows whose embedding nearly equals an earlier row's",
               "conflicting_duplicates": "duplicates whose label differs from the original's"}
    columns = {"duplicate_of": "id of the earlier row this row duplicates",
               "is_duplicate": "the row duplicates an earlier row",
               "is_exact_duplicate": "same content hash as an earlier row",
               "conflicting_duplicate": "a duplicate whose label differs from the original's",
               "near_duplicate_score": "cosine similarity to the nearest row (1 for exact duplicates)"}
    flag = "is_duplicate"
    score = "near_duplicate_score"
    score_ascending = False
    pair = "duplicate_of"
    order = 20
    prunable = True
    baseline_title = "duplicate"
    params = {"dup_threshold": "cosine similarity at or above which two rows are near-duplicates"}

    def run(self, ctx: CheckContext) -> CheckResult:
        if ctx.exact_duplicates is not None:  # computed on a thread while confident learning ran
            dup_of, score, exact = ctx.exact_duplicates
        else:
            # Without neighbours the threshold is unused (and None: no embedder to take it from), so only
            # the exact part runs.
            threshold = ctx.options.get("dup_threshold")
            dup_of, score, exact = find_duplicates(ctx.items.column("content_hash"), ctx.neighbor_idx,
                                                   ctx.neighbor_sims,
                                                   threshold=DEFAULT_THRESHOLD if threshold is None else threshold)
        is_dup = dup_of >= 0
        comparable = ctx.task in ("multiclass", "multiannotator")
        conflicting = is_dup & (ctx.labels != ctx.labels[np.maximum(dup_of, 0)]) if comparable else np.zeros(ctx.n, bool)
        reasons = {}
        rows = np.flatnonzero(is_dup)
        if len(rows):
            partner = ctx.ids.take(pa.array(dup_of[rows])).to_pylist()
            for row, other in zip(rows.tolist(), partner):
                what = "exact duplicate" if exact[row] else f"near-duplicate (cosine {score[row]:.3f})"
                text = f"{what} of {other}"
                if comparable:
                    text += f" labelled {ctx.classes[ctx.labels[dup_of[row]]]!r}" + (" (labels differ)" if conflicting[row] else "")
                reasons[row] = text
        return CheckResult(
            columns={"duplicate_of": ctx.ids.take(pa.array(dup_of, mask=~is_dup)), "is_duplicate": is_dup,
                     "is_exact_duplicate": exact, "conflicting_duplicate": conflicting,
                     "near_duplicate_score": score.astype(np.float32)},
            metrics={"duplicates": int(is_dup.sum()), "exact_duplicates": int(exact.sum()),
                     "near_duplicates": int((is_dup & ~exact).sum()) if ctx.neighbor_idx is not None else None,
                     "conflicting_duplicates": int(conflicting.sum()) if comparable else None},
            reasons=reasons)
