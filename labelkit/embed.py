"""`labelkit embed`: image/text embeddings (open_clip, MiniLM, pixel baseline), cached and resumable.

Embeddings are written in chunks to ``embeddings/<key>.parts/`` (each chunk atomically) and then
consolidated into ``embeddings/<key>.parquet``. A killed run loses at most the chunk in flight;
a rerun embeds only rows whose (id, content_hash) is not stored yet. The featurizers live in
:mod:`labelkit.embedders`; this module picks one by name and runs it.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from labelkit.embedders.base import (MINILM, PIXEL_SIZE, PIXELS, Featurizer, Progress,  # noqa: F401  (public API)
                                     decode_error, open_rgb)
from labelkit.embedders.clip import ImageFiles, OpenCLIPFeaturizer, image_batches  # noqa: F401  (public API)
from labelkit.embedders.minilm import MiniLMFeaturizer
from labelkit.embedders.pixels import PixelFeaturizer, threaded_batches  # noqa: F401  (public API)
from labelkit.embedders.weights import check_clip_options, fetch_clip_weights, offline_reason  # noqa: F401
from labelkit.errors import LabelkitError
from labelkit.features import (DEFAULT_NEAR_DUPLICATE_THRESHOLD, NEAR_DUPLICATE_THRESHOLD,  # noqa: F401  (public API)
                               check_device, embed_errors_path, load_workspace_embeddings,
                               resolve_device)
from labelkit.workspace import Workspace, embedding_array, write_table

DEFAULT_CLIP = ("ViT-B-32", "laion2b_s34b_b79k")


# ---------------------------------------------------------------------------------------------
# Choosing a featurizer


def load_featurizer(model: str = "auto", pretrained: str | None = None, *, device: str = "auto",
                    modality: str = "image", offline: bool = False, progress: Progress | None = None) -> Featurizer:
    """Return the featurizer for `model`; 'auto' is MiniLM for text and CLIP-or-pixels for images.

    'auto' on images downloads the default CLIP weights when they are not cached (`progress`
    gets the bytes). Only that default falls back, when its weights cannot be had (offline,
    unreachable hub, damaged cache), to the pixel baseline, with a loud `warning` that says what
    was tried and why it failed; never to random CLIP features. A model or weights the user
    names (`model`, `pretrained`) load or raise :class:`LabelkitError` with the reason.
    """
    if model == PIXELS or model.startswith(PIXELS + "-"):
        check_device(device)  # pixels run on the CPU whatever the device; asking torch would cost 2 s
        return PixelFeaturizer(_pixel_size(model))
    device = resolve_device(device)
    if model == "auto":
        if modality == "text":
            return MiniLMFeaturizer(device)
        if pretrained is not None:  # the user's own weights: they load, or the run stops
            return OpenCLIPFeaturizer(DEFAULT_CLIP[0], pretrained, device, offline=offline, progress=progress)
        try:
            return OpenCLIPFeaturizer(*DEFAULT_CLIP, device, offline=offline, progress=progress)
        except LabelkitError as exc:
            f = PixelFeaturizer()
            hint = ("run once with network access (without --offline / HF_HUB_OFFLINE=1) to download them"
                    if offline_reason(offline) else "fix the connection and run again")
            f.warning = (f"PIXEL BASELINE: images are embedded as {PIXEL_SIZE}x{PIXEL_SIZE} pixels because the default "
                         f"CLIP weights ({DEFAULT_CLIP[0]} / {DEFAULT_CLIP[1]}) did not load. {exc} Label-error "
                         f"detection on pixels is far weaker than on CLIP features; {hint}, or pass --model "
                         f"{DEFAULT_CLIP[0]} --pretrained /path/to/checkpoint.pt.")
            return f
    if model in (MINILM, "minilm", "all-MiniLM-L6-v2"):
        return MiniLMFeaturizer(device)
    return OpenCLIPFeaturizer(model, pretrained, device, offline=offline, progress=progress)


def check_featurizer_options(model: str = "auto", pretrained: str | None = None) -> None:
    """Raise :class:`LabelkitError` for a `model` / `pretrained` that cannot name a featurizer; load nothing."""
    if model == "auto" and pretrained is None or model in (MINILM, "minilm", "all-MiniLM-L6-v2"):
        return
    if model == PIXELS or model.startswith(PIXELS + "-"):
        _pixel_size(model)
        return
    check_clip_options(DEFAULT_CLIP[0] if model == "auto" else model, pretrained)


def _pixel_size(model: str) -> int:
    """Return N of a ``pixels-N`` model name (16 for ``pixels``), or raise for a bad one."""
    size = str(PIXEL_SIZE) if model == PIXELS else model[len(PIXELS) + 1:]
    if not size.isdigit() or not 1 <= int(size) <= 256:
        raise LabelkitError(f"The 'model' parameter of embed must be pixels or pixels-N with N an int in the "
                            f"range [1, 256]. Got {model!r} instead.")
    return int(size)


# ---------------------------------------------------------------------------------------------
# The verb


@dataclass
class EmbedResult:
    key: str
    model: str
    pretrained: str | None
    dim: int
    device: str
    rows: int
    embedded_now: int
    cached: int
    skipped_unusable: int
    failed: int
    seconds: float
    path: str
    warning: str | None = None
    errors_path: str | None = None
    first_errors: list = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        return self.embedded_now == 0 and self.failed == 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


EMBED_SCHEMA_FIELDS = ("id", "content_hash", "embedding")
# Float vectors barely compress and unique ids never repeat: plain pages cost a third of Snappy +
# dictionary pages to write and half to read back (parts, then the consolidated table, then every
# reader); pixel vectors do compress about 2x, so their table is larger on disk.
PLAIN_PAGES = {"compression": "none", "use_dictionary": False}
EMBED_ERRORS_SCHEMA = pa.schema([("id", pa.string()), ("content_hash", pa.string()), ("error", pa.string())])


def _read_stored(path: Path, parts: Path) -> pa.Table | None:
    """Return every stored embedding row (final table, then parts; later rows win), or None."""
    tables = []
    if path.exists():
        tables.append(pq.read_table(path, columns=list(EMBED_SCHEMA_FIELDS)))
    if parts.exists():
        for part in sorted(parts.glob("part-*.parquet")):
            try:
                tables.append(pq.read_table(part, columns=list(EMBED_SCHEMA_FIELDS)))
            except Exception:  # an unreadable part is simply recomputed
                continue
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return None
    dims = {t.schema.field("embedding").type.list_size for t in tables}
    if len(dims) > 1:
        return None
    return pa.concat_tables(tables)


def embed(workspace: Workspace | Path | str = "labelkit-out", *, model: str = "auto", pretrained: str | None = None,
          device: str = "auto", batch_size: int | None = None, workers: int | None = None,
          chunk_rows: int | None = None, featurizer: Featurizer | None = None,
          progress: Progress | None = None, engine: str = "local", ray_address: str | None = None,
          offline: bool = False) -> EmbedResult:
    """Return what was embedded; writes ``embeddings/<key>.parquet`` and records it in the manifest.

    Rows whose file fails to decode are left out of the table; their reasons go to
    ``embeddings/<key>.errors.parquet`` (`id`, `content_hash`, `error`) and into the result.

    Parameters
    ----------
    model : str
        'auto', 'pixels', 'minilm-l6-v2', or any open_clip model name.
    pretrained : str, optional
        open_clip pretrained tag (e.g. laion2b_s34b_b79k) or a local checkpoint path.
    device : {'auto', 'cpu', 'cuda'}
    batch_size, workers : int, optional
        Defaults depend on the device (256 and up to 8 decode workers on CUDA; 64 and 1 on CPU).
        The pixel baseline decodes on `workers` threads instead (default and 0: cores - 1, 1 to 4).
    chunk_rows : int, optional
        Rows per resumable chunk (default 16 batches).
    featurizer : Featurizer, optional
        Use this featurizer instead of building one from `model` (tests, notebooks).
    offline : bool
        Never download weights: 'auto' uses cached CLIP weights or falls back to pixels; a named
        pretrained tag that is not cached is an error. ``HF_HUB_OFFLINE=1`` does the same.
    engine : {'local', 'ray'}
        ``'ray'``: embed on an actor pool of the cluster at ``ray_address`` (see docs/ray.md).
    """
    from labelkit.engines import check_engine

    check_engine(engine, "embed")
    started = time.perf_counter()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    modality = _embeddable_modality(ws)
    items = ws.read_items(columns=["id", "modality", "text", "image_path", "content_hash", "error"])
    f = featurizer or load_featurizer(model, pretrained, device=device, modality=modality, offline=offline,
                                      progress=progress)
    batch_size, workers, chunk_rows = _run_sizes(f, batch_size, workers, chunk_rows)
    usable = items[items["error"].isna()]
    path = ws.embeddings_path(f.key)
    parts = path.with_suffix(".parts")
    stored = _read_stored(path, parts)
    done: dict[str, str] = {}
    if stored is not None and stored.schema.field("embedding").type.list_size == f.dim:
        done = dict(zip(stored.column("id").to_pylist(), stored.column("content_hash").to_pylist()))
    todo = usable[[done.get(i) != h for i, h in zip(usable["id"], usable["content_hash"])]]

    run = _Run(parts=parts, chunk_rows=chunk_rows)
    if len(todo) and engine == "ray":
        _embed_on_ray(ws, f, featurizer, run, todo, done, modality=modality, batch_size=batch_size,
                      ray_address=ray_address, progress=progress)
    elif len(todo):
        _embed_here(f, run, todo, modality=modality, batch_size=batch_size, workers=workers, progress=progress)
    if len(todo) or parts.exists() or stored is None or stored.num_rows != len(usable):
        _consolidate(path, parts, usable)
    return _finish(ws, f, run, path, usable=len(usable), todo=len(todo), skipped=len(items) - len(usable),
                   started=started)


def _embeddable_modality(ws: Workspace) -> str:
    """Return the workspace's modality; raise for rows that are the user's own vectors (nothing to embed)."""
    manifest = ws.read_manifest()
    modality = manifest.get("modality", "image")
    if modality == "embedding":
        key = manifest.get("stages", {}).get("embed", {}).get("embedding_key")
        raise LabelkitError(f"The rows of {ws.root} are your own vectors (ingested with --embedding-col into "
                            f"embeddings/{key}.parquet); there is nothing to embed. Run `labelkit issues -w {ws.root}`.")
    return modality


def _run_sizes(f: Featurizer, batch_size: int | None, workers: int | None,
               chunk_rows: int | None) -> tuple[int, int, int]:
    """Return (batch size, decode workers, rows per chunk): the caller's, else the defaults for `f`'s device."""
    cuda = f.device.startswith("cuda")
    batch_size = batch_size or (256 if cuda else 64)
    if workers is None:  # pixels decode on threads (0: the featurizer's own default), others on processes
        workers = 0 if isinstance(f, PixelFeaturizer) else (min(8, os.cpu_count() or 1) if cuda
                                                            else min(1, (os.cpu_count() or 1) - 1))
    return batch_size, workers, chunk_rows or batch_size * 16


@dataclass
class _Run:
    """What one run embedded: rows written to parts, rows that failed, and each failure's reason."""

    parts: Path
    chunk_rows: int
    embedded: int = 0
    failed: int = 0
    errors: dict[str, list] = field(default_factory=lambda: {"id": [], "content_hash": [], "error": []})


