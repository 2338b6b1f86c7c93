"""Object detection (issue 30): COCO / YOLO readers, box scores, box statistics, planted sets."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from labelkit.detection.formats import boxes_from_table, boxes_table, is_detection_source, read_coco, read_yolo
from labelkit.detection.match import Boxes, iou, pairs_within, segment_best
from labelkit.detection.planted import (PLANTED_KINDS, coco_annotations, make_planted, to_cleanlab, write_coco,
                                        write_images, write_yolo)
from labelkit.detection.predictions import read_pred_boxes
from labelkit.detection.scores import find_detection_issues, issue_reasons
from labelkit.detection.stats import box_statistics
from labelkit.errors import LabelkitError


@pytest.fixture(scope="module")
def planted():
    return make_planted(400, seed=3)


@pytest.fixture(scope="module")
def written(planted, tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    inst, preds = write_coco(planted, root / "coco")
    data, ypreds = write_yolo(planted, root / "yolo")
    return {"root": root, "instances": inst, "predictions": preds, "yolo": data, "yolo_predictions": ypreds}


def _preds_of(src, path):
    return read_pred_boxes(path, ids=src.images["id"].tolist(), widths=src.images["width"],
                           heights=src.images["height"], classes=src.classes, category_ids=src.category_ids,
                           coco_ids=src.images["coco_id"].tolist())


def _precision_recall(flag, truth):
    tp = int((flag & truth).sum())
    return tp / max(int(flag.sum()), 1), tp / max(int(truth.sum()), 1)


# --- pairs within an image ---------------------------------------------------------------------


def test_pairs_within_are_exactly_the_same_image_pairs():
    rng = np.random.default_rng(0)
    a = np.sort(rng.integers(0, 30, 200))
    b = np.sort(rng.integers(0, 30, 150))
    ia, ib = pairs_within(a, b, 30)
    got = set(zip(ia.tolist(), ib.tolist()))
    want = {(i, j) for i in range(len(a)) for j in range(len(b)) if a[i] == b[j]}
    assert got == want and len(ia) == len(want)
    assert (np.diff(ia) >= 0).all()


def test_iou_and_segment_best():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    assert iou(a, b).tolist() == pytest.approx([1.0, 50 / 150, 0.0])
    best, where = segment_best(np.array([0.2, 0.9, -np.inf, 0.5], np.float32), np.array([0, 0, 1, 2]), 4)
    assert best.tolist() == [pytest.approx(0.9), -np.inf, 0.5, -np.inf] and where.tolist() == [1, -1, 3, -1]


# --- scores on the planted set -----------------------------------------------------------------


def test_planted_kinds_reach_precision_and_recall(planted):
    found = find_detection_issues(planted.boxes, planted.predictions, planted.n_images)
    for kind in PLANTED_KINDS:
        p, r = _precision_recall(getattr(found, f"is_{kind}_issue"), planted.kind == kind)
        assert p >= 0.9 and r >= 0.8, (kind, p, r)
    p, r = _precision_recall(found.is_label_issue, planted.kind != "")
    assert p >= 0.9 and r >= 0.8
    assert ((found.label_quality < 0.5) == found.is_label_issue).all()
    assert ((0 <= found.label_quality) & (found.label_quality <= 1)).all()


def test_f1_at_least_cleanlabs_on_the_same_inputs():
    from cleanlab.object_detection.filter import find_label_issues

    ps = make_planted(150, seed=5)
    labels, preds = to_cleanlab(ps.boxes, ps.predictions, ps.n_images, len(ps.classes))
    theirs = find_label_issues(labels, preds)
    ours = find_detection_issues(ps.boxes, ps.predictions, ps.n_images).is_label_issue

    def f1(flag):
        p, r = _precision_recall(flag, ps.kind != "")
        return 2 * p * r / max(p + r, 1e-9)

    assert f1(ours) >= f1(theirs) and f1(ours) > 0.9


def test_reasons_name_the_box_the_iou_and_the_score(planted):
    found = find_detection_issues(planted.boxes, planted.predictions, planted.n_images)
    reasons = issue_reasons(found, planted.boxes, planted.predictions, planted.classes, planted.n_images)
    assert (reasons != None).tolist() == found.is_label_issue.tolist()  # noqa: E711
    swap = np.flatnonzero(found.is_swap_issue & ~found.is_badloc_issue & ~found.is_overlooked_issue)[0]
    a = planted.boxes.starts(planted.n_images)
    worst = a[swap] + int(np.argmin(found.box_swap[a[swap]:a[swap + 1]]))
    other = found.box_other[worst]
    assert reasons[swap] == (f"box {planted.boxes.box_id[worst]} ({planted.classes[planted.boxes.label[worst]]}): "
                             f"the model sees {planted.classes[planted.predictions.label[other]]} "
                             f"(score {planted.predictions.score[other]:.2f}) at IoU {found.box_other_iou[worst]:.2f}")
    assert any(r and r.startswith("no box covers a ") and "best IoU with an annotation" in r for r in reasons)
    assert any(r and "prediction (score" in r and "overlaps it at IoU" in r for r in reasons)


def test_images_without_boxes_and_unused_class():
    classes = ["cat", "dog", "unused"]
    boxes = Boxes.make([1], [0], [[10, 10, 50, 50]], box_id=np.array(["7"], object))
    preds = Boxes.make([0, 1, 1, 2], [2, 0, 1, 1], [[5, 5, 30, 30], [11, 10, 50, 51], [60, 60, 90, 90], [0, 0, 9, 9]],
                       [0.9, 0.95, 0.3, 0.97])
    found = find_detection_issues(boxes, preds, 4)
    # Image 0: no box, a confident 'unused' prediction -> overlooked; image 3: nothing at all -> clean.
    assert found.is_overlooked_issue.tolist() == [True, False, True, False]
    assert found.is_label_issue.tolist() == [True, False, True, False]
    assert found.label_quality[3] == 1.0 and found.overlooked_score[0] == pytest.approx(0.1)
    reasons = issue_reasons(found, boxes, preds, classes, 4)
    assert reasons[0].startswith("no box covers a unused prediction (score 0.90) at [5, 5, 30, 30]")
    assert reasons[1] is None and reasons[3] is None
    none = find_detection_issues(boxes.take(np.zeros(1, bool)), Boxes.empty(scored=True), 4)
    assert not none.is_label_issue.any() and (none.label_quality == 1).all()


def test_ownership_keeps_kinds_apart():
    # Two dogs side by side; the second box is shifted: badloc on it only, not overlooked, not swap.
    boxes = Boxes.make([0, 0], [1, 1], [[0, 0, 20, 20], [45, 0, 65, 20]], box_id=np.array(["a", "b"], object))
    preds = Boxes.make([0, 0], [1, 1], [[0, 0, 20, 20], [30, 0, 50, 20]], [0.9, 0.9])
    found = find_detection_issues(boxes, preds, 1)
    assert found.box_badloc.tolist() == pytest.approx([1.0, 5 * 20 / (35 * 20)])
    assert found.is_badloc_issue[0] and not found.is_overlooked_issue[0] and not found.is_swap_issue[0]
    # A swap: the box is a cat where the model sees a dog; a low-score cat prediction there as well.
    boxes = Boxes.make([0], [0], [[0, 0, 20, 20]], box_id=np.array(["c"], object))
    preds = Boxes.make([0, 0], [1, 0], [[1, 0, 20, 20], [0, 0, 20, 19]], [0.92, 0.2])
    found = find_detection_issues(boxes, preds, 1)
    assert found.box_swap[0] == pytest.approx(1 - (0.92 - 0.2)) and found.is_swap_issue[0]
    assert not found.is_badloc_issue[0] and not found.is_overlooked_issue[0]


def test_scoring_is_vectorised_at_scale():
    ps = make_planted(20000, max_boxes=10, seed=1)
    start = time.perf_counter()
    found = find_detection_issues(ps.boxes, ps.predictions, ps.n_images, max_pairs=200_000)
    seconds = time.perf_counter() - start
    whole = find_detection_issues(ps.boxes, ps.predictions, ps.n_images)
    assert np.array_equal(found.is_label_issue, whole.is_label_issue)  # blocks give the same answer
    assert seconds < 20, seconds


# --- COCO and YOLO files ------------------------------------------------------------------------


def test_coco_and_yolo_give_the_same_boxes_and_flags(planted, written):
    coco = read_coco(written["instances"], images=written["root"] / "coco" / "images")
    yolo = read_yolo(written["yolo"])
    assert coco.classes == yolo.classes == planted.classes
    assert coco.images["id"].tolist() == yolo.images["id"].tolist() == planted.files
    assert len(coco.boxes) == len(yolo.boxes) == len(planted.boxes)
    assert np.abs(coco.boxes.xyxy - yolo.boxes.xyxy).max() < 0.02
    assert coco.boxes.box_id[0] == str(int(planted.boxes.box_id[0]) + 100) and yolo.boxes.box_id[0].endswith(".txt:1")
    flags = []
    for src, path in ((coco, written["predictions"]), (yolo, written["yolo_predictions"])):
        preds, warnings = _preds_of(src, path)
        assert len(preds) == len(planted.predictions) and len(warnings) == 1 and "not in the data" in warnings[0]
        found = find_detection_issues(src.boxes, preds, len(src.images))
        flags.append(np.column_stack([getattr(found, f"is_{k}_issue") for k in PLANTED_KINDS]))
        for j, kind in enumerate(PLANTED_KINDS):
            p, r = _precision_recall(flags[-1][:, j], planted.kind == kind)
            assert p >= 0.9 and r >= 0.8
    assert np.array_equal(flags[0], flags[1])


def test_detection_sources_are_recognised(written):
    assert is_detection_source(written["instances"]) and is_detection_source(written["yolo"])
    assert not is_detection_source(written["predictions"]) and not is_detection_source(written["root"])


def test_boxes_table_round_trip(planted):
    table = boxes_table(planted.files, planted.boxes, planted.classes)
    assert table.column_names == ["id", "box_id", "label", "label_id", "x1", "y1", "x2", "y2"]
    back = boxes_from_table(table, planted.files)
    assert np.array_equal(back.image, planted.boxes.image) and np.allclose(back.xyxy, planted.boxes.xyxy)


def _small_coco(tmp_path, **change):
    ps = make_planted(6, seed=4, empty=0.0, noise=0.0)
    write_images(ps, tmp_path / "images")
    data = coco_annotations(ps)
    for key, fn in change.items():
        fn(data)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path, data


def test_coco_bad_input_is_one_line_naming_file_and_annotation(tmp_path):
    def unknown_category(d):
        d["annotations"][2]["category_id"] = 99

    path, data = _small_coco(tmp_path, a=unknown_category)
    ann = data["annotations"][2]["id"]
    with pytest.raises(LabelkitError) as err:
        read_coco(path, images=tmp_path / "images")
    assert str(err.value) == f"{path}: annotation {ann} has category_id 99, which is not in 'categories'."

    def unknown_image(d):
        d["annotations"][0]["image_id"] = 555

    path, data = _small_coco(tmp_path, a=unknown_image)
    with pytest.raises(LabelkitError, match=rf"annotation {data['annotations'][0]['id']} has image_id 555, which is not"):
        read_coco(path, images=tmp_path / "images")

    def bad_bbox(d):
        d["annotations"][1]["bbox"] = [1, 2, 3]

    path, data = _small_coco(tmp_path, a=bad_bbox)
    with pytest.raises(LabelkitError, match=r"annotation \d+ has bbox \[1, 2, 3\]; expected \[x, y, width, height\]"):
        read_coco(path, images=tmp_path / "images")


def test_coco_bad_boxes_and_missing_files_make_rows_unusable(tmp_path):
    def spoil(d):
        d["annotations"][0]["bbox"] = [d["images"][0]["width"] - 5, 0, 40, 10]  # past the right edge
        d["annotations"][-1]["bbox"][2] = -3  # negative width
        d["images"][2]["file_name"] = "gone.png"

    path, data = _small_coco(tmp_path, a=spoil)
    src = read_coco(path, images=tmp_path / "images")
    errors = src.images["error"].tolist()
    first, last = data["annotations"][0], data["annotations"][-1]
    assert errors[0].startswith(f"annotation {first['id']}: box [") and errors[0].endswith("image")
    last_image = last["image_id"] - 1
    assert last_image not in (0, 2)
    assert errors[last_image] == f"annotation {last['id']}: box of non-positive size (width -3, height {last['bbox'][3]:g})"
    assert errors[2] == "image file not found: gone.png"
    assert str(first["id"]) not in set(src.boxes.box_id) and str(last["id"]) not in set(src.boxes.box_id)
    with pytest.raises(LabelkitError, match=rf"{path}: annotation {first['id']}: box \[.*\] outside the"):
        read_coco(path, images=tmp_path / "images", strict=True)


def test_yolo_bad_lines_name_file_and_line(tmp_path, planted):
    data, _ = write_yolo(make_planted(5, seed=1, empty=0.0), tmp_path / "y")
    label = sorted((data / "labels").glob("*.txt"))[0]
    label.write_text(label.read_text() + "9 0.5 0.5 0.1 0.1\n")
    n = len(label.read_text().splitlines())
    with pytest.raises(LabelkitError) as err:
        read_yolo(data)
    assert str(err.value) == f"{data / 'labels'}/{label.name} line {n}: class 9 is not one of the 5 class names (0..4)."
    label.write_text("0 0.5 0.5 0.1\n")
    with pytest.raises(LabelkitError, match=rf"{label.name} line 1: expected 5 numbers \(class cx cy w h\)"):
        read_yolo(data)
    label.write_text("0 0.5 0.5 0.1 0.1\n")
    (data / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    src = read_yolo(data)
    assert src.images["error"].tolist()[-1] == "image file not found for labels/orphan.txt"


def test_prediction_errors_and_stray_images(tmp_path, written):
    src = read_coco(written["instances"], images=written["root"] / "coco" / "images")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.9}]))
    with pytest.raises(LabelkitError, match=r"bad.json: prediction 0 has category 2, which is not a class"):
        _preds_of(src, bad)
    bad.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}]))
    with pytest.raises(LabelkitError, match=r"prediction 0 has score None; every prediction needs a number 'score'"):
        _preds_of(src, bad)
    bad.write_text(json.dumps([{"file_name": "img_00001.png", "category_name": "unused", "bbox": [0, 0, 5, 5],
                                "score": 0.9}, {"image_id": 424242, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1}]))
    preds, warnings = _preds_of(src, bad)
    assert preds.image.tolist() == [1] and preds.label.tolist() == [4]
    assert warnings == ["1 predictions in bad.json are for images not in the data; skipped."]


# --- box statistics ----------------------------------------------------------------------------


def test_box_statistics_counts_sizes_duplicates():
    boxes = Boxes.make([0, 0, 0, 1, 1], [0, 0, 1, 1, 0],
                       [[0, 0, 50, 50], [0, 0, 50, 49], [0, 0, 49, 50], [10, 10, 11, 30], [0, 0, 100, 100]],
                       box_id=np.arange(5).astype(str).astype(object))
    stats = box_statistics(boxes, 3, ["a", "b", "c"], [100, 100, 100], [100, 100, 100])
    assert stats.duplicate_of.tolist() == [-1, 0, -1, -1, -1]
    assert stats.conflicts_with.tolist() == [-1, -1, 0, -1, -1]
    assert stats.is_tiny.tolist() == [False, False, False, True, False] and stats.is_huge.tolist()[-1]
    summary = stats.to_dict()
    assert summary["boxes_per_class"] == {"a": 3, "b": 2, "c": 0} and summary["classes_without_boxes"] == ["c"]
    assert summary["images_per_class"] == {"a": 2, "b": 2, "c": 0}
    assert summary["images_without_boxes"] == 1 and summary["boxes_per_image"] == {"0": 1, "2": 1, "3": 1}
    assert summary["duplicate_boxes"] == 1 and summary["conflicting_boxes"] == 1
    assert sum(summary["size_histogram"]["a"]) == 3 and summary["size_histogram"]["a"][-1] == 1


# --- the task type (ingest side) ----------------------------------------------------------------


def test_task_read_source_gives_one_row_per_image_and_the_boxes_table(planted, written):
    from labelkit.tasks import get_task
    from labelkit.tasks.base import TASK_LABEL_COL

    task = get_task("detection")
    frames = []
    for source, options in ((written["instances"], {"images": written["root"] / "coco" / "images"}),
                            (written["yolo"], {})):
        df, spec = task.read_source(source, options=options)
        assert len(df) == planted.n_images and df["id"].tolist() == planted.files
        assert spec.task == "detection" and spec.classes == planted.classes and "unused" in spec.classes
        boxes = spec.tables["boxes.parquet"]
        assert boxes.num_rows == len(planted.boxes) and boxes.column_names[:4] == ["id", "box_id", "label", "label_id"]
        counts = spec.columns["n_boxes"].to_numpy()
        assert counts.tolist() == planted.boxes.counts(planted.n_images).tolist() and (counts == 0).any()
        assert (df[TASK_LABEL_COL][counts == 0] == "").all() and spec.errors == [None] * planted.n_images
        assert (spec.image_root / df["image_path"][0]).is_file()
        frames.append(df[TASK_LABEL_COL].tolist())
    assert frames[0] == frames[1]
    i = int(np.flatnonzero(planted.boxes.counts(planted.n_images) > 1)[0])
    a = planted.boxes.starts(planted.n_images)
    assert frames[0][i] == ";".join(sorted({planted.classes[k] for k in planted.boxes.label[a[i]:a[i + 1]]},
                                           key=planted.classes.index))
