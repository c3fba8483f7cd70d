"""Hyperparameter sweeps: Optuna studies on SQL storage, a seeded TPE, each trial a tracked run.

A study lives in its storage (SQLite in the workspace, or any SQLAlchemy URL such as
PostgreSQL), so a sweep resumes where it stopped and several machines share one by pointing
at the same URL. The objective of a trial is the task's primary metric, mean over the
cross-validation folds, maximized.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import yaml
from optuna.distributions import BaseDistribution, check_distribution_compatibility
from optuna.exceptions import ExperimentalWarning
from optuna.samplers import BaseSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from modelcycle.evaluation.report import CVReport, FoldResult
from modelcycle.kinds import is_whole
from modelcycle.messages import clause
from modelcycle.pipeline import TrainingContext, cross_validate
from modelcycle.report_folders import ReportFolder, claimed
from modelcycle.search_space import Param
from modelcycle.tracking import Tracker, flatten

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from modelcycle.config import Assembled

log = logging.getLogger(__name__)

PRUNERS = ("none", "median")
#: Who ran a trial, recorded with it: workers sharing a study are told apart by host and pid.
WORKER = f"{socket.gethostname()}:{os.getpid()}"
#: Trials in these states count toward --trials; failed ones do not.
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


class SweepError(ValueError):
    """A study or storage that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class StudySettings:
    """Which study, where it is stored, how many trials it should reach, and how to sample."""

    name: str
    storage: str
    trials: int = 20
    seed: int = 42
    pruner: str = "none"

    def __post_init__(self) -> None:
        for key, value in (("trials", self.trials), ("seed", self.seed)):
            if not is_whole(value) or value < 0:
                raise SweepError(f"sweep.{key}={value!r}: give a whole number >= 0.")
        if self.trials < 1:
            raise SweepError(f"sweep.trials={self.trials}: a sweep needs at least 1 trial.")
        if self.pruner not in PRUNERS:
            raise SweepError(f"sweep.pruner={self.pruner!r}: use one of {', '.join(PRUNERS)}.")


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the sweep reports it."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    seconds: float | None

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        """The record of a stored trial."""
        seconds = trial.duration.total_seconds() if trial.duration else None
        return cls(trial.number, trial.state.name.lower(), trial.value, dict(trial.params), seconds)


@dataclass
class SweepResult:
    """What a sweep left behind: every trial of the study, the best, and the files."""

    study: str
    storage: str
    metric: str
    trials: list[TrialRecord]
    best: TrialRecord | None
    ran: int
    report_dir: Path
    #: fANOVA importance per parameter; empty while fewer than 3 complete trials vary.
    importances: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    run_id: str = ""


#: overrides, report(step, running value) → objective value.
Objective = Callable[[list[str], Callable[[int, float], None]], float]
#: Called after each trial of this process: the trial, finished trials so far, the target,
#: and the best trial.
Progress = Callable[[TrialRecord, int, int, TrialRecord | None], None]


class CrossValidation:
    """A sweep's objective: the task's primary metric, mean over the cross-validation folds.

    Each call composes the config with the trial's overrides (`build`), loads the data, and
    runs the pipeline's folds as nested runs of the active tracked run.
    """

    def __init__(self, build: Callable[[list[str]], Assembled], tracker: Tracker) -> None:
        self.build = build
        self.tracker = tracker

    def __call__(self, overrides: list[str], report: Callable[[int, float], None]) -> float:
        """Cross-validate with `overrides`; `report` receives the running mean after each fold."""
        assembled = self.build(overrides)
        task = assembled.task
        data, _ = task.load()
        metric = task.primary_metric

        def after_fold(results: list[FoldResult]) -> None:
            report(len(results) - 1, _mean([r.model[metric] for r in results]))

        with tempfile.TemporaryDirectory(prefix="modelcycle-trial-") as scratch:
            ctx = TrainingContext(
                task, data, assembled.pipeline, assembled.trainer, self.tracker, Path(scratch)
            )
            folds = cross_validate(ctx, after_fold)
        summary = CVReport(task.name, assembled.pipeline.run_name, task.summary_metrics, metric)
        summary.folds = folds
        aggregate = summary.aggregate()
        self.tracker.log_metrics(
            {f"{s}_{m}_mean": v[0] for s, ms in aggregate.items() for m, v in ms.items()}
        )
        return aggregate["model"][metric][0]


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


