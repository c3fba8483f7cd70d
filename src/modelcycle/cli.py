"""The `modelcycle` command: thin Typer commands, each calling one importable function."""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

# Before torch loads OpenMP, which reads it once: idle threads sleep instead of spinning. On a
# machine shared with other jobs, spinning threads made training 4-5x slower (README, images).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from modelcycle.interrupts import ctrl_c_outside_store
from modelcycle.logs import configure as configure_logging
from modelcycle.ranks import is_rank_zero
from modelcycle.stop_signals import sigterm_as_ctrl_c, stop_exit_code, stopped_by

# The command imports each subsystem where a command needs it: `modelcycle --help`, a
# command's --help and shell completion (which runs the program at every Tab) would
# otherwise first import torch, Lightning, MLflow and FastAPI, 5-10 s on a 2-core machine.
if TYPE_CHECKING:
    from omegaconf import DictConfig

    from modelcycle.evaluation.report import CVReport
    from modelcycle.monitoring.drift import DriftSummary
    from modelcycle.pipeline import PipelineResult
    from modelcycle.registry_hooks import HookResult
    from modelcycle.registry_listing import ModelRow, VersionRow
    from modelcycle.sweep import SweepResult, TrialRecord
    from modelcycle.tasks.base import DataSummary

CommandFunction = TypeVar("CommandFunction", bound=Callable[..., Any])


class _Commands(typer.Typer):
    """Typer whose commands say so and exit 130 at a Ctrl-C that nothing inside handled.

    SIGTERM stops a command the same way (`modelcycle.stop_signals`), with exit code 143.

    Each command imports what it uses first, outside its `_clear_errors` block; a Ctrl-C
    there (the first seconds of a command) otherwise reached Typer, which exits 130 silently.
    """

    def command(self, *args: Any, **kwargs: Any) -> Callable[[CommandFunction], CommandFunction]:
        """Register the decorated function wrapped by `_interruptible`; return it unchanged."""
        register = super().command(*args, **kwargs)

        def decorate(function: CommandFunction) -> CommandFunction:
            register(_interruptible(function))
            return function

        return decorate


def _interruptible(command: CommandFunction) -> CommandFunction:
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with sigterm_as_ctrl_c(), ctrl_c_outside_store():
                return command(*args, **kwargs)
        except KeyboardInterrupt as err:
            if is_rank_zero():
                _say("interrupted:", "yellow", f"stopped at {stopped_by()}.")
            raise typer.Exit(code=stop_exit_code()) from err

    return cast("CommandFunction", run)


app = _Commands(help="A deep-learning model's whole life on one machine.", no_args_is_help=True)
data_app = _Commands(help="Download and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
report_app = _Commands(help="Turn run reports into other forms.", no_args_is_help=True)
app.add_typer(report_app, name="report")
# Off a terminal (logs, CI, tests) rich would assume 80 columns and fold the summary table.
# No markup: what is printed holds reasons, paths, hook output and error messages, whose
# brackets Rich read as tags ("[/runbooks/x]" in a promote reason broke `history` for good).
# Styled words go through `_say`.
console = Console(width=None if sys.stdout.isatty() else 120, markup=False)

Overrides = Annotated[
    list[str] | None, typer.Argument(help="Hydra overrides, e.g. trainer.max_epochs=5")
]
#: Overrides of commands that read the tracked runs and the registry, not a training config.
StoreOverrides = Annotated[
    list[str] | None,
    typer.Argument(help="Where the runs and registry are: workspace=DIR or logger.uri=URL"),
]
RegistryOverrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="Config overrides: workspace=DIR, logger.uri=URL, registry.hooks=[...] (see docs)"
    ),
]
MonitorOverrides = Annotated[
    list[str] | None,
    typer.Argument(help="Config overrides, e.g. monitor.alpha=0.01 monitor.min_captures=50"),
]
#: Robustness reads the drift test's alpha and the served file, not min_captures (its windows
#: set how many rows a test takes: --window).
RobustnessOverrides = Annotated[
    list[str] | None,
    typer.Argument(help="Config overrides, e.g. monitor.alpha=0.01 serve.variant=int8"),
]
LoadtestOverrides = Annotated[
    list[str] | None,
    typer.Argument(help="Config overrides, e.g. loadtest.users=20 loadtest.duration_s=60"),
]


@app.callback()
def main(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Log at DEBUG, with the libraries' own lines (Lightning, MLflow, HTTP) and "
            "where an error came from",
        ),
    ] = False,
) -> None:
    """Configure logging for every command."""
    # The other ranks of a DDP run share the terminal: only their warnings are news.
    configure_logging(logging.INFO if is_rank_zero() else logging.WARNING, verbose)
    # Lightning's own use of a torch class torch now deprecates (a DeprecationWarning in
    # older torch, a FutureWarning since), printed at every fit: nothing a user can change.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # PyG's own use of torch.jit.script, which torch now deprecates, printed at its import.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    # MLflow draws a progress bar for each local artifact copy (a model, a report): many
    # lines of bars in a log for copies that take milliseconds.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # And two lines with a link at the end of each run tracked on a server: a pipeline is a
    # run per fold, the final fit and their parent; the command prints the way there once.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


@app.command()
def tasks() -> None:
    """List the registered tasks, each with the experiments that run it."""
    from modelcycle.config import experiments_by_task
    from modelcycle.tasks import task_names

    runs = experiments_by_task()
    for name in task_names():
        listed = ", ".join(f"experiment={e}" for e in runs.get(name, [])) or f"task={name}"
        console.print(f"{name:<18} {listed}{_provider(name)}", soft_wrap=True, markup=False)


def _provider(task: str) -> str:
    """What `modelcycle tasks` adds after a task of another installed package: where from."""
    from importlib.metadata import version

    from modelcycle.tasks import BUILTIN

    if task in BUILTIN:  # known without importing the task registry (torch, Lightning)
        return ""
    from modelcycle.tasks import get_task
    from modelcycle.tracking import task_packages

    packages = task_packages(get_task(task))
    return f"  (from {', '.join(f'{p} {version(p)}' for p in packages)})" if packages else ""


@app.command("config")
def show_config(
    overrides: Overrides = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Also check every value as train would (kinds, ranges, choices, the data the "
            "task reads), and the serve, monitor and loadtest groups as those commands would, "
            "without reading data; exit 2 naming the first bad one",
        ),
    ] = False,
) -> None:
    """Print the composed config for the given overrides."""
    from omegaconf import OmegaConf

    from modelcycle.config import (
        assemble,
        compose_config,
        loadtest_config,
        monitor_config,
        serve_config,
    )

    with _clear_errors():
        cfg = compose_config(overrides or [])
        console.print(OmegaConf.to_yaml(cfg), end="")
        if check:
            assemble(cfg, overrides or [])  # the task, its data source and model: no data read
            for group in (serve_config, monitor_config, loadtest_config):
                group(cfg)  # what serve, monitor, robustness and loadtest refuse at their start
            console.print(
                "# every value checks out: train would start with this config, and serve, "
                "monitor and loadtest take their settings"
            )


@app.command()
def train(overrides: Overrides = None) -> None:
    """Cross-validate the configured experiment: model and baseline on the same folds."""
    from modelcycle.config import compose_config

    with _clear_errors():
        cfg = compose_config(overrides or [])
    _print_result(_run(cfg, overrides or []))


@app.command()
def evaluate(
    run: Annotated[
        str, typer.Argument(help="A train run: its MLflow run id, its report folder, or latest")
    ],
    overrides: StoreOverrides = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the report (default: the run's report folder)")
    ] = None,
) -> None:
    """Re-score a train run's fold checkpoints beside the baseline on the same test folds.

    Writes the report (summary, metrics.json, plots) and logs it to the same MLflow run.
    """
    from modelcycle.config import compose_config

    with _clear_errors():
        store, moved = _evaluate_overrides(overrides or [])
        result = _evaluate(compose_config(store), run, out, moved)
    _print_result(result)


