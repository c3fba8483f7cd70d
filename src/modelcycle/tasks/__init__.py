"""Tasks: one module per task, looked up by name through the registry in `base`.

`base` (and with it torch and Lightning) is imported on first use of one of its names: a
task's serving adapter lives in a module of this package, and a server imports it alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelcycle.tasks.base import (
        DataSummary,
        Evaluation,
        Fold,
        Task,
        available_tasks,
        get_task,
        register_task,
    )

__all__ = [
    "DataSummary",
    "Evaluation",
    "Fold",
    "Task",
    "available_tasks",
    "get_task",
    "register_task",
]


def __getattr__(name: str) -> object:
    if name in __all__:
        from modelcycle.tasks import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
