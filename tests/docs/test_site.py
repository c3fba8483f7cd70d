"""The documentation site builds strictly, and its generated CLI page covers every command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from modelcycle.cli import app

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "docs" / "hooks"))
from cli_reference import cli_markdown  # noqa: E402


def leaf_commands(command: object, path: str = "modelcycle") -> set[str]:
    subs = getattr(command, "commands", None)
    if subs is None:
        return {path}
    return {c for name, sub in subs.items() for c in leaf_commands(sub, f"{path} {name}")}


def test_cli_reference_documents_every_command_and_option() -> None:
    page = cli_markdown()
    root = typer.main.get_command(app)
    commands = leaf_commands(root)
    assert {"modelcycle train", "modelcycle data fetch", "modelcycle serve"} <= commands
    for command in commands:
        assert f"## `{command}`" in page, command
    assert "`--mirror`" in page and "`--markdown`" in page
    assert "<workspace>" not in page  # escaped, or Markdown would read it as HTML


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    config = ["-f", str(REPO / "mkdocs.yml")]
    result = subprocess.run(  # from another folder: included files resolve from the config's
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            *config,
            "-d",
            str(tmp_path / "site"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "modelcycle data stats" in cli
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "register_task" in api and "ServingAdapter" in api
    example = (tmp_path / "site" / "add-a-task" / "index.html").read_text()
    # README sections are included, not copied: one text for both
    functional = (tmp_path / "site" / "tasks" / "twins-functional" / "index.html").read_text()
    assert "synthetic_kinship.tsv" in functional
    image = (tmp_path / "site" / "tasks" / "image" / "index.html").read_text()
    assert "Rice_Citation_Request.txt" in image
    assert "Kolmogorov" in (tmp_path / "site" / "monitoring" / "index.html").read_text()
    # the example file is included at build time, not copied into the page
    assert "BlobsServing" in example and "--8&lt;--" not in example
    assert "request_type" in example and "modelcycle.configs" in example  # adapter, pyproject
    # result plots are drawn at build time from the committed records, never committed
    for page, plots in {
        "twins": ("folds", "roc", "retrieval", "similarity"),
        "twins-functional": ("folds", "roc", "retrieval", "similarity"),
        "image": ("folds", "reliability", "confusion", "recall"),
    }.items():
        html = (tmp_path / "site" / "tasks" / page / "index.html").read_text()
        record = "image-rice" if page == "image" else page
        for plot in plots:
            png = tmp_path / "site" / "results" / record / f"{plot}.png"
            assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 5000
            assert f'src="../../results/{record}/{plot}.png"' in html, (page, plot)
        assert "&lt;!-- results" not in html and "<!-- results" not in html
    tracked = subprocess.run(
        ["git", "ls-files", "*.png"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert tracked.stdout == ""