#: What `evaluate` takes on its command line besides the store (workspace, logger.*): where
#: the run's data are now.
DATA_KEYS = ("data.root", "data.download_dir", "data.cache_dir")


def _evaluate_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """`evaluate`'s overrides as (where the store is, where the run's data moved to).

    Raises:
        ConfigError: Any other override: the run is re-scored with its own recorded config,
            which a training setting on this command line would not change.
    """
    from modelcycle.config import ConfigError

    store, moved = [], []
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        if "=" not in override or key == "workspace" or key.startswith("logger."):
            store.append(override)
        elif key in DATA_KEYS:
            moved.append(override)
        else:
            raise ConfigError(
                f"{override}: evaluate re-scores the run with the config it was trained with, "
                "which this would not change. Give where the run is (workspace=DIR, "
                "logger.uri=URL) or where its data are now (data.root=DIR); to change "
                "training settings, train again."
            )
    return store, moved


def _evaluate(
    cfg: DictConfig, run: str, out: Path | None, moved: list[str] | None = None
) -> PipelineResult:
    """Find the run in the configured store, rebuild its task from its own config, re-score.

    `moved` (`data.root=DIR`, ...) says where the run's data are now; the data's content hash
    must still be the run's.
    """
    from omegaconf import OmegaConf

    from modelcycle.config import assemble, tracking_settings, trained_store, workspace_of
    from modelcycle.evaluate import evaluate_run, locate_run
    from modelcycle.pipeline import PipelineResult
    from modelcycle.tracking import Tracker

    tracking, workspace, uri = tracking_settings(cfg), workspace_of(cfg), trained_store(cfg)
    found = locate_run(run, uri, tracking.experiment)
    config = OmegaConf.merge(OmegaConf.create(found.config), OmegaConf.from_dotlist(moved or []))
    recorded = assemble(config)  # type: ignore[arg-type]
    settings = recorded.pipeline
    tracker = Tracker(tracking, workspace)
    report = evaluate_run(
        recorded.task, found, settings.n_folds, settings.seed, tracker, out or found.report_dir
    )
    return PipelineResult(report, out or found.report_dir, found.run_id, uri)


@app.command()
def pipeline(
    name: Annotated[str, typer.Argument(help="Experiment name, e.g. twins")],
    overrides: Overrides = None,
) -> None:
    """Run an experiment end to end: train and evaluate, register, promote the first, export."""
    from modelcycle.config import ConfigError, compose_config, experiment_names, workspace_of

    with _clear_errors():
        if "=" in name:  # an override where the experiment's name belongs
            given = [name, *(overrides or [])]
            named = [o for o in given if o.partition("=")[0].lstrip("+") == "experiment"]
            experiment = named[-1].partition("=")[2] if named else "twins"
            rest = [o for o in given if o not in named]
            raise ConfigError(
                f"{name!r} is an override, not an experiment: name the experiment first, e.g. "
                f"`modelcycle pipeline {shlex.join([experiment, *rest])}`; experiments: "
                f"{', '.join(experiment_names())}."
            )
        cfg = compose_config([f"experiment={name}", *(overrides or [])])
    result = _run(cfg, overrides or [])
    _print_result(result)
    if is_rank_zero():
        _release(cfg, result.run_id, workspace_of(cfg) / "exports", overrides or [])


@app.command("release")
def release_command(
    overrides: RegistryOverrides = None,
    run: Annotated[
        str,
        typer.Option(help="A train run: MLflow run id, its (or its evaluation's) report folder"),
    ] = "latest",
    out: Annotated[
        Path | None, typer.Option(help="Folder for the ONNX files (default: <workspace>/exports)")
    ] = None,
) -> None:
    """Register a train run if it passes the gate, make a first version champion, export it.

    The run comes first (`modelcycle release RUN [OVERRIDES]`) or as --run; default latest.
    """
    from modelcycle.config import build_registry, compose_config, workspace_of

    with _clear_errors():
        overrides, run = _leading_run(overrides, run)
        cfg = compose_config(overrides)
        run_id = _run_id(run, build_registry(cfg).uri, cfg.logger.experiment)
    code = _release(cfg, run_id, out or workspace_of(cfg) / "exports", overrides)
    if code:
        raise typer.Exit(code=code)


def _run_id(run: str, uri: str, experiment: str) -> str:
    """The MLflow run id `run` names: latest, a report folder (train's or evaluate's), or an id.

    An id is left to the registry, which says how to find one when it has no such run.
    """
    from modelcycle.registry import latest_pipeline_run

    if run == "latest":
        return latest_pipeline_run(uri, experiment)
    if Path(run).is_dir() or os.sep in run or "/" in run:  # a folder, or a path to none
        from modelcycle.evaluate import locate_run

        return locate_run(run, uri, experiment).run_id
    return run


def _leading_run(overrides: list[str] | None, run: str) -> tuple[list[str], str]:
    """`register RUN [OVERRIDES]`: a first word that is no override is the run, like --run."""
    from modelcycle.config import ConfigError

    rest = list(overrides or [])
    if not rest or "=" in rest[0] or rest[0].startswith("~"):
        return rest, run
    if run != "latest":
        raise ConfigError(f"Two runs given, {rest[0]!r} and --run {run}: give one.")
    return rest[1:], rest[0]


#: The overrides that say where the runs and the registry are, carried into printed commands.
STORE_KEYS = ("workspace", "logger.uri")


def _release(cfg: DictConfig, run_id: str, exports: Path, overrides: list[str]) -> int:
    """Release one run (see `pipeline.release`); 1 when the gate refused it, else 0.

    The hint it ends with carries the `overrides` that say where the registry is.
    """
    from modelcycle.config import build_registry
    from modelcycle.pipeline import release

    stopped = (
        "a version it registered stays, @challenger and not exported (nothing is served from "
        "it); the same `modelcycle release` exports it and makes a first version champion"
    )
    with _clear_errors(stopped):
        registry = build_registry(cfg)
        model = registry.task_of(run_id)
        outcome = release(registry, run_id, model, exports)
    for message in outcome.messages:
        console.print(message, soft_wrap=True)
    if outcome.version is None:
        return 1
    store = [o for o in overrides if o.partition("=")[0].lstrip("+") in STORE_KEYS]
    console.print(f"Audit trail: modelcycle history {shlex.join([model, *store])}", soft_wrap=True)
    return 0


