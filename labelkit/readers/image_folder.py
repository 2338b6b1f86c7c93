"""Image folders: ``ROOT/<class>/<file>`` or ``ROOT/<split>/<class>/<file>``, listed and checked in parallel.

This process lists the files (following symlinks only while they stay inside the folder); a
process pool reads, hashes and checks them and returns Arrow batches of items rows.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from labelkit.readers import chunks as _chunks
from labelkit.readers.image_files import FACT_COLUMNS, describe_image_file, describe_image_files
from labelkit.workspace import ITEMS_SCHEMA

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_NAMES = {"train", "val", "valid", "validation", "test"}


def walk_files(root: Path | str, *, allow_outside_root: bool = False) -> Iterator[tuple[str, str, bool, str | None]]:
    """Yield (relative posix path, real path, is_folder, error) under `root`, in sorted order.

    Symlinks are followed while they stay inside `root`, never around a loop. One that leads
    outside is yielded once with an `error` and is neither read nor, for a folder, listed —
    unless `allow_outside_root`. Only symlinks pay for a `realpath`: a plain entry's real path is
    its folder's real path plus its name. `is_folder` is True only for such a refused folder.
    """
    root_real = os.path.realpath(root)
    inside = os.path.join(root_real, "")
    seen: set[str] = set()

    def visit(directory: str, real: str, rel: str) -> Iterator[tuple[str, str, bool, str | None]]:
        if real in seen:
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        real_prefix = os.path.join(real, "")
        rel_prefix = rel + "/" if rel else ""
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            child = rel_prefix + name
            try:
                # Plain files first: they are nearly every entry, and d_type answers without a syscall.
                if entry.is_file(follow_symlinks=False):
                    yield child, real_prefix + name, False, None
                elif entry.is_dir(follow_symlinks=False):
                    yield from visit(entry.path, real_prefix + name, child)
                elif entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    is_dir = os.path.isdir(target)
                    if not is_dir and not os.path.isfile(target):
                        continue  # a broken link names no file
                    if not allow_outside_root and target != root_real and not target.startswith(inside):
                        yield child, target, is_dir, (f"symlink outside the data folder: {child} -> {target} "
                                                      "(pass --allow-outside-root)")
                    elif is_dir:
                        yield from visit(entry.path, target, child)
                    else:
                        yield child, target, False, None
            except OSError:  # permission denied, or the entry vanished while listing
                continue

    yield from visit(str(root), root_real, "")


def list_image_files(root: Path, *, allow_outside_root: bool = False) -> Iterator[tuple[str, str, str | None, str | None, str | None]]:
    """Yield (id, real path, label, split, error) per image file of `root/<class>/…` or `root/<split>/<class>/…`.

    The id is the path relative to `root`. A symlink leading out of `root` gives a row with its
    `error` set (a linked folder: one row for the folder), so the refusal shows in the items table.
    """
    subdirs = [p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")]
    split_layout = bool(subdirs) and all(s.lower() in SPLIT_NAMES for s in subdirs)
    depth = 3 if split_layout else 2
    extensions = {e.lstrip(".") for e in IMAGE_EXTENSIONS}
    folders: dict[str, tuple[str, str | None] | None] = {}  # folder → (label, split), None if too shallow
    for rel, real, is_folder, error in walk_files(root, allow_outside_root=allow_outside_root):
        if is_folder:
            # The folder may be a class (or split) folder itself: label what the path names.
            parts = rel.split("/")
            parts = parts + [""] * max(0, depth - 1 - len(parts))
            yield rel, None, parts[depth - 2] or None, parts[0] if split_layout else None, error
            continue
        folder, _, name = rel.rpartition("/")
        stem, dot, ext = name.rpartition(".")
        if not stem or ext.lower() not in extensions:
            continue
        place = folders.get(folder, False)
        if place is False:
            parts = rel.split("/")
            place = folders[folder] = ((parts[depth - 2], parts[0] if split_layout else None)
                                       if len(parts) >= depth else None)
        if place is not None:
            yield rel, real, place[0], place[1], error


def read_image_folder(root: Path, *, map_fn=None, allow_outside_root: bool = False,
                      properties: bool = True) -> Iterator[dict]:
    """Yield one item row per image file of `root/<class>/…` or `root/<split>/<class>/…`.

    `map_fn(func, items)`, when given, checks the files (see :func:`labelkit.engines.mapper`);
    otherwise this process does. :func:`read_image_folder_batches` is the fast local path.
    """
    listed, queued = itertools.tee(list_image_files(root, allow_outside_root=allow_outside_root))
    todo = (real for _, real, _, _, error in queued if error is None)
    describe = functools.partial(describe_image_file, properties=properties)
    facts = map_fn(describe, todo) if map_fn is not None else map(describe, todo)
    for rel, real, label, split, error in listed:
        yield {"id": rel, "source": rel, "modality": "image", "image_path": real, "label": label, "split": split,
               **(next(facts) if error is None else {"error": error})}


def read_image_folder_batches(root: Path, *, workers: int | None = None, batch_size: int = 512,
                              allow_outside_root: bool = False, properties: bool = True) -> Iterator[pa.RecordBatch]:
    """Yield items record batches (`label_id` left null) for the image files of `root`, in listing order.

    This process lists the files; a pool of `workers` processes (default: one per available
    core; 0: none) reads, hashes and checks them `batch_size` files per task, a few tasks ahead
    of the listing. A listing shorter than two batches is checked here: starting the pool would
    cost more than it saves.
    """
    from concurrent.futures import ProcessPoolExecutor

    chunks = _chunks(list_image_files(root, allow_outside_root=allow_outside_root), batch_size)
    head = list(itertools.islice(chunks, 2))
    chunks = itertools.chain(head, chunks)
    workers = available_cores() if workers is None else workers
    if workers <= 0 or len(head) < 2:
        for chunk in chunks:
            yield _items_batch(chunk, describe_image_files([c[1] for c in chunk if c[4] is None],
                                                           properties=properties))
        return
    pending: collections.deque = collections.deque()
    with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context(), initializer=_quiet_worker) as pool:
        for chunk in chunks:
            pending.append((chunk, pool.submit(describe_image_files, [c[1] for c in chunk if c[4] is None],
                                               properties=properties)))
            # Bounded, so memory stays flat however many files; deep enough that the workers
            # keep going while this process builds Arrow batches (the first one imports pandas).
            if len(pending) > 8 * workers:
                done, future = pending.popleft()
                yield _items_batch(done, future.result())
        while pending:
            done, future = pending.popleft()
            yield _items_batch(done, future.result())


def available_cores() -> int:
    """Return the number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _pool_context():
    """Return the multiprocessing context of the file-checking pool: fork on Linux, else spawn.

    Forked workers start at once with this module loaded, and, unlike forkserver or spawn
    workers, never re-run the caller's script (a script without an ``if __name__ ==
    "__main__"`` guard would otherwise start ingesting again in every worker). They only read
    files, hash and parse headers, so no lock held by another thread of the caller (the
    progress bar's) is ever taken in them. macOS forks unsafely, so it spawns.
    """
    import multiprocessing as mp
    import sys

    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _quiet_worker() -> None:
    """Silence warnings in a pool worker: a forked worker must never write to the inherited stderr,
    whose lock the caller's progress thread may have held at the fork."""
    import warnings

    warnings.simplefilter("ignore")


def _items_batch(chunk: list[tuple], facts: dict[str, list]) -> pa.RecordBatch:
    """Return the items rows of one listed chunk; `facts` covers its rows without a listing error."""
    if any(c[4] is not None for c in chunk):
        rows = iter(range(len(facts["error"])))
        merged: dict[str, list] = {k: [] for k in FACT_COLUMNS}
        for c in chunk:
            j = next(rows) if c[4] is None else None
            for k in FACT_COLUMNS:
                merged[k].append(facts[k][j] if j is not None else (c[4] if k == "error" else None))
        facts = merged
    n = len(chunk)
    ids = [c[0] for c in chunk]
    columns = {"id": ids, "source": ids, "modality": ["image"] * n, "image_path": [c[1] for c in chunk],
               "label": [c[2] for c in chunk], "split": [c[3] for c in chunk], **facts}
    return pa.record_batch([pa.array(columns[f.name], f.type) if f.name in columns else pa.nulls(n, f.type)
                            for f in ITEMS_SCHEMA], schema=ITEMS_SCHEMA)
