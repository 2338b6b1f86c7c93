"""The `labelkit` command line: parses options, calls the Python API of the same name, prints.

No logic lives here. Library errors (`LabelkitError`) become a one-line message and their exit
code in :func:`main`; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from labelkit.errors import LabelkitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find what is wrong with your labels, and what to do about it.")
out = Console()  # results (stdout)
err = Console(stderr=True)  # progress, warnings, errors

WorkspaceOpt = typer.Option(Path("labelkit-out"), "--workspace", "-w", help="Workspace folder.")
JsonOpt = typer.Option(False, "--json", help="Print a machine-readable summary on stdout, nothing else.")

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
          version: bool = typer.Option(False, "--version", help="Print the version and exit.")):
    _state["debug"] = debug
    if version:
        from labelkit import __version__
        out.print(f"labelkit {__version__}")
        raise typer.Exit(0)


def _progress(description: str, quiet: bool = False):
    """Return (rich Progress context, callback(done, total)) drawing on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, transient=True, disable=quiet)
    task = progress.add_task(description, total=None)

    def update(done: int, total: int | None) -> None:
        progress.update(task, completed=done, total=total)

    return progress, update


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _warn(messages) -> None:
    for m in messages:
        err.print(f"[bold red]WARNING:[/] {m}", highlight=False)


# --------------------------------------------------------------------------------------------
@app.command()
def ingest(source: Path = typer.Argument(..., help="Image folder (SOURCE/<class>/<file>) or CSV/TSV/JSONL/Parquet table."),
           workspace: Path = WorkspaceOpt,
           label_col: Optional[str] = typer.Option(None, help="Label column of a table."),
           text_col: Optional[str] = typer.Option(None, help="Text column of a table."),
           image_col: Optional[str] = typer.Option(None, help="Image-path column of a table (relative to the table's folder)."),
           split_col: Optional[str] = typer.Option(None, help="Split column of a table."),
           id_col: Optional[str] = typer.Option(None, help="Unique id column of a table (default: row number)."),
           classes: Optional[Path] = typer.Option(None, "--classes", help="File with one class per line: fixes the class order."),
           allow_outside_root: bool = typer.Option(False, help="Accept image paths outside the table's folder."),
           encoding: Optional[str] = typer.Option(None, help="Text encoding of a CSV/TSV/JSONL table (default utf-8)."),
           as_json: bool = JsonOpt):
    """Read an image folder or a table into the workspace (items.parquet + manifest.json)."""
    from labelkit.ingest import ingest as run

    progress, update = _progress("Reading", quiet=as_json)
    with progress:
        result = run(source, workspace, label_col=label_col, text_col=text_col, image_col=image_col,
                     split_col=split_col, id_col=id_col, classes_file=classes,
                     allow_outside_root=allow_outside_root, encoding=encoding, progress=update)
    if as_json:
        return _print_json(result.to_dict())
    detected = {k: v for k, v in result.columns.items() if v}
    if detected:
        out.print("Columns: " + ", ".join(f"{k}=[bold]{v}[/]" for k, v in detected.items()), highlight=False)
    out.print(f"Ingested [bold]{result.rows}[/] rows ({result.usable_rows} usable, {result.modality}) "
              f"from {result.source} into {workspace}/items.parquet", highlight=False)
    table = Table("class", "rows", title=f"{len(result.classes)} classes", title_justify="left")
    for c, k in result.class_counts.items():
        table.add_row(c, str(k))
    out.print(table)
    if result.unusable_by_reason:
        _warn([f"{k} unusable rows: {reason}" for reason, k in result.unusable_by_reason.items()])


# --------------------------------------------------------------------------------------------
@app.command()
def embed(workspace: Path = WorkspaceOpt,
          model: str = typer.Option("auto", help="auto (MiniLM for text; CLIP if its weights load, else pixels, for "
                                                 "images), pixels, minilm-l6-v2, or an open_clip model name."),
          pretrained: Optional[str] = typer.Option(None, help="open_clip pretrained tag or local checkpoint path."),
          device: str = typer.Option("auto", help="auto, cpu or cuda."),
          batch_size: Optional[int] = typer.Option(None, min=1, help="Images/texts per batch (default by device)."),
          workers: Optional[int] = typer.Option(None, min=0, help="Image decoding processes (default by device)."),
          as_json: bool = JsonOpt):
    """Embed every usable row (cached by content hash; a rerun only embeds what is new)."""
    from labelkit.embed import embed as run

    progress, update = _progress("Embedding", quiet=as_json)
    with progress:
        result = run(workspace, model=model, pretrained=pretrained, device=device, batch_size=batch_size,
                     workers=workers, progress=update)
    if as_json:
        return _print_json(result.to_dict())
    if result.warning:
        _warn([result.warning])
    if result.up_to_date:
        out.print(f"Up to date: {result.rows} rows already embedded with {result.key}; nothing to do.")
    else:
        out.print(f"Embedded {result.embedded_now} rows with {result.key} ({result.dim}-d, {result.device}) in "
                  f"{result.seconds:.1f}s; {result.cached} cached, {result.skipped_unusable} unusable skipped"
                  + (f", [red]{result.failed} failed to decode[/]" if result.failed else "")
                  + f" → {workspace}/{result.path}", highlight=False)


# --------------------------------------------------------------------------------------------
def main(argv: List[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 ok, 1 check failed, 2 bad usage or input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        app(args=argv, prog_name="labelkit", standalone_mode=False)
        return 0
    except LabelkitError as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
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
            raise
        # An unexpected bug: still one line unless --debug.
        err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc} (rerun with --debug for a traceback)",
                  highlight=False, soft_wrap=True)
        return 3


def entry() -> None:
    sys.exit(main())