@app.command()
def register(
    overrides: RegistryOverrides = None,
    run: Annotated[
        str,
        typer.Option(help="A pipeline run: MLflow run id, its (or its evaluation's) report folder"),
    ] = "latest",
    name: Annotated[str | None, typer.Option(help="Model name (default: the task)")] = None,
    alias: Annotated[str, typer.Option(help="Alias to give the new version")] = "challenger",
    reason: Annotated[str, typer.Option(help="Why, for the audit trail")] = "registered",
) -> None:
    """Register a pipeline run's model if it beats the baseline and the champion.

    The run comes first (`modelcycle register RUN [OVERRIDES]`) or as --run; default latest.
    """
    from modelcycle.config import build_registry, compose_config
    from modelcycle.registry import champion_note

    with _clear_errors():
        overrides, run = _leading_run(overrides, run)
        cfg = compose_config(overrides)
        registry = build_registry(cfg)
        run_id = _run_id(run, registry.uri, cfg.logger.experiment)
        model_name = registry.task_of(run_id) if name is None else name
        version, hooks = registry.register(run_id, model_name, alias, reason)
    console.print(f"Registered {version.name} version {version.version} as @{alias} (run {run_id})")
    note = champion_note(version)
    if note is not None:
        console.print(f"  {note}", soft_wrap=True)
    _print_hooks(hooks)


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name")],
    alias: Annotated[str, typer.Option(help="Alias to move")] = "champion",
    version: Annotated[str | None, typer.Option(help="Version (default: the challenger)")] = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit trail")] = "",
    overrides: RegistryOverrides = None,
) -> None:
    """Move an alias (default: champion) to a version; audited, hooks run."""
    from modelcycle.config import ConfigError, build_registry, compose_config

    with _clear_errors():
        if overrides and overrides[0].isdigit():  # `promote twins 3`: a version, not an override
            raise ConfigError(
                f"{overrides[0]!r}: give the version as an option, e.g. "
                f"`modelcycle promote {name} --version {overrides[0]}`."
            )
        registry = build_registry(compose_config(overrides or []))
        hooks = registry.promote(name, alias, version, reason)
        target = registry.resolve(f"{name}@{alias}")
    if hooks is None:
        console.print(
            f"{name}@{alias} is already version {target.version}: nothing moved, nothing "
            "added to the history, no hooks run."
        )
        return
    console.print(f"{name}@{alias} → version {target.version}")
    _print_hooks(hooks)
    if (unservable := _not_servable(target.tags)) is not None:
        _say(
            "note:",
            "yellow",
            f"{name} version {target.version} {unservable}: a server following @{alias} keeps "
            "the version it serves, and logs every failed reload, until `modelcycle export "
            f"{name}@{alias}` succeeds.",
        )


def _not_servable(tags: dict[str, str]) -> str | None:
    """Why a version's tags say it cannot be served yet (no finished export), or None."""
    from modelcycle.export_status import OK, RUNNING, STATUS_TAG

    status = tags.get(STATUS_TAG)
    if status == RUNNING:
        return "is being exported (or its export was stopped)"
    if status is not None and status != OK:
        return f"has a failed export ({status.partition(':')[2].strip() or 'no reason'})"
    if "export.fp32.sha256" not in tags:
        return "is not exported"
    return None


@app.command()
def history(
    name: Annotated[str, typer.Argument(help="Registered model name")],
    overrides: RegistryOverrides = None,
) -> None:
    """Show every alias move of a registered model: when, from, to, why, who."""
    from modelcycle.config import build_registry, compose_config

    with _clear_errors():
        moves = build_registry(compose_config(overrides or [])).history(name)
    table = Table(title=f"{name}: alias moves")
    for column in ("when", "alias", "from", "to", "reason", "who"):
        table.add_column(column, no_wrap=column != "reason")  # the reason wraps, if any
    for m in moves:
        table.add_row(m.at, m.alias, m.previous_version or "-", m.version, m.reason, m.actor)
    console.print(table)


@app.command()
def models(
    name_and_overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="A registered model's name, to list its versions; and where the registry is: "
            "workspace=DIR or logger.uri=URL",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (a list of objects), for scripts")
    ] = False,
) -> None:
    """List the registered models, or one model's versions: aliases, gate metric, export."""
    from modelcycle.config import build_registry, compose_config
    from modelcycle.registry_listing import model_rows, version_rows

    given = name_and_overrides or []
    names = [a for a in given if "=" not in a]
    if len(names) > 1:
        raise typer.BadParameter(f"Name one model, or none to list them all; got {names}.")
    with _clear_errors():
        registry = build_registry(compose_config([a for a in given if "=" in a]))
        if names:
            rows: list[Any] = version_rows(registry, names[0])
        else:
            rows = model_rows(registry)
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    if names:
        console.print(versions_table(names[0], rows))
    elif rows:
        console.print(models_table(rows))
    else:
        console.print(
            f"No registered models in {registry.uri}; `modelcycle pipeline twins` trains, "
            "registers and exports one."
        )


def models_table(rows: list[ModelRow]) -> Table:
    """The registered models: task, versions, the latest, where each alias points."""
    table = Table(title="registered models")
    for column in ("model", "task", "versions", "latest", "aliases"):
        table.add_column(column, no_wrap=column != "aliases")
    for r in rows:
        aliases = ", ".join(f"@{a} → {v}" for a, v in sorted(r.aliases.items())) or "-"
        table.add_row(r.name, r.task or "-", str(r.versions), r.latest, aliases)
    return table


def versions_table(name: str, rows: list[VersionRow]) -> Table:
    """A model's versions, newest first: aliases, gate metric beside the baseline, export."""
    metrics = {r.metric for r in rows if r.metric}
    metric = metrics.pop() if len(metrics) == 1 else "gate metric"
    table = Table(title=f"{name}: versions (cross-validated {metric}: model, baseline)")
    for column in ("version", "registered", "aliases", "model", "baseline", "export", "git"):
        table.add_column(column, no_wrap=column != "export")
    for r in rows:
        model = "-" if r.model_mean is None else f"{r.model_mean:.3f}"
        if r.model_std is not None:
            model += f" ± {r.model_std:.3f}"
        baseline = "-" if r.baseline_mean is None else f"{r.baseline_mean:.3f}"
        export = f"{r.export} ({', '.join(r.variants)})" if r.variants else r.export
        git = r.git_sha[:10] + (" (dirty)" if r.git_dirty == "True" else "")
        aliases = ", ".join(f"@{a}" for a in r.aliases) or "-"
        when = r.registered.replace("T", " ").replace("+00:00", " UTC")
        table.add_row(r.version, when, aliases, model, baseline, export, git)
    return table


@app.command()
def relocate(
    former: Annotated[
        Path | None,
        typer.Option(help="The folder it was moved from (default: read from its store)"),
    ] = None,
    overrides: StoreOverrides = None,
) -> None:
    """Rewrite a moved or copied workspace's stored paths to the folder it is in now."""
    from modelcycle.config import ConfigError, compose_config, tracking_settings, workspace_of
    from modelcycle.relocation import relocate as relocate_store
    from modelcycle.tracking import workspace_lock, workspace_store

    with _clear_errors():
        cfg = compose_config(overrides or [])
        if (uri := tracking_settings(cfg).uri) is not None:
            raise ConfigError(
                f"logger.uri={uri}: that store records paths of its own; relocate rewrites a "
                "workspace's own mlflow.db (leave logger.uri unset)."
            )
        workspace = workspace_of(cfg)
        with workspace_lock(workspace):  # no alias move or registration meanwhile
            done = relocate_store(workspace_store(workspace), former)
    if done.old is None:
        console.print(f"{workspace}: its stored paths are its own already; nothing rewritten.")
        return
    console.print(
        f"Rewrote {done.values} stored paths from {done.old} to {workspace.resolve()}; the "
        f"store as it was: {done.backup}",
        soft_wrap=True,
    )