class TrialSeededTPE(BaseSampler):
    """Optuna's TPE with the random state of trial k drawn from (seed, k).

    One seeded TPE per process would repeat its first random draws when a study resumes, and
    workers sharing a study would propose the same values; seeding by trial number avoids both
    while a single worker stays reproducible.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._tpe = self._for(0)

    def _for(self, number: int) -> TPESampler:
        state = np.random.SeedSequence([self.seed, number]).generate_state(1)[0]
        return TPESampler(seed=int(state))

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Start the trial with the random state of its number."""
        self._tpe = self._for(trial.number)
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """TPE's joint search space."""
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """TPE's joint draw."""
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        """TPE's draw of one parameter."""
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """Let TPE see the finished trial."""
        self._tpe.after_trial(study, trial, state, values)


def open_study(
    settings: StudySettings,
    metric: str,
    space: list[Param],
    config: Mapping[str, Any] | None = None,
    data_hash: str | None = None,
) -> Study:
    """Create the study, or load it to resume; refuse one that optimizes something else.

    Raises:
        SweepError: The storage cannot be opened, or the study measures another metric, has
            searched a parameter with an incompatible distribution, or ran its trials from
            another config (`config`, the resolved config the trials start from) or on other
            data (`data_hash`, the content hash of the loaded data).
    """
    from sqlalchemy.exc import SQLAlchemyError

    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(n_startup_trials=5)
        if settings.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats
            storage = optuna.storages.RDBStorage(
                settings.storage, heartbeat_interval=30, grace_period=90
            )
        study = optuna.create_study(
            study_name=settings.name,
            storage=storage,
            sampler=TrialSeededTPE(settings.seed),
            pruner=pruner,
            direction="maximize",
            load_if_exists=True,
        )
    except (SQLAlchemyError, ImportError, ValueError) as err:
        raise SweepError(
            f"Cannot open the study storage {redact(settings.storage)}: {clause(err)}. Give a "
            "SQLAlchemy "
            "URL such as sqlite:///optuna.db or postgresql://user:password@host/db (PostgreSQL "
            "needs its driver installed, e.g. pip install 'psycopg[binary]')."
        ) from err
    _check_resume(study, metric, space)
    if config is not None:
        _check_base(study, config, space)
    if data_hash is not None:
        _check_data(study, data_hash)
    return study


#: Top-level config groups that say where things go, not how a trial trains and scores.
_NOT_TRIAL = ("sweep", "workspace", "logger", "report_dir", "serve", "monitor", "loadtest")
#: Keys ending so are where things are on one machine (data.root, data.download_dir,
#: data.cache_dir): machines sharing a study hold the same data in different places.
_WHERE = ("dir", "root", "path", "uri")


def _check_base(study: Study, config: Mapping[str, Any], space: list[Param]) -> None:
    """A resumed study's trials must start from the same config, searched keys aside.

    Its best trial's command is the base config plus the trial's values: from another base
    (fewer epochs, other data) it would not reproduce the trial. Where the data is stored
    differs between machines and is left out here; `_check_data` compares the data itself.
    """
    searched = {p.path for p in space}
    base = {
        key: value
        for key, value in flatten(config).items()
        if key.split(".")[0] not in _NOT_TRIAL
        and not key.rsplit(".", 1)[-1].endswith(_WHERE)
        and key not in searched
    }
    recorded = study.user_attrs.get("base")
    if recorded is None:
        study.set_user_attr("base", json.loads(json.dumps(base, default=str)))
        return
    now = json.loads(json.dumps(base, default=str))
    differ = sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
    _check_same_space(study, recorded, searched, differ)
    if differ:
        had = " ".join(f"{k}={recorded.get(k)}" for k in differ[:4])
        gives = " ".join(f"{k}={now.get(k)}" for k in differ[:4])
        more = f" (and {len(differ) - 4} more)" if len(differ) > 4 else ""
        raise SweepError(
            f"Study {study.study_name!r} ran its trials from {had}; this command gives "
            f"{gives}{more}. Give the same to resume it, or start a new study with --study NAME."
        )


def _check_same_space(
    study: Study, recorded: Mapping[str, Any], searched: set[str], differ: list[str]
) -> None:
    """Name the keys a resumed study's space gained or lost, rather than their values.

    A key the space now searches is missing from the base config, and one it no longer
    searches is back in it: compared as values, they read as a config that gives None.
    """
    before = {p for t in study.get_trials(deepcopy=False) for p in t.distributions}
    added = [k for k in differ if k in searched and k in recorded]
    removed = [k for k in differ if k in before and k not in searched and k not in recorded]
    if added or removed:
        changes = [f"{k} added (its trials held it at {recorded[k]})" for k in added]
        changes += [f"{k} removed (its trials searched it)" for k in removed]
        raise SweepError(
            f"Study {study.study_name!r} searched another space; this command's space has "
            f"{'; '.join(changes)}. Give the same space to resume it, or start a new study "
            "with --study NAME."
        )


