"""`labelkit ingest`: read an image folder tree or a table into the workspace's items table.

Readers never hold decoded images, beyond the one thumbnail an image's properties are measured
on (:mod:`labelkit.properties`). Image folders are listed here and checked by a process pool
that returns Arrow batches; tables are read row by row as plain dicts, except a table of user
embeddings, which Arrow converts column-wise. A row that cannot be used is kept, with `error`
saying why; later stages skip it.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelkit import __version__
from labelkit.arrays import cell as _cell, cells as _cells
from labelkit.errors import LabelkitError
from labelkit.properties import PROPERTY_COLUMNS, image_properties_from_bytes
from labelkit.workspace import (ITEMS_SCHEMA, Workspace, embedding_array, model_key, read_class_file, sort_classes,
                                write_table)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TABLE_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                    ".parquet": "parquet", ".pq": "parquet"}
SPLIT_NAMES = {"train", "val", "valid", "validation", "test"}

# Column names recognised when the user names none, in order of preference.
COLUMN_CANDIDATES = {
    "label": ["label", "labels", "class", "class_name", "target", "category", "y"],
    "text": ["text", "sentence", "content", "review", "document", "body", "prompt"],
    "image": ["image_path", "image", "path", "filepath", "file", "filename", "img"],
    "split": ["split", "subset", "partition"],
    "id": ["id", "uid", "example_id", "item_id"],
}

Progress = Callable[[int, "int | None"], None]


@dataclass
class IngestResult:
    """What `ingest` did: the summary printed by the CLI and stored in the manifest."""

    source: str
    kind: str
    rows: int
    usable_rows: int
    classes: list[str]
    class_counts: dict[str, int]
    unusable_by_reason: dict[str, int]
    columns: dict[str, str | None] = field(default_factory=dict)
    modality: str = "image"
    embedding_key: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------------------------
# Per-file facts


def describe_image_file(path: Path | str, *, properties: bool = True) -> dict:
    """Return content hash, byte size, width/height, `error` and the image properties of one image file.

    The header gives the size without decoding pixels; `verify()` walks PNG chunks and their
    CRCs, and a JPEG must end in its EOI marker, which together catch truncated files cheaply.
    PNG and JPEG files that pass :func:`png_size` / :func:`jpeg_size` skip Pillow (its plugin
    probing costs more than reading and hashing a small file); anything they do not vouch for
    goes through Pillow, which also words the error. The content hash is the SHA-1 of the
    file's bytes (as since the first release). With `properties`, a sound image is also decoded
    once, at thumbnail size, for the ``prop_*`` columns (:func:`labelkit.properties.image_properties`).
    """
    row = {"content_hash": None, "bytes": None, "width": None, "height": None, "error": None,
           **dict.fromkeys(PROPERTY_COLUMNS)}
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        row["error"] = f"unreadable file: {exc.strerror}"
        return row
    row["bytes"] = len(data)
    row["content_hash"] = hashlib.sha1(data).hexdigest()
    if not data:
        row["error"] = "empty file (0 bytes)"
        return row
    size = png_size(data) if data[:8] == PNG_SIGNATURE else jpeg_size(data) if data[:2] == b"\xff\xd8" else None
    if size is not None:
        row["width"], row["height"] = size
        if properties:
            row.update(image_properties_from_bytes(data))
        return row
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            row["width"], row["height"] = im.size
            fmt = im.format
            im.verify()
        if fmt == "JPEG" and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
            row["error"] = "truncated image (JPEG end marker missing)"
    except UnidentifiedImageError:
        row["error"] = "not a readable image"
    except Exception as exc:  # Pillow raises many types for damaged files
        row["error"] = f"corrupt image ({type(exc).__name__}: {exc})"[:200]
    if properties and row["error"] is None:
        row.update(image_properties_from_bytes(data))
    return row


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Bit depths Pillow opens per PNG colour type (PNG spec, table 11.1).
PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# JPEG start-of-frame markers (hold the size); C4, C8 and CC are other segments.
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def png_size(data: bytes) -> tuple[int, int] | None:
    """Return (width, height) of a complete, well-formed PNG, or None when it is not one.

    Walks every chunk and checks its CRC up to IEND, as Pillow's `verify()` does, without
    decompressing pixel data. None means "ask Pillow", not "broken".
    """
    import struct
    import zlib

    end = len(data)
    if end < 45 or data[12:16] != b"IHDR" or data[8:12] != b"\x00\x00\x00\r":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if not width or not height or depth not in PNG_DEPTHS.get(colour, ()):
        return None
    pos = 8
    while pos + 12 <= end:
        length = int.from_bytes(data[pos:pos + 4], "big")
        stop = pos + 8 + length
        if stop + 4 > end:
            return None
        if zlib.crc32(data[pos + 4:stop]) != int.from_bytes(data[stop:stop + 4], "big"):
            return None
        if data[pos + 4:pos + 8] == b"IEND":
            return width, height
        pos = stop + 4
    return None


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Return (width, height) of a JPEG whose segments are sound up to its scan and that ends in EOI.

    Pillow reads no further than the start of scan when it opens a JPEG either. Only the common
    segments are vouched for (APPn, COM, DQT, DHT, DRI, an 8-bit SOF with 1, 3 or 4 components,
    then SOS); None means "ask Pillow".
    """
    if data[:3] != b"\xff\xd8\xff" or not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return None
    pos, end, size = 2, len(data), None
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        body = pos + 4
        pos += 2 + length
        if length < 2 or pos > end:
            return None
        if marker == 0xDA:
            return size
        if marker in JPEG_SOF:
            layers = data[body + 5] if length >= 8 else 0
            if size is not None or data[body] != 8 or layers not in (1, 3, 4) or length != 8 + 3 * layers:
                return None
            height, width = (data[body + 1] << 8) | data[body + 2], (data[body + 3] << 8) | data[body + 4]
            if not width or not height:
                return None
            size = (width, height)
        elif marker == 0xDB:  # quantisation tables: 64 entries of 1 or 2 bytes each
            at = body
            while at < pos:
                at += 1 + 64 * (2 if data[at] >> 4 else 1)
            if at != pos:
                return None
        elif not (0xE0 <= marker <= 0xEF or marker in (0xFE, 0xC4, 0xDD)):
            return None
    return None


