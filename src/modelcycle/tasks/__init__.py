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

#: The built-in tasks by name, and the module that registers each on import.
BUILTIN = {
    "twins": "modelcycle.tasks.twins",
    "twins_functional": "modelcycle.tasks.twins_functional",
    "image": "modelcycle.tasks.image",
    "segmentation": "modelcycle.tasks.segmentation",
    "node": "modelcycle.tasks.node",
}
#: The built-in tasks' serving adapters ("module:Class"), each in a module of its own that
#: imports neither torch nor Lightning: a server imports only these (seconds less to start).
#: Another task's adapter comes from its class (`Task.serving`), with its training code.
ADAPTERS = {
    "twins": "modelcycle.tasks.twins_serving:TwinsServing",
    "twins_functional": "modelcycle.tasks.twins_functional_serving:FunctionalServing",
    "image": "modelcycle.tasks.image_serving:ImageServing",
    "segmentation": "modelcycle.tasks.segmentation_serving:SegmentationServing",
    "node": "modelcycle.tasks.node_serving:NodeServing",
}
#: The entry-point group through which outside packages register tasks.
ENTRY_POINT_GROUP = "modelcycle.tasks"

__all__ = [
    "DataSummary",
    "Evaluation",
    "Fold",
    "Task",
    "available_tasks",
    "get_task",
    "register_task",
]


def task_names() -> list[str]:
    """Names of the tasks a run can use; plugins are loaded (and checked) only if any exist.

    Without plugins this imports nothing: the built-in names are known.
    """
    from importlib.metadata import entry_points

    if not entry_points(group=ENTRY_POINT_GROUP):
        return sorted(BUILTIN)
    from modelcycle.tasks.base import available_tasks

    return available_tasks()


def __getattr__(name: str) -> object:
    if name in __all__:
        from modelcycle.tasks import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
