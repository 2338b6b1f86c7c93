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