def describe_text(text: str) -> dict:
    data = text.encode("utf-8")
    return {"content_hash": hashlib.sha1(data).hexdigest(), "bytes": len(data),
            "text_length": len(text), "error": None if text.strip() else "empty text"}


# ---------------------------------------------------------------------------------------------
# Image folders


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


FACT_COLUMNS = ("content_hash", "bytes", "width", "height", "error", *PROPERTY_COLUMNS)


def describe_image_files(paths: Sequence[str], *, properties: bool = True) -> dict[str, list]:
    """Return :func:`describe_image_file` of many files as columns (one task of the process pool).

    The common case (a sound PNG or JPEG) is inlined with raw `os.read`, which costs half of
    `open().read()` on small files; any other file takes :func:`describe_image_file`.
    """
    out = [[] for _ in FACT_COLUMNS]
    no_properties = (None,) * len(PROPERTY_COLUMNS)
    sha1 = hashlib.sha1
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                data = os.read(fd, 1 << 20)
                while len(data) and (more := os.read(fd, 1 << 20)):
                    data += more
            finally:
                os.close(fd)
        except OSError:
            data = b""
        size = png_size(data) if data[:8] == PNG_SIGNATURE else jpeg_size(data) if data[:2] == b"\xff\xd8" else None
        if size is not None:
            props = image_properties_from_bytes(data) if properties else None
            row = (sha1(data).hexdigest(), len(data), size[0], size[1], None,
                   *(tuple(props[k] for k in PROPERTY_COLUMNS) if props is not None else no_properties))
        else:
            facts = describe_image_file(path, properties=properties)
            row = tuple(facts[k] for k in FACT_COLUMNS)
        for column, value in zip(out, row):
            column.append(value)
    return dict(zip(FACT_COLUMNS, out))


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


