"""Tasks: one module per task, looked up by name through the registry in `base`.

`base` (and with it torch and Lightning) is imported on first use of one of its names: a
task's serving adapter lives in a module of this package, and a server imports it alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

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


class BuiltinTask(NamedTuple):
    """Where a built-in task lives: the module that registers it on import, and its adapter.

    The adapter ("module:Class", the class its `Task.serving` names) is in a module of its
    own that imports neither torch nor Lightning: a server imports only that (seconds less to
    start). Another task's adapter comes from its class, with its training code.
    """

    module: str
    adapter: str


#: The built-in tasks by name (tests check the table against the registry and the classes).
BUILTIN = {
    "twins": BuiltinTask("modelcycle.tasks.twins", "modelcycle.tasks.twins_serving:TwinsServing"),
    "twins_functional": BuiltinTask(
        "modelcycle.tasks.twins_functional",
        "modelcycle.tasks.twins_functional_serving:FunctionalServing",
    ),
    "image": BuiltinTask("modelcycle.tasks.image", "modelcycle.tasks.image_serving:ImageServing"),
    "segmentation": BuiltinTask(
        "modelcycle.tasks.segmentation",
        "modelcycle.tasks.segmentation_serving:SegmentationServing",
    ),
    "node": BuiltinTask("modelcycle.tasks.node", "modelcycle.tasks.node_serving:NodeServing"),
}
#: The entry-point group through which outside packages register tasks.
ENTRY_POINT_GROUP = "modelcycle.tasks"
#: The entry-point group of outside tasks' serving adapters: a server loads one without the
#: task's training code (`NAME = "package.module:Adapter"`, NAME the task's).
ADAPTER_ENTRY_POINT_GROUP = "modelcycle.adapters"

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
