"""Reading a user's table and finding its columns: shared by `ingest` and the task types.

A table (CSV, TSV, JSONL or Parquet) is read as strings; its columns are named by the user or
recognised by name. Errors are one line and name the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from labelkit.arrays import cells as _cells
from labelkit.errors import LabelkitError

TABLE_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                    ".parquet": "parquet", ".pq": "parquet"}

# Column names recognised when the user names none, in order of preference.
COLUMN_CANDIDATES = {
    "label": ["label", "labels", "class", "class_name", "target", "category", "y"],
    "text": ["text", "sentence", "content", "review", "document", "body", "prompt"],
    "image": ["image_path", "image", "path", "filepath", "file", "filename", "img"],
    "split": ["split", "subset", "partition"],
    "id": ["id", "uid", "example_id", "item_id"],
}


def load_table(path: Path, *, encoding: str | None = None, exclude: str | None = None):
    """Return the table at `path` as a DataFrame of strings, or raise a one-line user error.

    A Parquet column named `exclude` (the user's embeddings) is not read: Arrow reads it apart,
    without a Python object per value.
    """
    import pandas as pd

    kind = TABLE_EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise LabelkitError(f"{path}: unsupported file type {path.suffix!r}; expected an image folder "
                            f"or one of {', '.join(sorted(TABLE_EXTENSIONS))}.")
    enc = encoding or "utf-8"
    try:
        if kind in ("csv", "tsv"):
            df = pd.read_csv(path, sep="," if kind == "csv" else "\t", dtype=str,
                             keep_default_na=False, na_values=[""], encoding=enc)
        elif kind == "jsonl":
            df = pd.read_json(path, lines=True, dtype=False, encoding=enc)
        else:
            names = pq_schema_names(path)
            df = pd.read_parquet(path, columns=[c for c in names if c != exclude] if exclude in names else None)
    except UnicodeDecodeError:
        raise LabelkitError(f"{path} is not valid {enc} ({_first_bad_byte(path, enc)}); "
                            "pass --encoding, e.g. --encoding latin-1.") from None
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LabelkitError(f"Cannot read {path}: {first}") from None
    df.columns = [str(c) for c in df.columns]
    return df


def _first_bad_byte(path: Path, encoding: str) -> str:
    """Return where `path` first fails to decode, as 'byte 0xNN on line L'."""
    data = path.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return f"byte 0x{data[exc.start]:02x} on line {line}"
    return "undecodable bytes"


def detect_column(columns: list[str], role: str, given: str | None, path: Path, *, required: bool) -> str | None:
    """Return the column for `role` (label, text, …): the one given, or a recognised name."""
    if given is not None:
        if given not in columns:
            raise LabelkitError(f"{role.capitalize()} column {given!r} not found in {path}; "
                                f"available columns: {', '.join(columns)}.")
        return given
    lower = {c.lower(): c for c in columns}
    for name in COLUMN_CANDIDATES[role]:
        if name in lower:
            return lower[name]
    if required:
        raise LabelkitError(f"No {role} column found in {path} (looked for "
                            f"{', '.join(COLUMN_CANDIDATES[role])}); pass --{role}-col. "
                            f"Available columns: {', '.join(columns)}.")
    return None


def check_unique_ids(df, column: str, path: Path) -> None:
    """Raise :class:`LabelkitError` naming the first value of `column` that appears more than once."""
    # Column-wise: a million ids are checked without a Python object each.
    codes = pc.dictionary_encode(_cells(df[column])).indices.fill_null(-1).to_numpy(zero_copy_only=False)
    counts = np.bincount(codes[codes >= 0]) if len(codes) else np.zeros(0, np.int64)
    repeated = np.flatnonzero((codes >= 0) & (counts[np.maximum(codes, 0)] > 1)) if len(counts) else []
    if len(repeated):
        first = int(repeated[0])
        raise LabelkitError(f"Column {column!r} of {path} is not a unique id: "
                            f"{_cells(df[column])[first].as_py()!r} appears "
                            f"{int(counts[codes[first]])} times.")


def pq_schema_names(path: Path) -> list[str]:
    """Return the column names of a Parquet file (read from its footer only)."""
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)
