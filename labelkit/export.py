"""Review queues for people: flagged rows as Label Studio tasks or a CSV to fill in.

``export labelstudio`` writes the rows a check flagged (or every row), worst first, as Label
Studio tasks: the image (a path, or a URL under ``url_prefix``) or the text, the given label, and
a ``predictions`` entry holding labelkit's suggested label, its score and the reason. The
labelling config (:func:`label_config`) lists the workspace's classes: ``Choices`` for one label
per row, ``Taxonomy`` for multi-label rows. ``export csv`` writes the same queue as a table with
an empty ``new_label`` column. :mod:`labelkit.review` reads the answers back.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd

from labelkit import __version__
from labelkit.checks import get_checks
from labelkit.errors import LabelkitError, parameter_error
from labelkit.workspace import Workspace, atomic_path, read_probs, require_current

# The check whose flags are a task's label verdicts: what "the flagged rows" means by default.
LABEL_CHECKS = {"multiclass": "label_issues", "multiannotator": "annotator_consensus",
                "multilabel": "multilabel_label_issues", "regression": "regression_targets"}
# Task types whose answers are one class per row (Choices) or a set of tags (Taxonomy).
SINGLE_LABEL = ("multiclass", "multiannotator")
MULTI_LABEL = ("multilabel",)
MULTI_SEP = "; "  # how a multi-label row's tags are joined in `label` (see labelkit.tasks.multilabel)
FROM_NAME = "label"  # the control tag's name in the config: the key of every answer's result
CSV_COLUMNS = ["id", "given", "suggested", "score", "reason", "item", "new_label"]


@dataclass
class ExportResult:
    """What an export wrote: the file, how many rows, from which check, and the config file."""

    path: Path
    rows: int
    check: str
    task: str
    config_path: Path | None = None
    skipped: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "rows": self.rows, "check": self.check, "task": self.task,
                "config_path": str(self.config_path) if self.config_path else None}


# ---------------------------------------------------------------------------------------------
# The queue


def review_kind(task: str, func: str) -> str:
    """Return 'choices' or 'taxonomy' for a workspace's task, or raise the user error."""
    if task in SINGLE_LABEL:
        return "choices"
    if task in MULTI_LABEL:
        return "taxonomy"
    if task == "detection":
        return _detection_kind(func)
    raise LabelkitError(f"{func} reviews class labels (multiclass, multiannotator, multilabel); this workspace's "
                        f"task is {task!r}.")


def _detection_kind(func: str) -> str:
    """Hook for detection (issue 30): boxes are reviewed as RectangleLabels once boxes.parquet exists.

    The detection task writes one row per box; its queue, config and answers need their own
    table shape (one task per image, one rectangle per box), added here and in
    :mod:`labelkit.review` when ``labelkit/tasks/detection.py`` lands.
    """
    raise LabelkitError(f"{func} does not review detection boxes yet; export the flagged images with "
                        "`labelkit export csv` and review their boxes in your tool.")


def review_queue(ws: Workspace | Path | str, *, all_rows: bool = False, check: str | None = None,
                 limit: int | None = None, func: str = "export") -> tuple[pd.DataFrame, str, str]:
    """Return (queue, check name, task): the rows to review, worst first.

    The queue has one row per item with ``id``, ``given``, ``suggested``, ``score`` (the probe's
    probability of the suggestion where probabilities exist, else the check's score), ``quality``
    (the check's score), ``reason``, ``image_path`` and ``text``.

    Parameters
    ----------
    ws : Workspace or path
        A workspace after ``labelkit issues``.
    all_rows : bool, default=False
        Every usable row, not only the flagged ones (still worst first).
    check : str, optional
        The check whose flags pick the rows (default: the task's label check).
    limit : int, optional
        Keep the `limit` worst rows.
    """
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise parameter_error("limit", func, "an int in the range [1, inf)", limit)
    manifest = ws.read_manifest()
    task = manifest.get("task") or "multiclass"
    name = check or LABEL_CHECKS.get(task)
    chosen = get_checks([name])[0] if name else None
    if chosen is None or chosen.flag is None:
        flagging = ", ".join(c.name for c in get_checks() if c.flag)
        raise parameter_error("check", func, f"a check that flags rows ({flagging})", name)
    require_current(ws, ws.issues_path)
    import pyarrow.parquet as pq

    names = pq.read_schema(ws.issues_path).names
    if chosen.flag not in names:
        raise LabelkitError(f"{ws.issues_path} has no {chosen.flag!r} column: check {name!r} did not run; run "
                            f"`labelkit issues -w {ws.root}` with it.")
    wanted = ["id", "given_label", "suggested_label", "reason", chosen.flag] + (
        [chosen.score] if chosen.score and chosen.score in names else [])
    issues = pq.read_table(ws.issues_path, columns=[c for c in dict.fromkeys(wanted) if c in names]).to_pandas()
    rows = issues if all_rows else issues[issues[chosen.flag].fillna(False).astype(bool)]
    quality = rows[chosen.score].astype(np.float64) if chosen.score in rows else pd.Series(np.nan, rows.index)
    rows = rows.assign(quality=quality.to_numpy())
    rows = rows.sort_values("quality", ascending=chosen.score_ascending, na_position="last", kind="stable")
    if limit is not None:
        rows = rows.head(int(limit))
    queue = _with_items(ws, rows, manifest)
    queue["score"] = _suggestion_scores(ws, queue, manifest, task)
    return queue.reset_index(drop=True), name, task


