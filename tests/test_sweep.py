"""Sweeps on real SQLite storage and real MLflow tracking, with a cheap objective or tiny data."""

from __future__ import annotations

import io
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from logging import StreamHandler
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from modelcycle.cli import app
from modelcycle.config import ConfigError, compose_config, sweep_config
from modelcycle.search_space import parse_space
from modelcycle.sweep import StudySettings, SweepError, SweepResult, TrialRecord, run_sweep
from modelcycle.tracking import Tracker, TrackingSettings

runner = CliRunner()
TINY = ["debug=tiny", "trainer.max_epochs=1"]
SPACE = {
    "task": {"lr": {"type": "float", "low": 0.0, "high": 1.0}},
    "model": {"hidden": {"type": "categorical", "choices": [[8], [16, 8]]}},
}


def peak(overrides: list[str], report: Callable[[int, float], None]) -> float:
    """Highest at lr = 0.3, a little higher with two hidden layers; two "folds" reported."""
    values = dict(o.split("=", 1) for o in overrides)
    score = -((float(values["task.lr"]) - 0.3) ** 2) + 0.01 * values["model.hidden"].count(",")
    for fold in range(2):
        report(fold, score)
    return score


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    """One MLflow store for the module: creating its SQLite schema takes seconds."""
    return Tracker(TrackingSettings(), tmp_path_factory.mktemp("tracked"))


def sweep(
    tracker: Tracker,
    workspace: Path,
    trials: int,
    seed: int = 0,
    objective: Callable[[list[str], Callable[[int, float], None]], float] = peak,
    pruner: str = "none",
    space: Mapping[str, Any] | None = None,
    metric: str = "score",
    reported: tuple[type[BaseException], ...] = (),
) -> SweepResult:
    workspace.mkdir(parents=True, exist_ok=True)
    settings = StudySettings("s", f"sqlite:///{workspace / 'optuna.db'}", trials, seed, pruner)
    params = parse_space(space or SPACE)
    report = workspace / "report"
    return run_sweep(settings, params, objective, tracker, metric, report, reported=reported)


def stored(workspace: Path) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=f"sqlite:///{workspace / 'optuna.db'}")


def test_sweep_reaches_the_target_and_resumes(tracker: Tracker, tmp_path: Path) -> None:
    first = sweep(tracker, tmp_path, 3)
    assert first.ran == 3 and [t.number for t in first.trials] == [0, 1, 2]
    values = [t.value for t in first.trials if t.value is not None]
    assert len(values) == 3 and first.best is not None and first.best.value == max(values)
    assert stored(tmp_path).best_value == max(values)
    # the target counts the stored trials: one more, not four more
    second = sweep(tracker, tmp_path, 4)
    assert second.ran == 1 and [t.number for t in second.trials] == [0, 1, 2, 3]
    # trial 3 draws afresh: a per-process seeded sampler would replay trial 0's values here
    assert second.trials[3].params != second.trials[0].params
    assert sweep(tracker, tmp_path, 4).ran == 0
    best = yaml.safe_load((tmp_path / "report" / "best.yaml").read_text())
    assert best["value"] == max(t.value or -1 for t in second.trials)
    assert f"task.lr={best['params']['task.lr']}" in best["overrides"]
    # a list choice goes back to Hydra as a list
    assert f"model.hidden={best['params']['model.hidden']}" in best["overrides"]
    rows = (tmp_path / "report" / "trials.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("trial,state,value")
    assert (tmp_path / "report" / "sweep.png").stat().st_size > 5000


def test_same_seed_same_draws_other_seed_others(tracker: Tracker, tmp_path: Path) -> None:
    def draws(name: str, seed: int) -> list[dict[str, object]]:
        return [t.params for t in sweep(tracker, tmp_path / name, 3, seed).trials]

    first = draws("a", 1)
    assert draws("b", 1) == first and draws("c", 2) != first


def test_trials_are_nested_tracked_runs(tracker: Tracker, tmp_path: Path) -> None:
    result = sweep(tracker, tmp_path, 3)
    mlflow.set_tracking_uri(f"sqlite:///{tracker.workspace / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["modelcycle"], output_format="list")
    parent = next(r for r in runs if r.info.run_id == result.run_id)
    assert parent.info.run_name == "sweep-s"
    runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.run_id]
    assert parent.info.run_id == result.run_id
    assert parent.data.tags["sweep.storage"].startswith("sqlite:///")
    assert result.best is not None and parent.data.metrics["best_value"] == result.best.value
    trials = {r.info.run_name: r for r in runs}
    assert sorted(trials) == ["s-trial0", "s-trial1", "s-trial2"]
    for record in result.trials:
        run = trials[f"s-trial{record.number}"]
        assert run.data.tags["mlflow.parentRunId"] == result.run_id
        assert run.data.metrics["objective"] == record.value
        assert float(run.data.params["task.lr"]) == record.params["task.lr"]
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id)}
    assert {"best.yaml", "trials.csv", "sweep.png"} <= files


