"""Split leakage: rows of val/test that are copies of train rows (exact or near).

Also home of :func:`split_codes`, the split numbering the other split checks
(:mod:`~labelkit.checks.label_shift`, :mod:`~labelkit.checks.embedding_drift`) share.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelkit.checks.base import Check, CheckContext, CheckResult, register

TRAIN_NAMES = ("train", "training")


def split_codes(ctx: CheckContext) -> tuple[list[str], np.ndarray, int, str | None]:
    """Return (split names, split index per row or -1, index of the train split, a note or None).

    The train split is the one named ``train`` or ``training`` (any case; the larger if both),
    else the largest split (the first by name on a tie); the note says when it was guessed.
    Rows without a split get -1 and take no part in the split checks.
    """
    column = ctx.items.column("split")
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    encoded = pc.dictionary_encode(column.cast(pa.string()))
    names = [str(s) for s in encoded.dictionary.to_pylist()]
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    sizes = np.bincount(codes[codes >= 0], minlength=len(names))
    named = [s for s, name in enumerate(names) if name.lower() in TRAIN_NAMES]
    candidates = named or list(range(len(names)))
    train = min(candidates, key=lambda s: (-sizes[s], names[s]))
    note = None if named else (f"No split is named 'train'; the largest, {names[train]!r} ({int(sizes[train])} rows), "
                               "is taken as the training split.")
    return names, codes, int(train), note


def describe_row(row_id: str, split: str) -> str:
    """Return how a reason names another row: its id, prefixed by its split unless the id starts with it."""
    return row_id if row_id.startswith(f"{split}/") else f"{split} row {row_id}"


def find_split_leaks(codes: np.ndarray, train: int, content_hash: pa.Array, neighbor_idx: np.ndarray | None = None,
                     neighbor_sims: np.ndarray | None = None, *,
                     threshold: float = 0.985) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (train row each non-train row copies or -1, similarity, is_exact) per row.

    A row of a non-train split leaks when a train row has the same content hash (exact; the
    first such train row) or, failing that, when a train row lies at cosine similarity ≥
    `threshold` in the neighbour graph (near; the most similar such row). Both directions of
    the graph are read: the row's own neighbours and the train rows whose neighbours include
    the row, so a test row whose k neighbours are all test near-copies is still found when the
    train row lists it. Identical rows (one content hash) then share what any of them found.
    Train rows and rows without a split (code -1) never leak.

    Parameters
    ----------
    codes : ndarray of shape (n_samples,)
        Split index per row, -1 for none.
    train : int
        The split index of the training split.
    content_hash : pyarrow string array of length n_samples
    neighbor_idx, neighbor_sims : ndarray of shape (n_samples, k), optional
        Nearest rows (self excluded, most similar first, -1 where missing) and their cosine.
    threshold : float
        Cosine similarity at or above which two rows are near-copies.

    Returns
    -------
    partner : ndarray of int64, the train row copied, -1 where none
    similarity : ndarray of float32, 1 for exact copies, the cosine for near ones, NaN elsewhere
    exact : ndarray of bool

    References
    ----------
    Barz, B. & Denzler, J. (2020). Do we train on test data? Purging CIFAR of near-duplicates.
    Journal of Imaging 6(6), 41.
    """
    n = len(codes)
    if isinstance(content_hash, pa.ChunkedArray):
        content_hash = content_hash.combine_chunks()
    is_train = codes == train
    other = (codes >= 0) & ~is_train
    train_rows = np.flatnonzero(is_train)
    # One hash lookup: index_in gives the first train row holding each row's hash (nulls never match).
    pos = pc.index_in(content_hash, value_set=content_hash.take(pa.array(train_rows)), skip_nulls=True)
    pos = pos.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    exact = other & (pos >= 0)
    partner = np.where(exact, train_rows[np.maximum(pos, 0)] if len(train_rows) else -1, -1).astype(np.int64)
    sim = np.where(exact, np.float32(1.0), np.float32(np.nan)).astype(np.float32)
    if neighbor_idx is None or not len(train_rows):
        return partner, sim, exact

    k = neighbor_idx.shape[1]
    valid = neighbor_idx >= 0
    safe_idx = np.where(valid, neighbor_idx, 0)
    # Own neighbours: the first train neighbour at or above the threshold is the most similar one.
    hit = valid & (neighbor_sims >= threshold) & is_train[safe_idx] & other[:, None]
    first = hit.argmax(1)
    found = hit[np.arange(n), first]
    best = np.where(found, neighbor_idx[np.arange(n), first], -1)
    best_sim = np.where(found, neighbor_sims[np.arange(n), first], -np.inf).astype(np.float32)
    # Reverse edges: train rows that list a non-train row among their neighbours.
    t_idx = neighbor_idx[train_rows].ravel()
    t_sim = neighbor_sims[train_rows].ravel()
    t_src = np.repeat(train_rows, k)
    keep = (t_idx >= 0) & (t_sim >= threshold)
    keep[keep] = other[t_idx[keep]]
    t_idx, t_sim, t_src = t_idx[keep], t_sim[keep], t_src[keep]
    if len(t_idx):
        order = np.lexsort((-t_sim, t_idx))  # per target row, most similar train row first
        rows, first_edge = np.unique(t_idx[order], return_index=True)
        edge = order[first_edge]
        better = t_sim[edge] > best_sim[rows]
        best[rows[better]] = t_src[edge[better]]
        best_sim[rows[better]] = t_sim[edge[better]]
    # Identical rows share a finding: k slots filled with copies of itself must not hide a leak.
    groups = pc.dictionary_encode(content_hash).indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    has = (best >= 0) & (groups >= 0)
    if has.any():
        n_groups = int(groups.max()) + 1
        order = np.flatnonzero(has)[np.lexsort((-best_sim[has], groups[has]))]
        heads, first_edge = np.unique(groups[order], return_index=True)
        group_best = np.full(n_groups, -1, np.int64)
        group_sim = np.full(n_groups, -np.inf, np.float32)
        group_best[heads] = best[order[first_edge]]
        group_sim[heads] = best_sim[order[first_edge]]
        take = other & (best < 0) & (groups >= 0)
        take[take] = group_best[groups[take]] >= 0
        best[take] = group_best[groups[take]]
        best_sim[take] = group_sim[groups[take]]
    near = ~exact & (best >= 0)
    partner[near] = best[near]
    sim[near] = best_sim[near]
    return partner, sim, exact


