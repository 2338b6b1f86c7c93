"""The CI gate: threshold rules over the issues summary, from the CLI or the project's config.

Rules read ``metric OP number``, e.g. ``label_issue_rate>0.05`` or ``class_min_count<20``; the
gate fails when any rule holds. Config: ``[tool.labelkit.gate] fail_on = [...]`` in the nearest
``pyproject.toml``, or ``[gate] fail_on = [...]`` in a ``labelkit.toml``.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from labelkit.errors import LabelkitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # tomllib is 3.11+; tomli is the same parser, packaged for 3.10
    import tomli as tomllib

DEFAULT_RULES = ("label_issue_rate>0.03",)
class _GateMetrics(Mapping):
    """Every metric a gate rule may name: the dataset's own, plus each registered check's.

    Read from the check registry (:mod:`labelkit.checks`) when first used, so a new check's
    metrics are gate-able without editing this file.
    """

    DATASET = {"unusable_rows": "rows that could not be read or have no label",
               "usable_rows": "rows every check looked at", "rows": "rows in the source"}

    def _all(self) -> dict[str, str]:
        from labelkit.checks import all_metrics

        return self.DATASET | all_metrics()

    def __getitem__(self, key: str) -> str:
        return self._all()[key]

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


METRICS = _GateMetrics()
OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt}
RULE_RE = re.compile(r"^\s*([a-z][a-z0-9_]*(?:\.delta)?)\s*(>=|<=|==|!=|>|<)\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Rule:
    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"


def parse_rules(spec: str | list[str] | tuple[str, ...], *, metrics: dict[str, str] = METRICS) -> list[Rule]:
    """Return the rules in `spec` (comma-separated string or list), or raise a user error."""
    parts = [p for s in ([spec] if isinstance(spec, str) else spec) for p in str(s).split(",") if p.strip()]
    rules = []
    for part in parts:
        m = RULE_RE.match(part)
        if not m:
            raise LabelkitError(f"Cannot parse rule {part.strip()!r}; expected METRIC OP NUMBER, "
                                "e.g. label_issue_rate>0.05 or accuracy<0.9.")
        metric, op, value = m.groups()
        if not _known_metric(metric, metrics):
            from labelkit.baseline import DELTA, METRICS as CHANGE_METRICS

            import difflib

            known = list(metrics) + (list(CHANGE_METRICS) if metrics is METRICS else [])
            close = difflib.get_close_matches(metric.removesuffix(DELTA), known, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
            where = ("every check's metrics are listed in docs/checks.md (python -m labelkit.checks); with "
                     "--baseline also METRIC.delta and " + ", ".join(CHANGE_METRICS)) if metrics is METRICS else \
                "known: " + ", ".join(metrics)
            raise LabelkitError(f"Unknown metric {metric!r} in {part.strip()!r}; {hint}{where}.")
        rules.append(Rule(metric, op, float(value)))
    return rules


def _known_metric(metric: str, metrics: dict[str, str]) -> bool:
    """Return whether `metric` names a metric; the audit's also take changes since a baseline."""
    if metric in metrics:
        return True
    if metrics is not METRICS:  # e.g. `train --check`: no baseline to compare against
        return False
    from labelkit.baseline import DELTA, METRICS as CHANGE_METRICS  # numpy/pyarrow only when needed

    return metric in CHANGE_METRICS or (metric.endswith(DELTA) and metric[: -len(DELTA)] in metrics)


def needs_baseline(rule: Rule) -> bool:
    """Return whether `rule` names a change since a baseline (``new_label_issues``, ``METRIC.delta``, ...)."""
    from labelkit.baseline import DELTA, METRICS as CHANGE_METRICS

    return rule.metric in CHANGE_METRICS or rule.metric.endswith(DELTA)


