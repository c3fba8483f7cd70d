"""The task contract and registry, exercised with the worked example of docs/add-a-task.md:
a task that shares nothing with twins."""

from __future__ import annotations

import json
import logging
from importlib.metadata import EntryPoint
from pathlib import Path
from types import ModuleType

import pytest

import modelcycle.tasks.base as base
from example_task import load_example
from modelcycle.pipeline import PipelineSettings, run_pipeline
from modelcycle.servable import ServableModel
from modelcycle.serving.adapter import ServingAdapter
from modelcycle.tasks import get_task, register_task
from modelcycle.tracking import Tracker, TrackingSettings
from modelcycle.training import TrainerSettings


@pytest.fixture
def blobs(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_example(monkeypatch)


def test_lookup_by_name_and_unknown_lists_valid(blobs: ModuleType) -> None:
    assert get_task("blobs") is blobs.BlobsTask and blobs.BlobsTask.name == "blobs"
    assert get_task("twins").name == "twins"
    with pytest.raises(KeyError, match=r"Unknown task 'nope'. Registered tasks: blobs, .*twins"):
        get_task("nope")


def test_an_unknown_task_whose_module_is_in_the_package_says_to_name_it_in_builtin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module added under modelcycle/tasks/ and not named in BUILTIN read "Unknown task",
    # though its file was right there.
    import sys

    import modelcycle.tasks

    (tmp_path / "orbits.py").write_text("raise AssertionError('imported to give a hint')\n")
    monkeypatch.setattr(modelcycle.tasks, "__path__", [*modelcycle.tasks.__path__, str(tmp_path)])
    with pytest.raises(KeyError, match=r"Unknown task 'orbits'\. Registered tasks: .*\.") as err:
        get_task("orbits")
    said = str(err.value)
    assert "modelcycle.tasks.orbits exists, but only the modules BUILTIN names are loaded" in said
    assert 'add "orbits": BuiltinTask("modelcycle.tasks.orbits", "<module>:<Class>' in said
    assert "to BUILTIN in modelcycle/tasks/__init__.py" in said
    assert "serving adapter" in said and "'modelcycle.tasks' entry point" in said
    assert "modelcycle.tasks.orbits" not in sys.modules
    # modules of the package that are no task's: the plain message
    for name in ("twins_serving", "base", "nope", "no.such"):
        with pytest.raises(KeyError) as err:
            get_task(name)
        assert "BUILTIN" not in str(err.value), name


def test_duplicate_names_are_errors(blobs: ModuleType) -> None:
    class Other(blobs.BlobsTask):  # type: ignore[name-defined]
        pass

    with pytest.raises(ValueError, match="'blobs' is already registered by BlobsTask"):
        register_task("blobs")(Other)


def test_a_task_class_without_a_required_attribute_is_refused_by_name() -> None:
    # a missing summary_metrics was an AttributeError once a run had loaded its data
    class Bare(base.Task):
        primary_metric = "auc"

    with pytest.raises(TypeError, match=r"Bare \('bare'\) sets no summary_metrics, serving"):
        register_task("bare")(Bare)  # type: ignore[type-abstract]
    with pytest.raises(KeyError):
        get_task("bare")


def test_scores_without_the_primary_or_a_summary_metric_are_refused_at_once(
    blobs: ModuleType,
) -> None:
    # a primary metric evaluate() does not give was found at registration ("not a finished
    # pipeline run"); a summary metric the baseline lacks, as a KeyError after every fold
    from modelcycle.evaluate import EvaluationError, check_metrics

    task = blobs.BlobsTask
    check_metrics(task, {"auc": 0.9, "accuracy": 0.8}, {"auc": 0.5})
    with pytest.raises(EvaluationError, match=r"evaluate\(\) gives no auc \(it gives accuracy\)"):
        check_metrics(task, {"accuracy": 0.8}, {"auc": 0.5})
    with pytest.raises(EvaluationError, match=r"baseline\(\) gives no auc \(it gives nothing\)"):
        check_metrics(task, {"auc": 0.9}, {})


class Unregistered(base.Task):
    """A task class whose module does not register it: its entry point's name does."""

    primary_metric = "auc"
    summary_metrics = ("auc",)
    serving = ServingAdapter


def _entry_points(monkeypatch: pytest.MonkeyPatch, *plugins: EntryPoint) -> None:
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: list(plugins))
    monkeypatch.setattr(base, "entry_points", lambda group: list(plugins))


