"""Reading a user's ``--pred-probs`` file, shared by the multiclass verbs and the task modules (no verb imports)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from labelkit.arrays import positions as _positions, string_array as _string_array
from labelkit.errors import LabelkitError
from labelkit.workspace import read_class_file


def read_pred_probs_file(path: Path | str, *, mmap: bool = False
                         ) -> tuple[np.ndarray, list[str] | None, list[str] | None]:
    """Return (matrix, row ids, column names) of a ``--pred-probs`` file, the matrix as float32.

    A ``.npy`` matrix (memory-mapped when `mmap`), or a CSV/Parquet table with an optional ``id``
    column (returned as the row ids, else None) and either a ``pred_probs`` list column or one
    column per class (their names returned, else None). Raises a user error naming the file when it
    is missing, of an unsupported type, or unreadable; the caller checks the shape and values.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise LabelkitError(f"--pred-probs {path}: no such file.")
    row_ids, col_names = None, None
    try:
        if path.suffix == ".npy":
            # mmap: no copy, measured faster than reading the whole file
            matrix = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
        elif path.suffix in (".csv", ".parquet", ".pq"):
            df = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
            if "id" in df.columns:
                row_ids = df["id"].astype(str).tolist()
                df = df.drop(columns="id")
            if "pred_probs" in df.columns:
                matrix = np.stack(df["pred_probs"].to_numpy()).astype(np.float64)
            else:
                col_names = [str(c) for c in df.columns]
                matrix = df.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        else:
            raise LabelkitError(f"--pred-probs {path}: unsupported type {path.suffix!r}; use .npy, .csv or .parquet.")
    except LabelkitError:
        raise
    except Exception as exc:
        raise LabelkitError(f"Cannot read --pred-probs {path}: {str(exc).splitlines()[0]}") from None
    return np.asarray(matrix, dtype=np.float32), row_ids, col_names


def load_pred_probs(path: Path | str, *, ids: Sequence[str], usable: np.ndarray, classes: list[str],
                    classes_file: Path | str | None = None) -> np.ndarray:
    """Return the user's predicted probabilities for the usable rows, columns in workspace class order.

    Rows are keyed by an ``id`` column when the file has one, otherwise they are in items order
    (one row per item, or one per usable item). Raises a user error naming the row for values
    that are not finite, negative, or rows that do not sum to 1 (tolerance 1e-3).
    """
    path = Path(path)
    matrix, row_ids, col_names = read_pred_probs_file(path, mmap=True)
    if matrix.ndim != 2:
        raise LabelkitError(f"--pred-probs {path} must be a 2-D matrix (rows × classes); got shape {matrix.shape}.")
    K = len(classes)
    if matrix.shape[1] != K:
        raise LabelkitError(f"--pred-probs {path} has {matrix.shape[1]} columns but the workspace has {K} classes "
                            f"({', '.join(classes[:12])}{', …' if K > 12 else ''}).")
    # Column order: an explicit classes file, else named columns, else the workspace's order.
    order = None
    if classes_file is not None:
        order = read_class_file(classes_file)
    elif col_names is not None and set(col_names) == set(classes):
        order = col_names
    if order is not None:
        if sorted(order) != sorted(classes):
            raise LabelkitError(f"The classes in {classes_file or path} ({', '.join(order[:8])}) differ from the "
                                f"workspace's ({', '.join(classes[:8])}).")
        matrix = matrix[:, [order.index(c) for c in classes]]
    ids = _string_array(ids)
    source_rows = np.flatnonzero(usable)  # item row of each usable row
    item_id = lambda row: ids[int(row)].as_py()
    if row_ids is not None:
        position = _positions(ids.take(pa.array(source_rows)), row_ids)
        missing = np.flatnonzero(position < 0)
        if len(missing):
            raise LabelkitError(f"--pred-probs {path} has no row for id {item_id(source_rows[missing[0]])!r} "
                                f"({len(missing)} usable items missing).")
        matrix = matrix[position]
        describe = lambda r: f"row for id {item_id(source_rows[r])!r} (file row {position[r] + 1})"
    elif len(matrix) == len(ids):
        if len(source_rows) < len(ids):  # no 400 MB copy when every row is usable
            matrix = matrix[usable]
        describe = lambda r: f"row {source_rows[r] + 1} (id {item_id(source_rows[r])!r})"
    elif len(matrix) == len(source_rows):
        describe = lambda r: f"row {r + 1} (id {item_id(source_rows[r])!r})"
    else:
        raise LabelkitError(f"--pred-probs {path} has {len(matrix)} rows; expected {len(ids)} (one per item) or "
                            f"{len(source_rows)} (one per usable item), or an 'id' column.")
    # One pass for the sums and one for the minimum; rows are only searched on failure.
    sums = matrix.sum(1, dtype=np.float64)
    if not np.isfinite(sums).all():  # a row sum is finite exactly when all its values are
        r = int(np.flatnonzero(~np.isfinite(matrix).all(1))[0])
        raise LabelkitError(f"--pred-probs {path}: {describe(r)} has a value that is not a finite number.")
    if matrix.size and matrix.min() < 0:
        raise LabelkitError(f"--pred-probs {path}: {describe(int(np.flatnonzero((matrix < 0).any(1))[0]))} has a "
                            "negative probability.")
    off = np.abs(sums - 1) > 1e-3
    if off.any():
        r = int(np.flatnonzero(off)[0])
        raise LabelkitError(f"--pred-probs {path}: {describe(r)} sums to {sums[r]:.4g}, not 1 (tolerance 0.001); "
                            "pass probabilities (softmax outputs), not logits.")
    if np.abs(sums - 1).max(initial=0) > 1e-6:
        matrix = matrix / sums[:, None].astype(np.float32)
    return matrix
