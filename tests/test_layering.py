"""The layering of ARCHITECTURE.md, checked on the import statements of every module (``ast``).

Shared layers (the checks, probe, neighbors, features, splits, workspace, engines) import no verb
and no task module (the task modules implement verbs); no module below the CLI imports it.
Imports inside functions count as much as those at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "labelkit"
VERBS = ("ingest", "embed", "issues", "relabel", "selection", "train", "report", "audit", "cli", "explain", "baseline")
SHARED = sorted([*(PACKAGE / "checks").glob("*.py"), *(PACKAGE / "engines").glob("*.py"),
                 *(PACKAGE / name for name in ("probe.py", "neighbors.py", "features.py", "splits.py", "workspace.py"))])
VERB_MODULES = sorted([*(PACKAGE / f"{v}.py" for v in VERBS if (PACKAGE / f"{v}.py").exists()),
                       *(PACKAGE / "report").glob("*.py"), *(PACKAGE / "tasks").glob("*.py")])


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file, as absolute dotted names (``from a import b`` gives
    ``a`` and ``a.b``: b may be a submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def forbidden_for_shared(name: str) -> bool:
    return name == "labelkit.tasks" or name.startswith("labelkit.tasks.") or any(
        name == f"labelkit.{v}" or name.startswith(f"labelkit.{v}.") for v in VERBS)


def test_the_module_lists_are_not_empty():
    assert len(SHARED) > 10 and any(p.parent.name == "checks" for p in SHARED)
    assert any(p.name == "issues.py" for p in VERB_MODULES) and any(p.parent.name == "tasks" for p in VERB_MODULES)


@pytest.mark.parametrize("path", SHARED, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_shared_layers_import_no_verb_or_task_module(path):
    bad = sorted(name for name in imported_modules(path) if forbidden_for_shared(name))
    assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {', '.join(bad)}"


@pytest.mark.parametrize("path", VERB_MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_verb_imports_the_cli(path):
    bad = sorted(name for name in imported_modules(path) if name == "labelkit.cli" or name.startswith("labelkit.cli."))
    assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {', '.join(bad)}"


def test_the_import_parser_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "labelkit" / "checks"
    pkg.mkdir(parents=True)
    mod = pkg / "demo.py"
    mod.write_text("def f():\n    from labelkit.tasks.regression import x\n    from ..issues import y\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "labelkit"
    try:
        names = imported_modules(mod)
    finally:
        PACKAGE = saved
    assert "labelkit.tasks.regression" in names and "labelkit.issues" in names
    assert all(forbidden_for_shared(n) for n in ("labelkit.tasks.regression", "labelkit.issues", "labelkit.report"))
    assert not forbidden_for_shared("labelkit.workspace") and not forbidden_for_shared("labelkit.issuesx")
