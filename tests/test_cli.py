"""The command line's own contract: --debug anywhere, names that stay in their folder, file modes."""

import hashlib
import os
import stat

import pytest

from conftest import SAMPLE, one_line
from labelkit.errors import LabelkitError
from labelkit.gate import parse_rules
from labelkit.workspace import write_json

TRACEBACK = "Traceback (most recent call last)"


def tree_state(root) -> dict:
    """Return {relative path: sha1 of the bytes} for every file under `root`."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------- --debug
@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_before_or_after_the_subcommand_shows_the_traceback_and_keeps_the_exit_code(cli, tmp_path, where):
    args = ["issues", "-w", tmp_path / "nope"]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    code, _, err = cli(*args)
    assert code == 2 and TRACEBACK in err and "raise LabelkitError(" in err
    assert err.strip().splitlines()[-1].startswith(f"error: No labelkit workspace at {tmp_path / 'nope'}")


def test_without_debug_a_user_error_is_one_line(cli, tmp_path):
    code, _, err = cli("issues", "-w", tmp_path / "nope")
    assert code == 2 and TRACEBACK not in err
    assert one_line(err) == (f"error: No labelkit workspace at {tmp_path / 'nope'} (manifest.json or items.parquet "
                             f"missing); run `labelkit ingest DATA -w {tmp_path / 'nope'}` first.")


@pytest.fixture
def broken_ws(tmp_path):
    """A workspace whose items.parquet is not Parquet: reading it is an internal error, not a user one."""
    ws = tmp_path / "ws"
    ws.mkdir()
    write_json({"classes": ["a", "b"], "stages": {}}, ws / "manifest.json")
    (ws / "items.parquet").write_bytes(b"this is not a parquet file")
    return ws


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_an_internal_errors_traceback(cli, broken_ws, where):
    args = ["report", "-w", broken_ws]
    code, _, err = cli(*(["--debug", *args] if where == "before" else [*args, "--debug"]))
    assert code == 3 and TRACEBACK in err and "internal error" not in err


def test_without_debug_an_internal_error_is_one_line_with_the_hint(cli, broken_ws):
    code, _, err = cli("report", "-w", broken_ws)
    assert code == 3 and TRACEBACK not in err and len(err.strip().splitlines()) == 1
    assert one_line(err).startswith("internal error: ") and one_line(err).endswith("(rerun with --debug for a traceback)")


def test_debug_after_a_double_dash_is_an_argument_not_the_option(cli, tmp_path):
    code, _, err = cli("ingest", "-w", tmp_path / "ws", "--", "--debug")
    assert code == 2 and TRACEBACK not in err and one_line(err) == "error: --debug: no such file or folder."


# --------------------------------------------------------------------------------------------- names
BAD_NAMES = ["..", ".", "../x", "a/b", "a\\b", "", "/tmp/abs", ".hidden", "x" * 129]


def name_message(param: str, func: str, name: str) -> str:
    return (f"error: The {param!r} parameter of {func} must be a str of at most 128 letters, digits, '.', '_' or '-' "
            f"that starts with a letter or digit. Got {name!r} instead.")


@pytest.fixture
def small_ws(tmp_path):
    """A freshly ingested 30-row text workspace (names are checked before embeddings are needed)."""
    import pandas as pd

    from labelkit.ingest import ingest

    pd.DataFrame({"text": [f"row {i}" for i in range(30)], "label": ["a", "b", "c"] * 10}).to_csv(
        tmp_path / "t.csv", index=False)
    ingest(tmp_path / "t.csv", tmp_path / "ws")
    return tmp_path / "ws"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_select_refuses_a_name_that_leaves_subsets_before_writing(cli, small_ws, name):
    before = tree_state(small_ws.parent)
    code, _, err = cli("select", "rs2", "-w", small_ws, "--fraction", "0.5", "--epochs", "2", "--name", name)
    assert code == 2 and one_line(err) == one_line(name_message("name", "select", name))
    assert tree_state(small_ws.parent) == before


@pytest.mark.parametrize("option, param", [("--name", "name"), ("--subset", "subset"), ("--teacher", "teachers")])
@pytest.mark.parametrize("name", ["..", "../x", "a/b", ""])
def test_train_refuses_a_name_that_leaves_models_or_subsets_before_writing(cli, small_ws, option, param, name):
    before = tree_state(small_ws.parent)
    extra = ["--loss", "distill"] if option == "--teacher" else []
    code, _, err = cli("train", "-w", small_ws, option, name, *extra)
    assert code == 2 and one_line(err) == one_line(name_message(param, "train", name))
    assert tree_state(small_ws.parent) == before


def test_a_plain_name_is_kept_as_given(cli, small_ws):
    code, _, err = cli("select", "rs2", "-w", small_ws, "--fraction", "0.5", "--epochs", "2", "--name", "clean.v1-b_2")
    assert code == 0, err
    assert sorted(p.name for p in (small_ws / "subsets").iterdir()) == ["clean.v1-b_2.parquet"]


# --------------------------------------------------------------------------------------------- files
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_get_the_umask_mode_not_0600(cli, tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        code, _, err = cli("ingest", SAMPLE / "text" / "reviews.csv", "-w", tmp_path / "ws")
        write_json({"a": 1}, tmp_path / "ws" / "again.json")
        write_json({"a": 2}, tmp_path / "ws" / "again.json")  # replacing a file gives the same mode
    finally:
        os.umask(previous)
    assert code == 0, err
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ws").rglob("*") if p.is_file()}
    assert {"items.parquet", "manifest.json", "again.json"} <= set(modes)
    assert modes == dict.fromkeys(modes, mode)  # and no temporary file is left behind (names checked above)
    assert not any(name.endswith(".tmp") for name in modes)


# --------------------------------------------------------------------------------------------- errors
def test_labelkit_error_is_a_value_error_with_its_exit_code():
    with pytest.raises(ValueError) as exc:  # library callers may catch it as scikit-learn's errors
        parse_rules("bogus>1")
    assert isinstance(exc.value, LabelkitError) and exc.value.exit_code == 2
    assert str(exc.value).startswith("Unknown metric 'bogus' in 'bogus>1'")


# --------------------------------------------------------------------------------------------- issues
@pytest.fixture
def vector_ws(tmp_path):
    """A freshly ingested 40-row workspace with the table's own 8-d embeddings (no embedder needed)."""
    import numpy as np
    import pandas as pd

    from labelkit.ingest import ingest

    rng = np.random.default_rng(0)
    pd.DataFrame({"text": [f"row {i}" for i in range(40)], "label": ["a", "b"] * 20,
                  "emb": [str(v) for v in rng.normal(size=(40, 8)).round(4).tolist()]}).to_csv(tmp_path / "t.csv",
                                                                                          index=False)
    ingest(tmp_path / "t.csv", tmp_path / "ws", embedding_col="emb")
    return tmp_path / "ws"


