"""Nearest neighbours of every row: the shared input of duplicates, outliers and neighbour evidence."""

from __future__ import annotations

import math
import warnings

import numpy as np

from labelkit.errors import check_in_range


# Exact search up to this many rows on CPU; above it an approximate index. Exact brute force is
# O(n^2 d): ~4 s at 20k rows on 2 cores, ~90 s at 100k, hours at 1M. On a GPU exact stays fast far
# longer (1M x 512 in fp16 is seconds), so the switch moves up there.
EXACT_MAX_ROWS_CPU = 20_000
EXACT_MAX_ROWS_CUDA = 4_000_000
# Cells probed per query with sqrt(n) IVF cells, on bench/scale.py's clustered 512-d data:
# 4 probes gave recall@10 0.999 at 50k rows and 0.991 at 100k (8 probes: 1.000, for 1.5x the
# search time); 4x more cells cut the scan but cost more to train than they saved (50k: 11.5 vs
# 9.3 CPU-s) and lost recall (0.988 with 8 probes, 0.869 with 4).
IVF_PROBES = 4
# ... but with sqrt(n) cells each class spreads over more cells as n grows, and 4 probes lost
# recall: 0.9705 at 200k rows, 0.9008 at 1M (6 probes: 0.9724). default_n_probes grows the probes
# as 4 (n / 100k)^0.2: 4 at 100k, 5 at 200k-300k, 6 at 1M.
IVF_PROBES_EXPONENT = 0.2
_SEARCH_CHUNK = 16_384
# Most bytes of the approximate search's per-(row, probe) top-k table at once (see _cell_blocked_search).
_PAIR_TABLE_BYTES = 1 << 30


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Return the rows scaled to unit L2 norm as float32, without a copy when they already are."""
    E = np.ascontiguousarray(embeddings, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", E, E))
    if np.all(np.abs(norms - 1) < 1e-4):  # embedders already normalise; a 2 GB copy at 1M x 512 is avoidable
        return E
    return E / np.maximum(norms, 1e-12)[:, None]


def find_nearest_neighbors(embeddings: np.ndarray, *, k: int = 10, device: str = "cpu",
                           max_block_bytes: int = 256 << 20, exact_max_rows: int | None = None,
                           n_probes: int | None = None, n_lists: int | None = None, seed: int = 0, progress=None,
                           return_info: bool = False):
    """Return (indices, cosine similarities), each of shape (n_samples, k), of every row's k nearest
    other rows, most similar first; with ``return_info`` also a dict describing the search.

    Exact brute force in row blocks up to `exact_max_rows` rows, so memory is O(block x n)
    whatever n is (1M x 512 needs about 256 MB of scratch besides the embeddings). Above it, an
    approximate FAISS inverted-file index (IVF-Flat, inner product on unit rows): k-means cells of
    about sqrt(n) rows, each query scans its `n_probes` nearest cells, cell by cell with one matrix
    product per cell for all the queries that probe it. Similarities of the
    returned pairs are exact; only a neighbour may be missed (recall@10 is measured by
    ``bench/scale.py``). A slot with no neighbour (fewer than k rows within the probed cells)
    holds the row's own index and similarity -1, so the indices are always safe to index with;
    :func:`search_neighbors` turns those into -1 for the checks.

    Parameters
    ----------
    embeddings : ndarray of shape (n_samples, n_features)
    k : int
        Neighbours per row (at most n_samples - 1).
    device : str
        'cpu' or 'cuda[:N]' for the exact search.
    exact_max_rows : int or None
        Largest n searched exactly; None is 20,000 on CPU and 4,000,000 on CUDA.
    n_probes : int or None
        IVF cells scanned per query (approximate search only); None is :func:`default_n_probes`.
    n_lists : int or None
        IVF cells (k-means centroids); None is round(sqrt(n)), at least 16.
    seed : int
        Seed of the k-means training sample (approximate search only).
    progress : callable or None
        ``progress(done, total)`` after each block of queries; approximate search also reports
        ``progress(done, total, phase)`` phases 'index build' and 'search' when the callback accepts it.
    return_info : bool
        Also return ``{"index": ..., "params": ..., "seconds": {...}}``.

    References
    ----------
    Jegou, Douze, Schmid. "Product Quantization for Nearest Neighbor Search". IEEE TPAMI 2011 (IVF).
    Johnson, Douze, Jegou. "Billion-scale similarity search with GPUs". IEEE TBD 2019 (FAISS).
    """
    import time

    n = len(embeddings)
    k = int(min(k, n - 1))
    check_in_range(k, "k", "find_nearest_neighbors", low=1, kind="an int")
    if n_probes is None:
        n_probes = default_n_probes(n)
    check_in_range(n_probes, "n_probes", "find_nearest_neighbors", low=1, kind="an int")
    if exact_max_rows is None:
        exact_max_rows = EXACT_MAX_ROWS_CUDA if device.startswith("cuda") else EXACT_MAX_ROWS_CPU
    check_in_range(exact_max_rows, "exact_max_rows", "find_nearest_neighbors", low=0, kind="an int")
    started = time.perf_counter()
    if n <= exact_max_rows:
        idx, sim = _exact(embeddings, k, device, max_block_bytes, progress)
        info = {"index": "exact", "params": {"metric": "cosine", "device": device},
                "seconds": {"search": round(time.perf_counter() - started, 3)}}
    else:
        if n_lists is not None:
            check_in_range(n_lists, "n_lists", "find_nearest_neighbors", low=1, kind="an int")
        idx, sim, info = _ivf(_unit_rows(embeddings), k, n_probes, n_lists, seed, progress)
    return (idx, sim, info) if return_info else (idx, sim)


def search_neighbors(embeddings: np.ndarray, *, k: int, engine: str = "local", ray_address: str | None = None,
                     device: str = "cpu", seed: int = 0, progress=None,
                     **local_options) -> tuple[np.ndarray, np.ndarray, dict]:
    """Return (neighbor_idx, neighbor_sims, info) of :func:`find_nearest_neighbors`, or of the Ray engine's
    sharded search over the cluster at `ray_address` when ``engine == 'ray'``. `local_options`
    (``exact_max_rows``, ``n_probes``, ``n_lists``) go to the local search.

    ``info["seconds"]`` holds the search phases' seconds (``{"search": ...}`` for Ray). Unlike
    :func:`find_nearest_neighbors`, a slot with no neighbour holds index -1 (similarity -1), as
    :class:`labelkit.checks.base.CheckContext` documents.
    """
    if engine == "ray":
        import time

        from labelkit.engines.ray import find_nearest_neighbors as ray_neighbors

        started = time.perf_counter()
        nn_idx, nn_sim = ray_neighbors(embeddings, k=k, address=ray_address, seed=seed)
        info = {"index": "ray", "seconds": {"search": round(time.perf_counter() - started, 3)}}
    else:
        nn_idx, nn_sim, info = find_nearest_neighbors(embeddings, k=k, device=device, seed=seed, progress=progress,
                                                      return_info=True, **local_options)
    missing = nn_idx == np.arange(len(nn_idx))[:, None]
    if missing.any():
        nn_idx, nn_sim = np.where(missing, -1, nn_idx), np.where(missing, np.float32(-1.0), nn_sim)
    return nn_idx, nn_sim, info


class SharedNeighbors:
    """One matrix's neighbour search, run once at the largest k asked for.

    ``shared(k)`` returns :func:`search_neighbors`'s (neighbor_idx, neighbor_sims, info) for every
    row; a later ask for fewer neighbours takes the first columns of the earlier result instead of
    searching again (exact search and IVF alike return the same first neighbours for a larger k:
    the candidate set does not depend on k). So the kNN probe's search and the checks' search are
    one search. ``searches`` counts the searches run.
    """

    def __init__(self, embeddings: np.ndarray, **search_options):
        self.embeddings, self.options = embeddings, search_options
        self.searches = 0
        self._result: tuple[np.ndarray, np.ndarray, dict] | None = None

    def __call__(self, k: int) -> tuple[np.ndarray, np.ndarray, dict]:
        if self._result is None or self._result[0].shape[1] < k:
            self._result = search_neighbors(self.embeddings, k=k, **self.options)
            self.searches += 1
        idx, sims, info = self._result
        return idx[:, :k], sims[:, :k], info | {"k_searched": int(idx.shape[1])}


def phase_progress(progress, phase: str):
    """Return a (done, total) callback that also names the phase when `progress` takes a third argument."""
    if progress is None:
        return lambda done, total: None
    import inspect

    try:
        takes_phase = len(inspect.signature(progress).parameters) >= 3
    except (TypeError, ValueError):
        takes_phase = False
    return (lambda done, total: progress(done, total, phase)) if takes_phase else progress


def _exact(embeddings, k, device, max_block_bytes, progress):
    """Return (indices, sims) of each row's k most similar other rows by brute force, in row blocks.

    FAISS on CPU (:func:`exact_block`): importing torch costs about 2 s, more than the search itself
    up to thousands of rows. torch on CUDA. Blocks of rows bound the progress steps (and torch's scratch).
    """
    if device.startswith("cuda"):
        return _exact_torch(embeddings, k, device, max_block_bytes, progress)
    n = len(embeddings)
    report = phase_progress(progress, "neighbours (exact)")
    E = normalized_rows(embeddings)
    block = exact_block_rows(max_block_bytes, n)
    idx_out = np.empty((n, k), dtype=np.int64)
    sim_out = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(n, start + block)
        idx_out[start:stop], sim_out[start:stop] = exact_block(E, start, stop, k)
        report(stop, n)
    return idx_out, np.clip(sim_out, -1.0, 1.0)


# Bytes per (query, row) pair that size an exact block (a float32 similarity and an int64 index: what a
# block product and its partition held before FAISS; kept so blocks, and progress steps, stay as they were).
EXACT_BLOCK_BYTES_PER_PAIR = 12
# Exact blocks start at multiples of this many rows, and exact_block hands FAISS tiles of it: BLAS may
# round a product's last bits by its shape, so however the rows are cut into blocks one process scores
# the same bits. (Across processes, e.g. Ray workers, the BLAS that FAISS binds may differ: similarities
# then agree to float32 rounding.)
EXACT_TILE_ROWS = 256


def exact_block_rows(max_block_bytes: int, n: int, cap: int | None = None) -> int:
    """Return the rows of an exact block: within `max_block_bytes` (and `cap`), a multiple of EXACT_TILE_ROWS."""
    rows = max_block_bytes // (EXACT_BLOCK_BYTES_PER_PAIR * max(1, n))
    rows = min(rows, cap) if cap is not None else rows
    return max(EXACT_TILE_ROWS, rows // EXACT_TILE_ROWS * EXACT_TILE_ROWS)


def normalized_rows(embeddings: np.ndarray) -> np.ndarray:
    """Return a new float32 matrix of the rows divided by their L2 norm (at least 1e-12), as the exact search uses.

    Always a copy, unlike :func:`_unit_rows`: the local and the Ray exact search start from the same
    bits, so copies of one image tie in both and their ties break the same way (by row order).
    """
    E = np.asarray(embeddings, np.float32)
    return E / np.maximum(np.sqrt(np.einsum("ij,ij->i", E, E)), np.float32(1e-12))[:, None]


def exact_block(E: np.ndarray, start: int, stop: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices, similarities) of the k < len(E) most similar other rows of rows start..stop of
    the unit rows `E`, most similar first, equal similarities in row order. `start` is a multiple of
    EXACT_TILE_ROWS (see :func:`exact_block_rows`).

    FAISS's brute-force inner-product search (float32 BLAS products in fixed tiles, a heap of k + 1
    per query, ties kept in row order): a third of the time of a product of the whole block and a
    partition of it (5,000 x 768 pixels, k = 82: 0.28 s against 0.93 s), and no (block x n)
    scratch. The row itself is then dropped (or, among more than k exact copies of it, the last).
    """
    import faiss

    b, kk = stop - start, k + 1
    sim, idx = np.empty((b, kk), np.float32), np.empty((b, kk), np.int64)
    for lo in range(start, stop, EXACT_TILE_ROWS):  # the same tiles whoever calls (see EXACT_TILE_ROWS)
        hi = min(stop, lo + EXACT_TILE_ROWS)
        sim[lo - start:hi - start], idx[lo - start:hi - start] = faiss.knn(
            np.ascontiguousarray(E[lo:hi]), E, kk, metric=faiss.METRIC_INNER_PRODUCT)
    order = np.lexsort((idx, -sim), axis=1)
    idx, sim = np.take_along_axis(idx, order, 1), np.take_along_axis(sim, order, 1)
    is_self = idx == np.arange(start, stop)[:, None]
    drop = np.where(is_self.any(1), is_self.argmax(1), kk - 1)
    keep = np.ones((b, kk), bool)
    keep[np.arange(b), drop] = False
    return idx[keep].reshape(b, k), sim[keep].reshape(b, k)


def _exact_torch(embeddings, k, device, max_block_bytes, progress):
    """:func:`_exact` on a CUDA device, in fp16."""
    import torch

    n = len(embeddings)
    report = phase_progress(progress, "neighbours (exact)")
    with warnings.catch_warnings():  # a read-only (Arrow-backed) array is fine: normalize() writes a new tensor
        warnings.simplefilter("ignore", UserWarning)
        E = torch.as_tensor(np.asarray(embeddings, np.float32), device=device)
    E = torch.nn.functional.normalize(E, dim=1).half()
    block = max(1, min(n, max_block_bytes // (4 * n)))
    idx_out = np.empty((n, k), dtype=np.int64)
    sim_out = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(n, start + block)
        S = E[start:stop] @ E.T
        S[torch.arange(stop - start), torch.arange(start, stop)] = -2.0  # never your own neighbour
        sim, idx = torch.topk(S.float(), k, dim=1)
        idx_out[start:stop], sim_out[start:stop] = idx.cpu().numpy(), sim.cpu().numpy()
        report(stop, n)
    return idx_out, np.clip(sim_out, -1.0, 1.0)


def default_n_lists(n: int) -> int:
    """Return the IVF cell count for `n` rows: about sqrt(n), within [16, 65,536] and at most n."""
    return int(min(n, np.clip(round(np.sqrt(n)), 16, 65_536)))


def default_n_probes(n: int) -> int:
    """Return the IVF cells each query scans for `n` rows: 4 up to 100k rows, then 4 (n / 100k)^0.2, rounded."""
    return int(max(IVF_PROBES, round(IVF_PROBES * (n / 100_000) ** IVF_PROBES_EXPONENT)))


def build_ivf_index(E: np.ndarray, n_lists: int, *, seed: int = 0, progress=None, add: bool = True):
    """Return a FAISS IVF-Flat inner-product index over the unit rows `E` with `n_lists` cells.

    32 rows per cell train k-means as well as all rows would here, at a fraction of the cost; the
    sample and k-means seeds make the cells, hence every search result, reproducible. With
    ``add=False`` the index is only trained: its ``quantizer`` holds the cell centroids.
    """
    import faiss

    n, d = E.shape
    if progress:
        progress(0, n)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, n_lists, faiss.METRIC_INNER_PRODUCT)
    train_rows = np.random.default_rng(seed).choice(n, size=min(n, 32 * n_lists), replace=False)
    index.cp.seed = seed
    index.cp.niter = 10
    index.cp.min_points_per_centroid = 1
    index.train(E[np.sort(train_rows)])
    for start in range(0, n if add else 0, 4 * _SEARCH_CHUNK):
        index.add(E[start:start + 4 * _SEARCH_CHUNK])
        if progress:
            progress(min(n, start + 4 * _SEARCH_CHUNK), n)
    return index


def _ivf(E: np.ndarray, k: int, n_probes: int, n_lists: int | None, seed: int, progress):
    """Return (indices, sims, info) from a FAISS IVF-Flat index over the unit rows `E`."""
    import time

    import faiss

    n, d = E.shape
    n_lists = int(min(n, n_lists)) if n_lists is not None else default_n_lists(n)
    n_probes = int(min(n_probes, n_lists))
    t0 = time.perf_counter()
    index = build_ivf_index(E, n_lists, seed=seed, progress=phase_progress(progress, "index build"), add=False)
    t1 = time.perf_counter()
    idx_out, sim_out = _cell_blocked_search(E, index.quantizer, k, n_probes, phase_progress(progress, "search"))
    del index
    info = {"index": "faiss.IndexIVFFlat",
            "params": {"metric": "cosine", "n_lists": n_lists, "n_probes": n_probes, "train_rows": min(n, 32 * n_lists),
                       "kmeans_iterations": 10, "faiss": faiss.__version__},
            "seconds": {"index_build": round(t1 - t0, 3), "search": round(time.perf_counter() - t1, 3)}}
    return idx_out, np.clip(sim_out, -1.0, 1.0), info


def _cell_blocked_search(E: np.ndarray, quantizer, k: int, n_probes: int, report) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices, sims) of each row's k most similar other rows among the rows of its `n_probes`
    nearest cells, as an IVF-Flat search would, scanned cell by cell with matrix products.

    Each row belongs to its nearest centroid's cell and probes its `n_probes` nearest cells. For
    each cell, every query probing it is scored against all its rows in one BLAS product (the
    cell's rows are read once for all its queries, instead of once per query as FAISS's scan
    does) and keeps its top k there; a row's final top k is taken over its `n_probes` cells. Rows
    are taken in parts when their (row, probe) table would pass _PAIR_TABLE_BYTES. Missing neighbours (fewer than k rows in reach) get the row itself and similarity -1.
    """
    import torch

    n, L = len(E), quantizer.ntotal
    probes = np.empty((n, n_probes), np.int64)
    for start in range(0, n, 4 * _SEARCH_CHUNK):
        probes[start:start + 4 * _SEARCH_CHUNK] = quantizer.search(E[start:start + 4 * _SEARCH_CHUNK], n_probes)[1]
    own = probes[:, 0]
    members = np.argsort(own, kind="stable")
    m_start = np.concatenate(([0], np.cumsum(np.bincount(own, minlength=L))))
    position = np.empty(n, np.int64)  # each row's place among its own cell's rows
    position[members] = np.arange(n) - m_start[own[members]]
    pairs = np.argsort(probes.ravel(), kind="stable")  # (row, probe) pairs, cell by cell
    flat_probes = probes.ravel()
    with warnings.catch_warnings():  # a read-only (Arrow-backed) matrix is only read here
        warnings.simplefilter("ignore", UserWarning)
        E_t = torch.from_numpy(E)
    sim = np.empty((n, k), np.float32)
    idx = np.empty((n, k), np.int64)
    # Each (row, probe) pair's top k is kept until a row's n_probes lists are merged: p·k·8 bytes a
    # row. Above _PAIR_TABLE_BYTES the rows are taken in parts (each part scans every cell again,
    # for its own queries only), so the table's memory is bounded whatever n and k are.
    n_parts = max(1, math.ceil(n * n_probes * k * 8 / _PAIR_TABLE_BYTES))
    bounds = np.linspace(0, n, n_parts + 1).astype(np.int64)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        part = pairs[(pairs >= lo * n_probes) & (pairs < hi * n_probes)]  # still cell by cell
        p_start = np.concatenate(([0], np.cumsum(np.bincount(flat_probes[part], minlength=L))))
        # At the pair's row-major place (row · n_probes + probe, from the part's first row), so a
        # row's lists are adjacent for the merge without a permuted copy.
        top_sim = np.full(((hi - lo) * n_probes, k), -np.inf, np.float32)
        top_idx = np.full(((hi - lo) * n_probes, k), -1, np.int32 if n < 2**31 else np.int64)
        for c in range(L):
            rows = members[m_start[c]:m_start[c + 1]]
            if len(rows) == 0 or p_start[c] == p_start[c + 1]:
                continue
            cell = E_t[torch.from_numpy(rows)]
            kk = min(k, len(rows))
            step = max(1, (1 << 24) // len(rows))  # at most 64 MB of scores at a time
            for a in range(p_start[c], p_start[c + 1], step):
                b = min(p_start[c + 1], a + step)
                query = part[a:b] // n_probes
                S = E_t[torch.from_numpy(query)] @ cell.T
                mine = np.flatnonzero(own[query] == c)
                S[torch.from_numpy(mine), torch.from_numpy(position[query[mine]])] = -np.inf  # never your own
                found, at = torch.topk(S, kk, dim=1)
                top_sim[part[a:b] - lo * n_probes, :kk] = found.numpy()
                top_idx[part[a:b] - lo * n_probes, :kk] = rows[at.numpy()]
            report(int(lo + (hi - lo) * p_start[c + 1] // max(1, len(part))), n)
        # Merge each row's n_probes lists, in row chunks (no (n, k) positions besides the result).
        pooled_sim, pooled_idx = top_sim.reshape(hi - lo, n_probes * k), top_idx.reshape(hi - lo, n_probes * k)
        for start in range(0, hi - lo, _SEARCH_CHUNK):
            stop = min(hi - lo, start + _SEARCH_CHUNK)
            found, at = torch.topk(torch.from_numpy(pooled_sim[start:stop]), k, dim=1)
            sim[lo + start:lo + stop] = found.numpy()
            idx[lo + start:lo + stop] = np.take_along_axis(pooled_idx[start:stop], at.numpy(), 1)
        del top_sim, top_idx, pooled_sim, pooled_idx
    missing = ~np.isfinite(sim) | (idx < 0)
    report(n, n)
    return np.where(missing, np.arange(n)[:, None], idx), np.where(missing, np.float32(-1.0), sim)


def _drop_self(idx: np.ndarray, sim: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the first k results of each row that are not the row itself, order kept.

    The query's own row is usually first, but ties with exact copies can put it anywhere, or past
    the k + 1 returned; FAISS pads missing results with -1, which sort last.
    """
    bad = (idx == rows[:, None]) | (idx < 0)
    order = np.argsort(bad, axis=1, kind="stable")[:, :k]
    idx, sim = np.take_along_axis(idx, order, 1), np.take_along_axis(sim, order, 1)
    missing = np.take_along_axis(bad, order, 1)
    sim[missing] = -1.0
    return np.where(missing, rows[:, None], idx), sim


def mean_neighbor_similarity(neighbor_sims: np.ndarray, neighbor_idx: np.ndarray | None = None) -> np.ndarray:
    """Return each row's mean cosine similarity over its found neighbours (slots with index -1 are not
    neighbours); a row with none found gets the lowest mean of any row."""
    if neighbor_idx is None or (neighbor_idx >= 0).all():
        return neighbor_sims.mean(1)
    valid = neighbor_idx >= 0
    used = valid.sum(1)
    mean = np.where(valid, neighbor_sims, 0.0).sum(1) / np.maximum(used, 1)
    return np.where(used > 0, mean, mean[used > 0].min() if (used > 0).any() else -1.0).astype(neighbor_sims.dtype)


def get_outlier_scores(neighbor_sims: np.ndarray, neighbor_idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (outlier_score in (0, 1], lower is more atypical; is_outlier mask).

    The score is exp(-d / median(d)) of d, the mean cosine distance to the k nearest neighbours
    (those found: slots with index -1 in `neighbor_idx` are left out); a row is flagged when d is
    beyond Tukey's far-out fence, Q3 + 3·IQR.
    """
    d = np.maximum(1.0 - mean_neighbor_similarity(neighbor_sims, neighbor_idx), 0.0)
    scale = float(np.median(d)) or 1e-12
    q1, q3 = np.percentile(d, [25, 75])
    return np.exp(-d / scale), d > q3 + 3 * (q3 - q1)