@app.command("export")
def export_command(
    reference: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME/VERSION")],
    overrides: RegistryOverrides = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the files (default: <workspace>/exports)")
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Export and check here, attaching nothing to the version (files, tags)",
        ),
    ] = False,
) -> None:
    """Export a registered version to ONNX: parity gate, int8 variant, latency; attached to it."""
    from modelcycle.config import build_registry, compose_config, workspace_of
    from modelcycle.export import ParityError, export_version

    stopped = (
        f"nothing was attached to {reference}, which keeps its last export's files and tags "
        "and serves as before (a stop while files were attached leaves it unserved until "
        "an export of it finishes)"
    )
    with _clear_errors("" if check else f"{stopped}; run the export again"):
        cfg = compose_config(overrides or [])
        registry = build_registry(cfg)
        try:
            version, report = export_version(
                registry, reference, out or workspace_of(cfg) / "exports", attach=not check
            )
        except ParityError as err:
            _say("parity failed:", "red", err)
            raise typer.Exit(code=1) from err
    parity = report.parity
    console.print(
        f"{version.name} version {version.version}: parity max abs {parity.max_abs:.2e}, "
        f"max rel {parity.max_rel:.2e} (rtol {parity.rtol}, atol {parity.atol})"
    )
    console.print(f"int8: {report.int8_method}")
    if report.metric:
        m = report.metric
        console.print(
            f"held-out {report.metric_name} fp32 {m['fp32']:.4f}, int8 {m['int8']:.4f} "
            f"(delta {m['delta']:+.4f}; on the final fit's validation rows, which chose its "
            "checkpoint: read the delta, and the cross-validated folds for the level)",
            soft_wrap=True,
        )
    console.print(report.table(), soft_wrap=True)
    if check:
        console.print(
            f"Checked only: nothing attached to {version.name} version {version.version}."
        )


@app.command()
def serve(
    models_and_overrides: Annotated[
        list[str],
        typer.Argument(
            help="NAME@ALIAS to serve (one or more), then overrides such as serve.port=8080 "
            "serve.host=0.0.0.0 serve.variant=int8"
        ),
    ],
    port: Annotated[
        int | None, typer.Option(help="The port (as serve.port=N)", show_default=False)
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="The address (as serve.host=ADDR)", show_default=False)
    ] = None,
) -> None:
    """Serve registered models over HTTP (FastAPI + ONNX Runtime) with a web page at /."""
    from modelcycle.config import compose_config, serve_config
    from modelcycle.serving.server import (
        build_server,
        check_address,
        check_references,
        run_server,
        served_url,
    )
    from modelcycle.serving.workers import run_workers

    references = [a for a in models_and_overrides if "=" not in a]
    overrides = [a for a in models_and_overrides if "=" in a]
    overrides += [f"serve.port={port}"] if port is not None else []
    overrides += [f"serve.host={host}"] if host is not None else []
    if not references:
        raise typer.BadParameter("Name at least one model to serve, e.g. twins@champion.")
    with _clear_errors():
        cfg = compose_config(overrides)
        config = serve_config(cfg)
        check_address(config.host, config.port)
        if config.workers > 1:
            check_references(cfg, references)
        else:
            app_, config = build_server(cfg, references)
    where = served_url(config.host, config.port)
    workers = f"{config.workers} worker{'s' if config.workers > 1 else ''}"
    console.print(f"Serving {', '.join(references)} on {where} ({workers})")
    if config.workers > 1:
        run_workers(
            references,
            overrides,
            config.host,
            config.port,
            config.workers,
            config.max_connections,
        )
    else:
        run_server(app_, config.host, config.port, config.max_connections)


@app.command()
def predict(
    reference: Annotated[str, typer.Argument(help="NAME@ALIAS of an exported model")],
    source: Annotated[
        Path,
        typer.Argument(
            help="The requests: a .jsonl file (a JSON request body per line, as the HTTP API "
            "takes it), a .json list of them, or a folder of files (images) or one file",
            show_default=False,
        ),
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="workspace=DIR, logger.uri=URL, serve.variant=int8, serve.body_limit=N"
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the answers [default: SOURCE.predictions.jsonl beside it]"
        ),
    ] = None,
) -> None:
    """Score a file of requests offline: the server's answers, one JSON line per input.

    Each input goes through the same route, validation, batching and ONNX session as a
    request to `modelcycle serve`, in this process and without a socket. Exit 1 when any
    input was refused (each refusal is written with its reason).
    """
    from modelcycle.batch_predict import PredictInputError, read_inputs
    from modelcycle.batch_predict import predict as score
    from modelcycle.config import compose_config, serve_config
    from modelcycle.serving.app import create_app
    from modelcycle.serving.loading import load_served, split_alias
    from modelcycle.serving.server import check_references

    target = out or source.with_name(f"{source.name.removesuffix(source.suffix)}.predictions.jsonl")
    with _clear_errors(f"{target} holds the answers written so far"):
        name = split_alias(reference, "predict")[0]
        if target.exists():
            raise PredictInputError(
                f"{target} exists; give --out a new file (nothing is overwritten)."
            )
        inputs = read_inputs(source)
        cfg = compose_config([*(overrides or []), "serve.capture=false"])
        config = serve_config(cfg)
        registry = check_references(cfg, [reference])
        # Offline: no key between this process and itself, no alias to follow, and time
        # for every queued batch (the deadline is for clients waiting on a socket).
        settings = replace(config.settings, api_key=None, reload_seconds=0.0, deadline_ms=3.6e6)

        def load() -> list[Any]:
            threads, variant = settings.threads, config.variant
            return [load_served(registry, reference, config.cache_dir, threads, variant)]

        app_ = create_app(load, settings)
        scored = score(
            app_,
            name,
            inputs,
            target,
            in_flight=2 * settings.max_batch,
            progress=lambda n: console.print(f"scored {n:,} inputs", style="dim"),
        )
    total = scored.answered + scored.refused
    console.print(f"{scored.answered:,} of {total:,} inputs answered; answers in {target}")
    if scored.refused:
        _say("refused:", "yellow", f"{scored.refused:,} inputs, each with its reason in {target}:")
        for reason, count in scored.reasons.most_common(5):
            console.print(f"  {count:,} × {reason}")
        raise typer.Exit(code=1)


@app.command()
def monitor(
    reference: Annotated[str, typer.Argument(help="NAME@ALIAS of a served model")],
    overrides: MonitorOverrides = None,
    since: Annotated[
        str | None, typer.Option(help="Only captures this recent: 45s, 30m, 2h, 1d")
    ] = None,
    last: Annotated[int | None, typer.Option(help="Only the newest N captures", min=1)] = None,
) -> None:
    """Test a model's captured requests for drift against its reference; exit 1 on drift.

    Exit codes: 0 no drift, 1 drift, 2 too few captures or bad input.
    """
    from modelcycle.config import (
        build_registry,
        compose_config,
        monitor_config,
        serve_config,
        workspace_of,
    )
    from modelcycle.monitoring.drift import TooFewCapturesError
    from modelcycle.monitoring.monitor import monitor as check

    started = None if since is None else time.time() - parse_duration(since)
    with _clear_errors():
        cfg = compose_config(overrides or [])
        settings = monitor_config(cfg).drift
        registry = build_registry(cfg)
        try:
            served = serve_config(cfg)  # the file the server ran, where it captured
            run = check(
                registry,
                reference,
                workspace_of(cfg),
                settings,
                started,
                last,
                served.variant,
                capture=served.capture_file,
                cache=served.cache_dir,
            )
        except (TooFewCapturesError, FileNotFoundError) as err:
            _say("error:", "red", err)
            raise typer.Exit(code=2) from err
    summary = run.check.summary
    console.print(drift_table(summary))
    verdict = ("DRIFT:", "red") if summary.drift_detected else ("no drift:", "green")
    _say(*verdict, summary.detail)
    console.print(f"Report: {run.report_dir}", soft_wrap=True)
    raise typer.Exit(code=1 if summary.drift_detected else 0)


