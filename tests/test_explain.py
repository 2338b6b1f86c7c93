"""`labelkit explain`: a flagged row's findings, reasons, probabilities and nearest rows.

One planted workspace (your own embeddings, so no embedder runs): three well-separated classes,
row r005 labelled 'dog' inside the 'cat' cluster, and a blob of rows with random labels that
the weak-slices check must find end to end through `issues`.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import one_line

CLASSES = ["cat", "dog", "eel"]
PER_CLASS, BLOB, D = 60, 60, 16
FLIPPED = "r005"


def _table(seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(CLASSES) + 1, D)) * 3
    cluster = np.repeat(np.arange(len(CLASSES) + 1), [PER_CLASS] * len(CLASSES) + [BLOB])
    x = (centres[cluster] + rng.normal(size=(len(cluster), D))).astype(np.float32)
    labels = np.where(cluster < len(CLASSES), cluster, rng.integers(0, len(CLASSES), size=len(cluster)))
    given = np.array(CLASSES, object)[labels]
    given[int(FLIPPED[1:])] = "dog"  # row 5 is in the 'cat' cluster
    ids = [f"r{i:03d}" for i in range(len(x))]
    table = pa.table({"id": ids, "text": [f"item {i}" for i in range(len(x))], "label": given.tolist(),
                      "emb": pa.array(list(x), pa.list_(pa.float32()))})
    return table, x, cluster


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from labelkit.ingest import ingest
    from labelkit.issues import issues

    root = tmp_path_factory.mktemp("explain")
    table, x, cluster = _table()
    pq.write_table(table, root / "data.parquet")
    ws = root / "ws"
    ingest(root / "data.parquet", ws, id_col="id", text_col="text", label_col="label", embedding_col="emb")
    result = issues(ws, probe="logreg")
    return ws, result.summary, table, x, cluster


def test_issues_runs_weak_slices_and_class_overlap_end_to_end(planted):
    ws, summary, table, _, cluster = planted
    assert summary["weak_slices"] >= 1 and summary["worst_slice_accuracy"] < 0.6
    assert summary["checks"]["weak_slices"]["flagged"] == summary["weak_slice_rows"]
    # Class overlap, derived from the run's own out-of-sample probabilities: the largest pair mass of
    # cleanlab's joint; the random-label blob is confusion spread over all three pairs, not a
    # concentrated one between two classes, so no pair overlaps.
    from cleanlab.count import estimate_joint

    probs = pq.read_table(ws / "probs.parquet").to_pandas().set_index("id").loc[table.column("id").to_pylist()]
    given = np.array([CLASSES.index(c) for c in table.column("label").to_pylist()])
    joint = estimate_joint(given, np.stack(probs["pred_probs"].to_numpy()))
    pairs = joint + joint.T
    expected = max(pairs[a, b] for a in range(3) for b in range(a + 1, 3))
    assert summary["max_class_overlap"] == pytest.approx(expected, rel=1e-3)
    assert 0 < summary["max_class_overlap"] < 0.1 and summary["overlapping_class_pairs"] == 0
    iss = pq.read_table(ws / "issues.parquet").to_pandas().set_index("id").loc[table.column("id").to_pylist()]
    blob = cluster == len(CLASSES)
    weak = iss["in_weak_slice"].to_numpy()
    assert weak[blob].mean() >= 0.8 and weak[~blob].mean() <= 0.02
    assert iss.loc[weak, "reason"].str.contains(r"in slice \d+ \(\d+ rows\) where the probe is right").all()
    from labelkit.gate import evaluate, parse_rules

    verdict = evaluate(parse_rules("weak_slices>0,overlapping_class_pairs>0"), summary)
    assert [r["failed"] for r in verdict["results"]] == [True, False]


def test_flagged_row_names_its_suggested_class_and_neighbours(planted, cli):
    ws, _, _, x, cluster = planted
    code, out, err = cli("explain", FLIPPED, "-w", ws, "--json", "-k", "5")
    assert code == 0, err
    data = json.loads(out)
    assert {"id", "label", "usable", "findings", "reason", "suggested_label", "label_quality", "probabilities",
            "neighbors", "embedding_key", "warnings", "flagged"} <= set(data)
    assert data["label"] == "dog" and data["suggested_label"] == "cat" and data["flagged"]
    label_finding = [f for f in data["findings"] if f["check"] == "label_issues"]
    assert label_finding and label_finding[0]["flags"][0] == "is_label_issue"
    assert label_finding[0]["score"]["name"] == "label_quality" and label_finding[0]["score"]["value"] < 0.5
    assert "labelled 'dog'" in data["reason"] and "probe says 'cat'" in data["reason"]
    assert data["probabilities"][0]["class"] == "cat" and len(data["probabilities"]) == len(CLASSES)
    assert data["probabilities"][0]["probability"] > 0.5
    # Nearest rows: the exact cosine top 5 of the raw vectors, self excluded, all in the 'cat' cluster.
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit[5]
    sims[5] = -np.inf
    expected = np.argsort(-sims)[:5]
    assert [n["id"] for n in data["neighbors"]] == [f"r{i:03d}" for i in expected]
    assert [n["similarity"] for n in data["neighbors"]] == pytest.approx(sims[expected].tolist(), abs=1e-4)
    assert all(n["label"] == "cat" for n in data["neighbors"]) and (cluster[expected] == 0).all()
    assert data["warnings"] == []

    code, out, _ = cli("explain", FLIPPED, "-w", ws, "-k", "3")
    text = one_line(out)
    assert code == 0
    assert "r005: labelled 'dog'" in text and "Label issues" in text and "Probe suggests 'cat'" in text
    assert "Reason: labelled 'dog'" in text
    assert f"r{expected[0]:03d}" in text and f"r{expected[3]:03d}" not in text


def test_row_in_weak_slice_shows_that_finding(planted):
    from labelkit.explain import explain

    ws = planted[0]
    iss = pq.read_table(ws / "issues.parquet", columns=["id", "in_weak_slice", "is_label_issue"]).to_pandas()
    row = iss.loc[iss["in_weak_slice"] & ~iss["is_label_issue"], "id"].iloc[0]
    r = explain(ws, row, k=3)
    assert [f["check"] for f in r.findings] == ["weak_slices"]
    assert r.findings[0]["score"]["name"] == "slice_accuracy" and r.reason.startswith("in slice ")


def test_unflagged_row_has_no_findings(planted):
    from labelkit.explain import explain

    ws, *_ = planted
    iss = pq.read_table(ws / "issues.parquet").to_pandas()
    flags = iss.select_dtypes(bool).any(axis=1)
    row = iss.loc[~flags, "id"].iloc[0]
    r = explain(ws, row)
    assert r.findings == [] and not r.flagged and r.reason is None and len(r.neighbors) == 10


def test_unknown_id_exits_2_naming_it(planted, cli):
    ws, *_ = planted
    code, out, err = cli("explain", "no-such-row", "-w", ws)
    assert code == 2 and out == ""
    assert one_line(err) == f"error: No row with id 'no-such-row' in {ws / 'items.parquet'}."


def test_workspace_without_issues_and_stale_issues(planted, tmp_path, cli):
    from labelkit.ingest import ingest

    table, *_ = _table()
    pq.write_table(table, tmp_path / "data.parquet")
    fresh = tmp_path / "fresh"
    ingest(tmp_path / "data.parquet", fresh, id_col="id", text_col="text", label_col="label", embedding_col="emb")
    code, _, err = cli("explain", FLIPPED, "-w", fresh)
    assert code == 2
    assert one_line(err) == (f"error: No issues in {fresh} yet ({fresh / 'issues.parquet'} is missing); run "
                             f"`labelkit issues -w {fresh}` first.")

    # Issues computed before a re-ingest that changed a label are refused, not shown.
    ws = tmp_path / "ws"
    shutil.copytree(planted[0], ws)
    changed = table.set_column(2, "label", pa.array(["eel"] + table.column("label").to_pylist()[1:]))
    pq.write_table(changed, tmp_path / "data.parquet")
    ingest(tmp_path / "data.parquet", ws, id_col="id", text_col="text", label_col="label", embedding_col="emb")
    code, _, err = cli("explain", FLIPPED, "-w", ws)
    assert code == 2 and "was computed from different data; run `labelkit issues" in one_line(err)


def test_issues_without_reason_column_shows_flags_only(planted, tmp_path):
    from labelkit.explain import explain

    ws = tmp_path / "ws"
    shutil.copytree(planted[0], ws)
    table = pq.read_table(ws / "issues.parquet")
    pq.write_table(table.drop(["reason"]).replace_schema_metadata(table.schema.metadata), ws / "issues.parquet")
    r = explain(ws, FLIPPED)
    assert r.reason is None and r.findings[0]["check"] == "label_issues"
    assert "has no reason column" in r.warnings[0]


def test_bad_k_is_a_user_error(planted):
    from labelkit.errors import LabelkitError
    from labelkit.explain import explain

    with pytest.raises(LabelkitError, match=r"The 'k' parameter of explain must be an int in the range \[1, inf\). "
                                            "Got 0 instead."):
        explain(planted[0], FLIPPED, k=0)


def test_unusable_row_says_why(tmp_path, cli):
    from labelkit.ingest import ingest

    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["x", "y", "z"], "label": ["p", None, "q"]}),
                   tmp_path / "data.parquet")
    ingest(tmp_path / "data.parquet", tmp_path / "ws", id_col="id", text_col="text", label_col="label")
    code, out, _ = cli("explain", "b", "-w", tmp_path / "ws", "--json")
    data = json.loads(out)
    assert code == 0 and not data["usable"] and data["error"] == "missing label" and data["findings"] == []
    code, out, _ = cli("explain", "b", "-w", tmp_path / "ws")
    assert code == 0 and one_line(out) == "b: labelled None; unusable: missing label"
