"""The workspace folder: paths, the JSON manifest, atomic Parquet I/O and class order.

Every file labelkit writes goes through :func:`atomic_path`, so a killed run leaves either the
previous good file or the new complete one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from labelkit.errors import LabelkitError

DEFAULT_WORKSPACE = "labelkit-out"
MANIFEST_VERSION = 1

ITEMS_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("source", pa.string()),
    ("modality", pa.string()),
    ("text", pa.string()),
    ("image_path", pa.string()),
    ("label", pa.string()),
    ("label_id", pa.int32()),
    ("split", pa.string()),
    ("content_hash", pa.string()),
    ("bytes", pa.int64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("text_length", pa.int32()),
    ("error", pa.string()),
])


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_table(table: pa.Table, path: Path | str, **kwargs) -> Path:
    """Write `table` to Parquet atomically and return the path."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **kwargs)
    return Path(path)


def write_json(data: dict, path: Path | str) -> Path:
    """Write `data` as indented JSON atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return Path(path)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def sort_classes(labels: Iterable[str]) -> list[str]:
    """Return the distinct labels in labelkit's class order.

    Integer-like labels sort numerically (0, 1, 2, …, 10), anything else alphabetically.
    """
    distinct = set(labels)
    if distinct and all(re.fullmatch(r"[+-]?\d+", s) for s in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def read_class_file(path: Path | str) -> list[str]:
    """Return the classes listed one per line in `path` (blank lines ignored)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LabelkitError(f"Cannot read classes file {path}: {exc.strerror}.") from None
    classes = [line.strip() for line in lines if line.strip()]
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise LabelkitError(f"Classes file {path} lists {', '.join(dupes)} more than once.")
    if not classes:
        raise LabelkitError(f"Classes file {path} is empty.")
    return classes


def model_key(name: str) -> str:
    """Return `name` made safe as a file name (the embedding table's key)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


class Workspace:
    """A labelkit workspace folder and the files inside it."""

    def __init__(self, root: Path | str = DEFAULT_WORKSPACE):
        self.root = Path(root)

    # paths -----------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def items_path(self) -> Path:
        return self.root / "items.parquet"

    @property
    def probs_path(self) -> Path:
        return self.root / "probs.parquet"

    @property
    def issues_path(self) -> Path:
        return self.root / "issues.parquet"

    @property
    def relabels_path(self) -> Path:
        return self.root / "relabels.parquet"

    @property
    def soft_labels_path(self) -> Path:
        return self.root / "soft_labels.parquet"

    def label_version_path(self, name: str) -> Path:
        return self.root / "labels" / f"{model_key(name)}.parquet"

    def embeddings_path(self, key: str) -> Path:
        return self.root / "embeddings" / f"{model_key(key)}.parquet"

    def subset_path(self, name: str) -> Path:
        return self.root / "subsets" / f"{model_key(name)}.parquet"

    def model_dir(self, name: str) -> Path:
        return self.root / "models" / model_key(name)

    # manifest --------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.manifest_path.exists() and self.items_path.exists()

    def require(self) -> "Workspace":
        """Return self, or raise the user error for a workspace that has not been ingested."""
        if not self.exists():
            raise LabelkitError(
                f"No labelkit workspace at {self.root} (manifest.json or items.parquet missing); "
                "run `labelkit ingest DATA -w " f"{self.root}` first.")
        return self

    def read_manifest(self) -> dict:
        self.require()
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise LabelkitError(f"{self.manifest_path} is not valid JSON ({exc.msg}, line {exc.lineno}).") from None

    def write_manifest(self, manifest: dict) -> None:
        manifest["manifest_version"] = MANIFEST_VERSION
        manifest["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(manifest, self.manifest_path)

    def update_stage(self, stage: str, record: dict, *, warnings: list[str] | None = None) -> dict:
        """Store `record` under manifest['stages'][stage], replace that stage's warnings; return the manifest."""
        manifest = self.read_manifest()
        manifest.setdefault("stages", {})[stage] = record
        kept = [w for w in manifest.get("warnings", []) if w.get("stage") != stage]
        manifest["warnings"] = kept + [{"stage": stage, "message": m} for m in (warnings or [])]
        self.write_manifest(manifest)
        return manifest

    def classes(self) -> list[str]:
        return list(self.read_manifest()["classes"])

    # tables ----------------------------------------------------------------------------------
    def read_items(self, columns: list[str] | None = None):
        """Return items.parquet as a pandas DataFrame (all rows, unusable ones included)."""
        return self.read_items_table(columns).to_pandas()

    def read_items_table(self, columns: list[str] | None = None) -> pa.Table:
        """Return items.parquet as an Arrow table (all rows, unusable ones included)."""
        self.require()
        return pq.read_table(self.items_path, columns=columns)


def read_embeddings(path: Path | str) -> tuple[list[str], np.ndarray]:
    """Return (ids, float32 matrix of shape (n, d)) from an embeddings table."""
    table = pq.read_table(path, columns=["id", "embedding"])
    return table.column("id").to_pylist(), embedding_matrix(table.column("embedding"))


def read_probs(path: Path | str) -> tuple[list[str], np.ndarray]:
    """Return (ids, float32 matrix (n, n_classes)) from probs.parquet, without a Python loop."""
    table = pq.read_table(path, columns=["id", "pred_probs"])
    column = table.column("pred_probs").combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    n = table.num_rows
    return table.column("id").to_pylist(), values.reshape(n, -1) if n else values.reshape(0, 0)


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Return a fixed_size_list<float32> column as a float32 matrix without a Python loop."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    d = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, d)


def embedding_array(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """Return a float32 matrix as a fixed_size_list<float32>[d] Arrow array."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
