"""Object detection as a task type (issue 30): one items row per image, its boxes in boxes.parquet.

Ingest reads COCO detection JSON or a YOLO folder (:mod:`labelkit.detection.formats`) through
:meth:`Detection.read_source`; the scoring of boxes against ``--pred-boxes`` lives in
:mod:`labelkit.detection.scores`. See docs/tasks.md, section "Object detection".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from labelkit.detection.formats import DetectionSource, boxes_table, read_detection_source
from labelkit.tasks.base import TASK_LABEL_COL, TaskSpec, TaskType, register

BOXES_TABLE = "boxes.parquet"


def display_labels(src: DetectionSource) -> np.ndarray:
    """Return each image's display label: its box classes, sorted and ';'-joined ('' for an image without boxes)."""
    names = np.asarray(src.classes, object)
    pairs = pd.DataFrame({"image": src.boxes.image, "label": src.boxes.label}).drop_duplicates()
    pairs = pairs.sort_values(["image", "label"])
    pairs["name"] = names[pairs["label"].to_numpy()] if len(pairs) else []
    joined = pairs.groupby("image")["name"].agg(";".join)
    out = np.full(len(src.images), "", object)
    out[joined.index.to_numpy()] = joined.to_numpy()
    return out


def source_frame(src: DetectionSource) -> tuple[pd.DataFrame, TaskSpec]:
    """Return (the ingest table of one row per image, its TaskSpec with boxes.parquet) of a DetectionSource."""
    images = src.images
    df = pd.DataFrame({"id": images["id"].astype(str), "image_path": images["file"], "split": images["split"],
                       TASK_LABEL_COL: display_labels(src)})
    counts = src.boxes.counts(len(images)).astype(np.int32)
    coco = pd.to_numeric(images["coco_id"], errors="coerce")
    columns = {"n_boxes": pa.array(counts, pa.int32()),
               "coco_image_id": pa.array(coco.to_numpy(), pa.float64(), from_pandas=True).cast(pa.int64())}
    errors = [e if isinstance(e, str) else None for e in images["error"]]
    manifest = {"detection": {"format": src.kind, "category_ids": list(src.category_ids), "boxes": int(len(src.boxes)),
                              "images_without_boxes": int((counts == 0).sum()), "image_root": str(src.image_root),
                              "warnings": list(src.warnings)}}
    return df, TaskSpec(task="detection", classes=list(src.classes), columns=columns, errors=errors, manifest=manifest,
                        image_root=Path(src.image_root),
                        tables={BOXES_TABLE: boxes_table(df["id"].tolist(), src.boxes, src.classes)})


@register
class Detection(TaskType):
    """Boxes per image (COCO / YOLO); label issues from the user's predicted boxes (``--pred-boxes``)."""

    name = "detection"
    label_check = None
    default_modality = "image"
    relabel = False
    uses_filter_by = False

    def read_source(self, source, *, options: dict):
        """Return (one row per image, TaskSpec) of a COCO JSON (``options['images']``: the image folder) or YOLO folder."""
        src = read_detection_source(source, images=options.get("images"), strict=bool(options.get("strict", False)))
        return source_frame(src)

    def prepare_table(self, df, source, *, options: dict):
        """Return (df, TaskSpec) of a detection source passed as a table: refused (COCO JSON or YOLO folders only)."""
        from labelkit.errors import LabelkitError

        raise LabelkitError(f"--task detection reads a COCO detection JSON or a YOLO folder (images/, labels/); "
                            f"{source} is a table.")
