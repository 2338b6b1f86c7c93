"""Small pure helpers shared by the task checks and the task modules (:mod:`labelkit.tasks`).

The checks are a shared layer and import no verb or task module; the task modules import these
from here. Not a check module: the leading underscore keeps it out of the registry's auto-import.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NO_LABELS = "(no labels)"  # the display label of a multi-label row without tags
DISPLAY_SEP = "; "


# ---------------------------------------------------------------------------------------------
# multi-label


def rows_from_pairs(n: int, rows: np.ndarray, class_ids: np.ndarray, classes: Sequence[str]) -> pa.ListArray:
    """Return a list<string> per row from (row, class id) pairs: each tag once, in class order."""
    K = max(1, len(classes))
    key = np.unique(np.asarray(rows, np.int64) * K + np.asarray(class_ids, np.int64))
    r, c = key // K, key % K
    offsets = np.searchsorted(r, np.arange(n + 1)).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(list(classes), pa.string()).take(pa.array(c)))


def display_labels(lists: pa.ListArray) -> pa.Array:
    """Return each row's display label: its tags joined by "; ", or "(no labels)"."""
    joined = pc.binary_join(lists, DISPLAY_SEP)
    return pc.if_else(pc.equal(pc.list_value_length(lists), 0), pa.scalar(NO_LABELS), joined)


def tag_lists(Y: np.ndarray, classes: Sequence[str]) -> pa.ListArray:
    """Return the list<string> column of a multi-hot matrix (inverse of ``multi_hot``)."""
    rows, cid = np.nonzero(Y)
    return rows_from_pairs(len(Y), rows, cid, classes)


# ---------------------------------------------------------------------------------------------
# multi-annotator


def annotator_records(found: dict, classes: Sequence[str]) -> list[dict]:
    """Return one JSON-able record per annotator, lowest quality first (annotators without labels last)."""
    quality = found["annotator_quality"]
    order = np.lexsort((np.arange(len(quality)), np.where(np.isnan(quality), np.inf, quality)))
    rnd = lambda x: None if np.isnan(x) else round(float(x), 4)
    return [{"annotator": found["annotators"][a], "items_labelled": int(found["annotator_items"][a]),
             "agreement_with_consensus": rnd(found["annotator_agreement_with_consensus"][a]),
             "quality": rnd(quality[a]),
             "worst_class": classes[found["annotator_worst_class"][a]] if found["annotator_worst_class"][a] >= 0 else None}
            for a in order]


# ---------------------------------------------------------------------------------------------
# regression


def format_numbers(values: np.ndarray, reference: np.ndarray | None = None) -> pa.Array:
    """Return `values` as short strings (nulls where not finite), rounded to about 5 significant digits
    of the largest magnitude in `reference` (default: `values`)."""
    values = np.asarray(values, np.float64)
    ref = np.abs(np.asarray(values if reference is None else reference, np.float64))
    ref = ref[np.isfinite(ref)]
    top = float(ref.max()) if len(ref) else 1.0
    decimals = int(np.clip(4 - math.floor(math.log10(top)) if top > 0 else 4, 0, 12))
    finite = np.isfinite(values)
    rounded = np.round(np.where(finite, values, 0.0), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    return pa.array(rounded, pa.float64(), mask=~finite).cast(pa.string())


def residual_reason(target: float, prediction: float, z: float, *, reference: np.ndarray | None = None) -> str:
    """Return the one-line evidence for one flagged target (for many, :func:`residual_reasons` is one pass)."""
    t, p = format_numbers(np.array([target, prediction]), reference=reference).to_pylist()
    return (f"target {t}; probe predicts {p} out of sample (residual {target - prediction:+.4g}, "
            f"{abs(z):.1f} robust σ)")


def residual_reasons(targets: np.ndarray, predictions: np.ndarray, z: np.ndarray, *,
                     reference: np.ndarray | None = None) -> list[str]:
    """Return the one-line evidence of each flagged target, the numbers formatted in one pass.

    `targets`, `predictions` and `z` are the flagged rows only; `reference` (all targets) sets the
    rounding (:func:`format_numbers`), default the flagged targets and predictions together.
    """
    targets = np.asarray(targets, np.float64)
    predictions = np.asarray(predictions, np.float64)
    if reference is None:
        reference = np.concatenate([targets, predictions])
    t = format_numbers(targets, reference=reference).to_pylist()
    p = format_numbers(predictions, reference=reference).to_pylist()
    residual = (targets - predictions).tolist()
    return [f"target {a}; probe predicts {b} out of sample (residual {r:+.4g}, {abs(float(s)):.1f} robust σ)"
            for a, b, r, s in zip(t, p, residual, np.asarray(z, np.float64).tolist())]
