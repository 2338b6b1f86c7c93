"""The Ray engine: the same stages as the local engine, executed on a Ray cluster (``--engine ray``).

Only imported when the user asks for Ray; every function starts with :func:`connect`, which
joins the cluster at ``address`` (or ``RAY_ADDRESS``) or starts a local one. What runs where:

- ingest: the driver lists files; hashing and header checks run as tasks over batches of items
  (:func:`task_map`), results gathered in order, so the items table is the local one.
- embed: ``read_parquet(items) → map_batches(select) → map_batches(embedder actors)``; the
  driver writes each gathered chunk as an atomic part, so a killed run resumes
  (:func:`embed_parts`).
- issues: the normalised embedding matrix (exact search) or the local engine's IVF index (above
  its exact limit) is put once in the object store and every task queries one block of rows
  against it (:func:`find_nearest_neighbors`). The probe's final k-fold and held-out models run
  one per task over the embedding matrix put once (:func:`fold_map`); its candidate selection
  and confident learning run on the driver (see docs/ray.md).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelkit.engines import require_ray
from labelkit.errors import LabelkitError
from labelkit.workspace import embedding_array, write_table

TASK_BATCH = 512  # items per task: big enough to amortise ~1 ms of task overhead, small enough to spread


def connect(address: str | None = None):
    """Return the `ray` module, connected to the cluster at `address` (or started locally).

    An already initialised Ray (a notebook, a test fixture) is reused as it is. ``None`` means
    ``RAY_ADDRESS`` if set, else a new local cluster on this machine's cores.
    """
    ray = require_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LabelkitError(f"Cannot connect to the Ray cluster at {address or 'RAY_ADDRESS'}: {first}") from None
    # Progress bars and per-dataset INFO lines would interleave with labelkit's own on stderr.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return ray


def cluster_cpus_gpus(ray) -> tuple[int, int]:
    """Return the (CPUs, GPUs) the cluster has in total."""
    res = ray.cluster_resources()
    return max(1, int(res.get("CPU", 1))), int(res.get("GPU", 0))


def _unwrap(exc: Exception) -> Exception:
    """Return the user error inside a Ray task error, so the CLI still exits 2 with one line."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, LabelkitError) else exc


def _apply_batch(func: Callable, batch: list) -> list:
    return [func(x) for x in batch]


def task_map(func: Callable, items: Iterable, *, address: str | None = None, batch_size: int = TASK_BATCH,
             max_in_flight: int | None = None) -> Iterator:
    """Yield ``func(item)`` for every item, in order, computed by Ray tasks over batches of items.

    At most `max_in_flight` batches (default: twice the cluster's CPUs) are submitted ahead of
    the one being gathered, so the driver's memory is bounded however many items there are.
    `func` must be picklable (a module-level function, or a closure cloudpickle can ship).
    """
    ray = connect(address)
    cpus, _ = cluster_cpus_gpus(ray)
    remote = ray.remote(num_cpus=1)(_apply_batch)
    func_ref = ray.put(func)  # shipped once, not with every batch
    window = max_in_flight or 2 * cpus
    iterator = iter(items)
    pending: deque = deque()
    while True:
        while len(pending) < window and (batch := list(itertools.islice(iterator, batch_size))):
            pending.append(remote.remote(func_ref, batch))
        if not pending:
            return
        try:
            results = ray.get(pending.popleft())
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc) from None
        yield from results


# ---------------------------------------------------------------------------------------------
# embed


def _select_todo(batch: pa.Table, done: dict[str, str]) -> pa.Table:
    """Return the usable rows whose (id, content_hash) is not embedded yet (the resume rule of `embed`)."""
    batch = batch.filter(pc.is_null(batch.column("error")))
    if done:
        keep = [done.get(i) != h for i, h in zip(batch.column("id").to_pylist(), batch.column("content_hash").to_pylist())]
        batch = batch.filter(pa.array(keep, pa.bool_()))
    return batch.drop_columns(["error"])


