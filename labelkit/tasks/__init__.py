"""Task types: multiclass, multi-label, several annotators per item, regression — one plug-in each.

Every task type is a :class:`labelkit.tasks.base.TaskType` in its own module, listed in the one
registry (:data:`labelkit.tasks.base.MODULES`); the verbs call its hooks (docs/tasks.md).
``ingest`` reads every table the same way; the task's ``prepare_table`` only turns the user's
label columns into what the shared path expects and adds its own columns.
"""

from __future__ import annotations

from labelkit.errors import LabelkitError
from labelkit.tasks.base import (TASK_LABEL_COL, IssuesOptions, ProbeInputs, ProbeOutput, Targets,  # noqa: F401
                                 TaskSpec, TaskType, check_task, get_task, register, task_names, task_of_manifest)


def task_module(task: str):
    """Return the registered task type `task` (its hooks are what callers used the module for)."""
    return get_task(task)


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
    """Return (df, TaskSpec) from the task type's :meth:`~labelkit.tasks.base.TaskType.prepare_table`."""
    return get_task(task).prepare_table(df, source, options=options)