def test_issues_names_only_the_files_it_wrote(cli, vector_ws):
    code, out, err = cli("issues", "-w", vector_ws, "--checks", "duplicates,class_balance")
    assert code == 0, err
    assert not (vector_ws / "probs.parquet").exists()
    assert one_line(out).split("┘")[-1].strip() == f"→ {vector_ws}/issues.parquet"  # after the last table


@pytest.mark.parametrize("spec", [",", " , ,"])
def test_checks_naming_no_check_is_one_line_exit_2_before_writing(cli, vector_ws, spec):
    from labelkit.issues import issues

    before = tree_state(vector_ws.parent)
    code, out, err = cli("issues", "-w", vector_ws, "--checks", spec)
    assert code == 2 and out == ""
    assert err.strip() == (f"error: The 'checks' parameter of issues must be one or more check names, comma-separated. "
                           f"Got {spec!r} instead.")
    with pytest.raises(LabelkitError, match=r"The 'checks' parameter of issues .* Got \[\] instead."):
        issues(vector_ws, checks=[])
    assert tree_state(vector_ws.parent) == before


def test_the_console_script_exits_with_mains_code_and_flushed_output(tmp_path):
    """entry() skips the interpreter's teardown (os._exit): the exit code and piped output must survive."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "labelkit", "issues", "-w", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "nope" in done.stderr
    done = subprocess.run([sys.executable, "-m", "labelkit", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "audit" in done.stdout


# --------------------------------------------------------------------------------------------- console (issue 29)
PROBE = {"chosen": "knn k=5", "n_folds": 5, "selection_rows": 1433, "cv_accuracy": 0.9372,
         "candidates": {"knn k=10": {"log_loss": 0.3608, "accuracy": 0.93, "seconds": 0.2},
                        "knn k=5": {"log_loss": 0.3511, "accuracy": 0.94, "seconds": 0.2},
                        "raw C=1": {"log_loss": 0.52, "accuracy": 0.90, "seconds": 1.5}},
         "skipped": {"mlp": "abandoned after 1 of 5 folds"}}


def test_the_probe_line_names_the_choice_and_the_runner_up_only():
    from labelkit.console import probe_line

    assert probe_line(PROBE) == ("Probe: knn k=5, 5-fold log-loss 0.351 on 1433 rows (runner-up knn k=10: 0.361; "
                                 "4 candidates, 1 abandoned early; --verbose lists them); out-of-sample accuracy 0.937")
    assert probe_line(PROBE, verbose=True).count("--verbose") == 0
    only = {"chosen": "logreg C=1", "n_folds": 3, "cv_accuracy": None, "candidates": {"logreg C=1": {"log_loss": 0.5}}}
    assert probe_line(only) == "Probe: logreg C=1, 3-fold log-loss 0.500 on all rows"
    old = {"features": "raw", "C": 1.0, "n_folds": 5, "cv_accuracy": 0.8, "cv_log_loss": {"raw C=1": 0.4, "raw C=10": 0.45}}
    assert probe_line(old) == ("Probe: raw C=1, 5-fold log-loss 0.400 on all rows (runner-up raw C=10: 0.450; "
                               "2 candidates; --verbose lists them); out-of-sample accuracy 0.800")


def checks_summary_of(task: str | None) -> dict:
    """A summary whose checks are the registry's, each skipped for its own kind of reason or run."""
    from labelkit.checks import get_checks

    task = task or "multiclass"
    checks = {}
    for c in get_checks():
        if c.tasks is not None and task not in c.tasks:
            checks[c.name] = {"title": c.title, "skipped": f"not for {task} data"}
        elif c.name == "split_leakage":
            checks[c.name] = {"title": c.title, "skipped": "needs a split per row"}
        elif c.name == "text_properties":
            checks[c.name] = {"title": c.title, "skipped": "needs text rows"}
        else:
            checks[c.name] = {"title": c.title, "metrics": {"m": 0.5}, "flagged": 1}
    return {"usable_rows": 10, "unusable_rows": 0, "checks": checks, **({"task": task} if task != "multiclass" else {})}


