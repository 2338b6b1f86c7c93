"""What the `labelkit` commands print: rich tables and lines on stdout, progress and warnings on stderr.

Each ``print_*`` function takes the result object of one Python API call and prints it; the
commands in :mod:`labelkit.cli` (and :mod:`labelkit.cli_review`) only parse options, call the API
and hand the result here. By default a command prints what a user acts on; ``--verbose`` adds
every probe candidate's score and every check, and ``--json`` prints the complete result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

out = Console()  # results (stdout)
err = Console(stderr=True)  # progress, warnings, errors


def progress(description: str, quiet: bool = False):
    """Return (rich Progress context, callback(done, total)) drawing on stderr."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True, disable=quiet)
    task = bar.add_task(description, total=None)

    def update(done: int, total: int | None, what: str | None = None) -> None:
        # `what` names a step inside the command for a while (e.g. a weights download)
        if (what or description) != bar.tasks[0].description:
            bar.reset(task)  # a new phase: its ETA must not be estimated from the last one's speed
        bar.update(task, completed=done, total=total, description=what or description)

    return bar, update


def print_json(data) -> None:
    """Print `data` as indented JSON on stdout (the whole of a ``--json`` command's output)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def warn(messages) -> None:
    """Print each message as a WARNING line on stderr."""
    for m in messages:
        err.print(f"[bold red]WARNING:[/] {escape(m)}", highlight=False)


# --------------------------------------------------------------------------------------------- ingest, embed
def print_ingest(result, workspace: Path) -> None:
    """Print what `ingest` read: detected columns, row counts, the class table, unusable rows."""
    detected = {k: v for k, v in result.columns.items() if v}
    if detected:
        out.print("Columns: " + ", ".join(f"{k}=[bold]{v}[/]" for k, v in detected.items()), highlight=False)
    out.print(f"Ingested [bold]{result.rows}[/] rows ({result.usable_rows} usable, {result.modality}) "
              f"from {result.source} into {workspace}/items.parquet", highlight=False)
    if result.embedding_key:
        out.print(f"Your embeddings of the usable rows: {workspace}/embeddings/{result.embedding_key}.parquet "
                  "(`labelkit issues` uses them; no `embed` needed)", highlight=False)
    table = Table("class", "rows", title=f"{len(result.classes)} classes", title_justify="left")
    for c, k in result.class_counts.items():
        table.add_row(c, str(k))
    out.print(table)
    if result.unusable_by_reason:
        warn([f"{k} unusable rows: {reason}" for reason, k in result.unusable_by_reason.items()])


def print_embed(result, workspace: Path) -> None:
    """Print what `embed` did: rows embedded, cached and failed, and the first decode failures."""
    if result.warning:
        warn([result.warning])
    if result.up_to_date:
        out.print(f"Up to date: {result.rows} rows already embedded with {result.key}; nothing to do.")
    else:
        out.print(f"Embedded {result.embedded_now} rows with {result.key} ({result.dim}-d, {result.device}) in "
                  f"{result.seconds:.1f}s; {result.cached} cached, {result.skipped_unusable} unusable skipped"
                  + (f", [red]{result.failed} failed to decode[/]" if result.failed else "")
                  + f" → {workspace}/{result.path}", highlight=False)
    if result.failed:
        warn([f"{result.failed} rows could not be embedded"
              + (f" (reasons in {workspace}/{result.errors_path}), first:" if result.errors_path else ".")]
             + [f"  {e['id']}: {e['error']}" for e in result.first_errors[:3]])


# --------------------------------------------------------------------------------------------- issues, audit
def probe_line(p: dict, *, verbose: bool = False) -> str:
    """Return the one-line account of the probe choice: the chosen candidate, its score and the runner-up.

    The other candidates are counted, not listed (:func:`probe_table` lists them under ``--verbose``).
    """
    chosen = p.get("chosen") or f"{p['features']} C={p['C']:g}"
    scores = _probe_scores(p)
    rows = p.get("selection_rows") or "all"
    folds = f"{p['n_folds']}-fold " if p.get("n_folds") else ""
    best = scores.get(chosen, {}).get("log_loss")
    line = f"Probe: {chosen}, {folds}log-loss" + (f" {best:.3f}" if best is not None else "") + f" on {rows} rows"
    others = sorted((v["log_loss"], k) for k, v in scores.items() if k != chosen and v.get("log_loss") is not None)
    abandoned = len(p.get("skipped") or {})
    tried = len(scores) + abandoned
    notes = [f"runner-up {others[0][1]}: {others[0][0]:.3f}"] if others else []
    if tried > 1:
        notes.append(f"{tried} candidates" + (f", {abandoned} abandoned early" if abandoned else "")
                     + ("" if verbose else "; --verbose lists them"))
    line += f" ({'; '.join(notes)})" if notes else ""
    accuracy = p.get("cv_accuracy")
    return line + (f"; out-of-sample accuracy {accuracy:.3f}" if accuracy is not None else "")


def probe_table(p: dict) -> Table:
    """Return every probe candidate's out-of-fold score (``--verbose``), the chosen one marked."""
    chosen = p.get("chosen") or f"{p['features']} C={p['C']:g}"
    table = Table("candidate", "log-loss", "accuracy", "seconds", title="Probe candidates", title_justify="left",
                  caption=f"{p.get('n_folds')}-fold cross-validation on {p.get('selection_rows') or 'all'} rows",
                  caption_justify="left")
    for name, v in sorted(_probe_scores(p).items(), key=lambda kv: kv[1].get("log_loss", float("inf"))):
        table.add_row(escape(name) + (" [bold](chosen)[/]" if name == chosen else ""), _number(v.get("log_loss")),
                      _number(v.get("accuracy")), _number(v.get("seconds")))
    for name, why in (p.get("skipped") or {}).items():
        table.add_row(escape(name), "—", "—", f"[dim]{escape(why)}[/]")
    return table


