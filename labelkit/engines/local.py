"""The local engine: in-process work on a thread pool (the default; no extra dependencies)."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator


def thread_map(func: Callable, items: Iterable, *, workers: int = 4, chunk: int = 256) -> Iterator:
    """Yield ``func(item)`` for every item, in order, computed on `workers` threads.

    Items are consumed `chunk` at a time, so memory stays flat however long `items` is; file
    reads and hashing release the GIL, which is what the threads overlap.
    """
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while batch := list(itertools.islice(iterator, chunk)):
            yield from pool.map(func, batch)
