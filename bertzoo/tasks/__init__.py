"""Tasks: the plugin registry and the base classes every task (built-in or third-party) uses."""

from bertzoo.tasks.registry import (ENTRY_POINT_GROUP, RegisteredTask, TaskError, TaskSpec,
                                    get_task, list_tasks, register)


def __getattr__(name):  # the base classes import Lightning; load them on first use
    if name in ("TaskModule", "TaskDataModule", "DataError", "PredictionWriter"):
        from bertzoo.tasks import base
        return getattr(base, name)
    raise AttributeError(f"module 'bertzoo.tasks' has no attribute {name!r}")


__all__ = ["ENTRY_POINT_GROUP", "RegisteredTask", "TaskError", "TaskSpec", "get_task",
           "list_tasks", "register", "TaskModule", "TaskDataModule", "DataError",
           "PredictionWriter"]