@pytest.mark.parametrize("task", [None, "regression"])
def test_checks_of_another_task_are_hidden_and_those_wanting_input_named_on_one_line(task):
    from rich.console import Console

    from labelkit.checks import get_checks
    from labelkit.console import checks_table

    summary = checks_summary_of(task)
    table, line = checks_table(summary)
    titles = {c.name: c.title for c in get_checks()}
    assert line == (f"Could run with more input: {titles['text_properties']} (with text rows); "
                    f"{titles['split_leakage']} (with a split per row).")
    shown = Console(width=300, record=True)
    shown.print(table)
    text = shown.export_text()
    assert "skipped" not in text and "not for" not in text
    for name, c in summary["checks"].items():
        assert (c["title"] in text) == ("skipped" not in c), name
    table, line = checks_table(summary, verbose=True)  # --verbose: every check, with its reason
    shown.print(table)
    text = shown.export_text()
    assert line is None and all(c["title"] in text for c in summary["checks"].values())
    assert text.count(f"skipped: not for {task or 'multiclass'} data") == sum(
        c.get("skipped", "").startswith("not for") for c in summary["checks"].values())


def test_issues_console_is_short_by_default_complete_under_verbose_and_json(cli, vector_ws, monkeypatch):
    from labelkit import console

    monkeypatch.setattr(console.out, "width", 400)  # long candidate names stay on one table row
    code, out, err = cli("issues", "-w", vector_ws, "--json")
    assert code == 0, err
    import json

    summary = json.loads(out)["summary"]
    probe, checks = summary["probe"], summary["checks"]
    ranked = sorted(probe["candidates"], key=lambda k: probe["candidates"][k]["log_loss"])
    runner_up = next(k for k in ranked if k != probe["chosen"])
    others = [k for k in ranked if k not in (probe["chosen"], runner_up)]
    assert len(others) > 5  # the wall this replaces
    other_task = [c["title"] for c in checks.values() if c.get("skipped", "").startswith("not for")]
    wanting = [c["title"] for c in checks.values() if c.get("skipped", "").startswith("needs")]
    assert other_task and wanting

    code, out, err = cli("issues", "-w", vector_ws)
    assert code == 0, err
    text = one_line(out)
    probe_text = text.split("Probe: ")[1].split(" Issues ")[0]
    assert f"{probe['chosen']}," in probe_text and f"runner-up {runner_up}:" in probe_text
    assert not any(f"{k}:" in probe_text or f"{k} " in probe_text for k in others)
    assert "skipped" not in text and not any(t in text for t in other_task)
    wanting_line = text.split("Could run with more input: ")[1].split(" Most likely")[0].split(" →")[0]
    assert all(t in wanting_line for t in wanting) and text.count("Could run with more input") == 1

    code, out, err = cli("issues", "-w", vector_ws, "--verbose")
    assert code == 0, err
    text = one_line(out)
    assert "Probe candidates" in text and all(k in text for k in others)
    assert all(t in text for t in other_task + wanting) and "Could run with more input" not in text


def test_verbose_is_an_option_of_issues_and_audit_only_where_it_changes_output(cli, tmp_path):
    code, _, err = cli("issues", "-w", tmp_path / "nope", "--verbose")
    assert code == 2 and one_line(err).startswith(f"error: No labelkit workspace at {tmp_path / 'nope'}")
    code, _, err = cli("report", "-w", tmp_path / "nope", "--verbose")
    assert code == 2 and "No such option: --verbose" in err