def _probe_scores(p: dict) -> dict[str, dict]:
    """Return {candidate: {'log_loss', 'accuracy'?, 'seconds'?}} of a probe record (old records: cv_log_loss only)."""
    return p.get("candidates") or {k: {"log_loss": v} for k, v in (p.get("cv_log_loss") or {}).items()}


def _number(value) -> str:
    return "—" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def checks_table(s: dict, *, verbose: bool = False) -> tuple[Table, str | None]:
    """Return the checks table of an issues summary, and the line naming checks that need more input.

    By default only checks that apply to the run's task type are shown, and those that could not
    run for want of an input are named on one line with that input; `verbose` lists every check.
    """
    from labelkit.checks import get_checks

    task = s.get("task") or "multiclass"
    other_task = {c.name for c in get_checks() if c.tasks is not None and task not in c.tasks}
    table = Table("check", "flagged", "metrics", title="Issues", title_justify="left")
    n = max(1, s.get("usable_rows") or 0)
    wanting: dict[str, list[str]] = {}
    for name, c in (s.get("checks") or {}).items():
        if "skipped" in c and not verbose:
            if name not in other_task:
                why = c["skipped"]
                wanting.setdefault(why[len("needs "):] if why.startswith("needs ") else why, []).append(c["title"])
            continue
        if "skipped" in c:
            table.add_row(c["title"], "—", f"[dim]skipped: {c['skipped']}[/]")
            continue
        flagged = "" if c.get("flagged") is None else f"{c['flagged']} ({c['flagged'] / n:.1%})"
        metrics = ", ".join(f"{k}={'—' if v is None else (f'{v:.4g}' if isinstance(v, float) else v)}"
                            for k, v in c["metrics"].items())
        table.add_row(c["title"], flagged, metrics)
    table.add_row("Unusable rows", str(s.get("unusable_rows", 0)), "")
    line = ("Could run with more input: " + "; ".join(f"{', '.join(titles)} (with {need})"
                                                        for need, titles in wanting.items()) + ".") if wanting else None
    return table, line


