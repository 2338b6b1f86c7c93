"""The `labelkit` command line: parses options, calls the Python API of the same name, prints.

No logic lives here. Library errors (`LabelkitError`) become a one-line message and their exit
code in :func:`main`; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from labelkit import console
from labelkit.console import err, out, print_json as _print_json, progress as _progress, warn as _warn  # noqa: F401
from labelkit.errors import LabelkitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find what is wrong with your labels, and what to do about it.")
WorkspaceOpt = typer.Option(Path("labelkit-out"), "--workspace", "-w", help="Workspace folder.")
JsonOpt = typer.Option(False, "--json", help="Print a machine-readable summary on stdout, nothing else.")
VerboseOpt = typer.Option(False, "--verbose", help="Also print every probe candidate's score and every check, "
                                                   "including those that do not apply to the data.")
OfflineOpt = typer.Option(False, "--offline", help="Never download model weights (as HF_HUB_OFFLINE=1): the default "
                                                   "CLIP loads from the local cache or falls back to pixels.")
EngineOpt = typer.Option("local", "--engine", help="Where the work runs: local (this machine) or ray (a Ray cluster; "
                                                   "pip install \"labelkit[ray]\"). Same results either way.")
TaskOpt = typer.Option(None, "--task", help="multiclass (default), multilabel, multiannotator or regression; "
                                              "tables only (see docs/tasks.md).")
LabelsColOpt = typer.Option(None, "--labels-col", help="Multi-label: column holding a list of labels, or labels "
                                                       "joined by --label-sep.")
LabelSepOpt = typer.Option(";", "--label-sep", help="Multi-label: separator of labels in a --labels-col string.")
AnnotatorColsOpt = typer.Option(None, "--annotator-cols", help="Multi-annotator (wide): comma-separated columns, one "
                                                               "per annotator; an empty cell = not labelled.")
AnnotatorColOpt = typer.Option(None, "--annotator-col", help="Multi-annotator (long): the annotator column; one row "
                                                             "per item and annotator, grouped by --id-col.")
LabelColOpt = typer.Option(None, "--label-col", help="Label column of a table.")
TextColOpt = typer.Option(None, "--text-col", help="Text column of a table.")
ImageColOpt = typer.Option(None, "--image-col", help="Image-path column of a table (relative to the table's folder).")
IdColOpt = typer.Option(None, "--id-col", help="Unique id column of a table (default: row number).")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu or cuda.")
RayAddressOpt = typer.Option(None, "--ray-address", help="--engine ray: cluster to join, e.g. ray://head:10001 "
                                                          "(default: RAY_ADDRESS, else a new local cluster).")

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
          version: bool = typer.Option(False, "--version", help="Print the version and exit.")):
    _state["debug"] = debug
    if version:
        from labelkit import __version__
        out.print(f"labelkit {__version__}")
        raise typer.Exit(0)


# --------------------------------------------------------------------------------------------
@app.command()
def ingest(source: Path = typer.Argument(..., help="Image folder (SOURCE/<class>/<file>) or CSV/TSV/JSONL/Parquet table."),
           workspace: Path = WorkspaceOpt,
           label_col: Optional[str] = LabelColOpt,
           text_col: Optional[str] = TextColOpt,
           image_col: Optional[str] = ImageColOpt,
           split_col: Optional[str] = typer.Option(None, help="Split column of a table."),
           id_col: Optional[str] = IdColOpt,
           classes: Optional[Path] = typer.Option(None, "--classes", help="File with one class per line: fixes the class order."),
           allow_outside_root: bool = typer.Option(False, help="Accept image paths outside the table's folder, and "
                                                               "image-folder symlinks that lead out of the folder."),
           encoding: Optional[str] = typer.Option(None, help="Text encoding of a CSV/TSV/JSONL table (default utf-8)."),
           embedding_col: Optional[str] = typer.Option(None, help="Column holding your own embeddings (Parquet list of "
                                                                  "numbers, or JSON arrays in CSV/JSONL): stored as the "
                                                                  "workspace's embeddings, so no `embed` step is needed."),
           workers: Optional[int] = typer.Option(None, help="Processes checking an image folder's files (default: one per core; 0: none)."),
           task: Optional[str] = TaskOpt, labels_col: Optional[str] = LabelsColOpt, label_sep: str = LabelSepOpt,
           annotator_cols: Optional[str] = AnnotatorColsOpt, annotator_col: Optional[str] = AnnotatorColOpt,
           engine: str = EngineOpt, ray_address: Optional[str] = RayAddressOpt,
           properties: bool = typer.Option(True, "--properties/--no-properties",
                                           help="Decode each image once (as a thumbnail) for the image-property "
                                                "check (dark, light, blurry, …); --no-properties reads headers only."),
           as_json: bool = JsonOpt):
    """Read an image folder or a table into the workspace (items.parquet + manifest.json)."""
    from labelkit.ingest import ingest as run

    progress, update = _progress("Reading", quiet=as_json)
    with progress:
        result = run(source, workspace, label_col=label_col, text_col=text_col, image_col=image_col,
                     split_col=split_col, id_col=id_col, classes_file=classes,
                     allow_outside_root=allow_outside_root, encoding=encoding, progress=update,
                     engine=engine, ray_address=ray_address, embedding_col=embedding_col, workers=workers,
                     task=task, labels_col=labels_col, label_sep=label_sep, annotator_cols=annotator_cols,
                     annotator_col=annotator_col, properties=properties)
    if as_json:
        return _print_json(result.to_dict())
    console.print_ingest(result, workspace)


# --------------------------------------------------------------------------------------------
@app.command()
def embed(workspace: Path = WorkspaceOpt,
          model: str = typer.Option("auto", help="auto (MiniLM for text; for images CLIP ViT-B-32 laion2b_s34b_b79k, "
                                                 "downloaded once, or pixels when its weights cannot be had), pixels, "
                                                 "minilm-l6-v2, or an open_clip model name."),
          pretrained: Optional[str] = typer.Option(None, help="open_clip pretrained tag or local checkpoint path; "
                                                              "if it does not load, the command stops (exit 2)."),
          device: str = DeviceOpt,
          batch_size: Optional[int] = typer.Option(None, min=1, help="Images/texts per batch (default by device)."),
          workers: Optional[int] = typer.Option(None, min=0, help="Image decoding processes for CLIP, threads for the pixel baseline (default by device and model)."),
          offline: bool = OfflineOpt,
          engine: str = EngineOpt, ray_address: Optional[str] = RayAddressOpt,
          as_json: bool = JsonOpt):
    """Embed every usable row (cached by content hash; a rerun only embeds what is new)."""
    from labelkit.embed import embed as run

    progress, update = _progress("Embedding", quiet=as_json)
    with progress:
        result = run(workspace, model=model, pretrained=pretrained, device=device, batch_size=batch_size,
                     workers=workers, progress=update, engine=engine, ray_address=ray_address, offline=offline)
    if as_json:
        return _print_json(result.to_dict())
    console.print_embed(result, workspace)


# --------------------------------------------------------------------------------------------
FilterByOpt = typer.Option("prune_by_noise_rate", help="cleanlab filter_by: prune_by_noise_rate, prune_by_class, both, "
                                                       "confident_learning, predicted_neq_given, …")
def _checks_help() -> str:
    from labelkit.checks import get_checks

    return ("Checks to run, comma-separated (default: every one whose inputs exist): "
            + ", ".join(c.name for c in get_checks()) + ". See docs/checks.md.")


ChecksOpt = typer.Option(None, "--checks", help=_checks_help())
RankByOpt = typer.Option("self_confidence", help="cleanlab label-quality score: self_confidence, normalized_margin, "
                                                 "confidence_weighted_entropy.")


@app.command()
def issues(workspace: Path = WorkspaceOpt,
           pred_probs: Optional[Path] = typer.Option(None, help="Your model's out-of-sample probabilities (.npy, .csv, "
                                                                ".parquet); rows in items order or keyed by 'id'."),
           classes: Optional[Path] = typer.Option(None, "--classes", help="Column order of --pred-probs, one class per line."),
           folds: int = typer.Option(5, min=2, help="Folds of the out-of-sample probe."),
           probe: str = typer.Option("auto", help="Probe family: auto (logistic regression, kNN, MLP and their "
                                                  "average, chosen by cross-validated log-loss), logreg, knn, mlp; "
                                                  "sklearn or torch = logistic regression on that engine."),
           filter_by: str = FilterByOpt, rank_by: str = RankByOpt,
           dup_threshold: Optional[float] = typer.Option(None, help="Cosine similarity at which two rows are "
                                                                     "near-duplicates; default: the embedder's own."),
           device: str = DeviceOpt,
           seed: int = typer.Option(0, help="Seed of the fold split."),
           checks: Optional[str] = ChecksOpt,
           pred_boxes: Optional[Path] = typer.Option(None, help="Detection: your model's predicted boxes (COCO results "
                                                                "JSON or a YOLO txt folder); see docs/tasks.md."),
           engine: str = EngineOpt, ray_address: Optional[str] = RayAddressOpt,
           verbose: bool = VerboseOpt, as_json: bool = JsonOpt):
    """Find label issues (confident learning), duplicates, outliers, class imbalance and every other registered check."""
    from labelkit.issues import issues as run

    progress, update = _progress("Cross-validating probe", quiet=as_json)
    with progress:
        result = run(workspace, pred_probs=pred_probs, classes_file=classes, n_folds=folds, probe=probe,
                     filter_by=filter_by, rank_by=rank_by, dup_threshold=dup_threshold, device=device, seed=seed,
                     progress=update, engine=engine, ray_address=ray_address, checks=checks,
                     pred_boxes=pred_boxes)
    if as_json:
        return _print_json(result.to_dict())
    _warn(result.warnings)
    console.print_issues(result.summary, result.top, workspace, verbose=verbose)


@app.command()
def audit(source: Path = typer.Argument(..., help="Image folder or table, as for `labelkit ingest`."),
          workspace: Path = WorkspaceOpt,
          fail_on: Optional[List[str]] = typer.Option(None, "--fail-on", help="Gate rule(s), e.g. 'label_issue_rate>0.05,"
                                                      "duplicates>0'. Default: [tool.labelkit.gate] in pyproject.toml, "
                                                      "labelkit.toml, else label_issue_rate>0.03."),
          label_col: Optional[str] = LabelColOpt,
          text_col: Optional[str] = TextColOpt,
          image_col: Optional[str] = ImageColOpt,
          embedding_col: Optional[str] = typer.Option(None, help="Column holding your own embeddings (skips embedding; "
                                                                 "see `labelkit ingest --help`)."),
          model: str = typer.Option("auto", help="Embedding model (see `labelkit embed --help`)."),
          pretrained: Optional[str] = typer.Option(None, help="open_clip pretrained tag or checkpoint path."),
          pred_probs: Optional[Path] = typer.Option(None, help="Your own out-of-sample probabilities (skips embedding)."),
          device: str = DeviceOpt,
          report: bool = typer.Option(True, help="Write report.html and report.json."),
          offline: bool = OfflineOpt,
          task: Optional[str] = TaskOpt, labels_col: Optional[str] = LabelsColOpt, label_sep: str = LabelSepOpt,
          annotator_cols: Optional[str] = AnnotatorColsOpt, annotator_col: Optional[str] = AnnotatorColOpt,
          id_col: Optional[str] = IdColOpt,
          baseline: Optional[Path] = typer.Option(None, "--baseline", help="An earlier workspace folder or its report.json "
                                                  "(+ report.rows.parquet beside it): report what changed and gate on it, "
                                                  "e.g. --fail-on 'new_label_issues>5,label_issue_rate.delta>0.01'."),
          engine: str = EngineOpt, ray_address: Optional[str] = RayAddressOpt,
          verbose: bool = VerboseOpt, as_json: bool = JsonOpt):
    """Ingest, embed, find issues and write the report in one go; exit 1 when the gate fails."""
    from labelkit.audit import audit as run

    progress, update = _progress("Auditing", quiet=as_json)
    with progress:
        result = run(source, workspace, fail_on=fail_on, label_col=label_col, text_col=text_col, image_col=image_col,
                     model=model, pretrained=pretrained, pred_probs=pred_probs, device=device, write_report=report,
                     progress=update, engine=engine, ray_address=ray_address, offline=offline,
                     embedding_col=embedding_col, task=task, labels_col=labels_col, label_sep=label_sep,
                     annotator_cols=annotator_cols, annotator_col=annotator_col, id_col=id_col, baseline=baseline)
    if as_json:
        _print_json(result)
    else:
        console.print_audit(result, workspace, verbose=verbose)
    if not result["gate"]["passed"]:
        raise typer.Exit(1)


@app.command()
def report(workspace: Path = WorkspaceOpt,
           output: Optional[Path] = typer.Option(None, "-o", "--output", help="HTML file (default WORKSPACE/report.html)."),
           as_json: bool = JsonOpt):
    """Write the Dataset Nutrition Label: one self-contained HTML file plus report.json."""
    from labelkit.report import report as run

    result = run(workspace, output=output)
    if as_json:
        return _print_json(result.to_dict())
    out.print(f"Report: {result.html_path} ({result.bytes / 1e6:.2f} MB), numbers in {result.json_path}")


@app.command()
def explain(row_id: str = typer.Argument(..., metavar="ID", help="The row's id (as in items.parquet)."),
            workspace: Path = WorkspaceOpt,
            k: int = typer.Option(10, "-k", "--neighbors", min=1, help="Nearest rows to list (exact cosine)."),
            as_json: bool = JsonOpt):
    """Explain one row: its findings with their reasons, its probabilities and its nearest rows."""
    from labelkit.explain import explain as run

    result = run(workspace, row_id, k=k)
    if as_json:
        return _print_json(result.to_dict())
    console.print_explain(result)


# --------------------------------------------------------------------------------------------
def _strategy(value: Optional[str]):
    """An imbalanced-learn sampling strategy from the CLI: a float, a JSON dict, or a keyword."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


