"""Reading a user's ``--pred-probs`` file, shared by the multiclass verbs and the task modules (no verb imports)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labelkit.errors import LabelkitError


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