def print_issues(s: dict, top: list[dict], workspace: Path, *, verbose: bool = False) -> None:
    """Print an issues summary: class order, the probe's choice, the checks, the likeliest label errors."""
    classes = list(s.get("class_counts") or {})
    if classes:
        out.print(f"Class order: {', '.join(classes)}", highlight=False)
    if s.get("probe"):
        out.print(probe_line(s["probe"], verbose=verbose), highlight=False)
        if verbose:
            out.print(probe_table(s["probe"]))
    table, wanting = checks_table(s, verbose=verbose)
    out.print(table)
    if wanting:
        out.print(wanting, highlight=False)
    if top:
        t = Table("id", "given", "suggested", "quality", title="Most likely label errors", title_justify="left")
        for row in top[:10]:
            t.add_row(row["id"], row["given_label"], row["suggested_label"], f"{row['label_quality']:.3g}")
        out.print(t)
    # No probs.parquet when no probabilities were computed (one class; --checks without a probability check).
    written = [f"{workspace}/{name}" for name in ("issues.parquet", "probs.parquet") if (Path(workspace) / name).exists()]
    out.print("→ " + ", ".join(written))


def print_gate(verdict: dict, source: str, what: str = "Gate") -> None:
    """Print each gate rule's result and the verdict on stderr."""
    for r in verdict["results"]:
        mark = "[red]FAIL[/]" if r["failed"] else "[green]pass[/]"
        value = "not measured" if r["value"] is None else "value " + (f"{r['value']:.4g}" if isinstance(r["value"], float) else str(r["value"]))
        err.print(f"  {mark} {r['rule']} ({value})", highlight=False)
    err.print((f"[bold green]{what} passed[/]" if verdict["passed"] else f"[bold red]{what} failed[/]")
              + f" (rules from {source})")


def print_audit(result: dict, workspace: Path, *, verbose: bool = False) -> None:
    """Print an audit: its warnings, the issues summary, what changed since the baseline, the report, the gate."""
    warn(w["message"] for w in result["warnings"])
    print_issues(result["summary"], result["top_label_issues"], workspace, verbose=verbose)
    if result.get("baseline"):
        from labelkit.baseline import describe

        out.print("\n".join(describe(result["baseline"])), highlight=False, markup=False)
    if result.get("report"):
        out.print(f"Report: {result['report']}")
    print_gate(result["gate"], result["gate_source"])


# --------------------------------------------------------------------------------------------- explain
def print_explain(r) -> None:
    """Print one row's explanation: findings, prediction or suggestion, probabilities, nearest rows."""
    out.print(f"[bold]{escape(r.id)}[/]: labelled {escape(repr(r.label))}"
              + ("" if r.usable else f"; [red]unusable[/]: {escape(r.error or '')}"), highlight=False)
    if not r.usable:
        return
    _print_findings(r)
    if r.prediction is not None:
        out.print(f"Out-of-sample prediction {r.prediction:.4g}"
                  + (f", residual (target − prediction) {r.residual:+.4g}" if r.residual is not None else ""),
                  highlight=False)
    elif r.suggested_label is not None and r.suggested_label != r.label:
        out.print(f"Probe suggests {escape(repr(r.suggested_label))}"
                  + (f" (label quality {r.label_quality:.3g})" if r.label_quality is not None else ""), highlight=False)
    if r.probabilities:
        t = Table("class", "out-of-sample probability", title="Probabilities", title_justify="left")
        for p in r.probabilities:
            t.add_row(escape(p["class"]), f"{p['probability']:.3f}")
        out.print(t)
    if r.neighbors:
        t = Table("id", "label", "cosine", "flagged", title=f"Nearest rows ({r.embedding_key})", title_justify="left")
        for nb in r.neighbors:
            t.add_row(escape(nb["id"]), escape(str(nb["label"])), f"{nb['similarity']:.4f}",
                      ", ".join(nb["flags"]) if nb["flagged"] else "")
        out.print(t)
    warn(r.warnings)


