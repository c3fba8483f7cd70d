"""The worked example of docs/add-a-task.md (docs/examples/blobs_task.py), for tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

import modelcycle.tasks.base as base

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "blobs_task.py"


def load_example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import the example into a copy of the task registry (undone after the test)."""
    base.available_tasks()  # built-in tasks first, so the copy holds them
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    spec = importlib.util.spec_from_file_location("blobs_task_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # saved models pickle its classes
    spec.loader.exec_module(module)
    return module