def _check_data(study: Study, data_hash: str) -> None:
    """A resumed study's trials must have scored the same data (its content hash).

    The config leaves out where the data is (`_WHERE`), so the data itself is compared: the
    same `data.root` may hold another copy, and another path the same data.
    """
    _record_or_compare(
        study,
        "data_hash",
        data_hash,
        lambda recorded: (
            f"Study {study.study_name!r} ran its trials on data {recorded[:12]}; "
            f"this command's data is {data_hash[:12]}. Give the same data to resume it, or start "
            "a new study with --study NAME."
        ),
    )


def _record_or_compare(study: Study, key: str, value: str, refusal: Callable[[str], str]) -> None:
    """Record `value` as the study's `key` the first time; later, refuse another value.

    Raises:
        SweepError: `refusal(recorded)`, when the study recorded another value.
    """
    recorded = study.user_attrs.get(key)
    if recorded is None:
        study.set_user_attr(key, value)
    elif recorded != value:
        raise SweepError(refusal(recorded))


def _check_resume(study: Study, metric: str, space: list[Param]) -> None:
    """A resumed study must optimize the same metric over compatible distributions."""
    _record_or_compare(
        study,
        "metric",
        metric,
        lambda recorded: (
            f"Study {study.study_name!r} maximizes {recorded}, this config's task "
            f"reports {metric}: give this sweep its own study with --study NAME."
        ),
    )
    new = {p.path: p.distribution() for p in space}
    for trial in study.get_trials(deepcopy=False):
        for path, old in trial.distributions.items():
            if path not in new:
                continue
            try:
                check_distribution_compatibility(old, new[path])
            except ValueError as err:
                raise SweepError(
                    f"Study {study.study_name!r} searched {path} as {old}, the space now gives "
                    f"{new[path]} ({err}): start a new study with --study NAME, or restore it."
                ) from err


def check_storage(url: str, key: str, workspace: Path) -> None:
    """Refuse a storage URL that cannot open, before the sweep reads any data.

    The URL must parse, SQLAlchemy must know its database and the driver be installed; a
    SQLite file's folder must exist (or be the workspace, which the sweep makes), and a
    server must take a connection within `CONNECT_SECONDS` (address, port, credentials and
    database).

    Raises:
        SweepError: Naming `key` (--storage or sweep.storage), the URL without its password,
            what is wrong and what to give.
    """
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    give = (
        "Give a SQLAlchemy URL: sqlite:///optuna.db (a file, made when missing) or "
        "postgresql://user:password@host/db (a server)."
    )
    try:
        parsed = make_url(url)
        create_engine(parsed).dispose()  # loads the dialect and imports its driver
    except NoSuchModuleError:
        wrong = f"SQLAlchemy knows no database {parsed.drivername!r}. {give}"
    except ArgumentError:
        wrong = f"not a database URL. {give}"
    except ImportError as err:
        wrong = (
            f"its driver, {err.name}, is not installed. Install it, or name an installed one: "
            f"{parsed.get_backend_name()}+DRIVER://..."
        )
    except (SQLAlchemyError, TypeError, ValueError) as err:
        wrong = f"{clause(err)}. {give}"
    else:
        found = _sqlite_problem(parsed, workspace) or _connect_problem(parsed)
        if found is None:
            return
        wrong = found
    shown = redact(url) if redact(url) != UNPARSABLE else re.sub(r":[^:/@]*@", ":***@", url)
    raise SweepError(f"{key}={shown!r}: {wrong}")


def _sqlite_problem(parsed: URL, workspace: Path) -> str | None:
    """Why a SQLite file cannot be made (its folder is missing), or None."""
    database = parsed.database or ":memory:"
    if parsed.get_backend_name() != "sqlite" or database.startswith((":memory:", "file:")):
        return None
    folder = Path(database).parent
    if folder.is_dir() or folder.resolve() == workspace.resolve():
        return None
    return f"the folder {folder} does not exist. Create it, or give a file in another."


