"""Several annotators per item: majority vote at ingest, CROWDLAB consensus in `issues`.

``ingest`` reads the annotations in one of two layouts:

- **wide**: one column per annotator (``--annotator-cols a1,a2,…``); an empty cell means that
  annotator did not label the row;
- **long**: one row per item and annotator (``--annotator-col`` + ``--label-col`` + ``--id-col``);
  the rows of an item are merged, and every other column (text, image path, split, …) must hold
  the same value on all of them.

Items get an ``annotator_labels`` column (list<string>, null where an annotator did not label
the item, in the manifest's ``annotators`` order) and a display ``label``: the majority vote.
A tie goes to the tied class that comes first in the workspace's class order (numeric labels
numerically, others alphabetically), so the same annotations always give the same label.

``issues`` trains the shared probe on the majority-vote labels (out of sample, held-out rows
never in training), then runs CROWDLAB (``cleanlab.multiannotator``), which weighs each
annotator and the probe by how well they agree with the consensus: a consensus label and a
quality score per item, and a quality per annotator (``annotators.parquet``). An item is flagged
when its consensus differs from the majority vote, or its consensus quality is unusually low for
the dataset: below Tukey's lower fence, Q1 − 1.5·IQR of the items' consensus quality, and below
0.5. (CROWDLAB's scores are not calibrated probabilities: on the digits bench they span 0.22–0.83,
and 0.5 alone flagged 10 % of the rows, 98 % of them with a correct consensus; the fence alone
flags the single-annotator items of clean data, whose quality is lower but still 0.88.)

References
----------
Goh, Tkachenko, Mueller. "CROWDLAB: Supervised learning to infer consensus labels and quality
scores for data with multiple annotators". NeurIPS 2022 Human in the Loop Learning Workshop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelkit.checks._task_common import annotator_records
from labelkit.errors import LabelkitError, check_in_range
from labelkit.tasks._classify import ClassificationTrainer, class_prune_rows
from labelkit.tasks.base import (TASK_LABEL_COL, IssuesOptions, ProbeInputs, ProbeOutput, Targets, TaskSpec, TaskType,
                                 register)
from labelkit.workspace import sort_classes

QUALITY_FENCE = 1.5  # flag consensus quality below Q1 - QUALITY_FENCE * IQR (Tukey's lower fence) …
QUALITY_CAP = 0.5  # … and below this
TIE_BREAK = "the tied class first in class order"
ANNOTATORS_FILE = "annotators.parquet"
MAX_REASON_ANNOTATORS = 6
# Items × annotators cells of the dense label matrix ingest stores and CROWDLAB works on (cleanlab
# takes an (n, M) DataFrame): about 60 bytes a cell at their peak, so 200M cells is ~12 GB, and it
# keeps the annotator_labels list offsets far below int32's 2**31.
MAX_ANNOTATION_CELLS = 200_000_000


def annotators_path(ws) -> Path:
    """Return the path of the workspace's per-annotator table."""
    return ws.root / ANNOTATORS_FILE


# ---------------------------------------------------------------------------------------------
# Pure functions over arrays