def _chunks(iterable: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for x in iterable:
        chunk.append(x)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---------------------------------------------------------------------------------------------
# Tables


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


def read_table_rows(path: Path, df, cols: dict[str, str | None], *, allow_outside_root: bool,
                    workers: int = 4, map_fn=None, properties: bool = True) -> Iterator[dict]:
    """Yield one item row per table row; image paths resolve relative to the table's folder."""
    root = path.parent.resolve()
    label_col, text_col, image_col = cols["label"], cols["text"], cols["image"]
    split_col, id_col = cols["split"], cols["id"]

    def base(i: int, rec: dict) -> dict:
        row_id = _cell(rec[id_col]) if id_col else str(i)
        return {"id": row_id, "source": f"{path.name}:{i + 2 if path.suffix.lower() in ('.csv', '.tsv') else i + 1}",
                "label": _cell(rec[label_col]), "split": _cell(rec[split_col]) if split_col else None}

    def image_row(args: tuple[int, dict]) -> dict:
        i, rec = args
        row = base(i, rec) | {"modality": "image"}
        raw = _cell(rec[image_col])
        if raw is None:
            return row | {"error": "missing image path"}
        candidate = Path(raw)
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
        inside = resolved == root or root in resolved.parents
        if (candidate.is_absolute() or not inside) and not allow_outside_root:
            return row | {"image_path": str(resolved),
                          "error": f"image path outside the table's folder: {raw} (pass --allow-outside-root)"}
        if not resolved.is_file():
            return row | {"image_path": str(resolved), "error": f"image file not found: {raw}"}
        return row | {"image_path": str(resolved), **describe_image_file(resolved, properties=properties)}

    records = df.to_dict("records")
    if image_col and map_fn is not None:  # another engine (labelkit.engines) checks the files
        yield from map_fn(image_row, enumerate(records))
    elif image_col:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for chunk in _chunks(enumerate(records), 256):
                yield from pool.map(image_row, chunk)
    else:
        for i, rec in enumerate(records):
            text = _cell(rec[text_col]) if text_col else None
            row = base(i, rec) | {"modality": "text", "text": rec[text_col] if text is not None else None}
            yield row | (describe_text(text) if text is not None else {"error": "missing text"})


# ---------------------------------------------------------------------------------------------
# Embeddings the user brings


def pq_schema_names(path: Path) -> list[str]:
    """Return the column names of a Parquet file (read from its footer only)."""
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


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


# ---------------------------------------------------------------------------------------------
# The verb


def ingest(source: Path | str, workspace: Workspace | Path | str = "labelkit-out", *,
           label_col: str | None = None, text_col: str | None = None, image_col: str | None = None,
           split_col: str | None = None, id_col: str | None = None, classes_file: Path | str | None = None,
           allow_outside_root: bool = False, encoding: str | None = None,
           progress: Progress | None = None, engine: str = "local", ray_address: str | None = None,
           embedding_col: str | None = None, workers: int | None = None, task: str | None = None,
           labels_col: str | None = None, label_sep: str = ";", annotator_cols: list[str] | str | None = None,
           annotator_col: str | None = None, properties: bool = True) -> IngestResult:
    """Return the summary of reading `source` into `workspace` (items.parquet + manifest.json).

    Parameters
    ----------
    source : path
        An image folder (``SOURCE/<class>/<file>`` or ``SOURCE/<split>/<class>/<file>``) or a
        CSV / TSV / JSONL / Parquet table. Never written to.
    workspace : Workspace or path
        Output folder; created if missing. An earlier ingest there is replaced.
    label_col, text_col, image_col, split_col, id_col : str, optional
        Table columns; recognised names are used when omitted.
    classes_file : path, optional
        One class per line: fixes the class order (otherwise numeric, then alphabetical).
    allow_outside_root : bool
        Accept table image paths that are absolute or climb out of the table's folder, and
        image-folder symlinks that lead out of the folder.
    encoding : str, optional
        Text encoding of a CSV/TSV/JSONL table (default UTF-8).
    progress : callable(done, total), optional
        Called as rows are read.
    engine : {'local', 'ray'}
        Where files are hashed and checked; ``ray_address`` joins a cluster (see docs/ray.md).
    embedding_col : str, optional
        A table column holding each row's own embedding (Parquet list / fixed-size list of
        numbers, or a JSON array in CSV/JSONL). Stored as ``embeddings/user-<col>.parquet`` and
        recorded as the workspace's embed stage, so ``issues`` and ``audit`` need no ``embed``.
        A missing, ragged, non-numeric or non-finite embedding is an error naming its row.
    workers : int, optional
        Processes that read, hash and check an image folder's files (default: one per core;
        0: this process). Table image paths are checked on threads.
    task : {'multiclass', 'multilabel', 'multiannotator', 'regression'}, optional
        What the labels are (default: multiclass, or what the options below imply); tables only.
        See :mod:`labelkit.tasks`.
    labels_col, label_sep : str, optional
        Multi-label: a column holding a list of labels, or a string split by `label_sep`.
    annotator_cols, annotator_col : optional
        Multi-annotator: one column per annotator (wide), or an annotator column with one row
        per item and annotator (long, grouped by `id_col`).
    properties : bool
        Decode each image once, as a thumbnail, for the ``prop_*`` columns the image-properties
        check reads (dark, light, blurry, …; :mod:`labelkit.properties`). False skips the
        decode (ingest then reads only file headers) and leaves those columns null.
    """
    from labelkit.tasks import infer_task
    from labelkit.engines import check_engine, mapper

    map_fn = mapper(engine, ray_address=ray_address) if check_engine(engine, "ingest") != "local" else None
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    source = Path(source)
    if not source.exists():
        raise LabelkitError(f"{source}: no such file or folder.")
    if source.is_dir() and (ws.root.resolve() == source.resolve() or source.resolve() in ws.root.resolve().parents):
        raise LabelkitError(f"The workspace {ws.root} is inside the data folder {source}; "
                            "labelkit never writes into the data, so choose another -w.")

    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 0):
        raise LabelkitError(f"The 'workers' parameter of ingest must be an int in the range [0, inf). "
                            f"Got {workers!r} instead.")
    task = infer_task(task, labels_col=labels_col, annotator_cols=annotator_cols, annotator_col=annotator_col)
    if task != "multiclass" and source.is_dir():
        raise LabelkitError(f"--task {task} needs a table (CSV/TSV/JSONL/Parquet); {source} is an image folder, "
                            "which holds one label per image.")
    if embedding_col is not None and source.is_dir():
        raise LabelkitError(f"--embedding-col {embedding_col!r} needs a table (CSV/TSV/JSONL/Parquet); "
                            f"{source} is an image folder.")

    cols: dict[str, str | None] = {}
    task_spec = None
    batches: Iterable[pa.RecordBatch] | None = None
    user_embeddings = None
    if source.is_dir():
        kind, modality = "image_folder", "image"
        if map_fn is None:
            batches = read_image_folder_batches(source, workers=workers, allow_outside_root=allow_outside_root,
                                                properties=properties)
        else:
            rows: Iterable[dict] = read_image_folder(source, map_fn=map_fn, allow_outside_root=allow_outside_root,
                                                     properties=properties)
        total = None
    else:
        df = load_table(source, encoding=encoding, exclude=embedding_col)
        if df.empty:
            raise LabelkitError(f"{source} has no rows.")
        if task != "multiclass":  # the task turns its label columns into one display label (labelkit.tasks)
            from labelkit.tasks import prepare_table

            df, task_spec = prepare_table(df, source, task=task, options={
                "label_col": label_col, "labels_col": labels_col, "label_sep": label_sep, "id_col": id_col,
                "annotator_cols": annotator_cols, "annotator_col": annotator_col})
            label_col = task_spec.label_col
        columns = list(df.columns)
        cols["label"] = detect_column(columns, "label", label_col, source, required=True)
        cols["image"] = detect_column(columns, "image", image_col, source, required=False) if text_col is None else None
        cols["text"] = (detect_column(columns, "text", text_col, source,
                                      required=cols["image"] is None and embedding_col is None)
                        if cols["image"] is None else None)
        cols["split"] = detect_column(columns, "split", split_col, source, required=False)
        cols["id"] = detect_column(columns, "id", id_col, source, required=False)
        if cols["id"] is not None:
            # Column-wise: a million ids are checked without a Python object each.
            codes = pc.dictionary_encode(_cells(df[cols["id"]])).indices.fill_null(-1).to_numpy(zero_copy_only=False)
            counts = np.bincount(codes[codes >= 0]) if len(codes) else np.zeros(0, np.int64)
            repeated = np.flatnonzero((codes >= 0) & (counts[np.maximum(codes, 0)] > 1)) if len(counts) else []
            if len(repeated):
                first = int(repeated[0])
                raise LabelkitError(f"Column {cols['id']!r} of {source} is not a unique id: "
                                    f"{_cells(df[cols['id']])[first].as_py()!r} appears "
                                    f"{int(counts[codes[first]])} times.")
        if embedding_col is not None:
            cols["embedding"] = embedding_col
            user_embeddings = read_embedding_column(source, df, embedding_col, id_col=cols["id"])
        kind = source.suffix.lower().lstrip(".")
        modality = "image" if cols["image"] else ("text" if cols["text"] else "embedding")
        if modality == "embedding":  # rows are (id, label, split, vector): built column-wise
            batches = vector_items_table(source, df, cols, user_embeddings).to_batches()
        else:
            rows = read_table_rows(source, df, cols, allow_outside_root=allow_outside_root, map_fn=map_fn,
                                   properties=properties)
        total = len(df)

    if batches is not None:
        # Image folders arrive as Arrow batches from the worker pool, vector-only tables as one
        # Arrow table: no per-row Python objects.
        parts, n = [], 0
        for batch in batches:
            parts.append(batch)
            n += batch.num_rows
            if progress:
                progress(n, total)
        table = pa.Table.from_batches(parts, schema=ITEMS_SCHEMA)
    else:
        columns_out: dict[str, list] = {f.name: [] for f in ITEMS_SCHEMA}
        n = 0
        for row in rows:
            if row.get("error") is None and row.get("label") is None:
                row["error"] = "missing label"
            if row.get("id") is None:
                row["id"] = str(n)
                if row.get("error") is None:
                    row["error"] = "missing id"
            for name in columns_out:
                columns_out[name].append(row.get(name))
            n += 1
            if progress and n % 64 == 0:
                progress(n, total)
        if progress:
            progress(n, total)
        columns_out["modality"] = [modality] * n if kind != "image_folder" else columns_out["modality"]
        table = pa.Table.from_pydict(columns_out, schema=ITEMS_SCHEMA)
    if task_spec is not None:  # the task's own columns, and rows its labels make unusable
        for name, values in task_spec.columns.items():
            table = table.append_column(name, pa.array(values) if not isinstance(values, (pa.Array, pa.ChunkedArray))
                                        else values)
        if task_spec.errors is not None:
            table = table.set_column(table.schema.get_field_index("error"), "error",
                                     pc.coalesce(table.column("error"), pa.array(task_spec.errors, pa.string())))
    if n == 0:
        raise LabelkitError(f"{source}: no images found (expected {source}/<class>/<image> "
                            f"with extensions {', '.join(sorted(IMAGE_EXTENSIONS))}).")

    usable = table.column("error").is_null()
    usable_labels = table.column("label").filter(usable)
    errors = table.column("error").drop_null().to_pylist()
    if not len(usable_labels):
        # Counted by reason without the row-specific tail, so the message stays one short line;
        # the first row's own message shows an example.
        reasons = _count(_reason(e) for e in errors)
        raise LabelkitError(f"{source}: no usable labelled rows ({n} rows; "
                            + ", ".join(f"{k}: {v}" for k, v in list(reasons.items())[:5])
                            + (f"; first: {errors[0]}" if errors and errors[0] != _reason(errors[0]) else "") + ").")
    distinct = pc.unique(usable_labels).to_pylist()
    if task_spec is not None and task_spec.classes is not None:
        classes = task_spec.classes
    elif classes_file is not None:
        classes = read_class_file(classes_file)
        unknown = sorted(set(distinct) - set(classes))
        if unknown:
            raise LabelkitError(f"Labels {', '.join(map(repr, unknown[:5]))} in {source} are not listed in {classes_file}.")
    else:
        classes = sort_classes(distinct)
    label_id = pc.fill_null(pc.index_in(table.column("label"), value_set=pa.array(classes, pa.string())), -1)
    table = table.set_column(ITEMS_SCHEMA.get_field_index("label_id"), ITEMS_SCHEMA.field("label_id"),
                             label_id.cast(pa.int32()))
    ws.root.mkdir(parents=True, exist_ok=True)
    write_table(table, ws.items_path, row_group_size=65536)
    embed_record = (write_user_embeddings(ws, table, user_embeddings, embedding_col, usable)
                    if user_embeddings is not None else None)

    counted = {d["values"]: d["counts"] for d in pc.value_counts(usable_labels).to_pylist()}
    class_counts = {c: int(counted.get(c, 0)) for c in classes}
    result = IngestResult(source=str(source.resolve()), kind=kind, rows=n, usable_rows=len(usable_labels),
                          classes=classes, class_counts=class_counts,
                          unusable_by_reason=_count(_reason(e) for e in errors),
                          columns=cols, modality=modality,
                          embedding_key=embed_record["embedding_key"] if embed_record else None)
    # A new ingest starts a new workspace history: later stages' files describe old rows, and
    # their readers refuse them by the items fingerprint. The held-out split is fixed here, once.
    from labelkit.splits import write_heldout
    from labelkit.workspace import items_fingerprint

    manifest = {"labelkit_version": __version__, "source": {"path": result.source, "kind": kind, "columns": cols},
                "modality": modality, "classes": classes, "label_versions": {},
                "items_fingerprint": items_fingerprint(table), "heldout": write_heldout(ws, table),
                "stages": {"ingest": result.to_dict()}, "warnings": [], "task": task,
                **(task_spec.manifest if task_spec is not None else {})}
    if embed_record is not None:  # the user's vectors are this workspace's embed stage
        manifest["stages"]["embed"] = embed_record
    ws.write_manifest(manifest)
    return result


def _reason(error: str) -> str:
    """Return an error message without its row-specific tail, for counting by reason."""
    return error.split(" (")[0].split(":")[0]


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