def _with_items(ws: Workspace, rows: pd.DataFrame, manifest: dict) -> pd.DataFrame:
    """Return `rows` joined to the items' given label, image path and text (the queue's columns)."""
    items = ws.read_items(columns=["id", "label", "image_path", "text"])
    queue = rows.merge(items, on="id", how="left", validate="one_to_one")
    given = queue["given_label"] if "given_label" in queue else queue["label"]
    suggested = queue["suggested_label"] if "suggested_label" in queue else pd.Series(None, queue.index)
    return pd.DataFrame({"id": queue["id"], "given": given.where(given.notna(), queue["label"]),
                         "suggested": suggested, "quality": queue["quality"],
                         "reason": queue["reason"] if "reason" in queue else None,
                         "image_path": queue["image_path"], "text": queue["text"]})


def _suggestion_scores(ws: Workspace, queue: pd.DataFrame, manifest: dict, task: str) -> np.ndarray:
    """Return the probe's probability of each row's suggested class (NaN where unknown), else the check's score."""
    classes = list(manifest.get("classes", []))
    if task in SINGLE_LABEL and ws.probs_path.exists() and len(queue):
        ids, probs = read_probs(ws.probs_path)
        if probs.ndim == 2 and probs.shape[1] == len(classes):
            where = pd.Series(np.arange(len(ids)), index=pd.Index(ids))
            row = where.reindex(queue["id"]).to_numpy()
            col = pd.Series(np.arange(len(classes)), index=pd.Index(classes)).reindex(queue["suggested"]).to_numpy()
            ok = ~(np.isnan(row) | np.isnan(col))
            out = np.full(len(queue), np.nan)
            out[ok] = probs[row[ok].astype(np.int64), col[ok].astype(np.int64)]
            return out
    return queue["quality"].to_numpy(np.float64)


# ---------------------------------------------------------------------------------------------
# Label Studio


def label_config(classes: list[str], *, modality: str, task: str = "multiclass") -> str:
    """Return the Label Studio labelling config (XML) for the workspace's classes.

    Shows the item (``$image`` or ``$text``), the given label and labelkit's reason, and asks for
    one class (``Choices``) or a set of tags (``Taxonomy`` for multi-label workspaces).
    """
    data = "image" if modality == "image" else "text"
    kind = review_kind(task, "label_config")
    item = (f'  <Image name="{data}" value="${data}" zoom="true"/>' if data == "image"
            else f'  <Text name="{data}" value="${data}"/>')
    header = ['  <Header value="Given label: $given_label"/>', '  <Text name="reason" value="$reason"/>']
    if kind == "choices":
        options = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
        control = (f'  <Choices name="{FROM_NAME}" toName="{data}" choice="single-radio" showInline="true">\n'
                   f"{options}\n  </Choices>")
    else:
        options = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
        control = f'  <Taxonomy name="{FROM_NAME}" toName="{data}">\n{options}\n  </Taxonomy>'
    return "\n".join(["<View>", item, *header, control, "</View>"]) + "\n"


def _answer_value(kind: str, label: str) -> dict:
    """Return a Label Studio result ``value`` holding `label` (tags joined by '; ' for taxonomy)."""
    if kind == "choices":
        return {"choices": [label]}
    tags = [t for t in str(label).split(MULTI_SEP.strip()) if t.strip()]
    return {"taxonomy": [[t.strip()] for t in tags]}


def _image_ref(path: str | None, root: Path, url_prefix: str | None) -> str | None:
    """Return the image's address for Label Studio: its path, or `url_prefix` + its path under `root`."""
    if path is None or (isinstance(path, float) and np.isnan(path)):
        return None
    if url_prefix is None:
        return str(path)
    p = Path(path)
    try:
        rel = p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = p.name
    return url_prefix + quote(rel, safe="/")


