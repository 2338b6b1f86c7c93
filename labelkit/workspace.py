"""The workspace folder: paths, the JSON manifest, atomic Parquet I/O and class order.

Every file labelkit writes goes through :func:`atomic_path`, so a killed run leaves either the
previous good file or the new complete one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from labelkit.errors import LabelkitError, parameter_error

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
    # Image properties measured at ingest on a thumbnail (labelkit.properties); null for text rows.
    ("prop_brightness", pa.float32()),
    ("prop_brightness_p5", pa.float32()),
    ("prop_brightness_p99", pa.float32()),
    ("prop_entropy", pa.float32()),
    ("prop_blurriness", pa.float32()),
    ("prop_blurriness_grayscale_std", pa.float32()),
    ("prop_grayscale", pa.float32()),
    ("prop_sharpness", pa.float32()),
])


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _new_temp_file(path: Path) -> Path:
    """Return a new empty file beside `path`, created with the umask's usual mode (0666 & ~umask)."""
    # Not mkstemp: it creates 0600, and the rename would hand that mode to every output. Passing
    # 0o666 to open(2) lets the kernel apply the umask, as any ordinary file creation does.
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


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


def versions() -> dict:
    """Return the installed versions of labelkit and the libraries a trained model depends on (model cards)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("labelkit", "torch", "scikit-learn", "cleanlab", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(name: str, what: str, *, param: str = "name") -> str:
    """Return `name` if it can name a file or folder inside ``subsets/`` or ``models/``, else raise.

    Unlike :func:`model_key`, nothing is rewritten: ``a/b`` silently becoming ``a_b`` would write
    where the user will not look. The leading letter or digit rules out ``.``, ``..`` and hidden
    names; the character set rules out separators, so no name can leave its folder.

    Parameters
    ----------
    name : str
        The user's name, e.g. ``--name`` of ``select`` or ``train``.
    what : str
        The function the name was given to, for the message.
    param : str, default="name"
        The parameter's name, for the message.

    Raises
    ------
    LabelkitError
        Exit code 2, in scikit-learn's message shape, naming `param` and `what`.
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise parameter_error(param, what, "a str of at most 128 letters, digits, '.', '_' or '-' that starts "
                              "with a letter or digit", name)
    return name


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
        return self.root / "subsets" / f"{check_name(name, 'subset_path')}.parquet"

    def model_dir(self, name: str) -> Path:
        return self.root / "models" / check_name(name, "model_dir")

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


# ---------------------------------------------------------------------------------------------
# Fingerprints: which data a derived table was computed from
#
# Every derived table (probs, issues, subsets, relabels, label versions, model cards) records the
# fingerprint of the items it was computed from, in its Parquet footer and in its manifest record.
# A reader compares it with the workspace's current items, so a re-ingest never lets an old table
# describe new rows.

ITEMS_FINGERPRINT_KEY = b"labelkit.items_fingerprint"
FINGERPRINT_KEY = b"labelkit.fingerprint"
FINGERPRINT_COLUMNS = ("id", "content_hash", "label", "label_id", "error")


def _hash_array(h, array: pa.Array) -> None:
    """Feed `array`'s values and validity into hash `h` without a per-row Python loop."""
    array = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
    h.update(str(array.type).encode())
    h.update(np.asarray(array.is_null().to_numpy(zero_copy_only=False), np.uint8).tobytes())
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        # Offsets are rebased so a sliced array hashes like a fresh one; null slots hash as empty.
        array = array.fill_null("")
        offsets = np.frombuffer(array.buffers()[1], np.int64 if pa.types.is_large_string(array.type) else np.int32,
                                count=len(array) + 1, offset=array.offset * (8 if pa.types.is_large_string(array.type) else 4))
        start, stop = int(offsets[0]), int(offsets[-1])
        h.update((offsets - offsets[0]).astype(np.int64).tobytes())
        data = array.buffers()[2]
        h.update(memoryview(data)[start:stop] if data is not None else b"")
    else:
        h.update(np.ascontiguousarray(array.fill_null(0).to_numpy(zero_copy_only=False)).tobytes())


def items_fingerprint(items: pa.Table) -> str:
    """Return a hex digest of the items' ids, content hashes, labels and usability.

    Hashes the Arrow buffers column by column (about 0.1 s per million rows), so any change of
    row order, content, label or error gives a different fingerprint.
    """
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    h.update(str(items.num_rows).encode())
    for name in FINGERPRINT_COLUMNS:
        if name in items.column_names:
            h.update(name.encode())
            _hash_array(h, items.column(name))
    return h.hexdigest()


def fingerprint(*parts) -> str:
    """Return a hex digest of JSON-serialisable `parts` (an input fingerprint plus options)."""
    import hashlib

    text = json.dumps(parts, sort_keys=True, default=_json_default)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def current_items_fingerprint(ws: "Workspace") -> str:
    """Return the fingerprint of the workspace's items (stored at ingest; computed for older workspaces)."""
    stored = ws.read_manifest().get("items_fingerprint")
    return stored if stored else items_fingerprint(ws.read_items_table(list(FINGERPRINT_COLUMNS)))


