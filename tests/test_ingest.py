import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import SAMPLE, one_line
from labelkit.ingest import ingest
from labelkit.workspace import ITEMS_SCHEMA, Workspace


def tree_digest(root: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def png(path: Path, value: int = 128, size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8), mode="L").save(path)
    return path


def test_sample_digits_ingest(cli, tmp_path):
    before = tree_digest(SAMPLE / "digits")
    code, out, _ = cli("ingest", SAMPLE / "digits", "-w", tmp_path / "ws", "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["rows"] == 1797 and len(summary["classes"]) == 10
    assert summary["classes"] == [str(i) for i in range(10)]
    items = pd.read_parquet(tmp_path / "ws" / "items.parquet")
    assert list(items.columns) == ITEMS_SCHEMA.names
    assert items["id"].is_unique and items["error"].isna().all()
    assert (items[["width", "height"]] == 8).all().all()
    assert items.set_index("id").loc["3/0003.png", "label"] == "3"
    assert (items["label"] == items["id"].str.split("/").str[0]).all()  # each row's class folder is its label
    assert tree_digest(SAMPLE / "digits") == before  # the source is never written


def test_text_csv_ingest_detects_columns(cli, tmp_path):
    code, out, _ = cli("ingest", SAMPLE / "text" / "reviews.csv", "-w", tmp_path / "ws")
    assert code == 0
    assert "label=label" in out and "text=text" in out and "id=id" in out
    items = Workspace(tmp_path / "ws").read_items()
    assert len(items) == 400 and set(items["label"]) == {"cooking", "sports", "technology", "weather"}
    assert items["id"].iloc[0] == "t0000" and (items["modality"] == "text").all()
    assert items["text_length"].iloc[0] == len(items["text"].iloc[0])


def test_corrupt_truncated_and_empty_images_are_kept_with_error(cli, tmp_path):
    src = tmp_path / "data"
    png(src / "cat" / "ok.png")
    png(src / "dog" / "ok.png", 10)
    good = png(tmp_path / "tmp.png", 50, (64, 64)).read_bytes()
    (src / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    (src / "dog" / "empty.png").write_bytes(b"")
    (src / "dog" / "garbage.jpg").write_bytes(b"this is not a jpeg at all")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "t.jpg", quality=90)
    jpg = (tmp_path / "t.jpg").read_bytes()
    (src / "cat" / "cut.jpg").write_bytes(jpg[:-200])
    code, out, err = cli("ingest", src, "-w", tmp_path / "ws")
    assert code == 0
    items = Workspace(tmp_path / "ws").read_items().set_index("id")
    assert len(items) == 6
    assert items.loc["cat/ok.png", "error"] is None or pd.isna(items.loc["cat/ok.png", "error"])
    assert items.loc["dog/empty.png", "error"] == "empty file (0 bytes)"
    assert items.loc["cat/truncated.png", "error"].startswith("corrupt image")
    assert items.loc["dog/garbage.jpg", "error"] == "not a readable image"
    assert "runcated" in items.loc["cat/cut.jpg", "error"]
    assert "unusable rows" in one_line(err)


def test_missing_label_column_lists_available_columns(cli, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("id,text,topic\n1,hello,a\n")
    code, _, err = cli("ingest", table, "-w", tmp_path / "ws", "--label-col", "category")
    assert code == 2
    assert one_line(err) == f"error: Label column 'category' not found in {table}; available columns: id, text, topic."
    code, _, err = cli("ingest", table, "-w", tmp_path / "ws")
    assert code == 2 and "No label column found" in one_line(err) and "Available columns: id, text, topic." in one_line(err)
    assert not (tmp_path / "ws" / "items.parquet").exists()


def test_empty_folder_and_no_labelled_rows_exit_2(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = cli("ingest", tmp_path / "empty", "-w", tmp_path / "ws")
    assert code == 2 and "no images found" in one_line(err)
    table = tmp_path / "t.csv"
    table.write_text("text,label\nhello,\nworld,\n")
    code, _, err = cli("ingest", table, "-w", tmp_path / "ws")
    assert code == 2 and one_line(err) == f"error: {table}: no usable labelled rows (2 rows; missing label: 2)."


def test_table_paths_outside_root_rejected_unless_allowed(cli, tmp_path):
    outside = png(tmp_path / "outside.png")
    png(tmp_path / "tbl" / "img" / "a.png")
    table = tmp_path / "tbl" / "data.csv"
    table.write_text(f"image,label\nimg/a.png,x\n../outside.png,y\n{outside},y\n")
    code, _, _ = cli("ingest", table, "-w", tmp_path / "ws")
    assert code == 0
    items = Workspace(tmp_path / "ws").read_items()
    assert pd.isna(items.loc[0, "error"])
    assert items.loc[1, "error"] == "image path outside the table's folder: ../outside.png (pass --allow-outside-root)"
    assert items.loc[2, "error"].startswith("image path outside the table's folder: /")
    code, _, _ = cli("ingest", table, "-w", tmp_path / "ws", "--allow-outside-root")
    assert code == 0 and Workspace(tmp_path / "ws").read_items()["error"].isna().all()


def test_symlink_loop_does_not_hang(cli, tmp_path):
    src = tmp_path / "data"
    png(src / "a" / "1.png")
    png(src / "b" / "2.png")
    os.symlink(src, src / "a" / "loop")
    os.symlink(src / "b", src / "b" / "self")
    code, _, _ = cli("ingest", src, "-w", tmp_path / "ws")
    assert code == 0
    assert sorted(Workspace(tmp_path / "ws").read_items()["id"]) == ["a/1.png", "b/2.png"]


def test_non_utf8_csv_message_and_encoding_option(cli, tmp_path):
    table = tmp_path / "latin.csv"
    table.write_bytes("text,label\ncaf\xe9 au lait,drink\n".encode("latin-1"))
    code, _, err = cli("ingest", table, "-w", tmp_path / "ws")
    assert code == 2
    assert one_line(err) == (f"error: {table} is not valid utf-8 (byte 0xe9 on line 2); "
                             "pass --encoding, e.g. --encoding latin-1.")
    code, _, _ = cli("ingest", table, "-w", tmp_path / "ws", "--encoding", "latin-1")
    assert code == 0 and Workspace(tmp_path / "ws").read_items()["text"][0] == "café au lait"


def test_missing_labels_are_row_errors_and_html_labels_verbatim(cli, tmp_path):
    table = tmp_path / "t.jsonl"
    rows = [{"text": "a", "label": "<script>alert(1)</script>"}, {"text": "b", "label": None},
            {"text": "c", "label": float("nan")}, {"text": "d", "label": "  "}, {"text": "e", "label": "ok"}]
    table.write_text("\n".join(json.dumps(r) for r in rows).replace("NaN", "null"))
    code, _, _ = cli("ingest", table, "-w", tmp_path / "ws")
    assert code == 0
    items = Workspace(tmp_path / "ws").read_items()
    assert items["label"][0] == "<script>alert(1)</script>"
    assert list(items["error"][1:4]) == ["missing label"] * 3
    assert items["label_id"].tolist()[1:4] == [-1, -1, -1]


def test_split_layout_and_numeric_class_order(tmp_path):
    for split in ("train", "test"):
        for c in ("2", "10", "1"):
            png(tmp_path / "d" / split / c / f"{split}.png")
    result = ingest(tmp_path / "d", tmp_path / "ws")
    assert result.classes == ["1", "2", "10"]
    items = Workspace(tmp_path / "ws").read_items()
    assert set(items["split"]) == {"train", "test"} and set(items["label"]) == {"1", "2", "10"}


def test_duplicate_ids_rejected_and_previous_workspace_kept(cli, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("id,text,label\na,x,1\nb,y,2\n")
    assert cli("ingest", good, "-w", tmp_path / "ws")[0] == 0
    before = (tmp_path / "ws" / "items.parquet").read_bytes()
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text,label\na,x,1\na,y,2\n")
    code, _, err = cli("ingest", bad, "-w", tmp_path / "ws")
    assert code == 2 and one_line(err) == f"error: Column 'id' of {bad} is not a unique id: 'a' appears 2 times."
    assert (tmp_path / "ws" / "items.parquet").read_bytes() == before
    assert not list((tmp_path / "ws").glob(".*.tmp"))


def test_workspace_inside_data_folder_is_refused(cli, tmp_path):
    png(tmp_path / "d" / "a" / "1.png")
    code, _, err = cli("ingest", tmp_path / "d", "-w", tmp_path / "d" / "out")
    assert code == 2 and "labelkit never writes into the data" in one_line(err)


def test_sample_data_script_is_deterministic(tmp_path):
    import subprocess
    import sys

    subprocess.run([sys.executable, str(SAMPLE / "make.py"), "--out", str(tmp_path)], check=True, capture_output=True)
    for rel in ("digits/flipped.csv", "text/reviews.csv", "text/flipped.csv"):
        assert (tmp_path / rel).read_bytes() == (SAMPLE / rel).read_bytes(), rel
    key = pd.read_csv(tmp_path / "digits" / "flipped.csv")
    assert len(key) == 90 and (key["true_label"] != key["given_label"]).all()
    assert tree_digest(tmp_path / "digits") == tree_digest(SAMPLE / "digits")
