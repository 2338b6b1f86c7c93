"""A table's own embedding column: checked and converted to float32 column-wise, stored as the embed stage.

Parquet list columns are converted by Arrow and numpy a block at a time; CSV/JSONL cells (JSON
arrays) are parsed per row. The first missing, ragged, non-numeric or non-finite row is an error
that names its file row and id.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelkit.arrays import cell as _cell, cells as _cells
from labelkit.errors import LabelkitError
from labelkit.tables import TABLE_EXTENSIONS, pq_schema_names
from labelkit.workspace import ITEMS_SCHEMA, Workspace, embedding_array, model_key, write_table


def read_embedding_column(path: Path, df, column: str, *, id_col: str | None = None) -> np.ndarray:
    """Return the (n_rows, dim) float32 matrix of a table's embedding column.

    Parquet list / large-list / fixed-size-list columns are checked and converted by Arrow and
    numpy a block at a time, with no Python loop over rows; CSV/JSONL cells (JSON arrays) are
    parsed per row. Raises a one-line `LabelkitError` naming the file row and id of the first
    row that is missing, ragged, non-numeric or not finite in float32.
    """
    kind = TABLE_EXTENSIONS[path.suffix.lower()]
    names = pq_schema_names(path) if kind == "parquet" else list(df.columns)
    if column not in names:
        raise LabelkitError(f"Embedding column {column!r} not found in {path}; available columns: {', '.join(names)}.")

    def where(i: int) -> str:
        line = i + 2 if kind in ("csv", "tsv") else i + 1
        row_id = _cell(df[id_col].iloc[i]) if id_col else str(i)
        return f"{path}: row {line} (id {row_id!r}) of embedding column {column!r}"

    if kind == "parquet":
        import pyarrow.parquet as pq

        # Streamed a batch at a time into the float32 matrix: peak memory is the matrix plus one
        # batch, not the matrix plus the whole Arrow column. One thread: decoding list pages
        # in parallel costs twice the CPU for little time saved on two busy cores.
        parquet = pq.ParquetFile(path)
        batches = parquet.iter_batches(batch_size=65536, columns=[column], use_threads=False)
        return _arrow_embeddings((b.column(0) for b in batches), parquet.schema_arrow.field(column).type,
                                 parquet.metadata.num_rows, where)
    return _json_embeddings(df[column].tolist(), where)


def _arrow_embeddings(chunks: Iterable[pa.Array], kind: pa.DataType, n: int, where: Callable[[int], str],
                      block: int = 65536) -> np.ndarray:
    """Return the `n` rows of an Arrow list column, given as `chunks` of type `kind`, as a float32 matrix.

    Raises naming the first bad row: missing, ragged, with a null value, or not finite in float32.
    """
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)) or not (
            pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)):
        raise LabelkitError(f"{where(0)} is not a list of numbers (the column's type is {kind}).")
    dim, start = None, 0
    out = None
    for chunk in chunks:
        for lo in range(0, len(chunk), block):
            part = chunk.slice(lo, block)
            first = start + lo
            if part.null_count:
                bad = int(np.flatnonzero(part.is_null().to_numpy(zero_copy_only=False))[0])
                raise LabelkitError(f"{where(first + bad)} is empty; every row needs an embedding.")
            lengths = pc.list_value_length(part).to_numpy(zero_copy_only=False)
            if dim is None:
                dim = int(lengths[0]) if len(lengths) else None
                if dim == 0:
                    raise LabelkitError(f"{where(first)} is an empty list; every row needs an embedding.")
                out = np.empty((n, dim or 0), np.float32)
            ragged = np.flatnonzero(lengths != dim)
            if len(ragged):
                i = int(ragged[0])
                raise LabelkitError(f"{where(first + i)} has {int(lengths[i])} values where row 1 has {dim}; "
                                    "every embedding needs the same dimension.")
            values = part.flatten()
            if values.null_count:
                bad = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
                raise LabelkitError(f"{where(first + bad // dim)} contains a missing value (null).")
            raw = values.to_numpy(zero_copy_only=False)
            rows = out[first:first + len(part)]
            with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values are reported below
                np.copyto(rows.reshape(-1), raw, casting="unsafe")
            _check_finite(rows, raw, first, where)
        start += len(chunk)
    return out if out is not None else np.zeros((0, 0), np.float32)


def _check_finite(rows: np.ndarray, raw, first: int, where: Callable[[int], str]) -> None:
    """Raise naming the first row of `rows` (float32) with NaN or infinity."""
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if len(bad):
        i = int(bad[0])
        dim = rows.shape[1]
        was_finite = np.isfinite(np.asarray(raw[i * dim:(i + 1) * dim], dtype=np.float64)).all()
        raise LabelkitError(f"{where(first + i)} " + ("has a value beyond the float32 range." if was_finite
                                                      else "contains NaN or infinity."))


def _json_embeddings(cells: list, where: Callable[[int], str]) -> np.ndarray:
    """Return CSV/JSONL embedding cells (JSON arrays, or lists already parsed) as a float32 matrix."""
    import json

    n = len(cells)
    out = None
    for i, cell in enumerate(cells):
        value = cell
        if isinstance(value, str):
            if not value.strip():
                raise LabelkitError(f"{where(i)} is empty; every row needs an embedding.")
            try:
                value = json.loads(value)
            except ValueError:
                raise LabelkitError(f"{where(i)} is not a JSON array of numbers (got {cell[:40]!r}).") from None
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise LabelkitError(f"{where(i)} is empty; every row needs an embedding.")
        arr = np.asarray(value) if isinstance(value, list) else None
        if arr is None or arr.ndim != 1 or arr.dtype.kind not in "iuf":
            shown = cell if isinstance(cell, str) else json.dumps(cell, default=str)
            raise LabelkitError(f"{where(i)} is not a list of numbers (got {shown[:40]!r}).")
        if out is None:
            if len(arr) == 0:
                raise LabelkitError(f"{where(i)} is an empty list; every row needs an embedding.")
            out = np.empty((n, len(arr)), np.float32)
        if len(arr) != out.shape[1]:
            raise LabelkitError(f"{where(i)} has {len(arr)} values where row 1 has {out.shape[1]}; "
                                "every embedding needs the same dimension.")
        with np.errstate(over="ignore"):
            out[i] = arr
        if not np.isfinite(out[i]).all():
            _check_finite(out[i:i + 1], arr, i, where)
    return out if out is not None else np.zeros((0, 0), np.float32)


def vector_items_table(path: Path, df, cols: dict[str, str | None], embeddings: np.ndarray) -> pa.Table:
    """Return the items of a table whose rows hold only an id, a label, a split and an embedding.

    Built column by column with Arrow, to the rules :func:`read_table_rows` and `ingest` apply
    row by row elsewhere: a blank label is "missing label", a blank id becomes the row number
    with "missing id", and the content hash is the SHA-1 of the row's float32 vector.
    """
    n = len(df)
    first_line = 2 if path.suffix.lower() in (".csv", ".tsv") else 1
    numbers = pa.array(np.arange(n, dtype=np.int64))
    label = _cells(df[cols["label"]])
    given_id = _cells(df[cols["id"]]) if cols["id"] else numbers.cast(pa.string())
    no_id = given_id.is_null()
    error = pc.if_else(label.is_null(), pa.scalar("missing label"),
                       pc.if_else(no_id, pa.scalar("missing id"), pa.scalar(None, pa.string())))
    columns = {
        "id": pc.if_else(no_id, numbers.cast(pa.string()), given_id),
        "source": pc.binary_join_element_wise(f"{path.name}:", pc.add(numbers, first_line).cast(pa.string()), ""),
        "modality": pa.array(np.full(n, "embedding", dtype=object), pa.string()),
        "label": label,
        "split": _cells(df[cols["split"]]) if cols["split"] else pa.nulls(n, pa.string()),
        "content_hash": pa.array(vector_hashes(embeddings), pa.string()),
        "bytes": pa.array(np.full(n, embeddings.shape[1] * 4, dtype=np.int64)),
        "error": error,
    }
    return pa.table([columns[f.name].cast(f.type) if f.name in columns else pa.nulls(n, f.type)
                     for f in ITEMS_SCHEMA], schema=ITEMS_SCHEMA)


def vector_hashes(matrix: np.ndarray) -> list[str]:
    """Return the SHA-1 hex digest of each row's float32 bytes (the content hash of a vector-only row)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    step = matrix.shape[1] * 4 if matrix.ndim == 2 else 0
    if not step:
        return []
    view = memoryview(matrix).cast("B")
    return [hashlib.sha1(view[i:i + step]).hexdigest() for i in range(0, len(view), step)]