def test_importance_ranks_the_parameter_that_matters(tracker: Tracker, tmp_path: Path) -> None:
    result = sweep(tracker, tmp_path, 8)
    assert set(result.importances) == {"task.lr", "model.hidden"}
    assert result.importances["task.lr"] > result.importances["model.hidden"]


def test_pruned_trials_count_toward_the_target(tracker: Tracker, tmp_path: Path) -> None:
    result = sweep(tracker, tmp_path, 12, pruner="median")
    states = [t.state for t in result.trials]
    assert len(states) == 12 and "pruned" in states
    assert set(states) <= {"complete", "pruned"}
    assert states[:5] == ["complete"] * 5  # the median pruner waits for 5 trials
    pruned = [t.number for t in result.trials if t.state == "pruned"]
    mlflow.set_tracking_uri(tracker.uri)
    runs = mlflow.search_runs(
        experiment_names=["modelcycle"],
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'",
        output_format="list",
    )
    ended = {r.info.run_name: (r.info.status, r.data.tags["sweep.state"]) for r in runs}
    assert ended[f"s-trial{pruned[0]}"] == ("FINISHED", "pruned")


@pytest.fixture
def optuna_log() -> Iterator[io.StringIO]:
    """What Optuna's own log handler writes (to stderr) while the test runs."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # as run_sweep does; sets it up
    handlers = [h for h in logging.getLogger("optuna").handlers if isinstance(h, StreamHandler)]
    assert handlers, "Optuna logs through its own handler"
    written = io.StringIO()
    streams = [h.setStream(written) for h in handlers]
    yield written
    for handler, stream in zip(handlers, streams, strict=True):
        handler.setStream(stream)


def test_a_failing_trial_stops_the_sweep_and_does_not_count(
    tracker: Tracker, tmp_path: Path, optuna_log: io.StringIO
) -> None:
    def broken(overrides: list[str], report: Callable[[int, float], None]) -> float:
        raise ConfigError("task.lr=-1: the learning rate must be positive")

    with pytest.raises(ConfigError, match="learning rate"):
        sweep(tracker, tmp_path, 3, objective=broken, reported=(ConfigError,))
    trials = stored(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL]
    # Optuna notes the failed trial; the caller states the error, so no traceback is logged
    noted = optuna_log.getvalue()
    assert "Trial 0 failed" in noted and "learning rate" in noted
    assert "Traceback" not in noted
    assert sweep(tracker, tmp_path, 2).ran == 2  # the failed trial leaves the target where it was


def test_an_unexpected_trial_error_keeps_its_traceback(
    tracker: Tracker, tmp_path: Path, optuna_log: io.StringIO
) -> None:
    def buggy(overrides: list[str], report: Callable[[int, float], None]) -> float:
        raise KeyError("a bug, not the user's input")

    with pytest.raises(KeyError):
        sweep(tracker, tmp_path, 1, objective=buggy, reported=(ConfigError,))
    noted = optuna_log.getvalue()
    assert "Trial 0 failed" in noted and "Traceback" in noted


def test_resuming_with_other_choices_or_metric_is_refused(tracker: Tracker, tmp_path: Path) -> None:
    sweep(tracker, tmp_path, 1)
    other = {"model": {"hidden": {"type": "categorical", "choices": [[4], [8]]}}}
    with pytest.raises(SweepError, match=r"model\.hidden.*--study"):
        sweep(tracker, tmp_path, 2, space=other)
    with pytest.raises(SweepError, match=r"maximizes score.*--study"):
        sweep(tracker, tmp_path, 2, metric="auc")


def test_unreachable_storage_says_how_to_give_one(tracker: Tracker, tmp_path: Path) -> None:
    settings = StudySettings("s", "nosuchdb://user:secret@host/db", 1)
    with pytest.raises(SweepError, match="SQLAlchemy URL") as err:
        run_sweep(settings, parse_space(SPACE), peak, tracker, "score", tmp_path)
    assert "secret" not in str(err.value)
    missing_driver = StudySettings("s", "postgresql://user:secret@nohost/db", 1)
    with pytest.raises(SweepError, match="SQLAlchemy URL") as err:
        run_sweep(missing_driver, parse_space(SPACE), peak, tracker, "score", tmp_path)
    assert ".." not in str(err.value)  # Optuna's own message ends in a full stop


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("BADURL", r"^--storage='BADURL': not a database URL\. Give a SQLAlchemy URL: sqlite:///"),
        (
            "postgres://u:secret@h/db",
            r"^--storage='postgres://u:\*\*\*@h/db': SQLAlchemy knows no ",
        ),
        (
            "postgresql:/u:secret@h/db",
            r"^--storage='postgresql:/u:\*\*\*@h/db': not a database URL",
        ),
        ("postgresql+nodriver://u@h/db", r"knows no database 'postgresql\+nodriver'"),
        (
            "sqlite:///no/such/folder/optuna.db",
            r"the folder no/such/folder does not exist\. Create",
        ),
    ],
)
def test_a_bad_storage_is_named_before_any_data_is_read(
    given: str, said: str, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was found only when the study opened, after the data had loaded (seconds to
    # minutes), and read "Cannot open the study storage <unparsable URL>".
    def read(*args: object) -> None:
        raise AssertionError("the data was read before the storage was checked")

    monkeypatch.setattr("modelcycle.config.assemble", read)
    result = runner.invoke(app, ["sweep", "experiment=twins", "--storage", given])
    assert result.exit_code == 2, result.stdout
    assert re.search(said, " ".join(result.stdout.removeprefix("error: ").split())), result.stdout
    assert "secret" not in result.stdout


@pytest.mark.parametrize("driver", ["", "+psycopg"])  # postgresql:// is psycopg's too
def test_a_database_server_nobody_answers_at_is_named_before_any_data_is_read(
    driver: str, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wrong host, port or password showed only when the study opened, after the data had
    # loaded. psycopg (PostgreSQL's driver, as the docs give it) is a test dependency.
    import socket
    import time

    from modelcycle.sweep import CONNECT_SECONDS

    with socket.socket() as free:  # a loopback port nothing listens at once it is closed
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]

    def read(*args: object) -> None:
        raise AssertionError("the data was read before the storage was checked")

    monkeypatch.setattr("modelcycle.config.assemble", read)
    given = f"postgresql{driver}://u:secret@127.0.0.1:{port}/db"
    started = time.monotonic()
    result = runner.invoke(app, ["sweep", "experiment=twins", "--storage", given])
    said = " ".join(result.stdout.removeprefix("error: ").split())
    assert result.exit_code == 2, said
    shown = f"postgresql{driver}://u:***@127.0.0.1:{port}/db"
    assert said.startswith(f"--storage='{shown}': cannot connect ("), said
    assert "Check the host, port, user, password and database" in said
    assert "secret" not in said and time.monotonic() - started < CONNECT_SECONDS + 5


def test_a_storage_in_the_config_or_with_a_missing_driver_is_named_too(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelcycle.sweep import check_storage

    with pytest.raises(ConfigError, match=r"^sweep\.storage='BADURL': not a database URL"):
        sweep_config(compose_config(["sweep.storage=BADURL"]))
    monkeypatch.setitem(sys.modules, "MySQLdb", None)  # the driver mysql:// imports: absent
    with pytest.raises(SweepError, match=r"its driver, MySQLdb, is not installed.*mysql\+DRIVER"):
        check_storage("mysql://u:secret@h/db", "--storage", workspace)
    for fine in ("sqlite:///optuna.db", f"sqlite:///{workspace / 'optuna.db'}", "sqlite://"):
        check_storage(fine, "--storage", workspace)  # the workspace: the sweep makes it
    assert not (workspace / "optuna.db").exists()  # SQLite is not opened: that makes the file


def test_sweeps_started_in_the_same_second_each_get_their_own_report_folder(
    tracker: Tracker, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The folder was named in the config, before the sweep: two sweeps started together
    # wrote best.yaml and trials.csv into one folder, the later over the earlier.
    monkeypatch.setattr(time, "strftime", lambda fmt, *at: "20260101-120000")
    plans = [sweep_config(compose_config([f"sweep.study=s{n}"])) for n in (1, 1)]
    assert not (workspace / "reports").exists()  # named, not yet made
    workspace.mkdir(parents=True)  # as the command makes it, for the study's database
    folders = []
    for n, plan in enumerate(plans):
        study = replace(plan.study, name=f"s{n}", trials=1)
        result = run_sweep(study, parse_space(SPACE), peak, tracker, "score", plan.report_dir)
        folders.append(result.report_dir)
    assert [f.name for f in folders] == ["sweep-s1-20260101-120000", "sweep-s1-20260101-120000-2"]
    assert sorted((workspace / "reports").iterdir()) == folders
    studies = [yaml.safe_load((f / "best.yaml").read_text())["study"] for f in folders]
    assert studies == ["s0", "s1"]  # each sweep's own report


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path: Path) -> None:
    """Two processes on one SQLite study and one new workspace: both start (the first creates
    the MLflow store while the other waits), both work, no draw repeats, the target holds."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    worker = Path(__file__).with_name("sweep_worker.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), storage, str(tmp_path / "ws"), "6"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for k in range(2)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # each worker checks the target before its next trial: at most one extra per other worker
    assert 6 <= len(complete) <= 7 and len(complete) == len(trials)
    assert len({t.user_attrs["worker"] for t in complete}) == 2
    assert len({t.params["x"] for t in complete}) == len(complete)
    ran = sum(int(out.split("ran ")[1].split()[0]) for out, _ in outputs)
    assert ran == len(complete)


