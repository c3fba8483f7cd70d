"""The task contract and the task registry.

A task is one module: it loads its data, splits it, builds the datamodule and model for a
fold, and scores a fitted model and a non-learned baseline on the same fold. The pipeline,
the CLI and tracking only ever talk to this contract.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import lightning as L
import numpy as np

from modelcycle.logs import warn_once
from modelcycle.servable import ServableModel
from modelcycle.serving.adapter import ServingAdapter
from modelcycle.tasks import BUILTIN, ENTRY_POINT_GROUP

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Fold:
    """One split of a task's data; `train`, `val` and `test` are row indices of its dataset."""

    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass
class Evaluation:
    """Scores of one scorer (the model or a baseline) on one fold.

    Attributes:
        metrics: Scalar metrics, named the same for the model and the baseline.
        details: Task-specific raw results (scores per relation, curves) for plots.
    """

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSummary:
    """What was loaded: a content hash for lineage and counts for the report."""

    data_hash: str
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)


D = TypeVar("D")


class Task(ABC, Generic[D]):
    """What every task implements. `D` is the task's own loaded-dataset type."""

    name: ClassVar[str]
    #: Metric the registry's gate compares and summaries lead with ("higher is better");
    #: one of the metrics `evaluate` and `baseline` return.
    primary_metric: ClassVar[str]
    #: How a served model of this task reads requests and writes responses.
    serving: ClassVar[type[ServingAdapter]]
    #: Validation metric the model logs each epoch, for early stopping ("higher is better").
    monitor: ClassVar[str] = "val_auc"
    #: Metrics shown in the summary table, in order.
    summary_metrics: ClassVar[tuple[str, ...]]
    #: Fewest `cv.n_folds` the task's `folds` takes, checked before anything loads.
    min_folds: ClassVar[int] = 1
    #: Data source classes the task reads (empty: any), checked before anything is built.
    data_sources: ClassVar[tuple[type, ...]] = ()
    #: Model group targets the task builds (empty: any), checked before anything is built.
    model_targets: ClassVar[tuple[Callable[..., Any], ...]] = ()
    #: What one row of its data is, in reports and logs ("subjects", "tiles").
    unit: ClassVar[str] = "rows"

    @abstractmethod
    def load(self) -> tuple[D, DataSummary]:
        """Read and validate the task's data."""

    @abstractmethod
    def folds(self, data: D, n_folds: int, seed: int) -> list[Fold]:
        """Split the data into cross-validation folds with no leakage between parts."""

    @abstractmethod
    def datamodule(self, data: D, fold: Fold, seed: int) -> L.LightningDataModule:
        """Build the datamodule for one fold; everything fitted uses `fold.train` only."""

    @abstractmethod
    def model(self, data: D, fold: Fold) -> L.LightningModule:
        """Build a fresh model for one fold."""

    @abstractmethod
    def baseline(self, data: D, fold: Fold) -> Evaluation:
        """Score the non-learned baseline on `fold.test`."""

    @abstractmethod
    def evaluate(self, module: L.LightningModule, data: D, fold: Fold) -> Evaluation:
        """Score a trained model on `fold.test`."""

    @abstractmethod
    def final_fold(self, data: D, seed: int) -> Fold:
        """The split of the deployable model: everything trains but validation; no test rows."""

    @abstractmethod
    def servable(self, module: L.LightningModule, data: D, fold: Fold) -> ServableModel:
        """Wrap a trained model so that it maps request arrays to outputs, for export/serving."""

    @property
    def model_name(self) -> str:
        """The registered-model name of its runs: one lineage per thing it predicts."""
        return self.name

    def reference(self, data: D) -> dict[str, float]:
        """Baseline metrics over the whole dataset, for orientation next to the folds."""
        return {}

    @abstractmethod
    def plot(self, model: Evaluation, baseline: Evaluation, out_dir: Path, tag: str) -> list[Path]:
        """Save the task's plots comparing model and baseline; return the files written."""


_REGISTRY: dict[str, type[Task[Any]]] = {}


def seeded_draw(rows: np.ndarray, n: int) -> np.ndarray:
    """Up to `n` of `rows`, drawn with a fixed seed, sorted."""
    return np.sort(np.random.default_rng(1).permutation(rows)[:n])


def unseen_first(
    fold: Fold,
    held_out: np.ndarray,
    n: int,
    draw: Callable[[np.ndarray, int], np.ndarray] = seeded_draw,
) -> tuple[np.ndarray, int]:
    """A drift reference of up to `n` rows: unseen rows first, topped up with training rows.

    Unseen rows are `fold.val` but the `held_out` ones (which score the int8 variant the
    reference calibrates): the deployed model never trained on them, so their outputs are
    what new requests' look like; `fold.train` rows, which trained it, only add input
    features (see `ServableModel.reference_unseen`). `draw(rows, k)` picks up to k of
    `rows`. Returns the rows, unseen ones first, and how many are unseen.
    """
    first = draw(np.setdiff1d(fold.val, held_out), n)
    rest = draw(fold.train, n - len(first)) if len(first) < n else first[:0]
    return np.concatenate([first, rest]).astype(int), len(first)