class _Embedder:
    """A Ray Data actor: builds its featurizer once, then embeds each batch it is given."""

    def __init__(self, make_featurizer: Callable, key: str, device: str, modality: str, decode_workers: int):
        self.featurizer = make_featurizer(device=device)
        if self.featurizer.key != key:  # e.g. CLIP weights cached on the driver but not on this node
            raise LabelkitError(f"A Ray worker built embedder {self.featurizer.key!r}, not the driver's {key!r}; "
                                "make the model's weights available on every node (--pretrained /shared/path.pt).")
        self.modality, self.decode_workers = modality, decode_workers

    def __call__(self, batch: pa.Table) -> pa.Table:
        f, n = self.featurizer, batch.num_rows
        if n == 0:  # a block whose rows were all embedded before (resume)
            emb, ok, why = np.zeros((0, f.dim), np.float32), np.zeros(0, bool), []
        elif self.modality == "text":
            emb, ok, why = f.encode_texts(batch.column("text").to_pylist(), batch_size=n), np.ones(n, bool), [""] * n
        else:
            parts = list(f.image_batches(batch.column("image_path").to_pylist(), batch_size=n,
                                         workers=self.decode_workers, with_errors=True))
            emb = np.concatenate([e for e, _, _ in parts]) if parts else np.zeros((0, f.dim), np.float32)
            ok = np.concatenate([o for _, o, _ in parts]) if parts else np.zeros(0, bool)
            why = [w for _, _, ws in parts for w in ws]
        return pa.table({"id": batch.column("id"), "content_hash": batch.column("content_hash"),
                         "embedding": embedding_array(np.asarray(emb, np.float32)), "ok": pa.array(ok),
                         "error": pa.array(why, pa.string())})