def check_baseline_rules(rules: list[Rule], source: str, *, has_baseline: bool) -> None:
    """Raise a user error when a rule on a change metric has no baseline to compare against.

    Without a baseline such a rule could only ever read "not measured": failing the gate after the
    whole audit ran would hide a forgotten ``--baseline`` behind a gate failure.
    """
    if has_baseline:
        return
    wanting = [str(r) for r in rules if needs_baseline(r)]
    if wanting:
        where = "on the command line" if source == "command line" else f"in {source}"
        raise LabelkitError(f"The gate rule(s) {', '.join(map(repr, wanting))} {where} measure changes since a "
                            "baseline; pass --baseline with an earlier workspace or its report.json, or drop them.")


def find_config(start: Path | str = ".", *, section: str = "gate") -> tuple[list[str], Path] | None:
    """Return (fail_on rules, file) from the nearest labelkit.toml or pyproject.toml with that section."""
    here = Path(start).resolve()
    for folder in [here, *here.parents]:
        for name, keys in (("labelkit.toml", (section,)), ("pyproject.toml", ("tool", "labelkit", section))):
            path = folder / name
            if not path.is_file():
                continue
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                raise LabelkitError(f"{path} is not valid TOML: {exc}.") from None
            for key in keys:
                data = data.get(key, {}) if isinstance(data, dict) else {}
            if isinstance(data, dict) and "fail_on" in data:
                rules = data["fail_on"]
                if not isinstance(rules, (list, str)):
                    raise LabelkitError(f"{path}: fail_on must be a list of rules like \"label_issue_rate>0.05\".")
                return ([rules] if isinstance(rules, str) else list(rules)), path
    return None


def resolve_rules(cli_rules: list[str] | None, *, config_start: Path | str = ".", section: str = "gate",
                  metrics: dict[str, str] = METRICS,
                  default: tuple[str, ...] = DEFAULT_RULES) -> tuple[list[Rule], str]:
    """Return (rules, where they came from): the CLI's, else the config's, else the default."""
    if cli_rules:
        return parse_rules(cli_rules, metrics=metrics), "command line"
    found = find_config(config_start, section=section)
    if found is not None:
        return parse_rules(found[0], metrics=metrics), str(found[1])
    return parse_rules(list(default), metrics=metrics), "default"


def resolve_check_rules(check: bool, fail_on: list[str] | None, *, config_start: Path | str = ".",
                        metrics: dict[str, str], example: str, section: str = "train"
                        ) -> tuple[list[Rule] | None, str | None]:
    """Return (rules, where they came from) for a verb's ``--check``/``--fail-on``; (None, None) without either.

    There is no default: a check without rules on the command line or in the config is a user
    error, whose message suggests ``--fail-on`` `example` (e.g. ``'accuracy<0.9'``).
    """
    if not (check or fail_on):
        return None, None
    rules, source = resolve_rules(fail_on, config_start=config_start, section=section, metrics=metrics, default=())
    if not rules:
        raise LabelkitError(f"--check needs thresholds: pass --fail-on {example!r} or set "
                            f"[tool.labelkit.{section}] fail_on = [...] in pyproject.toml.")
    return rules, source


def evaluate(rules: list[Rule], summary: dict) -> dict:
    """Return the verdict: {'passed': bool, 'results': [{rule, metric, value, failed, verdict}]}.

    A rule whose metric the summary lacks, or holds as None or NaN (e.g. ``outliers`` without
    embeddings), fails with verdict ``"not measured"``: a gate must not pass on a number that was
    never computed. Otherwise the verdict is ``"fail"`` when the rule holds, else ``"pass"``.
    """
    results = []
    for rule in rules:
        value = summary.get(rule.metric)
        measured = value is not None and value == value  # NaN, of any float type, is unequal to itself
        failed = not measured or bool(OPS[rule.op](value, rule.threshold))
        results.append({"rule": str(rule), "metric": rule.metric, "value": value if measured else None,
                        "failed": failed, "not_measured": not measured,
                        "verdict": "not measured" if not measured else ("fail" if failed else "pass")})
    return {"passed": not any(r["failed"] for r in results), "results": results}