def test_outside_packages_register_through_entry_points(
    blobs: ModuleType, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    group = base.ENTRY_POINT_GROUP
    plugin = EntryPoint("unregistered", f"{__name__}:Unregistered", group)
    broken = EntryPoint("broken", "no_such_module_xyz:Task", group)
    not_a_task = EntryPoint("not_a_task", "blobs_plugin.task:Logistic", group)
    _entry_points(monkeypatch, plugin, broken, not_a_task)
    monkeypatch.setattr("modelcycle.logs._WARNED", set())
    with caplog.at_level(logging.WARNING, logger="modelcycle.tasks.base"):
        names = base.available_tasks()  # the broken plugins are logged, not fatal
        base.available_tasks()
        get_task("twins")
    assert "unregistered" in names and "twins" in names
    assert "broken" not in names and "not_a_task" not in names
    assert get_task("unregistered") is Unregistered and Unregistered.name == "unregistered"
    # every lookup reads the entry points; each fault is said once
    assert caplog.text.count("Could not load task plugin broken") == 1
    assert caplog.text.count("not_a_task (blobs_plugin.task:Logistic) is not a Task") == 1


def test_an_entry_point_keeps_the_name_its_task_registered_and_the_built_in_names(
    blobs: ModuleType, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    group = base.ENTRY_POINT_GROUP
    renamed = EntryPoint("my_blobs", "blobs_plugin.task:BlobsTask", group)
    shadowing = EntryPoint("twins", "blobs_plugin.task:BlobsTask", group)
    same = EntryPoint("blobs", "blobs_plugin.task:BlobsTask", group)  # what the example ships
    _entry_points(monkeypatch, renamed, shadowing, same)
    monkeypatch.setattr("modelcycle.logs._WARNED", set())
    with caplog.at_level(logging.WARNING, logger="modelcycle.tasks.base"):
        names = base.available_tasks()
        base.available_tasks()
    # the class keeps its name (runs and registered models use it); no second name
    assert blobs.BlobsTask.name == "blobs" and "my_blobs" not in names
    assert get_task("twins").__module__ == "modelcycle.tasks.twins"
    assert caplog.text.count("my_blobs (blobs_plugin.task:BlobsTask) registers itself as") == 1
    assert "name the entry point blobs to match" in caplog.text
    assert caplog.text.count("'twins' is already the task modelcycle.tasks.twins:TwinsTask") == 1
    assert "Task plugin blobs " not in caplog.text  # its own name: nothing to say


def test_task_names_load_plugins_only_when_there_are_some(
    blobs: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelcycle.tasks import BUILTIN, task_names

    assert task_names() == sorted(BUILTIN)  # no plugin installed: nothing is loaded
    _entry_points(monkeypatch, EntryPoint("unregistered", f"{__name__}:Unregistered", "x"))
    assert "unregistered" in task_names() and set(BUILTIN) <= set(task_names())


def test_the_built_in_table_names_each_built_in_task_and_its_module() -> None:
    from modelcycle.tasks import BUILTIN

    base.available_tasks()
    built_in = {
        name: cls.__module__
        for name, cls in base._REGISTRY.items()
        if cls.__module__.startswith("modelcycle.tasks.")
    }
    assert built_in == {name: builtin.module for name, builtin in BUILTIN.items()}


def test_generic_pipeline_runs_a_task_it_has_never_seen(
    blobs: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = Tracker(TrackingSettings(experiment="blobs"), tmp_path)
    with caplog.at_level(logging.INFO, logger="modelcycle.pipeline"):
        result = run_pipeline(
            blobs.BlobsTask(rows=120),
            PipelineSettings("blobs-run", n_folds=3, seed=1),
            TrainerSettings(max_epochs=15, min_epochs=1, patience=15, progress_bar=False),
            tracker,
            tmp_path,
            {"task": {"name": "blobs"}},
        )
    assert "Data: positives: " in caplog.text  # the task's data notes, said as it starts
    assert [f.fold for f in result.report.folds] == [0, 1, 2]
    # the learned model sees both informative features; the baseline only one
    mean = result.report.aggregate()
    assert mean["model"]["auc"][0] > mean["baseline"]["auc"][0]
    summary = json.loads((result.report_dir / "summary.json").read_text())
    assert summary["task"] == "blobs" and summary["aggregate"]["model"]["auc"][0] > 0.9
    served = ServableModel.load(result.report_dir / "model")  # the final, deployable fit
    assert served.task == "blobs" and served.held_out[0].shape == (20, 4)


@pytest.mark.parametrize("step", ["load", "folds", "model"])
def test_a_run_stopped_before_it_writes_leaves_no_report_folder(
    blobs: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    # Every run stopped by its data (a stand-in where the real copy belongs, more folds than
    # the data fills) or by a model that cannot be built for it left an empty report folder.
    def unreadable(self: object, *args: object) -> None:
        raise ValueError("data.root holds no data")

    monkeypatch.setattr(blobs.BlobsTask, step, unreadable)
    tracker = Tracker(TrackingSettings(experiment="blobs"), tmp_path)
    with pytest.raises(ValueError, match="holds no data"):
        run_pipeline(
            blobs.BlobsTask(rows=120),
            PipelineSettings("blobs-run", n_folds=3, seed=1),
            TrainerSettings(max_epochs=1, min_epochs=1, patience=1, progress_bar=False),
            tracker,
            tmp_path,
            {"task": {"name": "blobs"}},
        )
    reports = tmp_path / "reports"
    assert not reports.exists() or not any(reports.iterdir())
