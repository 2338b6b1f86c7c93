"""Baselines: what changed since an earlier audit — rows, flags and metrics — and the gate metrics on it.

A baseline is an earlier workspace folder, or its ``report.json`` with the row sidecar
``report.rows.parquet`` that :func:`labelkit.report.report` writes beside it (id, content hash,
label, usability and every boolean flag of ``issues.parquet``), so that a CI artifact of two small
files is enough to compare against. Rows are matched by ``id``; a row whose id is gone but whose
content reappears under a new id counts as moved, not as removed plus new. Matching, flag and
metric comparisons are vectorised over Arrow/numpy arrays: no Python loop over rows.

The comparison feeds the gate: ``new_label_issues``, ``new_duplicates``, ``new_unusable_rows``,
``removed_rows`` (and ``new_rows``, ``changed_rows``), plus ``<metric>.delta`` (now minus
baseline) for every numeric metric of the issues summary.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from labelkit.errors import LabelkitError

METRICS = {
    "new_label_issues": "rows flagged as label issues that were not flagged in the baseline (new rows included)",
    "new_duplicates": "rows that duplicate another row and did not in the baseline (new rows included)",
    "new_unusable_rows": "rows that are unusable and were usable in the baseline (new rows included)",
    "removed_rows": "baseline rows whose id is gone and whose content did not reappear under a new id",
    "new_rows": "rows whose id (and content) the baseline does not have",
    "changed_rows": "rows with the baseline's id whose content or label differs",
}
DELTA = ".delta"
# Flag columns the gate counts as new_* metrics: (row flag, gate metric).
NEW_FLAG_METRICS = {"is_label_issue": "new_label_issues", "is_duplicate": "new_duplicates",
                    "unusable": "new_unusable_rows"}
FLAG_TITLES = {"is_label_issue": "label issue", "is_duplicate": "duplicate", "is_exact_duplicate": "exact duplicate",
               "conflicting_duplicate": "conflicting duplicate", "is_outlier": "outlier", "unusable": "unusable"}
# A flag whose summary metric is None was not measured in that run (e.g. outliers without embeddings).
FLAG_SUMMARY_METRIC = {"is_label_issue": "label_issues", "is_outlier": "outliers"}
SIDECAR_SUFFIX = ".rows.parquet"
RUN_NUMBERS = {"seconds", "dup_threshold"}  # numbers about the run, not the data: no delta
MAX_IDS = 100  # ids kept per list in the record (counts are always complete)


@dataclass
class Baseline:
    """An earlier audit, loaded into memory (the current run may overwrite its folder)."""

    path: Path
    kind: str  # "workspace" or "report"
    summary: dict | None
    classes: list[str]
    rows: pa.Table | None  # id, content_hash, label, unusable, bool flags; None: no row data
    warnings: list[str] = field(default_factory=list)


def sidecar_path(json_path: Path | str) -> Path:
    """Return where the row sidecar of a ``report.json`` lives: ``report.rows.parquet`` beside it."""
    json_path = Path(json_path)
    return json_path.with_name(json_path.stem + SIDECAR_SUFFIX)


def known_metrics() -> dict[str, str]:
    """Return the audit gate's base metrics (issues summary and registered checks): name → meaning."""
    from labelkit import gate
    from labelkit.checks import all_metrics

    return {**gate.METRICS, **all_metrics()}


# ---------------------------------------------------------------------------------------------
# Rows


