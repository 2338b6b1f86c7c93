"""`labelkit ingest`: read an image folder tree or a table into the workspace's items table.

The readers live in :mod:`labelkit.readers` (image files and folders, table rows, a table's own
embeddings) and :mod:`labelkit.tables` (loading a table, finding its columns). This module checks
the options, collects the rows into one Arrow table, fixes the class order and writes
items.parquet and the manifest. A row that cannot be used is kept, with `error` saying why; later
stages skip it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelkit import __version__
from labelkit.errors import LabelkitError
from labelkit.readers.embedding_column import (read_embedding_column, vector_hashes,  # noqa: F401  (re-exported)
                                               vector_items_table, write_user_embeddings)
from labelkit.readers.image_files import (FACT_COLUMNS, JPEG_SOF, PNG_DEPTHS, PNG_SIGNATURE,  # noqa: F401  (re-exported)
                                          describe_image_file, describe_image_files, jpeg_size, png_size)
from labelkit.readers.image_folder import (IMAGE_EXTENSIONS, SPLIT_NAMES, available_cores,  # noqa: F401  (re-exported)
                                           list_image_files, read_image_folder, read_image_folder_batches, walk_files)
from labelkit.readers.table_rows import describe_text, read_table_rows  # noqa: F401  (re-exported)
from labelkit.tables import (COLUMN_CANDIDATES, TABLE_EXTENSIONS, check_unique_ids, detect_column,  # noqa: F401
                             load_table, pq_schema_names)
from labelkit.workspace import ITEMS_SCHEMA, Workspace, read_class_file, sort_classes, write_table

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


@dataclass
class _Source:
    """What a reader made of the source: rows (dicts) or Arrow batches, and how to read them."""

    kind: str  # image_folder, csv, tsv, jsonl, parquet
    modality: str
    total: int | None  # rows expected (None: an image folder, listed as it goes)
    cols: dict[str, str | None] = field(default_factory=dict)
    batches: Iterable[pa.RecordBatch] | None = None
    rows: Iterable[dict] | None = None
    task_spec: Any = None  # labelkit.tasks' TaskSpec of a non-multiclass table
    user_embeddings: np.ndarray | None = None


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
        A table column holding each row's own embedding, stored as ``embeddings/user-<col>.parquet``
        and recorded as the embed stage (:mod:`labelkit.readers.embedding_column`).
    workers : int, optional
        Processes checking an image folder's files (default: one per core; 0: this process).
    task : {'multiclass', 'multilabel', 'multiannotator', 'regression'}, optional
        What the labels are (default: multiclass, or what the options below imply); tables only.
    labels_col, label_sep : str, optional
        Multi-label: a column holding a list of labels, or a string split by `label_sep`.
    annotator_cols, annotator_col : optional
        Multi-annotator: a column per annotator (wide), or an annotator column (long, by `id_col`).
    properties : bool
        Decode each image once, as a thumbnail, for the ``prop_*`` columns (:mod:`labelkit.properties`);
        False reads only file headers and leaves them null.
    """
    from labelkit.tasks import infer_task

    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    source, map_fn = Path(source), _engine_map(engine, ray_address)
    _check_source(source, ws, workers)
    task = infer_task(task, labels_col=labels_col, annotator_cols=annotator_cols, annotator_col=annotator_col)
    _check_task_source(source, task, embedding_col)
    table_options = {"label_col": label_col, "text_col": text_col, "image_col": image_col, "split_col": split_col,
                     "id_col": id_col, "labels_col": labels_col, "label_sep": label_sep, "encoding": encoding,
                     "annotator_cols": annotator_cols, "annotator_col": annotator_col}
    read = (_read_folder(source, map_fn=map_fn, workers=workers, allow_outside_root=allow_outside_root,
                         properties=properties) if source.is_dir() else
            _read_table(source, table_options, task=task, embedding_col=embedding_col, map_fn=map_fn,
                        allow_outside_root=allow_outside_root, properties=properties))
    return _store(ws, source, read, progress, task=task, classes_file=classes_file, embedding_col=embedding_col)


def _engine_map(engine: str, ray_address: str | None):
    """Return the map function of a non-local `engine` (None: the local readers)."""
    from labelkit.engines import check_engine, mapper

    return mapper(engine, ray_address=ray_address) if check_engine(engine, "ingest") != "local" else None