@app.command()
def select(method: str = typer.Argument(..., help="rs2, dsir, smote or prune."),
           workspace: Path = WorkspaceOpt,
           name: Optional[str] = typer.Option(None, help="Subset name (default: the method) → subsets/NAME.parquet."),
           fraction: Optional[float] = typer.Option(None, help="rs2: fraction of rows per epoch, in (0, 1]."),
           epochs: Optional[int] = typer.Option(None, help="rs2: number of epochs to schedule."),
           class_balanced: Optional[bool] = typer.Option(None, "--class-balanced", help="rs2: sample each class separately."),
           target: Optional[Path] = typer.Option(None, help="dsir: target workspace folder, or a .txt/.csv/.jsonl/.parquet of texts."),
           k: Optional[int] = typer.Option(None, "--k", help="dsir: number of rows to select."),
           buckets: Optional[int] = typer.Option(None, help="dsir: hashed n-gram buckets (text, 10000) or k-means clusters (images, 64)."),
           k_neighbors: Optional[int] = typer.Option(None, help="smote: nearest same-class neighbours (default 5)."),
           sampling_strategy: Optional[str] = typer.Option(None, help="smote: imbalanced-learn sampling_strategy (auto, minority, "
                                                           "not majority, a float, or JSON {\"class\": count})."),
           undersample: Optional[str] = typer.Option(None, help="smote: then randomly undersample with this strategy "
                                                     "(e.g. majority, or JSON {\"class\": count})."),
           drop: Optional[List[str]] = typer.Option(None, "--drop", help="prune: label_issues, duplicates, outliers "
                                                    "(repeatable or comma-separated; default label_issues)."),
           keep_fraction: Optional[float] = typer.Option(None, help="prune: keep this fraction with the best label quality instead."),
           seed: Optional[int] = typer.Option(None, help="Seed (rs2, dsir, smote)."),
           as_json: bool = JsonOpt):
    """Write a training subset: RS2 schedule, DSIR resample, SMOTE oversample or confident-learning prune."""
    from labelkit.selection import select as run

    given = {"fraction": fraction, "epochs": epochs, "class_balanced": class_balanced, "target": target, "k": k,
             "n_buckets": buckets, "k_neighbors": k_neighbors, "sampling_strategy": _strategy(sampling_strategy),
             "undersample": _strategy(undersample),
             "drop": [d.strip() for x in drop for d in x.split(",") if d.strip()] if drop else None,
             "keep_fraction": keep_fraction, "seed": seed}
    options = {key: v for key, v in given.items() if v is not None}  # unset options keep the method's defaults
    result = run(workspace, method, name=name, **options)
    if as_json:
        return _print_json(result.to_dict())
    console.print_select(result, method, workspace)