def get_majority_vote(labels_multiannotator: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (majority label per row, True where the top count was tied), -1 for rows with no label.

    Ties go to the lowest class index (the class first in class order). Sort-based: memory is
    O(labelled cells), not O(rows × classes), so a million rows of a thousand classes fit.

    Parameters
    ----------
    labels_multiannotator : ndarray of shape (n_samples, n_annotators)
        Class index per annotator, -1 (or NaN for a float array) where an annotator gave none.
    n_classes : int
    """
    codes = np.asarray(labels_multiannotator)
    if codes.dtype.kind == "f":
        codes = np.where(np.isnan(codes), -1, codes)
    codes = codes.astype(np.int64, copy=False)
    n = len(codes)
    rows, cols = np.nonzero(codes >= 0)
    key = rows * np.int64(max(n_classes, 1)) + codes[rows, cols]
    uniq, counts = np.unique(key, return_counts=True)  # sorted by row, then class
    row_u, class_u = uniq // max(n_classes, 1), uniq % max(n_classes, 1)
    order = np.lexsort((class_u, -counts, row_u))  # per row: most votes first, then lowest class
    row_s, class_s, count_s = row_u[order], class_u[order], counts[order]
    first = np.flatnonzero(np.r_[True, row_s[1:] != row_s[:-1]]) if len(row_s) else np.zeros(0, np.int64)
    majority = np.full(n, -1, np.int64)
    majority[row_s[first]] = class_s[first]
    tie = np.zeros(n, bool)
    second = first + 1
    has_second = second < len(row_s)
    second, first_t = second[has_second], first[has_second]
    tied = (row_s[second] == row_s[first_t]) & (count_s[second] == count_s[first_t])
    tie[row_s[first_t[tied]]] = True
    return majority, tie


def get_consensus(labels_multiannotator: np.ndarray, pred_probs: np.ndarray, *, majority: np.ndarray | None = None,
                  annotators: Sequence[str] | None = None, quality_threshold: float | None = None) -> dict:
    """Return CROWDLAB's consensus labels, their quality, and each annotator's quality.

    Parameters
    ----------
    labels_multiannotator : ndarray of shape (n_samples, n_annotators)
        Class index per annotator, NaN (float) or -1 (int) where an annotator gave none. Every row
        needs at least one label, and at least one row two.
    pred_probs : ndarray of shape (n_samples, n_classes)
        Out-of-sample probabilities of a model trained on (e.g.) the majority-vote labels.
    majority : ndarray of shape (n_samples,), optional
        The given (majority-vote) label per row; computed by :func:`get_majority_vote` if omitted.
    annotators : sequence of str, optional
        Annotator names (default ``"0"``, ``"1"``, …).
    quality_threshold : float in [0, 1] or None
        A row is flagged when its consensus quality is below this, or its consensus differs
        from `majority`. None: the lower of 0.5 and Tukey's lower fence of the rows' consensus
        quality, Q1 − 1.5·IQR (CROWDLAB's scores are not calibrated, so a fixed cut-off alone
        flags too much on one dataset and nothing on another).

    Returns
    -------
    dict with, per row: ``consensus_label`` (int64), ``consensus_quality`` (float32 in [0, 1],
    lower is worse), ``annotator_agreement`` (fraction of the row's annotators who gave the
    consensus), ``num_annotations`` (int32), ``label_quality_per_annotator`` ((n, M) float32, NaN
    where not labelled), ``majority_label``, ``consensus_changed``, ``low_quality``,
    ``is_issue``; per annotator (length M): ``annotators``, ``annotator_items`` (int),
    ``annotator_quality``, ``annotator_agreement_with_consensus``, ``annotator_worst_class``
    (float, NaN / -1 for an annotator with no labelled row); and ``model_weight``.

    References
    ----------
    Goh, Tkachenko, Mueller. "CROWDLAB: Supervised learning to infer consensus labels and quality
    scores for data with multiple annotators". NeurIPS 2022 Human in the Loop Learning Workshop.
    """
    import pandas as pd
    from cleanlab.multiannotator import get_label_quality_multiannotator

    if quality_threshold is not None:
        check_in_range(quality_threshold, "quality_threshold", "get_consensus", low=0.0, high=1.0)
    matrix = np.asarray(labels_multiannotator)
    if matrix.dtype.kind != "f":
        matrix = np.where(matrix < 0, np.nan, matrix.astype(np.float64))
    matrix = matrix.astype(np.float64, copy=False)
    pred_probs = np.asarray(pred_probs, np.float32)
    n, M = matrix.shape
    K = pred_probs.shape[1]
    names = [str(a) for a in (annotators if annotators is not None else range(M))]
    if len(names) != M:
        raise LabelkitError(f"get_consensus got {len(names)} annotator names for {M} annotator columns.")
    labelled = ~np.isnan(matrix)
    n_annotations = labelled.sum(1)
    if n and (n_annotations == 0).any():
        raise LabelkitError(f"Row {int(np.flatnonzero(n_annotations == 0)[0])} has no annotator label.")
    if majority is None:
        majority, _ = get_majority_vote(matrix, K)
    majority = np.asarray(majority, np.int64)
    items_per_annotator = labelled.sum(0)
    active = np.flatnonzero(items_per_annotator > 0)  # cleanlab refuses annotators without a label
    if len(active) < 2 or not (n_annotations >= 2).any():
        raise LabelkitError("Multi-annotator issues need at least one item labelled by two or more annotators "
                            f"(got {len(active)} annotator(s) with labels, at most {int(n_annotations.max(initial=0))} "
                            "label(s) per item).")
    frame = pd.DataFrame(matrix[:, active], columns=[names[a] for a in active])
    # CROWDLAB works in float64; its probabilities must sum to 1 at that precision.
    probs64 = pred_probs.astype(np.float64)
    probs64 /= probs64.sum(1, keepdims=True)
    out = get_label_quality_multiannotator(frame, probs64, consensus_method="best_quality", quality_method="crowdlab",
                                           return_detailed_quality=True, return_annotator_stats=True,
                                           return_weights=True, verbose=False)
    quality_frame = out["label_quality"]
    consensus = quality_frame["consensus_label"].to_numpy().astype(np.int64)
    consensus_quality = quality_frame["consensus_quality_score"].to_numpy().astype(np.float32)
    detailed = np.full((n, M), np.nan, np.float32)
    detailed[:, active] = out["detailed_label_quality"].to_numpy(dtype=np.float32)
    stats = out["annotator_stats"].reindex([names[a] for a in active])
    ann_quality = np.full(M, np.nan)
    ann_agree = np.full(M, np.nan)
    ann_worst = np.full(M, -1, np.int64)
    ann_quality[active] = stats["annotator_quality"].to_numpy(np.float64)
    ann_agree[active] = stats["agreement_with_consensus"].to_numpy(np.float64)
    ann_worst[active] = stats["worst_class"].to_numpy().astype(np.int64)
    changed = consensus != majority
    if quality_threshold is None:
        q1, q3 = np.quantile(consensus_quality, [0.25, 0.75]) if n else (0.0, 0.0)
        quality_threshold = min(QUALITY_CAP, max(0.0, float(q1 - QUALITY_FENCE * (q3 - q1))))
    low = consensus_quality < quality_threshold
    return {
        "consensus_label": consensus, "consensus_quality": consensus_quality,
        "annotator_agreement": quality_frame["annotator_agreement"].to_numpy().astype(np.float32),
        "num_annotations": n_annotations.astype(np.int32), "label_quality_per_annotator": detailed,
        "majority_label": majority, "consensus_changed": changed, "low_quality": low, "is_issue": changed | low,
        "annotators": names, "annotator_items": items_per_annotator.astype(np.int64),
        "annotator_quality": ann_quality, "annotator_agreement_with_consensus": ann_agree,
        "annotator_worst_class": ann_worst, "model_weight": float(out["model_weight"]),
        "quality_threshold": float(quality_threshold),
    }


def annotator_matrix(annotator_labels: pa.Array | pa.ChunkedArray, classes: Sequence[str], n_annotators: int) -> np.ndarray:
    """Return the (n, M) float32 class-index matrix (NaN = not labelled) of an ``annotator_labels`` column."""
    from labelkit.arrays import positions as _positions

    lists = annotator_labels.combine_chunks() if isinstance(annotator_labels, pa.ChunkedArray) else annotator_labels
    n = len(lists)
    if n == 0:
        return np.zeros((0, n_annotators), np.float32)
    flat = pc.list_flatten(lists)
    if len(flat) != n * n_annotators:
        raise LabelkitError(f"The annotator_labels column has {len(flat)} cells; expected {n} rows × {n_annotators} "
                            "annotators. Run `labelkit ingest` again.")
    codes = _positions(flat.cast(pa.string()), list(classes)).astype(np.float32)
    codes[codes < 0] = np.nan
    return codes.reshape(n, n_annotators)


# ---------------------------------------------------------------------------------------------
# ingest: wide or long annotations → one row per item


def _line(source: Path, row: int) -> int:
    """Return the 1-based file row of DataFrame row `row` (CSV/TSV count the header line)."""
    return row + 2 if source.suffix.lower() in (".csv", ".tsv") else row + 1


def prepare_table(df, source, *, options: dict):
    """Return (df with one row per item and a majority-vote label column, TaskSpec).

    Wide layout with ``options['annotator_cols']`` (a list or a comma-separated string); long
    layout with ``options['annotator_col']`` (plus ``label_col`` and ``id_col``, detected by
    their usual names when not given).
    """
    from labelkit.arrays import cells as _cells

    source = Path(source)
    wide, long_col = options.get("annotator_cols"), options.get("annotator_col")
    if wide and long_col:
        raise LabelkitError("Pass either --annotator-cols (one column per annotator) or --annotator-col (one row per "
                            "item and annotator), not both.")
    if not wide and not long_col:
        raise LabelkitError("--task multiannotator needs --annotator-cols (one column per annotator) or "
                            "--annotator-col (one row per item and annotator).")
    columns = [str(c) for c in df.columns]
    if wide:
        names = [c.strip() for c in wide.split(",")] if isinstance(wide, str) else [str(c) for c in wide]
        names = [c for c in names if c]
        missing = [c for c in names if c not in columns]
        if missing:
            raise LabelkitError(f"Annotator column {missing[0]!r} not found in {source}; available columns: "
                                f"{', '.join(columns)}.")
        if len(set(names)) != len(names):
            raise LabelkitError(f"--annotator-cols names column {next(c for c in names if names.count(c) > 1)!r} twice.")
        if len(names) < 2:
            raise LabelkitError(f"--annotator-cols needs at least two columns (one per annotator); got {len(names)}. "
                                "One annotator is a plain multiclass table: pass it as --label-col.")
        _check_cells(len(df), len(names), f"--annotator-cols of {source}")
        cells = [_cells(df[c]) for c in names]
        annotators = names
        fmt = "wide"
        out = df.reset_index(drop=True)
    else:
        out, cells, annotators = _group_long(df, source, long_col, options)
        fmt = "long"
    n, M = len(out), len(annotators)
    # Classes: every label any annotator gave, so probabilities cover a label that never wins a vote.
    distinct = set()
    for col in cells:
        distinct.update(v for v in pc.unique(col).to_pylist() if v is not None)
    classes = sort_classes(distinct)
    class_array = pa.array(classes, pa.string())
    from labelkit.arrays import positions as _positions

    codes = np.stack([_positions(col, classes) for col in cells], 1) if M else np.zeros((n, 0), np.int64)
    majority, tie = get_majority_vote(codes, len(classes))
    flat = pa.array(codes.reshape(-1), mask=codes.reshape(-1) < 0)
    values = class_array.take(flat)
    lists = pa.ListArray.from_arrays(pa.array(np.arange(0, n * M + 1, M, dtype=np.int32)), values)
    out[TASK_LABEL_COL] = class_array.take(pa.array(majority, mask=majority < 0)).to_pandas()
    unlabelled = majority < 0
    errors = None
    if unlabelled.any():
        err = pa.array(np.where(unlabelled, "no annotator labelled this row", None), pa.string())
        errors = err.to_pylist()
    spec = TaskSpec(task="multiannotator", classes=classes, columns={"annotator_labels": lists}, errors=errors,
                    manifest={"annotators": list(annotators), "annotator_format": fmt,
                              "majority_vote": {"tie_break": TIE_BREAK, "tied_rows": int(tie.sum())}})
    return out, spec


def _check_cells(n_items: int, n_annotators: int, what: str) -> None:
    """Raise the user error when the item × annotator matrix would exceed MAX_ANNOTATION_CELLS."""
    if n_items * n_annotators > MAX_ANNOTATION_CELLS:
        raise LabelkitError(f"{what} gives {n_items:,} items × {n_annotators:,} annotators: "
                            f"{n_items * n_annotators:,} cells of the item × annotator matrix, over the limit of "
                            f"{MAX_ANNOTATION_CELLS:,} cells (CROWDLAB needs the whole matrix in memory). Merge "
                            "annotators who labelled few items into one, or ingest the items in smaller parts.")


def _group_long(df, source: Path, annotator_col: str, options: dict):
    """Return (one row per item, the annotators' label columns (Arrow strings, one per annotator), annotators)."""
    from labelkit.arrays import cells as _cells
    from labelkit.tables import detect_column

    columns = [str(c) for c in df.columns]
    if source.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        unread = [c for c in pq.read_schema(source).names if c not in columns]
        if unread:  # ingest reads an --embedding-col of a Parquet file per file row, before this grouping
            raise LabelkitError(f"--embedding-col {unread[0]!r} cannot be used with the long layout of a Parquet table "
                                f"({source}): give one row per item (--annotator-cols), or a CSV/JSONL table.")
    annotator_col = detect_column(columns, "annotator", annotator_col, source, required=True)
    label_col = detect_column(columns, "label", options.get("label_col"), source, required=True)
    id_col = detect_column(columns, "id", options.get("id_col"), source, required=False)
    if id_col is None:
        raise LabelkitError(f"--annotator-col {annotator_col!r} needs --id-col: the column that says which item each "
                            f"row of {source} annotates.")
    if len({annotator_col, label_col, id_col}) < 3:
        raise LabelkitError(f"--annotator-col, --label-col and --id-col must be three different columns of {source}; "
                            f"got {annotator_col!r}, {label_col!r}, {id_col!r}.")
    ids, who, labels = _cells(df[id_col]), _cells(df[annotator_col]), _cells(df[label_col])
    for name, col in ((id_col, ids), (annotator_col, who)):
        nulls = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))
        if len(nulls):
            raise LabelkitError(f"Row {_line(source, int(nulls[0]))} of {source} has no {name!r}; every row of the long "
                                "layout names an item and an annotator.")
    # Arrow numbers distinct values in order of first appearance: items keep the file's order.
    item = pc.dictionary_encode(ids).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    n_items = int(item.max()) + 1 if len(item) else 0
    order = np.argsort(item, kind="stable")
    starts = np.flatnonzero(np.r_[True, item[order][1:] != item[order][:-1]])
    first_row = order[starts]  # the first file row of each item
    annotators = sort_classes(pc.unique(who).to_pylist())
    ann = pc.index_in(who, value_set=pa.array(annotators, pa.string())).to_numpy(zero_copy_only=False).astype(np.int64)
    M = len(annotators)
    _check_cells(n_items, M, f"--annotator-col {annotator_col!r} of {source}")
    lab_enc = pc.dictionary_encode(labels, null_encoding="mask")
    lab_code = lab_enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    given = lab_code >= 0
    # One label per (item, annotator): repeats must agree.
    key = item * M + ann
    sel = np.flatnonzero(given)
    sel = sel[np.lexsort((sel, key[sel]))]
    same = key[sel][1:] == key[sel][:-1]
    clash = np.flatnonzero(same & (lab_code[sel][1:] != lab_code[sel][:-1]))
    if len(clash):
        a, b = int(sel[clash[0]]), int(sel[clash[0] + 1])
        raise LabelkitError(f"Annotator {who[a].as_py()!r} gives item {ids[a].as_py()!r} two labels in {source}: "
                            f"{labels[a].as_py()!r} (row {_line(source, a)}) and {labels[b].as_py()!r} "
                            f"(row {_line(source, b)}).")
    # Every other column describes the item: it must be the same on all of the item's rows.
    for name in columns:
        if name in (annotator_col, label_col, id_col):
            continue
        try:
            enc = pc.dictionary_encode(_cells(df[name]), null_encoding="encode")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            continue  # nested values (e.g. an embedding list): compared by ingest's own reader
        code = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        differ = np.flatnonzero(code != code[first_row[item]])
        if len(differ):
            r = int(differ[0])
            f = int(first_row[item[r]])
            value = lambda i: enc.dictionary[code[i]].as_py() if code[i] < len(enc.dictionary) else None
            show = lambda v: repr(v if v is None or len(str(v)) <= 60 else str(v)[:57] + "…")
            raise LabelkitError(f"Column {name!r} of {source} differs within item {ids[r].as_py()!r}: row "
                                f"{_line(source, f)} has {show(value(f))}, row {_line(source, r)} has {show(value(r))}; "
                                "the rows of one item must agree on everything but the annotator and the label.")
    lab_matrix = np.full((n_items, M), -1, np.int64)
    lab_matrix[item[given], ann[given]] = lab_code[given]
    dictionary = lab_enc.dictionary
    cols = [dictionary.take(pa.array(lab_matrix[:, a], mask=lab_matrix[:, a] < 0)) for a in range(M)]
    out = df.iloc[first_row].drop(columns=[annotator_col, label_col]).reset_index(drop=True)
    return out, cols, annotators


