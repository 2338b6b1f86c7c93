"""The held-out split is fixed once at ingest and nothing that feeds training sees it (issue 21 item 2)."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from labelkit.embed import embed
from labelkit.errors import LabelkitError
from labelkit.ingest import ingest
from labelkit.issues import issues
from labelkit.selection import select
from labelkit.splits import HELDOUT_FINGERPRINT_KEY, heldout_fingerprint, heldout_split
from labelkit.train import train
from labelkit.workspace import Workspace, read_probs, write_table
from test_staleness import make_images


def _table(tmp_path, name, labels, split):
    paths = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "imgs").rglob("*.png"))
    rows = "".join(f"{p},{lab},{s}\n" for p, lab, s in zip(paths, labels, split))
    (tmp_path / name).write_text("image,label,split\n" + rows)
    return tmp_path / name


@pytest.fixture(scope="module")
def pixel_ws(tmp_path_factory):
    """An image folder with two planted label errors, ingested, pixel-embedded and checked by a sklearn probe."""
    root = tmp_path_factory.mktemp("heldout")
    data = make_images(root / "data", {"a": 30, "b": 30, "c": 30}, seed=5)
    for name in ("img000.png", "img001.png"):
        (data / "a" / name).rename(data / "b" / f"x{name}")
    ws = root / "ws"
    ingest(data, ws)
    embed(ws, model="pixels")
    issues(ws, probe="sklearn")
    return ws


def test_split_is_fixed_at_ingest_by_id(pixel_ws):
    manifest = Workspace(pixel_ws).read_manifest()
    record = manifest["heldout"]
    held = pq.read_table(pixel_ws / "heldout.parquet").column("id").to_pylist()
    items = Workspace(pixel_ws).read_items(columns=["id", "label_id"])
    expected = items["id"][heldout_split(items["id"].tolist(), items["label_id"].to_numpy(), fraction=0.2)]
    assert sorted(held) == sorted(expected) and len(held) == 19  # ⌈0.2·28⌉ + ⌈0.2·32⌉ + ⌈0.2·30⌉ = 6 + 7 + 6
    assert record == {"path": "heldout.parquet", "rows": 19, "fraction": 0.2, "source": "hash of id",
                      "salt": "heldout", "ids_fingerprint": heldout_fingerprint(held)}


def test_probe_predicts_heldout_rows_from_a_model_that_never_saw_them(pixel_ws):
    held = set(pq.read_table(pixel_ws / "heldout.parquet").column("id").to_pylist())
    probs = pq.read_table(pixel_ws / "probs.parquet").to_pandas()
    is_held = probs["id"].isin(held).to_numpy()
    assert (probs["fold"].to_numpy()[is_held] == -1).all() and (probs["fold"].to_numpy()[~is_held] >= 0).all()
    summary = Workspace(pixel_ws).read_manifest()["stages"]["issues"]
    assert summary["heldout"] == {"rows": 19, "ids_fingerprint": heldout_fingerprint(held), "in_probe_training": False}
    meta = pq.read_schema(pixel_ws / "probs.parquet").metadata
    assert meta[HELDOUT_FINGERPRINT_KEY].decode() == heldout_fingerprint(held)


def test_heldout_labels_do_not_change_any_probability(tmp_path):
    """Two datasets that differ only in the labels of their test-split rows get identical probabilities."""
    make_images(tmp_path / "imgs", {"a": 24, "b": 24, "c": 24}, seed=7)
    labels = np.repeat(["a", "b", "c"], 24)
    split = np.where(np.arange(72) % 4 == 0, "test", "train")
    relabelled = labels.copy()
    test = split == "test"
    relabelled[test] = np.roll(labels[test], 5)  # the test rows' labels, shuffled across classes
    assert (relabelled != labels).sum() > 10
    runs = []
    for name, labs in (("one.csv", labels), ("two.csv", relabelled)):
        ws = tmp_path / name.replace(".csv", "")
        ingest(_table(tmp_path, name, labs, split), ws)
        embed(ws, model="pixels")
        issues(ws, probe="sklearn")
        runs.append((read_probs(ws / "probs.parquet"), pq.read_table(ws / "probs.parquet").column("fold").to_numpy()))
    (ids1, p1), f1 = runs[0]
    (ids2, p2), f2 = runs[1]
    assert ids1 == ids2 and np.array_equal(f1, f2) and (f1[test] == -1).all() and (f1[~test] >= 0).all()
    np.testing.assert_allclose(p1, p2, atol=1e-6)


def test_prune_then_distill_from_the_probe_reports_the_manifest_heldout(pixel_ws, tmp_path):
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(pixel_ws, ws)
    pruned = select(ws, "prune")
    kept = set(pq.read_table(ws / "subsets" / "prune.parquet").column("id").to_pylist())
    assert pruned.size == len(kept) and len(kept) + pruned.details["dropped"] == 90
    result = train(ws, loss="distill", subset="prune", max_epochs=5, name="student")
    record = Workspace(ws).read_manifest()["heldout"]
    held = pq.read_table(ws / "heldout.parquet").column("id").to_pylist()
    card = result.card
    assert card["heldout"] == {"rows": 19, "fraction": 0.2, "source": "hash of id",
                               "ids_fingerprint": record["ids_fingerprint"]}
    assert card["heldout"]["ids_fingerprint"] == heldout_fingerprint(held)
    assert card["teachers"] == ["issues probe (probs.parquet)"] and card["training"]["rows"] + \
        card["training"]["inner_validation_rows"] <= 90 - 19

    with pytest.raises(LabelkitError, match=r"The held-out split of .* was fixed at ingest \(19 rows, hash of id, "
                                            r"fraction 0.2\); 'heldout_fraction' 0.3 cannot change it."):
        train(ws, heldout_fraction=0.3, max_epochs=2)


def test_distill_refuses_a_probe_computed_with_another_split(pixel_ws, tmp_path):
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(pixel_ws, ws)
    table = pq.read_table(ws / "probs.parquet")
    meta = dict(table.schema.metadata) | {HELDOUT_FINGERPRINT_KEY: b"0" * 32}
    write_table(table.replace_schema_metadata(meta), ws / "probs.parquet")
    with pytest.raises(LabelkitError, match=r"probs.parquet was not computed with this workspace's held-out split; "
                                            r"run `labelkit issues -w .*` again."):
        train(ws, loss="distill", max_epochs=2)
