"""`audit --baseline`: what changed since an earlier audit, and the gate on the changes.

Two versions of a small text table with the user's out-of-sample probabilities (cleanlab runs for
real; no embeddings, so each audit takes about a second): version 2 flips 20 labels that the
probabilities contradict, so those rows must turn up as new label issues.
"""

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import one_line
from labelkit.audit import audit
from labelkit.baseline import compare_metrics, load_baseline, sidecar_path
from labelkit.errors import LabelkitError
from labelkit.gate import METRICS, evaluate, parse_rules

CLASSES = np.array(["ant", "bee", "cat", "dog"])
N = 240
FLIPS = 20


def _write(folder, name, ids, texts, labels, probs):
    """Write NAME.csv (id, text, label) and NAME.probs.csv (id + one column per class) into `folder`."""
    pd.DataFrame({"id": ids, "text": texts, "label": labels}).to_csv(folder / f"{name}.csv", index=False)
    pd.DataFrame(probs, columns=CLASSES).assign(id=ids).to_csv(folder / f"{name}.probs.csv", index=False)
    return folder / f"{name}.csv", folder / f"{name}.probs.csv"


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """v1 (4 labels already wrong) and v2 (20 more flipped) of one dataset; probabilities favour the truth."""
    folder = tmp_path_factory.mktemp("baseline")
    rng = np.random.default_rng(7)
    truth = np.arange(N) % len(CLASSES)
    probs = rng.dirichlet(np.full(len(CLASSES), 0.5), N) * 0.15
    probs[np.arange(N), truth] += 0.85
    ids = [f"r{i:03d}" for i in range(N)]
    texts = [f"example {i} about the {CLASSES[t]}" for i, t in enumerate(truth)]
    v1 = truth.copy()
    early = rng.choice(N, 4, replace=False)
    v1[early] = (truth[early] + 1) % len(CLASSES)
    flipped = rng.choice(np.setdiff1d(np.arange(N), early), FLIPS, replace=False)
    v2 = v1.copy()
    v2[flipped] = (truth[flipped] + 1 + rng.integers(0, len(CLASSES) - 1, FLIPS)) % len(CLASSES)
    data = {"folder": folder, "probs": probs, "ids": np.array(ids), "flipped": np.array(ids)[flipped],
            "flips_to": v2[flipped], "truth": truth}
    data["v1"] = _write(folder, "v1", ids, texts, CLASSES[v1], probs)
    data["v2"] = _write(folder, "v2", ids, texts, CLASSES[v2], probs)
    # The baseline run: a workspace of v1, with report.json and its row sidecar.
    data["ws1"] = folder / "ws1"
    audit(data["v1"][0], data["ws1"], pred_probs=data["v1"][1], fail_on=["label_issue_rate>0.5"])
    return data


def _audit(versions, name, ws, **kw):
    table, probs = versions[name]
    return audit(table, ws, pred_probs=probs, fail_on=kw.pop("fail_on", ["label_issue_rate>0.5"]), **kw)


def test_flipped_labels_are_new_label_issues(versions, tmp_path):
    result = _audit(versions, "v2", tmp_path / "ws2", baseline=versions["ws1"], write_report=False)
    changes = result["baseline"]
    # A flip the probabilities contradict (new label < 0.1, true class > 0.5) is a confident error.
    probs, rows = versions["probs"], np.searchsorted(versions["ids"], versions["flipped"])
    confident = int(((probs[rows, versions["flips_to"]] < 0.1) & (probs[rows, versions["truth"][rows]] > 0.5)).sum())
    assert confident >= 18
    new = changes["flags"]["is_label_issue"]
    found = set(new["new_ids"]) & set(versions["flipped"])
    assert len(found) >= 0.9 * confident
    assert changes["gate_metrics"]["new_label_issues"] == new["new"] <= FLIPS + 2  # hardly any unflipped row
    assert changes["rows"] | {"new_ids": [], "removed_ids": [], "changed_examples": []} == {
        "baseline": N, "now": N, "matched": N, "new": 0, "removed": 0, "changed": FLIPS, "content_changed": 0,
        "label_changed": FLIPS, "moved": 0, "new_ids": [], "removed_ids": [], "changed_examples": []}
    assert {c["id"] for c in changes["rows"]["changed_examples"]} <= set(versions["flipped"])
    metrics = {m["metric"]: m for m in changes["metrics"]}
    before, now = metrics["label_issues"]["baseline"], metrics["label_issues"]["now"]
    assert metrics["label_issues"]["delta"] == now - before >= 0.9 * confident
    assert changes["gate_metrics"]["label_issue_rate.delta"] == pytest.approx(metrics["label_issue_rate"]["delta"])
    assert changes["gate_metrics"]["removed_rows"] == 0 and changes["gate_metrics"]["new_unusable_rows"] == 0
    # Stored for the report and later readers.
    manifest = json.loads((tmp_path / "ws2" / "manifest.json").read_text())
    assert manifest["stages"]["baseline"]["gate_metrics"] == changes["gate_metrics"]
    verdict = evaluate(parse_rules("new_label_issues>5,label_issue_rate.delta>0.01"),
                       result["summary"] | changes["gate_metrics"])
    assert [r["verdict"] for r in verdict["results"]] == ["fail", "fail"]


