"""Boxes as flat arrays, and the box pairs of each image without a loop over images or pairs.

Every box of a data set lives in one :class:`Boxes` (sorted by image). The pairs that matter —
an annotated box and a predicted box of the same image — are built with ``np.repeat`` from the
per-image counts, so their number is the sum over images of ``L_i * M_i``, never ``L * M``;
:func:`image_blocks` cuts the images into blocks of bounded pair count so memory stays flat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass
class Boxes:
    """Boxes of many images: one entry per box, sorted by image (stable within an image).

    Attributes
    ----------
    image : ndarray of shape (n,), int64
        Position of the box's image in the items rows.
    label : ndarray of shape (n,), int64
        Class index (manifest class order).
    xyxy : ndarray of shape (n, 4), float32
        ``x1, y1, x2, y2`` in pixels, origin at the top left.
    score : ndarray of shape (n,), float32, optional
        The model's confidence (predictions only).
    box_id : ndarray of shape (n,), object, optional
        The annotation's id as the user's file names it (annotations only).
    """

    image: np.ndarray
    label: np.ndarray
    xyxy: np.ndarray
    score: np.ndarray | None = None
    box_id: np.ndarray | None = None

    @classmethod
    def make(cls, image, label, xyxy, score=None, box_id=None) -> "Boxes":
        """Return Boxes from unsorted arrays (sorted by image here, keeping the order within an image)."""
        image = np.asarray(image, np.int64).reshape(-1)
        order = np.argsort(image, kind="stable")
        xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
        return cls(image=image[order], label=np.asarray(label, np.int64).reshape(-1)[order], xyxy=xyxy[order],
                   score=None if score is None else np.asarray(score, np.float32).reshape(-1)[order],
                   box_id=None if box_id is None else np.asarray(box_id, object).reshape(-1)[order])

    @classmethod
    def empty(cls, *, scored: bool = False) -> "Boxes":
        """Return Boxes holding no box."""
        return cls.make(np.zeros(0), np.zeros(0), np.zeros((0, 4)), np.zeros(0) if scored else None)

    def __len__(self) -> int:
        return len(self.image)

    def take(self, index) -> "Boxes":
        """Return the boxes at `index` (a mask or sorted positions), still sorted by image."""
        return Boxes(self.image[index], self.label[index], self.xyxy[index],
                     None if self.score is None else self.score[index],
                     None if self.box_id is None else self.box_id[index])

    def counts(self, n_images: int) -> np.ndarray:
        """Return the number of boxes of each of `n_images` images."""
        return np.bincount(self.image, minlength=n_images)[:n_images]

    def starts(self, n_images: int) -> np.ndarray:
        """Return the position of each image's first box, shape (n_images + 1,) (last: ``len(self)``)."""
        return np.searchsorted(self.image, np.arange(n_images + 1))


def areas(xyxy: np.ndarray) -> np.ndarray:
    """Return the area of each box (0 for an empty box), float32."""
    return (np.maximum(xyxy[:, 2] - xyxy[:, 0], 0) * np.maximum(xyxy[:, 3] - xyxy[:, 1], 0)).astype(np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the intersection over union of boxes ``a[i]`` and ``b[i]`` (row by row), float32 in [0, 1]."""
    w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.maximum(w, 0) * np.maximum(h, 0)
    union = areas(a) + areas(b) - inter
    return np.where(union > 0, inter / np.maximum(union, np.float32(1e-12)), 0).astype(np.float32)


def pairs_within(a_image: np.ndarray, b_image: np.ndarray, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (ia, ib): every pair of an `a` box and a `b` box of the same image, grouped by `a` box.

    Both image arrays must be sorted. ``ia`` is non-decreasing, so per-`a` reductions are
    segment reductions. The number of pairs is ``sum_i L_i * M_i``.
    """
    b_counts = np.bincount(b_image, minlength=n_images)
    b_starts = np.concatenate([[0], np.cumsum(b_counts)])
    per_a = b_counts[a_image]
    total = int(per_a.sum())
    ia = np.repeat(np.arange(len(a_image), dtype=np.int64), per_a)
    first = np.cumsum(per_a) - per_a
    ib = b_starts[a_image][ia] + (np.arange(total, dtype=np.int64) - first[ia])
    return ia, ib


def image_blocks(a_counts: np.ndarray, b_counts: np.ndarray, *, max_pairs: int = 4_000_000) -> Iterator[tuple[int, int]]:
    """Yield (first image, end image) ranges whose pair count stays near `max_pairs` (an image is never cut)."""
    n = len(a_counts)
    if n == 0:
        return
    pairs = np.cumsum(a_counts.astype(np.int64) * b_counts.astype(np.int64))
    start = 0
    while start < n:
        base = pairs[start - 1] if start else 0
        end = int(np.searchsorted(pairs, base + max_pairs, side="right"))
        end = max(end, start + 1)
        yield start, min(end, n)
        start = end


def segment_best(values: np.ndarray, segments: np.ndarray, n_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (best value, position of it in `values`) per segment; -inf and -1 where a segment has no finite value.

    `segments` must be non-decreasing (as ``ia`` of :func:`pairs_within`); ties keep the first.
    """
    best = np.full(n_segments, -np.inf, np.float32)
    where = np.full(n_segments, -1, np.int64)
    finite = np.isfinite(values)
    if not finite.any():
        return best, where
    pos = np.flatnonzero(finite)
    seg, val = segments[pos], values[pos]
    # Sorting by (segment, -value, position) puts each segment's best first.
    order = np.lexsort((pos, -val, seg))
    seg_sorted = seg[order]
    head = np.ones(len(order), bool)
    head[1:] = seg_sorted[1:] != seg_sorted[:-1]
    chosen = order[head]
    best[seg[chosen]] = val[chosen]
    where[seg[chosen]] = pos[chosen]
    return best, where
