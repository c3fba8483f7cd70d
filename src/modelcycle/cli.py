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
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from modelcycle.config import (
    ConfigError,
    assemble,
    build_registry,
    compose_config,
    workspace_of,
)
from modelcycle.data.openneuro import FetchError
from modelcycle.data.tables import DataError
from modelcycle.evaluation.report import CVReport, mean_std
from modelcycle.pipeline import PipelineResult, release, run_pipeline
from modelcycle.registry import GateError, RegistryError, latest_pipeline_run
from modelcycle.registry_hooks import HookResult
from modelcycle.serving.loading import ModelLoadError
from modelcycle.serving.server import build_server, run_server
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
    with _clear_errors():
        cfg = compose_config(overrides or [])
    _print_result(_run(cfg))


@app.command()
def pipeline(
    name: Annotated[str, typer.Argument(help="Experiment name, e.g. twins")],
    overrides: Overrides = None,
) -> None:
    """Run an experiment end to end: train and evaluate, register, promote the first, export."""
    with _clear_errors():
        cfg = compose_config([f"experiment={name}", *(overrides or [])])
    result = _run(cfg)
    _print_result(result)
    with _clear_errors():
        registry = build_registry(cfg)
        model = registry.task_of(result.run_id)
        outcome = release(registry, result.run_id, model, workspace_of(cfg) / "exports")
    for message in outcome.messages:
        console.print(message, soft_wrap=True)
    if outcome.version is not None:
        console.print(f"Audit trail: modelcycle history {model}")


@app.command()
def register(
    overrides: Overrides = None,
    run: Annotated[str, typer.Option(help="MLflow run id of a pipeline run")] = "latest",
    name: Annotated[str | None, typer.Option(help="Model name (default: the task)")] = None,
    alias: Annotated[str, typer.Option(help="Alias to give the new version")] = "challenger",
    reason: Annotated[str, typer.Option(help="Why, for the audit trail")] = "registered",
) -> None:
    """Register a pipeline run's model if it beats the baseline and the champion."""
    with _clear_errors():
        cfg = compose_config(overrides or [])
        registry = build_registry(cfg)
        run_id = (
            latest_pipeline_run(registry.uri, cfg.logger.experiment) if run == "latest" else run
        )
        model_name = name or registry.task_of(run_id)
        version, hooks = registry.register(run_id, model_name, alias, reason)
    console.print(f"Registered {version.name} version {version.version} as @{alias} (run {run_id})")
    _print_hooks(hooks)


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name")],
    alias: Annotated[str, typer.Option(help="Alias to move")] = "champion",
    version: Annotated[str | None, typer.Option(help="Version (default: the challenger)")] = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit trail")] = "",
    overrides: Overrides = None,
) -> None:
    """Move an alias (default: champion) to a version; audited, hooks run."""
    with _clear_errors():
        registry = build_registry(compose_config(overrides or []))
        hooks = registry.promote(name, alias, version, reason)
        target = registry.resolve(f"{name}@{alias}")
    console.print(f"{name}@{alias} → version {target.version}")
    _print_hooks(hooks)


@app.command()
def history(
    name: Annotated[str, typer.Argument(help="Registered model name")],
    overrides: Overrides = None,
) -> None:
    """Show every alias move of a registered model: when, from, to, why, who."""
    with _clear_errors():
        moves = build_registry(compose_config(overrides or [])).history(name)
    table = Table(title=f"{name}: alias moves")
    for column in ("when", "alias", "from", "to", "reason", "who"):
        table.add_column(column)
    for m in moves:
        table.add_row(m.at, m.alias, m.previous_version or "-", m.version, m.reason, m.actor)
    console.print(table)