def row_table(ws) -> pa.Table:
    """Return one row per item: id, content_hash, label, unusable, and the bool flags of issues.parquet.

    Flags come from ``issues.parquet`` when it was computed from the current items (else only
    ``unusable`` is there); ``is_duplicate`` is derived from ``duplicate_of``. Rows that issues
    skipped (unusable) have every flag False.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from labelkit.workspace import is_current

    items = ws.read_items_table(["id", "content_hash", "label", "error"])
    ids = items.column("id").combine_chunks()
    columns = {"id": ids, "content_hash": items.column("content_hash").combine_chunks(),
               "label": items.column("label").combine_chunks(),
               "unusable": pc.is_valid(items.column("error")).combine_chunks()}
    if is_current(ws, ws.issues_path):
        schema = pq.read_schema(ws.issues_path)
        flags = [f.name for f in schema if pa.types.is_boolean(f.type)]
        extra = ["duplicate_of"] if "duplicate_of" in schema.names else []
        issues = pq.read_table(ws.issues_path, columns=["id", *flags, *extra])
        pos = _positions(ids, issues.column("id").combine_chunks(), ~columns["unusable"].to_numpy(zero_copy_only=False))
        if extra:
            is_dup = pc.is_valid(issues.column("duplicate_of")).combine_chunks()
            columns["is_duplicate"] = pc.fill_null(is_dup.take(pos), False)
        for name in flags:
            columns[name] = pc.fill_null(issues.column(name).combine_chunks().take(pos), False)
    return pa.table(columns)


def _positions(ids: pa.Array, value_set: pa.Array, hint: np.ndarray | None = None) -> pa.Array:
    """Return the position of each id in `value_set` (null where absent), as Arrow int64.

    Fast path when `value_set` is ``ids`` in the same order, or ``ids[hint]`` (issues.parquet holds
    the usable rows in items order): then no hash table over a million strings is built.
    """
    import pyarrow.compute as pc

    keep = np.ones(len(ids), bool) if hint is None else hint
    if int(keep.sum()) == len(value_set):
        subset = ids if keep.all() else ids.filter(pa.array(keep))
        if pc.all(pc.equal(subset, value_set)).as_py() in (True, None):
            pos = np.cumsum(keep) - 1
            return pa.array(pos, pa.int64(), mask=~keep)
    return pc.index_in(ids, value_set=value_set).cast(pa.int64())


def write_rows(ws, path: Path | str) -> Path:
    """Write the row sidecar (:func:`row_table`) to `path` atomically, with the items fingerprint; return it."""
    from labelkit.workspace import current_items_fingerprint, with_fingerprint, write_table

    return write_table(with_fingerprint(row_table(ws), current_items_fingerprint(ws)), path,
                       use_dictionary=["label"], write_statistics=["id"])


def _flag_columns(rows: pa.Table) -> list[str]:
    return [f.name for f in rows.schema if pa.types.is_boolean(f.type)]


# ---------------------------------------------------------------------------------------------
# Loading


def load_baseline(path: Path | str) -> Baseline:
    """Return the baseline at `path`: a workspace folder, a folder with report.json, or a report.json.

    Raises
    ------
    LabelkitError
        Exit code 2 when `path` is missing, is neither a workspace nor a report, has no issues
        results, or its row sidecar belongs to another report.
    """
    import pyarrow.parquet as pq

    from labelkit.workspace import Workspace, is_current, read_fingerprints

    path = Path(path)
    hint = "give an earlier labelkit workspace folder or its report.json"
    if not path.exists():
        raise LabelkitError(f"Baseline {path} does not exist; {hint}.")
    ws = Workspace(path) if path.is_dir() else None
    if ws is not None and ws.exists():
        manifest = ws.read_manifest()
        summary = manifest.get("stages", {}).get("issues")
        if summary is None:
            raise LabelkitError(f"Baseline workspace {path} has no issues results; run `labelkit issues -w {path}` "
                                "(or audit it) first.")
        if not is_current(ws, ws.issues_path):
            raise LabelkitError(f"Baseline workspace {path}: {ws.issues_path.name} was computed from different data; "
                                f"run `labelkit issues -w {path}` again.")
        return Baseline(path, "workspace", summary, list(manifest.get("classes", [])), row_table(ws))
    json_path = path / "report.json" if path.is_dir() else path
    if not json_path.is_file():
        raise LabelkitError(f"Baseline {path} holds neither manifest.json + items.parquet nor report.json; {hint}.")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LabelkitError(f"Baseline {json_path} is not a labelkit report.json ({exc}); {hint}.") from None
    if not isinstance(data, dict) or "classes" not in data or "issues" not in data:
        raise LabelkitError(f"Baseline {json_path} is not a labelkit report.json (no 'classes' and 'issues'); {hint}.")
    summary = data["issues"]
    if summary is None:
        raise LabelkitError(f"Baseline {json_path} was written before any issues results; it has nothing to compare.")
    base = Baseline(json_path, "report", summary, list(data["classes"]), None)
    rows_path = sidecar_path(json_path)
    if rows_path.is_file():
        stored, _ = read_fingerprints(rows_path)
        expected = summary.get("items_fingerprint")
        if stored and expected and stored != expected:
            raise LabelkitError(f"Baseline {rows_path} belongs to other data than {json_path.name} (its items "
                                "fingerprint differs); keep the two files of one report together.")
        base.rows = pq.read_table(rows_path)
        missing = {"id", "content_hash", "label", "unusable"} - set(base.rows.column_names)
        if missing:
            raise LabelkitError(f"Baseline {rows_path} lacks column(s) {', '.join(sorted(missing))}; it is not a "
                                "labelkit row sidecar.")
    else:
        base.warnings.append(f"No {rows_path.name} beside baseline {json_path}: only metrics are compared; row "
                             "changes and newly flagged rows are not measured.")
    return base


def check_overlap(baseline: Baseline, ids: pa.Array | pa.ChunkedArray, hashes: pa.Array | pa.ChunkedArray) -> None:
    """Raise the user error when the current rows share neither an id nor a content hash with the baseline."""
    import pyarrow.compute as pc

    if baseline.rows is None or not len(ids) or not baseline.rows.num_rows:
        return
    if pc.any(pc.is_in(ids, value_set=baseline.rows.column("id").combine_chunks())).as_py():
        return
    known = pc.drop_null(baseline.rows.column("content_hash").combine_chunks())
    if pc.any(pc.is_in(pc.drop_null(hashes), value_set=known)).as_py():
        return  # renamed rows: matched by content
    raise LabelkitError(
        f"Baseline {baseline.path} shares no row id or content with this data ({len(ids):,} rows, e.g. "
        f"{ids[0].as_py()!r}; the baseline has {baseline.rows.num_rows:,}, e.g. "
        f"{baseline.rows.column('id')[0].as_py()!r}): it is an audit of a different dataset.")


# ---------------------------------------------------------------------------------------------
# Comparing


def _number(value) -> float | int | None:
    """Return `value` if it is a finite int/float (not bool), else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


