"""The shape of a task type, and the one registry of task types.

A task type (multiclass, multi-label, multi-annotator, regression, …) is one module of
:mod:`labelkit.tasks` holding one :class:`TaskType` subclass registered with :func:`register`.
The verbs are written once, as skeletons over its hooks: ``ingest`` calls :meth:`prepare_table`,
``issues`` (:func:`labelkit.issues.issues`) calls :meth:`read_targets` →
:meth:`load_pred_probs` or :meth:`probe` → :meth:`fingerprint` → :meth:`probs_table` →
:meth:`find_issues` → :meth:`check_inputs` → the checks → :meth:`issues_columns` →
:meth:`summary`, and ``select``, ``train``, ``report`` and ``relabel`` call the hooks at the end
of the class. A hook a task does not support raises a one-line :class:`LabelkitError`.

Results travel as the dataclasses below (no dict handed from hook to hook to be filled in);
a finder's own result (e.g. :func:`labelkit.issues.find_label_issues`'s dict) is documented
by that finder. See docs/tasks.md for the guide to adding a task type.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import pyarrow as pa

from labelkit.errors import LabelkitError

TASK_LABEL_COL = "__labelkit_label__"  # the display-label column a task adds to the table at ingest
Progress = Callable[[int, "int | None"], None]


# ---------------------------------------------------------------------------------------------
# What the hooks exchange


@dataclass
class TaskSpec:
    """What :meth:`TaskType.prepare_table` adds to an ingest: see that hook."""

    task: str
    label_col: str = TASK_LABEL_COL
    classes: list[str] | None = None
    columns: dict[str, Any] = field(default_factory=dict)  # name -> pyarrow Array (one per df row)
    errors: list[str | None] | None = None
    manifest: dict = field(default_factory=dict)
    image_root: Any = None  # Path the table's image paths are relative to (read_source); None: the table's folder
    tables: dict[str, pa.Table] = field(default_factory=dict)  # extra workspace tables ingest writes (name -> table)


@dataclass(frozen=True)
class IssuesOptions:
    """The options of one ``issues`` run, validated before anything is read (see :func:`labelkit.issues.issues`)."""

    pred_probs: Any = None  # path of the user's predictions, or None: the probe predicts
    classes_file: Any = None
    n_folds: int = 5
    probe: str = "auto"
    filter_by: str = "prune_by_noise_rate"
    rank_by: str = "self_confidence"
    dup_threshold: float | None = None
    k_neighbors: int = 10
    embedding_key: str | None = None
    device: str = "auto"
    seed: int = 0
    engine: str = "local"
    ray_address: str | None = None
    checks: tuple[str, ...] | None = None  # None: every registered check whose needs are met
    pred_boxes: Any = None  # detection: the user's predicted boxes (--pred-boxes); other tasks refuse it


@dataclass
class Targets:
    """A task's targets for ``issues``, read from the workspace by :meth:`TaskType.read_targets`.

    ``usable`` marks the items rows that are judged; every other array has one entry per usable
    row. ``values`` is the task's own form (class index int64, multi-hot bool (n, K), float64
    target, …); ``check_labels``/``check_classes`` are what the shared checks compare as labels
    (an int64 id per row and the display name of each id: the class, the tag set, nothing for
    regression). ``annotator_labels``/``annotators`` are the multi-annotator inputs.
    """

    usable: np.ndarray
    values: np.ndarray
    classes: list[str]
    check_labels: np.ndarray
    check_classes: list[str]
    annotator_labels: np.ndarray | None = None  # (n, M) float32 class index, NaN = not labelled
    annotators: list[str] | None = None
    ingest_record: dict | None = None  # what ingest recorded about the targets (regression: the manifest's `target`)

    @property
    def n(self) -> int:
        return int(self.usable.sum())


@dataclass
class ProbeOutput:
    """Out-of-sample predictions of the usable rows (:meth:`TaskType.probe` or :meth:`TaskType.load_pred_probs`).

    ``predictions`` is (n, K) float32 probabilities, or (n,) float64 values for regression; None
    when they were not computed (``not_measured`` says why). ``folds`` is the fold whose model
    predicted each row (-1: held out or the user's). ``included`` marks the classes the probe
    judged (multiclass: classes with too few rows for the folds are left out).
    """

    predictions: np.ndarray | None
    folds: np.ndarray | None
    origin: str  # 'probe' or 'user'
    info: dict | None = None  # the probe's choice (its to_dict()), None for the user's predictions
    not_measured: str | None = None
    excluded: dict[str, int] = field(default_factory=dict)  # class left out of the probe -> its training rows
    included: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class ProbeInputs:
    """What the ``issues`` skeleton hands :meth:`TaskType.probe`: the shared parts of one run."""

    embeddings: np.ndarray
    held: np.ndarray  # True for the held-out rows fixed at ingest: never trained on
    options: IssuesOptions
    device: str
    neighbors: Any = None  # labelkit.neighbors.SharedNeighbors (one search for probe and checks), or None
    fold_map: Callable | None = None  # labelkit.engines.fold_mapper: where the k-fold models run
    progress: Progress | None = None
    wants_probs: bool = True  # False: no selected check needs the predictions (the probe is skipped)


# ---------------------------------------------------------------------------------------------
# The protocol


class TaskType:
    """Base class of a task type; a subclass sets the class attributes and implements the hooks it supports.

    ``issues`` hooks (called in this order by :func:`labelkit.issues.issues`) have defaults only
    where multiclass behaviour is right for any task; the verb hooks at the end raise
    "not supported" by default.
    """

    name: ClassVar[str]  # the value of ``--task`` and of the manifest's ``task``
    label_check: ClassVar[str | None] = None  # the check that names the task's label verdicts
    fingerprint_tag: ClassVar[str | None] = None  # None: `name` (multiclass keeps its historical "label")
    default_modality: ClassVar[str] = "text"  # the modality when the manifest records none
    relabel: ClassVar[bool] = False  # whether `relabel` proposes new labels for this task
    select_methods: ClassVar[tuple[str, ...]] = ("rs2", "dsir", "smote", "prune")  # what `select` may run
    report_sections: ClassVar[tuple[str, ...]] = ()  # shared report sections: "class_balance", "probe_agreement"
    uses_filter_by: ClassVar[bool] = True  # whether --filter-by / --rank-by mean something here
    finder_phase: ClassVar[str | None] = "confident_learning"  # the phase_seconds key of find_issues (None: untimed)
    issues_dictionary: ClassVar[Sequence[str] | bool] = ("given_label", "suggested_label")  # dictionary-encoded columns

    # --- ingest -------------------------------------------------------------------------------

    def prepare_table(self, df, source, *, options: dict) -> tuple[Any, TaskSpec]:
        """Return (df with a display-label column ``spec.label_col``, TaskSpec), before columns are detected.

        May regroup rows (long-format annotations → one row per item). ``spec.columns`` are extra
        items columns (one value per returned row), ``spec.errors`` marks rows unusable (None =
        fine), ``spec.classes`` replaces the classes found in the display labels (regression:
        []), ``spec.manifest`` is merged into the manifest.
        """
        raise LabelkitError(f"Task {self.name!r} has no ingest step.")

    def read_source(self, source, *, options: dict) -> tuple[Any, TaskSpec]:
        """Return (df, TaskSpec) for a source that is not a table (detection: COCO JSON, YOLO folders)."""
        raise LabelkitError(f"--task {self.name} needs a table (CSV, JSONL or Parquet); got {source}.")

    # --- issues -------------------------------------------------------------------------------

    def check_options(self, options: IssuesOptions) -> None:
        """Raise a user error for an ``issues`` option this task refuses (after the shared checks of options).

        The default refuses ``pred_boxes`` (a detection option); a subclass that overrides this calls it.
        """
        if options.pred_boxes is not None:
            raise LabelkitError(f"--pred-boxes is for --task detection; this workspace is {self.name}.")

    def read_targets(self, ws, manifest: dict, items: pa.Table) -> Targets:
        """Return the task's targets of the usable rows of `items` (every items.parquet column)."""
        raise NotImplementedError

    def load_pred_probs(self, path, *, ids: pa.Array, targets: Targets, held: np.ndarray,
                        options: IssuesOptions) -> ProbeOutput:
        """Return the user's predictions (``--pred-probs``) for the usable rows (origin 'user', folds -1).

        `ids` are every items row's ids (the file may hold one row per item or per usable item).
        """
        raise LabelkitError(f"--pred-probs is not supported for --task {self.name}.")

    def probe_neighbors(self, options: IssuesOptions, held: np.ndarray) -> int:
        """Return how many neighbours the probe will ask the shared search for (0: it searches none).

        The skeleton searches once at ``max(this, k_neighbors)`` before the probe when this is > 0.
        """
        return 0

    def probe(self, targets: Targets, inputs: ProbeInputs) -> ProbeOutput:
        """Return out-of-sample predictions of every usable row; held-out rows are never trained on."""
        raise NotImplementedError

    def fingerprint(self, options: IssuesOptions, out: ProbeOutput, heldout_fp: str) -> tuple:
        """Return the parts of the options fingerprint after (items fingerprint, tag, embedding key)."""
        return (out.origin, str(options.pred_probs) if options.pred_probs else None, options.n_folds, options.probe,
                options.filter_by, options.rank_by, options.dup_threshold, options.k_neighbors, options.seed,
                heldout_fp)

    def probs_table(self, ids: pa.Array, out: ProbeOutput, *, items_fp: str, options_fp: str,
                    heldout_fp: str) -> pa.Table | None:
        """Return the probs.parquet table (None: nothing to write); the skeleton writes it atomically."""
        from labelkit.workspace import build_probs_table

        if out.predictions is None:
            return None
        return build_probs_table(ids, out.predictions, out.folds, out.origin, items_fp=items_fp,
                                 options_fp=options_fp, heldout_fp=heldout_fp)

    def find_issues(self, targets: Targets, out: ProbeOutput, options: IssuesOptions,
                    progress: Progress | None) -> dict:
        """Return the task finder's verdicts (its documented dict: ``is_label_issue``, ``label_quality``, …)."""
        raise NotImplementedError

    def check_inputs(self, targets: Targets, out: ProbeOutput, found: dict) -> dict:
        """Return the task's fields of :class:`labelkit.checks.base.CheckContext` (keyword arguments)."""
        return {"pred_probs": out.predictions, "label_issues": found}

    def issues_columns(self, targets: Targets, found: dict) -> dict:
        """Return the issues.parquet columns that come before every check's (``given_label``, …)."""
        raise NotImplementedError

    def summary(self, targets: Targets, out: ProbeOutput, found: dict, *, n_rows: int) -> dict:
        """Return the task's part of the issues summary (rows, classes, label-issue counts, its own record)."""
        raise NotImplementedError

    def top_issues(self, ids: pa.Array, targets: Targets, found: dict, limit: int = 20) -> list[dict]:
        """Return the `limit` flagged rows of lowest label quality, worst first: id, given, suggested, quality."""
        raise NotImplementedError

    def write_outputs(self, ws, found: dict, *, items_fp: str, options_fp: str) -> None:
        """Write the task's own tables beside issues.parquet (multi-annotator: annotators.parquet)."""

    # --- select / train / report / relabel / explain (the verbs' hooks) -------------------------
    # select_methods, relabel, report_sections: ClassVars above; the skeletons live in
    # labelkit/selection.py, train.py, report/, relabel.py and explain.py.

    def prune_rows(self, ws, issues_df, keep: np.ndarray) -> PruneRows:
        """Return what ``select prune`` writes for the kept rows (`keep`: bool per issues.parquet row).

        Called after ``select prune`` decided `keep` from the flags it drops; the skeleton writes
        ``subsets/NAME.parquet`` (id, the returned labels, the shared subset columns, then
        :attr:`PruneRows.columns`) and the manifest record (class counts before and after).
        """
        raise LabelkitError(f"select prune is not supported for --task {self.name}.")

    def trainer(self, request):
        """Return the :class:`labelkit.heads.Trainer` of one ``train`` run (`request`: its :class:`~labelkit.heads.TrainRequest`).

        The trainer reads the task's targets, and gives the head's outputs, the loss, the
        validation score and the held-out metrics; it raises a user error for an option the task refuses.
        """
        raise LabelkitError(f"train is not supported for --task {self.name}.")

    def report_data(self, ws) -> tuple[dict, dict] | None:
        """Return (the task's numbers for report.json ``task_data``, {figure name: inline SVG}), or None: no section."""
        return None

    def explain_fields(self, ws, row_id: str, issue_row: dict | None, *, top_classes: int) -> dict:
        """Return the :class:`labelkit.explain.ExplainResult` fields of the row's predictions (probs.parquet is current).

        The default lists the `top_classes` most likely classes of ``pred_probs``.
        """
        from labelkit.tasks._classify import top_probabilities

        return {"probabilities": top_probabilities(ws, row_id, top_classes)}


@dataclass
class PruneRows:
    """What ``select prune`` writes for the kept rows (:meth:`TaskType.prune_rows`)."""

    label: pa.Array  # the subset's ``label`` column: each kept row's label as text
    before: dict  # class (or tag) -> rows, before pruning ({} for regression)
    after: dict
    columns: dict[str, pa.Array] = field(default_factory=dict)  # extra subset columns (multi-label: ``labels``)
    details: dict = field(default_factory=dict)  # extra fields of the manifest record


# ---------------------------------------------------------------------------------------------
# The registry

# Task name -> module that defines it; the module is imported (and registers its class) on first use,
# so `labelkit --help` imports no task code.
MODULES = {"multiclass": "labelkit.tasks.multiclass", "multilabel": "labelkit.tasks.multilabel",
           "multiannotator": "labelkit.tasks.multiannotator", "regression": "labelkit.tasks.regression",
           "detection": "labelkit.tasks.detection"}
REGISTRY: dict[str, TaskType] = {}


def register(cls: type[TaskType]) -> type[TaskType]:
    """Class decorator: add an instance of `cls` to :data:`REGISTRY` (its name must be new)."""
    if cls.name in REGISTRY and type(REGISTRY[cls.name]) is not cls:
        raise ValueError(f"A task type named {cls.name!r} is already registered.")
    REGISTRY[cls.name] = cls()
    return cls


def task_names() -> tuple[str, ...]:
    """Return the names of the task types this installation has (their modules exist)."""
    from importlib.util import find_spec

    return tuple(name for name, module in MODULES.items() if find_spec(module) is not None)


def check_task(task: str, func: str = "ingest") -> str:
    """Return `task` if it is a known task type, else raise the scikit-learn shaped user error."""
    names = task_names()
    if task not in names:
        raise LabelkitError(f"The 'task' parameter of {func} must be one of {', '.join(names)}. Got {task!r} instead.")
    return task


def get_task(task: str | None) -> TaskType:
    """Return the registered task type `task` (None: multiclass), importing its module on first use."""
    task = check_task(task or "multiclass", "labelkit")
    if task not in REGISTRY:
        importlib.import_module(MODULES[task])
    return REGISTRY[task]


def task_of_manifest(manifest: dict) -> TaskType:
    """Return the task type a workspace's manifest records (multiclass when it records none)."""
    return get_task(manifest.get("task") or "multiclass")
