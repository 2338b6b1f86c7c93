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


# ---------------------------------------------------------------------------------------------
# Bring your own embeddings (--embedding-col)


def clustered_vectors(n: int = 60, d: int = 8, seed: int = 0):
    """Return (vectors float64, labels): three well-separated clusters, labels by cluster."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    centres = rng.normal(0, 5, (3, d))
    return centres[labels] + rng.normal(0, 0.3, (n, d)), [f"c{k}" for k in labels]


def test_embedding_col_parquet_becomes_the_workspace_embeddings(cli, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labelkit.features import load_workspace_embeddings

    X, labels = clustered_vectors()
    labels[5] = None  # a row without a label is kept, unusable, and gets no embedding row
    table = pa.table({"id": [f"r{i}" for i in range(len(X))], "label": labels,
                      "emb": pa.array(X.tolist(), pa.list_(pa.float64()))})
    pq.write_table(table, tmp_path / "vec.parquet", row_group_size=16)  # several chunks
    code, out, err = cli("ingest", tmp_path / "vec.parquet", "-w", tmp_path / "ws", "--embedding-col", "emb")
    assert code == 0, err
    assert "embedding=emb" in out and "no `embed` needed" in one_line(out)
    ws = Workspace(tmp_path / "ws")
    manifest = ws.read_manifest()
    embed_stage = manifest["stages"]["embed"]
    assert embed_stage["embedding_key"] == "user-emb" and embed_stage["model"] == "user" and embed_stage["dim"] == 8
    assert embed_stage["rows"] == 59 and embed_stage["skipped_unusable"] == 1
    assert manifest["modality"] == "embedding" and manifest["stages"]["ingest"]["embedding_key"] == "user-emb"
    key, ids, matrix = load_workspace_embeddings(ws)
    assert key == "user-emb" and ids == [f"r{i}" for i in range(60) if i != 5]
    assert matrix.dtype == np.float32 and np.array_equal(matrix, np.delete(X, 5, axis=0).astype(np.float32))
    stored = pq.read_table(tmp_path / "ws" / "embeddings" / "user-emb.parquet")
    assert stored.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    items = ws.read_items().set_index("id")
    assert items.loc["r5", "error"] == "missing label" and items.loc["r0", "label"] == "c0"
    assert items.loc["r7", "content_hash"] == hashlib.sha1(X[7].astype(np.float32).tobytes()).hexdigest()
    assert items.loc["r7", "source"] == "vec.parquet:8" and items.loc["r7", "modality"] == "embedding"
    assert stored.column("content_hash").to_pylist()[:2] == items.loc[["r0", "r1"], "content_hash"].tolist()


def test_embedding_col_csv_and_jsonl_json_arrays(tmp_path):
    from labelkit.features import load_workspace_embeddings

    X, labels = clustered_vectors(n=9, d=4)
    csv = tmp_path / "vec.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(9)], "label": labels,
                  "vec": [json.dumps(r.tolist()) for r in X]}).to_csv(csv, index=False)
    jsonl = tmp_path / "vec.jsonl"
    jsonl.write_text("\n".join(json.dumps({"label": lab, "vec": r.tolist()}) for lab, r in zip(labels, X)))
    for source, modality in ((csv, "text"), (jsonl, "embedding")):
        result = ingest(source, tmp_path / source.suffix, embedding_col="vec")
        assert result.embedding_key == "user-vec" and result.modality == modality
        _, ids, matrix = load_workspace_embeddings(Workspace(tmp_path / source.suffix))
        assert ids == [str(i) for i in range(9)] and np.array_equal(matrix, X.astype(np.float32))


@pytest.mark.parametrize("case, expected", [
    ("ragged", "{p}: row 3 (id 'r2') of embedding column 'emb' has 2 values where row 1 has 3; "
               "every embedding needs the same dimension."),
    ("nan", "{p}: row 2 (id 'r1') of embedding column 'emb' contains NaN or infinity."),
    ("null_cell", "{p}: row 3 (id 'r2') of embedding column 'emb' is empty; every row needs an embedding."),
    ("null_value", "{p}: row 2 (id 'r1') of embedding column 'emb' contains a missing value (null)."),
    ("too_big", "{p}: row 3 (id 'r2') of embedding column 'emb' has a value beyond the float32 range."),
    ("strings", "{p}: row 1 (id 'r0') of embedding column 'emb' is not a list of numbers "
                "(the column's type is list<element: string>)."),
    ("missing_column", "Embedding column 'emb' not found in {p}; available columns: id, label, other."),
])
def test_bad_parquet_embeddings_exit_2_naming_the_row_and_write_nothing(cli, tmp_path, case, expected):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [[0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]]
    emb = {"ragged": [rows[0], rows[1], [1.0, 2.0]], "nan": [rows[0], [1.0, float("nan"), 3.0], rows[2]],
           "null_cell": [rows[0], rows[1], None], "null_value": [rows[0], [1.0, None, 3.0], rows[2]],
           "too_big": [rows[0], rows[1], [1e300, 0.0, 0.0]]}.get(case, rows)
    column = pa.array([["a", "b"]] * 3) if case == "strings" else pa.array(emb, pa.list_(pa.float64()))
    table = pa.table({"id": ["r0", "r1", "r2"], "label": ["a", "b", "a"],
                      "other" if case == "missing_column" else "emb": column})
    pq.write_table(table, tmp_path / "vec.parquet")
    code, _, err = cli("ingest", tmp_path / "vec.parquet", "-w", tmp_path / "ws", "--embedding-col", "emb")
    assert code == 2 and one_line(err) == "error: " + expected.format(p=tmp_path / "vec.parquet")
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("cell, expected", [
    ('"[1, 2"', "is not a JSON array of numbers (got '[1, 2')."),
    ('"[1, ""x"", 3]"', "is not a list of numbers (got '[1, \"x\", 3]')."),
    ('"[1, Infinity, 3]"', "contains NaN or infinity."),
    ('"[1, 2]"', "has 2 values where row 1 has 3; every embedding needs the same dimension."),
    ("", "is empty; every row needs an embedding."),
])
def test_bad_csv_embeddings_name_the_file_line_and_id(cli, tmp_path, cell, expected):
    table = tmp_path / "vec.csv"
    table.write_text(f'id,text,label,vec\nu1,hello,a,"[0, 1, 2]"\nu2,world,b,{cell}\n')
    code, _, err = cli("ingest", table, "-w", tmp_path / "ws", "--embedding-col", "vec")
    assert code == 2 and one_line(err) == f"error: {table}: row 3 (id 'u2') of embedding column 'vec' {expected}"
    assert not (tmp_path / "ws").exists()


def test_embedding_col_needs_a_table_and_workers_is_checked(cli, tmp_path):
    png(tmp_path / "d" / "a" / "1.png")
    code, _, err = cli("ingest", tmp_path / "d", "-w", tmp_path / "ws", "--embedding-col", "emb")
    assert code == 2 and one_line(err) == (f"error: --embedding-col 'emb' needs a table (CSV/TSV/JSONL/Parquet); "
                                           f"{tmp_path / 'd'} is an image folder.")
    code, _, err = cli("ingest", tmp_path / "d", "-w", tmp_path / "ws", "--workers", "-1")
    assert code == 2 and one_line(err) == ("error: The 'workers' parameter of ingest must be an int in the range "
                                           "[0, inf). Got -1 instead.")
    assert not (tmp_path / "ws").exists()


def test_issues_and_audit_use_user_embeddings_without_embed(cli, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    X, labels = clustered_vectors(n=45, d=6)
    labels[4] = "c2"  # one flipped label in a tight cluster of c1
    texts = [f"row {i}" for i in range(45)]
    pq.write_table(pa.table({"text": texts, "label": labels, "v": pa.array(X.astype(np.float32).tolist(),
                                                                           pa.list_(pa.float32(), 6))}),
                   tmp_path / "t.parquet")
    code, out, err = cli("audit", tmp_path / "t.parquet", "-w", tmp_path / "ws", "--embedding-col", "v",
                         "--fail-on", "label_issues>5", "--no-report", "--json")
    assert code == 0, err
    summary = json.loads(out)["summary"]
    manifest = Workspace(tmp_path / "ws").read_manifest()
    assert manifest["stages"]["embed"]["model"] == "user" and summary["embedding_key"] == "user-v"
    assert not (tmp_path / "ws" / "embeddings" / "minilm-l6-v2.parquet").exists()  # embed never ran
    flagged = pd.read_parquet(tmp_path / "ws" / "issues.parquet").query("is_label_issue")["id"].tolist()
    assert "4" in flagged


def test_vector_only_table_audits_and_reports_and_embed_refuses(cli, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    X, labels = clustered_vectors(n=45, d=6)
    pq.write_table(pa.table({"label": labels, "v": pa.array(X.astype(np.float32).tolist(), pa.list_(pa.float32()))}),
                   tmp_path / "v.parquet")
    code, out, err = cli("audit", tmp_path / "v.parquet", "-w", tmp_path / "ws", "--embedding-col", "v",
                         "--fail-on", "label_issues>40")
    assert code == 0, err
    assert (tmp_path / "ws" / "report.html").stat().st_size > 0
    code, out, err = cli("embed", "-w", tmp_path / "ws")
    assert code == 2 and "are your own vectors" in one_line(err) and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# Parallel image-folder ingest


def test_process_pool_ingest_equals_in_process(tmp_path):
    from labelkit.ingest import read_image_folder_batches

    src = tmp_path / "data"
    for i in range(23):
        png(src / f"c{i % 3}" / f"{i:03d}.png", value=i * 7, size=(4 + i % 5, 6))
    Image.fromarray(np.full((9, 5, 3), 40, np.uint8)).save(src / "c1" / "x.jpg", quality=90)
    (src / "c2" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    pooled = pa_concat(read_image_folder_batches(src, workers=2, batch_size=4))
    local = pa_concat(read_image_folder_batches(src, workers=0))
    assert pooled.equals(local) and pooled.num_rows == 25
    rows = {r["id"]: r for r in pooled.to_pylist()}
    assert rows["c1/x.jpg"]["width"] == 5 and rows["c1/x.jpg"]["height"] == 9
    assert (rows["c0/003.png"]["width"], rows["c0/003.png"]["height"]) == (6, 7)  # an array (7, 6) is 6 wide
    assert rows["c0/003.png"]["content_hash"] == hashlib.sha1((src / "c0" / "003.png").read_bytes()).hexdigest()
    assert rows["c2/bad.png"]["error"] == "not a readable image" and rows["c2/bad.png"]["bytes"] == 15
    ingest(src, tmp_path / "a", workers=2)
    ingest(src, tmp_path / "b", workers=0)
    a, b = Workspace(tmp_path / "a").read_items_table(), Workspace(tmp_path / "b").read_items_table()
    assert a.equals(b)


def pa_concat(batches):
    import pyarrow as pa

    return pa.Table.from_batches(list(batches))


def test_header_fast_path_never_accepts_what_pillow_rejects():
    import io

    rng = np.random.default_rng(0)
    accepted = 0
    for fmt, mode, shape in (("PNG", "L", (12, 10)), ("PNG", "RGBA", (5, 7, 4)), ("JPEG", "RGB", (16, 11, 3))):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(buf, format=fmt)
        data = buf.getvalue()
        variants = [data[:cut] for cut in range(1, len(data))]
        for k in range(len(data)):
            flipped = bytearray(data)
            flipped[k] ^= 0x55
            variants.append(bytes(flipped))
        for variant in [data] + variants:
            fast = _fast_size(variant)
            if fast is None:
                continue
            accepted += 1
            with Image.open(io.BytesIO(variant)) as im:  # raises if Pillow rejects what the fast path took
                assert im.size == fast
                im.verify()
    assert accepted > 3  # the untouched files, and flips inside pixel data, take the fast path
    truncated = describe_image_files_of(data[:-2])  # sound up to the scan, end marker cut off
    assert truncated["error"] == "truncated image (JPEG end marker missing)" and truncated["width"] == 11


def describe_image_files_of(data: bytes) -> dict:
    import tempfile

    from labelkit.ingest import describe_image_files

    with tempfile.NamedTemporaryFile(suffix=".jpg") as f:
        f.write(data)
        f.flush()
        return {k: v[0] for k, v in describe_image_files([f.name]).items()}


def _fast_size(data: bytes):
    from labelkit.ingest import PNG_SIGNATURE, jpeg_size, png_size

    return png_size(data) if data[:8] == PNG_SIGNATURE else jpeg_size(data) if data[:2] == b"\xff\xd8" else None


def test_symlinks_out_of_the_data_folder_are_refused_unless_allowed(cli, tmp_path):
    outside = tmp_path / "elsewhere"
    png(outside / "far.png", 9)
    png(outside / "more" / "deep.png", 10)
    src = tmp_path / "data"
    png(src / "cat" / "1.png")
    png(src / "dog" / "2.png", 20)
    os.symlink(outside / "far.png", src / "cat" / "link.png")
    os.symlink(outside / "more", src / "dog" / "more")
    os.symlink(src / "dog" / "2.png", src / "cat" / "inside.png")  # stays in the folder: followed
    code, _, _ = cli("ingest", src, "-w", tmp_path / "ws")
    assert code == 0
    items = Workspace(tmp_path / "ws").read_items().set_index("id")
    assert sorted(items.index) == ["cat/1.png", "cat/inside.png", "cat/link.png", "dog/2.png", "dog/more"]
    assert items.loc["cat/link.png", "error"] == (f"symlink outside the data folder: cat/link.png -> "
                                                  f"{outside / 'far.png'} (pass --allow-outside-root)")
    assert items.loc["dog/more", "error"] == (f"symlink outside the data folder: dog/more -> {outside / 'more'} "
                                              "(pass --allow-outside-root)")
    assert items.loc["dog/more", "label"] == "dog" and pd.isna(items.loc["cat/link.png", "content_hash"])
    assert pd.isna(items.loc["cat/inside.png", "error"])
    assert items.loc["cat/inside.png", "content_hash"] == items.loc["dog/2.png", "content_hash"]
    code, _, _ = cli("ingest", src, "-w", tmp_path / "ws", "--allow-outside-root")
    items = Workspace(tmp_path / "ws").read_items().set_index("id")
    assert code == 0 and items["error"].isna().all()
    assert sorted(items.index) == ["cat/1.png", "cat/inside.png", "cat/link.png", "dog/2.png", "dog/more/deep.png"]


def test_embedding_col_fixed_size_and_large_lists_of_integers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labelkit.features import load_workspace_embeddings

    ints = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [-1, 0, 1]]
    for name, kind in (("fixed", pa.list_(pa.int32(), 3)), ("large", pa.large_list(pa.int64()))):
        pq.write_table(pa.table({"label": ["a", "b", "a", "b"], "e": pa.array(ints, kind)}), tmp_path / f"{name}.parquet")
        ingest(tmp_path / f"{name}.parquet", tmp_path / name, embedding_col="e")
        _, ids, matrix = load_workspace_embeddings(Workspace(tmp_path / name))
        assert ids == ["0", "1", "2", "3"] and matrix.dtype == np.float32
        assert matrix.tolist() == [[float(v) for v in row] for row in ints]


def test_duplicate_ids_in_a_parquet_table_are_found_column_wise(cli, tmp_path):
    pd.DataFrame({"id": ["a", "b", None, "b", "c", "b"], "text": list("uvwxyz"), "label": list("pqpqpq")}).to_parquet(
        tmp_path / "t.parquet")
    code, _, err = cli("ingest", tmp_path / "t.parquet", "-w", tmp_path / "ws")
    assert code == 2 and one_line(err) == f"error: Column 'id' of {tmp_path / 't.parquet'} is not a unique id: 'b' appears 3 times."
