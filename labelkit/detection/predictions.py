"""A model's predicted boxes: COCO results JSON or a folder of YOLO prediction txt files.

- COCO results (what ``pycocotools``' ``loadRes`` reads, and detectron2 / mmdetection write): a
  list of ``{"image_id" | "file_name", "category_id" | "category_name", "bbox": [x, y, w, h],
  "score"}`` (or an object holding such a list under ``annotations``).
- YOLO (``yolo predict save_txt=True save_conf=True``): one ``<image sub-path>.txt`` per image
  with ``class cx cy w h score`` lines, normalised to [0, 1].

Predictions of images that are not in the data are skipped and counted in a warning; a
prediction of an unknown class, without a score or with a malformed box is a one-line error
naming the file and the prediction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labelkit.detection.formats import _bbox_array, _load_json, _relative_files, _yolo_lines
from labelkit.detection.match import Boxes
from labelkit.errors import LabelkitError


def read_pred_boxes(path: Path | str, *, ids, widths, heights, classes: list[str], category_ids: list[int],
                    coco_ids=None) -> tuple[Boxes, list[str]]:
    """Return (the predicted Boxes, warnings); ``image`` indexes `ids`.

    Parameters
    ----------
    path : path
        A COCO results ``.json`` or a folder of YOLO ``.txt`` prediction files.
    ids : sequence of str
        The items ids (image paths relative to the image root).
    widths, heights : array-like
        Image sizes in pixels (YOLO's normalised boxes need them).
    classes, category_ids : lists
        The workspace classes and the id each has in the user's files.
    coco_ids : sequence, optional
        COCO image id of each item (COCO results refer to images by it).
    """
    path = Path(path)
    if not path.exists():
        raise LabelkitError(f"The 'pred_boxes' parameter of issues must be an existing file or folder. "
                            f"Got {str(path)!r} instead.")
    keys = _image_keys(ids, coco_ids)
    if path.is_dir():
        return _read_yolo_preds(path, keys, np.asarray(widths, np.float64), np.asarray(heights, np.float64), classes)
    return _read_coco_results(path, keys, classes, category_ids)


def _image_keys(ids, coco_ids) -> dict:
    """Return {key: item position} for every way a prediction may name an image (COCO id, path, stem)."""
    keys: dict = {}
    stems: dict[str, set[int]] = {}
    for i, rid in enumerate(ids):
        stem = str(rid).rsplit(".", 1)[0]
        stems.setdefault(stem, set()).add(i)
        stems.setdefault(stem.rsplit("/", 1)[-1], set()).add(i)
    keys.update({s: next(iter(v)) for s, v in stems.items() if len(v) == 1})  # ambiguous stems name no image
    keys.update({str(rid): i for i, rid in enumerate(ids)})
    if coco_ids is not None:
        keys.update({("coco", c): i for i, c in enumerate(coco_ids) if c is not None and c == c})
    return keys


def _read_coco_results(path: Path, keys: dict, classes: list[str], category_ids: list[int]) -> tuple[Boxes, list[str]]:
    data = _load_json(path)
    if isinstance(data, dict):
        data = data.get("annotations")
    if not isinstance(data, list) or any(not isinstance(p, dict) for p in data):
        raise LabelkitError(f"{path}: not COCO results (expected a list of {{'image_id', 'category_id', 'bbox', 'score'}}).")
    names = list(range(len(data)))
    image = np.fromiter((_image_of(p, keys) for p in data), np.int64, len(data))
    by_id = {c: i for i, c in enumerate(category_ids)}
    by_name = {c: i for i, c in enumerate(classes)}
    label = np.fromiter((by_id.get(p["category_id"], -1) if "category_id" in p else
                         by_name.get(p.get("category_name", p.get("label")), -1) for p in data), np.int64, len(data))
    bad = np.flatnonzero(label < 0)
    if len(bad):
        p = data[bad[0]]
        got = p.get("category_id", p.get("category_name", p.get("label")))
        raise LabelkitError(f"{path}: prediction {bad[0]} has category {got!r}, which is not a class of the workspace "
                            f"(category ids {category_ids[:10]}{'…' if len(category_ids) > 10 else ''}).")
    score = _scores(path, [p.get("score") for p in data])
    xywh = _bbox_array(path, [p.get("bbox") for p in data], names, what="prediction")
    xyxy = np.column_stack([xywh[:, 0], xywh[:, 1], xywh[:, 0] + xywh[:, 2], xywh[:, 1] + xywh[:, 3]])
    return _known(path, image, label, xyxy, score)


def _image_of(pred: dict, keys: dict) -> int:
    if "image_id" in pred:
        hit = keys.get(("coco", pred["image_id"]))
        if hit is not None:
            return hit
        return keys.get(str(pred["image_id"]), -1)
    return keys.get(str(pred.get("file_name", "")).replace("\\", "/"), -1)


def _scores(path: Path, raw: list) -> np.ndarray:
    try:
        score = np.asarray(raw, np.float64)
        if score.shape == (len(raw),) and np.isfinite(score).all():
            bad = np.flatnonzero((score < 0) | (score > 1))
            if not len(bad):
                return score.astype(np.float32)
            raise LabelkitError(f"{path}: prediction {bad[0]} has score {raw[bad[0]]!r}; scores must lie in [0, 1].")
    except (TypeError, ValueError):
        pass
    j = next(j for j, s in enumerate(raw) if not isinstance(s, (int, float)) or isinstance(s, bool) or s != s)
    raise LabelkitError(f"{path}: prediction {j} has score {raw[j]!r}; every prediction needs a number 'score' in [0, 1].")


def _read_yolo_preds(folder: Path, keys: dict, widths: np.ndarray, heights: np.ndarray,
                     classes: list[str]) -> tuple[Boxes, list[str]]:
    files = sorted(_relative_files(folder, {".txt"}))
    rows = [(keys.get(f[:-4], -1), f) for f in files]
    image, label, numbers, box_ids = _yolo_lines(folder, rows, n_fields=6)
    bad = np.flatnonzero((label < 0) | (label >= len(classes)))
    if len(bad):
        raise LabelkitError(f"{folder}/{box_ids[bad[0]].replace(':', ' line ')}: class {label[bad[0]]} is not one of "
                            f"the {len(classes)} classes (0..{len(classes) - 1}).")
    score = numbers[:, 4]
    out = np.flatnonzero((score < 0) | (score > 1))
    if len(out):
        raise LabelkitError(f"{folder}/{box_ids[out[0]].replace(':', ' line ')}: score {score[out[0]]:g} is not in [0, 1].")
    known = image >= 0
    w = np.where(known, widths[np.maximum(image, 0)] if len(widths) else 0, np.nan)
    h = np.where(known, heights[np.maximum(image, 0)] if len(heights) else 0, np.nan)
    cx, cy, bw, bh = numbers[:, 0], numbers[:, 1], numbers[:, 2], numbers[:, 3]
    xyxy = np.column_stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
    return _known(folder, image, label, xyxy, score.astype(np.float32))


def _known(path: Path, image, label, xyxy, score) -> tuple[Boxes, list[str]]:
    """Return the predictions of known images (sizes checked) and a warning counting the others."""
    known = image >= 0
    warnings = []
    if (~known).any():
        warnings.append(f"{int((~known).sum())} predictions in {path.name} are for images not in the data; skipped.")
    xyxy = np.asarray(xyxy, np.float64)[known]
    flipped = np.flatnonzero((xyxy[:, 2] < xyxy[:, 0]) | (xyxy[:, 3] < xyxy[:, 1]))
    if len(flipped):
        raise LabelkitError(f"{path}: prediction {np.flatnonzero(known)[flipped[0]]} has a box of negative size.")
    return Boxes.make(image[known], label[known], xyxy, score[known]), warnings