def _embed_on_ray(ws: Workspace, f: Featurizer, featurizer: Featurizer | None, run: _Run, todo, done: dict,
                  *, modality: str, batch_size: int, ray_address: str | None, progress: Progress | None) -> None:
    """Embed `todo` on a Ray actor pool into `run.parts`."""
    from labelkit.engines.ray import embed_parts

    # Each actor rebuilds the driver's choice by name (a user-given featurizer travels pickled).
    make = ((lambda device: featurizer) if featurizer is not None else functools.partial(
        load_featurizer, f"{PIXELS}-{f.size}" if isinstance(f, PixelFeaturizer) else f.name, f.pretrained,
        modality=modality))
    run.embedded, run.failed = embed_parts(ws.items_path, run.parts, make_featurizer=make, key=f.key,
                                           modality=modality, done=done, batch_size=batch_size,
                                           chunk_rows=run.chunk_rows, address=ray_address, total=len(todo),
                                           progress=progress, errors=run.errors)


def _embed_here(f: Featurizer, run: _Run, todo, *, modality: str, batch_size: int, workers: int,
                progress: Progress | None) -> None:
    """Embed `todo` in this process, writing a part file every `run.chunk_rows` rows."""
    run.parts.mkdir(parents=True, exist_ok=True)
    ids, hashes = todo["id"].tolist(), todo["content_hash"].tolist()
    if modality == "text":
        batches = _text_batches(f, todo["text"].tolist(), batch_size)
    else:
        batches = f.image_batches(todo["image_path"].tolist(), batch_size=batch_size, workers=workers,
                                  with_errors=True)
    buffer: list[np.ndarray] = []
    oks: list[np.ndarray] = []
    reasons: list[str] = []
    pos = 0
    for emb, ok, why in batches:
        buffer.append(emb)
        oks.append(ok)
        reasons.extend(why)
        if sum(len(b) for b in buffer) >= run.chunk_rows:
            pos = _write_part(run, ids, hashes, pos, buffer, oks, reasons)
        if progress:
            progress(pos + sum(len(b) for b in buffer), len(todo))
    _write_part(run, ids, hashes, pos, buffer, oks, reasons)


