"""The shape every data check has, and the registry that lists them.

A check is one class in one module of :mod:`labelkit.checks`, registered with :func:`register`.
It declares what it needs (``probs``, ``embeddings``, ``neighbors``, ``image``, ``text``,
``split``), the per-row columns it adds to ``issues.parquet``, the summary metrics the gate may
test, and a :meth:`Check.run` that reads the shared inputs from a :class:`CheckContext` and
returns a :class:`CheckResult`. ``issues`` computes the shared inputs once (out-of-sample
probabilities, confident learning, the neighbour graph) and runs every check whose needs are
met; the report, the gate's metric list, ``docs/checks.md`` and ``--help`` read this registry.

After cleanlab Datalab's issue managers (``cleanlab/datalab/internal/issue_manager``): one
class per issue type, a per-row frame and a summary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

NEEDS = {
    "probs": "out-of-sample predicted probabilities (the probe's, or --pred-probs)",
    "embeddings": "an embedding per row (labelkit embed, or --embedding-col)",
    "neighbors": "each row's nearest rows in embedding space",
    "image": "image rows (an image folder or an image column)",
    "text": "text rows",
    "split": "a split per row (train/val/test folders or a split column)",
}


@dataclass
class CheckContext:
    """The shared inputs of one `issues` run, over its usable rows (row i of every array is row i).

    Arrays that a run could not compute are None (no embeddings → no neighbours). Checks read
    from it and never write to it. Task inputs are named fields, filled by the task type's
    :meth:`labelkit.tasks.base.TaskType.check_inputs`: a check declares in ``tasks`` which task
    types it runs on and reads only the fields those fill.
    """

    ids: Any  # pyarrow string array of the usable rows' ids
    labels: np.ndarray  # int64 per row: the class index (multi-label: the tag set's id; regression: unused)
    classes: list[str]  # the names of `labels` (multi-label: each tag set's display label)
    task: str = "multiclass"
    modality: str = "image"
    items: Any = None  # pyarrow Table of the usable rows (every items.parquet column)
    embeddings: np.ndarray | None = None  # (n, d) float32 as stored: labelkit's embedders write unit rows, user vectors may not be
    embedding_key: str | None = None
    pred_probs: np.ndarray | None = None  # (n, K) out of sample (multi-label: per-tag probabilities)
    folds: np.ndarray | None = None
    label_issues: dict | None = None  # the task finder's verdicts (multiclass: labelkit.issues.find_label_issues, expanded to all rows)
    neighbor_idx: np.ndarray | None = None  # (n, k) most similar first, -1 where missing (search_neighbors); self excluded
    neighbor_sims: np.ndarray | None = None  # (n, k) cosine similarity
    options: dict = field(default_factory=dict)  # the run's options: dup_threshold, seed, n_folds, …
    seed: int = 0
    probe_info: dict | None = None  # the probe's choice record (None: the user's predictions)
    exact_duplicates: tuple | None = None  # labelkit.checks.duplicates.find_duplicates of the content hashes, precomputed
    tags: list[str] | None = None  # multi-label: the tags (columns of tag_labels and pred_probs)
    tag_labels: np.ndarray | None = None  # multi-label: (n, K) bool, the given tags
    annotators: list[str] | None = None  # multi-annotator: the annotators (columns of annotator_labels)
    annotator_labels: np.ndarray | None = None  # multi-annotator: (n, M) float32 class index, NaN = not labelled
    targets: np.ndarray | None = None  # regression: float64 target per row
    predictions: np.ndarray | None = None  # regression: float64 out-of-sample prediction per row

    @property
    def n(self) -> int:
        return len(self.labels)

    def column(self, name: str) -> np.ndarray | None:
        """Return an items column as numpy (objects for strings), or None when items lack it."""
        if self.items is None or name not in self.items.column_names:
            return None
        return self.items.column(name).to_numpy(zero_copy_only=False)

    def arrow_column(self, name: str):
        """Return an items column as Arrow (no Python objects: for Arrow compute), or None when absent."""
        if self.items is None or name not in self.items.column_names:
            return None
        return self.items.column(name)

    def has(self, need: str) -> bool:
        """Return whether the shared input `need` (a key of :data:`NEEDS`) is available."""
        if need == "probs":
            return self.pred_probs is not None
        if need == "embeddings":
            return self.embeddings is not None
        if need == "neighbors":
            return self.neighbor_idx is not None
        if need in ("image", "text"):
            return self.modality == need
        if need == "split":
            import pyarrow.compute as pc

            split = self.arrow_column("split")
            if split is None or split.type == "null":  # a column of nulls only (no kernel for the null type)
                return False
            return pc.count_distinct(split, mode="only_valid").as_py() >= 2
        raise KeyError(need)


@dataclass
class CheckResult:
    """What one check found.

    columns : per-row arrays (length n), named as the check's :attr:`Check.columns` declare.
    metrics : the numbers the gate may test (None = not measured), named as :attr:`Check.metrics`.
    reasons : row position → one line of evidence, for flagged rows only.
    details : JSON-able extras kept in the summary under the check's name (e.g. per-property scores).
    tables : report tables, each ``{"title", "columns": [...], "rows": [[...], ...]}``.
    warnings : messages for the user (printed by the CLI, kept in the manifest).
    seconds : wall time of the check's :meth:`Check.run`, set by :func:`run_checks`.
    """

    columns: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    tables: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Check:
    """Base class of a data check; subclasses set the class attributes and implement :meth:`run`."""

    name: ClassVar[str]  # snake_case, unique
    title: ClassVar[str]  # shown in the report
    description: ClassVar[str]  # one sentence: what a flag means
    needs: ClassVar[tuple[str, ...]] = ()
    tasks: ClassVar[tuple[str, ...] | None] = None  # the task types the check applies to; None: every one
    metrics: ClassVar[dict[str, str]] = {}  # gate metric → description
    columns: ClassVar[dict[str, str]] = {}  # issues.parquet column → description
    flag: ClassVar[str | None] = None  # the bool column that marks a flagged row
    score: ClassVar[str | None] = None  # the column flagged rows are ranked by in the report
    score_ascending: ClassVar[bool] = True  # True: lower score = worse (cleanlab's convention)
    pair: ClassVar[str | None] = None  # a column holding the id of a related row (shown beside it)
    order: ClassVar[int] = 100  # run and show order
    # Columns issues.parquet always has, with this value (per type) when the check did not run:
    # column -> "false" (bool False), "nan" (float32 NaN), "null_float" (float32 null), "null_string".
    default_columns: ClassVar[dict[str, str]] = {}
    prunable: ClassVar[bool] = False  # whether `select prune` drops the rows of `flag` (--drop NAME)
    baseline_title: ClassVar[str | None] = None  # how `audit --baseline` names the check's change (None: `title`)
    params: ClassVar[dict[str, str]] = {}  # the run's options the check reads from ``ctx.options`` -> meaning

    def applies(self, ctx: CheckContext) -> str | None:
        """Return None when the check can run on `ctx`, else why not (a short phrase)."""
        if self.tasks is not None and ctx.task not in self.tasks:
            return f"not for {ctx.task} data"
        for need in self.needs:
            if not ctx.has(need):
                return f"needs {NEEDS[need].split(' (')[0]}"
        return None

    def run(self, ctx: CheckContext) -> CheckResult:  # pragma: no cover - abstract
        raise NotImplementedError


REGISTRY: dict[str, Check] = {}


def register(cls: type[Check]) -> type[Check]:
    """Class decorator: add an instance of `cls` to :data:`REGISTRY` (its name must be new)."""
    if cls.name in REGISTRY:
        raise ValueError(f"A check named {cls.name!r} is already registered.")
    for metric in cls.metrics:
        for other in REGISTRY.values():
            if metric in other.metrics:
                raise ValueError(f"Metric {metric!r} of {cls.name!r} is already declared by {other.name!r}.")
    REGISTRY[cls.name] = cls()
    return cls


def get_checks(names=None) -> list[Check]:
    """Return the registered checks in run order (only `names`, when given; unknown names raise)."""
    from labelkit.errors import LabelkitError

    _load()
    if names is not None:
        unknown = [n for n in names if n not in REGISTRY]
        if unknown:
            raise LabelkitError(f"Unknown check {unknown[0]!r}; known: {', '.join(sorted(REGISTRY))}.")
    chosen = REGISTRY.values() if names is None else [REGISTRY[n] for n in names]
    return sorted(chosen, key=lambda c: (c.order, c.name))


def all_metrics() -> dict[str, str]:
    """Return every registered check's gate metrics: name → description."""
    return {m: d for c in get_checks() for m, d in c.metrics.items()}


