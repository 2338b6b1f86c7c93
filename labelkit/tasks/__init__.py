"""Task types beyond one label per item: multi-label, several annotators per item, regression.

``ingest`` reads every table the same way; a task module only turns the user's label columns
into what the shared path expects and adds its own columns. Contract of a task module
``labelkit/tasks/<task>.py``:

- ``prepare_table(df, source, *, options) -> (df, TaskSpec)``: called right after the table is
  loaded and before columns are detected. It may regroup rows (long-format annotations → one row
  per item) and must add a column named ``spec.label_col`` holding each row's display label
  (multi-label: the sorted labels joined by "; ", or "(no labels)"; multi-annotator: the
  consensus; regression: the number as text). ``spec.columns`` are extra items columns, one value
  per row of the returned df, appended to items.parquet; ``spec.errors`` marks rows unusable
  (None = fine); ``spec.classes`` replaces the classes found in the display labels (regression:
  []); ``spec.manifest`` is merged into the manifest (``task`` is always recorded).
- ``issues(ws, **options) -> labelkit.issues.IssuesResult``: the task's whole `issues` run
  (probe, cleanlab's task-specific finder, the shared checks through
  :func:`labelkit.checks.base.run_checks`), writing issues.parquet/probs.parquet with the
  workspace's fingerprints as the multiclass path does. ``labelkit.issues.issues`` calls it when
  the manifest's task is not ``multiclass``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from labelkit.errors import LabelkitError

TASKS = ("multiclass", "multilabel", "multiannotator", "regression")
TASK_LABEL_COL = "__labelkit_label__"  # the display-label column a task adds to the table


@dataclass
class TaskSpec:
    task: str
    label_col: str = TASK_LABEL_COL
    classes: list[str] | None = None
    columns: dict[str, Any] = field(default_factory=dict)  # name -> pyarrow Array (one per df row)
    errors: list[str | None] | None = None
    manifest: dict = field(default_factory=dict)


def check_task(task: str, func: str = "ingest") -> str:
    if task not in TASKS:
        raise LabelkitError(f"The 'task' parameter of {func} must be one of {', '.join(TASKS)}. Got {task!r} instead.")
    return task


def task_module(task: str):
    """Return the module that implements `task` (not for ``multiclass``, the built-in path)."""
    check_task(task)
    try:
        return importlib.import_module(f"labelkit.tasks.{task}")
    except ModuleNotFoundError as exc:
        if exc.name == f"labelkit.tasks.{task}":
            raise LabelkitError(f"Task {task!r} is not available in this version of labelkit.") from None
        raise


def infer_task(task: str | None, *, labels_col=None, annotator_cols=None, annotator_col=None) -> str:
    """Return the task the options ask for: explicit `task`, else implied by the label options."""
    implied = ("multilabel" if labels_col else "multiannotator" if (annotator_cols or annotator_col) else None)
    if task in (None, "auto"):
        return implied or "multiclass"
    check_task(task)
    if implied and implied != task:
        raise LabelkitError(f"--task {task} does not go with the {implied} options "
                            f"({'--labels-col' if labels_col else '--annotator-cols/--annotator-col'}).")
    return task


def prepare_table(df, source, *, task: str, options: dict):
    """Return (df, TaskSpec) from the task module's ``prepare_table``."""
    return task_module(task).prepare_table(df, source, options=options)


def task_of(manifest: dict) -> str:
    return manifest.get("task", "multiclass")
