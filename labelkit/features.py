"""What several verbs need from embedding: the device to run on and the workspace's embedding table."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from labelkit.errors import LabelkitError
from labelkit.workspace import Workspace, embedding_matrix


def resolve_device(device: str = "auto", *, ask_torch: bool = False) -> str:
    """Return 'cuda' or 'cpu' for `device` in {auto, cpu, cuda, cuda:N}.

    Importing torch costs about 2 s, more than the whole pixel-baseline embed; so 'cpu' never
    imports it, and neither does 'auto' on a Linux machine without a GPU driver (no CUDA can be
    available there). torch is asked when it may know better: a driver is present, another OS,
    or torch is already imported (then asking is free), or the caller will need it anyway
    (`ask_torch`).
    """
    check_device(device)
    if not ask_torch and (device == "cpu" or device == "auto" and "torch" not in sys.modules
                          and not gpu_driver_present()):
        return "cpu"
    import torch

    cuda = torch.cuda.is_available()
    if device in ("auto", "cpu"):
        return "cuda" if device == "auto" and cuda else "cpu"
    if not cuda:
        raise LabelkitError("--device cuda was requested but no CUDA GPU is available; use --device cpu or auto.")
    return device


def check_device(device: str) -> None:
    """Raise :class:`LabelkitError` unless `device` names auto, cpu or cuda[:N]; imports nothing."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise LabelkitError(f"The 'device' parameter of embed must be one of auto, cpu, cuda. Got {device!r} instead.")


# What a GPU driver leaves on Linux: NVIDIA's driver (/proc entry, control device), WSL2's GPU
# paravirtualisation (CUDA on WSL has neither of those) and AMD's ROCm (torch.cuda on ROCm builds).
_GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def gpu_driver_present() -> bool:
    """Return False only when CUDA surely cannot be available: Linux with no GPU driver file."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(f) for f in _GPU_DRIVER_FILES)


def load_workspace_embeddings(ws: Workspace, key: str | None = None) -> tuple[str, list[str], np.ndarray]:
    """Return (key, ids, matrix) of the workspace's current embedding table (or the one named `key`)."""
    manifest = ws.read_manifest()
    key = key or manifest.get("stages", {}).get("embed", {}).get("embedding_key")
    if key is None:
        raise LabelkitError(f"No embeddings in {ws.root}; run `labelkit embed -w {ws.root}` first "
                            "(or pass --pred-probs to skip embedding).")
    path = ws.embeddings_path(key)
    if not path.exists():
        raise LabelkitError(f"Embedding table {path} is missing; run `labelkit embed -w {ws.root}` again.")
    table = pq.read_table(path, columns=["id", "embedding"])
    return key, table.column("id").to_pylist(), embedding_matrix(table.column("embedding"))


def load_usable_embeddings(ws: Workspace, usable_ids, content_hashes, embedding_key: str | None = None
                           ) -> tuple[str, np.ndarray]:
    """Return (key, matrix) of the workspace's embeddings for `usable_ids`, rows in that order.

    Raises the user error of :func:`missing_embeddings_error` when a usable row has no embedding,
    and :func:`labelkit.workspace.require_current_embeddings`'s when the table is stale for
    `content_hashes` (one per usable row). No copy when the table is already in usable-row order.
    """
    from labelkit.arrays import positions
    from labelkit.workspace import require_current_embeddings

    key, emb_ids, matrix = load_workspace_embeddings(ws, embedding_key)
    emb_row = positions(usable_ids, emb_ids)
    missing = np.flatnonzero(emb_row < 0)
    if len(missing):
        raise missing_embeddings_error(ws, key, len(missing), usable_ids[int(missing[0])].as_py())
    require_current_embeddings(ws, key, usable_ids, content_hashes)
    # No 2 GB copy at 1M x 512 when the table is already in items order.
    in_order = len(emb_row) == len(matrix) and bool((emb_row == np.arange(len(matrix))).all())
    return key, (matrix if in_order else matrix[emb_row])


