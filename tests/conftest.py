"""Shared fixtures: a CLI runner, a tiny random-init open_clip model, prepared sample workspaces."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
TINY_CLIP_CONFIG = Path(__file__).parent / "LK-Tiny.json"
ARTIFACTS = ROOT / "artifacts"


def register_tiny_clip() -> str:
    """Register the tiny test config with open_clip (a few layers, width 64) and return its name."""
    import open_clip

    open_clip.add_model_config(TINY_CLIP_CONFIG)
    return TINY_CLIP_CONFIG.stem


@pytest.fixture(scope="session")
def tiny_clip() -> str:
    return register_tiny_clip()


@pytest.fixture
def cli(capsys):
    """Run `labelkit ARGS` in-process; return (exit code, stdout, stderr)."""
    from labelkit.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def one_line(text: str) -> str:
    """Return rich output with its line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture(scope="session")
def digits_ws(tmp_path_factory) -> Path:
    """A workspace with sample digits ingested, pixel-embedded and checked for issues (built once)."""
    from labelkit.embed import embed
    from labelkit.ingest import ingest
    from labelkit.issues import issues

    ws = tmp_path_factory.mktemp("digits") / "ws"
    ingest(SAMPLE / "digits", ws)
    embed(ws, model="pixels")
    issues(ws)
    return ws


@pytest.fixture
def digits_copy(digits_ws, tmp_path) -> Path:
    """A private copy of the prepared digits workspace, free to modify."""
    dst = tmp_path / "ws"
    shutil.copytree(digits_ws, dst)
    return dst


@pytest.fixture(scope="session")
def text_ws(tmp_path_factory) -> Path:
    """A workspace with the sample text CSV ingested, MiniLM-embedded and checked for issues."""
    from labelkit.embed import embed
    from labelkit.ingest import ingest
    from labelkit.issues import issues

    ws = tmp_path_factory.mktemp("text") / "ws"
    ingest(SAMPLE / "text" / "reviews.csv", ws)
    embed(ws)
    issues(ws)
    return ws


@pytest.fixture(scope="session")
def audited(tmp_path_factory):
    """One audit of the sample digits through the CLI (pixels: no CLIP weights offline)."""
    from labelkit.cli import main
    import contextlib, io

    ws = tmp_path_factory.mktemp("audit") / "ws"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["audit", str(SAMPLE / "digits"), "-w", str(ws), "--json"])
    return code, buf.getvalue(), ws
