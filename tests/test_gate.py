import json

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, SAMPLE, one_line
from labelkit.errors import LabelkitError
from labelkit.gate import DEFAULT_RULES, evaluate, find_config, parse_rules, resolve_rules, tomllib


def test_parse_and_evaluate_rules():
    rules = parse_rules("label_issue_rate>0.05, duplicates>0")
    assert [str(r) for r in rules] == ["label_issue_rate>0.05", "duplicates>0"]
    verdict = evaluate(rules + parse_rules(["class_min_count<20", "near_duplicates>=1"]),
                       {"label_issue_rate": 0.051, "duplicates": 0, "class_min_count": 20, "near_duplicates": None})
    assert [r["failed"] for r in verdict["results"]] == [True, False, False, True]
    assert [r["verdict"] for r in verdict["results"]] == ["fail", "pass", "pass", "not measured"]
    assert not verdict["passed"]
    assert evaluate(parse_rules("label_issue_rate>0.06"), {"label_issue_rate": 0.051})["passed"]


@pytest.mark.parametrize("summary", [{}, {"outliers": None}, {"outliers": float("nan")},
                                     {"outliers": np.float32("nan")}])
def test_a_rule_on_an_unmeasured_metric_fails(summary):
    # `outliers<1000` would hold for any measured count; unmeasured it must still not pass.
    verdict = evaluate(parse_rules("outliers<1000, label_issue_rate>0.5"), {"label_issue_rate": 0.0, **summary})
    assert verdict["passed"] is False
    assert [(r["verdict"], r["failed"], r["value"]) for r in verdict["results"]] == [
        ("not measured", True, None), ("pass", False, 0.0)]
    json.dumps(verdict, allow_nan=False)  # NaN is stored as null, so report.json stays valid JSON


@pytest.fixture
def scored_table(tmp_path):
    """A 3-class text table with confident, correct probabilities: no label issues, no embeddings."""
    y = np.repeat(np.arange(3), 10)
    pd.DataFrame({"id": [f"r{i}" for i in range(30)], "text": [f"row {i}" for i in range(30)],
                  "label": np.array(["ant", "bee", "cat"])[y]}).to_csv(tmp_path / "t.csv", index=False)
    probs = np.full((30, 3), 0.05, np.float32)
    probs[np.arange(30), y] = 0.9
    np.save(tmp_path / "p.npy", probs)
    return tmp_path / "t.csv", tmp_path / "p.npy"


def test_cli_gate_fails_a_rule_on_a_metric_the_audit_did_not_measure(cli, scored_table, tmp_path):
    table, probs = scored_table
    args = ("audit", table, "-w", tmp_path / "ws", "--pred-probs", probs, "--no-report")
    code, _, err = cli(*args, "--fail-on", "label_issue_rate>0.5")
    assert code == 0, err
    code, out, err = cli(*args, "--fail-on", "label_issue_rate>0.5,outliers>5", "--json")
    assert code == 1, err
    result = json.loads(out)
    assert result["summary"]["outliers"] is None
    assert [(r["rule"], r["verdict"]) for r in result["gate"]["results"]] == [
        ("label_issue_rate>0.5", "pass"), ("outliers>5", "not measured")]
    code, _, err = cli(*args, "--fail-on", "label_issue_rate>0.5,outliers>5")
    assert code == 1 and "FAIL outliers>5 (not measured)" in one_line(err)
    assert "Gate failed (rules from command line)" in one_line(err)


def test_unknown_metric_in_config_is_exit_2_before_any_work(cli, scored_table, tmp_path, monkeypatch):
    table, probs = scored_table
    (tmp_path / "pyproject.toml").write_text('[tool.labelkit.gate]\nfail_on = ["outlier>0"]\n')
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("audit", table, "-w", tmp_path / "ws", "--pred-probs", probs)
    assert code == 2 and not (tmp_path / "ws").exists()
    assert one_line(err).startswith("error: Unknown metric 'outlier' in 'outlier>0'; did you mean 'outliers'? "
                                    "every check's metrics are listed in docs/checks.md")
    assert len(err.strip().splitlines()) == 1


def test_a_change_rule_in_config_without_baseline_is_exit_2_before_any_work(cli, scored_table, tmp_path,
                                                                               monkeypatch):
    table, probs = scored_table
    (tmp_path / "pyproject.toml").write_text('[tool.labelkit.gate]\nfail_on = ["new_label_issues>0"]\n')
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("audit", table, "-w", tmp_path / "ws", "--pred-probs", probs)
    assert code == 2 and not (tmp_path / "ws").exists()
    assert one_line(err) == (f"error: The gate rule(s) 'new_label_issues>0' in {tmp_path / 'pyproject.toml'} measure "
                           "changes since a baseline; pass --baseline with an earlier workspace or its "
                           "report.json, or drop them.")