#: Seconds a database server may take to accept the storage check's connection.
CONNECT_SECONDS = 5
#: The connect-timeout argument of each server driver, by SQLAlchemy's name for it.
CONNECT_TIMEOUTS = {
    "psycopg": "connect_timeout",
    "psycopg2": "connect_timeout",
    "pg8000": "timeout",
    "pymysql": "connect_timeout",
    "mysqldb": "connect_timeout",
    "mysqlconnector": "connection_timeout",
}


def _connect_problem(parsed: URL) -> str | None:
    """Why a database server does not take a connection, in its driver's words; or None.

    SQLite is not connected to: opening it makes the file, which the sweep does anyway.
    """
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    if parsed.get_backend_name() == "sqlite":
        return None
    argument = CONNECT_TIMEOUTS.get(parsed.get_driver_name())
    timeout = {argument: CONNECT_SECONDS} if argument else {}
    engine = create_engine(parsed, poolclass=NullPool, connect_args=timeout)
    try:
        with engine.connect():
            return None
    except SQLAlchemyError as err:
        reason = getattr(err, "orig", None) or err
        said = " ".join(clause(reason).split())  # drivers' messages span lines
        return (
            f"cannot connect ({said}). Check the host, port, user, password and database, "
            "and that the server is up."
        )
    finally:
        engine.dispose()


#: What `redact` gives for a URL SQLAlchemy cannot parse.
UNPARSABLE = "<unparsable URL>"


def redact(url: str) -> str:
    """A storage URL without its password, for logs and tags."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return UNPARSABLE


def run_sweep(
    settings: StudySettings,
    space: list[Param],
    objective: Objective,
    tracker: Tracker,
    metric: str,
    report_dir: Path | ReportFolder,
    progress: Progress | None = None,
    config: Mapping[str, Any] | None = None,
    reported: tuple[type[BaseException], ...] = (),
    data_hash: str | None = None,
) -> SweepResult:
    """Run trials until the study has `settings.trials` finished (complete or pruned) trials.

    Trials already in the study count, so rerunning resumes; trials other workers are running
    count too, so workers sharing a study stop together. Each trial is a nested run of one
    tracked sweep run, with its parameters and value; `config`, the resolved config the trials
    start from, is logged as the sweep run's parameters. A trial's error stops the sweep and
    reaches the caller; for the `reported` kinds, which the caller states in one line (a data
    or config error), Optuna's note of the failed trial leaves out the traceback. `data_hash`,
    the content hash of the data the trials load, is stored with the study, and a study that
    ran on other data is refused before any trial. A ReportFolder for `report_dir` is
    claimed once the trials are done (`claimed`).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(settings, metric, space, config, data_hash)
    ran = 0
    with tracker.run(f"sweep-{settings.name}") as run_id:
        tracker.set_tags({"sweep.study": settings.name, "sweep.storage": redact(settings.storage)})
        # The config's own sweep section may differ from the settings (--trials): left out.
        tracker.log_params({k: v for k, v in (config or {}).items() if k != "sweep"})
        tracker.log_params({"sweep.trials": settings.trials, "sweep.seed": settings.seed})
        # Bounded: at most `trials` more, however the other workers fare.
        for _ in range(settings.trials):
            if _claimed(study) >= settings.trials:
                break
            numbers: list[int] = []
            trial = _trial_function(settings, space, objective, tracker, numbers)
            with _without_tracebacks(reported):
                study.optimize(trial, n_trials=1)
            ran += 1
            if progress is not None:
                mine = study.get_trials(deepcopy=False)[numbers[0]]
                progress(TrialRecord.of(mine), _finished(study), settings.trials, _best(study))
        result = _result(study, settings, metric, claimed(report_dir), ran)
        result.run_id = run_id
        result.files = write_report(result, space, result.report_dir)
        if result.best is not None and result.best.value is not None:
            tracker.log_metrics({"best_value": result.best.value})
        tracker.log_artifacts(result.files)
    return result


@contextmanager
def _without_tracebacks(kinds: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Drop the traceback from Optuna's log records of an error of one of `kinds`."""

    def drop(record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], kinds):
            record.exc_info, record.exc_text = None, None
        return True

    handlers = list(logging.getLogger("optuna").handlers)  # Optuna's own, set up above
    for handler in handlers:
        handler.addFilter(drop)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(drop)


