"""MkDocs hook: write the CLI reference page from the Typer app at build time."""

from __future__ import annotations

from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

PAGE = "reference/cli.md"


def cli_markdown() -> str:
    """Every `modelcycle` command with its help text, arguments and options."""
    import typer

    from modelcycle.cli import app

    lines = ["# CLI reference", "", "Generated from the commands' own help at build time.", ""]

    def walk(command: Any, path: str) -> None:
        if hasattr(command, "commands"):  # a group
            for name, sub in sorted(command.commands.items()):
                walk(sub, f"{path} {name}")
            return
        lines.extend([f"## `{path}`", "", _text(command.help), ""])
        lines.extend(["| parameter | kind | default | help |", "|---|---|---|---|"])
        for param in command.params:
            if param.name == "help":
                continue
            shown = (
                " / ".join(f"`{o}`" for o in param.opts)
                if param.opts[0].startswith("-")
                else f"`{param.name.upper()}`"
            )
            kind = "option" if param.param_type_name == "option" else "argument"
            default = "" if param.required or param.default in (None, "") else f"`{param.default}`"
            help_text = _text(getattr(param, "help", None)).replace("|", "\\|")
            lines.append(f"| {shown} | {kind} | {default} | {help_text} |")
        lines.append("")

    walk(typer.main.get_command(app), "modelcycle")
    return "\n".join(lines)


def _text(text: str | None) -> str:
    """Help text safe inside Markdown (no raw `<...>` that would read as HTML)."""
    return (text or "").strip().replace("<", "&lt;")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated page to the site's files."""
    files.append(File.generated(config, PAGE, content=cli_markdown()))
    return files
