"""Box statistics that need no model: per-class counts, sizes, tiny / huge boxes, duplicates.

A *duplicate* is a pair of boxes of one class in one image with IoU > ``dup_iou`` (the same
object boxed twice); a *conflict* is such a pair of two classes (one object given two classes,
what cleanlab's ``overlapping_label_check`` penalises). Sizes are relative: the square root of
the box area over the image area (0.1 = a box a tenth of the image side), so images of any
resolution share one histogram.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelkit.detection.match import Boxes, areas, iou, pairs_within

SIZE_BINS = np.array([0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0001], np.float32)


@dataclass
class BoxStats:
    """Per-box and per-image facts of :func:`box_statistics` (the summary is :meth:`to_dict`)."""

    classes: list[str]
    relative_size: np.ndarray  # per box, float32
    is_tiny: np.ndarray  # per box
    is_huge: np.ndarray
    duplicate_of: np.ndarray  # per box: position of the earlier box it duplicates, -1 none
    conflicts_with: np.ndarray  # per box: position of an earlier box of another class at IoU > dup_iou, -1 none
    n_boxes: np.ndarray  # per image, int32
    n_tiny: np.ndarray
    n_huge: np.ndarray
    n_duplicates: np.ndarray
    n_conflicts: np.ndarray
    label: np.ndarray  # per box class index
    image: np.ndarray  # per box image position
    thresholds: dict

    def to_dict(self) -> dict:
        """Return the JSON summary: per-class counts and size histograms, boxes per image, flagged counts."""
        k = len(self.classes)
        per_class = np.bincount(self.label, minlength=k)[:k]
        pairs = np.unique(self.image * max(k, 1) + self.label) if len(self.label) else np.zeros(0, np.int64)
        images_with = np.bincount(pairs % max(k, 1), minlength=k)[:k].tolist()
        hist = {c: np.histogram(self.relative_size[self.label == j], SIZE_BINS)[0].tolist()
                for j, c in enumerate(self.classes)}
        per_image = np.bincount(np.minimum(self.n_boxes, 20), minlength=21)
        return {"boxes": int(len(self.label)), "images": int(len(self.n_boxes)),
                "images_without_boxes": int((self.n_boxes == 0).sum()),
                "boxes_per_class": {c: int(v) for c, v in zip(self.classes, per_class)},
                "images_per_class": dict(zip(self.classes, images_with)),
                "classes_without_boxes": [c for c, v in zip(self.classes, per_class) if v == 0],
                "size_bins": [round(float(b), 4) for b in SIZE_BINS[:-1]] + [1.0], "size_histogram": hist,
                "boxes_per_image": {("20+" if i == 20 else str(i)): int(v) for i, v in enumerate(per_image) if v},
                "mean_boxes_per_image": float(self.n_boxes.mean()) if len(self.n_boxes) else 0.0,
                "tiny_boxes": int(self.is_tiny.sum()), "huge_boxes": int(self.is_huge.sum()),
                "duplicate_boxes": int((self.duplicate_of >= 0).sum()),
                "conflicting_boxes": int((self.conflicts_with >= 0).sum()),
                "images_with_duplicates": int((self.n_duplicates > 0).sum()), "thresholds": self.thresholds}


def box_statistics(boxes: Boxes, n_images: int, classes: list[str], widths, heights, *, tiny: float = 0.02,
                   huge: float = 0.95, min_side: float = 2.0, dup_iou: float = 0.9) -> BoxStats:
    """Return the box statistics of `boxes` over `n_images` images of sizes `widths` x `heights`.

    Parameters
    ----------
    tiny : float
        A box whose relative size (sqrt of area share) is below this, or whose shorter side is
        below `min_side` pixels, is tiny.
    huge : float
        A box whose relative size is above this is huge (it covers nearly the whole image).
    dup_iou : float
        IoU above which two boxes of one image are the same object.
    """
    w = np.asarray(widths, np.float64)[boxes.image]
    h = np.asarray(heights, np.float64)[boxes.image]
    area = areas(boxes.xyxy).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.sqrt(area / (w * h)).astype(np.float32)
    side = np.minimum(boxes.xyxy[:, 2] - boxes.xyxy[:, 0], boxes.xyxy[:, 3] - boxes.xyxy[:, 1])
    is_tiny = (rel < tiny) | (side < min_side)
    is_huge = rel > huge
    ia, ib = pairs_within(boxes.image, boxes.image, n_images)
    later = ib > ia
    ia, ib = ia[later], ib[later]
    close = iou(boxes.xyxy[ia], boxes.xyxy[ib]) > dup_iou
    same = boxes.label[ia] == boxes.label[ib]
    duplicate_of = np.full(len(boxes), -1, np.int64)
    conflicts = np.full(len(boxes), -1, np.int64)
    # Reverse order so the earliest partner wins the assignment.
    hit = np.flatnonzero(close & same)[::-1]
    duplicate_of[ib[hit]] = ia[hit]
    hit = np.flatnonzero(close & ~same)[::-1]
    conflicts[ib[hit]] = ia[hit]

    def per_image(mask):
        return np.bincount(boxes.image[mask], minlength=n_images)[:n_images].astype(np.int32)

    stats = BoxStats(list(classes), rel, is_tiny, is_huge, duplicate_of, conflicts,
                     boxes.counts(n_images).astype(np.int32), per_image(is_tiny), per_image(is_huge),
                     per_image(duplicate_of >= 0), per_image(conflicts >= 0), boxes.label, boxes.image,
                     {"tiny": tiny, "huge": huge, "min_side": min_side, "dup_iou": dup_iou})
    return stats