def _trial_function(
    settings: StudySettings,
    space: list[Param],
    objective: Objective,
    tracker: Tracker,
    numbers: list[int],
) -> Callable[[optuna.Trial], float]:
    def run(trial: optuna.Trial) -> float:
        numbers.append(trial.number)
        trial.set_user_attr("worker", WORKER)
        values = {p.path: p.suggest(trial) for p in space}
        overrides = [p.override(values[p.path]) for p in space]
        log.info("Trial %d: %s", trial.number, " ".join(overrides))

        def report(step: int, value: float) -> None:
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"running mean {value:.4f} after fold {step}")

        pruned: optuna.TrialPruned | None = None
        with tracker.run(f"{settings.name}-trial{trial.number}", nested=True):
            tracker.set_tags({"sweep.study": settings.name, "sweep.trial": str(trial.number)})
            tracker.log_params(values)
            try:
                value = objective(overrides, report)
            except optuna.TrialPruned as stop:
                # Raised after the run closes: a pruned trial ends as a finished run, not failed.
                tracker.set_tags({"sweep.state": "pruned"})
                pruned = stop
            else:
                tracker.log_metrics({"objective": value})
                tracker.set_tags({"sweep.state": "complete"})
        if pruned is not None:
            raise pruned
        return value

    return run


def _claimed(study: Study) -> int:
    """Finished trials plus those running now (another worker's, or stale within grace)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    states = (*COUNTED, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states))


def _finished(study: Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def _best(study: Study) -> TrialRecord | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return TrialRecord.of(max(complete, key=lambda t: t.value or -math.inf)) if complete else None


def _result(
    study: Study, settings: StudySettings, metric: str, report_dir: Path, ran: int
) -> SweepResult:
    trials = [TrialRecord.of(t) for t in study.get_trials(deepcopy=False)]
    return SweepResult(
        settings.name,
        redact(settings.storage),
        metric,
        trials,
        _best(study),
        ran,
        report_dir,
        param_importances(study),
    )


def param_importances(study: Study) -> dict[str, float]:
    """The fANOVA importance of each parameter over the complete trials; {} while too few vary."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varied = {p for t in done for p in t.params if len({str(u.params.get(p)) for u in done}) > 1}
    if len(done) < 3 or not varied:
        return {}
    try:
        scores = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as err:  # e.g. every trial scored the same
        log.warning("No parameter importance: %s", err)
        return {}
    return {k: float(v) for k, v in scores.items()}


def write_report(result: SweepResult, space: list[Param], out: Path) -> list[Path]:
    """best.yaml (parameters and the overrides to train with them), trials.csv and sweep.png."""
    out.mkdir(parents=True, exist_ok=True)
    best = result.best
    best_file = out / "best.yaml"
    best_file.write_text(
        yaml.safe_dump(
            {
                "study": result.study,
                "metric": result.metric,
                "value": best.value if best else None,
                "trial": best.number if best else None,
                "params": best.params if best else {},
                "overrides": [
                    p.override(best.params[p.path]) for p in space if best and p.path in best.params
                ],
            },
            sort_keys=False,
        )
    )
    trials_file = out / "trials.csv"
    paths = sorted({k for t in result.trials for k in t.params})
    with trials_file.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "state", "value", "seconds", *paths])
        for t in result.trials:
            writer.writerow(
                [t.number, t.state, t.value, t.seconds, *(t.params.get(p) for p in paths)]
            )
    return [best_file, trials_file, plot_sweep(result, out / "sweep.png")]


def plot_sweep(result: SweepResult, path: Path) -> Path:
    """Optimization history (each trial, best so far) beside each parameter's importance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    done = [t for t in result.trials if t.state == "complete" and t.value is not None]
    fig, (history, importance) = plt.subplots(1, 2, figsize=(11, 4))
    numbers = [t.number for t in done]
    values = [float(t.value or 0) for t in done]
    history.plot(numbers, values, "o", alpha=0.6, label="trial")
    history.step(
        numbers, np.maximum.accumulate(values) if values else [], where="post", label="best so far"
    )
    history.set(
        xlabel="trial", ylabel=result.metric, title=f"{result.study}: {len(done)} complete trials"
    )
    history.legend(loc="best")  # where it covers the fewest trials
    history.xaxis.set_major_locator(MaxNLocator(integer=True))
    scores = result.importances
    if scores:
        names = list(scores)[::-1]
        importance.barh(names, [scores[n] for n in names])
        importance.set(
            xlabel="importance (fANOVA)", title=f"What mattered, over {len(done)} trials"
        )
    else:
        importance.text(
            0.5,
            0.5,
            "importance needs ≥ 3 complete trials\nwith varied parameters and values",
            ha="center",
            va="center",
        )
        importance.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
