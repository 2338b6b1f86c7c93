"""Annotated boxes from COCO detection JSON and YOLO folders: one row per image, one entry per box.

Both readers return a :class:`DetectionSource`: the images (id, file relative to the image
root, size, split, error), the boxes as :class:`~labelkit.detection.match.Boxes` with their
annotation ids, and the classes. Images without boxes are valid. What cannot be read at all (an
unknown category id, an annotation of an unknown image, a malformed box) is a one-line
:class:`LabelkitError` naming the file and the annotation; a box of non-positive size or
outside its image makes its image's row unusable (``error`` names the annotation), or, with
``strict=True``, is such an error too. The user's files are only read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from labelkit.detection.match import Boxes
from labelkit.errors import LabelkitError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_NAMES = {"train", "val", "valid", "validation", "test"}
EDGE_TOLERANCE = 1.0  # pixels a box may pass the image edge by (rounding in exporters); clipped
BOXES_SCHEMA = pa.schema([("id", pa.string()), ("box_id", pa.string()), ("label", pa.string()),
                          ("label_id", pa.int32()), ("x1", pa.float32()), ("y1", pa.float32()),
                          ("x2", pa.float32()), ("y2", pa.float32())])


@dataclass
class DetectionSource:
    """What a COCO or YOLO reader found.

    ``images`` has one row per image: ``id`` (the file path relative to ``image_root``, '/'
    separated), ``file``, ``width``, ``height`` (null when unknown), ``split``, ``coco_id``
    (COCO's image id, null for YOLO) and ``error`` (null, or why the image is unusable).
    ``boxes.image`` indexes ``images`` rows; ``category_ids`` maps each class to the id the
    user's files use (COCO category id; YOLO class index).
    """

    kind: str
    path: Path
    image_root: Path
    images: pd.DataFrame
    boxes: Boxes
    classes: list[str]
    category_ids: list[int]
    warnings: list[str] = field(default_factory=list)


def is_detection_source(path: Path | str) -> bool:
    """Return whether `path` is a COCO detection JSON (``images`` + ``annotations``) or a YOLO folder."""
    path = Path(path)
    if path.is_dir():
        return (path / "images").is_dir() and (path / "labels").is_dir()
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(1 << 16).lstrip()
    # COCO files open with info/licenses/images; the annotations may start past any fixed prefix.
    return head[:1] == b"{" and (b'"images"' in head or b'"annotations"' in head)


def read_detection_source(path: Path | str, *, images: Path | str | None = None, strict: bool = False) -> DetectionSource:
    """Return the DetectionSource of a COCO JSON file or a YOLO folder (see :func:`read_coco`, :func:`read_yolo`)."""
    path = Path(path)
    if path.is_dir():
        return read_yolo(path, strict=strict)
    return read_coco(path, images=images, strict=strict)


def _load_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelkitError(f"{path}: not readable as JSON ({exc}).") from None


def read_coco(path: Path | str, *, images: Path | str | None = None, strict: bool = False) -> DetectionSource:
    """Return the images, boxes and classes of a COCO detection file (``instances_*.json``).

    Parameters
    ----------
    path : path
        The JSON: ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations``
        (``id``, ``image_id``, ``category_id``, ``bbox`` = [x, y, width, height] in pixels) and
        ``categories`` (``id``, ``name``). Classes are the categories in id order, including
        categories no annotation uses.
    images : path, optional
        Folder the ``file_name``s are relative to (default: the JSON's folder).
    strict : bool
        Raise on a box outside its image or of non-positive size instead of marking its image.
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
            data.get("annotations"), list):
        raise LabelkitError(f"{path}: not a COCO detection file (expected an object with 'images' and 'annotations' lists).")
    root = Path(images) if images is not None else path.parent
    if not root.is_dir():
        raise LabelkitError(f"The 'images' parameter of ingest must be an existing folder. Got {str(root)!r} instead.")
    classes, category_ids = _coco_categories(path, data.get("categories"))
    frame = _coco_images(path, data["images"])
    anns = data["annotations"]
    ann_ids = [a.get("id", i) if isinstance(a, dict) else i for i, a in enumerate(anns)]
    if any(not isinstance(a, dict) for a in anns):
        bad = next(i for i, a in enumerate(anns) if not isinstance(a, dict))
        raise LabelkitError(f"{path}: annotation {bad} is not an object.")
    image_pos = _lookup(path, [a.get("image_id") for a in anns], frame["coco_id"].tolist(), ann_ids,
                        "image_id", "images")
    label = _lookup(path, [a.get("category_id") for a in anns], category_ids, ann_ids, "category_id", "categories")
    xywh = _bbox_array(path, [a.get("bbox") for a in anns], ann_ids)
    xyxy = np.column_stack([xywh[:, 0], xywh[:, 1], xywh[:, 0] + xywh[:, 2], xywh[:, 1] + xywh[:, 3]])
    _check_files(frame, root)
    _fill_sizes(frame, root, np.unique(image_pos))
    boxes = Boxes.make(image_pos, label, xyxy, box_id=np.asarray([str(i) for i in ann_ids], object))
    boxes = _check_boxes(path, frame, boxes, strict=strict, what="annotation")
    return DetectionSource("coco", path, root, frame, boxes, classes, category_ids)


def _coco_categories(path: Path, categories) -> tuple[list[str], list[int]]:
    if not isinstance(categories, list) or not categories:
        raise LabelkitError(f"{path}: no 'categories' list (each {{'id': int, 'name': str}}).")
    try:
        pairs = sorted((int(c["id"]), str(c["name"])) for c in categories)
    except (KeyError, TypeError, ValueError):
        raise LabelkitError(f"{path}: every category needs an integer 'id' and a 'name'.") from None
    ids, names = [p[0] for p in pairs], [p[1] for p in pairs]
    for what, values in (("id", ids), ("name", names)):
        if len(set(values)) != len(values):
            dup = next(v for v in values if values.count(v) > 1)
            raise LabelkitError(f"{path}: category {what} {dup!r} appears more than once in 'categories'.")
    return names, ids


def _coco_images(path: Path, images: list) -> pd.DataFrame:
    rows = []
    for i, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise LabelkitError(f"{path}: image {i} needs an 'id' and a 'file_name'.")
        rows.append((im["id"], im["file_name"].replace("\\", "/"), im.get("width"), im.get("height")))
    frame = pd.DataFrame(rows, columns=["coco_id", "file", "width", "height"])
    for col in ("coco_id", "file"):
        dup = frame[col][frame[col].duplicated()]
        if len(dup):
            raise LabelkitError(f"{path}: image {col.replace('coco_', '')} {dup.iloc[0]!r} appears more than once in 'images'.")
    frame.insert(0, "id", frame["file"])
    frame["split"] = [_split_of(f) for f in frame["file"]]
    frame["error"] = None
    return frame


def _split_of(rel: str) -> str | None:
    head = rel.split("/", 1)[0]
    return head if "/" in rel and head.lower() in SPLIT_NAMES else None


def _lookup(path: Path, values: list, known: list, ann_ids: list, key: str, where: str) -> np.ndarray:
    """Return the position in `known` of every value; an unknown one is an error naming its annotation."""
    index = {k: i for i, k in enumerate(known)}
    pos = np.fromiter((index.get(v, -1) for v in values), np.int64, len(values))
    bad = np.flatnonzero(pos < 0)
    if len(bad):
        j = int(bad[0])
        raise LabelkitError(f"{path}: annotation {ann_ids[j]} has {key} {values[j]!r}, which is not in {where!r}"
                            + (f" ({len(bad)} annotations like it)." if len(bad) > 1 else "."))
    return pos


def _bbox_array(path: Path, bboxes: list, ann_ids: list, what: str = "annotation") -> np.ndarray:
    """Return the (n, 4) float64 array of [x, y, w, h] boxes; a malformed one is an error naming its annotation."""
    try:
        arr = np.asarray(bboxes, np.float64).reshape(len(bboxes), 4) if bboxes else np.zeros((0, 4))
        if np.isfinite(arr).all():
            return arr
    except (TypeError, ValueError):
        pass
    for j, b in enumerate(bboxes):
        ok = isinstance(b, (list, tuple)) and len(b) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in b)
        if not ok:
            raise LabelkitError(f"{path}: {what} {ann_ids[j]} has bbox {b!r}; expected [x, y, width, height] numbers.")
    raise LabelkitError(f"{path}: a bbox is not [x, y, width, height] numbers.")