@app.command()
def robustness(
    reference: Annotated[str, typer.Argument(help="NAME@ALIAS of an exported model")],
    overrides: RobustnessOverrides = None,
    window: Annotated[
        int | None,
        typer.Option(
            help="Requests per drift-test window [default: 50, or half the shifted rows when "
            "there are fewer than 100]",
            min=2,
            show_default=False,
        ),
    ] = None,
    windows: Annotated[int, typer.Option(help="Windows tested per shift size", min=1)] = 20,
) -> None:
    """Inject the task's shifts into its held-out rows and test whether drift checks see them.

    Shifts by task: twins, site or thickness offset, noise, missing measures; functional
    twins, global offset, noise, parcel dropout; images and tiles, darkening and blur; nodes,
    feature noise and dropped links. Plots the model's metric on the shifted held-out rows
    and the drift test's detection rate against each kind's steps.

    Writes robustness.json and robustness.png under <workspace>/reports/.
    """
    from modelcycle.config import (
        build_registry,
        compose_config,
        monitor_config,
        serve_config,
        workspace_of,
    )
    from modelcycle.monitoring.robustness import robustness as study

    with _clear_errors():
        cfg = compose_config(overrides or [])
        settings = monitor_config(cfg).drift
        served = serve_config(cfg)
        try:
            run = study(
                build_registry(cfg),
                reference,
                workspace_of(cfg),
                settings,
                window,
                windows,
                variant=served.variant,
                cache=served.cache_dir,
            )
        except ValueError as err:
            _say("error:", "red", err)
            raise typer.Exit(code=2) from err
    table = Table("shift", "size", run.metric, "flagged", "rows")
    for p in run.points:
        table.add_row(p.shift, f"{p.size:g}", f"{p.metric:.3f}", f"{p.flagged:.0%}", str(p.pool))
    console.print(table)
    console.print(
        f"{run.metric}: of the {run.variant} model on the version's {run.held_out} held-out "
        "rows, shifted (few rows make coarse steps); flagged: the share of "
        f"{windows} windows of {run.window} rows the drift test flags; rows: the shifted rows "
        "the windows are drawn from.",
        soft_wrap=True,
    )
    if window is not None and run.window < window:
        _say(
            "note:",
            "yellow",
            f"windows of {run.window} rows, all the shifted rows there are, not --window "
            f"{window}: each window holds the same rows, so a shift reads 0 % or 100 % flagged.",
        )
    console.print(f"Plot and JSON: {run.out}", soft_wrap=True)


