"""What a new user hits: each bad input ends in a documented exit code (0, 1 or 2), never a traceback (issue 21)."""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import one_line
from labelkit.embed import embed
from labelkit.errors import LabelkitError
from labelkit.ingest import ingest
from labelkit.issues import issues
from labelkit.workspace import Workspace
from test_staleness import make_images


def no_traceback(err: str) -> bool:
    return "Traceback" not in err and "Error:" not in err.replace("error:", "")


def test_single_class_audit_checks_what_it_can_and_fails_the_gate_as_not_measured(tmp_path, cli):
    data = make_images(tmp_path / "data", {"only": 12}, seed=2)
    (data / "only" / "copy.png").write_bytes((data / "only" / "img000.png").read_bytes())  # an exact duplicate
    ws = tmp_path / "ws"
    code, out, err = cli("audit", data, "-w", ws, "--model", "pixels", "--json")
    assert code == 1 and no_traceback(err), err
    result = json.loads(out)
    s = result["summary"]
    assert s["label_issues"] is None and s["label_issue_rate"] is None and s["noise_matrix"] is None
    assert s["label_issues_not_measured"] == "the data has one class"
    assert s["exact_duplicates"] == 1 and s["outliers"] is not None  # duplicates and outliers are still audited
    assert [r["verdict"] for r in result["gate"]["results"]] == ["not measured"]
    assert ("Label issues cannot be computed: the data has one class; confident learning compares at least two "
            "classes. Duplicates and outliers are still checked.") in [w["message"] for w in result["warnings"]]
    assert not (ws / "probs.parquet").exists() and (ws / "report.html").exists()
    assert "FAIL</b> (not measured)" in (ws / "report.html").read_text()
    iss = pq.read_table(ws / "issues.parquet").to_pandas()
    assert not iss["is_label_issue"].any() and iss["label_quality"].isna().all()
    # a gate on what was measured decides alone
    code, _, err = cli("audit", data, "-w", ws, "--model", "pixels", "--fail-on", "exact_duplicates>5")
    assert code == 0 and no_traceback(err), err


def test_one_example_per_class_exits_by_the_gate(tmp_path, cli):
    data = make_images(tmp_path / "data", {"a": 1, "b": 1, "c": 1}, seed=2)
    code, out, err = cli("audit", data, "-w", tmp_path / "ws", "--model", "pixels", "--json")
    assert code == 1 and no_traceback(err), err
    s = json.loads(out)["summary"]
    assert s["label_issues"] is None and s["label_issues_not_measured"] == "no class has at least 5 training rows"
    assert s["probe_excluded_classes"] == {"a": 1, "b": 1, "c": 1}


def test_classes_too_small_for_the_folds_are_left_out_with_their_count(tmp_path):
    data = make_images(tmp_path / "data", {"a": 20, "b": 20, "tiny": 3}, seed=4)
    ws = tmp_path / "ws"
    ingest(data, ws)
    embed(ws, model="pixels")
    result = issues(ws, probe="sklearn")
    s = result.summary
    # 3 rows, one of them held out: 2 training rows, fewer than the 5 folds
    assert s["probe_excluded_classes"] == {"tiny": 2}
    warnings = [w["message"] for w in Workspace(ws).read_manifest()["warnings"] if w["stage"] == "issues"]
    assert warnings == ["1 class(es) have fewer than 5 training rows for the 5-fold probe and get no label-issue "
                        "verdict: tiny (2 rows)."]
    iss = pq.read_table(ws / "issues.parquet").to_pandas()
    tiny = iss["given_label"] == "tiny"
    assert tiny.sum() == 3 and not iss.loc[tiny, "is_label_issue"].any()
    assert iss.loc[tiny, "label_quality"].isna().all() and iss.loc[tiny, "suggested_label"].isna().all()
    assert iss.loc[~tiny, "label_quality"].notna().all()
    assert s["label_issues_checked_rows"] == 40 and s["per_class"]["tiny"]["label_issues"] is None
    assert s["probe"]["n_folds"] == 5  # the other classes keep all their folds
    probs = pq.read_table(ws / "probs.parquet").to_pandas()
    assert (probs.loc[probs["id"].str.startswith("tiny/"), "fold"] == -1).all()  # predicted, never trained on