@pytest.mark.slow
def test_cli_sweeps_the_tiny_twins_config_and_resumes(tiny_qtim: Path, workspace: Path) -> None:
    args = ["sweep", f"data.root={tiny_qtim}", *TINY, "--trials", "3"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.stdout
    assert "[3/3] trial 2 complete" in first.stdout
    assert "twins: 3 trials (3 run now)" in first.stdout
    assert f"Train with it: modelcycle train data.root={tiny_qtim} debug=tiny" in first.stdout
    storage = f"sqlite:///{workspace / 'optuna.db'}"
    study = optuna.load_study(study_name="twins", storage=storage)
    values = [t.value for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(values) == 3 and study.best_value == max(v for v in values if v is not None)
    assert {"task.lr", "model.hidden", "model.dropout"} <= set(study.best_params)
    report = next((workspace / "reports").glob("sweep-twins-*"))
    best = yaml.safe_load((report / "best.yaml").read_text())
    assert best["value"] == study.best_value and best["metric"] == "auc_twin_vs_unrelated"
    # each trial is a tracked run holding its folds' runs
    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["modelcycle"], output_format="list")
    names = sorted(r.info.run_name for r in runs)
    assert names.count("sweep-twins") == 1 and "twins-trial2" in names
    parent = next(r for r in runs if r.info.run_name == "sweep-twins")
    assert parent.data.params["data.root"] == str(tiny_qtim)
    assert parent.data.params["sweep.trials"] == "3"
    assert sum(n == "twins-fold0" for n in names) == 3
    resumed = runner.invoke(app, ["sweep", f"data.root={tiny_qtim}", *TINY, "--trials", "4"])
    assert resumed.exit_code == 0, resumed.stdout
    assert "twins: 4 trials (1 run now)" in resumed.stdout
    assert len(optuna.load_study(study_name="twins", storage=storage).trials) == 4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+sweep.space.task.lrr={type:float,low:0.1,high:1}",
            r"the twins task's config has no task.lrr, .* sweep/space=NAME here\). task.lrr "
            r"\(did you mean task.lr\?\) is not a key",
        ),
        # a task that builds its own model, with the default (twins') space
        ("~model", r"sweep.space.model.hidden: this config has no model group, .* of its own"),
        ("+sweep.space.seed={type:int,low:1,high:9}", "seed cannot be searched"),
        ("+sweep.space.trainer={type:int,low:1,high:9}", "trainer is a whole config section"),
        ("sweep.space.task.lr.low=0.1", r"sweep.space.task.lr: low=0.1 must be below high"),
        ("sweep.space.task.lr.type=uniform", "type='uniform' is not a distribution"),
        ("sweep.pruner=hyperband", "sweep.pruner='hyperband'"),
        ("trainer.devices=2", "trainer.devices=2.*trains each trial in one process"),
        ("trainer.strategy=ddp", "trainer.strategy=ddp.*several sweep workers on one study"),
    ],
)
def test_cli_refuses_a_bad_space_by_name(workspace: Path, override: str, message: str) -> None:
    result = runner.invoke(app, ["sweep", override, "--trials", "1"])
    assert result.exit_code == 2, result.stdout
    assert re.search(message, result.stdout.replace("\n", " ")), result.stdout
    assert "Traceback" not in result.stdout and not (workspace / "optuna.db").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sweep.trials=abc", "sweep.trials='abc': give a whole number"),
        ("sweep.trials=0", "at least 1"),
        ("sweep.seed=-1", "sweep.seed=-1: give a whole number >= 0"),  # was numpy's traceback
    ],
)
def test_cli_refuses_a_bad_trial_count_or_seed_by_name(
    workspace: Path, override: str, message: str
) -> None:
    result = runner.invoke(app, ["sweep", override])
    assert result.exit_code == 2, result.stdout
    assert message in result.stdout and override.split("=")[0] + "=" in result.stdout
    assert not (workspace / "optuna.db").exists()


