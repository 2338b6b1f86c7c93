"""Planted detection data sets for tests and the bench: true objects, a model, and annotation errors.

:func:`make_planted` draws objects per image (some images have none), a detector's predictions
of them (jittered boxes, high scores for what it finds, a few misses, low-score clutter) and the
annotations: the true boxes with one planted error in a share of the images — ``swap`` (another
class), ``badloc`` (shifted or resized box) or ``overlooked`` (the annotation removed). Every
draw comes from one ``seed``. :func:`write_coco` and :func:`write_yolo` write the same set in
both formats (images, annotations, predictions), :func:`to_cleanlab` builds cleanlab's inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labelkit.detection.match import Boxes, iou, pairs_within

PLANTED_KINDS = ("swap", "badloc", "overlooked")
COLOURS = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [210, 245, 60]], np.uint8)


@dataclass
class PlantedSet:
    """A planted data set. ``kind[i]`` is the error planted in image i ('' for none)."""

    files: list[str]
    widths: np.ndarray
    heights: np.ndarray
    classes: list[str]
    category_ids: list[int]
    truth: Boxes
    boxes: Boxes
    predictions: Boxes
    kind: np.ndarray

    @property
    def n_images(self) -> int:
        return len(self.files)


def make_planted(n_images: int = 400, *, n_classes: int = 4, max_boxes: int = 6, noise: float = 0.08,
                 empty: float = 0.1, miss: float = 0.03, clutter: float = 1.0, seed: int = 0,
                 size: tuple[int, int] = (96, 160), box_size: tuple[float, float] = (0.12, 0.45)) -> PlantedSet:
    """Return a planted set: `noise` of the images per kind get one error; `empty` have no object.

    Parameters
    ----------
    n_images, n_classes, max_boxes : int
        Images, classes (one more category, ``unused``, has no box) and objects per image at most.
    noise : float
        Share of images per planted kind (disjoint images, each with at least one object).
    empty : float
        Share of images with no object.
    miss : float
        Share of objects the model does not find.
    clutter : float
        Mean number of low-score (< 0.3) predictions per image.
    seed : int
        Seed of every draw.
    size : (int, int)
        Smallest and largest image side in pixels.
    box_size : (float, float)
        Smallest and largest object side, as a share of the image side (objects overlapping an
        earlier one at IoU ≥ 0.2 are dropped, so small objects let more of them fit).
    """
    rng = np.random.default_rng(seed)
    widths = rng.integers(size[0], size[1] + 1, n_images)
    heights = rng.integers(size[0], size[1] + 1, n_images)
    counts = np.where(rng.random(n_images) < empty, 0, rng.integers(1, max_boxes + 1, n_images))
    truth = _objects(rng, counts, widths, heights, n_classes, box_size)
    predictions = _detector(rng, truth, widths, heights, n_classes, miss=miss, clutter=clutter)
    boxes, kind = _plant(rng, truth, widths, heights, n_classes, noise)
    classes = [f"class{k}" for k in range(n_classes)] + ["unused"]
    category_ids = [3 * k + 1 for k in range(n_classes + 1)]  # not 0..K-1: readers must map ids
    files = [f"img_{i:05d}.png" for i in range(n_images)]
    return PlantedSet(files, widths, heights, classes, category_ids, truth, boxes, predictions, kind)


def _objects(rng, counts, widths, heights, n_classes, box_size) -> Boxes:
    """Return true objects: sides within `box_size` of the image side, overlapping earlier ones at IoU < 0.2."""
    image = np.repeat(np.arange(len(counts)), counts)
    w = rng.uniform(*box_size, len(image)) * widths[image]
    h = rng.uniform(*box_size, len(image)) * heights[image]
    x1 = rng.uniform(0, 1, len(image)) * (widths[image] - w)
    y1 = rng.uniform(0, 1, len(image)) * (heights[image] - h)
    boxes = Boxes.make(image, rng.integers(0, n_classes, len(image)), np.column_stack([x1, y1, x1 + w, y1 + h]),
                       box_id=np.arange(len(image)).astype(str).astype(object))
    ia, ib = pairs_within(boxes.image, boxes.image, len(counts))
    later = ib > ia
    clash = np.zeros(len(boxes), bool)
    clash[ib[later][iou(boxes.xyxy[ia[later]], boxes.xyxy[ib[later]]) >= 0.2]] = True
    return boxes.take(~clash)


def _detector(rng, truth: Boxes, widths, heights, n_classes, *, miss: float, clutter: float) -> Boxes:
    """Return a detector's boxes: found objects jittered (score mostly 0.85-1), a low-score rival class, clutter."""
    found = truth.take(rng.random(len(truth)) >= miss)
    wh = np.column_stack([found.xyxy[:, 2] - found.xyxy[:, 0], found.xyxy[:, 3] - found.xyxy[:, 1]])
    jitter = rng.normal(0, 0.04, (len(found), 4)) * np.tile(wh, 2)
    xyxy = found.xyxy + jitter
    score = 0.6 + 0.4 * rng.beta(5, 1, len(found))
    rival = (found.label + rng.integers(1, n_classes, len(found))) % n_classes
    rival_score = rng.uniform(0.02, 0.25, len(found))
    n_clutter = rng.poisson(clutter, len(widths))
    image = np.repeat(np.arange(len(widths)), n_clutter)
    cw, ch = rng.uniform(0.1, 0.4, len(image)) * widths[image], rng.uniform(0.1, 0.4, len(image)) * heights[image]
    cx, cy = rng.uniform(0, 1, len(image)) * (widths[image] - cw), rng.uniform(0, 1, len(image)) * (heights[image] - ch)
    return Boxes.make(np.concatenate([found.image, found.image, image]),
                      np.concatenate([found.label, rival, rng.integers(0, n_classes, len(image))]),
                      np.concatenate([xyxy, xyxy + rng.normal(0, 1, xyxy.shape), np.column_stack([cx, cy, cx + cw, cy + ch])]),
                      np.concatenate([score, rival_score, rng.uniform(0.02, 0.3, len(image))]))


