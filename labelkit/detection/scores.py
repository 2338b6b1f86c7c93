"""Label issues of annotated boxes, from a model's predicted boxes: swap, badloc, overlooked.

Every score is in [0, 1], lower is worse, and a box (or prediction) is flagged when its score is
below ``threshold``:

- ``swap`` (per annotated box): 1 minus how much more the model believes another class than the
  given one at that place: a confident prediction of another class that the box owns (IoU ≥
  ``match_iou``) gives ``1 - max(0, p_other - p_same)``.
- ``badloc`` (per annotated box): the IoU of the box with the best-overlapping confident
  prediction of its class that no other box owns; 1 when there is none (no evidence).
- ``overlooked`` (per prediction, pooled per image): ``1 - p`` for a confident prediction that no
  annotated box owns and no misplaced box claims (IoU < ``cover_iou`` with everything else).

A prediction is *owned* by the annotated box it matches (IoU ≥ ``match_iou``; a box of the
prediction's class first, then the best IoU), so one prediction is evidence about one box only:
the partition (owned / claimed by a misplaced box / overlooked) is what keeps the three kinds
apart. The image's ``label_quality`` is the minimum of its scores.

How this differs from ``cleanlab.object_detection`` (ObjectLab, Tkachenko et al. 2023), which
labelkit keeps as the reference (:func:`cleanlab_reference`, ``bench/detection.py``): ObjectLab
compares boxes through a similarity that mixes IoU with ``exp(-0.1 * centre distance in
pixels)`` (not scale-free), counts only predictions above 0.95 as confident for swap and
overlooked, calls a prediction overlooked only when it touches no box at all (IoU 0), pools
per-box scores with a softmin and flags a box against a per-class threshold derived from
average precision. labelkit uses IoU only, one confidence threshold, the ownership rule above,
min pooling and one flag threshold, and computes every image at once: the pairs are the boxes
of each image (:func:`labelkit.detection.match.pairs_within`), never a Python loop over images.

References
----------
Tkachenko, Thyagarajan, Mueller. "ObjectLab: Automated Diagnosis of Mislabeled Images in
Object Detection Data." ICML workshop on Data-centric Machine Learning Research, 2023.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelkit.detection.match import Boxes, image_blocks, iou, pairs_within, segment_best
from labelkit.errors import check_in_range

KINDS = ("swap", "badloc", "overlooked")


@dataclass
class DetectionIssues:
    """What :func:`find_detection_issues` found: per image, per annotated box, per prediction.

    Per image (length ``n_images``): ``<kind>_score`` float32 and ``is_<kind>_issue`` bool for
    each kind of :data:`KINDS`, ``label_quality``, ``is_label_issue``. Per annotated box (the
    order of ``boxes``): ``box_swap``, ``box_badloc`` scores, ``box_other`` (position in
    ``predictions`` of the other-class prediction the swap score rests on; -1 none) and its IoU
    ``box_other_iou``, ``box_loc`` (the prediction of the box's class the badloc score rests on,
    whose IoU is ``box_badloc``; -1 none). Per prediction:
    ``pred_overlooked`` score, ``pred_owner`` (the box that owns it, -1 none) and ``pred_iou``
    (its best IoU with any annotated box of its image).
    """

    swap_score: np.ndarray
    badloc_score: np.ndarray
    overlooked_score: np.ndarray
    is_swap_issue: np.ndarray
    is_badloc_issue: np.ndarray
    is_overlooked_issue: np.ndarray
    label_quality: np.ndarray
    is_label_issue: np.ndarray
    box_swap: np.ndarray
    box_badloc: np.ndarray
    box_other: np.ndarray
    box_other_iou: np.ndarray
    box_loc: np.ndarray
    pred_overlooked: np.ndarray
    pred_owner: np.ndarray
    pred_iou: np.ndarray
    threshold: float = 0.5


def find_detection_issues(boxes: Boxes, predictions: Boxes, n_images: int, *, min_score: float = 0.5,
                          match_iou: float = 0.5, cover_iou: float = 0.1, threshold: float = 0.5,
                          max_pairs: int = 4_000_000) -> DetectionIssues:
    """Return the swap / badloc / overlooked scores and flags of every box and image.

    Parameters
    ----------
    boxes : Boxes
        The annotated boxes (``image`` in ``[0, n_images)``).
    predictions : Boxes
        The model's boxes with ``score``; ideally out-of-sample (a model not trained on these images).
    n_images : int
        Number of images; an image with no box or no prediction gets scores of 1.
    min_score : float
        A prediction below this confidence is not evidence of anything.
    match_iou : float
        IoU from which a prediction and a box are the same object.
    cover_iou : float
        IoU below which a prediction does not touch a box (badloc looks from here up).
    threshold : float
        A score below this flags its box, prediction and image.
    max_pairs : int
        Box pairs scored at once (memory bound); images are never cut.
    """
    for name, value in (("min_score", min_score), ("match_iou", match_iou), ("cover_iou", cover_iou),
                        ("threshold", threshold)):
        check_in_range(value, name, "find_detection_issues", low=0, high=1)
    if predictions.score is None:
        raise ValueError("predictions need a score per box")
    box_out = [np.ones(len(boxes), np.float32), np.ones(len(boxes), np.float32),
               np.full(len(boxes), -1, np.int64), np.zeros(len(boxes), np.float32), np.full(len(boxes), -1, np.int64)]
    pred_out = [np.ones(len(predictions), np.float32), np.full(len(predictions), -1, np.int64),
                np.zeros(len(predictions), np.float32)]
    a_starts, b_starts = boxes.starts(n_images), predictions.starts(n_images)
    for lo, hi in image_blocks(np.diff(a_starts), np.diff(b_starts), max_pairs=max_pairs):
        a_sl, b_sl = slice(a_starts[lo], a_starts[hi]), slice(b_starts[lo], b_starts[hi])
        if a_sl.start == a_sl.stop and b_sl.start == b_sl.stop:
            continue
        got = _score_block(boxes.take(a_sl), predictions.take(b_sl), n_images,
                           min_score=min_score, match_iou=match_iou, cover_iou=cover_iou)
        for out, part in zip(box_out, got[:5]):
            out[a_sl] = part
        for j in (2, 4):  # block-local prediction positions -> global
            box_out[j][a_sl] = np.where(got[j] >= 0, got[j] + b_sl.start, -1)
        pred_out[0][b_sl] = got[5]
        pred_out[1][b_sl] = np.where(got[6] >= 0, got[6] + a_sl.start, -1)
        pred_out[2][b_sl] = got[7]
    return _per_image(boxes, predictions, n_images, *box_out, *pred_out, threshold=threshold)


def _score_block(ann: Boxes, pred: Boxes, n_images: int, *, min_score: float, match_iou: float,
                 cover_iou: float) -> tuple[np.ndarray, ...]:
    """Return (swap, badloc, other, other_iou, loc, overlooked, owner, pred_iou) of one block; positions are block-local."""
    n_a, n_b = len(ann), len(pred)
    ia, ib = pairs_within(ann.image, pred.image, n_images)
    ov = iou(ann.xyxy[ia], pred.xyxy[ib])
    same = ann.label[ia] == pred.label[ib]
    p = pred.score[ib]
    confident = p >= min_score
    # Ownership: each prediction goes to the box it matches, a box of its own class first.
    owner_key = np.where(ov >= match_iou, ov + same.astype(np.float32), -np.inf).astype(np.float32)
    _, owner_pair = segment_best(owner_key, ib, n_b)
    owner = _at(ia, owner_pair, -1)
    owned_by_me = owner[ib] == ia
    # Swap: the most confident other-class prediction this box owns, against its own class.
    other = np.where(owned_by_me & ~same & confident, p, -np.inf).astype(np.float32)
    p_other, other_pair = segment_best(other, ia, n_a)
    p_same, _ = segment_best(np.where(owned_by_me & same, p, -np.inf).astype(np.float32), ia, n_a)
    swap = (1 - np.maximum(0, np.maximum(p_other, 0) - np.maximum(p_same, 0))).astype(np.float32)
    # Badloc: the best-overlapping confident prediction of the class that no other box owns.
    free = (owner[ib] == -1) | owned_by_me
    loc = np.where(same & confident & free & (ov >= cover_iou), ov, -np.inf).astype(np.float32)
    best_iou, loc_pair = segment_best(loc, ia, n_a)
    badloc = np.where(loc_pair >= 0, best_iou, 1).astype(np.float32)
    # A prediction a misplaced box rests on is that box's, not an overlooked object.
    claimed = np.zeros(n_b, bool)
    claimed[ib[loc_pair[(loc_pair >= 0) & (badloc < match_iou)]]] = True
    overlooked = np.where((pred.score >= min_score) & (owner == -1) & ~claimed, 1 - pred.score, 1).astype(np.float32)
    other_pred, other_iou, loc_pred = _at(ib, other_pair, -1), _at(ov, other_pair, 0), _at(ib, loc_pair, -1)
    pred_iou, _ = segment_best(ov, ib, n_b)
    return swap, badloc, other_pred, other_iou, loc_pred, overlooked, owner, np.maximum(pred_iou, 0)


def _at(values: np.ndarray, pos: np.ndarray, fill) -> np.ndarray:
    """Return ``values[pos]``, `fill` where ``pos`` is -1 (also when `values` is empty)."""
    out = np.full(len(pos), fill, values.dtype)
    hit = pos >= 0
    out[hit] = values[pos[hit]]
    return out


def _image_min(values: np.ndarray, image: np.ndarray, n_images: int) -> np.ndarray:
    """Return the minimum of `values` per image (1 where an image has none)."""
    out = np.ones(n_images, np.float32)
    if len(values):
        np.minimum.at(out, image, values)
    return out


def _per_image(boxes: Boxes, predictions: Boxes, n_images: int, swap, badloc, other, other_iou, loc,
               overlooked, owner, pred_iou, *, threshold: float) -> DetectionIssues:
    """Return the DetectionIssues of per-box and per-prediction scores (min pooling per image)."""
    per = {"swap": _image_min(swap, boxes.image, n_images), "badloc": _image_min(badloc, boxes.image, n_images),
           "overlooked": _image_min(overlooked, predictions.image, n_images)}
    flags = {k: v < threshold for k, v in per.items()}
    quality = np.minimum(np.minimum(per["swap"], per["badloc"]), per["overlooked"])
    return DetectionIssues(
        swap_score=per["swap"], badloc_score=per["badloc"], overlooked_score=per["overlooked"],
        is_swap_issue=flags["swap"], is_badloc_issue=flags["badloc"], is_overlooked_issue=flags["overlooked"],
        label_quality=quality, is_label_issue=flags["swap"] | flags["badloc"] | flags["overlooked"],
        box_swap=swap, box_badloc=badloc, box_other=other, box_other_iou=other_iou, box_loc=loc,
        pred_overlooked=overlooked, pred_owner=owner, pred_iou=pred_iou, threshold=threshold)


def worst_of_image(values: np.ndarray, image: np.ndarray, n_images: int) -> np.ndarray:
    """Return, per image, the position of its lowest value (-1 where the image has none)."""
    _, where = segment_best(-np.asarray(values, np.float32), image, n_images)
    return where


def issue_reasons(found: DetectionIssues, boxes: Boxes, predictions: Boxes, classes: list[str],
                  n_images: int) -> np.ndarray:
    """Return one reason per image (object array; None where the image is not flagged), worst kind first.

    Each part names the box (its ``box_id``), the IoU and the prediction's score, e.g. ``box 17
    (cat): the model sees dog (score 0.93) at IoU 0.88``. Strings are built for flagged images only.
    """
    names = np.asarray(list(classes) + ["?"], object)
    ids = boxes.box_id if boxes.box_id is not None else np.arange(len(boxes)).astype(str).astype(object)
    worst = {"swap": worst_of_image(found.box_swap, boxes.image, n_images),
             "badloc": worst_of_image(found.box_badloc, boxes.image, n_images),
             "overlooked": worst_of_image(found.pred_overlooked, predictions.image, n_images)}
    parts = []
    for kind in KINDS:
        flagged = np.flatnonzero(getattr(found, f"is_{kind}_issue"))
        where = worst[kind][flagged]
        score = getattr(found, f"{kind}_score")[flagged]
        if kind == "overlooked":
            text = [_overlooked_text(names[predictions.label[j]], predictions.score[j], predictions.xyxy[j],
                                     found.pred_iou[j]) for j in where]
        else:
            pred = found.box_other if kind == "swap" else found.box_loc
            overlap = found.box_other_iou if kind == "swap" else found.box_badloc
            text = [_box_text(kind, ids[j], names[boxes.label[j]], pred[j], overlap[j], predictions, names)
                    for j in where]
        parts.append((flagged, score, text))
    out = np.full(n_images, None, object)
    collected: dict[int, list[tuple[float, str]]] = {}
    for flagged, score, text in parts:
        for i, s, t in zip(flagged.tolist(), score.tolist(), text):
            collected.setdefault(i, []).append((s, t))
    for i, items in collected.items():
        out[i] = "; ".join(t for _, t in sorted(items, key=lambda st: st[0]))
    return out


def _box_text(kind: str, box_id, given: str, pred: int, overlap: float, predictions: Boxes, names) -> str:
    if pred < 0:
        return f"box {box_id} ({given}): no prediction"
    cls, p = names[predictions.label[pred]], float(predictions.score[pred])
    if kind == "swap":
        return f"box {box_id} ({given}): the model sees {cls} (score {p:.2f}) at IoU {overlap:.2f}"
    return f"box {box_id} ({given}): the best {cls} prediction (score {p:.2f}) overlaps it at IoU {overlap:.2f}"


def _overlooked_text(cls: str, p: float, xyxy: np.ndarray, overlap: float) -> str:
    x1, y1, x2, y2 = (int(round(float(v))) for v in xyxy)
    return (f"no box covers a {cls} prediction (score {float(p):.2f}) at [{x1}, {y1}, {x2}, {y2}]; "
            f"best IoU with an annotation {float(overlap):.2f}")
