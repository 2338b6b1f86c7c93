"""`labelkit ingest`: read an image folder tree or a table into the workspace's items table.

Readers yield one plain dict per row and never hold decoded images, so memory stays flat with
the number of files. A row that cannot be used is kept, with `error` saying why; later stages
skip it.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from labelkit import __version__
from labelkit.errors import LabelkitError
from labelkit.workspace import ITEMS_SCHEMA, Workspace, read_class_file, sort_classes, write_table

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

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------------------------
# Per-file facts


def describe_image_file(path: Path) -> dict:
    """Return content hash, byte size, width/height and `error` of one image file.

    The header gives the size without decoding pixels; `verify()` walks PNG chunks and their
    CRCs, and a JPEG must end in its EOI marker, which together catch truncated files cheaply.
    """
    from PIL import Image, UnidentifiedImageError

    row = {"content_hash": None, "bytes": None, "width": None, "height": None, "error": None}
    try:
        data = path.read_bytes()
    except OSError as exc:
        row["error"] = f"unreadable file: {exc.strerror}"
        return row
    row["bytes"] = len(data)
    row["content_hash"] = hashlib.sha1(data).hexdigest()
    if not data:
        row["error"] = "empty file (0 bytes)"
        return row
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
    return row


def describe_text(text: str) -> dict:
    data = text.encode("utf-8")
    return {"content_hash": hashlib.sha1(data).hexdigest(), "bytes": len(data),
            "text_length": len(text), "error": None if text.strip() else "empty text"}


# ---------------------------------------------------------------------------------------------
# Image folders


def walk_files(root: Path) -> Iterator[Path]:
    """Yield files under `root` in sorted order, following symlinks but never around a loop."""
    seen: set[tuple[int, int]] = set()

    def visit(directory: Path) -> Iterator[Path]:
        try:
            st = directory.stat()
        except OSError:
            return
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    yield from visit(Path(entry.path))
                elif entry.is_file(follow_symlinks=True):
                    yield Path(entry.path)
            except OSError:  # broken link, permission
                continue

    yield from visit(root)


def read_image_folder(root: Path, *, workers: int = 4) -> Iterator[dict]:
    """Yield one item row per image file of `root/<class>/…` or `root/<split>/<class>/…`."""
    subdirs = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    split_layout = bool(subdirs) and all(s.lower() in SPLIT_NAMES for s in subdirs)

    def candidates() -> Iterator[tuple[Path, str, str | None]]:
        for path in walk_files(root):
            rel = path.relative_to(root)
            if path.suffix.lower() not in IMAGE_EXTENSIONS or len(rel.parts) < 2:
                continue
            if split_layout:
                if len(rel.parts) < 3:
                    continue
                yield path, rel.parts[1], rel.parts[0]
            else:
                yield path, rel.parts[0], None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for chunk in _chunks(candidates(), 256):
            for (path, label, split), facts in zip(chunk, pool.map(lambda c: describe_image_file(c[0]), chunk)):
                rel = path.relative_to(root).as_posix()
                yield {"id": rel, "source": rel, "modality": "image", "image_path": str(path.resolve()),
                       "label": label, "split": split, **facts}


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


def load_table(path: Path, *, encoding: str | None = None):
    """Return the table at `path` as a DataFrame of strings, or raise a one-line user error."""
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
            df = pd.read_parquet(path)
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


def _cell(value) -> str | None:
    """Return a table cell as a string, or None when it is missing (None, NaN, empty)."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    return text if text.strip() else None


def read_table_rows(path: Path, df, cols: dict[str, str | None], *, allow_outside_root: bool,
                    workers: int = 4) -> Iterator[dict]:
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
        return row | {"image_path": str(resolved), **describe_image_file(resolved)}

    records = df.to_dict("records")
    if image_col:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for chunk in _chunks(enumerate(records), 256):
                yield from pool.map(image_row, chunk)
    else:
        for i, rec in enumerate(records):
            text = _cell(rec[text_col]) if text_col else None
            row = base(i, rec) | {"modality": "text", "text": rec[text_col] if text is not None else None}
            yield row | (describe_text(text) if text is not None else {"error": "missing text"})


# ---------------------------------------------------------------------------------------------
# The verb


