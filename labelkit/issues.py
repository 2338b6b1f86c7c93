"""`labelkit issues`: label errors, duplicates, outliers and every other check — one pipeline for every task type.

:func:`issues` is the skeleton: validate the options → usable rows → embeddings → held-out rows
→ probe (out-of-sample predictions) → fingerprint → checks → atomic write → summary. What differs
between multiclass, multi-label, multi-annotator and regression data is in the task type's
hooks (:class:`labelkit.tasks.base.TaskType`, docs/tasks.md). Confident learning (Northcutt,
Jiang & Chuang, JAIR 2021) is only as good as the out-of-sample probabilities it is given;
:mod:`labelkit.probe` produces them. Neighbours (duplicates, outliers) come from
:mod:`labelkit.neighbors`, one search shared by the probe and the checks.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from labelkit.arrays import positions as _positions, string_array as _string_array  # noqa: F401  (old names)
from labelkit.checks.base import (CheckContext, checks_summary, default_issue_columns, get_checks, merged_reasons,
                                  run_checks)
from labelkit.checks.duplicates import find_duplicates  # noqa: F401  (public API)
from labelkit.errors import LabelkitError, check_in_range, parameter_error
from labelkit.features import near_duplicate_threshold  # noqa: F401  (public API)
from labelkit.neighbors import find_nearest_neighbors, get_outlier_scores, phase_progress  # noqa: F401  (public API)
from labelkit.neighbors import SharedNeighbors
from labelkit.predfile import load_pred_probs  # noqa: F401  (public API; moved there verbatim)
from labelkit.probe import ProbeChoice, get_out_of_sample_probs  # noqa: F401  (public API)
from labelkit.splits import heldout_mask
from labelkit.tasks.base import IssuesOptions, ProbeInputs, ProbeOutput, Targets, TaskType, task_of_manifest
from labelkit.tasks.confident import (BATCHED_FILTERS, CL_BATCH_BYTES, CL_MAX_BYTES, FILTER_BY, RANK_BY,  # noqa: F401
                                      _find_label_issues_batched, _label_issues_for_classes, _noise_matrix,
                                      find_label_issues, probe_classes)
from labelkit.tasks.multiclass import summarize  # noqa: F401  (public API)
from labelkit.workspace import Workspace, current_items_fingerprint, fingerprint, write_issues_table, write_table

Progress = Callable[[int, "int | None"], None]


def check_issues_options(*, filter_by: str, rank_by: str, dup_threshold: float, k_neighbors: int, n_folds: int,
                         probe: str, seed: int) -> None:
    """Raise the scikit-learn shaped user error for the first bad option of :func:`issues`.

    Called before anything is read or written, so a bad option leaves the workspace untouched.
    """
    from labelkit.probe import PROBES

    for name, value, allowed in (("filter_by", filter_by, FILTER_BY), ("rank_by", rank_by, RANK_BY),
                                 ("probe", probe, PROBES)):
        if value not in allowed:
            raise LabelkitError(f"The {name!r} parameter of issues must be one of {', '.join(allowed)}. "
                                f"Got {value!r} instead.")
    for name, value, low in (("k_neighbors", k_neighbors, 1), ("n_folds", n_folds, 2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise LabelkitError(f"The {name!r} parameter of issues must be an int in the range [{low}, inf). "
                                f"Got {value!r} instead.")
        check_in_range(value, name, "issues", low=low, kind="an int")
    if dup_threshold is not None and (  # None: the embedder's own default
            isinstance(dup_threshold, bool) or not isinstance(dup_threshold, (int, float, np.floating, np.integer))
            or not np.isfinite(dup_threshold)):
        raise LabelkitError(f"The 'dup_threshold' parameter of issues must be a number in the range [-1.0, 1.0]. "
                            f"Got {dup_threshold!r} instead.")
    if dup_threshold is not None:
        check_in_range(dup_threshold, "dup_threshold", "issues", low=-1.0, high=1.0)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise LabelkitError(f"The 'seed' parameter of issues must be an int. Got {seed!r} instead.")


class _Background:
    """Run `func(*args, **kwargs)` on a thread; `join()` waits, re-raises its exception or returns its value.

    On Linux the thread runs at the lowest CPU priority, so it yields the cores to the foreground
    (there a thread id is a valid target for setpriority, and only that thread changes).
    """

    def __init__(self, func, *args, **kwargs):
        import os
        import sys
        import threading

        self.error = self.value = None

        def run():
            try:
                if sys.platform == "linux":
                    with contextlib.suppress(OSError):
                        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
                self.value = func(*args, **kwargs)
            except BaseException as exc:  # re-raised in join()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self):
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value


class PendingProbs:
    """A context for the rest of an issues run: ``probs.parquet`` (`table`; None: nothing to write) is
    written on a background thread (Arrow's writer releases the GIL) under a hidden name beside it,
    and renamed over ``probs.parquet`` when the block ends normally; when it raises, the hidden file
    is removed. So a failed run leaves no new probabilities behind, and no ``issues.parquet`` that
    disagrees with them.
    """

    def __init__(self, ws, table: pa.Table | None):
        self.final = ws.probs_path
        self.pending = self.final.with_name(f".{self.final.name}.pending")
        self.writer = None if table is None else _Background(
            write_table, table, self.pending, row_group_size=65536, compression="none",
            use_dictionary=["id", "origin"], write_statistics=["id", "fold"])

    def __enter__(self) -> "PendingProbs":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.writer is None:
            return False
        if exc_type is None:
            self.writer.join()
            os.replace(self.pending, self.final)
        else:
            with contextlib.suppress(BaseException):
                self.writer.join()
            self.pending.unlink(missing_ok=True)
        return False


@dataclass
class IssuesResult:
    summary: dict
    top: list[dict]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"summary": self.summary, "top_label_issues": self.top}


def parse_checks(checks: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Return the check names of ``--checks`` ("a,b" or a list), None for every check; unknown names raise."""
    if checks is None:
        return None
    given = checks
    names = [c.strip() for part in ([checks] if isinstance(checks, str) else checks) for c in part.split(",")
             if c.strip()]
    if not names:  # e.g. --checks ",": running nothing and exiting 0 would read as a clean bill
        raise parameter_error("checks", "issues", "one or more check names, comma-separated", given)
    get_checks(names)  # unknown names fail before anything is read or written
    return tuple(names)


@dataclass
class _Run:
    """The shared inputs of one issues run, built in order by :func:`issues` (row i of each array is usable row i)."""

    ws: Workspace
    task: TaskType
    options: IssuesOptions
    manifest: dict
    items: pa.Table
    items_fp: str
    targets: Targets
    ids: pa.Array  # every items row's id
    usable_ids: pa.Array
    embeddings: np.ndarray | None
    device: str
    held: np.ndarray
    heldout_fp: str
    progress: Progress | None
    shared: SharedNeighbors | None = None
    phase_seconds: dict = field(default_factory=dict)
    probe_searched: bool = False  # the probe ran the shared search itself (its seconds move to the search)

    def usable(self, column):
        """Return `column` (one value per items row) at the usable rows."""
        return column if self.targets.usable.all() else column.filter(pa.array(self.targets.usable))


def issues(workspace: Workspace | Path | str = "labelkit-out", *, pred_probs: Path | str | None = None,
           classes_file: Path | str | None = None, n_folds: int = 5, probe: str = "auto",
           filter_by: str = "prune_by_noise_rate", rank_by: str = "self_confidence",
           dup_threshold: float | None = None, k_neighbors: int = 10, embedding_key: str | None = None,
           device: str = "auto", seed: int = 0, progress: Progress | None = None, engine: str = "local",
           ray_address: str | None = None, checks: Sequence[str] | None = None,
           pred_boxes: Path | str | None = None) -> IssuesResult:
    """Return the issues summary; writes probs.parquet, issues.parquet and the manifest summary.

    Out-of-sample predictions come from `pred_probs` (a file of the user's model outputs) or from
    the task type's k-fold probe on the workspace embeddings. Near-duplicates and outliers need
    embeddings and are skipped (None in the summary) without them. ``engine='ray'`` shards the
    neighbour search and runs the probe's final k-fold models as tasks on the cluster at
    `ray_address`; the probe's candidate selection and the label finder stay on the driver.
    `checks` names the checks to run (default: every registered check whose needs are met; see
    ``python -m labelkit.checks`` or docs/checks.md). `pred_boxes` is the user's predicted boxes
    (detection workspaces only). probs.parquet is replaced only when the whole run succeeds
    (:class:`PendingProbs`).
    """
    from labelkit.engines import check_engine

    check_engine(engine, "issues")
    check_issues_options(filter_by=filter_by, rank_by=rank_by, dup_threshold=dup_threshold, k_neighbors=k_neighbors,
                         n_folds=n_folds, probe=probe, seed=seed)
    options = IssuesOptions(pred_probs=pred_probs, classes_file=classes_file, n_folds=n_folds, probe=probe,
                            filter_by=filter_by, rank_by=rank_by, dup_threshold=dup_threshold, k_neighbors=k_neighbors,
                            embedding_key=embedding_key, device=device, seed=seed, engine=engine,
                            ray_address=ray_address, checks=parse_checks(checks), pred_boxes=pred_boxes)
    started = time.perf_counter()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    run = _open_run(ws, options, progress)
    out = _predict(run)
    tag = run.task.fingerprint_tag or run.task.name
    options_fp = fingerprint(run.items_fp, tag, run.options.embedding_key,
                             *run.task.fingerprint(run.options, out, run.heldout_fp))
    probs_table = run.task.probs_table(run.usable_ids, out, items_fp=run.items_fp, options_fp=options_fp,
                                       heldout_fp=run.heldout_fp)
    if probs_table is None and ws.probs_path.exists():
        ws.probs_path.unlink()  # an earlier run's predictions must not outlive the run that replaced them
    with PendingProbs(ws, probs_table):  # renamed over probs.parquet only once the run has succeeded
        found, results, skipped, neighbors_info = _judge(run, out)
        _write_issues(run, found, results, options_fp)
    summary = _summary(run, out, found, results, skipped, neighbors_info, options_fp)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    warnings = list(out.warnings) + [w for result in results.values() for w in result.warnings]
    ws.update_stage("issues", summary, warnings=warnings)
    return IssuesResult(summary=summary, top=run.task.top_issues(run.usable_ids, run.targets, found),
                        warnings=list(warnings))


def _open_run(ws: Workspace, options: IssuesOptions, progress: Progress | None) -> _Run:
    """Return the run's inputs up to the held-out rows: task, usable rows, embeddings, neighbour search."""
    from labelkit.features import load_embedding_inputs

    manifest = ws.read_manifest()
    task = task_of_manifest(manifest)
    task.check_options(options)
    items_fp = current_items_fingerprint(ws)
    # Kept in Arrow: a million ids never become Python strings.
    items = ws.read_items_table()  # every column: the checks read text, paths, splits and properties
    targets = task.read_targets(ws, manifest, items)
    ids = _string_array(items.column("id"))
    usable_ids = ids if targets.usable.all() else ids.filter(pa.array(targets.usable))
    emb, device = None, options.device
    if options.pred_probs is None or options.embedding_key or manifest.get("stages", {}).get("embed"):
        hashes = _string_array(items.column("content_hash"))
        hashes = hashes if targets.usable.all() else hashes.filter(pa.array(targets.usable))
        key, emb, dup_threshold, device = load_embedding_inputs(ws, manifest, usable_ids, hashes,
                                                                embedding_key=options.embedding_key,
                                                                dup_threshold=options.dup_threshold,
                                                                device=options.device)
        options = replace(options, embedding_key=key, dup_threshold=dup_threshold)
    # The probe never trains on the held-out rows fixed at ingest (labelkit.splits), so its
    # predictions can feed pruning, relabel votes and distillation without leaking them.
    held, held_record = heldout_mask(ws, usable_ids)
    run = _Run(ws=ws, task=task, options=options, manifest=manifest, items=items, items_fp=items_fp, targets=targets,
               ids=ids, usable_ids=usable_ids, embeddings=emb, device=device, held=held,
               heldout_fp=held_record["ids_fingerprint"], progress=progress)
    if emb is not None and len(emb) > 1:
        # One search for the probe (when it searches all rows) and the checks: see SharedNeighbors.
        run.shared = SharedNeighbors(emb, engine=options.engine, ray_address=options.ray_address, device=device,
                                     seed=options.seed, progress=progress)
    return run


def _predict(run: _Run) -> ProbeOutput:
    """Return the out-of-sample predictions: the user's (``--pred-probs``) or the task's probe."""
    from labelkit.engines import fold_mapper

    opts, task = run.options, run.task
    if opts.pred_probs is not None:
        return task.load_pred_probs(opts.pred_probs, ids=run.ids, targets=run.targets, held=run.held, options=opts)
    wanted = task.probe_neighbors(opts, run.held)
    if wanted and run.shared is not None:  # searched before the probe, at the larger of its k and the checks'
        phase_started = time.perf_counter()
        run.shared(min(max(wanted, opts.k_neighbors), len(run.embeddings) - 1))
        run.phase_seconds["neighbours"] = round(time.perf_counter() - phase_started, 3)
    selected = get_checks(opts.checks)
    inputs = ProbeInputs(embeddings=run.embeddings, held=run.held, options=opts, device=run.device,
                         neighbors=run.shared, fold_map=fold_mapper(opts.engine, ray_address=opts.ray_address),
                         progress=run.progress,
                         wants_probs=any("probs" in c.needs or c.name == task.label_check for c in selected))
    searches = run.shared.searches if run.shared is not None else 0
    phase_started = time.perf_counter()
    out = task.probe(run.targets, inputs)
    if out.predictions is not None:
        run.phase_seconds["probe"] = round(time.perf_counter() - phase_started, 3)
    run.probe_searched = run.shared is not None and run.shared.searches > searches
    return out


def _judge(run: _Run, out: ProbeOutput):
    """Return (the task finder's verdicts, check results, skipped checks, neighbour info) of the run."""
    opts, task = run.options, run.task
    exact_dups = None
    if run.shared is None:  # hashing releases the GIL: exact duplicates are found while the finder runs
        exact_dups = _Background(find_duplicates, run.usable(_string_array(run.items.column("content_hash"))))
    phase_started = time.perf_counter()
    found = task.find_issues(run.targets, out, opts, run.progress)
    if task.finder_phase and out.not_measured is None:
        run.phase_seconds[task.finder_phase] = round(time.perf_counter() - phase_started, 3)
    nn_idx = nn_sim = neighbors_info = None
    if run.shared is not None:
        searched_before = run.shared.searches
        nn_idx, nn_sim, neighbors_info = run.shared(opts.k_neighbors)
        run.phase_seconds |= neighbors_info["seconds"]
        if run.shared.searches == searched_before and run.probe_searched:
            # Searched by the kNN probe: those seconds move from the probe's phase to the search's.
            neighbors_info = neighbors_info | {"shared_with_probe": True}
            run.phase_seconds["probe"] = round(run.phase_seconds["probe"] - sum(neighbors_info["seconds"].values()), 3)
    ctx = CheckContext(ids=run.usable_ids, labels=run.targets.check_labels, classes=run.targets.check_classes,
                       task=task.name, modality=run.manifest.get("modality", task.default_modality),
                       items=run.usable(run.items), embeddings=run.embeddings, embedding_key=opts.embedding_key,
                       folds=out.folds, neighbor_idx=nn_idx, neighbor_sims=nn_sim, seed=opts.seed, probe_info=out.info,
                       options={"dup_threshold": opts.dup_threshold, "k_neighbors": opts.k_neighbors,
                                "n_folds": opts.n_folds, "filter_by": opts.filter_by, "rank_by": opts.rank_by,
                                "probe": opts.probe, "seed": opts.seed, "heldout": run.held},
                       exact_duplicates=exact_dups.join() if exact_dups is not None else None,
                       **task.check_inputs(run.targets, out, found))
    names = opts.checks
    if names is not None and task.label_check and out.predictions is not None and out.not_measured is None:
        names = tuple(dict.fromkeys((task.label_check, *names)))  # the task's verdicts are always written
    phase_started = time.perf_counter()
    results, skipped = run_checks(ctx, names)
    run.phase_seconds["checks"] = round(time.perf_counter() - phase_started, 3)
    return found, results, skipped, neighbors_info


def _write_issues(run: _Run, found: dict, results: dict, options_fp: str) -> None:
    """Write issues.parquet (the task's leading columns, every declared default, the checks' columns, reasons)."""
    n = run.targets.n
    columns = {"id": run.usable_ids} | run.task.issues_columns(run.targets, found)
    # Columns every reader may rely on, present (empty) when their check could not run.
    for name, values in default_issue_columns(n, run.task.name).items():
        columns.setdefault(name, values)
    for result in results.values():
        columns |= result.columns
    columns["reason"] = pa.array(merged_reasons(n, results), pa.string())
    # Dictionary pages only where values repeat (not for unique ids): half the time, smaller file.
    write_issues_table(run.ws, columns, run.items_fp, options_fp, use_dictionary=run.task.issues_dictionary)
    run.task.write_outputs(run.ws, found, items_fp=run.items_fp, options_fp=options_fp)


def _summary(run: _Run, out: ProbeOutput, found: dict, results: dict, skipped: dict, neighbors_info,
             options_fp: str) -> dict:
    """Return the manifest's issues record: every check's metrics, the run's record, the task's numbers."""
    opts = run.options
    summary: dict = {}
    # Every registered metric is present: None when its check did not run (the gate says "not measured").
    for check in get_checks():
        summary |= {metric: None for metric in check.metrics} | (results[check.name].metrics if check.name in results else {})
    summary |= {"origin": out.origin, "probe": out.info, "embedding_key": opts.embedding_key,
                "dup_threshold": opts.dup_threshold, "probe_excluded_classes": out.excluded,
                "heldout": {"rows": int(run.held.sum()), "ids_fingerprint": run.heldout_fp, "in_probe_training": False},
                "items_fingerprint": run.items_fp, "fingerprint": options_fp, "neighbors": neighbors_info,
                "phase_seconds": run.phase_seconds, "checks": checks_summary(results, skipped)}
    if run.task.uses_filter_by:
        summary |= {"filter_by": opts.filter_by, "rank_by": opts.rank_by}
    return summary | run.task.summary(run.targets, out, found, n_rows=run.items.num_rows)
