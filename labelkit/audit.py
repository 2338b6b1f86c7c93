"""`labelkit audit`: ingest → embed → issues → report in one call, then the gate's verdict."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from labelkit import baseline as changes
from labelkit import gate
from labelkit.embed import check_featurizer_options, embed
from labelkit.engines import check_engine
from labelkit.ingest import ingest
from labelkit.issues import issues
from labelkit.workspace import Workspace


def audit(source: Path | str, workspace: Workspace | Path | str = "labelkit-out", *,
          fail_on: list[str] | None = None, label_col: str | None = None, text_col: str | None = None,
          image_col: str | None = None, model: str = "auto", pretrained: str | None = None,
          pred_probs: Path | str | None = None, device: str = "auto", write_report: bool = True,
          config_start: Path | str = ".", progress: Callable | None = None, engine: str = "local",
          ray_address: str | None = None, offline: bool = False, embedding_col: str | None = None,
          task: str | None = None, labels_col: str | None = None, label_sep: str = ";",
          annotator_cols: list[str] | str | None = None, annotator_col: str | None = None,
          id_col: str | None = None, baseline: Path | str | None = None) -> dict:
    """Return the full audit summary: issues summary, top label issues, warnings and gate verdict.

    The gate rules come from `fail_on`, else the nearest config (see :mod:`labelkit.gate`), else
    the default. The caller turns ``result['gate']['passed'] is False`` into exit code 1.
    ``result['seconds']`` holds each stage's wall time (also kept in the manifest under
    ``stages.audit``), so the cost of a run can be read stage by stage.
    `engine` and `ray_address` go to every stage (see :mod:`labelkit.engines`); `offline` to
    `embed` (never download weights). With `embedding_col`, ingest stores the table's own
    embeddings and the embed step is skipped. With `baseline` (an earlier workspace or its
    report.json, see :mod:`labelkit.baseline`), what changed since it goes to ``result['baseline']``
    and the manifest, and the gate also sees its numbers (``new_label_issues``, ``METRIC.delta``).
    """
    started = time.perf_counter()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    rules, rules_source = gate.resolve_rules(fail_on, config_start=config_start)  # bad rules fail before work
    gate.check_baseline_rules(rules, rules_source, has_baseline=baseline is not None)
    on = {"engine": check_engine(engine, "audit"), "ray_address": ray_address}
    if pred_probs is None:
        check_featurizer_options(model, pretrained)  # a bad --model / --pretrained fails before ingest writes
    # Loaded before ingest: the baseline may be this very workspace, which ingest overwrites.
    base = changes.load_baseline(baseline) if baseline is not None else None
    seconds: dict[str, float] = {}
    ingested = _timed(seconds, "ingest", ingest, source, ws, label_col=label_col, text_col=text_col,
                      image_col=image_col, progress=progress, embedding_col=embedding_col, task=task,
                      labels_col=labels_col, label_sep=label_sep, annotator_cols=annotator_cols,
                      annotator_col=annotator_col, id_col=id_col, **on)
    if base is not None:  # a baseline of another dataset fails before the expensive stages
        items = ws.read_items_table(["id", "content_hash"])
        changes.check_overlap(base, items.column("id"), items.column("content_hash"))
    if pred_probs is None and ingested.embedding_key is None:
        _timed(seconds, "embed", embed, ws, model=model, pretrained=pretrained, device=device, progress=progress,
               offline=offline, **on)
    found = _timed(seconds, "issues", issues, ws, pred_probs=pred_probs, device=device, progress=progress, **on)
    result = _verdict(ws, found, base, rules, rules_source)
    if write_report:
        result["report"] = _report(ws, seconds)
    result["seconds"] = seconds | {"total": round(time.perf_counter() - started, 3)}
    ws.update_stage("audit", {"seconds": result["seconds"]})
    return result


def _timed(seconds: dict[str, float], stage: str, run: Callable, *args, **kwargs):
    """Return ``run(*args, **kwargs)``, adding its wall time to ``seconds[stage]``."""
    stage_started = time.perf_counter()
    out = run(*args, **kwargs)
    seconds[stage] = round(time.perf_counter() - stage_started, 3)
    return out


def _verdict(ws: Workspace, found, base, rules: list, rules_source: str) -> dict:
    """Return the audit result without its report and seconds: the changes since `base` and the gate's verdict."""
    diff = changes.compare(base, ws, found.summary) if base is not None else None
    changes.record(ws, diff)
    verdict = gate.evaluate(rules, found.summary | (diff["gate_metrics"] if diff else {}))
    manifest = ws.update_stage("gate", {"rules": [str(r) for r in rules], "source": rules_source, **verdict})
    return {"workspace": str(ws.root), "summary": found.summary, "top_label_issues": found.top,
            "warnings": manifest.get("warnings", []), "gate": verdict, "gate_source": rules_source,
            "report": None, "baseline": diff}


def _report(ws: Workspace, seconds: dict[str, float]) -> str | None:
    """Return the path of the report written into `ws` (None when the report stage is not installed)."""
    try:
        from labelkit.report import report  # matplotlib's chain: loaded only when a report is written
    except ImportError:  # the report stage is optional until it exists
        return None
    return str(_timed(seconds, "report", report, ws).html_path)