# ---------------------------------------------------------------------------------------------
# The task type


@register
class Multiannotator(TaskType):
    """Several annotators per item: the shared probe on the majority vote, then CROWDLAB.

    Writes annotators.parquet (one row per annotator) beside issues.parquet.
    """

    name = "multiannotator"
    label_check = "annotator_consensus"
    relabel = True
    uses_filter_by = False  # confident learning's options do not apply to CROWDLAB
    finder_phase = "crowdlab"

    def prepare_table(self, df, source, *, options: dict):
        return prepare_table(df, source, options=options)

    def read_targets(self, ws, manifest: dict, items: pa.Table) -> Targets:
        from labelkit.tasks.multiclass import class_targets

        annotators = manifest.get("annotators")
        if not annotators or "annotator_labels" not in items.column_names:
            raise LabelkitError(f"{ws.root} has no annotator labels; run `labelkit ingest --annotator-cols …` (or "
                                "--annotator-col) again.")
        targets = class_targets(items, manifest["classes"])
        lists = items.column("annotator_labels").combine_chunks()
        targets.annotator_labels = annotator_matrix(lists if targets.usable.all() else lists.filter(
            pa.array(targets.usable)), targets.classes, len(annotators))
        targets.annotators = list(annotators)
        return targets

    def load_pred_probs(self, path, *, ids: pa.Array, targets: Targets, held: np.ndarray,
                        options: IssuesOptions) -> ProbeOutput:
        from labelkit.predfile import load_pred_probs

        probs = load_pred_probs(path, ids=ids, usable=targets.usable, classes=targets.classes,
                                classes_file=options.classes_file)
        return ProbeOutput(np.asarray(probs, np.float32), np.full(targets.n, -1, np.int16), "user")

    def probe(self, targets: Targets, inputs: ProbeInputs) -> ProbeOutput:
        from dataclasses import replace

        from labelkit.tasks.multiclass import class_probe

        # The probe learns the majority-vote labels; CROWDLAB always needs its probabilities.
        out = class_probe(targets.values, targets.classes, replace(inputs, wants_probs=True),
                          rows_word="majority-vote training rows", never_predicts=True)
        if out.predictions is None:
            raise LabelkitError(f"Multi-annotator issues need at least two classes with {inputs.options.n_folds} or more "
                                f"majority-vote training rows for the probe; the workspace has "
                                f"{int(out.included.sum())}.")
        out.predictions = np.asarray(out.predictions, np.float32)
        return out

    def fingerprint(self, options: IssuesOptions, out: ProbeOutput, heldout_fp: str) -> tuple:
        return (out.origin, str(options.pred_probs) if options.pred_probs else None, options.n_folds, options.probe,
                options.dup_threshold, options.k_neighbors, options.seed, heldout_fp, QUALITY_FENCE, QUALITY_CAP)

    def find_issues(self, targets: Targets, out: ProbeOutput, options: IssuesOptions, progress) -> dict:
        return get_consensus(targets.annotator_labels, out.predictions, majority=targets.values,
                             annotators=targets.annotators)

    def check_inputs(self, targets: Targets, out: ProbeOutput, found: dict) -> dict:
        return {"pred_probs": out.predictions, "label_issues": found, "annotators": targets.annotators,
                "annotator_labels": targets.annotator_labels}

    def issues_columns(self, targets: Targets, found: dict) -> dict:
        return {"given_label": pa.array(targets.classes, pa.string()).take(pa.array(targets.values))}

    def write_outputs(self, ws, found: dict, *, items_fp: str, options_fp: str) -> None:
        from labelkit.workspace import with_fingerprint, write_table

        write_table(with_fingerprint(annotator_table(found), items_fp, options_fp), annotators_path(ws))

    def summary(self, targets: Targets, out: ProbeOutput, found: dict, *, n_rows: int) -> dict:
        return consensus_summary(targets.values, targets.classes, out.predictions, found, n_rows=n_rows)

    def top_issues(self, ids: pa.Array, targets: Targets, found: dict, limit: int = 20) -> list[dict]:
        from labelkit.tasks.multiclass import class_top_issues

        return class_top_issues(ids, targets.values, targets.classes, found["is_issue"], found["consensus_quality"],
                                found["consensus_label"], limit)

    # --- select / train / report / explain (labelkit.tasks._classify) ----------------------------

    report_sections = ("class_balance",)

    def prune_rows(self, ws, issues_df, keep: np.ndarray):
        return class_prune_rows(issues_df, keep, ws.classes())

    def trainer(self, request):
        return ConsensusTrainer(request)

    def report_data(self, ws) -> tuple[dict, dict]:
        return report_data(ws)


