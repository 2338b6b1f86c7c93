"""Cheap guards: every command is documented, and the generated reference is current."""

import typer

from conftest import ROOT
from labelkit.cli import app


def test_every_command_is_in_the_readme_and_the_reference():
    readme = (ROOT / "README.md").read_text()
    reference = (ROOT / "docs" / "cli.md").read_text()
    for name in typer.main.get_command(app).commands:
        assert f"labelkit {name}" in readme, name
        assert f"## labelkit {name}" in reference, name


def test_reference_is_up_to_date():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_cli_md", ROOT / "docs" / "make_cli_md.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (ROOT / "docs" / "cli.md").read_text() == mod.render(), "run python docs/make_cli_md.py"


def test_readme_has_exactly_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up")[1].split("\n## ")[0]
    blocks = [b for b in setup.split("```bash\n")[1:]]
    assert [b.split("\n```")[0] for b in blocks] == [
        'pip install -e ".[dev]" && labelkit audit sample_data/digits',
        'pip install -e ".[dev]" && python -m pytest -q',
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[dev]"' in ci and "python3 -m pytest -q" in ci
