"""Data checks: one module per check, one shape (:class:`Check`), one registry.

Every module in this package is imported here, and each registers its check with
:func:`register`; adding a check is adding a module. ``python -m labelkit.checks`` prints the
table of checks that ``docs/checks.md`` holds.
"""

from __future__ import annotations

import importlib
import pkgutil

from labelkit.checks.base import (NEEDS, REGISTRY, Check, CheckContext, CheckResult, all_metrics,  # noqa: F401
                                  default_issue_columns, get_checks, register)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in ("base", "__main__") and not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")


def markdown_table() -> str:
    """Return docs/checks.md: every registered check with its needs, metrics and columns."""
    lines = ["# Checks", "",
             "Generated from the registry in `labelkit/checks/` by `python -m labelkit.checks`; do not edit by hand.",
             "Every metric can be used in a gate rule (`--fail-on \"METRIC>VALUE\"`).", ""]
    for check in get_checks():
        lines += [f"## {check.title} (`{check.name}`)", "", check.description, ""]
        lines.append("Needs: " + (", ".join(NEEDS[n] for n in check.needs) if check.needs else "nothing beyond the items")
                     + ". Tasks: " + (", ".join(check.tasks) if check.tasks is not None else "every task type") + ".")
        if check.params:
            lines.append("Parameters: " + "; ".join(f"`{k}` ({v})" for k, v in check.params.items()) + ".")
        if check.prunable:
            lines.append(f"`select prune` can drop the rows it flags (`{check.flag}`).")
        lines.append("")
        if check.metrics:
            lines += ["| metric | meaning |", "|---|---|"] + [f"| `{m}` | {d} |" for m, d in check.metrics.items()] + [""]
        if check.columns:
            lines += ["| column in issues.parquet | meaning |", "|---|---|"]
            lines += [f"| `{c}` | {d} |" for c, d in check.columns.items()] + [""]
    return "\n".join(lines).rstrip() + "\n"
