"""Object detection: boxes read from COCO / YOLO, scored against a model's predicted boxes.

A shared layer (no verb, no task module is imported here); :mod:`labelkit.tasks.detection`
plugs it into the verbs.

- :mod:`~labelkit.detection.formats`: COCO detection JSON and YOLO folders → one row per image
  plus a table of boxes; COCO results and YOLO prediction files → predicted boxes.
- :mod:`~labelkit.detection.match`: box pairs within an image (never across the dataset), IoU.
- :mod:`~labelkit.detection.scores`: per-box ``swap`` / ``badloc`` and per-image ``overlooked``
  scores, the image verdict and its reason.
- :mod:`~labelkit.detection.stats`: box statistics that need no predictions.
- :mod:`~labelkit.detection.planted`: planted data sets for tests and the bench.
"""

from __future__ import annotations

from labelkit.detection.match import Boxes  # noqa: F401