def _write_part(run: _Run, ids: list, hashes: list, pos: int, buffer: list, oks: list, reasons: list) -> int:
    """Write the buffered rows that embedded as one part file, record the failures; return the next position."""
    if not buffer:
        return pos
    emb, ok = np.concatenate(buffer), np.concatenate(oks)
    sl = slice(pos, pos + len(emb))
    keep = np.flatnonzero(ok)
    table = pa.table({"id": pa.array(ids[sl]).take(keep), "content_hash": pa.array(hashes[sl]).take(keep),
                      "embedding": embedding_array(emb[keep])})
    write_table(table, run.parts / f"part-{time.time_ns()}.parquet", **PLAIN_PAGES)
    run.embedded += len(keep)
    run.failed += len(emb) - len(keep)
    for row in np.flatnonzero(~ok):
        run.errors["id"].append(ids[sl.start + row])
        run.errors["content_hash"].append(hashes[sl.start + row])
        run.errors["error"].append(reasons[row] or "failed to embed")
    buffer.clear()
    oks.clear()
    reasons.clear()
    return pos + len(emb)


def _finish(ws: Workspace, f: Featurizer, run: _Run, path: Path, *, usable: int, todo: int, skipped: int,
            started: float) -> EmbedResult:
    """Return the run's result after writing its errors table and recording the embed stage."""
    errors, failed = run.errors, run.failed
    n_rows = pq.read_metadata(path).num_rows if path.exists() else 0
    errors_path = embed_errors_path(path)
    if errors["id"]:  # every failed row is retried by the next run, so this run's failures are all of them
        write_table(pa.table(errors, schema=EMBED_ERRORS_SCHEMA), errors_path)
    elif errors_path.exists():
        errors_path.unlink()
    first = [{"id": i, "error": e} for i, e in zip(errors["id"][:5], errors["error"][:5])]
    result = EmbedResult(key=f.key, model=f.name, pretrained=f.pretrained, dim=f.dim, device=f.device, rows=n_rows,
                         embedded_now=run.embedded, cached=usable - todo, skipped_unusable=skipped,
                         failed=failed, seconds=round(time.perf_counter() - started, 3),
                         path=str(path.relative_to(ws.root)), warning=f.warning,
                         errors_path=str(errors_path.relative_to(ws.root)) if errors["id"] else None,
                         first_errors=first)
    warnings = [f.warning] if f.warning else []
    if failed:
        example = f" (e.g. {first[0]['id']!r}: {first[0]['error']}; all in {result.errors_path})" if first else ""
        warnings.append(f"{failed} rows could not be embedded{example}; repair or remove those files and run "
                        "`labelkit ingest` again.")
    ws.update_stage("embed", result.to_dict() | {"embedding_key": f.key,
                                                 "near_duplicate_threshold": f.near_duplicate_threshold},
                    warnings=warnings)
    return result


def _text_batches(f: Featurizer, texts: list[str], batch_size: int):
    """Yield (embeddings, ok mask, errors) per batch of texts (text never fails to decode)."""
    for i in range(0, len(texts), batch_size):
        emb = f.encode_texts(texts[i:i + batch_size], batch_size=batch_size)
        yield emb, np.ones(len(emb), dtype=bool), [""] * len(emb)


def _consolidate(path: Path, parts: Path, usable) -> None:
    """Rewrite the final table from stored rows that match current items, in items order; drop parts."""
    stored = _read_stored(path, parts)
    if stored is None:
        return
    # Later rows win: walk backwards so the first hit per id is the newest.
    latest: dict[str, int] = {}
    sid, shash = stored.column("id").to_pylist(), stored.column("content_hash").to_pylist()
    for row in range(len(sid) - 1, -1, -1):
        latest.setdefault(sid[row], row)
    wanted = [latest[i] for i, h in zip(usable["id"], usable["content_hash"])
              if i in latest and shash[latest[i]] == h]
    table = stored.take(pa.array(wanted, type=pa.int64()))
    write_table(table, path, row_group_size=16384, **PLAIN_PAGES)
    if parts.exists():
        for part in parts.glob("*"):
            part.unlink()
        parts.rmdir()