def run_checks(ctx: CheckContext, names=None) -> tuple[dict[str, CheckResult], dict[str, str]]:
    """Run every applicable check (or only `names`) in order; return (results, {skipped name: why}).

    A check named in `names` that cannot run is reported as skipped.
    """
    results: dict[str, CheckResult] = {}
    skipped: dict[str, str] = {}
    for check in get_checks(names):
        why = check.applies(ctx)
        if why is not None:
            skipped[check.name] = why
            continue
        started = time.perf_counter()
        result = check.run(ctx)
        result.seconds = round(time.perf_counter() - started, 3)
        unknown = set(result.columns) - set(check.columns)
        if unknown:
            raise RuntimeError(f"Check {check.name!r} returned undeclared columns {sorted(unknown)}.")
        results[check.name] = result
    return results, skipped


# How a declared default column (Check.default_columns) is filled for n rows when its check did not run.
EMPTY_COLUMNS = {"false": lambda n: np.zeros(n, bool), "nan": lambda n: np.full(n, np.nan, np.float32),
                 "null_float": lambda n: pa.nulls(n, pa.float32()), "null_string": lambda n: pa.nulls(n, pa.string())}


def default_issue_columns(n: int, task: str) -> dict:
    """Return the issues-table columns every reader may rely on for a `task` run, empty for `n` rows.

    Each check that applies to `task` declares them (:attr:`Check.default_columns`); a check that
    runs replaces them with its own values.
    """
    out: dict = {}
    for check in get_checks():
        if check.tasks is None or task in check.tasks:
            for column, kind in check.default_columns.items():
                out.setdefault(column, EMPTY_COLUMNS[kind](n))
    return out


def merged_reasons(n: int, results: dict[str, CheckResult]) -> list[str | None]:
    """Return one ``reason`` per row: the flagging checks' reasons joined by "; " (None if unflagged)."""
    out: list[str | None] = [None] * n
    for result in results.values():
        for row, text in result.reasons.items():
            out[row] = text if out[row] is None else f"{out[row]}; {text}"
    return out


def checks_summary(results: dict[str, CheckResult], skipped: dict[str, str]) -> dict:
    """Return the JSON-able record of a run under ``summary['checks']`` (what report and gate read)."""
    out = {}
    for check in get_checks():
        if check.name in results:
            r = results[check.name]
            flags = r.columns.get(check.flag) if check.flag else None
            out[check.name] = {"title": check.title, "metrics": r.metrics, "details": r.details, "tables": r.tables,
                               "flagged": int(np.asarray(flags, bool).sum()) if flags is not None else None,
                               "warnings": r.warnings, "seconds": r.seconds}
        elif check.name in skipped:
            out[check.name] = {"title": check.title, "skipped": skipped[check.name]}
    return out


def _load() -> None:
    import labelkit.checks  # noqa: F401  (imports every check module, which registers it)