# --------------------------------------------------------------------------------------------
@app.command()
def relabel(workspace: Path = WorkspaceOpt,
            with_: str = typer.Option(..., "--with", help="clip (zero-shot on CLIP image embeddings) or llm "
                                                          "(OpenAI-compatible chat endpoint, text items)."),
            all_items: bool = typer.Option(False, "--all", help="Ask about every item, not only those `issues` flagged."),
            endpoint: Optional[str] = typer.Option(None, help="llm: server URL, e.g. http://localhost:8000/v1 (vLLM) or "
                                                              "http://localhost:11434/v1 (Ollama)."),
            llm_model: Optional[str] = typer.Option(None, help="llm: model name the server knows."),
            api_key_env: str = typer.Option("OPENAI_API_KEY", help="llm: environment variable holding the API key "
                                                                   "(sent as a bearer token, never printed)."),
            concurrency: int = typer.Option(4, min=1, help="llm: requests in flight at once."),
            timeout: float = typer.Option(30.0, help="llm: seconds before a request is abandoned."),
            retries: int = typer.Option(3, min=0, help="llm: retries on 429, 5xx, timeouts (exponential backoff)."),
            prompt: Optional[List[str]] = typer.Option(None, "--prompt", help="clip: prompt template(s) with {} for the "
                                                       "class name (default: an 8-template ensemble)."),
            class_names: Optional[Path] = typer.Option(None, help="clip: JSON {class: name} or CSV lines CLASS,NAME "
                                                                  "used in prompts."),
            threshold: float = typer.Option(0.5, help="clip: accept a proposal at this probability or more (and only "
                                                      "when the probe agrees)."),
            top_k_per_class: Optional[int] = typer.Option(None, help="clip: accept at most K proposals per class."),
            temperature: Optional[float] = typer.Option(None, help="clip: softmax temperature (default: the model's "
                                                                   "1/logit_scale)."),
            device: str = DeviceOpt,
            apply: bool = typer.Option(False, "--apply", help="Write the next label version (label_v2, …) from the "
                                                              "aggregated votes; `label` is never changed."),
            as_json: bool = JsonOpt):
    """Propose labels by CLIP zero-shot or an LLM; aggregate votes into soft labels; optionally apply."""
    from labelkit.relabel import relabel as run

    progress, update = _progress("Asking", quiet=as_json)
    with progress:
        result = run(workspace, method=with_, all_items=all_items, endpoint=endpoint, llm_model=llm_model,
                     api_key_env=api_key_env, concurrency=concurrency, timeout=timeout, max_retries=retries,
                     prompts=prompt, class_names=class_names, threshold=threshold, top_k_per_class=top_k_per_class,
                     temperature=temperature, device=device, apply=apply, progress=update)
    if as_json:
        return _print_json(result.to_dict())
    console.print_relabel(result, workspace)