def _plant(rng, truth: Boxes, widths, heights, n_classes, noise: float) -> tuple[Boxes, np.ndarray]:
    """Return (annotations with one planted error in `noise` of the images per kind, kind per image)."""
    n_images = len(widths)
    kind = np.full(n_images, "", object)
    with_boxes = rng.permutation(np.flatnonzero(truth.counts(n_images) > 0))
    per_kind = int(round(noise * n_images))
    starts = truth.starts(n_images)
    label, xyxy = truth.label.copy(), truth.xyxy.astype(np.float64).copy()
    keep = np.ones(len(truth), bool)
    for k, name in enumerate(PLANTED_KINDS):
        chosen = with_boxes[k * per_kind:(k + 1) * per_kind]
        kind[chosen] = name
        pick = starts[chosen] + rng.integers(0, np.diff(starts)[chosen])
        if name == "swap":
            label[pick] = (label[pick] + rng.integers(1, n_classes, len(pick))) % n_classes
        elif name == "overlooked":
            keep[pick] = False
        else:
            xyxy[pick] = _misplace(rng, xyxy[pick], widths[truth.image[pick]], heights[truth.image[pick]])
    boxes = Boxes(truth.image.copy(), label, xyxy.astype(np.float32), None, truth.box_id.copy())
    return boxes.take(keep), kind


def _misplace(rng, xyxy: np.ndarray, widths, heights) -> np.ndarray:
    """Return boxes moved by 45-70 % of their size along one axis (toward the side with room), or doubled."""
    out = xyxy.copy()
    shift = rng.uniform(0.45, 0.7, len(out))
    axis = rng.integers(0, 2, len(out))
    for a, limit in ((0, widths), (1, heights)):
        rows = np.flatnonzero(axis == a)
        size = out[rows, a + 2] - out[rows, a]
        room_up = limit[rows] - out[rows, a + 2]
        step = np.where(room_up >= out[rows, a], 1, -1) * np.minimum(shift[rows] * size,
                                                                     np.maximum(room_up, out[rows, a]))
        out[rows, a] += step
        out[rows, a + 2] += step
    # A third are resized instead: twice the side around the same centre (IoU 1/4 before clipping).
    grow = rng.random(len(out)) < 0.3
    cx, cy = (xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2
    half_w, half_h = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]
    grown = np.column_stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h])
    out[grow] = grown[grow]
    return np.clip(out, 0, np.column_stack([widths, heights, widths, heights]))