@app.command()
def loadtest(
    url: Annotated[str, typer.Argument(help="The server, e.g. http://127.0.0.1:8000")],
    overrides: LoadtestOverrides = None,
    users: Annotated[
        int | None, typer.Option(help="Concurrent users (loadtest.users)", min=1)
    ] = None,
    spawn_rate: Annotated[
        float | None, typer.Option(help="Users started per second (loadtest.spawn_rate)")
    ] = None,
    duration: Annotated[
        str | None, typer.Option(help="How long: 30s, 2m (loadtest.duration_s)")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name when several are served")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the reports (default: a new one in reports/)")
    ] = None,
    requests: Annotated[
        Path | None,
        typer.Option(
            help="Requests to send instead of the model's examples: a JSON list of bodies, "
            "JSON Lines, or a folder of PNG/JPEG images"
        ),
    ] = None,
) -> None:
    """Load test a running server with Locust; exit 1 when a budget (p99, errors, RPS) is missed.

    Budgets and defaults come from the `loadtest` config group (loadtest.p99_ms=100 ...).
    """
    from modelcycle.config import compose_config, loadtest_config, workspace_of
    from modelcycle.loadtest import LoadTestError, run_loadtest
    from modelcycle.report_folders import ReportFolder

    with _clear_errors():
        cfg = compose_config(overrides or [])
        plan, budgets = loadtest_config(cfg)
        folder = out or ReportFolder(workspace_of(cfg) / "reports", "loadtest")
    try:
        plan = replace(
            plan,
            users=plan.users if users is None else users,
            spawn_rate=plan.spawn_rate if spawn_rate is None else spawn_rate,
            duration_s=parse_duration(duration) if duration else plan.duration_s,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err

    def starting(name: str) -> None:
        console.print(
            f"Locust: {plan.users} user{'s' if plan.users != 1 else ''} for "
            f"{plan.duration_s:g} s against {url} ({name}) ..."
        )

    try:
        result = run_loadtest(
            url, plan, budgets, folder, model, cfg.serve.api_key, starting, requests
        )
    except LoadTestError as err:
        _say("error:", "red", err)
        raise typer.Exit(code=2) from err
    console.print(
        f"{result.model}: {result.requests} requests, {result.rps:.1f} req/s, "
        f"p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms, errors {result.error_rate:.2%}"
    )
    for miss in result.misses:
        _say("budget missed:", "red", miss)
    if result.passed:
        _say("every budget met", "green")
    console.print(f"Report (CSV, HTML, summary.json): {result.report_dir}", soft_wrap=True)
    raise typer.Exit(code=0 if result.passed else 1)


@app.command()
def sweep(
    overrides: Overrides = None,
    trials: Annotated[
        int | None,
        typer.Option(help="Finished trials the study should reach (sweep.trials)", min=1),
    ] = None,
    study: Annotated[
        str | None, typer.Option(help="Study name; the same name resumes it (default: run_name)")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL of the study (default: sqlite in the workspace)"),
    ] = None,
) -> None:
    """Search hyperparameters with Optuna: resumable, shareable through a SQL database.

    Each trial cross-validates the experiment with sampled values from `sweep.space` and
    scores the task's primary metric (mean over folds); every trial is a tracked run.
    """
    from modelcycle.config import ConfigError, assemble, compose_config, sweep_config
    from modelcycle.sweep import CrossValidation, SweepError, redact, run_sweep
    from modelcycle.tracking import Tracker

    base = overrides or []
    with _clear_errors():
        cfg = compose_config(base)
        plan = sweep_config(cfg, trials, study, storage)
        assembled = assemble(cfg, base)
        # Data that cannot be fetched or read fails every trial: find out before the first.
        _, summary = assembled.task.load()
        assembled.workspace.mkdir(parents=True, exist_ok=True)
        tracker = Tracker(assembled.tracking, assembled.workspace)
        objective = CrossValidation(
            lambda extra: assemble(compose_config([*base, *extra])), tracker
        )
        metric = assembled.task.primary_metric
        console.print(
            f"Study {plan.study.name!r} on {redact(plan.study.storage)}: "
            f"up to {plan.study.trials} finished trials (those already in it count), "
            f"maximizing {metric}",
            soft_wrap=True,
        )
        try:
            result = run_sweep(
                plan.study,
                plan.space,
                objective,
                tracker,
                metric,
                plan.report_dir,
                _print_trial,
                assembled.resolved,
                (*reported_errors(), KeyboardInterrupt),
                summary.data_hash,
            )
        except SweepError as err:
            raise ConfigError(str(err)) from err
    console.print(sweep_table(result, console.width))
    if result.best is not None:
        best = result.best
        console.print(f"Best: trial {best.number}, {metric} {best.value:.4f}")
        chosen = [p.override(best.params[p.path]) for p in plan.space if p.path in best.params]
        # Quoted for a POSIX shell: a value with braces, spaces or quotes pastes as one word.
        console.print(
            f"Train with it: modelcycle train {shlex.join([*base, *chosen])}",
            soft_wrap=True,
            markup=False,
        )
    console.print(f"Best parameters, trials and plot: {result.report_dir}", soft_wrap=True)


def _print_trial(trial: TrialRecord, finished: int, target: int, best: TrialRecord | None) -> None:
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    best_text = "-" if best is None else f"{best.value:.4f} (trial {best.number})"
    console.print(
        f"[{finished}/{target}] trial {trial.number} {trial.state}: value {value}, "
        f"best {best_text}",
        soft_wrap=True,
        markup=False,
    )


def sweep_table(result: SweepResult, width: int = 120) -> Table:
    """Every trial of the study: state, value and parameters, the best marked.

    A column per parameter when they all fit in `width` characters; otherwise one column
    of `name=value` pairs, wrapped, so no value is cut short.
    """
    table = Table(title=f"{result.study}: {len(result.trials)} trials ({result.ran} run now)")
    paths = sorted({k for t in result.trials for k in t.params})
    # The last part of each path is the header when that names it alone (lr, dropout).
    names = [p.rpartition(".")[2] for p in paths]
    headers = [n if names.count(n) == 1 else p for n, p in zip(names, paths, strict=True)]
    rows = [
        (
            str(t.number),
            t.state,
            "-" if t.value is None else f"{t.value:.4f}",
            [_short(t.params.get(p)) for p in paths],
        )
        for t in result.trials
    ]
    fixed = ("trial", "state", result.metric)
    columns = [*fixed, *headers]
    cells = [[number, state, value, *params] for number, state, value, params in rows]
    by_column = _fits([[c, *(r[i] for r in cells)] for i, c in enumerate(columns)], width)
    for column in fixed if not by_column else columns:
        table.add_column(column, justify="right", no_wrap=True)
    if not by_column:
        table.add_column("parameters", overflow="fold")
    best = result.best.number if result.best else None
    for t, (number, state, value, params) in zip(result.trials, rows, strict=True):
        style = "bold green" if t.number == best else None
        if by_column:
            table.add_row(number, state, value, *params, style=style)
        else:
            pairs = "  ".join(f"{h}={v}" for h, v in zip(headers, params, strict=True))
            table.add_row(number, state, value, pairs, style=style)
    return table


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "-" if value is None else str(value)


@report_app.command("docs-results")
def docs_results(
    report_dir: Annotated[Path, typer.Argument(help="A run's report folder (holds summary.json)")],
    out: Annotated[
        Path,
        typer.Option(
            help="Where to write the record, e.g. docs/results/x.json; a folder gets "
            "<report folder's name>.json"
        ),
    ],
    command: Annotated[str, typer.Option(help="How the run was started, shown in the docs")] = "",
) -> None:
    """Write a run's per-fold metrics and curves as the small record the docs plot from."""
    from modelcycle.evaluation.results import ResultsError, results_record, write_record

    with _clear_errors():  # an --out that cannot be written: one line too
        try:
            path = write_record(results_record(report_dir, command), out)
        except ResultsError as err:
            _say("error:", "red", err)
            raise typer.Exit(code=2) from err
    size = path.stat().st_size / 1024
    console.print(f"Wrote {path} ({size:.0f} KiB) from {report_dir}", soft_wrap=True)


def parse_duration(text: str) -> float:
    """Seconds in a duration such as 45s, 30m, 2h or 1d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = text[:-1], text[-1:].lower()
    try:
        seconds = float(number) * units[unit]
    except (KeyError, ValueError):
        raise typer.BadParameter(
            f"{text!r} is not a duration; write a number and a unit s, m, h or d, e.g. 30m."
        ) from None
    if not seconds > 0:
        raise typer.BadParameter(f"{text!r}: the duration must be positive, e.g. 30m.")
    return seconds


def drift_table(summary: DriftSummary) -> Table:
    """One row per tested column: statistic (KS, or chi-square for a class), p-value, means."""
    table = Table(
        title=f"{summary.model} v{summary.version}: {summary.n_current} requests vs "
        f"{reference_rows(summary)} (p < {summary.threshold or 0:.3g} drifts)"
    )
    for column in ("column", "kind", "KS", "p-value", "mean (ref.)", "mean (now)", "drift?"):
        table.add_column(
            column,
            justify="left" if column in ("column", "kind") else "right",
            no_wrap=column in ("column", "kind"),  # names whole; the headers may wrap
        )
    for f in summary.features:
        table.add_row(
            f.name,
            f.kind,
            _num(f.statistic, ".3f"),
            _num(f.p_value, ".2g"),
            _num(f.reference_mean, ".4g"),
            _num(f.current_mean, ".4g"),
            Text("yes", style="red") if f.drifted else "no",
        )
    return table


def reference_rows(summary: DriftSummary) -> str:
    """The reference rows the columns were tested against, as the drift table's title says.

    "732 reference rows", and the fewer rows of the model's outputs (left out where the
    reference trained the model) when there are any.
    """
    said = f"{summary.n_reference} reference rows"
    fewer = sorted(
        {f.n_reference for f in summary.features if f.n_reference is not None}
        - {summary.n_reference}
    )
    if fewer:
        counts = " or ".join(map(str, fewer))
        said += f" ({counts} for the model's outputs: the rows that never trained it)"
    return said


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _print_hooks(results: list[HookResult]) -> None:
    for result in results:
        mark = ("ok", "green") if result.ok else ("failed", "red")
        console.print(
            Text.assemble(f"hook {result.hook}: ", mark, f" {result.detail}"), soft_wrap=True
        )


@data_app.command("fetch")
def data_fetch(
    dataset: Annotated[
        str,
        typer.Argument(
            help="qtim, qtim-synthetic, rice, flowers102, signmnist, bcss, wikics, or a data "
            "group an installed package adds"
        ),
    ],
    dest: Annotated[Path | None, typer.Option(help="Target folder")] = None,
    synthetic: Annotated[
        bool,
        typer.Option(
            help="Write the offline stand-in (rice, flowers102, signmnist, bcss, wikics), drawn "
            "as `pipeline ... data.synthetic=true` draws it"
        ),
    ] = False,
    mirror: Annotated[
        str,
        typer.Option(
            help="qtim: copy from this local copy instead of downloading; qtim-synthetic: "
            "draw families from this copy's participants.tsv"
        ),
    ] = "",
    modality: Annotated[str | None, typer.Option(help="qtim: structural (default) or func")] = None,
    families: Annotated[int | None, typer.Option(help="qtim-synthetic: families", min=1)] = None,
    volumes: Annotated[
        int | None, typer.Option(help="qtim-synthetic: volumes per run", min=1)
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="workspace=DIR: the workspace whose data/ it goes to without --dest"),
    ] = None,
) -> None:
    """Download a dataset (hashes recorded), or write its offline stand-in."""
    given_overrides = overrides or []
    given = {
        "--synthetic": synthetic,
        "--mirror": bool(mirror),
        "--modality": modality is not None,
        "--families": families is not None,
        "--volumes": volumes is not None,
    }
    with _clear_errors():
        _options_apply(dataset, [option for option, set_ in given.items() if set_])
    if dataset == "qtim-synthetic":
        _fetch_synthetic(dest, families, volumes, mirror, given_overrides)
    elif dataset == "qtim":
        _fetch_qtim(dest, modality or "structural", mirror, synthetic, given_overrides)
    else:
        _fetch_source(dataset, dest, synthetic, given_overrides)


def _fetch_qtim(
    dest: Path | None, modality: str, mirror: str, synthetic: bool, overrides: list[str]
) -> None:
    from modelcycle.config import compose_config
    from modelcycle.data.qtim import fetch_structural
    from modelcycle.data.qtim_functional import fetch_functional

    downloads = {"structural": fetch_structural, "func": fetch_functional}
    if modality not in downloads:
        raise typer.BadParameter(
            f"Unknown modality {modality!r} of qtim; available: {_fetch_names()}."
        )
    if synthetic:
        raise typer.BadParameter(
            "qtim has no synthetic stand-in: its structural files are ~2 MB; for the offline "
            "rest-fMRI cohort use `modelcycle data fetch qtim-synthetic`."
        )
    with _clear_errors():
        cfg = compose_config(overrides)
        target = dest or Path(cfg.workspace) / "data" / "qtim"
        record = downloads[modality](target, Path(mirror) if mirror else None)
    console.print(f"{len(record.files)} files in {record.root} (digest {record.digest()[:12]})")


def _fetch_source(dataset: str, dest: Path | None, synthetic: bool, overrides: list[str]) -> None:
    """Fetch data group `dataset` as its source fetches itself (`pipeline` draws the same)."""
    from hydra.utils import instantiate

    from modelcycle.config import compose_config
    from modelcycle.data.fetchable import source_class

    with _clear_errors():
        if source_class(dataset) is None:
            raise typer.BadParameter(f"{_not_fetched(dataset)}; available: {_fetch_names()}.")
        data = compose_config([f"data={dataset}", *overrides]).data
        target = dest or Path(data.download_dir)
        more = {"synthetic": synthetic} if synthetic else {}
        source = instantiate(data, root=None, download_dir=target, **more)
        root = source.resolve_root()
    console.print(f"{dataset} {'stand-in' if synthetic else 'data'} in {root}")


def _not_fetched(dataset: str) -> str:
    from modelcycle.config import data_configs
    from modelcycle.data.fetchable import OWN_COMMANDS

    if dataset in OWN_COMMANDS:
        return f"data group {dataset} is fetched as qtim (--modality func) or qtim-synthetic"
    if dataset in data_configs():
        return (
            f"data group {dataset} is read from data.root only: its source downloads nothing "
            "(one `data fetch` can fetch has resolve_root() and takes download_dir)"
        )
    return f"Unknown dataset {dataset!r}"


def _fetch_names() -> str:
    from modelcycle.data.fetchable import fetchable

    names = ["qtim (--modality structural or func)", "qtim-synthetic", *fetchable()]
    return ", ".join(names)


#: The options of `data fetch` QTIM's datasets take, beside --dest (qtim refuses --synthetic
#: with a line of its own); a data group's source takes --synthetic if it takes `synthetic`.
FETCH_OPTIONS = {
    "qtim": ("--mirror", "--modality", "--synthetic"),
    "qtim-synthetic": ("--mirror", "--families", "--volumes"),
}


def _options_apply(dataset: str, given: list[str]) -> None:
    """Refuse a `data fetch` option the dataset does not take, rather than ignore it."""
    from modelcycle.data.fetchable import source_class, takes

    takes_options: tuple[str, ...]
    if dataset in FETCH_OPTIONS:
        takes_options = FETCH_OPTIONS[dataset]
    elif (cls := source_class(dataset)) is not None:
        takes_options = ("--synthetic",) if takes(cls, "synthetic") else ()
    else:
        return  # an unknown dataset: said below, with the names
    if extra := [option for option in given if option not in takes_options]:
        options = [
            "--dest",
            *(o for o in takes_options if o != "--synthetic" or dataset != "qtim"),
        ]
        which = f"{', '.join(options[:-1])} and {options[-1]}" if len(options) > 1 else options[0]
        raise typer.BadParameter(
            f"{', '.join(extra)}: not {'an option' if len(extra) == 1 else 'options'} of "
            f"{dataset}, which takes {which}."
        )


def _fetch_synthetic(
    dest: Path | None, families: int | None, volumes: int | None, mirror: str, given: list[str]
) -> None:
    from omegaconf import OmegaConf

    from modelcycle.config import check_group, compose_config
    from modelcycle.data.qtim_functional import FunctionalSource

    overrides = ["data=qtim_func", *given]
    overrides += [f"data.synthetic_dir={dest}"] if dest else []
    overrides += [f"data.qtim_root={mirror}"] if mirror else []
    overrides += [f"data.families={families}"] if families is not None else []
    overrides += [f"data.n_volumes={volumes}"] if volumes is not None else []
    with _clear_errors():
        cfg = compose_config(overrides)
        check_group(OmegaConf.to_container(cfg, resolve=True), "data")  # type: ignore[arg-type]
        source = FunctionalSource(**_data_settings(cfg))
        root = source.resolve_root()
    console.print(f"Synthetic QTIM-shaped cohort in {root}", soft_wrap=True)


#: What a Ctrl-C leaves of `data prepare`: each parcel series is cached as it is computed,
#: the outputs are renamed into place together at the end (each written then renamed).
PREPARE_AT_CTRL_C = (
    "the parcel series computed so far are kept in data.cache_dir, and the next run starts "
    "from them; the files in the workspace's prepared/qtim-func stay the last finished "
    "run's, whole, until a run ends by listing them"
)


@data_app.command("prepare")
def data_prepare(overrides: Overrides = None) -> None:
    """Rest runs → parcel series (cached, parallel) → connectomes; skipped runs reported."""
    from omegaconf import OmegaConf

    from modelcycle.config import ConfigError, check_group, compose_config, workspace_of
    from modelcycle.data.qtim_functional import FunctionalSource, prepare_dataset

    with _clear_errors(PREPARE_AT_CTRL_C):
        cfg = compose_config(["experiment=twins_functional", *(overrides or [])])
        if cfg.data.get("_target_") != f"{FunctionalSource.__module__}.FunctionalSource":
            raise ConfigError(
                f"`modelcycle data prepare` computes the connectomes of experiment="
                f"twins_functional; the {cfg.task.name} task reads its data as it trains, so "
                "there is nothing to prepare for it (`modelcycle data stats` describes it)."
            )
        check_group(OmegaConf.to_container(cfg, resolve=True), "data")  # type: ignore[arg-type]
        source = FunctionalSource(**_data_settings(cfg))
        result = prepare_dataset(source, workspace_of(cfg) / "prepared" / "qtim-func")
    p = result.prepared
    console.print(
        f"{len(p.subjects)} connectomes from {result.root}: {p.cached} from cache, "
        f"{p.computed} computed, {len(p.failures)} skipped",
        soft_wrap=True,
    )
    for failure in p.failures:
        _say("  skipped", "yellow", f"{failure.subject} {failure.path}: {failure.reason}")
    for path in result.files:
        console.print(f"wrote {path}", soft_wrap=True)


def _data_settings(cfg: DictConfig) -> dict[str, Any]:
    """The data config as keyword arguments (without Hydra's keys)."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(values, dict)
    return {str(k): v for k, v in values.items() if not str(k).startswith("_")}


@data_app.command("stats")
def data_stats(
    overrides: Overrides = None,
    markdown: Annotated[bool, typer.Option(help="Print a Markdown table (CI comments)")] = False,
    out: Annotated[
        Path | None, typer.Option(help="Also write it as JSON here (the DVC prepare stage)")
    ] = None,
) -> None:
    """Describe the configured task's data: content hash, counts, exclusions."""
    from modelcycle.config import assemble, compose_config

    with _clear_errors():
        given = overrides or []
        summary = assemble(compose_config(given), given).task.load()[1]
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(asdict(summary), indent=2) + "\n")
    if markdown:
        console.print(data_markdown(summary), soft_wrap=True, markup=False)
        return
    table = Table("what", "value", title=f"data {summary.data_hash[:12]}")
    for key, value in summary.counts.items():
        table.add_row(key, f"{value:,}")
    console.print(table)
    for note in summary.notes:
        console.print(f"- {note}", soft_wrap=True, markup=False)