def test_the_same_data_against_itself_changes_nothing(versions, tmp_path):
    result = _audit(versions, "v1", tmp_path / "ws", baseline=versions["ws1"], write_report=False,
                    fail_on=["new_label_issues>0,label_issue_rate.delta!=0,removed_rows>0,new_rows>0"])
    changes = result["baseline"]
    assert result["gate"]["passed"], result["gate"]
    assert changes["gate_metrics"]["new_label_issues"] == 0 and changes["gate_metrics"]["new_duplicates"] == 0
    measured = {name: f for name, f in changes["flags"].items() if f["new"] is not None}
    assert {"is_label_issue", "is_duplicate", "unusable"} <= set(measured)
    assert changes["flags"]["is_outlier"]["new"] is None  # no embeddings: outliers were never measured
    assert all(f["new"] == 0 and f["resolved"] == 0 and f["now"] == f["baseline"] for f in measured.values())
    measured = [m for m in changes["metrics"] if m["delta"] is not None]
    assert {m["metric"] for m in measured} >= {"label_issue_rate", "label_issues", "duplicates", "class_min_count"}
    assert all(m["delta"] == 0 for m in measured)
    assert changes["rows"]["changed"] == 0 and changes["rows"]["matched"] == N
    assert changes["warnings"] == []


def test_the_workspace_itself_can_be_its_own_baseline(versions, tmp_path):
    # The baseline is read before ingest overwrites the folder.
    ws = tmp_path / "ws"
    shutil.copytree(versions["ws1"], ws)
    changes = _audit(versions, "v2", ws, baseline=ws, write_report=False)["baseline"]
    assert changes["rows"]["label_changed"] == FLIPS and changes["gate_metrics"]["new_label_issues"] >= 18


def test_cli_gate_fails_on_new_label_issues(cli, versions, tmp_path):
    table, probs = versions["v2"]
    args = ("audit", table, "-w", tmp_path / "ws", "--pred-probs", probs, "--no-report", "--baseline", versions["ws1"])
    code, out, err = cli(*args, "--fail-on", "new_label_issues>5")
    assert code == 1, err
    assert "FAIL new_label_issues>5" in one_line(err)
    assert f"Changes since baseline {versions['ws1']}:" in out
    assert f"rows: {N} now, {N} in the baseline; 0 new, 0 removed, {FLIPS} changed ({FLIPS} relabelled), 0 moved" \
        in one_line(out)
    code, out, err = cli(*args, "--fail-on", "new_label_issues>50", "--json")
    assert code == 0, err
    assert json.loads(out)["baseline"]["gate_metrics"]["new_label_issues"] >= 18


def test_a_report_json_with_its_sidecar_is_as_good_as_the_workspace(versions, tmp_path):
    ws1 = versions["ws1"]
    assert (ws1 / "report.rows.parquet").is_file()
    rows = pq.read_table(ws1 / "report.rows.parquet")
    assert rows.num_rows == N and {"id", "content_hash", "label", "unusable", "is_label_issue",
                                    "is_duplicate"} <= set(rows.column_names)
    artifact = tmp_path / "artifact"  # what CI keeps: the two files, no workspace
    artifact.mkdir()
    for name in ("report.json", "report.rows.parquet"):
        shutil.copy(ws1 / name, artifact / name)
    from_ws = _audit(versions, "v2", tmp_path / "a", baseline=ws1, write_report=False)["baseline"]
    from_json = _audit(versions, "v2", tmp_path / "b", baseline=artifact / "report.json")["baseline"]
    from_folder = _audit(versions, "v2", tmp_path / "c", baseline=artifact, write_report=False)["baseline"]
    assert from_json["kind"] == from_folder["kind"] == "report" and from_ws["kind"] == "workspace"
    for key in ("gate_metrics", "rows", "flags", "metrics"):
        assert from_json[key] == from_ws[key] == from_folder[key], key
    # The report shows the comparison and keeps it in report.json.
    html = (tmp_path / "b" / "report.html").read_text()
    assert "Changes since baseline" in html and html.index('id="baseline"') < html.index('id="gate"')
    assert all(i in html for i in from_json["flags"]["is_label_issue"]["new_ids"][:20])
    saved = json.loads((tmp_path / "b" / "report.json").read_text())
    assert saved["baseline"]["gate_metrics"] == from_json["gate_metrics"]


