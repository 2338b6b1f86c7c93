import json
import os
import re
import shutil

import pytest

from conftest import ARTIFACTS, SAMPLE
from labelkit.ingest import ingest
from labelkit.report import report


def test_report_is_self_contained_and_matches_json(digits_copy):
    result = report(digits_copy)
    html = result.html_path.read_text()
    data = json.loads(result.json_path.read_text())
    assert result.bytes < 5_000_000
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", html)  # no network requests
    assert "<script" not in html.lower()
    for section in ("facts", "check-label_issues", "noise-matrix", "embedding-map", "per-class", "check-duplicates",
                    "check-outliers", "statistics", "variables", "provenance"):
        assert f'id="{section}"' in html, section
    assert data["rows"] == 1797 and data["issues"]["label_issues"] > 0
    assert f"{100 * data['issues']['label_issue_rate']:.1f}%" in html
    # The gallery starts with the lowest label quality, and most of what it shows are planted flips.
    planted = set(l.split(",")[0] for l in (SAMPLE / "digits" / "flipped.csv").read_text().splitlines()[1:])
    shown = data["label_issue_ids_shown"]
    assert sum(i in planted for i in shown[:20]) >= 15


def test_data_strings_are_escaped(tmp_path):
    from labelkit.embed import embed
    from labelkit.issues import issues

    evil = "<script>alert(1)</script>"
    rows = ["id,text,label"]
    for i in range(60):
        label = evil if i % 2 else "plain & simple"
        text = f"<img src=x onerror=alert({i})> sample {i} " + ("alpha beta" if i % 2 else "gamma delta")
        rows.append(f'{i},"{text}",{label}')
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    ingest(tmp_path / "t.csv", tmp_path / "ws")
    embed(tmp_path / "ws")
    issues(tmp_path / "ws")
    html = report(tmp_path / "ws").html_path.read_text()
    assert evil not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Return the browser's path; set up before `audited` (same scope, listed first), so a missing
    browser ends the test at once."""
    path = _chromium()
    if path is None:
        # CI sets LABELKIT_REQUIRE_BROWSER=1: there a missing browser is a failure, not a quiet skip.
        if os.environ.get("LABELKIT_REQUIRE_BROWSER") == "1":
            pytest.fail("LABELKIT_REQUIRE_BROWSER=1 but Chromium is not installed (.ci/run installs Debian's "
                        "chromium package)")
        pytest.skip("Chromium is not installed here (.ci/run installs Debian's chromium package)")
    return path


def test_report_renders_in_headless_chromium(chromium, audited, tmp_path):
    """Renders the report in a real browser, checks sections are visible and the console is clean."""
    from playwright.sync_api import sync_playwright

    _, _, ws = audited
    shutil.copytree(ws, tmp_path / "ws")
    html = report(tmp_path / "ws").html_path
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        requests = []
        page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        page.goto(html.resolve().as_uri())
        for section in ("#facts", "#check-label_issues", "#noise-matrix svg", "#embedding-map img", "#verdict"):
            assert page.locator(section).first.is_visible(), section
        assert page.locator("#verdict").inner_text() == "FAIL"
        assert page.locator("#check-label_issues .card").count() == 36
        assert page.evaluate("document.querySelector('#embedding-map img').naturalWidth") > 100
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert errors == [] and requests == []


def test_embedding_map_gives_flagged_rows_at_most_half_of_its_points(digits_copy):
    """A small map of a heavily flagged set: half flagged (a random part of them), half the other rows."""
    from labelkit.report import build_report_data
    from labelkit.workspace import Workspace

    data, extra = build_report_data(Workspace(digits_copy), max_map_points=60)
    flagged = data["issues"]["label_issues"]
    assert flagged > 30 and data["embedding_map"]["points"] == 60
    note = next(n for n in extra["notes"] if n.startswith("The embedding map shows"))
    assert note == (f"The embedding map shows 60 of 1,797 rows (a random 30 of the {flagged:,} flagged rows, "
                    "plus a random sample of the rest).")
    data, extra = build_report_data(Workspace(digits_copy), max_map_points=2 * flagged + 10)
    note = next(n for n in extra["notes"] if n.startswith("The embedding map shows"))
    assert "(every flagged row, plus a random sample of the rest)" in note
