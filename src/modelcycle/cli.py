"""The `modelcycle` command: thin Typer commands, each calling one importable function."""

from __future__ import annotations

import logging
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
console = Console()

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


class _clear_errors:  # noqa: N801 - used as a context manager, reads like a statement
    """Turn expected input errors into one red line and exit code 2, not a stack trace."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: object) -> bool:
        if isinstance(err, ConfigError | DataError | FetchError | KeyError):
            console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(code=2)
        return False


def summary_table(report: CVReport) -> Table:
    """The report as a rich table: per fold, then mean ± std; model beside baseline."""
    table = Table(title=f"{report.task} — model vs baseline, {len(report.folds)} folds")
    table.add_column("fold")
    for metric in report.metrics:
        table.add_column(f"{metric}\nmodel", justify="right")
        table.add_column("baseline", justify="right")
    for fold in report.folds:
        cells = [f"{v:.3f}" for m in report.metrics for v in (fold.model[m], fold.baseline[m])]
        table.add_row(str(fold.fold), *cells)
    agg = report.aggregate()
    cells = [
        f"{agg[s][m][0]:.3f} ± {agg[s][m][1]:.3f}" for m in report.metrics for s in ("model", "baseline")
    ]
    table.add_row("mean ± std", *cells, style="bold")
    return table


def _print_result(result: PipelineResult) -> None:
    console.print(summary_table(result.report))
    if result.report.reference:
        ref = ", ".join(f"{k} {v:.3f}" for k, v in result.report.reference.items())
        console.print(f"Baseline over the whole dataset: {ref}")
    console.print(f"Report and plots: {result.report_dir}")
    console.print(f"MLflow run {result.run_id}; browse with: mlflow ui --backend-store-uri {result.tracking_uri}")
    console.print(f"Wall time: {result.report.seconds:.0f} s")