def data_markdown(summary: DataSummary) -> str:
    """A data summary as a Markdown table followed by its notes."""
    lines = ["| what | value |", "|---|---|", f"| content hash | `{summary.data_hash}` |"]
    lines += [f"| {key} | {value:,} |" for key, value in summary.counts.items()]
    return "\n".join([*lines, "", *(f"- {note}" for note in summary.notes)])


def _run(cfg: DictConfig, given: list[str]) -> PipelineResult:
    from modelcycle.config import assemble
    from modelcycle.pipeline import run_pipeline
    from modelcycle.tracking import Tracker

    # nothing resumes a stopped fit: what was logged stays in the runs, the rest is lost
    with _clear_errors("a stopped training does not resume: run it again"):
        assembled = assemble(cfg, given)
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


#: Errors of the user's input or setup, reported in one line each: their messages name the fix.
#: By module and name, so that a command imports only the subsystems it uses.
REPORTED = (
    ("modelcycle.models.image_classifier", "BackboneError"),
    ("modelcycle.batch_predict", "PredictInputError"),
    ("modelcycle.models.segmenter", "SegmentationSizeError"),
    ("modelcycle.config", "ConfigError"),
    ("modelcycle.data.tables", "DataError"),
    ("modelcycle.evaluate", "EvaluationError"),
    ("modelcycle.data.openneuro", "FetchError"),
    ("modelcycle.registry", "RegistryError"),
    ("modelcycle.relocation", "RelocationError"),
    ("modelcycle.servable", "ServableError"),
    ("modelcycle.serving.adapter_check", "AdapterError"),
    ("modelcycle.serving.loading", "ModelLoadError"),
    ("modelcycle.tasks.base", "UnknownTaskError"),
    ("modelcycle.tracking", "TrackingError"),
)