def _check_files(frame: pd.DataFrame, root: Path) -> None:
    """Set ``error`` of images whose file is missing (the file is the data: nothing else is wrong)."""
    root_s = str(root)
    missing = np.fromiter((not os.path.isfile(os.path.join(root_s, f)) for f in frame["file"]), bool, len(frame))
    frame.loc[missing, "error"] = [f"image file not found: {f}" for f in frame["file"][missing]]


def _fill_sizes(frame: pd.DataFrame, root: Path, used: np.ndarray) -> None:
    """Read width/height from the file header where the JSON leaves them out, for images that have boxes."""
    from PIL import Image

    for col in ("width", "height"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    unknown = frame.index[(frame["width"].isna() | frame["height"].isna()) & frame["error"].isna()]
    for i in np.intersect1d(unknown, used):
        try:
            with Image.open(root / frame.at[i, "file"]) as im:
                frame.loc[i, ["width", "height"]] = im.size
        except OSError:
            frame.at[i, "error"] = f"unreadable image: {frame.at[i, 'file']}"


def _check_boxes(path: Path, frame: pd.DataFrame, boxes: Boxes, *, strict: bool, what: str) -> Boxes:
    """Return `boxes` without the bad ones (clipped within the edge tolerance); their images get ``error``."""
    w = frame["width"].to_numpy(np.float64)[boxes.image]
    h = frame["height"].to_numpy(np.float64)[boxes.image]
    x1, y1, x2, y2 = boxes.xyxy.T.astype(np.float64)
    size_bad = (x2 <= x1) | (y2 <= y1)
    known = np.isfinite(w) & np.isfinite(h)
    tol = EDGE_TOLERANCE
    outside = known & ~size_bad & ((x1 < -tol) | (y1 < -tol) | (x2 > w + tol) | (y2 > h + tol))
    bad = size_bad | outside
    if bad.any():
        j = np.flatnonzero(bad)
        texts = [_bad_box_text(what, boxes.box_id[k], boxes.xyxy[k], w[k], h[k], size_bad[k]) for k in j]
        if strict:
            raise LabelkitError(f"{path}: {texts[0]}" + (f" ({len(j)} boxes like it)." if len(j) > 1 else "."))
        images = boxes.image[j]
        first = np.unique(images, return_index=True)[1]
        fresh = frame["error"].to_numpy(object)[images[first]] == None  # noqa: E711 (object array)
        frame.loc[images[first][fresh], "error"] = [texts[k] for k in first[fresh]]
    keep = ~bad
    out = boxes.take(keep)
    lim_w, lim_h = np.nan_to_num(w[keep], nan=np.inf), np.nan_to_num(h[keep], nan=np.inf)
    out.xyxy = np.column_stack([np.clip(out.xyxy[:, 0], 0, lim_w), np.clip(out.xyxy[:, 1], 0, lim_h),
                                np.clip(out.xyxy[:, 2], 0, lim_w), np.clip(out.xyxy[:, 3], 0, lim_h)]).astype(np.float32)
    return out


def _bad_box_text(what: str, box_id, xyxy, w, h, size_bad) -> str:
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    if size_bad:
        return f"{what} {box_id}: box of non-positive size (width {x2 - x1:g}, height {y2 - y1:g})"
    return f"{what} {box_id}: box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] outside the {w:g}x{h:g} image"


def boxes_table(ids, boxes: Boxes, classes: list[str]) -> pa.Table:
    """Return the boxes.parquet table: ``id`` (the image's items id), ``box_id``, ``label``, ``label_id``, x1..y2."""
    ids = np.asarray(ids, object)
    names = np.asarray(classes, object)
    return pa.table({"id": pa.array(ids[boxes.image], pa.string()),
                     "box_id": pa.array(boxes.box_id if boxes.box_id is not None else
                                        np.arange(len(boxes)).astype(str), pa.string()),
                     "label": pa.array(names[boxes.label] if len(boxes) else [], pa.string()),
                     "label_id": pa.array(boxes.label.astype(np.int32), pa.int32()),
                     **{k: pa.array(boxes.xyxy[:, j], pa.float32()) for j, k in enumerate(("x1", "y1", "x2", "y2"))}},
                    schema=BOXES_SCHEMA)


def boxes_from_table(table: pa.Table, ids) -> Boxes:
    """Return the Boxes of a boxes.parquet table, ``image`` indexing `ids` (boxes of other ids are dropped)."""
    index = pd.Index(np.asarray(ids, object))
    pos = index.get_indexer(table.column("id").to_numpy(zero_copy_only=False))
    keep = pos >= 0
    xyxy = np.column_stack([table.column(k).to_numpy() for k in ("x1", "y1", "x2", "y2")]) if table.num_rows else \
        np.zeros((0, 4))
    return Boxes.make(pos[keep], table.column("label_id").to_numpy()[keep], xyxy[keep],
                      box_id=table.column("box_id").to_numpy(zero_copy_only=False)[keep])


def read_yolo(folder: Path | str, *, strict: bool = False) -> DetectionSource:
    """Return the images, boxes and classes of a YOLO folder.

    ``FOLDER/images/**/<name>.<ext>`` with ``FOLDER/labels/**/<name>.txt`` beside it (same
    sub-path), one ``class cx cy w h`` line per box, normalised to [0, 1]; class names from
    ``data.yaml`` (``names``: a list or {index: name}) or ``classes.txt`` (one per line), else
    the indices. An image without a label file has no boxes; a label file without an image is
    a row with ``error``.
    """
    folder = Path(folder)
    image_dir, label_dir = folder / "images", folder / "labels"
    if not image_dir.is_dir() or not label_dir.is_dir():
        raise LabelkitError(f"{folder}: not a YOLO folder (expected images/ and labels/ inside).")
    files = sorted(_relative_files(image_dir, IMAGE_EXTENSIONS))
    stems = {f.rsplit(".", 1)[0]: i for i, f in enumerate(files)}
    labels = sorted(_relative_files(label_dir, {".txt"}))
    orphans = [f for f in labels if f[:-4] not in stems]
    frame = pd.DataFrame({"id": files + [f[:-4] for f in orphans], "file": files + [None] * len(orphans)})
    frame["split"] = [_split_of(f) for f in frame["id"]]
    frame["coco_id"] = None
    frame["error"] = [None] * len(files) + [f"image file not found for labels/{f}" for f in orphans]
    frame["width"], frame["height"] = np.nan, np.nan
    names = _yolo_names(folder)
    rows = [(stems[f[:-4]], f) for f in labels if f[:-4] in stems]
    image_pos, label, cxcywh, box_ids = _yolo_lines(label_dir, rows, n_fields=5)
    if names is None:
        names = [str(i) for i in range(int(label.max()) + 1 if len(label) else 0)]
    bad = np.flatnonzero((label < 0) | (label >= len(names)))
    if len(bad):
        raise LabelkitError(f"{label_dir}/{box_ids[bad[0]].replace(':', ' line ')}: class {label[bad[0]]} is not one of "
                            f"the {len(names)} class names (0..{len(names) - 1}).")
    _fill_sizes(frame, image_dir, np.arange(len(files)))  # every size: YOLO predictions are normalised too
    w = frame["width"].to_numpy(np.float64)[image_pos]
    h = frame["height"].to_numpy(np.float64)[image_pos]
    xyxy = np.column_stack([(cxcywh[:, 0] - cxcywh[:, 2] / 2) * w, (cxcywh[:, 1] - cxcywh[:, 3] / 2) * h,
                            (cxcywh[:, 0] + cxcywh[:, 2] / 2) * w, (cxcywh[:, 1] + cxcywh[:, 3] / 2) * h])
    boxes = Boxes.make(image_pos, label, xyxy, box_id=box_ids)
    boxes = _check_boxes(label_dir, frame, boxes, strict=strict, what="box")
    return DetectionSource("yolo", folder, image_dir, frame, boxes, names, list(range(len(names))))


def _relative_files(root: Path, extensions: set[str]) -> list[str]:
    """Return the '/'-separated paths under `root` of files with one of `extensions` (hidden entries skipped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
        prefix = "" if rel == "." else rel + "/"
        out.extend(prefix + f for f in filenames if not f.startswith(".") and os.path.splitext(f)[1].lower() in extensions)
    return out


def _yolo_names(folder: Path) -> list[str] | None:
    """Return the class names of data.yaml (``names``) or classes.txt, or None when neither is there."""
    yaml_path = next((folder / n for n in ("data.yaml", "data.yml", "dataset.yaml") if (folder / n).is_file()), None)
    if yaml_path is not None:
        names = _yaml_names(yaml_path)
        if isinstance(names, dict):
            try:
                names = [str(names[k]) for k in sorted(names, key=int)]
            except (TypeError, ValueError):
                raise LabelkitError(f"{yaml_path}: 'names' must map class indices to names.") from None
        if not isinstance(names, list) or not names:
            raise LabelkitError(f"{yaml_path}: no 'names' list of classes.")
        return [str(n) for n in names]
    if (folder / "classes.txt").is_file():
        names = [ln.strip() for ln in (folder / "classes.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not names:
            raise LabelkitError(f"{folder / 'classes.txt'}: no class names.")
        return names
    return None


def _yaml_names(path: Path):
    """Return the ``names`` entry of a YOLO data.yaml."""
    import yaml  # PyYAML; only YOLO folders with a data.yaml need it

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise LabelkitError(f"{path}: not readable as YAML ({str(exc).splitlines()[0]}).") from None
    return data.get("names") if isinstance(data, dict) else None


def _yolo_lines(label_dir: Path, rows: list[tuple[int, str]], *, n_fields: int):
    """Return (image position, class, (n, n_fields - 1) numbers, box ids 'file.txt:line') of label files."""
    images, tokens, ids = [], [], []
    for pos, rel in rows:
        try:
            text = (label_dir / rel).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LabelkitError(f"{label_dir / rel}: not readable ({exc}).") from None
        for line_no, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != n_fields:
                shape = "class cx cy w h" + (" score" if n_fields == 6 else "")
                raise LabelkitError(f"{label_dir / rel} line {line_no}: expected {n_fields} numbers "
                                    f"({shape}), got {line.strip()[:60]!r}.")
            images.append(pos)
            tokens.append(parts)
            ids.append(f"{rel}:{line_no}")
    if not tokens:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, n_fields - 1)), np.zeros(0, object)
    try:
        numbers = np.asarray(tokens, np.float64)
    except ValueError:
        j = next(j for j, t in enumerate(tokens) if not all(_is_number(v) for v in t))
        raise LabelkitError(f"{label_dir}/{ids[j].replace(':', ' line ')}: expected numbers, got "
                            f"{' '.join(tokens[j])[:60]!r}.") from None
    cls = numbers[:, 0]
    bad = np.flatnonzero((cls != np.round(cls)) | ~np.isfinite(numbers).all(1))
    if len(bad):
        raise LabelkitError(f"{label_dir}/{ids[bad[0]].replace(':', ' line ')}: the class must be an integer index "
                            f"and every value finite, got {' '.join(tokens[bad[0]])[:60]!r}.")
    return np.asarray(images, np.int64), cls.astype(np.int64), numbers[:, 1:], np.asarray(ids, object)


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False
