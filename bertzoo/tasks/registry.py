"""The task registry: every task, built-in or third-party, is an entry point in the group
`bertzoo.tasks` whose object is a `TaskSpec`.

    # a plugin's pyproject.toml
    [project.entry-points."bertzoo.tasks"]
    similarity = "bertzoo_similarity.task:TASK"

The entry point names a `TaskSpec` (or a function without arguments that returns one).
bertzoo's own classification, NER and QA tasks are declared the same way in bertzoo's
pyproject.toml: there is no second path. Entry points are listed without importing anything;
a task's module is imported the first time the task is asked for (`get_task`) or when every task
is listed (`list_tasks`). A task that fails to import or is malformed is recorded as broken, with
the reason, and never stops the others from loading. Two distributions registering the same name
is an error that names both (timm's registry only warns; that hides which one you got).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertzoo.tasks.base import TaskDataModule, TaskModule
from bertzoo.tasks.inputs import RawInputs

ENTRY_POINT_GROUP = "bertzoo.tasks"


class TaskError(LookupError):
    """An unknown, broken or ambiguous task; the message says which and why."""


ExampleData = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class TaskSpec:
    """What a task plugin provides.

    Args:
        name: The task's name on the command line (`bertzoo fit --task NAME`); must equal the
            entry point's name.
        description: One line for `bertzoo tasks`.
        module: The `bertzoo.tasks.TaskModule` subclass (the LightningModule).
        datamodule: The `bertzoo.tasks.TaskDataModule` subclass. Its `model_links` name the
            values the model is built with (the vocabulary size, label names...).
        example_data: `example_data(folder, like=None) -> dict` writes a few rows of valid
            data into `folder` and returns the datamodule arguments that read them (at least
            `train_file` and `validation_file`; `predict_file` if prediction reads another
            format). `like` is None or a recipe's `data:` section, whose layout (column names,
            file format) the rows should then follow as far as the task can; a task may ignore
            it, but must accept it. `bertzoo.testing.check_task` (and so bertzoo's own suite)
            runs the task on these rows; the recipe tests pass `like`.
        monitor: Metric the checkpoint callback watches, e.g. "val/accuracy" (a module may
            choose another through its `checkpoint_monitor`).
        monitor_mode: "max" or "min" for `monitor`.
        inputs: The task's raw-input schema (`bertzoo.tasks.inputs.RawInputs`): what
            `bertzoo.load(...)` and `bertzoo serve` accept for it. None: the task can be
            trained and run with `bertzoo predict`, but not loaded for inference.
    """

    name: str
    description: str
    module: type
    datamodule: type
    example_data: ExampleData
    monitor: str = "val/loss"
    monitor_mode: str = "min"
    inputs: RawInputs | None = None

    def validate(self, entry_point_name: str | None = None) -> None:
        """Raise TypeError naming every way this spec breaks the contract above."""
        problems = []
        if entry_point_name is not None and self.name != entry_point_name:
            problems.append(f"spec name {self.name!r} differs from its entry point name "
                            f"{entry_point_name!r}")
        if not isinstance(self.description, str) or not self.description.strip() \
                or "\n" in self.description.strip():
            problems.append("description must be one non-empty line")
        if not (isinstance(self.module, type) and issubclass(self.module, TaskModule)):
            problems.append(f"module must be a TaskModule subclass, got {self.module!r}")
        if not (isinstance(self.datamodule, type)
                and issubclass(self.datamodule, TaskDataModule)):
            problems.append(f"datamodule must be a TaskDataModule subclass, got "
                            f"{self.datamodule!r}")
        if not callable(self.example_data):
            problems.append("example_data must be callable")
        elif not _accepts(self.example_data, Path("."), like=None):
            problems.append("example_data must accept (folder, like=None)")
        if self.monitor_mode not in ("min", "max"):
            problems.append(f"monitor_mode must be 'min' or 'max', got {self.monitor_mode!r}")
        if self.inputs is not None:
            problems += (self.inputs.validate() if isinstance(self.inputs, RawInputs)
                         else [f"inputs must be a bertzoo.tasks.inputs.RawInputs, got "
                               f"{_describe(self.inputs)}"])
        if problems:
            raise TypeError("; ".join(problems))


@dataclass
class RegisteredTask:
    """One entry point and what became of it."""

    name: str
    value: str  # "package.module:OBJECT"
    distribution: str
    version: str
    spec: TaskSpec | None = None
    error: str | None = None
    _entry_point: Any = field(default=None, repr=False, compare=False)
    # The plugin's own exception, kept as the cause of the TaskError raised when the task is
    # used (BERTZOO_TRACEBACK=1 shows where inside the plugin it failed).
    _exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def loaded(self) -> bool:
        return self.spec is not None or self.error is not None

    @property
    def status(self) -> str:
        if self.error:
            return f"broken: {self.error}"
        return "ok" if self.spec is not None else "not loaded"


class TaskRegistry:
    """Tasks found in entry points (or added with `register`), loaded on first use."""

    def __init__(self, entry_points: Callable[[], Iterable[Any]] | None = None):
        self._entry_points = entry_points or (
            lambda: importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        self._tasks: dict[str, RegisteredTask] | None = None
        self._duplicates: dict[str, list[RegisteredTask]] = {}

    # -- discovery (no imports)
    def _discover(self) -> dict[str, RegisteredTask]:
        if self._tasks is None:
            self._tasks = {}
            for ep in self._entry_points():
                dist = ep.dist
                task = RegisteredTask(
                    name=ep.name, value=ep.value,
                    distribution=dist.metadata["Name"] if dist is not None else "<unknown>",
                    version=dist.version if dist is not None else "", _entry_point=ep)
                self._add(task)
        return self._tasks

    def _add(self, task: RegisteredTask) -> None:
        tasks = self._tasks
        existing = tasks.get(task.name)
        if existing is None:
            tasks[task.name] = task
            return
        if (existing.value, existing.distribution) == (task.value, task.distribution):
            return  # the same distribution seen twice on sys.path: nothing new
        self._duplicates.setdefault(task.name, [existing]).append(task)
        message = (f"duplicate task name {task.name!r}: registered by "
                   + " and ".join(sorted(f"{t.distribution} ({t.value})"
                                         for t in self._duplicates[task.name]))
                   + "; uninstall one of them")
        for t in self._duplicates[task.name]:
            t.error = message
        existing.error = message

    # -- in-process registration (notebooks, tests); same validation and duplicate rules
    def register(self, spec: TaskSpec, distribution: str = "<in-process>") -> None:
        """Add `spec`; a name already taken is an error that leaves the registered task as
        it was."""
        if not isinstance(spec, TaskSpec):
            raise TypeError(f"register() takes a bertzoo.tasks.TaskSpec, got "
                            f"{type(spec).__name__}")
        spec.validate()
        existing = self._discover().get(spec.name)
        if existing is not None:
            if existing.spec is spec:
                return  # registering the same spec again adds nothing
            raise TaskError(f"duplicate task name {spec.name!r}: registered by "
                            f"{existing.distribution} ({existing.value}) and {distribution} "
                            f"({spec.module.__module__})")
        self._tasks[spec.name] = RegisteredTask(
            name=spec.name, value=f"{spec.module.__module__}:{spec.module.__qualname__}",
            distribution=distribution, version="", spec=spec)

    # -- loading
    def _load(self, task: RegisteredTask) -> RegisteredTask:
        if task.loaded:
            return task
        try:
            spec = task._entry_point.load()
            if inspect.isfunction(spec):
                spec = spec()  # an entry point may name a function that returns the spec
            if not isinstance(spec, TaskSpec):
                raise TypeError(f"{task.value} is {_describe(spec)}, expected a "
                                f"bertzoo.tasks.TaskSpec")
            spec.validate(task.name)
            task.spec = spec
        except Exception as err:  # any failure inside a plugin is that plugin's, not ours:
            # recorded (`bertzoo tasks` lists it as broken), raised as a TaskError from `err`
            # when the task is used
            task.error = f"{type(err).__name__}: {err}"
            task._exception = err
        return task

    def list(self) -> list[RegisteredTask]:
        """Every registered task, loaded, sorted by name; broken ones carry their reason. A
        duplicated name is listed once per distribution that registers it."""
        tasks = self._discover()
        listed = []
        for name in sorted(tasks):
            listed += self._duplicates.get(name, [tasks[name]])
        return [self._load(t) for t in listed]

    def names(self) -> list[str]:
        return sorted(self._discover())

    def get(self, name: str) -> TaskSpec:
        tasks = self._discover()
        if name not in tasks:
            known = sorted(tasks)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TaskError(f"unknown task {name!r}{hint}; known tasks: "
                            f"{', '.join(known) or 'none'} (`bertzoo tasks` shows them)")
        if name in self._duplicates:
            raise TaskError(tasks[name].error)
        task = self._load(tasks[name])
        if task.error:
            raise TaskError(f"task {name!r} from {task.distribution} cannot be used: "
                            f"{task.error}") from task._exception
        return task.spec

    def reset(self) -> None:
        self._tasks = None
        self._duplicates = {}


def _accepts(function: Callable, *args: Any, **kwargs: Any) -> bool:
    """Whether `function(*args, **kwargs)` matches its signature (nothing is called)."""
    try:
        inspect.signature(function).bind(*args, **kwargs)
    except TypeError:
        return False
    except ValueError:  # no signature to read (some builtins): let the call tell
        return True
    return True


def _describe(value: Any) -> str:
    if isinstance(value, type):
        return f"the class {value.__module__}.{value.__qualname__}"
    return f"a {type(value).__name__}"


REGISTRY = TaskRegistry()


def list_tasks() -> list[RegisteredTask]:
    """All tasks from the `bertzoo.tasks` entry points, with distribution, version and status."""
    return REGISTRY.list()


def get_task(name: str) -> TaskSpec:
    """The `TaskSpec` registered under `name`; an unknown name lists the known ones."""
    return REGISTRY.get(name)


def register(spec: TaskSpec, distribution: str = "<in-process>") -> None:
    """Add a task without packaging it (a notebook, a test). Installed plugins use entry points."""
    REGISTRY.register(spec, distribution)


def init_parameters(cls) -> set[str]:
    """Arguments `cls(...)` accepts, following `**kwargs` up to the base classes' __init__."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names |= {p.name for p in parameters
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names