def with_fingerprint(table: pa.Table, items_fp: str, fp: str | None = None) -> pa.Table:
    """Return `table` with the items fingerprint (and an input fingerprint) in its schema metadata."""
    meta = dict(table.schema.metadata or {})
    meta[ITEMS_FINGERPRINT_KEY] = items_fp.encode()
    if fp is not None:
        meta[FINGERPRINT_KEY] = fp.encode()
    return table.replace_schema_metadata(meta)


def write_issues_table(ws: "Workspace", columns: dict, items_fp: str, options_fp: str | None, *,
                       use_dictionary: list[str] | bool = ("given_label", "suggested_label")) -> Path:
    """Write ``issues.parquet`` from per-row `columns` (Arrow arrays or anything ``pa.array`` takes).

    The table carries the items and options fingerprints, row groups of 65536 rows, statistics for
    ``id`` only, and dictionary pages for `use_dictionary` (the repeated label columns by default).
    """
    table = pa.table({name: values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
                      for name, values in columns.items()})
    return write_table(with_fingerprint(table, items_fp, options_fp), ws.issues_path, row_group_size=65536,
                       use_dictionary=list(use_dictionary) if isinstance(use_dictionary, tuple) else use_dictionary,
                       write_statistics=["id"])


HELDOUT_FINGERPRINT_KEY = b"labelkit.heldout_fingerprint"  # which held-out split the probabilities respect


def build_probs_table(ids, probs: np.ndarray, folds: np.ndarray, origin: str, *, items_fp: str, options_fp: str,
                      heldout_fp: str) -> pa.Table:
    """Return the ``probs.parquet`` table: id, pred_probs (float32 lists), fold, origin, fingerprints.

    `heldout_fp` (the held-out ids' fingerprint, see labelkit.splits) goes into the footer, so
    ``train`` can refuse probabilities computed with another split.
    """
    K = probs.shape[1]
    table = with_fingerprint(pa.table({
        "id": ids,
        "pred_probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.astype(np.float32, copy=False).reshape(-1)),
                                                        K).cast(pa.list_(pa.float32())),
        "fold": pa.array(folds, pa.int16()),
        "origin": pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(ids), np.int8)), pa.array([origin])),
    }), items_fp, options_fp)
    return table.replace_schema_metadata(table.schema.metadata | {HELDOUT_FINGERPRINT_KEY: heldout_fp.encode()})


def read_fingerprints(path: Path | str) -> tuple[str | None, str | None]:
    """Return (items fingerprint, input fingerprint) stored in a Parquet file's footer (None if absent)."""
    meta = pq.read_schema(path).metadata or {}
    get = lambda k: meta[k].decode() if k in meta else None
    return get(ITEMS_FINGERPRINT_KEY), get(FINGERPRINT_KEY)


def stale_message(ws: "Workspace", path: Path | str, rerun: str = "issues") -> str:
    """Return the one-line error for a table computed from other data than the current items."""
    return f"{path} was computed from different data; run `labelkit {rerun} -w {ws.root}` again."


def require_current(ws: "Workspace", path: Path | str, *, rerun: str = "issues", items_fp: str | None = None) -> None:
    """Raise the user error unless the Parquet file at `path` was computed from the current items."""
    if not Path(path).exists():
        raise LabelkitError(f"{path} is missing; run `labelkit {rerun} -w {ws.root}` again.")
    stored, _ = read_fingerprints(path)
    if stored is None or stored != (items_fp or current_items_fingerprint(ws)):
        raise LabelkitError(stale_message(ws, path, rerun))


def is_current(ws: "Workspace", path: Path | str, *, items_fp: str | None = None) -> bool:
    """Return whether the Parquet file at `path` exists and was computed from the current items."""
    if not Path(path).exists():
        return False
    stored, _ = read_fingerprints(path)
    return stored is not None and stored == (items_fp or current_items_fingerprint(ws))


def require_current_embeddings(ws: "Workspace", key: str, ids: pa.Array, content_hash: pa.Array) -> None:
    """Raise the user error when an embedding table's content hashes differ from the items' for `ids`.

    `embed` stores each row's content hash beside its vector; a table whose rows were embedded from
    other content (an earlier ingest that reused the same ids) must not be read as this data's.
    """
    import pyarrow.compute as pc

    path = ws.embeddings_path(key)
    if "content_hash" not in pq.read_schema(path).names:
        return  # written before content hashes were stored; ids are all there is to check
    table = pq.read_table(path, columns=["id", "content_hash"])
    row = pc.index_in(ids, value_set=table.column("id").combine_chunks())
    stored = table.column("content_hash").combine_chunks().take(row)
    differs = pc.fill_null(pc.not_equal(stored, content_hash), False)
    if pc.any(differs).as_py():
        first = ids[int(np.flatnonzero(differs.to_numpy(zero_copy_only=False))[0])].as_py()
        raise LabelkitError(f"{path} was computed from different data (row {first!r} has changed since it was "
                            f"embedded); run `labelkit embed -w {ws.root}` again.")