def test_a_report_json_without_its_sidecar_compares_metrics_only(versions, tmp_path):
    shutil.copy(versions["ws1"] / "report.json", tmp_path / "report.json")
    result = _audit(versions, "v2", tmp_path / "ws", baseline=tmp_path / "report.json", write_report=False,
                    fail_on=["label_issues.delta>5,new_label_issues>5"])
    changes = result["baseline"]
    assert changes["rows"] is None and changes["gate_metrics"]["new_label_issues"] is None
    assert changes["gate_metrics"]["label_issues.delta"] >= 18
    assert any("No report.rows.parquet beside baseline" in w for w in changes["warnings"])
    assert [r["verdict"] for r in result["gate"]["results"]] == ["fail", "not measured"]


def test_a_sidecar_from_other_data_is_refused(versions, tmp_path):
    shutil.copy(versions["ws1"] / "report.json", tmp_path / "report.json")
    _audit(versions, "v2", tmp_path / "ws2")
    shutil.copy(tmp_path / "ws2" / "report.rows.parquet", tmp_path / "report.rows.parquet")
    with pytest.raises(LabelkitError, match="report.rows.parquet belongs to other data than report.json"):
        load_baseline(tmp_path / "report.json")


def test_new_removed_and_moved_rows(versions, tmp_path):
    frame = pd.read_csv(versions["v1"][0])
    probs = pd.read_csv(versions["v1"][1])
    keep = frame.index >= 10  # r000..r009 removed
    frame, probs = frame[keep].copy(), probs[keep].copy()
    frame.loc[frame["id"] == "r010", "id"] = probs.loc[probs["id"] == "r010", "id"] = "renamed-r010"  # same text
    extra = pd.DataFrame({"id": ["n1", "n2"], "text": ["a brand new ant", "a brand new bee"], "label": ["ant", "bee"]})
    extra_probs = pd.DataFrame([[0.9, 0.05, 0.03, 0.02, "n1"], [0.05, 0.9, 0.03, 0.02, "n2"]], columns=probs.columns)
    table, pp = tmp_path / "v3.csv", tmp_path / "v3.probs.csv"
    pd.concat([frame, extra]).to_csv(table, index=False)
    pd.concat([probs, extra_probs]).to_csv(pp, index=False)
    changes = audit(table, tmp_path / "ws", pred_probs=pp, baseline=versions["ws1"], write_report=False,
                    fail_on=["removed_rows>=10"])
    rows = changes["baseline"]["rows"]
    assert (rows["removed"], rows["new"], rows["moved"], rows["changed"], rows["matched"]) == (10, 2, 1, 0, N - 10)
    assert rows["removed_ids"] == [f"r{i:03d}" for i in range(10)] and rows["new_ids"] == ["n1", "n2"]
    gm = changes["baseline"]["gate_metrics"]
    assert (gm["removed_rows"], gm["new_rows"], gm["changed_rows"]) == (10, 2, 0)
    assert changes["gate"]["passed"] is False


def test_a_baseline_of_another_dataset_is_exit_2(cli, versions, tmp_path):
    other = tmp_path / "other.csv"
    pd.DataFrame({"id": [f"x{i}" for i in range(12)], "text": [f"unrelated text {i}" for i in range(12)],
                  "label": ["a", "b"] * 6}).to_csv(other, index=False)
    code, _, err = cli("audit", other, "-w", tmp_path / "ws", "--no-report", "--baseline", versions["ws1"])
    assert code == 2
    assert one_line(err).startswith(f"error: Baseline {versions['ws1']} shares no row id or content with this data "
                                    "(12 rows, e.g. 'x0'; the baseline has 240, e.g. 'r000'): it is an audit of a "
                                    "different dataset.")
    assert not (tmp_path / "ws" / "embeddings").exists()  # failed before embedding


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nope", ("Baseline {p}/nope does not exist; give an earlier labelkit workspace folder or its "
                            "report.json.")),
    (lambda p: p, ("Baseline {p} holds neither manifest.json + items.parquet nor report.json; give an earlier "
                   "labelkit workspace folder or its report.json.")),
])
def test_a_missing_baseline_is_exit_2_before_any_work(cli, versions, tmp_path, make, message):
    base = tmp_path / "base"
    base.mkdir()
    code, _, err = cli("audit", versions["v2"][0], "-w", tmp_path / "ws", "--pred-probs", versions["v2"][1],
                       "--baseline", make(base))
    assert code == 2 and one_line(err) == "error: " + message.format(p=base)
    assert not (tmp_path / "ws").exists()