def test_every_tomllib_import_has_the_tomli_fallback():
    """tomllib is 3.11+ and requires-python allows 3.10: each import sits under a version check."""
    import ast

    bare = []
    for path in sorted((ROOT / "labelkit").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guarded = {id(node) for branch in ast.walk(tree) if isinstance(branch, ast.If)
                   and "version_info" in ast.unparse(branch.test) for node in ast.walk(branch)}
        bare += [f"{path.name}:{node.lineno}" for node in ast.walk(tree) if isinstance(node, ast.Import)
                 and any(a.name == "tomllib" for a in node.names) and id(node) not in guarded]
    assert bare == []


def test_tomli_is_a_dependency_exactly_where_tomllib_is_missing():
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    supported = SpecifierSet(project["requires-python"])
    tomli = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "tomli"]
    for minor in range(8, 15):
        if f"3.{minor}.0" not in supported:
            continue
        env = {"python_version": f"3.{minor}", "python_full_version": f"3.{minor}.0"}
        installs = any(r.marker is None or r.marker.evaluate(env) for r in tomli)
        assert installs == (minor < 11), f"3.{minor}"


@pytest.mark.parametrize("spec, message", [
    ("label_issue_rate>>0.05", "Cannot parse rule 'label_issue_rate>>0.05'; expected METRIC OP NUMBER, e.g. label_issue_rate>0.05 or accuracy<0.9."),
    ("bogus>1", "Unknown metric 'bogus' in 'bogus>1'; every check's metrics are listed in docs/checks.md"),
])
def test_bad_rules_are_user_errors(spec, message):
    with pytest.raises(LabelkitError) as exc:
        parse_rules(spec)
    assert exc.value.message.startswith(message) and exc.value.exit_code == 2


def test_rules_from_pyproject_then_labelkit_toml_then_default(tmp_path):
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    assert resolve_rules(None, config_start=sub) == (parse_rules(list(DEFAULT_RULES)), "default")
    (tmp_path / "pyproject.toml").write_text('[tool.labelkit.gate]\nfail_on = ["duplicates>0", "outliers>3"]\n')
    rules, source = resolve_rules(None, config_start=sub)
    assert [str(r) for r in rules] == ["duplicates>0", "outliers>3"] and source == str(tmp_path / "pyproject.toml")
    (tmp_path / "a" / "labelkit.toml").write_text('[gate]\nfail_on = "unusable_rows>0"\n')
    assert [str(r) for r in resolve_rules(None, config_start=sub)[0]] == ["unusable_rows>0"]
    assert [str(r) for r in resolve_rules(["label_issues>9"], config_start=sub)[0]] == ["label_issues>9"]
    (tmp_path / "a" / "labelkit.toml").write_text('[gate\n')
    with pytest.raises(LabelkitError, match="is not valid TOML"):
        find_config(sub)


def test_audit_fails_default_gate_on_planted_noise_and_prints_only_json(audited):
    code, out, ws = audited
    assert code == 1
    result = json.loads(out)  # stdout holds the JSON and nothing else
    assert result["gate"]["passed"] is False and result["gate_source"] == "default"
    assert result["gate"]["results"][0]["rule"] == "label_issue_rate>0.03"
    assert result["summary"]["label_issue_rate"] > 0.03
    assert any("PIXEL BASELINE" in w["message"] for w in result["warnings"])
    assert (ws / "report.html").exists() and (ws / "report.json").exists()


def test_audit_passes_with_a_looser_rule_and_exit_2_on_bad_input(cli, audited, tmp_path):
    import shutil

    ws = tmp_path / "copy"
    shutil.copytree(audited[2], ws)  # the shared audited workspace stays as it was
    code, out, err = cli("audit", SAMPLE / "digits", "-w", ws, "--fail-on", "label_issue_rate>0.2", "--no-report")
    assert code == 0, err
    assert "Gate passed (rules from command line)" in one_line(err)
    code, _, err = cli("audit", tmp_path / "nope", "-w", tmp_path / "ws")
    assert code == 2 and one_line(err) == f"error: {tmp_path / 'nope'}: no such file or folder."
    code, _, err = cli("audit", SAMPLE / "digits", "-w", tmp_path / "ws", "--fail-on", "nonsense")
    assert code == 2 and not (tmp_path / "ws").exists()  # rules are checked before any work