def load_embedding_inputs(ws: Workspace, manifest: dict, usable_ids, content_hashes, *,
                          embedding_key: str | None, dup_threshold: float | None, device: str):
    """Return (key, matrix, dup_threshold, device): what every `issues` run needs from the embeddings.

    The matrix is :func:`load_usable_embeddings`'s; `dup_threshold` defaults to the embedder's own
    (:func:`near_duplicate_threshold`); `device` is resolved only here, since torch is only needed
    when there are embeddings.
    """
    from labelkit.neighbors import EXACT_MAX_ROWS_CPU

    key, matrix = load_usable_embeddings(ws, usable_ids, content_hashes, embedding_key)
    if dup_threshold is None:
        dup_threshold = near_duplicate_threshold(key, manifest)
    # Above the exact search's size the approximate search imports torch anyway. Asking torch here,
    # right after the embeddings are read, is free then, and measured lower: the peak RSS of
    # bench/scale.py's `issues` at 100k rows was 1.65-1.72 GB in 6 runs so, 2.0-2.2 GB in 7 of 8
    # runs with torch first imported inside the search (the allocator's cause was not pinned down).
    return key, matrix, dup_threshold, resolve_device(device, ask_torch=len(matrix) > EXACT_MAX_ROWS_CPU)


def embed_errors_path(embeddings_path: Path) -> Path:
    """Return the table of rows that failed to embed beside an embedding table (``<key>.errors.parquet``)."""
    return embeddings_path.with_name(f"{embeddings_path.stem}.errors.parquet")


def missing_embeddings_error(ws: Workspace, key: str, n_missing: int, first_id: str) -> LabelkitError:
    """Return the user error for `n_missing` usable rows without an embedding, naming the first and why.

    The reason comes from ``<key>.errors.parquet``, written by `embed` for rows that failed to
    decode; a row without one was never embedded (an interrupted or older run).
    """
    errors_path = embed_errors_path(ws.embeddings_path(key))
    reason = None
    if errors_path.exists():
        import pyarrow.compute as pc

        table = pq.read_table(errors_path, columns=["id", "error"], filters=pc.field("id") == first_id)
        reason = table.column("error")[0].as_py() if table.num_rows else None
    if reason is not None:
        return LabelkitError(f"{n_missing} usable rows have no embedding in {key} because they failed to embed, e.g. "
                             f"{first_id!r}: {reason} (all reasons in {errors_path}); repair or remove those files, "
                             f"then run `labelkit ingest` and `labelkit embed -w {ws.root}` again.")
    return LabelkitError(f"{n_missing} usable rows (e.g. {first_id!r}) have no embedding in {key}; run `labelkit embed "
                         f"-w {ws.root}` again.")


# Cosine similarity at which `issues` calls two rows near-duplicates, per embedder; measured in
# docs/scale.md. sample_data/digits on the 16-px pixel baseline: distinct images reach 0.996
# (0.985 paired 42 rows) while resized/JPEG copies stay >= 0.9936. sample_data/text on MiniLM:
# case and whitespace copies embed at 1.0, distinct templated sentences reach 0.992.
NEAR_DUPLICATE_THRESHOLD = {"pixels": 0.993, "minilm-l6-v2": 0.995}
DEFAULT_NEAR_DUPLICATE_THRESHOLD = 0.985  # CLIP and the user's own vectors (not measured)


def near_duplicate_threshold(embedding_key: str, manifest: dict | None = None) -> float:
    """Return the near-duplicate cosine threshold of the embedder that wrote `embedding_key`.

    The embed stage's record wins when it names one for that key; otherwise the embedder is
    recognised from the key (``pixels-16``, ``minilm-l6-v2``, else CLIP or user vectors).
    """
    record = (manifest or {}).get("stages", {}).get("embed", {})
    if record.get("embedding_key") == embedding_key and record.get("near_duplicate_threshold") is not None:
        return float(record["near_duplicate_threshold"])
    family = embedding_key.split("-")[0] if embedding_key.startswith("pixels-") else embedding_key
    return NEAR_DUPLICATE_THRESHOLD.get(family, DEFAULT_NEAR_DUPLICATE_THRESHOLD)