def ingest(source: Path | str, workspace: Workspace | Path | str = "labelkit-out", *,
           label_col: str | None = None, text_col: str | None = None, image_col: str | None = None,
           split_col: str | None = None, id_col: str | None = None, classes_file: Path | str | None = None,
           allow_outside_root: bool = False, encoding: str | None = None,
           progress: Progress | None = None) -> IngestResult:
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
        Accept table image paths that are absolute or climb out of the table's folder.
    encoding : str, optional
        Text encoding of a CSV/TSV/JSONL table (default UTF-8).
    progress : callable(done, total), optional
        Called as rows are read.
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    source = Path(source)
    if not source.exists():
        raise LabelkitError(f"{source}: no such file or folder.")
    if source.is_dir() and (ws.root.resolve() == source.resolve() or source.resolve() in ws.root.resolve().parents):
        raise LabelkitError(f"The workspace {ws.root} is inside the data folder {source}; "
                            "labelkit never writes into the data, so choose another -w.")

    cols: dict[str, str | None] = {}
    if source.is_dir():
        kind, modality = "image_folder", "image"
        rows: Iterable[dict] = read_image_folder(source)
        total = None
    else:
        df = load_table(source, encoding=encoding)
        if df.empty:
            raise LabelkitError(f"{source} has no rows.")
        columns = list(df.columns)
        cols["label"] = detect_column(columns, "label", label_col, source, required=True)
        cols["image"] = detect_column(columns, "image", image_col, source, required=False) if text_col is None else None
        cols["text"] = (detect_column(columns, "text", text_col, source, required=cols["image"] is None)
                        if cols["image"] is None else None)
        cols["split"] = detect_column(columns, "split", split_col, source, required=False)
        cols["id"] = detect_column(columns, "id", id_col, source, required=False)
        if cols["id"] is not None:
            ids = df[cols["id"]].map(_cell)
            dup = ids[ids.duplicated(keep=False) & ids.notna()]
            if len(dup):
                raise LabelkitError(f"Column {cols['id']!r} of {source} is not a unique id: "
                                    f"{dup.iloc[0]!r} appears {int((ids == dup.iloc[0]).sum())} times.")
        kind, modality = source.suffix.lower().lstrip("."), "image" if cols["image"] else "text"
        rows = read_table_rows(source, df, cols, allow_outside_root=allow_outside_root)
        total = len(df)

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
    if n == 0:
        raise LabelkitError(f"{source}: no images found (expected {source}/<class>/<image> "
                            f"with extensions {', '.join(sorted(IMAGE_EXTENSIONS))}).")

    errors, labels = columns_out["error"], columns_out["label"]
    usable_labels = [lab for lab, err in zip(labels, errors) if err is None]
    if not usable_labels:
        reasons = _count(e for e in errors if e)
        raise LabelkitError(f"{source}: no usable labelled rows ({n} rows; "
                            + ", ".join(f"{k}: {v}" for k, v in reasons.items()) + ").")
    if classes_file is not None:
        classes = read_class_file(classes_file)
        unknown = sorted(set(usable_labels) - set(classes))
        if unknown:
            raise LabelkitError(f"Labels {', '.join(map(repr, unknown[:5]))} in {source} are not listed in {classes_file}.")
    else:
        classes = sort_classes(usable_labels)
    index = {c: i for i, c in enumerate(classes)}
    columns_out["label_id"] = [index.get(lab, -1) if lab is not None else -1 for lab in labels]
    columns_out["modality"] = [modality] * n if kind != "image_folder" else columns_out["modality"]

    table = pa.Table.from_pydict(columns_out, schema=ITEMS_SCHEMA)
    ws.root.mkdir(parents=True, exist_ok=True)
    write_table(table, ws.items_path, row_group_size=65536)

    class_counts = {c: 0 for c in classes}
    for lab, err in zip(labels, errors):
        if err is None:
            class_counts[lab] += 1
    result = IngestResult(source=str(source.resolve()), kind=kind, rows=n, usable_rows=len(usable_labels),
                          classes=classes, class_counts=class_counts,
                          unusable_by_reason=_count(_reason(e) for e in errors if e),
                          columns=cols, modality=modality)
    # A new ingest starts a new workspace history: later stages' files describe old rows.
    manifest = {"labelkit_version": __version__, "source": {"path": result.source, "kind": kind, "columns": cols},
                "modality": modality, "classes": classes, "label_versions": {},
                "stages": {"ingest": result.to_dict()}, "warnings": []}
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
