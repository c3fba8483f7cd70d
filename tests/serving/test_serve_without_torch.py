"""A server runs ONNX Runtime only: it starts, predicts and checks drift with torch unimportable.

Every built-in task's serving adapter lives apart from its training code, so `modelcycle
serve` imports neither torch nor Lightning (seconds less to start, per worker too). The
server here runs in a fresh interpreter where importing torch, Lightning, timm or
torchvision raises ImportError.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from image_fixtures import publish_image
from modelcycle.tracking import Tracker, TrackingSettings
from server_process import drift_without_torch
from serving_fixtures import ServedWorkspace


@pytest.mark.slow  # the image model: a tiny rice task trained and exported first
@pytest.mark.parametrize("task", ["twins", "image"])
def test_a_server_predicts_and_checks_drift_without_torch(
    task: str, served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    if task == "twins":
        root = served_workspace.root
    else:
        root = publish_image(tmp_path, Tracker(TrackingSettings(), tmp_path / "ws")).root
    drift_without_torch(root, task, tmp_path / "server.log")


def test_each_built_in_adapter_is_the_one_its_task_names() -> None:
    # The table lets a server skip the tasks' training code; it must not drift from them.
    from modelcycle.serving.loading import adapter_class
    from modelcycle.tasks import BUILTIN, available_tasks, get_task

    assert set(BUILTIN) <= set(available_tasks())
    for name in available_tasks():
        assert adapter_class(name) is get_task(name).serving, name


def test_an_unknown_task_has_no_adapter() -> None:
    from modelcycle.serving.loading import adapter_class
    from modelcycle.tasks.base import UnknownTaskError

    with pytest.raises(UnknownTaskError, match="Unknown task 'nope'"):
        adapter_class("nope")


def test_an_outside_tasks_adapter_comes_from_its_entry_point_without_its_training_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.metadata

    from example_task import PLUGIN
    from modelcycle.serving.loading import ModelLoadError, adapter_class
    from modelcycle.tasks import ADAPTER_ENTRY_POINT_GROUP

    monkeypatch.syspath_prepend(str(PLUGIN))
    for name in [m for m in sys.modules if m.partition(".")[0] == "blobs_plugin"]:
        monkeypatch.delitem(sys.modules, name)
    named = {
        "blobs": "blobs_plugin.serving:BlobsServing",
        "wrong": "blobs_plugin.serving:Point",
        "broken": "no_such_module_xyz:Adapter",
    }
    real = importlib.metadata.entry_points

    def entry_points(**kw: str) -> object:
        if kw.get("group") != ADAPTER_ENTRY_POINT_GROUP:
            return real(**kw)
        group = ADAPTER_ENTRY_POINT_GROUP
        return [importlib.metadata.EntryPoint(kw["name"], named[kw["name"]], group)]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert adapter_class("blobs").__name__ == "BlobsServing"
    assert "blobs_plugin.task" not in sys.modules  # the training code stays unread
    with pytest.raises(ModelLoadError, match=r"wrong \(blobs_plugin.serving:Point\) is not a"):
        adapter_class("wrong")
    with pytest.raises(ModelLoadError, match=r"broken \(no_such_module_xyz:Adapter\) does not"):
        adapter_class("broken")
