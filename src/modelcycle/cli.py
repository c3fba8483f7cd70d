"""The `modelcycle` command: thin Typer commands, each calling one importable function."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from modelcycle.config import ConfigError, assemble, compose_config
from modelcycle.data.openneuro import FetchError
from modelcycle.data.tables import DataError
from modelcycle.evaluation.report import CVReport
from modelcycle.pipeline import PipelineResult, run_pipeline
from modelcycle.tracking import Tracker

app = typer.Typer(help="A deep-learning model's whole life on one machine.", no_args_is_help=True)
data_app = typer.Typer(help="Download and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
# Off a terminal (logs, CI, tests) rich would assume 80 columns and fold the summary table.
console = Console(width=None if sys.stdout.isatty() else 120)

Overrides = Annotated[
    list[str] | None, typer.Argument(help="Hydra overrides, e.g. trainer.max_epochs=5")
]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Configure logging for every command."""
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
        force=True,
    )
    # Lightning's start-up banners (accelerators, tips) say nothing about this run.
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=DeprecationWarning)


@app.command()
def tasks() -> None:
    """List the registered tasks."""
    from modelcycle.tasks import available_tasks

    for name in available_tasks():
        console.print(name)


@app.command("config")
def show_config(overrides: Overrides = None) -> None:
    """Print the composed config for the given overrides."""
    from omegaconf import OmegaConf

    with _clear_errors():
        console.print(OmegaConf.to_yaml(compose_config(overrides or [])), end="")


@app.command()
def train(overrides: Overrides = None) -> None:
    """Cross-validate the configured experiment: model and baseline on the same folds."""
    _print_result(_run(overrides or []))


@app.command()
def pipeline(
    name: Annotated[str, typer.Argument(help="Experiment name, e.g. twins")],
    overrides: Overrides = None,
) -> None:
    """Run an experiment end to end on the embedded default workspace."""
    _print_result(_run([f"experiment={name}", *(overrides or [])]))


@data_app.command("fetch")
def data_fetch(
    dataset: Annotated[str, typer.Argument(help="Dataset name: qtim")],
    dest: Annotated[Path | None, typer.Option(help="Target folder")] = None,
) -> None:
    """Download a dataset (needs internet); hashes are recorded in its manifest."""
    from modelcycle.data.qtim import fetch_structural

    if dataset != "qtim":
        raise typer.BadParameter(f"Unknown dataset {dataset!r}; available: qtim.")
    with _clear_errors():
        cfg = compose_config([])
        target = dest or Path(cfg.workspace) / "data" / "qtim"
        record = fetch_structural(target)
    console.print(f"{len(record.files)} files in {record.root} (digest {record.digest()[:12]})")


def _run(overrides: list[str]) -> PipelineResult:
    with _clear_errors():
        assembled = assemble(compose_config(overrides))
        assembled.workspace.mkdir(parents=True, exist_ok=True)
        tracker = Tracker(assembled.tracking, assembled.workspace)
        return run_pipeline(
            assembled.task,
            assembled.pipeline,
            assembled.trainer,
            tracker,
            assembled.workspace,
            assembled.resolved,
        )


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Turn expected input errors into one red line and exit code 2, not a stack trace."""
    try:
        yield
    except (ConfigError, DataError, FetchError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        console.print(f"[red]error:[/red] {message}", soft_wrap=True)
        raise typer.Exit(code=2) from err


def summary_table(report: CVReport) -> Table:
    """The report as a rich table: a row per metric and scorer, a column per fold."""
    table = Table(title=f"{report.task}: model vs baseline, {len(report.folds)} folds")
    table.add_column("metric")
    table.add_column("scorer")
    for fold in report.folds:
        table.add_column(f"fold {fold.fold}", justify="right")
    table.add_column("mean ± std", justify="right", style="bold")
    agg = report.aggregate()
    for metric in report.metrics:
        for scorer in ("model", "baseline"):
            cells = [f"{getattr(f, scorer)[metric]:.3f}" for f in report.folds]
            mean, std = agg[scorer][metric]
            label = metric if scorer == "model" else ""
            table.add_row(label, scorer, *cells, f"{mean:.3f} ± {std:.3f}")
    return table


def _print_result(result: PipelineResult) -> None:
    console.print(summary_table(result.report))
    if result.report.reference:
        ref = ", ".join(f"{k} {v:.3f}" for k, v in result.report.reference.items())
        console.print(f"Baseline over the whole dataset (no folds): {ref}", soft_wrap=True)
    console.print(f"Report and plots: {result.report_dir}", soft_wrap=True)
    console.print(f"MLflow run {result.run_id}", soft_wrap=True)
    console.print(
        f"Browse runs: mlflow ui --backend-store-uri {result.tracking_uri}", soft_wrap=True
    )
    console.print(f"Wall time: {result.report.seconds:.0f} s")
