import json

import pytest

from conftest import SAMPLE, one_line
from labelkit.errors import LabelkitError
from labelkit.gate import DEFAULT_RULES, evaluate, find_config, parse_rules, resolve_rules


def test_parse_and_evaluate_rules():
    rules = parse_rules("label_issue_rate>0.05, duplicates>0")
    assert [str(r) for r in rules] == ["label_issue_rate>0.05", "duplicates>0"]
    verdict = evaluate(rules + parse_rules(["class_min_count<20", "near_duplicates>=1"]),
                       {"label_issue_rate": 0.051, "duplicates": 0, "class_min_count": 20, "near_duplicates": None})
    assert [r["failed"] for r in verdict["results"]] == [True, False, False, False]
    assert verdict["results"][3]["skipped"] and not verdict["passed"]
    assert evaluate(parse_rules("label_issue_rate>0.06"), {"label_issue_rate": 0.051})["passed"]


@pytest.mark.parametrize("spec, message", [
    ("label_issue_rate>>0.05", "Cannot parse rule 'label_issue_rate>>0.05'; expected METRIC OP NUMBER, e.g. label_issue_rate>0.05 or accuracy<0.9."),
    ("bogus>1", "Unknown metric 'bogus' in 'bogus>1'; known: label_issue_rate"),
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
