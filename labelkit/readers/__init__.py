"""The readers of `labelkit ingest`: image files and folders, table rows, a table's own embeddings.

Readers never hold decoded images, beyond the one thumbnail an image's properties are measured
on (:mod:`labelkit.properties`). Image folders are listed here and checked by a process pool
that returns Arrow batches; tables are read row by row as plain dicts, except a table of user
embeddings, which Arrow converts column-wise. A row that cannot be used is kept, with `error`
saying why; later stages skip it.
"""

from __future__ import annotations

from typing import Iterable, Iterator


def chunks(iterable: Iterable, size: int) -> Iterator[list]:
    """Yield lists of `size` consecutive items of `iterable` (the last one may be shorter)."""
    chunk = []
    for x in iterable:
        chunk.append(x)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