@app.command("export")
def export_command(
    reference: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME/VERSION")],
    overrides: Overrides = None,
) -> None:
    """Export a registered version to ONNX: parity gate, int8 variant, latency; attached to it."""
    from modelcycle.export import ParityError, export_version

    with _clear_errors():
        cfg = compose_config(overrides or [])
        registry = build_registry(cfg)
        try:
            version, report = export_version(registry, reference, workspace_of(cfg) / "exports")
        except ParityError as err:
            console.print(f"[red]parity failed:[/red] {err}", soft_wrap=True)
            raise typer.Exit(code=1) from err
    parity = report.parity
    console.print(
        f"{version.name} version {version.version}: parity max abs {parity.max_abs:.2e}, "
        f"max rel {parity.max_rel:.2e} (rtol {parity.rtol}, atol {parity.atol})"
    )
    if report.metric:
        m = report.metric
        console.print(
            f"held-out ROC-AUC fp32 {m['fp32']:.4f}, int8 {m['int8']:.4f} (delta {m['delta']:+.4f})"
        )
    console.print(report.table(), soft_wrap=True)


@app.command()
def serve(
    models_and_overrides: Annotated[
        list[str],
        typer.Argument(help="NAME@ALIAS to serve (one or more), then optional key=value overrides"),
    ],
) -> None:
    """Serve registered models over HTTP (FastAPI + ONNX Runtime) with a web page at /."""
    references = [a for a in models_and_overrides if "=" not in a]
    overrides = [a for a in models_and_overrides if "=" in a]
    if not references:
        raise typer.BadParameter("Name at least one model to serve, e.g. twins@champion.")
    with _clear_errors():
        cfg = compose_config(overrides)
        app_, config = build_server(cfg, references)
    console.print(f"Serving {', '.join(references)} on http://{config.host}:{config.port}/")
    run_server(app_, config.host, config.port)


def _print_hooks(results: list[HookResult]) -> None:
    for result in results:
        mark = "[green]ok[/green]" if result.ok else "[red]failed[/red]"
        console.print(f"hook {result.hook}: {mark} {result.detail}", soft_wrap=True)


@data_app.command("fetch")
def data_fetch(
    dataset: Annotated[str, typer.Argument(help="qtim, rice, flowers102 or signmnist")],
    dest: Annotated[Path | None, typer.Option(help="Target folder")] = None,
    synthetic: Annotated[
        bool, typer.Option(help="Write the offline stand-in (image datasets)")
    ] = False,
) -> None:
    """Download a dataset (needs internet); hashes are recorded in its manifest."""
    from modelcycle.data.image_datasets import IMAGE_SOURCES, fetch_images
    from modelcycle.data.qtim import fetch_structural

    if dataset in IMAGE_SOURCES:
        with _clear_errors():
            target = dest or workspace_of(compose_config([])) / "data" / dataset
            root = fetch_images(dataset, target, synthetic)
        console.print(f"{dataset} {'stand-in' if synthetic else 'data'} in {root}")
        return
    if dataset != "qtim":
        names = ", ".join(["qtim", *IMAGE_SOURCES])
        raise typer.BadParameter(f"Unknown dataset {dataset!r}; available: {names}.")
    if synthetic:
        raise typer.BadParameter("qtim has no synthetic stand-in; its real files are ~2 MB.")
    with _clear_errors():
        cfg = compose_config([])
        target = dest or Path(cfg.workspace) / "data" / "qtim"
        record = fetch_structural(target)
    console.print(f"{len(record.files)} files in {record.root} (digest {record.digest()[:12]})")


def _run(cfg: DictConfig) -> PipelineResult:
    with _clear_errors():
        assembled = assemble(cfg)
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
    except GateError as err:  # a refusal, not a mistake: exit 1 with both numbers
        console.print(f"[yellow]refused:[/yellow] {err}", soft_wrap=True)
        raise typer.Exit(code=1) from err
    except (ConfigError, DataError, FetchError, RegistryError, ModelLoadError, KeyError) as err:
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
            label = metric if scorer == "model" else ""
            table.add_row(label, scorer, *cells, mean_std(*agg[scorer][metric]))
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