#: Class attributes every task sets (the others have defaults).
REQUIRED = ("primary_metric", "summary_metrics", "serving")


def register_task(name: str) -> Callable[[type[Task[Any]]], type[Task[Any]]]:
    """Class decorator that registers a task under `name`; a duplicate name is an error."""

    def add(cls: type[Task[Any]]) -> type[Task[Any]]:
        missing = [a for a in REQUIRED if not hasattr(cls, a)]
        if missing:  # said here, not as an AttributeError once a run has loaded its data
            raise TypeError(
                f"Task class {cls.__qualname__} ({name!r}) sets no {', '.join(missing)}; "
                "every task sets primary_metric, summary_metrics and serving (see "
                "docs/add-a-task.md)."
            )
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(
                f"Task name {name!r} is already registered by {_REGISTRY[name].__qualname__}; "
                "choose another name."
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def _load_builtin_and_plugins() -> None:
    # Built-in tasks register on import; outside packages through the entry-point group.
    for builtin in BUILTIN.values():
        importlib.import_module(builtin.module)

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        known = _REGISTRY.get(ep.name)
        if known is not None:
            if ep.value != f"{known.__module__}:{known.__qualname__}":
                _warn_once(
                    f"Task plugin {ep.name} ({ep.value}) is not loaded: {ep.name!r} is already "
                    f"the task {known.__module__}:{known.__qualname__}. Give the entry point "
                    "another name."
                )
            continue
        try:
            loaded = ep.load()  # "package.module:TaskClass"
        except Exception as err:  # a broken plugin must not hide the other tasks
            _warn_once(f"Could not load task plugin {ep.name} ({ep.value}): {err}")
            continue
        if not (isinstance(loaded, type) and issubclass(loaded, Task)):
            _warn_once(f"Task plugin {ep.name} ({ep.value}) is not a Task subclass; ignored")
            continue
        named = next((n for n, cls in _REGISTRY.items() if cls is loaded), None)
        if named is not None:  # its module registered it on import, under its own name
            if named != ep.name:
                _warn_once(
                    f"Task plugin {ep.name} ({ep.value}) registers itself as {named!r}, the "
                    f"name its runs and models use; name the entry point {named} to match."
                )
            continue
        try:
            register_task(ep.name)(loaded)
        except (TypeError, ValueError) as err:
            _warn_once(f"Task plugin {ep.name} ({ep.value}) not registered: {err}")


def _warn_once(message: str) -> None:
    warn_once(log, message)  # every task lookup reads the entry points


def available_tasks() -> list[str]:
    """Names of every registered task, built-in and from plugins."""
    _load_builtin_and_plugins()
    return sorted(_REGISTRY)


def check_settings(
    positive: dict[str, float] | None = None,
    whole: dict[str, int] | None = None,
    shares: dict[str, float] | None = None,
    non_negative: dict[str, float] | None = None,
) -> None:
    """Refuse task settings out of range, naming the first: the checks a constructor makes.

    Args:
        positive: Numbers that must be above 0 (a learning rate, a temperature).
        whole: Counts that must be at least 1 (a batch size).
        shares: Fractions that must lie strictly between 0 and 1.
        non_negative: Numbers that must be at least 0 (a weight decay).

    Raises:
        ValueError: `key=value` and what to give.
    """
    rules = (
        (positive, lambda v: v > 0, "a number above 0"),
        (whole, lambda v: v >= 1, "a whole number >= 1"),
        (shares, lambda v: 0 < v < 1, "a share strictly between 0 and 1"),
        (non_negative, lambda v: v >= 0, "a number >= 0"),
    )
    for values, fits, kind in rules:
        for key, value in (values or {}).items():
            if not fits(value):
                raise ValueError(f"{key}={value!r}: give {kind}.")


class UnknownTaskError(KeyError):
    """No task is registered under the name asked for; the message lists those that are."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()


def get_task(name: str) -> type[Task[Any]]:
    """Look a task class up by name; an unknown name lists the valid ones (UnknownTaskError)."""
    _load_builtin_and_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(_REGISTRY)) or "(none)"
        said = f"Unknown task {name!r}. Registered tasks: {valid}.{_unlisted(name)}"
        raise UnknownTaskError(said) from None


def _unlisted(name: str) -> str:
    """A hint when a module `modelcycle.tasks.<name>` exists (found, not imported) unlisted."""
    from importlib.util import find_spec

    module = f"{__package__}.{name}"
    listed = {__name__, *(b.module for b in BUILTIN.values())}
    listed |= {b.adapter.split(":")[0] for b in BUILTIN.values()}
    if not name.isidentifier() or module in listed or find_spec(module) is None:
        return ""
    return (
        f" {module} exists, but only the modules BUILTIN names are loaded: add "
        f'"{name}": BuiltinTask("{module}", "<module>:<Class> of its serving adapter") to '
        "BUILTIN in modelcycle/tasks/__init__.py. A task of another package registers "
        f"through the {ENTRY_POINT_GROUP!r} entry point instead (docs/add-a-task.md)."
    )