def _store(ws: Workspace, source: Path, read: "_Source", progress: Progress | None, *, task: str,
           classes_file: Path | str | None, embedding_col: str | None) -> IngestResult:
    """Return the ingest summary after writing the items table, the user's embeddings and the manifest."""
    table, n = _collect(read, progress)
    table = _with_task_columns(table, read.task_spec)
    if n == 0:
        raise LabelkitError(f"{source}: no images found (expected {source}/<class>/<image> "
                            f"with extensions {', '.join(sorted(IMAGE_EXTENSIONS))}).")
    usable = table.column("error").is_null()
    usable_labels = table.column("label").filter(usable)
    errors = table.column("error").drop_null().to_pylist()
    if not len(usable_labels):
        raise LabelkitError(_no_usable_rows(source, n, errors))
    classes = _classes(pc.unique(usable_labels).to_pylist(), source, read.task_spec, classes_file)
    label_id = pc.fill_null(pc.index_in(table.column("label"), value_set=pa.array(classes, pa.string())), -1)
    table = table.set_column(ITEMS_SCHEMA.get_field_index("label_id"), ITEMS_SCHEMA.field("label_id"),
                             label_id.cast(pa.int32()))
    ws.root.mkdir(parents=True, exist_ok=True)
    write_table(table, ws.items_path, row_group_size=65536)
    embed_record = (write_user_embeddings(ws, table, read.user_embeddings, embedding_col, usable)
                    if read.user_embeddings is not None else None)

    counted = {d["values"]: d["counts"] for d in pc.value_counts(usable_labels).to_pylist()}
    result = IngestResult(source=str(source.resolve()), kind=read.kind, rows=n, usable_rows=len(usable_labels),
                          classes=classes, class_counts={c: int(counted.get(c, 0)) for c in classes},
                          unusable_by_reason=_count(_reason(e) for e in errors),
                          columns=read.cols, modality=read.modality,
                          embedding_key=embed_record["embedding_key"] if embed_record else None)
    _write_manifest(ws, table, result, task=task, task_spec=read.task_spec, embed_record=embed_record)
    return result


def _check_source(source: Path, ws: Workspace, workers) -> None:
    """Raise for a missing source, a workspace inside the data folder, or a bad `workers`."""
    if not source.exists():
        raise LabelkitError(f"{source}: no such file or folder.")
    if source.is_dir() and (ws.root.resolve() == source.resolve() or source.resolve() in ws.root.resolve().parents):
        raise LabelkitError(f"The workspace {ws.root} is inside the data folder {source}; "
                            "labelkit never writes into the data, so choose another -w.")
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 0):
        raise LabelkitError(f"The 'workers' parameter of ingest must be an int in the range [0, inf). "
                            f"Got {workers!r} instead.")


def _check_task_source(source: Path, task: str, embedding_col: str | None) -> None:
    """Raise when the task or an embedding column needs a table and `source` is an image folder."""
    if task != "multiclass" and source.is_dir():
        raise LabelkitError(f"--task {task} needs a table (CSV/TSV/JSONL/Parquet); {source} is an image folder, "
                            "which holds one label per image.")
    if embedding_col is not None and source.is_dir():
        raise LabelkitError(f"--embedding-col {embedding_col!r} needs a table (CSV/TSV/JSONL/Parquet); "
                            f"{source} is an image folder.")


def _read_folder(source: Path, *, map_fn, workers: int | None, allow_outside_root: bool,
                 properties: bool) -> _Source:
    """Return the reader of an image folder: the local process pool, or rows checked by another engine."""
    read = _Source(kind="image_folder", modality="image", total=None)
    if map_fn is None:
        read.batches = read_image_folder_batches(source, workers=workers, allow_outside_root=allow_outside_root,
                                                 properties=properties)
    else:
        read.rows = read_image_folder(source, map_fn=map_fn, allow_outside_root=allow_outside_root,
                                      properties=properties)
    return read


def _read_table(source: Path, options: dict, *, task: str, embedding_col: str | None, map_fn,
                allow_outside_root: bool, properties: bool) -> _Source:
    """Return the reader of a table: its columns found, its ids checked, its task's labels prepared."""
    df = load_table(source, encoding=options["encoding"], exclude=embedding_col)
    if df.empty:
        raise LabelkitError(f"{source} has no rows.")
    task_spec = None
    given = {role: options[f"{role}_col"] for role in ("label", "text", "image", "split", "id")}
    if task != "multiclass":  # the task turns its label columns into one display label (labelkit.tasks)
        from labelkit.tasks import prepare_table

        df, task_spec = prepare_table(df, source, task=task, options={
            k: options[k] for k in ("label_col", "labels_col", "label_sep", "id_col", "annotator_cols", "annotator_col")})
        given["label"] = task_spec.label_col
    cols = _table_columns(list(df.columns), given, source, embedding_col)
    if cols["id"] is not None:
        check_unique_ids(df, cols["id"], source)
    read = _Source(kind=source.suffix.lower().lstrip("."), modality="", total=len(df), cols=cols, task_spec=task_spec)
    if embedding_col is not None:
        cols["embedding"] = embedding_col
        read.user_embeddings = read_embedding_column(source, df, embedding_col, id_col=cols["id"])
    read.modality = "image" if cols["image"] else ("text" if cols["text"] else "embedding")
    if read.modality == "embedding":  # rows are (id, label, split, vector): built column-wise
        read.batches = vector_items_table(source, df, cols, read.user_embeddings).to_batches()
    else:
        read.rows = read_table_rows(source, df, cols, allow_outside_root=allow_outside_root, map_fn=map_fn,
                                    properties=properties)
    return read


