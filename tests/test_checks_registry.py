"""The check registry drives issues, the report, the gate, the docs and --help (labelkit.checks)."""

import json
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, one_line
from labelkit import gate
from labelkit.checks import REGISTRY, Check, CheckResult, get_checks, markdown_table, register


def test_docs_checks_md_is_generated_from_the_registry():
    assert (ROOT / "docs" / "checks.md").read_text() == markdown_table(), "run python -m labelkit.checks > docs/checks.md"


def test_every_registered_metric_is_a_gate_metric_and_every_check_is_in_help(cli):
    for check in get_checks():
        for metric in check.metrics:
            assert gate.parse_rules(f"{metric}>0")[0].metric == metric
    code, out, _ = cli("issues", "--help")
    assert code == 0
    for check in get_checks():
        assert check.name in one_line(out), check.name


def test_metric_names_are_unique_and_flags_are_declared_columns():
    seen = {}
    for check in get_checks():
        for metric in check.metrics:
            assert metric not in seen, f"{metric} in {check.name} and {seen[metric]}"
            seen[metric] = check.name
        for attr in ("flag", "score", "pair"):
            column = getattr(check, attr)
            assert column is None or column in check.columns, (check.name, attr)


@pytest.fixture
def planted_check():
    """A check defined only here: rows whose id ends in 7 — it must reach every consumer untouched."""

    @register
    class EndsInSeven(Check):
        name = "ends_in_seven"
        title = "Ids ending in 7"
        description = "A check that exists only in this test."
        metrics = {"ends_in_seven_rows": "rows whose id ends in 7"}
        columns = {"is_seven": "id ends in 7", "seven_score": "0 for flagged rows, 1 otherwise"}
        flag = "is_seven"
        score = "seven_score"

        def run(self, ctx):
            time.sleep(0.2)  # its seconds are recorded in the summary
            flags = np.array([i.endswith("7.png") for i in ctx.ids.to_pylist()])
            return CheckResult(columns={"is_seven": flags, "seven_score": (~flags).astype(np.float32)},
                               metrics={"ends_in_seven_rows": int(flags.sum())},
                               reasons={int(r): "its id ends in 7" for r in np.flatnonzero(flags)},
                               tables=[{"title": "Sevens", "columns": ["n"], "rows": [[int(flags.sum())]]}])

    yield EndsInSeven
    del REGISTRY["ends_in_seven"]


def test_a_new_check_reaches_issues_report_gate_and_reasons(planted_check, digits_copy, cli):
    code, out, err = cli("issues", "-w", digits_copy, "--checks", "ends_in_seven,duplicates", "--json")
    assert code == 0, err
    summary = json.loads(out)["summary"]
    table = pq.read_table(digits_copy / "issues.parquet").to_pandas()
    sevens = table["id"].str.endswith("7.png")
    assert summary["ends_in_seven_rows"] == int(sevens.sum()) > 0
    assert (table["is_seven"] == sevens).all()
    assert (table.loc[sevens, "reason"].str.contains("its id ends in 7")).all()
    assert table.loc[~sevens & ~table["is_duplicate"], "reason"].isna().all()
    # Only the named checks ran: the label-issue columns are there (readers rely on them) but empty.
    assert set(summary["checks"]) == {"ends_in_seven", "duplicates"} and not table["is_label_issue"].any()
    assert summary["checks"]["ends_in_seven"]["seconds"] >= 0.2

    assert cli("report", "-w", digits_copy)[0] == 0
    html = (digits_copy / "report.html").read_text()
    section = html.split('id="check-ends_in_seven"')[1].split("</section>")[0]
    assert "Ids ending in 7" in html and "its id ends in 7" in section and "Sevens" in section
    assert section.count('class="card"') == min(36, int(sevens.sum()))

    rules = gate.parse_rules("ends_in_seven_rows>0")
    assert gate.evaluate(rules, summary)["passed"] is False


def test_unknown_check_fails_before_writing(digits_copy, cli):
    before = (digits_copy / "issues.parquet").stat().st_mtime_ns
    code, _, err = cli("issues", "-w", digits_copy, "--checks", "label_issues,nope")
    assert code == 2 and "Unknown check 'nope'" in one_line(err)
    assert (digits_copy / "issues.parquet").stat().st_mtime_ns == before


def test_label_issue_reason_states_the_evidence(digits_ws):
    table = pq.read_table(digits_ws / "issues.parquet").to_pandas()
    flagged = table[table["is_label_issue"]]
    assert len(flagged) > 10
    for _, row in flagged.head(20).iterrows():
        assert f"labelled '{row['given_label']}'" in row["reason"]
        assert f"probe says '{row['suggested_label']}'" in row["reason"] and "out of sample" in row["reason"]
        assert "nearest rows are" in row["reason"]


def test_checks_that_need_no_probabilities_skip_the_probe(digits_copy):
    from labelkit.issues import issues

    result = issues(digits_copy, checks=["duplicates", "outliers"])
    assert "probe" not in result.summary["phase_seconds"] and result.summary["probe"] is None
    assert result.summary["label_issues"] is None and result.summary["outliers"] is not None
    assert not (digits_copy / "probs.parquet").exists()  # the earlier run's probabilities are not left behind
    assert "label_issues" not in result.summary["checks"]