# --------------------------------------------------------------------------------------------
def _key_values(pairs: List[str] | None, option: str) -> dict:
    """Parse repeated KEY=VALUE options; values are JSON when they parse (0.7, true), else strings."""
    out = {}
    for pair in pairs or []:
        k, sep, v = pair.partition("=")
        if not sep or not k.strip():
            raise LabelkitError(f"{option} expects KEY=VALUE, e.g. {option} q=0.7. Got {pair!r}.")
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


@app.command()
def train(workspace: Path = WorkspaceOpt,
          loss: str = typer.Option("ce", help="Loss from labelkit.losses: ce, label_smoothing, focal, gce, sce, elr, "
                                              "mixup, rankmixup_mrl, rankmixup_mndcg, decoupled_mixup, cmixup, distill."),
          param: Optional[List[str]] = typer.Option(None, "--param", help="Loss parameter KEY=VALUE (repeatable), e.g. q=0.7."),
          labels: str = typer.Option("label", help="Training labels: label (as given), a version from `relabel --apply` "
                                                   "(label_v2, …), or soft (relabel's aggregated votes)."),
          subset: Optional[str] = typer.Option(None, help="Train only on subsets/NAME.parquet from `labelkit select`."),
          eval_labels: str = typer.Option("label", help="Labels the held-out rows are scored against."),
          name: Optional[str] = typer.Option(None, help="Model name (default LOSS-LABELS[-SUBSET]) → models/NAME/."),
          head: str = typer.Option("mlp", help="mlp (one hidden layer) or linear."),
          hidden: int = typer.Option(256, min=1, help="Hidden units of the mlp head."),
          max_epochs: int = typer.Option(200, min=1, help="Upper bound on epochs (early stopping usually ends sooner)."),
          patience: int = typer.Option(20, min=1, help="Epochs without a better validation score before stopping."),
          monitor: str = typer.Option("accuracy", help="Early stopping on the inner validation rows: accuracy, nll, "
                                                       "or none (train --max-epochs, keep the last weights)."),
          batch_size: int = typer.Option(128, min=2, help="Rows per optimisation step."),
          lr: float = typer.Option(1e-3, help="AdamW learning rate."),
          weight_decay: float = typer.Option(1e-4, help="AdamW weight decay."),
          teacher: Optional[List[str]] = typer.Option(None, "--teacher", help="Teacher model(s) for --loss distill "
                                                      "(default: the issues probe's probabilities)."),
          check: bool = typer.Option(False, "--check", help="Check held-out metrics against thresholds; exit 1 on a miss."),
          fail_on: Optional[List[str]] = typer.Option(None, "--fail-on", help="Threshold rule(s), e.g. 'accuracy<0.9,ece>0.05' "
                                                      "(default: [tool.labelkit.train] fail_on in pyproject.toml)."),
          device: str = DeviceOpt,
          seed: int = typer.Option(0, help="Seed of initialisation, batch order and mixing."),
          as_json: bool = JsonOpt):
    """Train a checked model on the embeddings; report accuracy, macro-F1, NLL, ECE and Brier on held-out rows."""
    from labelkit.train import train as run

    progress, update = _progress("Training (epochs)", quiet=as_json)
    with progress:
        result = run(workspace, loss=loss, loss_params=_key_values(param, "--param"), labels=labels, subset=subset,
                     eval_labels=eval_labels, name=name, head=head, hidden=hidden, max_epochs=max_epochs,
                     patience=patience, monitor=None if monitor == "none" else monitor, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                     teachers=teacher or (), check=check, fail_on=fail_on, device=device, seed=seed, progress=update)
    if as_json:
        _print_json(result.to_dict())
    else:
        console.print_train(result)
    if not result.passed:
        raise typer.Exit(1)


