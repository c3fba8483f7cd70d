"""Tracked runs end as what happened to them: finished, failed, or stopped by the user."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

import modelcycle
from modelcycle.tracking import Tracker, TrackingSettings, code_state, git_state, killed_runs


def test_an_interrupted_run_ends_killed_and_a_failed_one_failed(tmp_path: Path) -> None:
    tracker = Tracker(TrackingSettings(), tmp_path / "ws")
    client = MlflowClient(tracking_uri=tracker.uri)
    ids: dict[str, str] = {}
    with (
        pytest.raises(KeyboardInterrupt),
        tracker.run("parent") as ids["parent"],
        tracker.run("child", nested=True) as ids["child"],
    ):
        raise KeyboardInterrupt
    with pytest.raises(ValueError), tracker.run("broken") as ids["broken"]:
        raise ValueError("a bug")
    with tracker.run("done") as ids["done"]:
        pass
    # a finished run reopened to log more (the pipeline's export)
    with pytest.raises(KeyboardInterrupt), tracker.resume(ids["done"]):
        raise KeyboardInterrupt
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {"parent": "KILLED", "child": "KILLED", "broken": "FAILED", "done": "KILLED"}
    # what the command's Ctrl-C line reads: the innermost run is ended first
    assert killed_runs()[-3:] == [ids["child"], ids["parent"], ids["done"]]


def test_an_interruption_stays_one_when_the_store_cannot_take_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Seen in CI: a Ctrl-C inside MLflow's own SQLite write left the store locked, and the
    # "database is locked" error of marking the run replaced the interruption (exit 1). A
    # Ctrl-C now waits for the write; another process may still hold the lock too long.
    import mlflow
    from mlflow.exceptions import MlflowException

    tracker = Tracker(TrackingSettings(), tmp_path / "ws")
    real_end_run = mlflow.end_run

    def locked(status: str = "FINISHED") -> None:
        if status == "KILLED":
            mlflow.tracking.fluent._active_run_stack.get().pop()  # as end_run does first
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        real_end_run(status)

    monkeypatch.setattr(mlflow, "end_run", locked)
    with pytest.raises(KeyboardInterrupt), tracker.run("locked") as run_id:
        raise KeyboardInterrupt
    assert f"Run {run_id} could not be marked KILLED (" in caplog.text
    assert run_id not in killed_runs()  # the Ctrl-C line does not claim it either
    assert "database is locked" in caplog.text
    assert mlflow.active_run() is None  # nothing left open for the next run


def _repo(path: Path) -> str:
    """A new git repository at `path` with one commit; its SHA."""
    path.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "other project"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_lineage_records_the_code_that_ran_not_the_folder_it_ran_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A train started inside an unrelated repository recorded that repository's SHA.
    package = Path(modelcycle.__file__).resolve().parent  # an editable install: a checkout
    checkout = git_state(package)
    assert checkout["git_sha"] != "unknown", "the tests run from a modelcycle checkout"
    other = _repo(tmp_path / "other")
    monkeypatch.chdir(tmp_path / "other")
    assert code_state() == checkout and checkout["git_sha"] != other
    assert checkout["git_root"] == str(package.parents[1])


def _dist_info(site: Path, name: str, direct_url: dict[str, object] | None) -> None:
    """The metadata pip writes for an installed distribution of package `name`, version 0.2.0.

    Written by hand (a real `pip install -e --target` writes the same files, and takes
    seconds to build): what is read is its PEP 610 `direct_url.json`.
    """
    info = site / f"{name}-0.2.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.2.0\n")
    (info / "top_level.txt").write_text(f"{name}\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))


def test_lineage_records_the_commit_a_task_package_was_installed_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plugin installed editable from its clone recorded only its version, 0.2.0 on every
    # commit; the git fields described modelcycle's checkout.
    from modelcycle.pipeline import run_tags
    from modelcycle.tracking import package_checkouts, task_packages

    sha = _repo(tmp_path / "clone")
    plain = tmp_path / "plain"
    plain.mkdir()
    site = tmp_path / "site"
    _dist_info(
        site, "clonetask", {"url": (tmp_path / "clone").as_uri(), "dir_info": {"editable": True}}
    )
    _dist_info(site, "copiedtask", {"url": (tmp_path / "clone").as_uri(), "dir_info": {}})
    _dist_info(site, "plaintask", {"url": plain.as_uri(), "dir_info": {"editable": True}})
    _dist_info(site, "indextask", None)
    # `pip install git+https://...@main`: the commit pip checked out (no folder is left)
    url, commit = "https://example.org/plugins/urltask.git", "c" * 40
    _dist_info(site, "urltask", {"url": url, "vcs_info": {"vcs": "git", "commit_id": commit}})
    _dist_info(site, "hgtask", {"url": url, "vcs_info": {"vcs": "hg", "commit_id": "d" * 40}})
    monkeypatch.syspath_prepend(str(site))
    names = ("clonetask", "copiedtask", "plaintask", "indextask", "urltask", "hgtask")
    state = {"git_sha": sha, "git_dirty": "False", "git_root": str(tmp_path / "clone")}
    assert package_checkouts(names) == {
        "clonetask": {**state, "editable": "True"},
        "copiedtask": {**state, "editable": "False"},
        "urltask": {"git_sha": commit, "git_dirty": "False", "git_url": url, "editable": "False"},
    }
    (tmp_path / "clone" / "task.py").write_text("changed = True\n")
    named = {"name": "clone", "model_name": "clone", "primary_metric": "auc"}
    task = type("CloneTask", (), {"__module__": "clonetask.task", **named})
    assert task_packages(task) == ("clonetask",)
    tags = run_tags(task(), "d" * 64)
    assert json.loads(tags["packages"])["clonetask"] == "0.2.0"
    recorded = json.loads(tags["packages_git"])
    assert recorded == {"clonetask": {**state, "git_dirty": "True", "editable": "True"}}


def test_outside_git_the_state_is_unknown_not_clean(tmp_path: Path) -> None:
    # "dirty: False" was claimed for a state nobody could read
    outside = tmp_path / "plain"
    outside.mkdir()
    assert git_state(outside) == {
        "git_sha": "unknown",
        "git_dirty": "unknown",
        "git_root": "unknown",
    }


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What modelcycle.tracking warned (MLflow logs its store's set-up beside it)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "modelcycle.tracking" and r.levelno >= logging.WARNING
    ]


def test_a_moved_workspace_says_its_runs_files_go_to_the_old_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The store records the artifact folder as an absolute path: runs tracked in a moved or
    # copied workspace silently wrote their files (and models) into the old one.
    tmp_path = tmp_path / "with space"  # the store keeps the folder quoted, as a URI
    Tracker(TrackingSettings(), tmp_path / "ws")
    with caplog.at_level(logging.WARNING, logger="modelcycle.tracking"):
        Tracker(TrackingSettings(), tmp_path / "ws")  # the same place: nothing to say
    assert not warnings(caplog)
    shutil.copytree(tmp_path / "ws", tmp_path / "copy")
    with caplog.at_level(logging.WARNING, logger="modelcycle.tracking"):
        moved = Tracker(TrackingSettings(), tmp_path / "copy")
    (warned,) = warnings(caplog)
    assert f"keeps its run files in {(tmp_path / 'ws' / 'artifacts').resolve()}" in warned
    assert f"so that they go to {(tmp_path / 'copy' / 'artifacts').resolve()}" in warned
    assert "`modelcycle relocate`" in warned and "logger.experiment=NAME" in warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modelcycle.tracking"):
        Tracker(TrackingSettings(experiment="fresh"), tmp_path / "copy")  # the way out
    assert not warnings(caplog)
    with moved.run("run") as run_id:  # where its files go, as the warning says
        uri = MlflowClient(tracking_uri=moved.uri).get_run(run_id).info.artifact_uri
    assert uri.startswith((tmp_path / "ws" / "artifacts").resolve().as_uri())
