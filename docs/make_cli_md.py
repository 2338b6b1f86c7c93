"""Regenerate docs/cli.md from the CLI's own help: `python docs/make_cli_md.py`."""

from pathlib import Path

import click
import typer

from labelkit.cli import app


def render() -> str:
    group = typer.main.get_command(app)
    lines = ["# labelkit command reference", "", "Generated from `labelkit COMMAND --help` by `docs/make_cli_md.py`.", ""]
    for name, cmd in group.commands.items():
        lines += [f"## labelkit {name}", "", (cmd.help or "").strip(), "", "| option | help |", "|---|---|"]
        for p in cmd.params:
            names = ", ".join(f"`{o}`" for o in p.opts) if p.param_type_name == "option" else f"`{p.name.upper()}`"
            default = "" if p.param_type_name != "option" or p.default in (None, False) else f" (default: {p.default})"
            lines.append(f"| {names} | {(getattr(p, 'help', '') or '').replace('|', '/')}{default} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    (Path(__file__).parent / "cli.md").write_text(render())