def compare_metrics(before: dict | None, now: dict) -> list[dict]:
    """Return [{metric, baseline, now, delta}] for every numeric top-level metric of either summary.

    Gate metrics come first, in the gate's order; then other top-level numbers (rows, probe
    accuracy, …). Numbers describing the run rather than the data (seconds) are left out.
    ``delta`` is now − baseline, None when either side was not measured.
    """
    before = before or {}
    names = list(known_metrics())
    for summary in (now, before):
        names += [k for k, v in summary.items() if _number(v) is not None and k not in RUN_NUMBERS and DELTA not in k
                  and k not in METRICS]
    out = []
    for name in dict.fromkeys(names):
        a, b = _number(before.get(name)), _number(now.get(name))
        if a is None and b is None:
            continue
        delta = None if a is None or b is None else b - a
        if isinstance(delta, float):
            delta = round(delta, 12)  # 0.1 - 0.1 stays 0, a real change keeps 12 digits
        out.append({"metric": name, "baseline": a, "now": b, "delta": delta})
    return out


def _flag_measured(flag: str, summary: dict | None) -> bool:
    """Return whether a run with this summary measured `flag` (a skipped check or None metric did not)."""
    if not summary:
        return False
    metric = FLAG_SUMMARY_METRIC.get(flag)
    if metric is not None and metric in summary and summary[metric] is None:
        return False
    from labelkit.checks import get_checks

    # Several checks may own one flag (label issues of each task type): measured if any of them ran.
    ran = (summary.get("checks") or {})
    owners = [c.name for c in get_checks() if c.flag == flag and c.name in ran]
    return not owners or any(not ran[name].get("skipped") for name in owners)


def _flag_title(flag: str) -> str:
    if flag in FLAG_TITLES:
        return FLAG_TITLES[flag]
    from labelkit.checks import get_checks

    for check in get_checks():
        if check.flag == flag:
            return check.title
    return flag.removeprefix("is_").replace("_", " ")


def _ids(ids: pa.Array, mask: np.ndarray, limit: int = MAX_IDS) -> list[str]:
    """Return the ids of the first `limit` rows where `mask` holds (no loop over all rows)."""
    return ids.take(pa.array(np.flatnonzero(mask)[:limit])).to_pylist()


def _differs(now, then, prev: np.ndarray) -> np.ndarray:
    """Return now[i] != then[prev[i]] per row as bool, in Arrow (null equals null, differs from a value)."""
    import pyarrow.compute as pc

    now, then = now.combine_chunks(), then.combine_chunks().take(pa.array(prev))
    ne = pc.not_equal(now, then)
    return pc.if_else(pc.is_null(ne), pc.xor(pc.is_null(now), pc.is_null(then)), ne).to_numpy(zero_copy_only=False)