def consensus_summary(majority: np.ndarray, classes: list[str], probs: np.ndarray, found: dict, *,
                      n_rows: int) -> dict:
    """Return the multi-annotator part of the issues summary: per-class counts, annotators, the consensus record."""
    K, n = len(classes), len(majority)
    flags = found["is_issue"]
    counts = np.bincount(majority, minlength=K)
    flagged_per_class = np.bincount(majority, weights=flags, minlength=K)
    quality_per_class = np.bincount(majority, weights=found["consensus_quality"], minlength=K)
    return {
        "task": "multiannotator", "rows": n_rows, "usable_rows": n, "unusable_rows": n_rows - n, "n_classes": K,
        "label_issues_checked_rows": n, "class_counts": {c: int(x) for c, x in zip(classes, counts)},
        "per_class": {c: {"count": int(counts[k]), "label_issues": int(flagged_per_class[k]),
                          "issue_rate": float(flagged_per_class[k] / counts[k]) if counts[k] else None,
                          "mean_label_quality": float(quality_per_class[k] / counts[k]) if counts[k] else None}
                      for k, c in enumerate(classes)},
        "noise_matrix": None, "joint": None, "annotators": annotator_records(found, classes),
        "consensus": {"method": "crowdlab", "quality_threshold": round(found["quality_threshold"], 6),
                      "model_weight": found["model_weight"], "low_quality_rows": int(found["low_quality"].sum()),
                      "majority_tie_break": TIE_BREAK},
        "probe_accuracy": float((probs.argmax(1) == majority).mean()) if n else None,
        "probe_accuracy_vs_consensus": float((probs.argmax(1) == found["consensus_label"]).mean()) if n else None,
        # The label-issue metrics (declared by the multiclass label_issues check) count consensus issues here.
        "label_issues": int(flags.sum()), "label_issue_rate": float(flags.mean()) if n else None}