def write_images(planted: PlantedSet, folder: Path | str) -> Path:
    """Write one PNG per image (noise, the true objects filled with their class colour); return the folder."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(planted.files))
    starts = planted.truth.starts(planted.n_images)
    for i, name in enumerate(planted.files):
        pixels = rng.integers(90, 140, (int(planted.heights[i]), int(planted.widths[i]), 3), dtype=np.uint8)
        for j in range(starts[i], starts[i + 1]):
            x1, y1, x2, y2 = np.round(planted.truth.xyxy[j]).astype(int)
            pixels[max(y1, 0):y2, max(x1, 0):x2] = COLOURS[planted.truth.label[j] % len(COLOURS)]
        Image.fromarray(pixels).save(folder / name)
    return folder


def coco_annotations(planted: PlantedSet) -> dict:
    """Return the COCO detection JSON object of the planted annotations (the class ``unused`` has no box)."""
    b = planted.boxes
    xywh = np.column_stack([b.xyxy[:, :2], b.xyxy[:, 2:] - b.xyxy[:, :2]]).round(2).tolist()
    cats = np.asarray(planted.category_ids)
    return {"images": [{"id": i + 1, "file_name": f, "width": int(w), "height": int(h)}
                       for i, (f, w, h) in enumerate(zip(planted.files, planted.widths, planted.heights))],
            "annotations": [{"id": int(k) + 100, "image_id": int(i) + 1, "category_id": int(c), "bbox": box,
                             "area": round(box[2] * box[3], 2), "iscrowd": 0}
                            for k, i, c, box in zip(b.box_id.astype(int), b.image, cats[b.label], xywh)],
            "categories": [{"id": int(c), "name": n} for c, n in zip(planted.category_ids, planted.classes)]}


def coco_results(planted: PlantedSet, *, stray: int = 3) -> list[dict]:
    """Return the planted predictions as COCO results, plus `stray` predictions of an image id not in the data."""
    p = planted.predictions
    xywh = np.column_stack([p.xyxy[:, :2], p.xyxy[:, 2:] - p.xyxy[:, :2]]).round(2).tolist()
    cats = np.asarray(planted.category_ids)
    out = [{"image_id": int(i) + 1, "category_id": int(c), "bbox": box, "score": round(float(s), 4)}
           for i, c, box, s in zip(p.image, cats[p.label], xywh, p.score)]
    out += [{"image_id": 10 ** 7 + j, "category_id": int(cats[0]), "bbox": [1, 1, 5, 5], "score": 0.99}
            for j in range(stray)]
    return out


def write_coco(planted: PlantedSet, folder: Path | str) -> tuple[Path, Path]:
    """Write images/, instances.json (file names relative to images/) and predictions.json; return the two JSON paths."""
    folder = Path(folder)
    write_images(planted, folder / "images")
    (folder / "instances.json").write_text(json.dumps(coco_annotations(planted)))
    (folder / "predictions.json").write_text(json.dumps(coco_results(planted)))
    return folder / "instances.json", folder / "predictions.json"


def _yolo_lines_of(boxes: Boxes, widths, heights, i: int, starts, *, scored: bool) -> str:
    rows = []
    for j in range(starts[i], starts[i + 1]):
        x1, y1, x2, y2 = boxes.xyxy[j].astype(np.float64)
        w, h = float(widths[i]), float(heights[i])
        vals = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
        rows.append(" ".join([str(int(boxes.label[j]))] + [f"{v:.6f}" for v in vals]
                             + ([f"{float(boxes.score[j]):.4f}"] if scored else [])))
    return "\n".join(rows) + ("\n" if rows else "")


def write_yolo(planted: PlantedSet, folder: Path | str) -> tuple[Path, Path]:
    """Write a YOLO folder (images/, labels/, data.yaml) and a predictions folder; return (dataset, predictions).

    An image without boxes gets no label file (YOLO's convention); one prediction file names an
    image that is not in the data.
    """
    folder = Path(folder)
    data, preds = folder / "dataset", folder / "predictions"
    write_images(planted, data / "images")
    (data / "labels").mkdir(parents=True, exist_ok=True)
    preds.mkdir(parents=True, exist_ok=True)
    a_starts, p_starts = planted.boxes.starts(planted.n_images), planted.predictions.starts(planted.n_images)
    for i, name in enumerate(planted.files):
        stem = name.rsplit(".", 1)[0]
        if a_starts[i + 1] > a_starts[i]:
            (data / "labels" / f"{stem}.txt").write_text(
                _yolo_lines_of(planted.boxes, planted.widths, planted.heights, i, a_starts, scored=False))
        (preds / f"{stem}.txt").write_text(
            _yolo_lines_of(planted.predictions, planted.widths, planted.heights, i, p_starts, scored=True))
    (preds / "not_in_the_data.txt").write_text("0 0.5 0.5 0.2 0.2 0.99\n")
    names = "\n".join(f"  {k}: {n}" for k, n in enumerate(planted.classes))
    (data / "data.yaml").write_text(f"path: .\ntrain: images\nnames:\n{names}\n")
    return data, preds


def to_cleanlab(boxes: Boxes, predictions: Boxes, n_images: int, n_classes: int) -> tuple[list[dict], list[list]]:
    """Return (labels, predictions) in ``cleanlab.object_detection``'s format for the same boxes.

    ``labels[i] = {"bboxes": (L, 4), "labels": (L,)}``; ``predictions[i][k]`` is the (M_k, 5)
    array ``[x1, y1, x2, y2, score]`` of class k.
    """
    a, p = boxes.starts(n_images), predictions.starts(n_images)
    labels = [{"bboxes": boxes.xyxy[a[i]:a[i + 1]].astype(np.float64), "labels": boxes.label[a[i]:a[i + 1]]}
              for i in range(n_images)]
    preds = []
    for i in range(n_images):
        sl = slice(p[i], p[i + 1])
        rows = np.column_stack([predictions.xyxy[sl], predictions.score[sl]]).astype(np.float64)
        cls = predictions.label[sl]
        preds.append([rows[cls == k] for k in range(n_classes)])
    return labels, preds
