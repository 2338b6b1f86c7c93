"""Derived tables carry the fingerprint of the items they came from; readers refuse stale ones (issue 21 item 1)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import one_line
from labelkit.embed import embed
from labelkit.errors import LabelkitError
from labelkit.ingest import ingest
from labelkit.issues import issues
from labelkit.workspace import Workspace, items_fingerprint, read_fingerprints


def make_images(root, counts: dict[str, int], *, seed: int = 0, prefix: str = "img", size: int = 12):
    """Write `counts[c]` small PNGs per class c under root/c/: a class colour plus noise (pixel-separable)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        base = np.array([(60 * k) % 256, (120 + 70 * k) % 256, (200 - 50 * k) % 256], float)
        for i in range(n):
            pixels = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{prefix}{i:03d}.png")
    return root


@pytest.fixture
def two_datasets(tmp_path):
    a = make_images(tmp_path / "A", {"cat": 30, "dog": 30, "fox": 30}, seed=0, prefix="a")
    b = make_images(tmp_path / "B", {"cat": 25, "dog": 25, "fox": 25}, seed=1, prefix="b")
    for name in ("b000.png", "b001.png"):  # two cats labelled dog: B's label errors
        (b / "cat" / name).rename(b / "dog" / f"x{name}")
    return a, b


def test_items_fingerprint_changes_with_ids_content_and_labels():
    base = {"id": ["a", "b", "c"], "content_hash": ["h1", "h2", "h3"], "label": ["x", "y", "x"],
            "label_id": pa.array([0, 1, 0], pa.int32()), "error": pa.array([None, None, None], pa.string())}
    fp = items_fingerprint(pa.table(base))
    assert len(fp) == 32 and fp == items_fingerprint(pa.table(base))
    changed = [dict(base, id=["a", "b", "d"]), dict(base, content_hash=["h1", "h2", "h4"]),
               dict(base, label=["x", "x", "x"], label_id=pa.array([0, 0, 0], pa.int32())),
               dict(base, error=pa.array([None, "unreadable", None], pa.string())),
               dict(base, id=["ab", "", "c"])]  # same concatenated bytes, different boundaries
    assert len({fp} | {items_fingerprint(pa.table(c)) for c in changed}) == len(changed) + 1
    # chunking does not matter, only the values
    chunked = pa.concat_tables([pa.table(base).slice(0, 1), pa.table(base).slice(1)])
    assert items_fingerprint(chunked) == fp


def test_reingest_makes_every_derived_table_stale(two_datasets, tmp_path, cli):
    a, b = two_datasets
    ws = tmp_path / "ws"
    assert cli("ingest", a, "-w", ws)[0] == 0
    assert cli("embed", "-w", ws, "--model", "pixels")[0] == 0
    assert cli("issues", "-w", ws, "--probe", "sklearn")[0] == 0
    assert cli("select", "prune", "-w", ws)[0] == 0
    code, _, err = cli("train", "-w", ws, "--max-epochs", "3", "--name", "m")
    assert code == 0, err
    manifest = Workspace(ws).read_manifest()
    fp_a = manifest["items_fingerprint"]
    assert read_fingerprints(ws / "issues.parquet")[0] == fp_a == read_fingerprints(ws / "probs.parquet")[0]
    assert read_fingerprints(ws / "subsets" / "prune.parquet")[0] == fp_a
    assert manifest["stages"]["issues"]["items_fingerprint"] == fp_a
    assert json.loads((ws / "models" / "m" / "model_card.json").read_text())["items_fingerprint"] == fp_a

    assert cli("ingest", b, "-w", ws)[0] == 0  # different rows, same workspace
    assert Workspace(ws).read_manifest()["items_fingerprint"] != fp_a
    stale = f"error: {ws / 'issues.parquet'} was computed from different data; run `labelkit issues -w {ws}` again."
    for args in (("report", "-w", ws), ("select", "prune", "-w", ws, "--name", "p2")):
        code, out, err = cli(*args)
        assert code == 2 and one_line(err) == stale and "Traceback" not in err
    assert not (ws / "report.html").exists() and not (ws / "subsets" / "p2.parquet").exists()
    from labelkit.relabel import relabel

    with pytest.raises(LabelkitError, match="issues.parquet was computed from different data"):
        relabel(ws, method="llm", endpoint="http://127.0.0.1:9", llm_model="m")

    assert cli("embed", "-w", ws, "--model", "pixels")[0] == 0  # train needs B's embeddings to get that far
    code, _, err = cli("train", "-w", ws, "--subset", "prune", "--max-epochs", "3")
    assert code == 2 and one_line(err) == (f"error: {ws / 'subsets' / 'prune.parquet'} was computed from different "
                                           f"data; run `labelkit select METHOD --name prune -w {ws}` again.")
    code, _, err = cli("train", "-w", ws, "--loss", "distill", "--max-epochs", "3")
    assert code == 2 and one_line(err) == (f"error: {ws / 'probs.parquet'} was computed from different data; "
                                           f"run `labelkit issues -w {ws}` again.")
    code, _, err = cli("train", "-w", ws, "--loss", "distill", "--teacher", "m", "--max-epochs", "3")
    assert code == 2 and "models/m was trained on different data" in one_line(err)

    # After `issues` the report describes B only: none of A's rows or flags.
    assert cli("issues", "-w", ws, "--probe", "sklearn")[0] == 0
    code, _, err = cli("report", "-w", ws)
    assert code == 0, err
    data = json.loads((ws / "report.json").read_text())
    b_ids = set(pq.read_table(ws / "items.parquet").column("id").to_pylist())
    assert {"dog/xb000.png", "dog/xb001.png"} <= set(data["label_issue_ids_shown"]) <= b_ids
    assert not any(i.split("/")[-1].startswith("a") for i in b_ids)
    assert "model" not in data  # A's model card is not B's model


def test_embeddings_of_other_content_are_not_reused(tmp_path, cli):
    """A table source numbers its rows, so two tables share ids: content hashes decide."""
    imgs = make_images(tmp_path / "imgs", {"cat": 12, "dog": 12}, seed=3)
    paths = sorted(str(p.relative_to(tmp_path)) for p in imgs.rglob("*.png"))
    labels = [p.split("/")[1] for p in paths]
    (tmp_path / "a.csv").write_text("image,label\n" + "".join(f"{p},{l}\n" for p, l in zip(paths, labels)))
    swapped = paths[:4][::-1] + paths[4:]  # rows 0-3 now show other images under the same ids
    (tmp_path / "b.csv").write_text("image,label\n" + "".join(f"{p},{l}\n" for p, l in zip(swapped, labels)))
    ws = tmp_path / "ws"
    ingest(tmp_path / "a.csv", ws)
    first = embed(ws, model="pixels")
    assert first.embedded_now == 24
    ingest(tmp_path / "b.csv", ws)
    key = "pixels-16-std"
    with pytest.raises(LabelkitError, match=r"embeddings/pixels-16-std.parquet was computed from different data "
                                            r"\(row '0' has changed since it was embedded\); run `labelkit embed"):
        issues(ws, embedding_key=key, probe="sklearn")
    assert not (ws / "probs.parquet").exists() and not (ws / "issues.parquet").exists()
    again = embed(ws, model="pixels")
    assert again.embedded_now == 4 and again.cached == 20  # only the changed rows are embedded again
    issues(ws, probe="sklearn")
    assert read_fingerprints(ws / "issues.parquet")[0] == Workspace(ws).read_manifest()["items_fingerprint"]