# --------------------------------------------------------------------------------------------
def main(argv: List[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 ok, 1 check failed, 2 bad usage or input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is the root's option, yet the error hint invites it anywhere: move it in front of the
    # subcommand (up to a "--", after which every word is an argument).
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    if debug:
        argv = ["--debug"] + [a for a in argv[:end] if a != "--debug"] + argv[end:]
    try:
        # Without standalone mode, click returns the code of a typer.Exit instead of raising it.
        code = app(args=argv, prog_name="labelkit", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except LabelkitError as exc:
        if debug:  # the traceback, and still the documented exit code
            traceback.print_exc(file=sys.stderr)
        err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err.print("Interrupted; the workspace keeps its last complete state.")
        return 130
    except Exception as exc:
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # click's usage errors (typer vendors click)
            exc.show()
            return 2
        if debug:
            traceback.print_exc(file=sys.stderr)
            return 3
        # An unexpected bug: still one line unless --debug.
        err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} (rerun with --debug for a traceback)",
                  highlight=False, soft_wrap=True)
        return 3


def entry() -> None:
    code = main()
    # Skip the interpreter's teardown: with torch, scikit-learn, cleanlab and matplotlib loaded it
    # frees every module for about 1.5 s after the work is done (measured on 2 cores). The atexit
    # handlers still run (logging, Ray's shutdown) and the streams are flushed; every file labelkit
    # writes is closed and renamed into place before main() returns.
    import atexit
    import os

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))