def test_cli_reads_the_data_before_the_first_trial(workspace: Path, tmp_path: Path) -> None:
    # Before, each trial found the data missing (after a download attempt when data.root was
    # unset): Optuna logged the failed trial with a traceback, and the study kept it.
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["sweep", f"data.root={empty}", "--trials", "1"])
    assert result.exit_code == 2, result.stdout
    assert "participants.tsv: file not found" in result.stdout.replace("\n", "")
    assert "Traceback" not in result.stdout and not (workspace / "optuna.db").exists()


def test_cli_refuses_an_unknown_override_by_name(workspace: Path) -> None:
    result = runner.invoke(app, ["sweep", "trainer.max_epoch=3"])
    assert result.exit_code == 2 and "trainer.max_epoch" in result.stdout


def test_a_study_resumes_only_from_the_config_its_trials_started_from(tmp_path: Path) -> None:
    # Resumed with trainer.max_epochs=1 after trials of 3 epochs, a study ran nothing and
    # printed a "Train with it" command of 1 epoch: not the trial it named best.
    from modelcycle.search_space import Param
    from modelcycle.sweep import open_study

    settings = StudySettings("s", f"sqlite:///{tmp_path / 'optuna.db'}", 2)
    space = [Param("task.lr", "float", 0.001, 0.1, True, None)]
    base = {"trainer": {"max_epochs": 3}, "task": {"lr": 0.01}, "workspace": "/a"}
    open_study(settings, "auc", space, base)
    # where things go (another machine's paths) and the searched keys may change; what
    # trains may not
    moved = {
        "trainer": {"max_epochs": 3},
        "task": {"lr": 0.5},
        "workspace": "/b",
        "data": {"download_dir": "/b/data", "root": "/mnt/qtim"},
    }
    open_study(settings, "auc", space, moved)
    with pytest.raises(
        SweepError, match=r"from trainer.max_epochs=3; this command gives trainer.max_epochs=1"
    ):
        open_study(settings, "auc", space, {**base, "trainer": {"max_epochs": 1}})