def labelstudio_tasks(queue: pd.DataFrame, *, modality: str, kind: str, source_root: Path,
                      url_prefix: str | None = None, check: str = "label_issues") -> list[dict]:
    """Return the Label Studio task dicts for `queue` (see :func:`review_queue`), in queue order.

    ``data`` holds the item, ``labelkit_id`` (the row's id, which ``import labelstudio`` matches),
    ``given_label`` and ``reason``; the one prediction is labelkit's suggestion, scored.
    """
    data_key = "image" if modality == "image" else "text"
    items = ([_image_ref(p, source_root, url_prefix) for p in queue["image_path"]] if data_key == "image"
             else queue["text"].tolist())
    out = []
    for rec, item in zip(queue.to_dict("records"), items):
        task = {"data": {data_key: item, "labelkit_id": rec["id"], "given_label": rec["given"],
                         "reason": rec["reason"] if isinstance(rec["reason"], str) else "",
                         "labelkit_check": check}}
        if isinstance(rec["suggested"], str):
            score = rec["score"] if np.isfinite(rec["score"]) else None
            task["predictions"] = [{"model_version": f"labelkit-{__version__}", "score": score,
                                    "result": [{"from_name": FROM_NAME, "to_name": data_key, "type": kind,
                                                "value": _answer_value(kind, rec["suggested"])}]}]
        out.append(task)
    return out


def _check_out(path, param: str, func: str) -> Path:
    if path is None or str(path) == "":
        raise parameter_error(param, func, "a file path", path)
    path = Path(path)
    if path.is_dir():
        raise LabelkitError(f"The {param!r} parameter of {func} must be a file path, not a folder. Got {str(path)!r} instead.")
    return path


def export_labelstudio(workspace: Workspace | Path | str, out: Path | str, *, all_rows: bool = False,
                       check: str | None = None, limit: int | None = None, url_prefix: str | None = None,
                       config_out: Path | str | None = None) -> ExportResult:
    """Return what was written: the review queue as Label Studio tasks (JSON), and optionally its config.

    Parameters
    ----------
    workspace : Workspace or path
        A workspace after ``labelkit issues``.
    out : path
        The tasks file (a JSON list, Label Studio's import format).
    all_rows, check, limit
        Which rows, as :func:`review_queue`.
    url_prefix : str, optional
        Image rows get ``url_prefix`` + their path under the source folder (e.g.
        ``/data/local-files/?d=digits/`` or ``https://bucket/images/``) instead of the file path.
    config_out : path, optional
        Also write the labelling config (:func:`label_config`) here.
    """
    func = "export_labelstudio"
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    out = _check_out(out, "out", func)
    config_path = _check_out(config_out, "config_out", func) if config_out is not None else None
    if url_prefix is not None and not isinstance(url_prefix, str):
        raise parameter_error("url_prefix", func, "a str", url_prefix)
    manifest = ws.read_manifest()
    task = manifest.get("task") or "multiclass"
    kind = review_kind(task, func)
    queue, name, task = review_queue(ws, all_rows=all_rows, check=check, limit=limit, func=func)
    modality = manifest.get("modality", "image")
    source = Path(manifest.get("source", {}).get("path", "."))
    root = source if manifest.get("source", {}).get("kind") == "image_folder" else source.parent
    tasks = labelstudio_tasks(queue, modality=modality, kind=kind, source_root=root, url_prefix=url_prefix,
                              check=name)
    config = label_config(list(manifest.get("classes", [])), modality=modality, task=task)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(tasks, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if config_path is not None:
        with atomic_path(config_path) as tmp:
            tmp.write_text(config, encoding="utf-8")
    return ExportResult(path=out, rows=len(tasks), check=name, task=task, config_path=config_path)


# ---------------------------------------------------------------------------------------------
# CSV


def export_csv(workspace: Workspace | Path | str, out: Path | str, *, all_rows: bool = False,
               check: str | None = None, limit: int | None = None) -> ExportResult:
    """Return what was written: the review queue as a CSV with an empty ``new_label`` column to fill.

    Columns: ``id``, ``given``, ``suggested``, ``score``, ``reason``, ``item`` (the image path or
    the text) and ``new_label``; rows worst first. ``labelkit import csv`` reads it back.
    """
    func = "export_csv"
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    out = _check_out(out, "out", func)
    manifest = ws.read_manifest()
    review_kind(manifest.get("task") or "multiclass", func)
    queue, name, task = review_queue(ws, all_rows=all_rows, check=check, limit=limit, func=func)
    item = queue["image_path"].where(queue["image_path"].notna(), queue["text"])
    table = pd.DataFrame({"id": queue["id"], "given": queue["given"], "suggested": queue["suggested"],
                          "score": queue["score"].round(4), "reason": queue["reason"], "item": item,
                          "new_label": ""})[CSV_COLUMNS]
    buf = io.StringIO()
    table.to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    with atomic_path(out) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    return ExportResult(path=out, rows=len(table), check=name, task=task)