def test_bad_option_leaves_the_workspace_untouched(tmp_path, cli):
    data = make_images(tmp_path / "data", {"a": 10, "b": 10}, seed=1)
    ws = tmp_path / "ws"
    ingest(data, ws)
    embed(ws, model="pixels")
    manifest = (ws / "manifest.json").read_bytes()
    cases = [
        (["--filter-by", "bogus"], "The 'filter_by' parameter of issues must be one of prune_by_noise_rate, "
                                   "prune_by_class, both, confident_learning, predicted_neq_given, "
                                   "low_normalized_margin, low_self_confidence. Got 'bogus' instead."),
        (["--rank-by", "x"], "The 'rank_by' parameter of issues must be one of self_confidence, normalized_margin, "
                             "confidence_weighted_entropy. Got 'x' instead."),
        (["--dup-threshold", "1.5"], "The 'dup_threshold' parameter of issues must be a number in the range "
                                     "[-1.0, 1.0]. Got 1.5 instead."),
    ]
    for args, message in cases:
        code, _, err = cli("issues", "-w", ws, "--probe", "sklearn", *args)
        assert code == 2 and one_line(err) == f"error: {message}", err
        assert not (ws / "probs.parquet").exists() and not (ws / "issues.parquet").exists()
        assert (ws / "manifest.json").read_bytes() == manifest
    for kwargs, message in (({"k_neighbors": 0}, "The 'k_neighbors' parameter of issues must be an int in the range "
                                                 "[1, inf). Got 0 instead."),
                            ({"n_folds": 1}, "The 'n_folds' parameter of issues must be an int in the range [2, inf). "
                                             "Got 1 instead."),
                            ({"probe": "svm"}, "The 'probe' parameter of issues must be one of")):
        with pytest.raises(LabelkitError) as info:
            issues(ws, **kwargs)
        assert info.value.message.startswith(message)
    assert not (ws / "probs.parquet").exists() and (ws / "manifest.json").read_bytes() == manifest


def test_unknown_gate_metric_is_exit_2_before_any_work(tmp_path, cli):
    data = make_images(tmp_path / "data", {"a": 4, "b": 4}, seed=1)
    code, _, err = cli("audit", data, "-w", tmp_path / "ws", "--model", "pixels", "--fail-on", "bogus_rate>0.1")
    assert code == 2 and no_traceback(err) and "bogus_rate" in err
    assert not (tmp_path / "ws" / "items.parquet").exists()


@pytest.mark.parametrize("args", [["select", "prune", "--name", ".."], ["select", "prune", "--name", "../x"],
                                  ["train", "--name", ".."], ["train", "--name", "../../x"]])
def test_names_that_escape_the_workspace_are_exit_2(tmp_path, cli, args):
    data = make_images(tmp_path / "data", {"a": 6, "b": 6}, seed=1)
    ws = tmp_path / "ws"
    ingest(data, ws)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, _, err = cli(*args, "-w", ws)
    assert code == 2 and no_traceback(err) and ".." in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_symlink_out_of_an_image_folder_is_refused(tmp_path, cli):
    data = make_images(tmp_path / "data", {"a": 4, "b": 4}, seed=1)
    secret = make_images(tmp_path / "outside", {"s": 1}, seed=9) / "s" / "img000.png"
    os.symlink(secret, data / "a" / "link.png")
    ws = tmp_path / "ws"
    code, _, err = cli("ingest", data, "-w", ws)
    assert code == 0 and no_traceback(err), err
    items = Workspace(ws).read_items().set_index("id")
    assert items.loc["a/link.png", "error"].startswith("symlink outside the data folder")
    assert items["error"].notna().sum() == 1 and np.isnan(items.loc["a/link.png", "bytes"])


def test_issues_command_says_why_label_issues_were_not_computed(tmp_path, cli):
    data = make_images(tmp_path / "data", {"only": 12}, seed=3)
    ws = tmp_path / "ws"
    ingest(data, ws)
    embed(ws, model="pixels")
    code, out, err = cli("issues", "-w", ws)
    assert code == 0 and no_traceback(err), err
    assert "Label issues cannot be computed: the data has one class" in one_line(err)


def test_no_usable_rows_error_is_one_short_line_counted_by_reason(tmp_path, cli):
    """Every image path outside the table's folder: one line with the count, not one entry per row."""
    outside = tmp_path / "outside"
    outside.mkdir()
    table = tmp_path / "data" / "t.csv"
    table.parent.mkdir()
    rows = ["image,label"] + [f"{outside}/img{i:04d}.png,{'ab'[i % 2]}" for i in range(300)]
    table.write_text("\n".join(rows) + "\n")
    code, _, err = cli("ingest", table, "-w", tmp_path / "ws")
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(" ".join(lines)) < 400, err
    assert "300" in err and "image path outside the table's folder: 300" in " ".join(err.split())
