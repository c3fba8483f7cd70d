"""Scoring a fold beside its baseline, and re-scoring a finished train run from its checkpoints.

`modelcycle train` scores each fold as soon as it is fitted; `modelcycle evaluate` rebuilds a
run's folds from its recorded config, loads each fold's best checkpoint and scores it again.
Both go through `score_fold` and `publish_report`, so their numbers and files are the same.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from modelcycle.evaluation.curves import write_curves
from modelcycle.evaluation.report import CVReport, FoldResult
from modelcycle.registry import HOW_TO_FIND, RegistryError, latest_pipeline_run
from modelcycle.tasks.base import Fold, Task
from modelcycle.tracking import Tracker, browse_runs
from modelcycle.training import restore

log = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """A run that cannot be evaluated; the message names it and says what to do."""


def score_fold(
    task: Task[Any],
    module: L.LightningModule,
    data: Any,
    fold: Fold,
    checkpoint: Path,
    out_dir: Path,
    tracker: Tracker,
) -> FoldResult:
    """Score the model and the baseline on `fold.test`; plots and curves go to `out_dir`.

    Metrics (`test_*`, `baseline_*`), plots and curves are logged to the active run.
    """
    name = f"fold{fold.index}"
    model_eval, baseline_eval = task.evaluate(module, data, fold), task.baseline(data, fold)
    check_metrics(task, model_eval.metrics, baseline_eval.metrics)
    tracker.log_metrics({f"test_{k}": v for k, v in model_eval.metrics.items()})
    tracker.log_metrics({f"baseline_{k}": v for k, v in baseline_eval.metrics.items()})
    tracker.log_artifacts(task.plot(model_eval, baseline_eval, out_dir, name), "plots")
    scorers = {"model": model_eval, "baseline": baseline_eval}
    tracker.log_artifacts([write_curves(scorers, out_dir, name)], "plots")
    return FoldResult(
        fold.index, len(fold.test), model_eval.metrics, baseline_eval.metrics, str(checkpoint)
    )


def check_metrics(task: Task[Any], model: dict[str, float], baseline: dict[str, float]) -> None:
    """Refuse a task whose scores lack its `primary_metric` or a `summary_metrics` entry.

    Said at the first fold: the report needs every summary metric of both (it failed with a
    KeyError once every fold and the final fit had trained), and registration the primary
    one (it called the run "not a finished pipeline run").

    Raises:
        EvaluationError: Naming the missing metrics and those `evaluate`/`baseline` give.
    """
    wanted = (task.primary_metric, *task.summary_metrics)
    for scorer, metrics in (("evaluate", model), ("baseline", baseline)):
        missing = [m for m in dict.fromkeys(wanted) if m not in metrics]
        if missing:
            raise EvaluationError(
                f"Task {task.name!r}: its {scorer}() gives no {', '.join(missing)} (it gives "
                f"{', '.join(sorted(metrics)) or 'nothing'}); primary_metric and every "
                "summary_metrics entry must be among the metrics of both evaluate() and "
                "baseline()."
            )


def publish_report(
    report: CVReport, report_dir: Path, tracker: Tracker, extra: list[Path]
) -> list[Path]:
    """Write the report into `report_dir`; log it, its means and stds and fold plots to the run."""
    files = [*report.write(report_dir), *extra]
    aggregate = report.aggregate()
    for index, stat in enumerate(("mean", "std")):
        tracker.log_metrics(
            {f"{s}_{m}_{stat}": v[index] for s, ms in aggregate.items() for m, v in ms.items()}
        )
    tracker.log_metrics({f"reference_{k}": v for k, v in report.reference.items()})
    tracker.log_artifacts(files)
    tracker.log_artifacts(sorted(report_dir.glob("fold*.png")), "plots")
    return files


@dataclass(frozen=True)
class TrainRun:
    """A finished train run found in the tracking store, with what its report folder holds."""

    run_id: str
    report_dir: Path
    #: The report train wrote (summary.json): folds, their checkpoints and test sizes.
    summary: dict[str, Any]
    #: The run's resolved config (config.yaml), to rebuild its task and folds.
    config: dict[str, Any]


def locate_run(reference: str, tracking_uri: str, experiment: str) -> TrainRun:
    """The train run named by `reference`: an MLflow run id, its report folder, or `latest`.

    Raises:
        EvaluationError: Naming `reference`, when no train run with fold checkpoints matches.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    hint = HOW_TO_FIND.format(browse=browse_runs(tracking_uri))
    if reference == "latest":
        try:
            reference = latest_pipeline_run(tracking_uri, experiment)
        except RegistryError as err:
            raise EvaluationError(f"{err} {hint}.") from err
    client = MlflowClient(tracking_uri=tracking_uri)
    folder = Path(reference)
    if not folder.is_dir() and (os.sep in reference or "/" in reference):  # no run id has one
        raise EvaluationError(
            f"No folder {reference}: {'a file' if folder.exists() else 'nothing'} is there "
            f"(moved, deleted or mistyped?). {hint}."
        )
    if folder.is_dir():
        summary, config = _read_report(folder)
        run_id = str(summary.get("run_id") or "")
        if not run_id:
            raise EvaluationError(
                f"{folder / 'summary.json'} records no MLflow run id (a report written before "
                f"runs were recorded in it): give the run id instead. {hint}."
            )
    else:
        run_id = reference
    try:
        tags = client.get_run(run_id).data.tags
    except MlflowException as err:
        where = f" (recorded in {folder / 'summary.json'})" if folder.is_dir() else ""
        raise EvaluationError(
            f"No run {run_id!r}{where} in the tracking store {tracking_uri}. {hint}; "
            "pass workspace= (or logger.uri=) of the store the run was tracked in."
        ) from err
    if not folder.is_dir():
        if not tags.get("report_dir"):
            what = (
                f"a run of sweep {tags['sweep.study']!r} (its trials keep no checkpoints; "
                "train the best parameters, as the sweep prints them, and evaluate that run)"
                if "sweep.study" in tags
                else "evaluate the parent run, not a fold's"
            )
            raise EvaluationError(
                f"Run {run_id} is not a train run (no report folder recorded): {what}. {hint}."
            )
        folder = Path(tags["report_dir"])
        summary, config = _read_report(folder)
    return TrainRun(run_id, folder, summary, config)