def cross_split_copies(codes: np.ndarray, n_splits: int, content_hash: pa.Array, neighbor_idx: np.ndarray | None,
                       neighbor_sims: np.ndarray | None, threshold: float) -> np.ndarray:
    """Return M with M[a, b] = rows of split a with an exact or near copy in split b (a ≠ b).

    The counts follow :func:`find_split_leaks` with b as the reference and every split other than
    a and b left out, for all pairs in one pass: a row of a has a copy in b when its content hash
    occurs in b, when a neighbour edge at or above `threshold` joins it to a row of b (either
    direction), or when a row of a with the same content hash has such an edge.
    """
    M = np.zeros((n_splits, n_splits), np.int64)
    if isinstance(content_hash, pa.ChunkedArray):
        content_hash = content_hash.combine_chunks()
    codes = np.asarray(codes, np.int64)
    rows = np.flatnonzero(codes >= 0)
    if not len(rows):
        return M
    groups = pc.dictionary_encode(content_hash).indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    # A unit is the rows of one split with one content hash (they share every finding); a row
    # without a hash is a unit of its own. Hashed units come first, so a unit's group is known.
    hashed = rows[groups[rows] >= 0]
    keys, unit_hashed = np.unique(groups[hashed] * n_splits + codes[hashed], return_inverse=True)
    unit = np.full(len(codes), -1, np.int64)
    unit[hashed] = unit_hashed
    unhashed = rows[groups[rows] < 0]
    unit[unhashed] = len(keys) + np.arange(len(unhashed))
    n_units = len(keys) + len(unhashed)
    unit_split = np.empty(n_units, np.int64)
    unit_split[unit[rows]] = codes[rows]
    unit_rows = np.bincount(unit[rows], minlength=n_units)
    # Exact: every other unit of the same hash group is a copy in its split; keys are sorted by group.
    unit_group = keys // n_splits
    starts = np.searchsorted(unit_group, unit_group, side="left")
    sizes = np.searchsorted(unit_group, unit_group, side="right") - starts
    src = np.repeat(np.arange(len(keys)), sizes)
    dst = np.repeat(starts, sizes) + np.arange(len(src)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    touch = [(src * n_splits + unit_split[dst])[src != dst]]
    if neighbor_idx is not None and neighbor_idx.size:
        i, slot = np.nonzero((neighbor_idx >= 0) & (neighbor_sims >= threshold))
        j = neighbor_idx[i, slot].astype(np.int64)
        keep = (codes[i] >= 0) & (codes[j] >= 0) & (codes[i] != codes[j])
        i, j = i[keep], j[keep]
        # An edge counts for both ends: the row lists its copy, or the copy lists the row.
        touch += [unit[i] * n_splits + codes[j], unit[j] * n_splits + codes[i]]
    touch = np.unique(np.concatenate(touch))
    a, b = unit_split[touch // n_splits], touch % n_splits
    M += np.bincount(a * n_splits + b, weights=unit_rows[touch // n_splits],
                     minlength=n_splits * n_splits).astype(np.int64).reshape(n_splits, n_splits)
    return M


def _cosine(value: float) -> str:
    """Return a cosine with 3 decimals, or 4 (rounded down) when 3 would show a near copy as 1."""
    return f"{value:.3f}" if value < 0.9995 else f"{np.floor(min(float(value), 1.0) * 1e4) / 1e4:.4f}"


@register
class SplitLeakage(Check):
    """Rows of a non-train split (val, test, …) that are exact or near copies of a train row."""

    name = "split_leakage"
    title = "Split leakage"
    description = ("A row of a val/test split is the same item as a train row (same content hash) or nearly so "
                   "(embedding cosine at or above the near-duplicate threshold): a model trained on train has in "
                   "effect seen it, so its test score is optimistic.")
    needs = ("split",)
    metrics = {"split_leakage": "rows of non-train splits that copy a train row (exact or near)",
               "split_leakage_rate": "split_leakage / rows of non-train splits"}
    columns = {"leaks_into": "id of the train row this non-train row copies (null for train rows)",
               "is_split_leak": "a non-train row that copies a train row",
               "split_leak_similarity": "cosine similarity to that train row (1 for an exact copy)"}
    flag = "is_split_leak"
    score = "split_leak_similarity"
    score_ascending = False
    pair = "leaks_into"
    order = 70

    def run(self, ctx: CheckContext) -> CheckResult:
        names, codes, train, note = split_codes(ctx)
        hashes = ctx.items.column("content_hash")
        hashes = (hashes.combine_chunks() if isinstance(hashes, pa.ChunkedArray) else hashes).cast(pa.string())
        threshold = ctx.options.get("dup_threshold")
        warnings = [note] if note else []
        nbr_idx, nbr_sims = ctx.neighbor_idx, ctx.neighbor_sims
        if nbr_idx is not None and threshold is None:
            from labelkit.features import near_duplicate_threshold

            threshold = near_duplicate_threshold(ctx.embedding_key or "")
        if nbr_idx is None:
            warnings.append("Near-copies across splits were not checked (no embeddings): exact copies only.")
        partner, sim, exact = find_split_leaks(codes, train, hashes, nbr_idx, nbr_sims,
                                               threshold=threshold if threshold is not None else 1.0)
        leak = partner >= 0
        other = (codes >= 0) & (codes != train)
        saturated = None
        if nbr_idx is not None and nbr_idx.shape[1]:
            # A row whose k-th neighbour is still a near-copy may have more copies than k shows.
            saturated = int(((codes >= 0) & (nbr_idx[:, -1] >= 0) & (nbr_sims[:, -1] >= threshold)).sum())
            if saturated:
                warnings.append(f"{saturated} rows have near-copies in all {nbr_idx.shape[1]} neighbour slots, so a "
                                "copy in another split beyond them can be missed when neither row lists the other; "
                                "run issues with a larger k_neighbors to be sure.")
        S = len(names)
        n_other = int(other.sum())

        reasons = {}
        rows = np.flatnonzero(leak)
        if len(rows):
            what = ctx.modality if ctx.modality in ("image", "text") else "item"
            comparable = ctx.task in ("multiclass", "multiannotator")
            partner_ids = ctx.ids.take(pa.array(partner[rows])).to_pylist()
            for row, pid in zip(rows.tolist(), partner_ids):
                where = describe_row(pid, names[train])
                text = (f"same {what} as {where} (exact)" if exact[row]
                        else f"near-copy of {where} (cosine {_cosine(sim[row])})")
                if comparable and ctx.labels[row] != ctx.labels[partner[row]]:
                    text += f", labelled {ctx.classes[ctx.labels[partner[row]]]!r} there"
                reasons[row] = text

        per_split = []
        for s in range(S):
            if s == train:
                continue
            in_s = codes == s
            size = int(in_s.sum())
            n_exact, n_near = int((in_s & exact).sum()), int((in_s & leak & ~exact).sum())
            per_split.append([names[s], size, n_exact, n_near if nbr_idx is not None else None,
                              round((n_exact + n_near) / size, 4) if size else None])
        order = [train, *(s for s in range(S) if s != train)]
        M = cross_split_copies(codes, S, hashes, nbr_idx, nbr_sims, threshold if threshold is not None else 1.0)
        tables = [{"title": f"Copies of '{names[train]}' rows in the other splits",
                   "columns": ["split", "rows", "exact copies", "near copies", "leak rate"], "rows": per_split},
                  {"title": "Rows of each split (row) with a copy in another split (column)",
                   "columns": ["split", *(names[b] for b in order)],
                   "rows": [[names[a], *(int(M[a, b]) for b in order)] for a in order]}]
        return CheckResult(
            columns={"leaks_into": ctx.ids.take(pa.array(partner, mask=~leak)), "is_split_leak": leak,
                     "split_leak_similarity": sim},
            metrics={"split_leakage": int(leak.sum()),
                     "split_leakage_rate": float(leak.sum() / n_other) if n_other else None},
            reasons=reasons,
            details={"train_split": names[train], "splits": {names[s]: int((codes == s).sum()) for s in range(S)},
                     "rows_without_split": int((codes < 0).sum()), "exact": int(exact.sum()),
                     "near": int((leak & ~exact).sum()) if nbr_idx is not None else None,
                     "threshold": threshold, "k_neighbors": int(nbr_idx.shape[1]) if nbr_idx is not None else None,
                     "rows_with_all_neighbours_near": saturated,
                     "cross_split": {names[a]: {names[b]: int(M[a, b]) for b in range(S) if b != a} for a in range(S)}},
            tables=tables, warnings=warnings)
