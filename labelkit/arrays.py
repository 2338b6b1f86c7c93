"""Arrow column helpers shared by the verbs, the task modules and the checks (no verb imports here)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def string_array(values: Sequence[str] | pa.Array | pa.ChunkedArray) -> pa.Array:
    """Return `values` as one Arrow string array (no copy when it already is one)."""
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    return pa.array([str(v) for v in values], pa.string())


def positions(values: pa.Array, value_set: Sequence[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Return the index of each value in `value_set`, -1 where it is absent (an Arrow hash lookup)."""
    if isinstance(value_set, pa.ChunkedArray):
        value_set = value_set.combine_chunks()
    if not isinstance(value_set, pa.Array):
        value_set = pa.array(value_set, pa.string())
    return pc.index_in(values, value_set=value_set).fill_null(-1).to_numpy().astype(np.int64)


def cell(value) -> str | None:
    """Return a table cell as a string, or None when it is missing (None, NaN, empty)."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    return text if text.strip() else None


def cells(values) -> pa.Array:
    """Return a table column as strings, missing cells (None, NaN, blank) as null: :func:`cell` column-wise."""
    try:
        arr = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        arr = None
    if isinstance(arr, pa.ChunkedArray):  # an Arrow-backed pandas column
        arr = arr.combine_chunks()
    if arr is not None and (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.string())
        return pc.if_else(pc.equal(pc.utf8_trim_whitespace(arr), ""), pa.scalar(None, pa.string()), arr)
    if arr is not None and pa.types.is_integer(arr.type):
        return arr.cast(pa.string())
    return pa.array([cell(v) for v in values], pa.string())  # floats, mixed types: rare, and `cell` knows them


def empty_issue_columns(n: int) -> dict:
    """Return the issues-table columns every reader may rely on, empty for `n` rows (their check did not run)."""
    return {"is_label_issue": np.zeros(n, bool), "label_quality": pa.nulls(n, pa.float32()),
            "suggested_label": pa.nulls(n, pa.string()), "outlier_score": np.full(n, np.nan, np.float32),
            "is_outlier": np.zeros(n, bool)}


def empty_lists(n: int, value_type: pa.DataType = pa.string()) -> pa.ListArray:
    """Return `n` empty lists (e.g. the ``parent_ids`` of rows that are not synthetic) without a Python loop."""
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], value_type))
