"""Why a row was flagged: its findings with their reasons, its probabilities and its nearest rows.

Reads what `issues` wrote (``issues.parquet``: every check's flag and score columns and the
merged ``reason``; ``probs.parquet``) and the workspace's embeddings; computes nothing but one
row's cosine similarities to every embedded row (one matrix-vector product).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from labelkit.errors import LabelkitError, check_in_range
from labelkit.tasks import task_of_manifest
from labelkit.workspace import Workspace, current_items_fingerprint, require_current

TOP_CLASSES = 5


@dataclass
class ExplainResult:
    """One row's findings, probabilities and nearest rows (see :func:`explain`)."""

    id: str
    label: str | None
    usable: bool
    error: str | None = None  # why the row is unusable (then nothing else is known about it)
    reason: str | None = None  # the merged reason of every check that flagged the row
    findings: list[dict] = field(default_factory=list)
    suggested_label: str | None = None
    label_quality: float | None = None
    probabilities: list[dict] | None = None  # top classes, most likely first
    prediction: float | None = None  # regression: the out-of-sample prediction of the target
    residual: float | None = None  # regression: target − prediction
    neighbors: list[dict] | None = None  # most similar first
    embedding_key: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return bool(self.findings)

    def to_dict(self) -> dict:
        return asdict(self) | {"flagged": self.flagged}


def explain(workspace: Workspace | Path | str, row_id: str, *, k: int = 10,
            top_classes: int = TOP_CLASSES) -> ExplainResult:
    """Return why the row `row_id` was (or was not) flagged by `issues`.

    Parameters
    ----------
    workspace : Workspace or path
        A workspace `issues` has run in.
    row_id : str
        The row's ``id`` in items.parquet.
    k : int, default=10
        Nearest rows to list (exact cosine similarity against every embedded row).
    top_classes : int, default=5
        Classes of the probability vector to list, most likely first.

    Returns
    -------
    ExplainResult
        ``findings``: one entry per check that flagged the row (its title, the flag columns set,
        its score), in registry order; ``reason``: the evidence line `issues` wrote;
        ``probabilities``; ``neighbors`` with their labels, similarities and whether they are
        flagged.

    Raises
    ------
    LabelkitError
        Exit code 2 when `row_id` is not a row of the workspace, when `issues` has not run, or
        when its tables were computed from other data than the current items.
    """
    check_in_range(k, "k", "explain", low=1, kind="an int")
    check_in_range(top_classes, "top_classes", "explain", low=1, kind="an int")
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    items = ws.read_items_table(["id", "label", "error", "content_hash"])
    position = pc.index(items.column("id"), row_id).as_py()
    if position < 0:
        raise LabelkitError(f"No row with id {row_id!r} in {ws.items_path}.")
    row = items.slice(position, 1).to_pylist()[0]
    result = ExplainResult(id=row_id, label=row["label"], usable=row["error"] is None, error=row["error"])
    if not result.usable:
        return result
    if not ws.issues_path.exists():
        raise LabelkitError(f"No issues in {ws.root} yet ({ws.issues_path} is missing); run "
                            f"`labelkit issues -w {ws.root}` first.")
    items_fp = current_items_fingerprint(ws)
    require_current(ws, ws.issues_path, items_fp=items_fp)
    return _explained(ws, items, result, k=k, top_classes=top_classes, items_fp=items_fp)


def _explained(ws: Workspace, items: pa.Table, result: ExplainResult, *, k: int, top_classes: int,
               items_fp: str) -> ExplainResult:
    """Fill `result` from issues.parquet, the task's predictions (probs.parquet) and the nearest rows."""
    row_id = result.id
    neighbor_ids, sims = _nearest(ws, items, row_id, k, result)
    issues = _issue_rows(ws.issues_path, [row_id, *neighbor_ids])
    flag_owner = _flag_columns(issues.schema)
    if "reason" not in issues.schema.names:
        result.warnings.append(f"{ws.issues_path} has no reason column (written by an older labelkit); run "
                               f"`labelkit issues -w {ws.root}` again for the evidence behind each flag.")
    by_id = {r["id"]: r for r in issues.to_pylist()}
    mine = by_id.get(row_id)
    if mine is None:
        result.warnings.append(f"{row_id!r} has no row in {ws.issues_path}: `issues` did not check it.")
    else:
        _own_findings(result, mine, flag_owner)
    if ws.probs_path.exists():
        require_current(ws, ws.probs_path, items_fp=items_fp)
        task = task_of_manifest(ws.read_manifest())
        for name, value in task.explain_fields(ws, row_id, mine, top_classes=top_classes).items():
            setattr(result, name, value)
    result.neighbors = _neighbor_rows(items, neighbor_ids, sims, by_id, flag_owner) if neighbor_ids else None
    return result