def test_different_classes_warn_and_still_compare(versions, tmp_path):
    frame = pd.read_csv(versions["v1"][0])
    frame["label"] = frame["label"].replace({"dog": "wolf"})
    probs = pd.read_csv(versions["v1"][1]).rename(columns={"dog": "wolf"})
    frame.to_csv(tmp_path / "v.csv", index=False)
    probs.to_csv(tmp_path / "p.csv", index=False)
    result = audit(tmp_path / "v.csv", tmp_path / "ws", pred_probs=tmp_path / "p.csv", baseline=versions["ws1"],
                   write_report=False, fail_on=["label_issue_rate>0.5"])
    changes = result["baseline"]
    assert changes["warnings"] == [("The classes differ from the baseline's (new: wolf; gone: dog); metrics and rows "
                                    "are compared anyway.")]
    assert changes["rows"]["label_changed"] == N // 4
    assert any("The classes differ" in w["message"] for w in result["warnings"])


def test_a_change_rule_without_a_baseline_is_exit_2_before_any_work(cli, versions, tmp_path):
    table, probs = versions["v1"]
    code, _, err = cli("audit", table, "-w", tmp_path / "ws", "--pred-probs", probs, "--no-report", "--json",
                       "--fail-on", "label_issue_rate>0.5,label_issue_rate.delta>0.01,new_label_issues>5")
    assert code == 2 and not (tmp_path / "ws").exists()
    assert one_line(err) == ("error: The gate rule(s) 'label_issue_rate.delta>0.01', 'new_label_issues>5' on the "
                           "command line measure changes since a baseline; pass --baseline with an earlier "
                           "workspace or its report.json, or drop them.")
    for rule in ("removed_rows>0", "new_rows>0", "changed_rows>0", "new_duplicates>0", "new_unusable_rows>0"):
        with pytest.raises(LabelkitError, match="measure changes since a baseline"):
            audit(table, tmp_path / "ws", pred_probs=probs, fail_on=[rule], write_report=False)
    assert not (tmp_path / "ws").exists()


def test_rule_parsing_knows_deltas_and_change_metrics():
    assert [str(r) for r in parse_rules("label_issue_rate.delta>0.01, new_label_issues>5, removed_rows>=1")] == [
        "label_issue_rate.delta>0.01", "new_label_issues>5", "removed_rows>=1"]
    for bad in ("bogus.delta>1", "new_label_issues.delta>1", "label_issue_rate.deltas>1"):
        with pytest.raises(LabelkitError):
            parse_rules(bad)
    with pytest.raises(LabelkitError, match="with --baseline also METRIC.delta and new_label_issues"):
        parse_rules("bogus.delta>1")
    # train --check has no baseline: its own metrics only.
    with pytest.raises(LabelkitError, match="Unknown metric 'accuracy.delta'"):
        parse_rules("accuracy.delta<0", metrics={"accuracy": "held-out accuracy"})


def test_compare_metrics_deltas():
    rows = compare_metrics({"label_issue_rate": 0.02, "outliers": None, "seconds": 3.0, "rows": 10},
                           {"label_issue_rate": 0.05, "outliers": 4, "seconds": 9.0, "rows": 12})
    by = {r["metric"]: r for r in rows}
    assert by["label_issue_rate"] == {"metric": "label_issue_rate", "baseline": 0.02, "now": 0.05, "delta": 0.03}
    assert by["outliers"]["delta"] is None and by["rows"]["delta"] == 2 and "seconds" not in by
    assert [r["metric"] for r in rows] == [m for m in METRICS if m in by]  # in the gate's order


def test_sidecar_path():
    assert str(sidecar_path("out/report.json")) == "out/report.rows.parquet"


def test_an_audit_without_baseline_drops_the_old_comparison(versions, tmp_path):
    ws = tmp_path / "ws"
    _audit(versions, "v2", ws, baseline=versions["ws1"], write_report=False)
    from labelkit.report import report

    html = report(ws).html_path.read_text()  # `labelkit report` alone still shows the comparison
    assert 'id="baseline"' in html
    _audit(versions, "v2", ws)
    manifest = json.loads((ws / "manifest.json").read_text())
    assert "baseline" not in manifest["stages"]
    assert not any(w["stage"] == "baseline" for w in manifest["warnings"])
    assert 'id="baseline"' not in (ws / "report.html").read_text()
    assert json.loads((ws / "report.json").read_text())["baseline"] is None