def _print_findings(r) -> None:
    if not r.findings:
        out.print("Not flagged by any check.")
        return
    t = Table("check", "flags", "score", title="Findings", title_justify="left")
    for f in r.findings:
        s = f.get("score")
        score = "" if not s or s["value"] is None else f"{s['name']} {s['value']:.3g}"
        t.add_row(escape(f["title"]), ", ".join(f["flags"]) + (f" → {f['related_id']}" if f.get("related_id") else ""),
                  score)
    out.print(t)
    if r.reason:
        out.print(f"Reason: {escape(r.reason)}", highlight=False)


# --------------------------------------------------------------------------------------------- select, relabel, train
def print_select(result, method: str, workspace: Path) -> None:
    """Print a written subset: its size and path, class counts before and after, the method's numbers."""
    d = result.to_dict()
    extra = {key: v for key, v in d.items() if key not in ("name", "method", "path", "size", "class_counts_before",
                                                          "class_counts_after")}
    out.print(f"Subset [bold]{result.name}[/] ({method}): {result.size} rows → {workspace}/{result.path}", highlight=False)
    if "kl_reduction" in d:
        out.print(f"KL reduction towards the target: {d['kl_reduction']:.4f}")
    table = Table("class", "before", "after" + (" (epoch 0)" if d.get("per_epoch") else ""), title="Class counts",
                  title_justify="left")
    for c, before in result.class_counts_before.items():
        table.add_row(c, str(before), str(result.class_counts_after.get(c, 0)))
    out.print(table)
    out.print(", ".join(f"{key}={v}" for key, v in extra.items() if key != "kl_reduction"), highlight=False)


def print_relabel(result, workspace: Path) -> None:
    """Print a relabel run: requests and answers, failures, proposed changes, the applied label version."""
    out.print(f"{result.method}: asked {result.asked}, answered {result.answered}, abstained {result.abstained}, "
              f"failed {result.failed}" + (f" ({result.cached} from cache)" if result.cached else "")
              + f"; accepted {result.accepted}", highlight=False)
    for error, n in result.errors.items():
        warn([f"{n} requests failed: {error}"])
    changes = [p for p in result.proposals if p["proposed_label"] and p["proposed_label"] != p["given_label"]]
    if changes:
        t = Table("id", "given", "proposed", "accepted", title="Proposed changes", title_justify="left")
        for p in changes[:15]:
            t.add_row(p["id"], p["given_label"], p["proposed_label"], "yes" if p["accepted"] else "no")
        out.print(t)
    out.print(f"→ {workspace}/relabels.parquet, {workspace}/soft_labels.parquet")
    if result.label_version:
        out.print(f"Applied: [bold]{result.label_version}[/] ({result.changed} labels changed); train on it with "
                  f"`labelkit train --labels {result.label_version}`", highlight=False)


def print_train(result) -> None:
    """Print a trained model: loss, labels, epochs, the held-out metrics table and the optional check."""
    card = result.card
    m, t = card["metrics"], card["training"]
    out.print(f"Model [bold]{card['name']}[/]: loss {card['loss']['name']} {card['loss']['params'] or ''}, labels "
              f"{card['labels']}" + (f", subset {card['subset']}" if card["subset"] else "")
              + f"; {t['rows']} training rows, stopped after {t['epochs']} epochs (best {t['best_epoch']})",
              highlight=False)
    table = Table("metric", "value", title=f"Held-out: {card['heldout']['rows']} rows", title_justify="left",
                  caption=f"scored against {card['eval_labels']!r} labels", caption_justify="left")
    for k in ("accuracy", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "nll", "ece", "brier", "mae",
              "rmse", "r2"):  # classification, multi-label or regression
        if m.get(k) is not None:
            table.add_row(k, f"{m[k]:.4f}")
    out.print(table)
    out.print(f"→ {result.model_dir}/model_card.json")
    if result.check is not None:
        print_gate(result.check, result.check["source"], "Check")
