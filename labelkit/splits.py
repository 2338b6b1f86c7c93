"""The held-out evaluation split: fixed once per workspace, at ingest, by id.

`train` scores every model on the same held-out rows, so nothing that feeds training may have
seen them: the probe of `labelkit issues` never trains on them (they are predicted by a model fit
on the other rows), and `select prune`, relabel votes and distillation from the probe therefore
carry no information from their labels. The split is stored as ``heldout.parquet`` (one ``id``
column) with its record under ``manifest['heldout']``; see ``docs/heldout.md``.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from labelkit.workspace import (HELDOUT_FINGERPRINT_KEY, Workspace, fingerprint, items_fingerprint,  # noqa: F401  (key re-exported)
                                with_fingerprint, write_table)

HELDOUT_SPLITS = ("test", "val", "valid", "validation", "dev", "holdout")
HELDOUT_FRACTION = 0.2
HELDOUT_SALT = "heldout"
HELDOUT_FILE = "heldout.parquet"


def _unit_hash(key: str) -> float:
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def split_column_mask(split: Sequence[str | None] | None) -> np.ndarray | None:
    """Return the test/val rows of a user split column, or None when it does not split the data."""
    if split is None:
        return None
    mask = np.array([s is not None and str(s).lower() in HELDOUT_SPLITS for s in split])
    return mask if mask.any() and not mask.all() else None


def heldout_split(ids: Sequence[str], labels: np.ndarray, *, fraction: float = HELDOUT_FRACTION,
                  salt: str = HELDOUT_SALT, split: Sequence[str | None] | None = None) -> np.ndarray:
    """Return a boolean mask of held-out rows: fixed by the ids alone, stratified by class.

    Within each class the rows with the smallest hash of (salt, id) are held out, ⌈fraction·n_c⌉ of
    them (none for a class of one row), so the same workspace always gets the same split. When the
    data has its own split column, its test/val rows are the held-out rows instead.
    """
    mask = split_column_mask(split)
    if mask is not None:
        return mask
    labels = np.asarray(labels)
    h = np.array([_unit_hash(f"{salt}:{i}") for i in ids], dtype=np.float64)
    mask = np.zeros(len(ids), bool)
    # One sort by (class, hash) instead of a pass over all rows per class.
    order = np.lexsort((h, labels))
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]) if len(ids) else np.array([], int)
    sizes = np.diff(np.r_[starts, len(ids)])
    n_out = np.where(sizes > 1, np.ceil(fraction * sizes).astype(np.int64), 0)
    rank = np.arange(len(ids)) - np.repeat(starts, sizes)
    mask[order[rank < np.repeat(n_out, sizes)]] = True
    return mask


def _usable(items: pa.Table) -> np.ndarray:
    ok = items.column("error").is_null().to_numpy(zero_copy_only=False)
    if "labels" in items.column_names:  # multi-label rows (labelkit.tasks.multilabel): label_id only matches
        return ok                         # single-tag rows, so every error-free row counts, one stratum
    label_id = items.column("label_id").fill_null(-1).to_numpy()
    # A task without classes (regression: classes []) has label_id -1 on every row; its usable
    # rows are the error-free ones, split by the hash of their id alone (one stratum).
    return ok & (label_id >= 0) if (label_id >= 0).any() else ok


def compute_heldout(items: pa.Table, *, fraction: float = HELDOUT_FRACTION) -> tuple[pa.Array, dict]:
    """Return (held-out ids, their manifest record) for an items table: usable rows only."""
    usable = _usable(items)
    ids = items.column("id").combine_chunks().filter(pa.array(usable))
    labels = items.column("label_id").to_numpy(zero_copy_only=False)[usable]
    split = items.column("split").filter(pa.array(usable)).to_pylist() if "split" in items.column_names else None
    mask = heldout_split(ids.to_pylist(), labels, fraction=fraction, split=split)
    held = ids.filter(pa.array(mask))
    source = "split column" if split_column_mask(split) is not None else "hash of id"
    record = {"path": HELDOUT_FILE, "rows": int(mask.sum()), "fraction": fraction if source == "hash of id" else None,
              "source": source, "salt": HELDOUT_SALT, "ids_fingerprint": heldout_fingerprint(held)}
    return held, record


def heldout_fingerprint(held_ids: pa.Array | Sequence[str]) -> str:
    """Return a digest of a set of held-out ids (order does not matter)."""
    return fingerprint(sorted(held_ids.to_pylist() if isinstance(held_ids, (pa.Array, pa.ChunkedArray)) else held_ids))


def write_heldout(ws: Workspace, items: pa.Table, *, fraction: float = HELDOUT_FRACTION) -> dict:
    """Write ``heldout.parquet`` for `items` and return the record `ingest` stores as manifest['heldout']."""
    held, record = compute_heldout(items, fraction=fraction)
    write_table(with_fingerprint(pa.table({"id": held}), items_fingerprint(items)), ws.root / HELDOUT_FILE)
    return record


def read_heldout(ws: Workspace) -> tuple[pa.Array, dict]:
    """Return (held-out ids, record) fixed at ingest.

    A workspace ingested before the split was stored gets it computed by the same rule (the rule
    depends on the ids and labels only, so the result is what ingest would have stored).
    """
    manifest = ws.read_manifest()
    record = manifest.get("heldout")
    path = ws.root / HELDOUT_FILE
    if record and path.exists():
        return pq.read_table(path, columns=["id"]).column("id").combine_chunks(), record
    return compute_heldout(ws.read_items_table(["id", "label_id", "split", "error"]))


def heldout_mask(ws: Workspace, ids: pa.Array | Sequence[str]) -> tuple[np.ndarray, dict]:
    """Return (True where an id is held out, the held-out record) for `ids`."""
    held, record = read_heldout(ws)
    ids = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(list(ids), pa.string())
    return pc.is_in(ids, value_set=held).to_numpy(zero_copy_only=False).astype(bool), record




def read_heldout_fingerprint(path) -> str | None:
    """Return the held-out ids fingerprint a probabilities table was computed with (None if absent)."""
    meta = pq.read_schema(path).metadata or {}
    return meta[HELDOUT_FINGERPRINT_KEY].decode() if HELDOUT_FINGERPRINT_KEY in meta else None
