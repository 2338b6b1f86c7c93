"""`audit` records where its wall time goes, stage by stage (what bench/detect.py --timing prints)."""

import json

import numpy as np
from PIL import Image

from labelkit.audit import audit

STAGES = ("ingest", "embed", "issues", "report")


def _image_folder(root, n_per_class: int = 20, seed: int = 0):
    """Write three classes of 8×8 gray PNGs (dark, mid, light plus noise) under root/<class>/."""
    rng = np.random.default_rng(seed)
    for k, level in enumerate((40, 128, 215)):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(n_per_class):
            pixels = np.clip(level + rng.normal(0, 20, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{k}" / f"{i:02d}.png")
    return root


def test_audit_records_each_stage_seconds_in_result_and_manifest(tmp_path):
    data = _image_folder(tmp_path / "data")
    result = audit(data, tmp_path / "ws", model="pixels", offline=True, fail_on=["label_issue_rate>0.9"])
    seconds = result["seconds"]
    assert list(seconds) == [*STAGES, "total"]
    assert all(isinstance(v, float) and v >= 0 for v in seconds.values())
    assert seconds["total"] >= sum(seconds[s] for s in STAGES) - 0.01  # the stages are parts of the total
    manifest = json.loads((tmp_path / "ws" / "manifest.json").read_text())
    assert manifest["stages"]["audit"]["seconds"] == seconds
    assert (tmp_path / "ws" / "report.html").exists()


def test_audit_without_report_records_no_report_stage(tmp_path):
    data = _image_folder(tmp_path / "data", seed=1)
    result = audit(data, tmp_path / "ws", model="pixels", offline=True, write_report=False,
                   fail_on=["label_issue_rate>0.9"])
    assert list(result["seconds"]) == ["ingest", "embed", "issues", "total"]
    assert not (tmp_path / "ws" / "report.html").exists()