def _own_findings(result: ExplainResult, mine: dict, flag_owner: dict) -> None:
    """Fill the row's reason, findings, suggested label and label quality from its issues.parquet row."""
    result.reason = mine.get("reason")
    result.findings = _findings(mine, flag_owner)
    result.suggested_label = mine.get("suggested_label")
    quality = mine.get("label_quality")
    result.label_quality = None if quality is None or np.isnan(quality) else float(quality)


def _neighbor_rows(items: pa.Table, neighbor_ids: list[str], sims: np.ndarray, by_id: dict,
                   flag_owner: dict) -> list[dict]:
    """Return the nearest rows with their labels, similarities and flags, most similar first."""
    labels = items.column("label").take(pc.index_in(pa.array(neighbor_ids, pa.string()), items.column("id")))
    out = []
    for nid, label, sim in zip(neighbor_ids, labels.to_pylist(), sims.tolist()):
        other = by_id.get(nid) or {}
        flags = [c for c in flag_owner if other.get(c)]
        out.append({"id": nid, "label": label, "similarity": round(float(sim), 4),
                    "flagged": bool(flags), "flags": flags, "reason": other.get("reason")})
    return out


def _nearest(ws: Workspace, items: pa.Table, row_id: str, k: int,
             result: ExplainResult) -> tuple[list[str], np.ndarray]:
    """Return the ids and cosine similarities of `row_id`'s k most similar usable rows (self excluded)."""
    from labelkit.features import load_workspace_embeddings
    from labelkit.workspace import require_current_embeddings

    try:
        key, emb_ids, matrix = load_workspace_embeddings(ws)
    except LabelkitError as exc:
        result.warnings.append(f"No nearest rows: {exc.message}")
        return [], np.zeros(0, np.float32)
    result.embedding_key = key
    emb_ids = pa.array(emb_ids, pa.string())
    usable = items.filter(pc.is_null(items.column("error")))
    require_current_embeddings(ws, key, usable.column("id"), usable.column("content_hash"))
    me = pc.index(emb_ids, row_id).as_py()
    if me < 0:
        result.warnings.append(f"No nearest rows: {row_id!r} has no embedding in {key}.")
        return [], np.zeros(0, np.float32)
    # Cosine: the user's own vectors (ingest --embedding-col) are stored as given, not normalised.
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    sims = (matrix @ matrix[me]) / np.maximum(norms * norms[me], np.float32(1e-12))
    # Only usable rows of the current items are neighbours; never the row itself.
    candidate = pc.is_in(emb_ids, value_set=usable.column("id").combine_chunks()).to_numpy(zero_copy_only=False)
    candidate[me] = False
    sims = np.where(candidate, sims, -np.inf).astype(np.float32)
    k = min(k, int(candidate.sum()))
    if k == 0:
        return [], np.zeros(0, np.float32)
    top = np.argpartition(-sims, k - 1)[:k]
    top = top[np.argsort(-sims[top], kind="stable")]
    return emb_ids.take(pa.array(top)).to_pylist(), sims[top]


def _issue_rows(path: Path, ids: list[str]) -> pa.Table:
    """Return the rows of issues.parquet with these ids (row groups skipped by their id statistics)."""
    return pq.read_table(path, filters=pc.field("id").isin(ids))


def _flag_columns(schema: pa.Schema) -> dict[str, object]:
    """Return {bool column of issues.parquet: the registered check declaring it}.

    A bool column that no registered check declares (written by another labelkit version) is
    still a flag; its owner is None.
    """
    from labelkit.checks import get_checks

    declared = {}
    for check in get_checks():
        for column in check.columns:
            declared.setdefault(column, check)
    return {f.name: declared.get(f.name) for f in schema if pa.types.is_boolean(f.type)}


def _findings(row: dict, flag_owner: dict) -> list[dict]:
    """Return one finding per check with a set flag column: its main flag first, then sub-flags."""
    from labelkit.checks import get_checks

    set_flags = [c for c, owner in flag_owner.items() if row.get(c)]
    findings = []
    for check in get_checks():
        mine = [c for c in set_flags if flag_owner[c] is check]
        if not mine:
            continue
        mine.sort(key=lambda c: c != check.flag)
        finding = {"check": check.name, "title": check.title, "flags": mine}
        if check.score and check.score in row:
            value = row[check.score]
            finding["score"] = {"name": check.score, "value": None if value is None or np.isnan(value) else float(value),
                                "lower_is_worse": check.score_ascending}
        if check.pair and row.get(check.pair) is not None:
            finding["related_id"] = row[check.pair]
        findings.append(finding)
    for c in set_flags:
        if flag_owner[c] is None:
            findings.append({"check": None, "title": c, "flags": [c]})
    return findings
