"""Tasks: one module per task, looked up by name through the registry in `base`."""

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