def compare(baseline: Baseline, ws, summary: dict) -> dict:
    """Return the record of what changed since `baseline`: rows, flags, metrics and the gate's numbers.

    Parameters
    ----------
    baseline : Baseline
        From :func:`load_baseline`.
    ws : Workspace
        The current workspace, after ``issues``.
    summary : dict
        The current issues summary.

    Returns
    -------
    dict
        ``rows`` (counts of baseline/now/matched/new/removed/changed/moved rows and example ids;
        None without row data), ``flags`` (per flag: newly flagged and no longer flagged rows),
        ``metrics`` (baseline, now, delta per metric), ``gate_metrics`` (flat numbers the gate
        tests, None = not measured) and ``warnings``.
    """
    import pyarrow.compute as pc

    from labelkit.workspace import current_items_fingerprint

    warnings = list(baseline.warnings)
    classes = list(ws.classes())
    if baseline.classes and baseline.classes != classes:
        gone = [c for c in baseline.classes if c not in classes]
        added = [c for c in classes if c not in baseline.classes]
        parts = (f"new: {', '.join(added[:10])}" if added else "", f"gone: {', '.join(gone[:10])}" if gone else "")
        detail = "; ".join(p for p in parts if p) or "same classes, other order"
        warnings.append(f"The classes differ from the baseline's ({detail}); metrics and rows are compared anyway.")
    for key, what in (("embedding_key", "embedding"), ("origin", "probabilities")):
        a, b = (baseline.summary or {}).get(key), summary.get(key)
        if a != b and a is not None and b is not None:
            warnings.append(f"The baseline's {what} came from {a!r}, this run's from {b!r}: metric deltas mix "
                            "changes of the data with changes of the model.")
    metrics = compare_metrics(baseline.summary, summary)
    record = {"source": str(baseline.path), "kind": baseline.kind,
              "items_fingerprint": current_items_fingerprint(ws), "issues_fingerprint": summary.get("fingerprint"),
              "baseline_items_fingerprint": (baseline.summary or {}).get("items_fingerprint"),
              "metrics": metrics, "rows": None, "flags": {}, "warnings": warnings}
    gate_metrics = {f"{m['metric']}{DELTA}": m["delta"] for m in metrics}
    gate_metrics |= {name: None for name in METRICS}
    if baseline.rows is None:
        record["gate_metrics"] = gate_metrics
        return record

    now, then = row_table(ws), baseline.rows
    ids_now, ids_then = now.column("id").combine_chunks(), then.column("id").combine_chunks()
    pos = pc.fill_null(_positions(ids_now, ids_then), -1).to_numpy(zero_copy_only=False).astype(np.int64)
    by_id = pos >= 0
    # Rows whose id is new but whose content a vanished baseline row had: the same row, renamed.
    gone = np.ones(then.num_rows, bool)
    gone[pos[by_id]] = False
    moved = np.zeros(len(pos), bool)
    if (~by_id).any() and gone.any():
        gone_rows = np.flatnonzero(gone)
        hash_now = now.column("content_hash").combine_chunks()
        hash_gone = then.column("content_hash").combine_chunks().take(pa.array(gone_rows))
        fresh = np.flatnonzero(~by_id)
        hit = pc.fill_null(pc.index_in(hash_now.take(pa.array(fresh)), value_set=hash_gone), -1)
        hit = hit.to_numpy(zero_copy_only=False).astype(np.int64)
        fresh, hit = fresh[hit >= 0], hit[hit >= 0]
        _, first = np.unique(hit, return_index=True)  # one new row per vanished row
        pos[fresh[first]] = gone_rows[hit[first]]
        moved[fresh[first]] = True
        gone[gone_rows[hit[first]]] = False
    matched = pos >= 0
    prev = np.maximum(pos, 0)
    col = lambda table, name: table.column(name).to_numpy(zero_copy_only=False)
    content_changed = matched & ~moved & _differs(now.column("content_hash"), then.column("content_hash"), prev)
    label_changed = matched & _differs(now.column("label"), then.column("label"), prev)
    changed = content_changed | label_changed
    if matched.any() and not (matched & ~content_changed).any():
        warnings.append("No row has the same content as in the baseline: is the baseline an audit of this dataset?")
    changed_rows = np.flatnonzero(changed)[:20]
    label_then = then.column("label").take(pa.array(pos[changed_rows])).to_pylist()
    label_now = now.column("label").take(pa.array(changed_rows)).to_pylist()
    record["rows"] = {
        "baseline": then.num_rows, "now": now.num_rows, "matched": int(matched.sum()), "new": int((~matched).sum()),
        "removed": int(gone.sum()), "changed": int(changed.sum()), "content_changed": int(content_changed.sum()),
        "label_changed": int(label_changed.sum()), "moved": int(moved.sum()),
        "new_ids": _ids(ids_now, ~matched, 20), "removed_ids": _ids(ids_then, gone, 20),
        "changed_examples": [{"id": i, "label_before": a, "label_now": b, "content_changed": bool(c)} for i, a, b, c in
                             zip(ids_now.take(pa.array(changed_rows)).to_pylist(), label_then, label_now,
                                 content_changed[changed_rows])],
    }
    for flag in dict.fromkeys([*_flag_columns(now), *_flag_columns(then)]):
        entry = {"title": _flag_title(flag), "now": None, "baseline": None, "new": None, "resolved": None,
                 "removed_flagged": None, "new_ids": [], "resolved_ids": []}
        if flag in now.column_names and (flag == "unusable" or _flag_measured(flag, summary)):
            entry["now"] = int(pc.sum(now.column(flag)).as_py() or 0)
        if flag in then.column_names and (flag == "unusable" or _flag_measured(flag, baseline.summary)):
            entry["baseline"] = int(pc.sum(then.column(flag)).as_py() or 0)
        if entry["now"] is not None and entry["baseline"] is not None:
            flag_now, flag_then = col(now, flag).astype(bool), col(then, flag).astype(bool)
            was = np.where(matched, flag_then[prev], False)
            newly = flag_now & ~was
            # Rows flagged in the baseline, still present, no longer flagged (keyed by baseline row).
            still = np.zeros(then.num_rows, bool)
            still[pos[matched]] = flag_now[matched]
            present = ~gone
            resolved = flag_then & present & ~still
            entry |= {"new": int(newly.sum()), "resolved": int(resolved.sum()),
                      "removed_flagged": int((flag_then & gone).sum()),
                      "new_ids": _ids(ids_now, newly), "resolved_ids": _ids(ids_then, resolved)}
        record["flags"][flag] = entry
    for flag, metric in NEW_FLAG_METRICS.items():
        gate_metrics[metric] = record["flags"].get(flag, {}).get("new")
    gate_metrics |= {"removed_rows": record["rows"]["removed"], "new_rows": record["rows"]["new"],
                     "changed_rows": record["rows"]["changed"]}
    record["gate_metrics"] = gate_metrics
    return record


