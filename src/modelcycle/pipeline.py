"""The end-to-end run: load, split, train and evaluate per fold beside the baseline, report."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from modelcycle.evaluate import publish_report, score_fold
from modelcycle.evaluation.report import CVReport, FoldResult
from modelcycle.ranks import is_rank_zero, share_from_rank_zero
from modelcycle.registry import CHALLENGER, CHAMPION, GateError, Registry, champion_note
from modelcycle.report_folders import ReportFolder
from modelcycle.tasks.base import Fold, Task
from modelcycle.tracking import (
    LINEAGE_PACKAGES,
    Tracker,
    code_state,
    package_checkouts,
    package_versions,
    task_packages,
)
from modelcycle.training import TrainerSettings, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineSettings:
    """What to run: folds, seed and the name reports and runs carry."""

    run_name: str
    n_folds: int = 5
    seed: int = 42
    #: Where the report goes; None: `<workspace>/reports/<run_name>-<time>`.
    report_dir: Path | None = None


@dataclass(frozen=True)
class PipelineResult:
    """What a finished pipeline leaves behind."""

    report: CVReport
    report_dir: Path
    run_id: str
    tracking_uri: str


def run_pipeline(
    task: Task[Any],
    settings: PipelineSettings,
    trainer: TrainerSettings,
    tracker: Tracker,
    workspace: Path,
    config: dict[str, Any],
) -> PipelineResult:
    """Cross-validate `task`'s model against its baseline on the same folds and report it.

    Nothing is selected on test folds: early stopping uses each fold's validation part.
    Under DDP every rank takes part in each fit (same seeded folds everywhere); evaluation,
    report, plots, tracking and the saved model happen on rank zero, and every rank returns
    rank zero's result.
    """
    started = time.monotonic()
    data, summary = task.load()
    # claimed once the data is read: a run its data stops leaves no empty report folder
    report_dir = settings.report_dir or _new_report_dir(workspace, settings.run_name)
    claimed_here = settings.report_dir is None and is_rank_zero()
    log.info("Loaded %s: %s", task.name, summary.counts)
    for note in summary.notes:  # exclusions, class balance: `data stats` prints the same
        log.info("Data: %s", note)
    report = CVReport(
        task=task.name,
        run_name=settings.run_name,
        metrics=task.summary_metrics,
        primary_metric=task.primary_metric,
        data={"hash": summary.data_hash, **summary.counts, "notes": summary.notes},
        unit=task.unit,
    )
    with _removed_if_left_empty(report_dir, claimed_here), tracker.run(settings.run_name) as run_id:
        report.run_id = run_id
        # the report folder holds the fold checkpoints `modelcycle evaluate` re-scores
        tracker.set_tags(
            run_tags(task, summary.data_hash) | {"report_dir": str(report_dir.resolve())}
        )
        tracker.log_params(config)
        if is_rank_zero():
            report.reference = task.reference(data)
        ctx = TrainingContext(task, data, settings, trainer, tracker, report_dir)
        report.folds = cross_validate(ctx)
        model_dir = _fit_final(ctx)
        if is_rank_zero():
            tracker.log_directory(model_dir, "model")
            report.seconds = time.monotonic() - started
            publish_report(report, report_dir, tracker, [_write_config(config, report_dir)])
    return share_from_rank_zero(PipelineResult(report, report_dir, run_id, tracker.uri))


def run_tags(task: Task[Any], data_hash: str) -> dict[str, str]:
    """The tags of a pipeline run that registration reads: task, gate metric, lineage.

    `packages_git` is the git state of each of the task's own packages installed from a
    local checkout (`code_state` is modelcycle's).
    """
    plugins = task_packages(type(task))
    return {
        "task": task.name,
        "model_name": task.model_name,
        "primary_metric": task.primary_metric,
        "data_hash": data_hash,
        "packages": json.dumps(package_versions((*LINEAGE_PACKAGES, *plugins))),
        "packages_git": json.dumps(package_checkouts(plugins)),
        **code_state(),
    }


@dataclass(frozen=True)
class Release:
    """What happened after training: registration, promotion and export, or why not."""

    version: str | None
    messages: list[str]


def release(registry: Registry, run_id: str, name: str, exports: Path) -> Release:
    """Register the run as challenger and export it; the first version then becomes champion.

    A gate refusal is an outcome, not an error: the run stays tracked, nothing is registered.
    A run that is already a version of `name` is that version, exported again (`dvc repro
    -f` reruns the export stage on the run it released, and DVC removed its exports first).
    """
    from modelcycle.export import export_version

    if (found := registry.version_of(run_id, name)) is not None:
        version, aliases = found
        held = f" (@{', @'.join(aliases)})" if aliases else ""
        messages = [
            f"run {run_id} is already {name} version {version.version}{held}: not registered "
            "again, exported again"
        ]
    else:
        try:
            version, _ = registry.register(run_id, name)
        except GateError as refusal:
            return Release(None, [str(refusal)])
        messages = [f"registered {name} version {version.version} as @{CHALLENGER}"]
        note = champion_note(version)
        if note is not None:
            messages.append(note)
    # Exported before it may become champion: a version whose export fails (a task's serving
    # contract broken) stays a challenger, where it was champion and could not be served.
    _, report = export_version(registry, f"{name}/{version.version}", exports)
    fp32 = report.variants[0]
    messages.append(
        f"exported ONNX ({fp32.size_bytes / 1024:.0f} KiB, parity max abs "
        f"{report.parity.max_abs:.1e}, {fp32.latency_ms[1]:.3f} ms per request at batch 1)"
    )
    if registry.alias_version(name, CHAMPION) is None:
        registry.promote(name, CHAMPION, version.version, "first version of this model")
        messages.append(f"promoted version {version.version} to @{CHAMPION} (first version)")
    return Release(version.version, messages)


@dataclass(frozen=True)
class TrainingContext:
    """What every training step of one pipeline run shares."""

    task: Task[Any]
    data: Any
    settings: PipelineSettings
    trainer: TrainerSettings
    tracker: Tracker
    report_dir: Path

    def train(self, fold: Fold, run_id: str, name: str) -> tuple[L.LightningModule, Path]:
        """Seed, build and fit a model on `fold`; returns it with its best checkpoint."""
        seed = self.settings.seed + max(fold.index, 0)
        L.seed_everything(seed, workers=True, verbose=False)
        datamodule = self.task.datamodule(self.data, fold, seed)
        module = self.task.model(self.data, fold)
        loggers = self.tracker.lightning_loggers(run_id, name, self.settings.run_name)
        directory = self.report_dir / "checkpoints" / name
        checkpoint = fit(module, datamodule, self.trainer, self.task.monitor, directory, loggers)
        Tracker.finish_loggers(loggers)
        return module, checkpoint


def cross_validate(
    ctx: TrainingContext, after_fold: Callable[[list[FoldResult]], None] | None = None
) -> list[FoldResult]:
    """Train and test the model beside the baseline on each of `ctx.settings.n_folds` folds.

    Every fold is a nested run of the active tracked run. Under DDP every rank trains each
    fold; scoring, `after_fold` and the results are rank zero's (other ranks get []).

    Args:
        ctx: The task, its loaded data and how to train and track.
        after_fold: Called with the results so far after each fold; it may raise to stop
            early (a sweep's pruner does).
    """
    folds = ctx.task.folds(ctx.data, ctx.settings.n_folds, ctx.settings.seed)
    results: list[FoldResult] = []
    for fold in folds:
        log.info("Fold %d/%d", fold.index + 1, len(folds))
        if (result := _run_fold(ctx, fold)) is None:
            continue
        results.append(result)
        if after_fold is not None:
            after_fold(results)
    return results


def _run_fold(ctx: TrainingContext, fold: Fold) -> FoldResult | None:
    """Train on `fold`, then (rank zero only; None elsewhere) score, plot and track it."""
    name = f"fold{fold.index}"
    with ctx.tracker.run(f"{ctx.settings.run_name}-{name}", nested=True) as run_id:
        module, checkpoint = ctx.train(fold, run_id, name)
        if not is_rank_zero():
            return None
        return score_fold(ctx.task, module, ctx.data, fold, checkpoint, ctx.report_dir, ctx.tracker)


def _fit_final(ctx: TrainingContext) -> Path:
    """Train the deployable model on every family but validation; save it for the registry."""
    fold = ctx.task.final_fold(ctx.data, ctx.settings.seed)
    unit = ctx.task.unit
    log.info("Final model: %d training %s, %d validation", len(fold.train), unit, len(fold.val))
    with ctx.tracker.run(f"{ctx.settings.run_name}-final", nested=True) as run_id:
        module, _ = ctx.train(fold, run_id, "final")
    directory = ctx.report_dir / "model"
    if is_rank_zero():
        ctx.task.servable(module, ctx.data, fold).save(directory)
    return directory


def _new_report_dir(workspace: Path, run_name: str) -> Path:
    """`reports/<run_name>-<time>` in `workspace`, made now for this run alone.

    Both runs' `report_dir` tags once named one shared folder, so `evaluate` re-scored one
    run's checkpoints as the other's. Only rank zero writes reports, so only it claims the
    folder; the other ranks' path is never written to.
    """
    folder = ReportFolder(workspace / "reports", run_name)
    return folder.claim() if is_rank_zero() else folder.base


@contextmanager
def _removed_if_left_empty(report_dir: Path, claimed_here: bool) -> Iterator[None]:
    """Remove the run's own report folder when the run fails before writing into it.

    A fold count the data cannot fill, or a model that cannot be built for the data, stops
    a run before its first checkpoint; each such attempt left an empty folder behind. A
    folder holding anything (a stopped training's checkpoints) is kept.
    """
    try:
        yield
    except BaseException:
        if claimed_here:
            with contextlib.suppress(OSError):  # not empty, or gone: nothing to tidy
                report_dir.rmdir()
        raise


def _write_config(config: dict[str, Any], report_dir: Path) -> Path:
    """The resolved config of the run, beside its report."""
    path = report_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
