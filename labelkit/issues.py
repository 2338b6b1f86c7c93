"""`labelkit issues`: label errors by confident learning, duplicates, outliers, class imbalance.

Confident learning (Northcutt, Jiang & Chuang, JAIR 2021) is only as good as the out-of-sample
probabilities it is given; :mod:`labelkit.probe` produces them. Neighbours (duplicates,
outliers) come from :mod:`labelkit.neighbors`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from labelkit.arrays import positions as _positions, string_array as _string_array  # noqa: F401  (old names)
from labelkit.arrays import empty_issue_columns
from labelkit.errors import LabelkitError, check_in_range, parameter_error
from labelkit.checks.base import CheckContext, checks_summary, get_checks, merged_reasons, run_checks
from labelkit.checks.duplicates import find_duplicates  # noqa: F401  (public API)
from labelkit.features import near_duplicate_threshold  # noqa: F401  (public API)
from labelkit.neighbors import find_nearest_neighbors, get_outlier_scores, phase_progress  # noqa: F401  (public API)
from labelkit.neighbors import SharedNeighbors
from labelkit.probe import ProbeChoice, get_out_of_sample_probs  # noqa: F401  (public API)
from labelkit.splits import heldout_mask
from labelkit.workspace import (build_probs_table, Workspace, current_items_fingerprint, fingerprint, read_class_file,
                                write_issues_table, write_table)

FILTER_BY = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
             "low_normalized_margin", "low_self_confidence")
RANK_BY = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
Progress = Callable[[int, "int | None"], None]


# ---------------------------------------------------------------------------------------------
# User-supplied probabilities


def load_pred_probs(path: Path | str, *, ids: Sequence[str], usable: np.ndarray, classes: list[str],
                    classes_file: Path | str | None = None) -> np.ndarray:
    """Return the user's predicted probabilities for the usable rows, columns in workspace class order.

    Rows are keyed by an ``id`` column when the file has one, otherwise they are in items order
    (one row per item, or one per usable item). Raises a user error naming the row for values
    that are not finite, negative, or rows that do not sum to 1 (tolerance 1e-3).
    """
    from labelkit.predfile import read_pred_probs_file

    path = Path(path)
    matrix, row_ids, col_names = read_pred_probs_file(path, mmap=True)
    if matrix.ndim != 2:
        raise LabelkitError(f"--pred-probs {path} must be a 2-D matrix (rows × classes); got shape {matrix.shape}.")
    K = len(classes)
    if matrix.shape[1] != K:
        raise LabelkitError(f"--pred-probs {path} has {matrix.shape[1]} columns but the workspace has {K} classes "
                            f"({', '.join(classes[:12])}{', …' if K > 12 else ''}).")
    # Column order: an explicit classes file, else named columns, else the workspace's order.
    order = None
    if classes_file is not None:
        order = read_class_file(classes_file)
    elif col_names is not None and set(col_names) == set(classes):
        order = col_names
    if order is not None:
        if sorted(order) != sorted(classes):
            raise LabelkitError(f"The classes in {classes_file or path} ({', '.join(order[:8])}) differ from the "
                                f"workspace's ({', '.join(classes[:8])}).")
        matrix = matrix[:, [order.index(c) for c in classes]]
    ids = _string_array(ids)
    source_rows = np.flatnonzero(usable)  # item row of each usable row
    item_id = lambda row: ids[int(row)].as_py()
    if row_ids is not None:
        position = _positions(ids.take(pa.array(source_rows)), row_ids)
        missing = np.flatnonzero(position < 0)
        if len(missing):
            raise LabelkitError(f"--pred-probs {path} has no row for id {item_id(source_rows[missing[0]])!r} "
                                f"({len(missing)} usable items missing).")
        matrix = matrix[position]
        describe = lambda r: f"row for id {item_id(source_rows[r])!r} (file row {position[r] + 1})"
    elif len(matrix) == len(ids):
        if len(source_rows) < len(ids):  # no 400 MB copy when every row is usable
            matrix = matrix[usable]
        describe = lambda r: f"row {source_rows[r] + 1} (id {item_id(source_rows[r])!r})"
    elif len(matrix) == len(source_rows):
        describe = lambda r: f"row {r + 1} (id {item_id(source_rows[r])!r})"
    else:
        raise LabelkitError(f"--pred-probs {path} has {len(matrix)} rows; expected {len(ids)} (one per item) or "
                            f"{len(source_rows)} (one per usable item), or an 'id' column.")
    # One pass for the sums and one for the minimum; rows are only searched on failure.
    sums = matrix.sum(1, dtype=np.float64)
    if not np.isfinite(sums).all():  # a row sum is finite exactly when all its values are
        r = int(np.flatnonzero(~np.isfinite(matrix).all(1))[0])
        raise LabelkitError(f"--pred-probs {path}: {describe(r)} has a value that is not a finite number.")
    if matrix.size and matrix.min() < 0:
        raise LabelkitError(f"--pred-probs {path}: {describe(int(np.flatnonzero((matrix < 0).any(1))[0]))} has a "
                            "negative probability.")
    off = np.abs(sums - 1) > 1e-3
    if off.any():
        r = int(np.flatnonzero(off)[0])
        raise LabelkitError(f"--pred-probs {path}: {describe(r)} sums to {sums[r]:.4g}, not 1 (tolerance 0.001); "
                            "pass probabilities (softmax outputs), not logits.")
    if np.abs(sums - 1).max(initial=0) > 1e-6:
        matrix = matrix / sums[:, None].astype(np.float32)
    return matrix


# ---------------------------------------------------------------------------------------------
# Label issues


# Above this many bytes of probabilities, confident learning streams them in batches
# (cleanlab.experimental.label_issues_batched): cleanlab's in-memory path holds several
# temporaries the size of the matrix (a boolean mask, a float copy for argmax), which at
# 1M x 1000 (4 GB) would put the peak far past the 3x(embeddings + probabilities) + 1 GB budget.
CL_MAX_BYTES = 1 << 30
CL_BATCH_BYTES = 64 << 20  # per batch of the batched path: a few temporaries of this size
BATCHED_FILTERS = {"self_confidence": "low_self_confidence", "normalized_margin": "low_normalized_margin"}


def find_label_issues(labels: np.ndarray, pred_probs: np.ndarray, *, filter_by: str = "prune_by_noise_rate",
                      rank_by: str = "self_confidence", max_bytes: int | None = CL_MAX_BYTES,
                      batch_rows: int | None = None, progress: Progress | None = None) -> dict:
    """Return the label-issue mask, label quality scores, suggested labels and noise estimates.

    Wraps cleanlab: the confident joint is computed once and shared by
    `cleanlab.filter.find_label_issues` and `cleanlab.count.estimate_joint`. When `pred_probs`
    is larger than `max_bytes`, the matrix is read in batches of `batch_rows` rows through
    cleanlab's `LabelInspector` instead: memory is O(batch x K) beyond the inputs. That path
    flags as ``filter_by='low_self_confidence'`` does (``'low_normalized_margin'`` when
    ranking by normalized margin): the number of issues is the confident joint's off-diagonal
    count and the lowest-scoring rows are flagged. Any other `filter_by` is replaced by it there
    and the substitution is recorded under ``'cl'``.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
    pred_probs : ndarray of shape (n_samples, n_classes)
        Out-of-sample probabilities; float32 is used as is (no copy).
    filter_by, rank_by : str
        As in cleanlab.
    max_bytes : int or None
        Size of `pred_probs` above which the batched path runs; None never batches.
    batch_rows : int or None
        Rows per batch of the batched path; None is as many as fit 64 MB of probabilities.
    progress : callable or None
        ``progress(done, total)`` per batch (batched path only).

    Returns
    -------
    dict with keys ``is_label_issue`` (bool, n), ``label_quality`` (float in [0, 1], lower is worse),
    ``suggested_label`` (int, n), ``joint`` (K×K, P(given=i, true=j)), ``noise_matrix``
    (K×K, P(given=i | true=j), columns sum to 1) and ``cl`` (``path`` 'in-memory' or 'batched',
    the ``filter_by`` applied, ``batch_rows``).

    References
    ----------
    Northcutt, Jiang, Chuang. "Confident Learning: Estimating Uncertainty in Dataset Labels". JAIR 2021.
    """
    from cleanlab import rank
    from cleanlab.count import compute_confident_joint, estimate_joint
    from cleanlab.filter import find_label_issues as cl_find

    if filter_by not in FILTER_BY:
        raise LabelkitError(f"The 'filter_by' parameter of find_label_issues must be one of {', '.join(FILTER_BY)}. "
                            f"Got {filter_by!r} instead.")
    if rank_by not in RANK_BY:
        raise LabelkitError(f"The 'rank_by' parameter of find_label_issues must be one of {', '.join(RANK_BY)}. "
                            f"Got {rank_by!r} instead.")
    if max_bytes is not None:
        check_in_range(max_bytes, "max_bytes", "find_label_issues", low=0, kind="an int")
    labels = np.asarray(labels, dtype=np.int64)
    pred_probs = np.asarray(pred_probs, dtype=np.float32)
    if batch_rows is None:
        batch_rows = max(1024, CL_BATCH_BYTES // (4 * max(1, pred_probs.shape[-1])))
    check_in_range(batch_rows, "batch_rows", "find_label_issues", low=1, kind="an int")
    if max_bytes is not None and pred_probs.nbytes > max_bytes:
        return _find_label_issues_batched(labels, pred_probs, filter_by=filter_by, rank_by=rank_by,
                                          batch_rows=batch_rows, progress=progress)
    cj = compute_confident_joint(labels, pred_probs)
    # cleanlab re-estimates the joint itself for 'confident_learning' (and warns if given one).
    mask = cl_find(labels, pred_probs, filter_by=filter_by,
                   confident_joint=None if filter_by == "confident_learning" else cj)
    # cleanlab.filter has validated the inputs; the per-method scorer skips a second validation pass.
    quality = getattr(rank, f"get_{rank_by}_for_each_label")(labels, pred_probs)
    joint = estimate_joint(labels, pred_probs, confident_joint=cj)
    return {"is_label_issue": np.asarray(mask, bool), "label_quality": np.asarray(quality, np.float64),
            "suggested_label": pred_probs.argmax(1), "joint": joint, "noise_matrix": _noise_matrix(joint),
            "cl": {"path": "in-memory", "filter_by": filter_by}}


def _noise_matrix(joint: np.ndarray) -> np.ndarray:
    col = joint.sum(0, keepdims=True)
    return np.divide(joint, col, out=np.zeros_like(joint), where=col > 0)


def _find_label_issues_batched(labels: np.ndarray, pred_probs: np.ndarray, *, filter_by: str, rank_by: str,
                               batch_rows: int, progress: Progress | None) -> dict:
    """The batched path of `find_label_issues`: two passes of `batch_rows` rows (thresholds, then scores)."""
    from cleanlab import rank
    from cleanlab.count import estimate_joint
    from cleanlab.experimental.label_issues_batched import LabelInspector
    from cleanlab.internal.constants import FLOATING_POINT_COMPARISON

    n, K = pred_probs.shape
    method = rank_by if rank_by in BATCHED_FILTERS else "self_confidence"
    inspector = LabelInspector(num_class=K, store_results=False, verbose=False, n_jobs=1,
                               quality_score_kwargs={"method": method})
    batches = [(s, min(n, s + batch_rows)) for s in range(0, n, batch_rows)]
    for done, (s, e) in enumerate(batches, 1):
        inspector.update_confident_thresholds(labels[s:e], pred_probs[s:e])
        if progress:
            progress(done, 2 * len(batches))
    thresholds = inspector.get_confident_thresholds(silent=True) - FLOATING_POINT_COMPARISON
    flag_score = np.empty(n, np.float64)  # the score cleanlab ranks issues by
    quality = np.empty(n, np.float64)  # the score the user asked for
    suggested = np.empty(n, np.int64)
    is_argmax = np.empty(n, bool)
    cj = np.zeros((K, K), np.int64)
    n_issues = 0
    for done, (s, e) in enumerate(batches, len(batches) + 1):
        y, p = labels[s:e], pred_probs[s:e]
        flag_score[s:e] = inspector.score_label_quality(y, p, update_num_issues=False)
        quality[s:e] = flag_score[s:e] if rank_by == method else getattr(rank, f"get_{rank_by}_for_each_label")(y, p)
        suggested[s:e] = p.argmax(1)
        # cleanlab's _reduce_issues, per batch instead of on a copy of the whole matrix: a row whose
        # given label is (within float tolerance) the argmax is never an issue.
        given = p[np.arange(e - s), y]
        is_argmax[s:e] = given + FLOATING_POINT_COMPARISON >= p.max(1)
        # Confident joint, as cleanlab.count.compute_confident_joint counts it: the most likely
        # class among those at or above their per-class threshold; rows with none are not counted.
        above = p >= thresholds
        confident = above.any(1)
        true_class = np.where(above, p, np.float32(-1)).argmax(1)
        np.add.at(cj, (y[confident], true_class[confident]), 1)
        # The number of issues as cleanlab.count.num_label_issues ('off_diagonal') counts it in memory,
        # exactly, rather than LabelInspector's faster overall-argmax estimate.
        n_issues += int((confident & (true_class != y) & ~is_argmax[s:e]).sum())
        if progress:
            progress(done, 2 * len(batches))
    mask = np.zeros(n, bool)
    if n_issues:
        mask[np.argsort(flag_score, kind="stable")[:n_issues]] = True
    mask &= ~is_argmax
    joint = estimate_joint(labels, None, confident_joint=cj)
    return {"is_label_issue": mask, "label_quality": quality, "suggested_label": suggested, "joint": joint,
            "noise_matrix": _noise_matrix(joint),
            "cl": {"path": "batched", "filter_by": BATCHED_FILTERS[method], "requested_filter_by": filter_by,
                   "batch_rows": batch_rows}}


# ---------------------------------------------------------------------------------------------
# Neighbours: near-duplicates and outliers


# ---------------------------------------------------------------------------------------------
# The verb

HELDOUT_FOLD = -1  # `fold` of a probe row predicted by a model fit on all non-held-out rows (probe.py)


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


def probe_classes(labels: np.ndarray, n_classes: int, n_folds: int) -> np.ndarray:
    """Return the mask of classes with enough training rows for `n_folds` stratified folds.

    A class with fewer rows than folds cannot appear in every fold's training and test part; it is
    left out of the probe (its rows get no label-issue verdict) instead of shrinking every class's
    folds to its size. Classes without rows are left out too.
    """
    counts = np.bincount(np.asarray(labels, np.int64), minlength=n_classes)
    return counts >= n_folds


def _label_issues_for_classes(labels: np.ndarray, probs: np.ndarray, included: np.ndarray, *, filter_by: str,
                              rank_by: str, progress: Progress | None = None) -> dict:
    """Return :func:`find_label_issues` over the rows of `included` classes, expanded to every row.

    Rows of other classes get no verdict: not flagged, quality NaN, suggested label -1; their rows
    and columns of the joint and noise matrices are 0.
    """
    K = len(included)
    if included.all():
        return find_label_issues(labels, probs, filter_by=filter_by, rank_by=rank_by, progress=progress)
    kept = np.flatnonzero(included)
    rows = included[labels]
    remap = np.full(K, -1, np.int64)
    remap[kept] = np.arange(len(kept))
    sub = probs[rows][:, kept].astype(np.float32)
    sub /= np.maximum(sub.sum(1, keepdims=True), np.float32(1e-12))
    part = find_label_issues(remap[labels[rows]], sub, filter_by=filter_by, rank_by=rank_by, progress=progress)
    n = len(labels)
    out = {"is_label_issue": np.zeros(n, bool), "label_quality": np.full(n, np.nan),
           "suggested_label": np.full(n, -1, np.int64), "joint": np.zeros((K, K)), "noise_matrix": np.zeros((K, K)),
           "cl": part["cl"]}
    out["is_label_issue"][rows] = part["is_label_issue"]
    out["label_quality"][rows] = part["label_quality"]
    out["suggested_label"][rows] = kept[part["suggested_label"]]
    out["joint"][np.ix_(kept, kept)] = part["joint"]
    out["noise_matrix"][np.ix_(kept, kept)] = part["noise_matrix"]
    return out


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


def issues(workspace: Workspace | Path | str = "labelkit-out", *, pred_probs: Path | str | None = None,
           classes_file: Path | str | None = None, n_folds: int = 5, probe: str = "auto",
           filter_by: str = "prune_by_noise_rate", rank_by: str = "self_confidence",
           dup_threshold: float | None = None, k_neighbors: int = 10, embedding_key: str | None = None,
           device: str = "auto", seed: int = 0, progress: Progress | None = None, engine: str = "local",
           ray_address: str | None = None, checks: Sequence[str] | None = None) -> IssuesResult:
    """Return the issues summary; writes probs.parquet, issues.parquet and the manifest summary.

    Out-of-sample probabilities come from `pred_probs` (a file of the user's model outputs) or
    from a k-fold probe on the workspace embeddings. Near-duplicates and outliers need embeddings
    and are skipped (None in the summary) without them. ``engine='ray'`` shards the neighbour
    search and runs the probe's final k-fold models as tasks on the cluster at `ray_address`; the
    probe's candidate selection and confident learning stay on the driver.
    `checks` names the checks to run (default: every registered check whose needs are met; see
    ``python -m labelkit.checks`` or docs/checks.md).
    """
    from labelkit.engines import check_engine, fold_mapper
    from labelkit.features import load_embedding_inputs

    check_engine(engine, "issues")
    check_issues_options(filter_by=filter_by, rank_by=rank_by, dup_threshold=dup_threshold, k_neighbors=k_neighbors,
                         n_folds=n_folds, probe=probe, seed=seed)
    if checks is not None:
        given = checks
        checks = [c.strip() for part in ([checks] if isinstance(checks, str) else checks) for c in part.split(",")
                  if c.strip()]
        if not checks:  # e.g. --checks ",": running nothing and exiting 0 would read as a clean bill
            raise parameter_error("checks", "issues", "one or more check names, comma-separated", given)
        get_checks(checks)  # unknown names fail before anything is read or written
    started = time.perf_counter()
    phase_seconds: dict[str, float] = {}  # per long phase, into the manifest's issues record
    neighbors_info = None
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    manifest = ws.read_manifest()
    if manifest.get("task", "multiclass") != "multiclass":  # multi-label, multi-annotator, regression
        from labelkit.tasks import task_module

        return task_module(manifest["task"]).issues(
            ws, pred_probs=pred_probs, classes_file=classes_file, n_folds=n_folds, probe=probe, filter_by=filter_by,
            rank_by=rank_by, dup_threshold=dup_threshold, k_neighbors=k_neighbors, embedding_key=embedding_key,
            device=device, seed=seed, progress=progress, engine=engine, ray_address=ray_address, checks=checks)
    items_fp = current_items_fingerprint(ws)
    classes = manifest["classes"]
    K = len(classes)
    # Kept in Arrow: a million ids never become Python strings.
    items = ws.read_items_table()  # every column: the checks read text, paths, splits and properties
    ids = _string_array(items.column("id"))
    label_id = items.column("label_id").to_numpy()
    usable = items.column("error").is_null().to_numpy(zero_copy_only=False) & (label_id >= 0)
    labels = label_id[usable].astype(np.int64)
    usable_rows = (lambda column: column) if usable.all() else (lambda column: column.filter(pa.array(usable)))
    usable_ids = usable_rows(ids)

    emb = shared_neighbors = None
    if embedding_key or pred_probs is None or manifest.get("stages", {}).get("embed"):
        if pred_probs is None or manifest.get("stages", {}).get("embed"):
            embedding_key, emb, dup_threshold, device = load_embedding_inputs(
                ws, manifest, usable_ids, usable_rows(_string_array(items.column("content_hash"))),
                embedding_key=embedding_key, dup_threshold=dup_threshold, device=device)

    if emb is not None and len(emb) > 1:
        # One search for the kNN probe (when it searches all rows) and the checks: see SharedNeighbors.
        shared_neighbors = SharedNeighbors(emb, engine=engine, ray_address=ray_address, device=device, seed=seed,
                                           progress=progress)
    # The probe never trains on the held-out rows fixed at ingest (labelkit.splits), so its
    # probabilities can feed pruning, relabel votes and distillation without leaking them.
    held, held_record = heldout_mask(ws, usable_ids)
    warnings: list[str] = []
    excluded: dict[str, int] = {}
    not_measured = None
    present = np.bincount(labels, minlength=K) > 0
    if pred_probs is not None:
        probs = load_pred_probs(pred_probs, ids=ids, usable=usable, classes=classes, classes_file=classes_file)
        folds, origin, probe_info = np.full(len(probs), -1, np.int16), "user", None
        included = present
    else:
        train_counts = np.bincount(labels[~held], minlength=K)
        included = probe_classes(labels[~held], K, n_folds)
        wants_probs = any("probs" in check.needs for check in get_checks(checks))
        excluded = {classes[k]: int(train_counts[k]) for k in np.flatnonzero(present & ~included)} if wants_probs else {}
        if excluded:
            warnings.append(f"{len(excluded)} class(es) have fewer than {n_folds} training rows for the {n_folds}-fold "
                            "probe and get no label-issue verdict: "
                            + ", ".join(f"{c} ({n} rows)" for c, n in list(excluded.items())[:10])
                            + (", …" if len(excluded) > 10 else "") + ".")
        probs = folds = None
        origin, probe_info = "probe", None
        if not wants_probs:  # the probe is the costliest step: skipped when no check asked for needs it
            not_measured = "no check that needs probabilities was selected (--checks)"
        elif included.sum() >= 2:
            # Rows of left-out classes are predicted like held-out rows: by a model that never saw them.
            phase_started = time.perf_counter()
            probs, folds, choice = get_out_of_sample_probs(emb, labels, holdout=held | ~included[labels], n_classes=K,
                                                           n_folds=n_folds, probe=probe, device=device, seed=seed,
                                                           progress=phase_progress(progress, "probe"),
                                                           fold_map=fold_mapper(engine, ray_address=ray_address),
                                                           neighbors=shared_neighbors)
            # Where the final k-fold's (or the held-out rows') models ran; None when no model was fit
            # after the selection (its out-of-fold probabilities were final, or kNN won).
            fitted_after = choice.features != "knn" and (choice.fold_train_rows > 0 or choice.holdout_rows > 0)
            probe_info = choice.to_dict() | {"fold_engine": engine if fitted_after else None}
            phase_seconds["probe"] = round(time.perf_counter() - phase_started, 3)
    if not_measured is None and included.sum() < 2:
        not_measured = ("the data has one class" if present.sum() < 2 else
                        f"{'no class' if not included.any() else 'only one class'} has at least {n_folds} "
                        "training rows")
        warnings.append(f"Label issues cannot be computed: {not_measured}; confident learning compares at least "
                        "two classes. Duplicates and outliers are still checked.")
    options_fp = fingerprint(items_fp, "label", embedding_key, origin, str(pred_probs) if pred_probs else None,
                             n_folds, probe, filter_by, rank_by, dup_threshold, k_neighbors, seed,
                             held_record["ids_fingerprint"])

    probs_table = None
    if probs is not None:
        probs_table = build_probs_table(usable_ids, probs, folds, origin, items_fp=items_fp, options_fp=options_fp,
                                        heldout_fp=held_record["ids_fingerprint"])
    elif ws.probs_path.exists():
        ws.probs_path.unlink()  # an earlier run's probabilities must not outlive the run that replaced them
    with PendingProbs(ws, probs_table):
        hashes = usable_rows(_string_array(items.column("content_hash")))
        with_neighbors = emb is not None and len(emb) > 1
        exact_dups = None if with_neighbors else _Background(find_duplicates, hashes)  # hashing releases the GIL too
        if not_measured is None:
            phase_started = time.perf_counter()
            found = _label_issues_for_classes(labels, probs, included, filter_by=filter_by, rank_by=rank_by,
                                              progress=phase_progress(progress, "confident learning"))
            phase_seconds["confident_learning"] = round(time.perf_counter() - phase_started, 3)
        else:
            found = {"is_label_issue": np.zeros(len(labels), bool), "label_quality": np.full(len(labels), np.nan),
                     "suggested_label": np.full(len(labels), -1, np.int64), "joint": None, "noise_matrix": None}

        nn_idx = nn_sim = None
        if with_neighbors:
            searched_before = shared_neighbors.searches
            nn_idx, nn_sim, neighbors_info = shared_neighbors(k_neighbors)
            phase_seconds |= neighbors_info["seconds"]
            if shared_neighbors.searches == searched_before and "probe" in phase_seconds:
                # Searched by the kNN probe: those seconds move from the probe's phase to the search's.
                neighbors_info = neighbors_info | {"shared_with_probe": True}
                phase_seconds["probe"] = round(phase_seconds["probe"] - sum(neighbors_info["seconds"].values()), 3)

        # The checks (labelkit.checks) over the shared inputs computed above, in registry order.
        measured = not_measured is None
        ctx = CheckContext(ids=usable_ids, labels=labels, classes=classes, task="multiclass",
                           modality=manifest.get("modality", "image"), items=usable_rows(items), embeddings=emb,
                           embedding_key=embedding_key, pred_probs=probs if measured else None, folds=folds,
                           label_issues=found if measured else None, neighbor_idx=nn_idx, neighbor_sims=nn_sim,
                           options={"dup_threshold": dup_threshold, "k_neighbors": k_neighbors, "n_folds": n_folds,
                                    "filter_by": filter_by, "rank_by": rank_by, "heldout": held}, seed=seed)
        if exact_dups is not None:
            ctx.extra["exact_duplicates"] = exact_dups.join()
        phase_started = time.perf_counter()
        results, skipped = run_checks(ctx, checks)
        phase_seconds["checks"] = round(time.perf_counter() - phase_started, 3)
        for result in results.values():
            warnings.extend(result.warnings)

        n = len(labels)
        class_array = pa.array(classes, pa.string())
        columns = {"id": usable_ids, "given_label": class_array.take(pa.array(labels))}
        # Columns every reader may rely on, present (empty) when their check could not run.
        columns |= empty_issue_columns(n)
        for result in results.values():
            columns |= result.columns
        columns["reason"] = pa.array(merged_reasons(n, results), pa.string())
        # Dictionary pages only where values repeat (not for unique ids): half the time, smaller file.
        write_issues_table(ws, columns, items_fp, options_fp)

    summary = summarize(labels, classes, found, n_rows=items.num_rows)
    # Every registered metric is present: None when its check did not run (the gate says "not measured").
    for check in get_checks():
        summary |= {metric: None for metric in check.metrics} | (results[check.name].metrics if check.name in results else {})
    judged = found["suggested_label"] >= 0
    summary |= {"origin": origin, "probe": probe_info, "embedding_key": embedding_key, "filter_by": filter_by,
                "rank_by": rank_by, "dup_threshold": dup_threshold, "seconds": round(time.perf_counter() - started, 3),
                "probe_accuracy": float((found["suggested_label"] == labels)[judged].mean()) if judged.any() else None,
                "label_issues_not_measured": not_measured, "probe_excluded_classes": excluded,
                "heldout": {"rows": int(held.sum()), "ids_fingerprint": held_record["ids_fingerprint"],
                            "in_probe_training": False},
                "items_fingerprint": items_fp, "fingerprint": options_fp,
                "neighbors": neighbors_info, "confident_learning": found.get("cl"), "phase_seconds": phase_seconds,
                "checks": checks_summary(results, skipped)}
    ws.update_stage("issues", summary, warnings=warnings)

    flagged = np.flatnonzero(found["is_label_issue"])
    flagged = flagged[np.argsort(found["label_quality"][flagged], kind="stable")][:20]  # worst first
    top = [{"id": usable_ids[int(i)].as_py(), "given_label": classes[labels[i]], "suggested_label": classes[found["suggested_label"][i]],
            "label_quality": round(float(found["label_quality"][i]), 4)} for i in flagged]
    return IssuesResult(summary=summary, top=top, warnings=list(warnings))


def summarize(labels: np.ndarray, classes: list[str], found: dict, *, n_rows: int) -> dict:
    """Return the dataset-level part of the issues summary (the checks add their metrics)."""
    K = len(classes)
    counts = np.bincount(labels, minlength=K)
    flags = found["is_label_issue"]
    # Rows of classes left out of the probe have no verdict (quality NaN): their class's numbers are None, not 0.
    judged = ~np.isnan(found["label_quality"])
    judged_counts = np.bincount(labels, weights=judged, minlength=K)
    flagged = np.bincount(labels, weights=flags, minlength=K)
    quality_sum = np.bincount(labels, weights=np.where(judged, found["label_quality"], 0.0), minlength=K)
    per_class = {c: {"count": int(counts[k]), "label_issues": int(flagged[k]) if judged_counts[k] else None,
                     "issue_rate": float(flagged[k] / counts[k]) if judged_counts[k] else None,
                     "mean_label_quality": float(quality_sum[k] / judged_counts[k]) if judged_counts[k] else None}
                 for k, c in enumerate(classes)}
    n = len(labels)
    matrix = lambda m: np.round(m, 6).tolist() if m is not None else None
    return {"rows": n_rows, "usable_rows": n, "unusable_rows": n_rows - n, "n_classes": K,
            "label_issues_checked_rows": int(judged.sum()), "class_counts": {c: int(x) for c, x in zip(classes, counts)},
            "per_class": per_class, "noise_matrix": matrix(found["noise_matrix"]), "joint": matrix(found["joint"])}