def _table_columns(columns: list[str], given: dict[str, str | None], source: Path,
                   embedding_col: str | None) -> dict[str, str | None]:
    """Return the table's label, image, text, split and id columns (given, or recognised by name)."""
    cols: dict[str, str | None] = {}
    cols["label"] = detect_column(columns, "label", given["label"], source, required=True)
    cols["image"] = (detect_column(columns, "image", given["image"], source, required=False)
                     if given["text"] is None else None)
    cols["text"] = (detect_column(columns, "text", given["text"], source,
                                  required=cols["image"] is None and embedding_col is None)
                    if cols["image"] is None else None)
    cols["split"] = detect_column(columns, "split", given["split"], source, required=False)
    cols["id"] = detect_column(columns, "id", given["id"], source, required=False)
    return cols


def _collect(read: _Source, progress: Progress | None) -> tuple[pa.Table, int]:
    """Return the items table of everything `read` yields, and its row count."""
    if read.batches is None:
        return _collect_rows(read, progress)
    # Image folders arrive as Arrow batches from the worker pool, vector-only tables as one
    # Arrow table: no per-row Python objects.
    parts, n = [], 0
    for batch in read.batches:
        parts.append(batch)
        n += batch.num_rows
        if progress:
            progress(n, read.total)
    return pa.Table.from_batches(parts, schema=ITEMS_SCHEMA), n


def _collect_rows(read: _Source, progress: Progress | None) -> tuple[pa.Table, int]:
    """Return the items table of row dicts (tables, or an image folder checked by another engine)."""
    columns_out: dict[str, list] = {f.name: [] for f in ITEMS_SCHEMA}
    n = 0
    for row in read.rows:
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
            progress(n, read.total)
    if progress:
        progress(n, read.total)
    columns_out["modality"] = [read.modality] * n if read.kind != "image_folder" else columns_out["modality"]
    return pa.Table.from_pydict(columns_out, schema=ITEMS_SCHEMA), n


def _with_task_columns(table: pa.Table, task_spec) -> pa.Table:
    """Return `table` with the task's own columns, and the rows its labels make unusable marked."""
    if task_spec is None:
        return table
    for name, values in task_spec.columns.items():
        table = table.append_column(name, pa.array(values) if not isinstance(values, (pa.Array, pa.ChunkedArray))
                                    else values)
    if task_spec.errors is not None:
        table = table.set_column(table.schema.get_field_index("error"), "error",
                                 pc.coalesce(table.column("error"), pa.array(task_spec.errors, pa.string())))
    return table


def _no_usable_rows(source: Path, n: int, errors: list[str]) -> str:
    """Return the one-line error for a source without a usable labelled row."""
    # Counted by reason without the row-specific tail, so the message stays one short line;
    # the first row's own message shows an example.
    reasons = _count(_reason(e) for e in errors)
    return (f"{source}: no usable labelled rows ({n} rows; "
            + ", ".join(f"{k}: {v}" for k, v in list(reasons.items())[:5])
            + (f"; first: {errors[0]}" if errors and errors[0] != _reason(errors[0]) else "") + ").")


def _classes(distinct: list[str], source: Path, task_spec, classes_file: Path | str | None) -> list[str]:
    """Return the class order: the task's, the classes file's (which must list every label), or sorted."""
    if task_spec is not None and task_spec.classes is not None:
        return task_spec.classes
    if classes_file is not None:
        classes = read_class_file(classes_file)
        unknown = sorted(set(distinct) - set(classes))
        if unknown:
            raise LabelkitError(f"Labels {', '.join(map(repr, unknown[:5]))} in {source} are not listed in {classes_file}.")
        return classes
    return sort_classes(distinct)


def _write_manifest(ws: Workspace, table: pa.Table, result: IngestResult, *, task: str, task_spec,
                    embed_record: dict | None) -> None:
    """Write the manifest of a new ingest (a new workspace history; the held-out split is fixed here)."""
    # A new ingest starts a new workspace history: later stages' files describe old rows, and
    # their readers refuse them by the items fingerprint. The held-out split is fixed here, once.
    from labelkit.splits import write_heldout
    from labelkit.workspace import items_fingerprint

    manifest = {"labelkit_version": __version__,
                "source": {"path": result.source, "kind": result.kind, "columns": result.columns},
                "modality": result.modality, "classes": result.classes, "label_versions": {},
                "items_fingerprint": items_fingerprint(table), "heldout": write_heldout(ws, table),
                "stages": {"ingest": result.to_dict()}, "warnings": [], "task": task,
                **(task_spec.manifest if task_spec is not None else {})}
    if embed_record is not None:  # the user's vectors are this workspace's embed stage
        manifest["stages"]["embed"] = embed_record
    ws.write_manifest(manifest)


def _reason(error: str) -> str:
    """Return an error message without its row-specific tail, for counting by reason."""
    return error.split(" (")[0].split(":")[0]


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
