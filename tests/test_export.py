"""Review queues: flagged rows as Label Studio tasks (and their config) or a CSV, worst first."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET

import pyarrow.parquet as pq
import pytest

from labelkit.errors import LabelkitError
from labelkit.export import export_csv, export_labelstudio, label_config


def test_labelstudio_export_holds_the_flagged_rows_worst_first_with_a_scored_suggestion(digits_ws, tmp_path):
    result = export_labelstudio(digits_ws, tmp_path / "tasks.json", config_out=tmp_path / "config.xml")
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    issues = pq.read_table(digits_ws / "issues.parquet").to_pandas()
    flagged = issues[issues["is_label_issue"]]
    assert result.rows == len(tasks) == len(flagged) > 0
    assert {t["data"]["labelkit_id"] for t in tasks} == set(flagged["id"])
    quality = dict(zip(issues["id"], issues["label_quality"]))
    order = [quality[t["data"]["labelkit_id"]] for t in tasks]
    assert order == sorted(order)
    first = tasks[0]
    row = flagged.set_index("id").loc[first["data"]["labelkit_id"]]
    assert first["data"]["given_label"] == row["given_label"] and first["data"]["reason"] == row["reason"]
    assert first["data"]["image"].endswith(first["data"]["labelkit_id"])
    pred = first["predictions"][0]
    assert pred["result"][0]["value"] == {"choices": [row["suggested_label"]]}
    assert 0.5 < pred["score"] <= 1.0  # the probe's probability of its suggestion
    config = ET.fromstring((tmp_path / "config.xml").read_text())
    choices = config.find("Choices")
    assert choices.get("name") == pred["result"][0]["from_name"] and choices.get("toName") == "image"
    assert [c.get("value") for c in choices] == [str(k) for k in range(10)]


def test_limit_and_url_prefix(digits_ws, tmp_path):
    export_labelstudio(digits_ws, tmp_path / "t.json", limit=3, url_prefix="/data/local-files/?d=digits/")
    tasks = json.loads((tmp_path / "t.json").read_text())
    assert len(tasks) == 3
    assert all(t["data"]["image"] == "/data/local-files/?d=digits/" + t["data"]["labelkit_id"] for t in tasks)


def test_csv_export_has_an_empty_new_label_column(digits_ws, tmp_path):
    result = export_csv(digits_ws, tmp_path / "q.csv", check="outliers", all_rows=True, limit=20)
    rows = list(csv.DictReader((tmp_path / "q.csv").open()))
    assert result.check == "outliers" and len(rows) == 20
    assert list(rows[0]) == ["id", "given", "suggested", "score", "reason", "item", "new_label"]
    assert all(r["new_label"] == "" for r in rows)


def test_bad_options_raise_one_line_errors_and_write_nothing(digits_ws, tmp_path):
    with pytest.raises(LabelkitError, match=r"The 'limit' parameter of export_labelstudio must be an int in the "
                                            r"range \[1, inf\)\. Got 0 instead\."):
        export_labelstudio(digits_ws, tmp_path / "t.json", limit=0)
    with pytest.raises(LabelkitError, match="Unknown check 'nope'"):
        export_csv(digits_ws, tmp_path / "q.csv", check="nope")
    assert not list(tmp_path.iterdir())


def test_multilabel_config_is_a_taxonomy():
    config = ET.fromstring(label_config(["a", "b"], modality="text", task="multilabel"))
    assert config.find("Taxonomy").get("toName") == "text"
    with pytest.raises(LabelkitError, match="task is 'regression'"):
        label_config([], modality="text", task="regression")
