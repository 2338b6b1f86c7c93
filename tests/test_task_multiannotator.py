"""Several annotators per item: majority vote at ingest, CROWDLAB consensus, annotator quality, gate."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labelkit.errors import LabelkitError
from labelkit.tasks import TASK_LABEL_COL
from labelkit.tasks.multiannotator import get_consensus, get_majority_vote, prepare_table

from conftest import SAMPLE

SAMPLE_TABLE = SAMPLE / "multiannotator" / "annotations.csv"
ANNOTATORS = "ann_1,ann_2,ann_3,ann_4,ann_5,ann_6"


def planted(n=600, K=4, *, bad=True, seed=0):
    """Return (annotator labels (n, M) with -1, true labels, out-of-sample-like probabilities).

    Five annotators right 90 % … 70 % of the time, each item labelled by three; with `bad`, the
    last annotator answers at random and is on most items. The probabilities put 0.7 on the true
    class for 85 % of rows (a decent, imperfect model).
    """
    rng = np.random.default_rng(seed)
    true = rng.integers(K, size=n)
    acc = [0.9, 0.85, 0.8, 0.75, 0.7] + ([None] if bad else [0.9])
    weights = np.array([1, 1, 1, 1, 1, 3 if bad else 1], float)
    labels = np.full((n, len(acc)), -1, np.int64)
    for i in range(n):
        for a in rng.choice(len(acc), size=3, replace=False, p=weights / weights.sum()):
            if acc[a] is None:
                labels[i, a] = rng.integers(K)
            else:
                labels[i, a] = true[i] if rng.random() < acc[a] else rng.choice([k for k in range(K) if k != true[i]])
    top = np.where(rng.random(n) < 0.85, true, (true + rng.integers(1, K, size=n)) % K)
    probs = np.full((n, K), 0.3 / (K - 1), np.float32)
    probs[np.arange(n), top] = 0.7
    return labels, true, probs


# ---------------------------------------------------------------------------------------------
# Pure functions


def test_majority_vote_breaks_ties_by_class_order():
    labels = np.array([[2, 2, 0], [1, 3, -1], [3, 1, -1], [-1, -1, -1], [0, -1, -1], [3, 3, 1]])
    majority, tie = get_majority_vote(labels, 4)
    assert majority.tolist() == [2, 1, 1, -1, 0, 3]  # 1-1 ties go to the lower class, whatever the column order
    assert tie.tolist() == [False, True, True, False, False, False]
    float_labels = np.where(labels < 0, np.nan, labels).astype(float)
    assert get_majority_vote(float_labels, 4)[0].tolist() == majority.tolist()


def test_crowdlab_ranks_the_random_annotator_last_and_beats_majority_vote():
    labels, true, probs = planted()
    majority, _ = get_majority_vote(labels, 4)
    found = get_consensus(labels, probs, annotators=[f"a{i}" for i in range(6)])
    quality = found["annotator_quality"]
    assert int(np.argmin(quality)) == 5  # the random annotator
    assert quality[5] < quality[:5].min() - 0.1
    consensus_acc = (found["consensus_label"] == true).mean()
    majority_acc = (majority == true).mean()
    assert consensus_acc > majority_acc + 0.03, (consensus_acc, majority_acc)
    # Where the consensus overturns the vote it is right more often than the vote was.
    changed = found["consensus_changed"]
    assert changed.sum() > 10
    assert (found["consensus_label"][changed] == true[changed]).mean() > (majority[changed] == true[changed]).mean() + 0.05
    assert found["is_issue"].sum() >= changed.sum()


def test_consensus_control_without_disagreement_changes_nothing():
    rng = np.random.default_rng(1)
    true = rng.integers(3, size=300)
    labels = np.full((300, 4), -1)
    for a in range(4):
        picked = rng.random(300) < 0.7
        labels[picked, a] = true[picked]
    labels[labels.max(1) < 0, 0] = true[labels.max(1) < 0]
    probs = np.full((300, 3), 0.1, np.float32)
    probs[np.arange(300), true] = 0.8
    found = get_consensus(labels, probs)
    assert not found["consensus_changed"].any()
    assert not found["is_issue"].any()
    assert (found["consensus_label"] == true).all()


def test_consensus_needs_an_item_with_two_labels():
    labels = np.array([[0, -1], [-1, 1], [1, -1]])
    with pytest.raises(LabelkitError, match="two or more annotators"):
        get_consensus(labels, np.full((3, 2), 0.5, np.float32))


def test_consensus_check_on_a_context():
    from labelkit.checks.base import CheckContext, run_checks

    labels, true, probs = planted(n=300, seed=3)
    matrix = np.where(labels < 0, np.nan, labels).astype(np.float32)
    names = [f"a{i}" for i in range(6)]
    found = get_consensus(matrix, probs, annotators=names)
    ctx = CheckContext(ids=pa.array([str(i) for i in range(300)]), labels=found["majority_label"],
                       classes=["w", "x", "y", "z"], task="multiannotator", modality="text", pred_probs=probs,
                       label_issues=found, annotator_labels=matrix, annotators=names)
    results, skipped = run_checks(ctx, ["annotator_consensus"])
    r = results["annotator_consensus"]
    assert r.metrics["consensus_changed_rows"] == int(found["consensus_changed"].sum()) > 0
    assert r.metrics["annotator_min_quality"] == pytest.approx(np.nanmin(found["annotator_quality"]))
    assert 0 < r.metrics["mean_annotator_agreement"] < 1
    assert set(r.reasons) == set(np.flatnonzero(found["is_issue"]).tolist())
    row = int(np.flatnonzero(found["consensus_changed"])[0])
    assert "→ consensus" in r.reasons[row] and "(out of sample)" in r.reasons[row]
    assert r.tables[0]["rows"][0][0] == "a5"  # the random annotator heads the table
    # Not for other tasks.
    ctx.task = "multiclass"
    assert "annotator_consensus" in run_checks(ctx, ["annotator_consensus"])[1]


# ---------------------------------------------------------------------------------------------
# Ingest: wide and long layouts


def test_wide_and_long_layouts_give_the_same_items(tmp_path):
    wide = pd.DataFrame({"id": ["i1", "i2", "i3", "i4"], "text": ["a", "b", "c", "d"],
                         "x": ["cat", "dog", None, None], "y": ["cat", "cat", None, "dog"],
                         "z": [None, "dog", None, "cat"]})
    out, spec = prepare_table(wide, tmp_path / "t.csv", options={"annotator_cols": "x,y,z"})
    assert spec.classes == ["cat", "dog"]
    # i2: cat 1, dog 2 → dog; i4: 1-1 tie → 'cat' (first in class order); i3: unlabelled → unusable.
    assert out[TASK_LABEL_COL].fillna("-").tolist() == ["cat", "dog", "-", "cat"]
    assert spec.errors == [None, None, "no annotator labelled this row", None]
    assert spec.columns["annotator_labels"].to_pylist() == [["cat", "cat", None], ["dog", "cat", "dog"],
                                                            [None, None, None], [None, "dog", "cat"]]
    assert spec.manifest["annotators"] == ["x", "y", "z"] and spec.manifest["majority_vote"]["tied_rows"] == 1

    long = pd.DataFrame({"item": ["i1", "i2", "i1", "i2", "i2", "i4", "i4"],
                         "text": ["a", "b", "a", "b", "b", "d", "d"],
                         "who": ["x", "x", "y", "y", "z", "z", "y"],
                         "answer": ["cat", "dog", "cat", "cat", "dog", "cat", "dog"]})
    out_l, spec_l = prepare_table(long, tmp_path / "l.csv",
                                  options={"annotator_col": "who", "label_col": "answer", "id_col": "item"})
    assert out_l["item"].tolist() == ["i1", "i2", "i4"] and "who" not in out_l and "answer" not in out_l
    assert out_l[TASK_LABEL_COL].tolist() == ["cat", "dog", "cat"]
    assert spec_l.manifest["annotators"] == ["x", "y", "z"]
    assert spec_l.columns["annotator_labels"].to_pylist() == [["cat", "cat", None], ["dog", "cat", "dog"],
                                                              [None, "dog", "cat"]]


def test_long_layout_errors_name_the_rows(tmp_path):
    long = pd.DataFrame({"id": ["i1", "i1", "i2"], "text": ["a", "A", "b"], "who": ["x", "y", "x"],
                         "label": ["cat", "cat", "dog"]})
    with pytest.raises(LabelkitError, match=r"Column 'text' of .*l\.csv differs within item 'i1': row 2 has 'a', "
                                            r"row 3 has 'A'"):
        prepare_table(long, tmp_path / "l.csv", options={"annotator_col": "who"})
    clash = pd.DataFrame({"id": ["i1", "i1"], "text": ["a", "a"], "who": ["x", "x"], "label": ["cat", "dog"]})
    with pytest.raises(LabelkitError, match=r"Annotator 'x' gives item 'i1' two labels .*'cat' \(row 2\) and 'dog' "
                                            r"\(row 3\)"):
        prepare_table(clash, tmp_path / "l.csv", options={"annotator_col": "who"})
    with pytest.raises(LabelkitError, match="Annotator column 'nope' not found"):
        prepare_table(long, tmp_path / "w.csv", options={"annotator_cols": "who,nope"})
    with pytest.raises(LabelkitError, match="at least two columns"):
        prepare_table(long, tmp_path / "w.csv", options={"annotator_cols": "who"})


def test_long_parquet_with_embedding_column_is_refused(tmp_path):
    from labelkit.ingest import ingest

    pq.write_table(pa.table({"id": ["a", "a", "b"], "who": ["x", "y", "x"], "label": ["c", "c", "d"],
                             "embedding": pa.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], pa.list_(pa.float32()))}),
                   tmp_path / "long.parquet")
    with pytest.raises(LabelkitError, match="--embedding-col 'embedding' cannot be used with the long layout"):
        ingest(tmp_path / "long.parquet", tmp_path / "ws", annotator_col="who", embedding_col="embedding")


# ---------------------------------------------------------------------------------------------
# End to end on the sample data (MiniLM offline)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    from labelkit.cli import main

    ws = tmp_path_factory.mktemp("multiannotator") / "ws"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["audit", str(SAMPLE_TABLE), "-w", str(ws), "--annotator-cols", ANNOTATORS, "--json",
                     "--fail-on", "annotator_min_quality<0.1"])
    return code, json.loads(buf.getvalue()), ws


def test_audit_finds_the_bad_annotator_and_fixes_the_majority_vote(audited):
    from labelkit.workspace import Workspace, current_items_fingerprint, read_fingerprints

    code, result, ws = audited
    assert code == 0, result.get("gate")
    s = result["summary"]
    assert s["annotators"][0]["annotator"] == "ann_6"  # the random annotator ranks last
    assert s["annotator_min_quality"] == pytest.approx(s["annotators"][0]["quality"], abs=1e-4)
    assert s["annotator_min_quality"] < 0.5 < s["annotators"][1]["quality"]
    assert s["consensus_changed_rows"] > 20 and 0.5 < s["mean_annotator_agreement"] < 1
    table = pq.read_table(ws / "annotators.parquet").to_pandas().set_index("annotator")
    assert table["quality"].idxmin() == "ann_6" and table.loc["ann_6", "items_labelled"] > 200
    assert read_fingerprints(ws / "annotators.parquet")[0] == current_items_fingerprint(Workspace(ws))
    iss = pq.read_table(ws / "issues.parquet").to_pandas()
    truth = pd.read_csv(SAMPLE / "multiannotator" / "truth.csv")
    m = iss.merge(truth, on="id")
    consensus_acc = (m["suggested_label"] == m["true_label"]).mean()
    majority_acc = (m["given_label"] == m["true_label"]).mean()
    assert (m["given_label"] == m["majority_label"]).all()  # ingest's vote is the generator's answer key
    assert consensus_acc > majority_acc + 0.05, (consensus_acc, majority_acc)
    flagged = m[m["is_label_issue"]]
    assert (flagged["majority_correct"] == 0).mean() > 0.8  # flags are mostly real majority-vote errors
    assert (m.loc[m["majority_correct"] == 0, "is_label_issue"]).mean() > 0.8
    assert flagged["reason"].str.contains("consensus").all()
    items = pq.read_table(ws / "items.parquet", columns=["annotator_labels"]).column("annotator_labels")
    assert len(items[0].as_py()) == 6
    assert json.loads((ws / "manifest.json").read_text())["annotators"] == ANNOTATORS.split(",")


def test_gate_fails_on_the_bad_annotator(audited):
    from labelkit import gate

    _, result, _ = audited
    verdict = gate.evaluate(gate.parse_rules("annotator_min_quality<0.5"), result["summary"])
    assert verdict["passed"] is False
    assert gate.evaluate(gate.parse_rules("consensus_changed_rows>1000"), result["summary"])["passed"] is True


def test_prune_and_train_use_the_consensus(audited, tmp_path):
    import shutil

    from labelkit.selection import select
    from labelkit.train import read_labels

    _, result, ws_src = audited
    ws = tmp_path / "ws"
    shutil.copytree(ws_src, ws)
    sub = select(ws, "prune")
    assert sub.size == result["summary"]["usable_rows"] - result["summary"]["label_issues"]
    iss = pq.read_table(ws / "issues.parquet").to_pandas()
    from labelkit.workspace import Workspace

    from labelkit.splits import heldout_mask

    w = Workspace(ws)
    y = np.asarray(w.classes())[read_labels(w, "label", iss["id"].tolist(), w.classes())]
    held, _ = heldout_mask(w, iss["id"].tolist())
    # Training rows learn the consensus; held-out rows are scored against the majority vote, which
    # no model shaped (their consensus mixes in the probe's prediction from the same embeddings).
    assert (y[~held] == iss["suggested_label"].to_numpy()[~held]).all()
    assert (y[held] == iss["given_label"].to_numpy()[held]).all()
    changed = (iss["suggested_label"] != iss["given_label"]).to_numpy()
    assert changed[~held].sum() > 20 and changed[held].sum() > 0  # so the checks above tell them apart
    from labelkit.train import train

    trained = train(ws, subset="prune", max_epochs=30, device="cpu")
    truth = pd.read_csv(SAMPLE / "multiannotator" / "truth.csv").set_index("id")
    vote_acc = (iss["given_label"].to_numpy()[held] == truth.loc[iss["id"][held], "true_label"].to_numpy()).mean()
    # Scored against the held-out rows' majority vote, itself right on about 80 % of them (the random
    # annotator): a model that matched the truth would score vote_acc; this one comes close.
    assert 0.7 < vote_acc < 0.9 and trained.card["metrics"]["accuracy"] > vote_acc - 0.08


def test_long_table_ingests_like_the_wide_one(tmp_path):
    from labelkit.ingest import ingest

    wide = pd.read_csv(SAMPLE_TABLE, dtype=str)
    long = wide.melt(id_vars=["id", "text"], var_name="worker", value_name="answer").dropna(subset=["answer"])
    long = long.sample(frac=1.0, random_state=0)  # any row order
    long.to_csv(tmp_path / "long.csv", index=False)
    ingest(SAMPLE_TABLE, tmp_path / "wide_ws", annotator_cols=ANNOTATORS)
    ingest(tmp_path / "long.csv", tmp_path / "long_ws", annotator_col="worker", label_col="answer", id_col="id")
    cols = ["id", "text", "label", "annotator_labels"]
    a = pq.read_table(tmp_path / "wide_ws" / "items.parquet", columns=cols).to_pandas().set_index("id")
    b = pq.read_table(tmp_path / "long_ws" / "items.parquet", columns=cols).to_pandas().set_index("id").loc[a.index]
    assert (a["label"] == b["label"]).all() and (a["text"] == b["text"]).all()
    assert [list(x) for x in a["annotator_labels"]] == [list(x) for x in b["annotator_labels"]]
    manifest = json.loads((tmp_path / "long_ws" / "manifest.json").read_text())
    assert manifest["task"] == "multiannotator" and manifest["annotator_format"] == "long"


def test_pred_probs_without_embeddings_checks_exact_duplicates_only(tmp_path, cli):
    table = pd.read_csv(SAMPLE_TABLE, dtype=str)
    table.loc[1, "text"] = table.loc[0, "text"]  # an exact duplicate: the one duplicates check without embeddings
    table.to_csv(tmp_path / "a.csv", index=False)
    assert cli("ingest", tmp_path / "a.csv", "-w", tmp_path / "ws", "--annotator-cols", ANNOTATORS,
               "--text-col", "text", "--id-col", "id")[0] == 0
    items = pq.read_table(tmp_path / "ws" / "items.parquet", columns=["label_id"]).column("label_id").to_numpy()
    K = len(json.loads((tmp_path / "ws" / "manifest.json").read_text())["classes"])
    probs = np.full((len(items), K), 0.1 / (K - 1), np.float32)
    probs[np.arange(len(items)), items] = 0.9
    np.save(tmp_path / "p.npy", probs)
    code, out, err = cli("issues", "-w", tmp_path / "ws", "--pred-probs", tmp_path / "p.npy")
    assert code == 0, err
    s = json.loads((tmp_path / "ws" / "manifest.json").read_text())["stages"]["issues"]
    assert s["exact_duplicates"] == 1 and s["near_duplicates"] is None and s["dup_threshold"] is None
    iss = pq.read_table(tmp_path / "ws" / "issues.parquet").to_pandas().set_index("id")
    assert iss.loc[table.loc[1, "id"], "duplicate_of"] == table.loc[0, "id"] and iss["is_duplicate"].sum() == 1


def test_long_layout_over_the_cell_budget_is_refused_before_building_the_matrix(tmp_path):
    from labelkit.tasks.multiannotator import MAX_ANNOTATION_CELLS

    # 20,000 items × 10,001 annotators, one label each: 20,000 rows in the file, 200,020,000 cells
    # of the item × annotator matrix CROWDLAB needs, just over the limit; refused before any is built.
    n, M = 20_000, 10_001
    long = pd.DataFrame({"id": [f"i{i}" for i in range(n)], "who": [f"w{i % M}" for i in range(n)],
                         "label": ["cat", "dog"] * (n // 2)})
    assert n * M > MAX_ANNOTATION_CELLS == 200_000_000
    with pytest.raises(LabelkitError, match=r"^--annotator-col 'who' of .*l\.csv gives 20,000 items × 10,001 annotators: "
                                            r"200,020,000 cells of the item × annotator matrix, over the limit of "
                                            r"200,000,000 cells "):
        prepare_table(long, tmp_path / "l.csv", options={"annotator_col": "who", "label_col": "label", "id_col": "id"})
    wide = pd.DataFrame({"a": ["cat"] * 3, "b": ["dog"] * 3})
    out, spec = prepare_table(wide, tmp_path / "w.csv", options={"annotator_cols": "a,b"})
    assert spec.columns["annotator_labels"].to_pylist() == [["cat", "dog"]] * 3


@pytest.mark.parametrize("where", ["check", "issues table"])
def test_a_run_killed_after_the_probe_keeps_the_last_good_tables(audited, tmp_path, monkeypatch, where):
    """probs.parquet (and issues.parquet) stay the last good run's, byte for byte, when a run fails after its probe."""
    import shutil

    import labelkit.issues
    from labelkit.checks.duplicates import Duplicates
    from labelkit.issues import issues

    _, _, ws = audited
    ws = shutil.copytree(ws, tmp_path / "ws")
    before = {name: (ws / name).read_bytes() for name in ("probs.parquet", "issues.parquet")}

    def broken(*args, **kwargs):
        raise RuntimeError("failed after the probe")

    if where == "check":
        monkeypatch.setattr(Duplicates, "run", broken)
    else:  # the issues table's write, the last step before probs.parquet is renamed into place
        monkeypatch.setattr(labelkit.issues, "write_issues_table", broken)
    with pytest.raises(RuntimeError, match="failed after the probe"):
        issues(ws, seed=1, n_folds=3)  # other folds: other predictions
    assert {name: (ws / name).read_bytes() for name in before} == before
    assert not [p.name for p in ws.iterdir() if p.name.startswith(".")]