def embed_pool(ray) -> dict:
    """Return the actor pool's shape: one actor per GPU, else every CPU but one.

    The spare CPU is for Ray Data's read and select tasks; a pool that takes every CPU leaves
    them none and the pipeline hangs (measured on 2 cores).
    """
    cpus, gpus = cluster_cpus_gpus(ray)
    if gpus:
        per_actor = max(1, min(8, cpus // gpus - 1))  # decode workers beside each GPU
        return {"size": gpus, "num_gpus": 1, "num_cpus": per_actor, "device": "cuda",
                "decode_workers": per_actor - 1}
    return {"size": max(1, cpus - 1), "num_gpus": 0, "num_cpus": 1, "device": "cpu", "decode_workers": 0}


def embed_parts(items_path: Path, parts: Path, *, make_featurizer: Callable, key: str, modality: str,
                done: dict[str, str], batch_size: int, chunk_rows: int, address: str | None = None,
                total: int | None = None, progress: Callable | None = None,
                errors: dict[str, list] | None = None) -> tuple[int, int]:
    """Return (rows embedded, rows that failed to decode); writes ``parts/part-*.parquet``.

    ``ray.data.read_parquet(items)`` feeds an actor pool (:func:`embed_pool`) of `make_featurizer`
    models (which must build embedding `key`), each loaded once per actor; the driver writes
    every `chunk_rows` gathered rows as one atomic part, in the layout the local engine
    consolidates. `done` maps id → content hash of
    rows already stored (they are skipped). Failed rows are appended to `errors` (lists ``id``,
    ``content_hash``, ``error``), as the local engine records them.
    """
    ray = connect(address)
    from ray.data import ActorPoolStrategy

    pool = embed_pool(ray)
    content = "text" if modality == "text" else "image_path"
    # select_columns is pushed down into the read (the `columns=` argument is deprecated).
    ds = ray.data.read_parquet(str(items_path)).select_columns(["id", "content_hash", content, "error"])
    ds = ds.map_batches(_select_todo, fn_kwargs={"done": done}, batch_format="pyarrow")  # fused with the read
    ds = ds.map_batches(_Embedder, batch_size=batch_size, batch_format="pyarrow",
                        compute=ActorPoolStrategy(size=pool["size"]), num_gpus=pool["num_gpus"],
                        num_cpus=pool["num_cpus"],
                        fn_constructor_kwargs={"make_featurizer": make_featurizer, "key": key, "device": pool["device"],
                                               "modality": modality, "decode_workers": pool["decode_workers"]})
    parts.mkdir(parents=True, exist_ok=True)
    embedded = failed = seen = 0
    buffer: list[pa.Table] = []

    def flush() -> None:
        nonlocal embedded
        if not buffer:
            return
        table = pa.concat_tables(buffer)
        buffer.clear()
        write_table(table, parts / f"part-{time.time_ns()}.parquet")
        embedded += table.num_rows

    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            ok = batch.column("ok")
            good = batch.filter(ok).drop_columns(["ok", "error"])
            failed += batch.num_rows - good.num_rows
            if errors is not None and good.num_rows < batch.num_rows:
                bad = batch.filter(pc.invert(ok))
                errors["id"] += bad.column("id").to_pylist()
                errors["content_hash"] += bad.column("content_hash").to_pylist()
                errors["error"] += [e or "failed to embed" for e in bad.column("error").to_pylist()]
            seen += batch.num_rows
            if good.num_rows:
                buffer.append(good)
            if sum(t.num_rows for t in buffer) >= chunk_rows:
                flush()
            if progress:
                progress(seen, total)
    except ray.exceptions.RayTaskError as exc:
        raise _unwrap(exc) from None
    flush()
    return embedded, failed


# ---------------------------------------------------------------------------------------------
# issues: neighbours


def _knn_block(E: np.ndarray, start: int, stop: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices, similarities) of the k most similar other rows for rows start..stop of E."""
    from labelkit.neighbors import exact_block

    return exact_block(E, start, stop, k)  # the local engine's own block search: same neighbours, ties too


_INDEXES: dict[str, object] = {}  # per worker process: a deserialised index is reused by later tasks


def _ivf_block(token: str, blob: np.ndarray, E: np.ndarray, start: int, stop: int, k: int,
               n_probes: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices, similarities) of rows start..stop of E searched in the serialised IVF index."""
    import faiss

    from labelkit.neighbors import _drop_self

    index = _INDEXES.get(token)
    if index is None:
        _INDEXES.clear()  # one index per run: never hold an earlier run's copy
        index = _INDEXES[token] = faiss.deserialize_index(np.asarray(blob))
        index.nprobe = n_probes
    sim, idx = index.search(np.ascontiguousarray(E[start:stop]), k + 1)
    return _drop_self(idx, sim, np.arange(start, stop), k)


def _build_ivf(E: np.ndarray, n_probes: int, seed: int):
    """Return (the IVF-Flat index, probes) that :func:`labelkit.neighbors.find_nearest_neighbors`
    builds for the unit rows `E`: same cells, training sample and k-means seed, so the same result."""
    from labelkit.neighbors import build_ivf_index, default_n_lists

    n_lists = default_n_lists(len(E))
    return build_ivf_index(E, n_lists, seed=seed), int(min(n_probes, n_lists))


def find_nearest_neighbors(embeddings: np.ndarray, *, k: int = 10, address: str | None = None,
                           max_block_bytes: int = 256 << 20, exact_max_rows: int | None = None,
                           n_probes: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices, cosine similarities) of every row's k nearest other rows, as
    :func:`labelkit.neighbors.find_nearest_neighbors` on CPU does, with row blocks queried by Ray tasks.

    Up to `exact_max_rows` rows (default: the local engine's CPU limit) the unit-normalised
    float32 matrix is put in the object store once and each task scores one block of rows against
    all rows (exact, O(block × n) scratch). Above it, the driver builds the local engine's IVF
    index once, puts it in the object store serialised, and each task searches one block of rows
    in it (a worker deserialises it once and reuses it).
    """
    from labelkit import neighbors
    from labelkit.errors import check_in_range

    ray = connect(address)
    n = len(embeddings)
    k = int(min(k, n - 1))
    check_in_range(k, "k", "find_nearest_neighbors", low=1, kind="an int")
    exact_max_rows = neighbors.EXACT_MAX_ROWS_CPU if exact_max_rows is None else exact_max_rows
    n_probes = neighbors.default_n_probes(len(embeddings)) if n_probes is None else n_probes  # as the local engine
    check_in_range(n_probes, "n_probes", "find_nearest_neighbors", low=1, kind="an int")
    cpus, _ = cluster_cpus_gpus(ray)
    if n <= exact_max_rows:
        E = neighbors.normalized_rows(embeddings)
        # Enough blocks to keep every CPU busy, none bigger than the scratch budget.
        block = neighbors.exact_block_rows(max_block_bytes, n, cap=math.ceil(n / (2 * cpus)))
        remote, args = ray.remote(num_cpus=1)(_knn_block), (ray.put(E),)
        tail = (k,)
    else:
        import faiss

        E = neighbors._unit_rows(embeddings)
        index, probes = _build_ivf(E, n_probes, seed)
        blob = faiss.serialize_index(index)
        del index
        block = max(1, min(16_384, math.ceil(n / (2 * cpus))))
        remote, args = ray.remote(num_cpus=1)(_ivf_block), (f"{time.time_ns()}", ray.put(blob), ray.put(E))
        tail = (k, probes)
    idx_out = np.empty((n, k), dtype=np.int64)
    sim_out = np.empty((n, k), dtype=np.float32)
    window = 2 * cpus
    pending: deque = deque()
    for start in list(range(0, n, block)) + [None] * window:
        if start is not None:
            pending.append((start, remote.remote(*args, start, min(n, start + block), *tail)))
        if len(pending) > window or (start is None and pending):
            s, ref = pending.popleft()
            idx, sim = ray.get(ref)
            idx_out[s:s + len(idx)], sim_out[s:s + len(idx)] = idx, sim
    return idx_out, np.clip(sim_out, -1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# issues: the probe's final k-fold


def _fit_in_task(fit: Callable, X: np.ndarray, labels: np.ndarray, job, threads: int) -> np.ndarray:
    """Return ``fit(X, labels, job)`` computed on `threads` threads (the CPUs Ray gave this task).

    Left alone, a worker's torch and BLAS size their pools to the whole node and oversubscribe it
    when several folds run side by side.
    """
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    with threadpool_limits(limits=threads):
        return fit(X, labels, job)


def fold_cpus(ray, n_jobs: int) -> int:
    """Return the CPUs each of `n_jobs` fold tasks asks for: an even share of the cluster's, at least
    1 (so on 2 cores two folds run side by side), at most the largest node's (else it never runs)."""
    cpus, _ = cluster_cpus_gpus(ray)
    nodes = [int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")]
    return int(max(1, min(cpus // max(1, n_jobs), max(nodes, default=1))))


def fold_map(fit: Callable, X: np.ndarray, labels: np.ndarray, jobs: Sequence, *,
             address: str | None = None) -> Iterator[np.ndarray]:
    """Return an iterator of ``fit(X, labels, job)`` for every job, in job order, each computed by one Ray task.

    The probe's ``fold_map`` for ``engine='ray'`` (see
    :func:`labelkit.probe.get_out_of_sample_probs`). `X` and `labels` are put in the object store
    once and every task reads them zero-copy; a job is one model of the final k-fold or the
    held-out rows' model (:class:`labelkit.probe.FoldJob`, a few index arrays). Each task asks for
    :func:`fold_cpus` CPUs and runs torch and BLAS on that many threads; a job whose ``device``
    is CUDA asks for one GPU, or runs on CPU when the cluster has none (the driver's GPU is not
    the cluster's). All jobs are submitted before this returns (k or k + 1 of them) and gathered
    in order; a user error raised in a task is raised here as itself. Tasks not yet gathered when
    the caller stops early run to their end (see :func:`_gather`).
    """
    ray = connect(address)
    jobs = list(jobs)
    if not jobs:
        return iter(())
    _, gpus = cluster_cpus_gpus(ray)
    wants_gpu = any(str(getattr(job, "device", "cpu")).startswith("cuda") for job in jobs)
    if wants_gpu and not gpus:
        jobs = [dataclasses.replace(job, device="cpu") if dataclasses.is_dataclass(job) else job for job in jobs]
    threads = fold_cpus(ray, len(jobs))
    remote = ray.remote(num_cpus=threads, num_gpus=1 if wants_gpu and gpus else 0)(_fit_in_task)
    shared = [ray.put(fit), ray.put(np.asarray(X, np.float32)), ray.put(np.asarray(labels))]  # once, not per task
    return _gather(ray, deque(remote.remote(*shared, job, threads) for job in jobs))


def _gather(ray, pending: deque) -> Iterator:
    """Yield the results of `pending` task references in order.

    Tasks left when the caller stops early (an error, a closed generator) are not cancelled: they
    finish and their results are dropped. ``ray.cancel`` on a task that is just completing crashed
    the driver process itself in Ray 2.60 ("Check failed: Tried to complete task that was not
    pending", task_manager.cc; seen once in this project's CI, the pytest process gone mid-run).
    """
    while pending:
        try:
            result = ray.get(pending[0])
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc) from None
        pending.popleft()
        yield result