def reported_errors(loaded_only: bool = False) -> tuple[type[Exception], ...]:
    """The classes of `REPORTED`; with `loaded_only`, those of modules imported so far.

    An error can only have been raised by a module that is loaded, so an error being
    reported needs no more: a bad `promote` does not import torch to say so.
    """
    return tuple(
        getattr(sys.modules[module] if loaded_only else importlib.import_module(module), name)
        for module, name in REPORTED
        if not loaded_only or module in sys.modules
    )


def _say(label: str, style: str, text: object = "") -> None:
    """`label` in `style`, then `text` as it is (no markup: it may hold brackets)."""
    line = Text.assemble((label, style), f" {text}" if text != "" else "")
    console.print(line, soft_wrap=True)


@contextmanager
def _clear_errors(stopped: str = "") -> Iterator[None]:
    """Turn expected input errors into one red line and exit code 2, not a stack trace.

    Args:
        stopped: What an interruption (Ctrl-C, SIGTERM) leaves, said after it (and after
            the tracked runs it marked KILLED, when it marked some); nothing when the
            command changes nothing a stop could leave half done.
    """
    killed_before = len(_killed_runs())
    try:
        yield
    except Exception as err:
        gate = sys.modules.get("modelcycle.registry")
        if gate is not None and isinstance(err, gate.GateError):
            # A refusal, not a mistake: exit 1 with both numbers.
            _say("refused:", "yellow", err)
            raise typer.Exit(code=1) from err
        if isinstance(err, reported_errors(loaded_only=True)):
            _say("error:", "red", err)
            raise typer.Exit(code=2) from err
        if not isinstance(err, OSError):
            raise
        # A path given or configured that cannot be read or written.
        logging.getLogger(__name__).debug("where it failed", exc_info=True)
        where = f"{err.filename}: " if err.filename is not None else ""
        _say(
            "error:",
            "red",
            f"{where}{err.strerror or err}; check the path and its permissions (--verbose "
            "shows where it failed).",
        )
        raise typer.Exit(code=2) from err
    except KeyboardInterrupt as err:
        if is_rank_zero():  # under DDP every rank gets the Ctrl-C; one says so
            killed = len(_killed_runs()) - killed_before
            _say("interrupted:", "yellow", _stopped(killed, stopped))
        raise typer.Exit(code=stop_exit_code()) from err  # 128 + the signal, as shells say


def _stopped(killed: int, stopped: str) -> str:
    """The Ctrl-C line: the runs it marked KILLED, if any, and what the command leaves."""
    said = [f"stopped at {stopped_by()}"]
    if killed:
        runs = "runs it had open are" if killed > 1 else "run it had open is"
        said.append(f"the tracked {runs} marked KILLED")
    return "; ".join([*said, stopped] if stopped else said) + "."


def _killed_runs() -> list[str]:
    """The runs this process marked KILLED; none when it never loaded tracking (and MLflow)."""
    tracking = sys.modules.get("modelcycle.tracking")
    return tracking.killed_runs() if tracking is not None else []


def summary_table(report: CVReport, width: int = 80) -> Table:
    """The report as a rich table: a row per metric and scorer, then mean ± std.

    A column per fold when they all fit in `width` characters with the metric names whole;
    otherwise the folds' range (min to max), and the caption says where each fold's values
    are (summary.md and metrics.json keep them all).
    """
    from modelcycle.evaluation.report import mean_std

    agg = report.aggregate()
    rows = [  # label, scorer, each fold's value, mean ± std
        (
            metric if scorer == "model" else "",
            scorer,
            [getattr(f, scorer)[metric] for f in report.folds],
            mean_std(*agg[scorer][metric]),
        )
        for metric in report.metrics
        for scorer in ("model", "baseline")
    ]
    per_fold = [
        [f"fold {fold.fold}", *(f"{values[i]:.3f}" for _, _, values, _ in rows)]
        for i, fold in enumerate(report.folds)
    ]
    by_fold = _fits(
        [
            ["metric", *report.metrics],
            ["scorer", *(scorer for _, scorer, _, _ in rows)],
            *per_fold,
            ["mean ± std", *(spread for *_, spread in rows)],
        ],
        width,
    )
    folds = f"{len(report.folds)} fold{'s' if len(report.folds) != 1 else ''}"
    table = Table(title=f"{report.task}: model vs baseline, {folds}")
    table.caption = None if by_fold else "each fold's values: summary.md and metrics.json"
    table.add_column("metric", no_wrap=True, min_width=max(map(len, report.metrics), default=6))
    table.add_column("scorer", no_wrap=True)
    for header in [column[0] for column in per_fold] if by_fold else ["folds: min - max"]:
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("mean ± std", justify="right", style="bold", no_wrap=True)
    for i, (label, scorer, values, spread) in enumerate(rows):
        cells = [column[i + 1] for column in per_fold] if by_fold else [_span(values)]
        table.add_row(label, scorer, *cells, spread)
    return table


def _fits(columns: list[list[str]], width: int) -> bool:
    """Whether a table of these columns (each its header, then its cells) fits `width`.

    With no cell wrapped: the widest text of each column, its padding and the borders.
    """
    return 1 + sum(3 + max(map(len, column)) for column in columns) <= width


def _span(values: list[float]) -> str:
    """The lowest and highest of `values` that are numbers, as "0.812 - 0.951"."""
    kept = [v for v in values if v == v]  # NaN is the one value not equal to itself
    return f"{min(kept):.3f} - {max(kept):.3f}" if kept else "nan"


def _print_result(result: PipelineResult) -> None:

    if not is_rank_zero():  # every rank holds the result; one prints it
        return
    console.print(summary_table(result.report, console.width))
    if result.report.reference:
        ref = ", ".join(f"{k} {v:.3f}" for k, v in result.report.reference.items())
        console.print(f"Baseline over the whole dataset (no folds): {ref}", soft_wrap=True)
    console.print(f"Report and plots: {result.report_dir}", soft_wrap=True)
    console.print(f"MLflow run {result.run_id}", soft_wrap=True)
    from modelcycle.tracking import browse_runs

    console.print(f"Browse runs: {browse_runs(result.tracking_uri)}", soft_wrap=True)
    console.print(f"Wall time (data, folds and final fit): {result.report.seconds:.0f} s")


def _unwrapped(doc: str) -> str:
    """A docstring with each paragraph on one line.

    Typer's help keeps single line breaks, so a paragraph wrapped in the source would break
    mid-sentence on the screen.
    """
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(doc).split("\n\n"))


for _commands in (app, data_app, report_app):
    for _info in _commands.registered_commands:
        if _info.help is None and _info.callback is not None and _info.callback.__doc__:
            _info.help = _unwrapped(_info.callback.__doc__)
