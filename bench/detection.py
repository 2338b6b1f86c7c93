"""Object detection label issues: labelkit against ``cleanlab.object_detection`` on the same planted data.

Stage ``compare``: a planted set (:func:`labelkit.detection.planted.make_planted`: objects per
image, a detector's predictions with a few misses and low-score clutter, and one planted error
— swap, badloc or overlooked — in 8 % of the images per kind) is written as COCO files, read back
by labelkit's readers, and scored by

- labelkit: :func:`labelkit.detection.scores.find_detection_issues` (all images at once);
- cleanlab: ``cleanlab.object_detection.filter.find_label_issues`` on the same boxes in its
  list-of-dicts format (built before the clock starts), and, as an upper bound no user can
  reach, its ``rank.get_label_quality_scores`` at the threshold that maximises F1 on the answer key.

Printed: image precision / recall / F1 against the answer key, per-kind precision / recall for
labelkit, seconds of each and their ratio, all from the same run.

Stage ``scale``: 100,000 images with about 10 boxes each (in memory, then as COCO JSON files):
seconds to read the annotations and predictions and to score them.

    python bench/detection.py [--images 2000] [--scale-images 100000] [--stages compare scale]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from labelkit.detection.formats import read_coco
from labelkit.detection.planted import PLANTED_KINDS, coco_annotations, coco_results, make_planted, to_cleanlab, write_coco
from labelkit.detection.predictions import read_pred_boxes
from labelkit.detection.scores import find_detection_issues


def prf(flag: np.ndarray, truth: np.ndarray) -> dict:
    tp = int((flag & truth).sum())
    p, r = tp / max(int(flag.sum()), 1), tp / max(int(truth.sum()), 1)
    return {"flagged": int(flag.sum()), "precision": round(p, 3), "recall": round(r, 3),
            "f1": round(2 * p * r / max(p + r, 1e-12), 3)}


def read_back(folder: Path):
    src = read_coco(folder / "instances.json", images=folder / "images")
    preds, _ = read_pred_boxes(folder / "predictions.json", ids=src.images["id"].tolist(), widths=src.images["width"],
                               heights=src.images["height"], classes=src.classes, category_ids=src.category_ids,
                               coco_ids=src.images["coco_id"].tolist())
    return src, preds


def compare(n_images: int, seed: int) -> dict:
    from cleanlab.object_detection.filter import find_label_issues
    from cleanlab.object_detection.rank import get_label_quality_scores

    planted = make_planted(n_images, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        write_coco(planted, Path(tmp))
        src, preds = read_back(Path(tmp))
    truth = planted.kind != ""
    start = time.perf_counter()
    ours = find_detection_issues(src.boxes, preds, len(src.images))
    ours_s = time.perf_counter() - start
    labels, cl_preds = to_cleanlab(src.boxes, preds, len(src.images), len(src.classes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        theirs = np.asarray(find_label_issues(labels, cl_preds), bool)
        theirs_s = time.perf_counter() - start
        quality = get_label_quality_scores(labels, cl_preds, verbose=False)
    best = max((prf(quality <= t, truth) for t in np.unique(quality)), key=lambda d: d["f1"])
    return {"images": n_images, "boxes": len(src.boxes), "predictions": len(preds),
            "planted": {k: int((planted.kind == k).sum()) for k in PLANTED_KINDS},
            "labelkit": {**prf(ours.is_label_issue, truth), "seconds": round(ours_s, 4),
                         "per_kind": {k: prf(getattr(ours, f"is_{k}_issue"), planted.kind == k) for k in PLANTED_KINDS}},
            "cleanlab_find_label_issues": {**prf(theirs, truth), "seconds": round(theirs_s, 3)},
            "cleanlab_scores_at_best_threshold": best,
            "time_ratio_cleanlab_over_labelkit": round(theirs_s / max(ours_s, 1e-9), 1)}


def scale(n_images: int, seed: int) -> dict:
    # Objects 6-20 % of the side and up to 19 per image: about 10 boxes per image after overlaps.
    planted = make_planted(n_images, max_boxes=19, empty=0.05, box_size=(0.06, 0.2), size=(320, 640), seed=seed)
    start = time.perf_counter()
    found = find_detection_issues(planted.boxes, planted.predictions, n_images)
    in_memory = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        # Annotation and prediction files only: the image files are not read to score boxes.
        (Path(tmp) / "images").mkdir()
        (Path(tmp) / "instances.json").write_text(json.dumps(coco_annotations(planted)))
        (Path(tmp) / "predictions.json").write_text(json.dumps(coco_results(planted)))
        start = time.perf_counter()
        src, preds = read_back(Path(tmp))
        read_s = time.perf_counter() - start
    start = time.perf_counter()
    again = find_detection_issues(src.boxes, preds, len(src.images))
    files_s = time.perf_counter() - start
    return {"images": n_images, "boxes": len(planted.boxes), "predictions": len(planted.predictions),
            "score_seconds": round(in_memory, 2), "read_files_seconds": round(read_s, 2),
            "score_read_boxes_seconds": round(files_s, 2), "flagged": int(found.is_label_issue.sum()),
            "same_flags_after_files": bool(np.array_equal(found.is_label_issue, again.is_label_issue)),
            "per_kind": {k: prf(getattr(found, f"is_{k}_issue"), planted.kind == k) for k in PLANTED_KINDS}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--scale-images", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", nargs="+", default=["compare", "scale"], choices=["compare", "scale"])
    args = parser.parse_args(argv)
    out = {}
    if "compare" in args.stages:
        out["compare"] = compare(args.images, args.seed)
        print(json.dumps({"compare": out["compare"]}, indent=1), flush=True)
    if "scale" in args.stages:
        out["scale"] = scale(args.scale_images, args.seed)
        print(json.dumps({"scale": out["scale"]}, indent=1), flush=True)
    return out


if __name__ == "__main__":
    main()