def write_user_embeddings(ws: Workspace, items: pa.Table, matrix: np.ndarray, column: str, usable) -> dict:
    """Write the usable rows' vectors as ``embeddings/user-<column>.parquet``; return the embed-stage record.

    The table has the schema `embed` writes (id, content_hash, embedding), so every reader of
    embeddings, and the check that they belong to the current items, treats both alike.
    """
    key = model_key(f"user-{column}")
    keep = usable.to_numpy(zero_copy_only=False) if isinstance(usable, (pa.Array, pa.ChunkedArray)) else usable
    vectors = matrix if keep.all() else matrix[keep]
    table = pa.table({"id": items.column("id").filter(pa.array(keep)),
                      "content_hash": items.column("content_hash").filter(pa.array(keep)),
                      "embedding": embedding_array(vectors)})
    path = ws.embeddings_path(key)
    # Float vectors neither compress nor dictionary-encode: plain pages halve the CPU of writing
    # this file and of every later read of it.
    write_table(table, path, row_group_size=16384, compression="none", use_dictionary=False)
    return {"key": key, "model": "user", "pretrained": None, "dim": int(matrix.shape[1]), "device": None,
            "rows": int(table.num_rows), "embedded_now": 0, "cached": 0, "skipped_unusable": int(len(keep) - keep.sum()),
            "failed": 0, "seconds": 0.0, "path": str(path.relative_to(ws.root)), "warning": None,
            "errors_path": None, "first_errors": [], "source": "user", "column": column, "embedding_key": key}