def annotator_table(found: dict) -> pa.Table:
    """Return the per-annotator table (annotators.parquet) of a :func:`get_consensus` result."""
    return pa.table({
        "annotator": pa.array(found["annotators"], pa.string()),
        "items_labelled": pa.array(found["annotator_items"], pa.int64()),
        "agreement_with_consensus": pa.array(found["annotator_agreement_with_consensus"], pa.float32(),
                                             mask=np.isnan(found["annotator_agreement_with_consensus"])),
        "quality": pa.array(found["annotator_quality"], pa.float32(), mask=np.isnan(found["annotator_quality"])),
    })


# ---------------------------------------------------------------------------------------------
# train, report


def read_consensus_labels(ws, ids: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Return the label ``train`` uses for each of `ids`: the CROWDLAB consensus, the majority vote where held out.

    What ``train`` learns on multi-annotator data instead of the majority vote, and what it
    scores held-out rows against (-1 where issues.parquet has none); needs a current ``labelkit
    issues`` run. Held-out rows get the majority vote of their annotators: their consensus mixes
    in the probe's prediction from the same embeddings the trained model sees, so scoring against
    it would credit the model for agreeing with a model. The majority vote uses no model.
    """
    import pyarrow.parquet as pq

    from labelkit.arrays import positions as _positions
    from labelkit.splits import heldout_mask
    from labelkit.workspace import require_current

    if not ws.issues_path.exists():
        raise LabelkitError(f"Training on multi-annotator data uses the CROWDLAB consensus labels; run "
                            f"`labelkit issues -w {ws.root}` first.")
    require_current(ws, ws.issues_path)
    table = pq.read_table(ws.issues_path, columns=["id", "given_label", "suggested_label"])
    ids = pa.array(list(ids), pa.string())
    row = _positions(ids, table.column("id").combine_chunks())
    held, _ = heldout_mask(ws, ids)
    consensus = _positions(table.column("suggested_label").combine_chunks(), list(classes))
    majority = _positions(table.column("given_label").combine_chunks(), list(classes))
    at = np.maximum(row, 0)
    return np.where(row < 0, -1, np.where(held, majority[at], consensus[at])).astype(np.int64)


class ConsensusTrainer(ClassificationTrainer):
    """Multi-annotator training: the multiclass trainer on the CROWDLAB consensus (:func:`read_consensus_labels`)."""

    def given(self, ws, ids: Sequence[str]) -> np.ndarray:
        return read_consensus_labels(ws, ids, ws.classes())


def report_data(ws) -> tuple[dict, dict]:
    """Return (the annotator numbers for report.json, {figure name: inline SVG}) of a multi-annotator workspace."""
    summary = ws.read_manifest().get("stages", {}).get("issues") or {}
    records = summary.get("annotators")
    if not records:
        return {}, {}
    from labelkit.plots import figure_uri as _figure_uri, mpl as _mpl

    plt = _mpl()
    rated = [r for r in records if r["quality"] is not None]
    fig, ax = plt.subplots(figsize=(6.2, 0.3 * len(rated) + 0.9))
    y = np.arange(len(rated))[::-1]
    ax.barh(y + 0.2, [r["quality"] for r in rated], height=0.38, color="#2563eb", label="CROWDLAB quality")
    ax.barh(y - 0.2, [r["agreement_with_consensus"] for r in rated], height=0.38, color="#94a3b8",
            label="agreement with consensus")
    ax.set_yticks(y, [f"{str(r['annotator'])[:24]} ({r['items_labelled']})" for r in rated])
    ax.set_xlim(0, 1)
    ax.set_xlabel("annotator (items labelled)")
    ax.legend(frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2)
    data = {"annotators": records, "consensus": summary.get("consensus"),
            "consensus_changed_rows": summary.get("consensus_changed_rows"),
            "mean_annotator_agreement": summary.get("mean_annotator_agreement")}
    return data, {"annotator_quality": _figure_uri(fig)}