def _read_report(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """summary.json and config.yaml of a train run's report folder."""
    summary, config = folder / "summary.json", folder / "config.yaml"
    if not summary.is_file() or not config.is_file():
        raise EvaluationError(
            f"{folder} holds no summary.json and config.yaml: it is not the report folder of a "
            "finished train run (a run stopped early, by Ctrl-C or an error, writes neither), "
            "or it was deleted; evaluate and register read them from the folder of a finished "
            "run (run `modelcycle train` again if it is gone)."
        )
    return _parsed(summary, json.loads), _parsed(config, yaml.safe_load)


def _parsed(path: Path, parse: Callable[[str], Any]) -> dict[str, Any]:
    """The mapping in a report file, or an EvaluationError naming it and where a copy is."""
    try:
        found = parse(path.read_text())
        why = "not a mapping"
    except (ValueError, yaml.YAMLError) as err:  # JSONDecodeError is a ValueError
        found, why = None, " ".join(str(err).split())[:200]
    if isinstance(found, dict):
        return found
    raise EvaluationError(
        f"{path} does not read ({why}): it was cut short or edited. The train run keeps a copy "
        f"among its artifacts (in the tracking store, e.g. `mlflow ui`): put it back in "
        f"{path.parent}."
    )


def evaluate_run(
    task: Task[Any],
    run: TrainRun,
    n_folds: int,
    seed: int,
    tracker: Tracker,
    out_dir: Path | None = None,
) -> CVReport:
    """Re-score `run`'s fold checkpoints and the baseline on the same test folds; report it.

    The folds are rebuilt from the run's config (`n_folds`, `seed`) on the same data, checked
    against the recorded ones, then each fold's best checkpoint is scored. The report goes
    to `out_dir` (default: the run's report folder) and, with the metrics, to the same run.

    Raises:
        EvaluationError: When the data or the folds differ from the run's, or a checkpoint is
            missing: the recorded numbers could not be reproduced then.
    """
    started = time.monotonic()
    out_dir = out_dir or run.report_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    data, summary = task.load()
    recorded = run.summary
    if summary.data_hash != recorded["data"].get("hash"):
        raise EvaluationError(
            f"The data changed since run {run.run_id} was trained (content hash "
            f"{summary.data_hash[:12]}, the run's {str(recorded['data'].get('hash'))[:12]}): "
            "its test folds would not be the ones it held out. Evaluate on the data it was "
            "trained on (data.root in its config.yaml)."
        )
    folds = {f.index: f for f in task.folds(data, n_folds, seed)}
    report = CVReport(
        task=task.name,
        run_name=recorded["run_name"],
        metrics=task.summary_metrics,
        primary_metric=task.primary_metric,
        data={"hash": summary.data_hash, **summary.counts, "notes": summary.notes},
        run_id=run.run_id,
        unit=task.unit,
    )
    with tracker.resume(run.run_id):
        nested = tracker.children(run.run_id)
        for fold_record in recorded["folds"]:
            fold = _same_fold(folds, fold_record, run.run_id)
            checkpoint = _checkpoint(run.report_dir, fold_record)
            log.info("Fold %d: %s", fold.index, checkpoint)
            module = restore(task.model(data, fold), checkpoint)
            name = f"{report.run_name}-fold{fold.index}"
            with _fold_run(tracker, nested.get(name), name):
                report.folds.append(
                    score_fold(task, module, data, fold, checkpoint, out_dir, tracker)
                )
        report.reference = task.reference(data)
        # the report is the run's: its wall time stays the training's, not this re-scoring's
        report.seconds = float(recorded.get("seconds", time.monotonic() - started))
        scored = f"{len(report.folds)} fold{'s' if len(report.folds) != 1 else ''}"
        log.info("Re-scored %s in %.0f s", scored, time.monotonic() - started)
        extra = []
        if out_dir.resolve() != run.report_dir.resolve():  # a self-contained report
            extra.append(Path(shutil.copy2(run.report_dir / "config.yaml", out_dir)))
        publish_report(report, out_dir, tracker, extra)
    return report


def _fold_run(tracker: Tracker, run_id: str | None, name: str) -> AbstractContextManager[str]:
    """The fold's nested run, reopened; a new one if the store lost it."""
    return tracker.resume(run_id, nested=True) if run_id else tracker.run(name, nested=True)


def _same_fold(folds: dict[int, Fold], record: dict[str, Any], run_id: str) -> Fold:
    fold = folds.get(record["fold"])
    if fold is None or len(fold.test) != record["n_test"]:
        tested = "absent" if fold is None else f"{len(fold.test)} test rows"
        raise EvaluationError(
            f"Fold {record['fold']} of run {run_id} held out {record['n_test']} rows, rebuilt it "
            f"is {tested}: the split code or its settings changed since the run. Train again."
        )
    return fold


def _checkpoint(report_dir: Path, record: dict[str, Any]) -> Path:
    """The fold's best checkpoint, looked up in the report folder first (it may have moved)."""
    recorded = Path(record.get("best_epoch_checkpoint") or "best.ckpt")
    beside = report_dir / "checkpoints" / f"fold{record['fold']}" / recorded.name
    for path in (beside, recorded):
        if path.is_file():
            return path
    raise EvaluationError(
        f"No checkpoint for fold {record['fold']}: neither {beside} nor {recorded} exists. "
        "The run's checkpoints were deleted; run `modelcycle train` again."
    )