# ---------------------------------------------------------------------------------------------
# Workspace record


def record(ws, changes: dict | None) -> None:
    """Store `changes` as the manifest's ``stages.baseline`` (with its warnings), or drop an old record."""
    if changes is not None:
        ws.update_stage("baseline", changes, warnings=changes["warnings"])
        return
    manifest = ws.read_manifest()
    if "baseline" in manifest.get("stages", {}):
        manifest["stages"].pop("baseline")
        manifest["warnings"] = [w for w in manifest.get("warnings", []) if w.get("stage") != "baseline"]
        ws.write_manifest(manifest)


def current_record(ws) -> dict | None:
    """Return ``stages.baseline`` when it describes the workspace's current issues results, else None."""
    stages = ws.read_manifest().get("stages", {})
    changes, summary = stages.get("baseline"), stages.get("issues")
    if not changes or not summary:
        return None
    if changes.get("issues_fingerprint") != summary.get("fingerprint") or \
            changes.get("items_fingerprint") != summary.get("items_fingerprint"):
        return None  # issues ran again since the comparison: it describes other results
    return changes


def describe(changes: dict) -> list[str]:
    """Return a few plain lines summing up `changes` for the terminal."""
    lines = [f"Changes since baseline {changes['source']}:"]
    rows = changes.get("rows")
    if rows:
        lines.append(f"  rows: {rows['now']:,} now, {rows['baseline']:,} in the baseline; {rows['new']:,} new, "
                     f"{rows['removed']:,} removed, {rows['changed']:,} changed "
                     f"({rows['label_changed']:,} relabelled), {rows['moved']:,} moved")
    for entry in changes["flags"].values():
        if entry["new"] or entry["resolved"]:
            lines.append(f"  {entry['title']}: {entry['new']:,} newly flagged, {entry['resolved']:,} no longer flagged")
    moved = [m for m in changes["metrics"] if m["delta"]]
    for m in moved[:12]:
        lines.append(f"  {m['metric']}: {m['baseline']:.4g} → {m['now']:.4g} ({m['delta']:+.4g})")
    return lines
