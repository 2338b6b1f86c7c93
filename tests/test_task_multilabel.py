"""Multi-label data (labelkit.tasks.multilabel): ingest, the one-vs-rest probe, cleanlab's verdicts, the pipeline."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from labelkit.errors import LabelkitError
from labelkit.tasks.multilabel import (_cleanlab_labels, cooccurrence, display_labels, find_multilabel_label_issues,
                                       get_multilabel_out_of_sample_probs, multi_hot, multilabel_metrics,
                                       parse_labels, tag_lists)

ROOT = Path(__file__).resolve().parents[1]


def _make_module():
    spec = importlib.util.spec_from_file_location("make_multilabel", ROOT / "sample_data" / "make_multilabel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tagged_vectors(n=400, K=4, d=32, noise=0.12, seed=0):
    """Rows whose vector is the sum of their tags' directions plus noise (unit rows)."""
    rng = np.random.default_rng(seed)
    Y = rng.random((n, K)) < 0.3
    directions = rng.normal(size=(K, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    X = Y.astype(np.float64) @ directions + noise * rng.normal(size=(n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), Y


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The shipped sample regenerated and audited end to end through the CLI (ingest, issues, report, gate)."""
    from labelkit.cli import main

    tmp = tmp_path_factory.mktemp("multilabel")
    counts = _make_module().make_multilabel(tmp / "data")
    ws = tmp / "ws"
    code = main(["audit", str(tmp / "data" / "items.parquet"), "--task", "multilabel", "--labels-col", "tags",
                 "--embedding-col", "embedding", "-w", str(ws), "--fail-on", "multilabel_health_score<0.5"])
    return ws, tmp / "data", counts, code


# ---------------------------------------------------------------------------------------------
# ingest


def test_parse_labels_strings_split_trimmed_deduplicated_and_empty_is_valid():
    lists, classes = parse_labels(pd.Series(["b ; a", "", None, "a;a;c", " c "]), sep=";")
    assert classes == ["a", "b", "c"]
    assert lists.to_pylist() == [["a", "b"], [], [], ["a", "c"], ["c"]]
    assert display_labels(lists).to_pylist() == ["a; b", "(no labels)", "(no labels)", "a; c", "c"]


def test_parse_labels_list_cells_and_numeric_class_order():
    lists, classes = parse_labels(pd.Series([["10", "2"], [], None, ["2"]]))
    assert classes == ["2", "10"]  # sort_classes: integer-like tags sort numerically
    assert lists.to_pylist() == [["2", "10"], [], [], ["2"]]
    Y = multi_hot(lists, classes)
    assert Y.tolist() == [[True, True], [False, False], [False, False], [True, False]]
    assert tag_lists(Y, classes).to_pylist() == lists.to_pylist()


def test_ingest_writes_tag_lists_display_labels_and_manifest(tmp_path):
    from labelkit.ingest import ingest

    vecs = [json.dumps([float(i % 3), 1.0, float(i % 5)]) for i in range(6)]
    pd.DataFrame({"id": [f"r{i}" for i in range(6)], "emb": vecs,
                  "tags": ["cat|dog", "", "dog", "bird | cat", "cat", "dog|dog"]}).to_csv(tmp_path / "t.csv", index=False)
    result = ingest(tmp_path / "t.csv", tmp_path / "ws", labels_col="tags", label_sep="|", embedding_col="emb")
    items = pq.read_table(tmp_path / "ws" / "items.parquet").to_pandas().set_index("id")
    manifest = json.loads((tmp_path / "ws" / "manifest.json").read_text())
    assert manifest["task"] == "multilabel" and manifest["classes"] == ["bird", "cat", "dog"] == result.classes
    assert items.loc["r0", "labels"].tolist() == ["cat", "dog"] and items.loc["r0", "label"] == "cat; dog"
    assert items.loc["r1", "labels"].tolist() == [] and items.loc["r1", "label"] == "(no labels)"
    assert items.loc["r5", "labels"].tolist() == ["dog"]
    assert items["error"].isna().all()  # a row without tags is a valid row
    assert manifest["multilabel"]["rows_without_labels"] == 1


def test_ingest_missing_labels_column_is_a_user_error(tmp_path):
    from labelkit.cli import main

    pd.DataFrame({"text": ["a b", "c d"], "cats": ["x", "y"]}).to_csv(tmp_path / "t.csv", index=False)
    assert main(["ingest", str(tmp_path / "t.csv"), "-w", str(tmp_path / "ws"), "--labels-col", "tags"]) == 2
    with pytest.raises(LabelkitError, match=r"Labels column 'tags' not found in .*t\.csv; available columns: text, cats"):
        from labelkit.ingest import ingest

        ingest(tmp_path / "t.csv", tmp_path / "ws", labels_col="tags")


# ---------------------------------------------------------------------------------------------
# probe and cleanlab


def test_planted_removed_and_added_tags_are_found_and_named():
    X, Y = _tagged_vectors(seed=1)
    given = Y.copy()
    removed_row = int(np.flatnonzero(Y[:, 0])[0])
    added_row = int(np.flatnonzero(~Y[:, 2])[1])
    given[removed_row, 0] = False  # a tag the row should have is missing
    given[added_row, 2] = True  # a tag the row should not have is given
    probs, folds, choice = get_multilabel_out_of_sample_probs(X, given, seed=0)
    assert probs.shape == Y.shape and probs.dtype == np.float32 and (folds >= 0).all()
    found = find_multilabel_label_issues(given, probs)
    assert found["is_label_issue"][[removed_row, added_row]].all()
    assert np.flatnonzero(found["suspect"][removed_row]).tolist() == [0]
    assert np.flatnonzero(found["suspect"][added_row]).tolist() == [2]
    assert found["suggested"][removed_row, 0] and not found["suggested"][added_row, 2]  # the fixes
    assert found["label_quality"][[removed_row, added_row]].max() < np.median(found["label_quality"])
    # Control: the same data without the planted errors leaves those rows (and nearly all rows) alone.
    clean_probs, _, _ = get_multilabel_out_of_sample_probs(X, Y, seed=0)
    clean = find_multilabel_label_issues(Y, clean_probs)
    assert not clean["is_label_issue"][[removed_row, added_row]].any()
    assert clean["is_label_issue"].sum() <= 0.02 * len(Y)


def test_counts_and_health_match_cleanlab_dataset_functions():
    from cleanlab.multilabel_classification.dataset import common_multilabel_issues, overall_multilabel_health_score

    X, Y = _tagged_vectors(n=300, noise=0.4, seed=2)
    probs, _, _ = get_multilabel_out_of_sample_probs(X, Y, probe="knn", seed=0)
    found = find_multilabel_label_issues(Y, probs)
    labels = _cleanlab_labels(Y)
    assert found["health_score"] == pytest.approx(overall_multilabel_health_score(labels, probs.astype(np.float64)))
    table = common_multilabel_issues(labels, probs.astype(np.float64)).set_index(["Class Index", "In Given Label"])
    per_tag = found["per_tag"]
    for k in range(Y.shape[1]):
        assert table.loc[(k, True), "Num Examples"] == per_tag["given_suspect"][k]
        assert table.loc[(k, False), "Num Examples"] == per_tag["missing_suspect"][k]
    assert found["is_label_issue"].sum() > 0  # noisy enough that the comparison is not all zeros
    from cleanlab.multilabel_classification.filter import find_label_issues

    p64 = probs.astype(np.float64)
    assert (found["is_label_issue"] == find_label_issues(labels, p64)).all()
    low = find_multilabel_label_issues(Y, probs, filter_by="low_self_confidence")
    assert (low["is_label_issue"] == find_label_issues(labels, p64, filter_by="low_self_confidence")).all()
    assert (low["suspect"].any(1) == low["is_label_issue"]).all()  # every flagged row names a tag


def test_heldout_rows_never_train_the_probe():
    X, Y = _tagged_vectors(n=300, seed=3)
    held = np.zeros(len(Y), bool)
    held[::5] = True
    flipped = Y.copy()
    flipped[held] = ~flipped[held]  # any use of held-out labels would change the probabilities
    for probe in ("knn", "logreg"):
        a, fa, _ = get_multilabel_out_of_sample_probs(X, Y, holdout=held, probe=probe, seed=0)
        b, _, _ = get_multilabel_out_of_sample_probs(X, flipped, holdout=held, probe=probe, seed=0)
        np.testing.assert_allclose(a, b, atol=1e-6)
        assert (fa[held] == -1).all() and (fa[~held] >= 0).all()


def test_selection_subsample_path_still_predicts_every_row_out_of_sample():
    X, Y = _tagged_vectors(n=300, seed=4)
    probs, folds, choice = get_multilabel_out_of_sample_probs(X, Y, max_selection_rows=100, seed=0)
    assert choice.selection_rows == 100 and choice.rows == 300
    assert ((probs >= 0.5) == Y).mean() > 0.9


def test_metrics_and_cooccurrence_values():
    Y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], bool)
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.7], [0.6, 0.1]], np.float32)
    m = multilabel_metrics(probs, Y)
    # tag 0: tp 2, fp 1, fn 0 -> F1 0.8; tag 1: tp 1, fp 0, fn 1 -> F1 2/3; micro: tp 3, fp 1, fn 1 -> 0.75
    assert m["micro_f1"] == pytest.approx(0.75) and m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["subset_accuracy"] == pytest.approx(0.5) and m["hamming_loss"] == pytest.approx(2 / 8)
    np.testing.assert_allclose(cooccurrence(Y), [[1.0, 0.5], [0.5, 1.0]])


def test_bad_options_are_user_errors():
    with pytest.raises(LabelkitError, match="The 'filter_by' parameter of find_multilabel_label_issues"):
        find_multilabel_label_issues(np.zeros((4, 2), bool), np.zeros((4, 2)), filter_by="nope")
    with pytest.raises(LabelkitError, match="The 'label_sep' parameter of ingest must be a non-empty string"):
        parse_labels(pd.Series(["a"]), sep="")


# ---------------------------------------------------------------------------------------------
# the pipeline on the sample


def test_audit_finds_planted_tags_on_the_sample(sample):
    ws, data, counts, code = sample
    assert code == 0
    key = pd.read_csv(data / "key.csv")
    iss = pq.read_table(ws / "issues.parquet").to_pandas().set_index("id")
    flagged = iss.index[iss["is_label_issue"]]
    planted = set(key["id"])
    precision = len(planted & set(flagged)) / len(flagged)
    recall = len(planted & set(flagged)) / len(planted)
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)
    # The suspect tag is named in the right direction: removed tags are missing, added tags given.
    removed, added = key[key["kind"] == "removed"], key[key["kind"] == "added"]
    hit_removed = np.mean([t in iss.loc[i, "suspect_missing_labels"] for i, t in zip(removed["id"], removed["tag"])])
    hit_added = np.mean([t in iss.loc[i, "suspect_given_labels"] for i, t in zip(added["id"], added["tag"])])
    assert hit_removed >= 0.8 and hit_added >= 0.8, (hit_removed, hit_added)
    flagged_added = added[added["id"].map(iss["is_label_issue"])]
    assert len(flagged_added), "no planted added tag was flagged"
    row = flagged_added.iloc[0]
    assert f"tagged {row['tag']!r} but probe gives it" in iss.loc[row["id"], "reason"]
    manifest = json.loads((ws / "manifest.json").read_text())
    s = manifest["stages"]["issues"]
    assert s["label_issues"] == len(flagged) and s["label_issue_rate"] == pytest.approx(len(flagged) / len(iss))
    assert s["multilabel_health_score"] == pytest.approx(1 - len(flagged) / len(iss))
    assert s["multilabel_suspect_given"] + s["multilabel_suspect_missing"] == sum(map(len, iss["suspect_labels"]))
    assert s["checks"]["multilabel_label_issues"]["flagged"] == len(flagged)
    assert "label_issues" in s["checks"] and s["checks"]["label_issues"].get("skipped")  # multiclass check
    assert manifest["stages"]["gate"]["passed"] is True
    probs = pq.read_table(ws / "probs.parquet")
    assert len(probs.column("pred_probs")[0]) == len(manifest["classes"]) == 8
    html = (ws / "report.html").read_text()
    assert "Multi-label issues" in html and 'id="multilabel-tags"' in html and "P(column tag | row tag)" in html
    assert 0.19 * len(iss) <= s["heldout"]["rows"] <= 0.21 * len(iss)  # over every row, not single-tag ones


def test_gate_fails_on_a_multilabel_metric(sample, tmp_path):
    from labelkit.cli import main

    _, data, _, _ = sample
    code = main(["audit", str(data / "items.parquet"), "--task", "multilabel", "--labels-col", "tags",
                 "--embedding-col", "embedding", "-w", str(tmp_path / "ws"), "--fail-on", "multilabel_health_score<0.99"])
    assert code == 1


def test_report_data_tags_and_cooccurrence(sample):
    from labelkit.tasks.multilabel import report_data
    from labelkit.workspace import Workspace

    ws, data, _, _ = sample
    ml, figures = report_data(Workspace(ws))
    tags = ml["cooccurrence"]["tags"]
    matrix = np.asarray(ml["cooccurrence"]["p_column_given_row"])
    # The generator puts 'water' mostly outdoors: P(outdoor | water) is high, the reverse is not.
    w, o = tags.index("water"), tags.index("outdoor")
    assert matrix[w, o] > 0.7 and matrix[o, w] < 0.5
    assert figures["multilabel_cooccurrence"].startswith("<svg") and figures["multilabel_tags"].startswith("<svg")
    assert 0.8 < ml["probe_agreement"]["exact_set"] <= 1.0
    assert [t["tag"] for t in ml["per_tag"]][0] == "outdoor"  # the most frequent tag first
    assert all(0.8 < t["probe_agrees"] <= 1.0 for t in ml["per_tag"])


def test_select_prune_and_train_bce(sample):
    from labelkit.selection import select
    from labelkit.train import train

    ws, _, _, _ = sample
    iss = pq.read_table(ws / "issues.parquet").to_pandas()
    result = select(ws, "prune", name="clean")
    sub = pq.read_table(ws / "subsets" / "clean.parquet").to_pandas()
    assert result.size == len(sub) == int((~iss["is_label_issue"] & iss["duplicate_of"].isna() | ~iss["is_label_issue"]).sum())
    assert not set(sub["id"]) & set(iss.loc[iss["is_label_issue"], "id"])
    assert result.class_counts_before["outdoor"] >= result.class_counts_after["outdoor"] > 0
    assert sub.set_index("id").loc[sub["id"].iloc[0], "labels"].tolist() == \
        iss.set_index("id").loc[sub["id"].iloc[0], "given_labels"].tolist()
    res = train(ws, loss="bce", subset="clean", max_epochs=60, patience=5, head="linear", lr=1e-2)
    m = res.card["metrics"]
    assert res.card["task"] == "multilabel" and res.card["loss"]["name"] == "bce"
    assert m["micro_f1"] > 0.85 and m["macro_f1"] > 0.8 and 0 <= m["hamming_loss"] < 0.05
    with pytest.raises(LabelkitError, match="--loss gce is not supported for multi-label data"):
        train(ws, loss="gce")
    from labelkit.cli import main

    assert main(["train", "-w", str(ws), "--loss", "bce", "--head", "linear", "--lr", "0.01", "--max-epochs", "30",
                 "--fail-on", "micro_f1<0.5"]) == 0
    assert main(["train", "-w", str(ws), "--loss", "bce", "--head", "linear", "--lr", "0.01", "--max-epochs", "30",
                 "--fail-on", "micro_f1<0.999"]) == 1


def test_user_pred_probs_give_the_same_verdicts_and_bad_values_are_refused(sample, tmp_path):
    from labelkit.ingest import ingest
    from labelkit.issues import issues

    ws, data, _, _ = sample
    probs = pq.read_table(ws / "probs.parquet").to_pandas()
    matrix = np.stack(probs["pred_probs"].to_numpy()).astype(np.float32)
    np.save(tmp_path / "p.npy", matrix)
    ingest(data / "items.parquet", tmp_path / "ws", labels_col="tags", embedding_col="embedding")
    result = issues(tmp_path / "ws", pred_probs=tmp_path / "p.npy")
    mine = pq.read_table(tmp_path / "ws" / "issues.parquet").to_pandas()
    theirs = pq.read_table(ws / "issues.parquet").to_pandas()
    assert result.summary["origin"] == "user" and result.summary["probe"] is None
    assert (mine["is_label_issue"].to_numpy() == theirs["is_label_issue"].to_numpy()).all()
    assert pq.read_table(tmp_path / "ws" / "probs.parquet").column("fold").to_pylist() == [-1] * len(mine)
    # Keyed by id, tag-named columns in another order: the same matrix.
    tags = json.loads((ws / "manifest.json").read_text())["classes"]
    table = pd.DataFrame(matrix, columns=tags)[tags[::-1]].assign(id=probs["id"])
    table.iloc[::-1].to_csv(tmp_path / "p.csv", index=False)
    issues(tmp_path / "ws", pred_probs=tmp_path / "p.csv")
    again = pq.read_table(tmp_path / "ws" / "issues.parquet").to_pandas()
    assert (again["is_label_issue"].to_numpy() == theirs["is_label_issue"].to_numpy()).all()
    matrix[3, 1] = 1.5
    np.save(tmp_path / "bad.npy", matrix)
    with pytest.raises(LabelkitError, match=rf"the row for id '{probs['id'][3]}' has a value that is not a probability"):
        issues(tmp_path / "ws", pred_probs=tmp_path / "bad.npy")


def test_pred_probs_headers_must_name_the_tags(tmp_path):
    import pyarrow as pa

    from labelkit.tasks.multilabel import load_multilabel_pred_probs

    tags, ids = ["beach", "city", "night"], pa.array(["a", "b"])
    values = np.array([[0.9, 0.2, 0.1], [0.1, 0.8, 0.7]])
    kwargs = {"ids": ids, "usable": np.ones(2, bool), "classes": tags}
    pd.DataFrame(values, columns=["city", "night", "beach"]).to_csv(tmp_path / "named.csv", index=False)
    np.testing.assert_allclose(load_multilabel_pred_probs(tmp_path / "named.csv", **kwargs), values[:, [2, 0, 1]])
    pd.DataFrame(values).to_csv(tmp_path / "numbered.csv", index=False)  # columns 0, 1, 2: workspace order
    np.testing.assert_allclose(load_multilabel_pred_probs(tmp_path / "numbered.csv", **kwargs), values)
    pd.DataFrame(values, columns=["beach", "town", "night"]).to_csv(tmp_path / "typo.csv", index=False)
    with pytest.raises(LabelkitError, match=r"--pred-probs .*typo\.csv: unknown column 'town'; name the columns by "
                                            r"the workspace's tags \(beach, city, night\)"):
        load_multilabel_pred_probs(tmp_path / "typo.csv", **kwargs)
    pd.DataFrame(values[:, :2], columns=["beach", "city"]).assign(score=1.0).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(LabelkitError, match="unknown column 'score'"):
        load_multilabel_pred_probs(tmp_path / "x.csv", **kwargs)


def _text_multilabel_table(tmp_path, n=60):
    """A text multi-label CSV without embeddings, rows 0 and 1 the same text; its probabilities as .npy."""
    rng = np.random.default_rng(3)
    tags = np.array(["a", "b", "c"])
    Y = rng.random((n, 3)) < 0.4
    text = [f"item {i} " + " ".join(tags[Y[i]]) for i in range(n)]
    text[1] = text[0]
    pd.DataFrame({"id": [f"r{i}" for i in range(n)], "text": text,
                  "tags": [";".join(tags[y]) for y in Y]}).to_csv(tmp_path / "t.csv", index=False)
    np.save(tmp_path / "p.npy", np.clip(Y + rng.normal(0, 0.2, Y.shape), 0.01, 0.99).astype(np.float32))
    return tmp_path / "t.csv", tmp_path / "p.npy"


def test_pred_probs_without_embeddings_checks_exact_duplicates_only(tmp_path, cli):
    table, probs = _text_multilabel_table(tmp_path)
    assert cli("ingest", table, "-w", tmp_path / "ws", "--labels-col", "tags", "--text-col", "text",
               "--id-col", "id")[0] == 0
    code, out, err = cli("issues", "-w", tmp_path / "ws", "--pred-probs", probs)
    assert code == 0, err
    s = json.loads((tmp_path / "ws" / "manifest.json").read_text())["stages"]["issues"]
    assert s["exact_duplicates"] == 1 and s["near_duplicates"] is None and s["dup_threshold"] is None
    iss = pq.read_table(tmp_path / "ws" / "issues.parquet").to_pandas().set_index("id")
    assert iss.loc["r1", "duplicate_of"] == "r0" and iss["is_duplicate"].sum() == 1


def test_failed_issues_run_leaves_no_new_probs_table(tmp_path, monkeypatch):
    from labelkit.checks.duplicates import Duplicates
    from labelkit.ingest import ingest
    from labelkit.issues import issues

    table, probs = _text_multilabel_table(tmp_path)
    ingest(table, tmp_path / "ws", labels_col="tags", text_col="text", id_col="id")

    def broken(self, ctx):
        raise RuntimeError("check failed")

    monkeypatch.setattr(Duplicates, "run", broken)
    with pytest.raises(RuntimeError, match="check failed"):
        issues(tmp_path / "ws", pred_probs=probs)
    assert sorted(p.name for p in (tmp_path / "ws").iterdir() if "probs" in p.name or "issues" in p.name) == []


def test_explain_lists_the_rows_own_tags_with_the_most_likely(sample, cli):
    ws, data, _, _ = sample
    key = pd.read_csv(data / "key.csv")
    iss = pq.read_table(ws / "issues.parquet").to_pandas().set_index("id")
    probs = pq.read_table(ws / "probs.parquet").to_pandas().set_index("id")
    tags = json.loads((ws / "manifest.json").read_text())["classes"]
    added = key[(key["kind"] == "added") & key["id"].map(iss["is_label_issue"])]
    # A flagged row whose planted (doubted) tag is not among its 5 most likely tags.
    rank = [list(np.argsort(-probs.loc[i, "pred_probs"], kind="stable")).index(tags.index(t))
            for i, t in zip(added["id"], added["tag"])]
    row = added.iloc[int(np.argmax(rank))]
    assert max(rank) >= 5
    code, out, err = cli("explain", row["id"], "-w", ws, "--json")
    assert code == 0, err
    shown = {p["class"]: p["probability"] for p in json.loads(out)["probabilities"]}
    assert set(iss.loc[row["id"], "given_labels"]) <= set(shown) and len(shown) >= 5
    assert shown[row["tag"]] == pytest.approx(probs.loc[row["id"], "pred_probs"][tags.index(row["tag"])], abs=1e-4)


@pytest.mark.parametrize("where", ["check", "issues table"])
def test_a_run_killed_after_the_probe_keeps_the_last_good_tables(sample, tmp_path, monkeypatch, where):
    """probs.parquet (and issues.parquet) stay the last good run's, byte for byte, when a run fails after its probe."""
    import shutil

    import labelkit.issues
    from labelkit.checks.duplicates import Duplicates
    from labelkit.issues import issues

    ws = sample[0]
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