def test_cli_prints_a_train_command_the_shell_reads_back(
    tiny_qtim: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Printed joined by spaces, `data.kind=partial correlation` split in two words and
    # `{type:int,...}` was brace-expanded by bash: the pasted command trained something else.
    import modelcycle.sweep

    def best_of(settings: StudySettings, space: list[Any], *args: Any, **kwargs: Any) -> Any:
        best = TrialRecord(0, "complete", 0.5, {"model.hidden": [16, 8]}, 1.0)
        return SweepResult("s", "sqlite://", "auc", [best], best, 1, workspace / "report")

    monkeypatch.setattr(modelcycle.sweep, "run_sweep", best_of)
    base = [f"data.root={tiny_qtim}", "+note={a:1,b:2}", "run_name=my run", "--trials", "1"]
    result = runner.invoke(app, ["sweep", *base])
    assert result.exit_code == 0, result.stdout
    line = next(x for x in result.stdout.splitlines() if x.startswith("Train with it: "))
    words = shlex.split(line.removeprefix("Train with it: "))
    assert words == ["modelcycle", "train", *base[:3], "model.hidden=[16,8]"]


def test_cli_refuses_a_space_past_the_atlas_parcels_before_any_trial(
    workspace: Path, tmp_path: Path
) -> None:
    # twins_functional's space reaches top_k=16: on 12 parcels, trials failed with a traceback
    # after the data loaded.
    args = ["sweep", "experiment=twins_functional", "data.n_parcels=12", f"data.root={tmp_path}"]
    result = runner.invoke(app, [*args, "--trials", "1"])
    assert result.exit_code == 2, result.stdout
    said = result.stdout.replace("\n", " ")
    assert "sweep.space.model.top_k: a trial that draws high 16 could not start" in said
    assert "model.top_k=16: give at most 11 with data.n_parcels=12" in said
    assert "Traceback" not in result.stdout and not (workspace / "optuna.db").exists()


def test_a_study_resumes_only_on_the_data_its_trials_scored(
    tracker: Tracker, tmp_path: Path
) -> None:
    # data.root is left out of the config compared on resume (machines keep data in
    # different places), so a study resumed on another cohort mixed its trials in silently.
    settings = StudySettings("s", f"sqlite:///{tmp_path / 'optuna.db'}", 2)
    space = parse_space(SPACE)
    report = tmp_path / "report"
    run_sweep(settings, space, peak, tracker, "score", report, data_hash="a" * 64)
    assert stored(tmp_path).user_attrs["data_hash"] == "a" * 64
    more = StudySettings("s", settings.storage, 3)
    run_sweep(more, space, peak, tracker, "score", report, data_hash="a" * 64)  # same data
    with pytest.raises(SweepError) as refused:
        run_sweep(
            StudySettings("s", settings.storage, 4),
            space,
            peak,
            tracker,
            "score",
            report,
            data_hash="b" * 64,
        )
    said = str(refused.value)
    assert "ran its trials on data aaaaaaaaaaaa; this command's data is bbbbbbbbbbbb" in said
    assert "--study NAME" in said and len(stored(tmp_path).trials) == 3


def test_cli_gives_the_sweep_the_hash_of_the_data_it_read(
    tiny_qtim: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelcycle.sweep

    given: list[Any] = []

    def capture(*args: Any) -> Any:
        given.extend(args)
        return SweepResult("s", "sqlite://", "auc", [], None, 0, workspace / "report")

    monkeypatch.setattr(modelcycle.sweep, "run_sweep", capture)
    result = runner.invoke(app, ["sweep", f"data.root={tiny_qtim}", "--trials", "1"])
    assert result.exit_code == 0, result.stdout
    assert re.fullmatch(r"[0-9a-f]{12,}", given[-1]), given[-1]


def test_a_resume_with_another_space_names_the_key_added_or_removed(
    tracker: Tracker, tmp_path: Path
) -> None:
    # A key added to the space read as "ran its trials from data.n_parcels=32; this command
    # gives data.n_parcels=None", as if the config had lost it.
    from modelcycle.sweep import open_study

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    base = {"task": {"lr": 0.01}, "data": {"n_parcels": 32}, "model": {"hidden": [8]}}
    space = parse_space(SPACE)
    settings = StudySettings("s", storage, 1)
    run_sweep(settings, space, peak, tracker, "score", tmp_path / "report", config=base)
    wider = parse_space({**SPACE, "data": {"n_parcels": {"type": "int", "low": 8, "high": 32}}})
    with pytest.raises(SweepError) as added:
        open_study(StudySettings("s", storage, 2), "score", wider, base)
    said = str(added.value)
    assert "searched another space; this command's space has data.n_parcels added" in said
    assert "(its trials held it at 32)" in said and "--study NAME" in said
    assert "None" not in said
    narrower = parse_space({"task": SPACE["task"]})
    with pytest.raises(SweepError, match=r"model.hidden removed \(its trials searched it\)"):
        open_study(StudySettings("s", storage, 2), "score", narrower, base)


def test_the_plot_legend_hides_no_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fixed at the lower right, the legend covered the late trials that scored low.
    import matplotlib.pyplot as plt

    from modelcycle.sweep import plot_sweep

    drawn: list[Any] = []
    monkeypatch.setattr(plt, "close", drawn.append)
    values = [0.9, 0.5, 0.1, 0.12, 0.1, 0.11, 0.1, 0.12]
    trials = [TrialRecord(i, "complete", v, {}, 1.0) for i, v in enumerate(values)]
    result = SweepResult("s", "sqlite://", "auc", trials, trials[0], 8, tmp_path)
    plot_sweep(result, tmp_path / "sweep.png")
    figure = drawn[0]
    figure.canvas.draw()
    history = figure.axes[0]
    legend = history.get_legend().get_window_extent()
    points = history.transData.transform([(t.number, t.value) for t in trials])
    assert not any(legend.contains(x, y) for x, y in points)
    plt.close(figure)
