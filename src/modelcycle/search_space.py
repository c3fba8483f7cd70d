"""A sweep's search space: config paths and the distributions their values are drawn from.

The `sweep.space` config mirrors the config it searches, down to entries such as
`{type: float, low: 1e-4, high: 1e-2, log: true}`; each becomes a `Param` that draws a value
for an Optuna trial and writes it back as a Hydra override.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

KINDS = ("float", "int", "categorical")
SPEC_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}


class SpaceError(ValueError):
    """A search-space entry that cannot be used; the message names it and says how to fix it."""


@dataclass(frozen=True)
class Param:
    """One searched config value: its path (`task.lr`) and the distribution it is drawn from."""

    path: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    #: Categorical choices as written in the config (lists allowed, e.g. layer widths).
    values: tuple[Any, ...] = ()

    @property
    def choices(self) -> tuple[Any, ...]:
        """The choices as Optuna stores them: scalars, with lists as their override text."""
        return tuple(hydra_value(v) if isinstance(v, list | tuple) else v for v in self.values)

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution of this parameter."""
        if self.kind == "categorical":
            return CategoricalDistribution(self.choices)
        if self.kind == "int":
            step = int(self.step or 1)
            return IntDistribution(int(self.low or 0), int(self.high or 0), log=self.log, step=step)
        return FloatDistribution(
            float(self.low or 0), float(self.high or 0), log=self.log, step=self.step
        )

    def suggest(self, trial: optuna.Trial) -> Any:
        """Draw this parameter's value for `trial`."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.path, self.choices)
        if self.kind == "int":
            step = int(self.step or 1)
            return trial.suggest_int(
                self.path, int(self.low or 0), int(self.high or 0), step=step, log=self.log
            )
        return trial.suggest_float(
            self.path, float(self.low or 0), float(self.high or 0), step=self.step, log=self.log
        )

    def ends(self) -> list[tuple[str, Any]]:
        """What a trial may draw at the edges: ("low", v) and ("high", v), or each choice.

        With a step, "high" is the highest value on the step grid from `low`.
        """
        if self.kind == "categorical":
            return [("choice", v) for v in self.values]
        low, high = float(self.low or 0), float(self.high or 0)
        if self.step:
            high = low + self.step * math.floor((high - low) / self.step + 1e-9)
        if self.kind == "int":
            return [("low", int(low)), ("high", int(high))]
        return [("low", low), ("high", high)]

    def override(self, value: Any) -> str:
        """The Hydra override that sets this parameter to `value` (as Optuna stores it)."""
        if self.kind == "categorical" and value in self.choices:
            value = self.values[self.choices.index(value)]
        return f"{self.path}={hydra_value(value)}"


def hydra_value(value: Any) -> str:
    """`value` as Hydra override text: lowercase booleans, null, [lists], quoted odd strings."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, str) and (not value or any(c in value for c in " ,=[]{}()'\"\\:$")):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def parse_space(space: Mapping[str, Any], prefix: str = "sweep.space") -> list[Param]:
    """The search space from its config: nested keys down to `{type: ..., ...}` entries.

    `{task: {lr: {type: float, low: 1e-4, high: 1e-2, log: true}}}` searches `task.lr`.

    Raises:
        SpaceError: An entry that is not a valid distribution, naming its key and the fix.
    """
    if not isinstance(space, Mapping):
        raise SpaceError(
            f"{prefix}={space!r}: give a mapping of config keys to distributions, e.g. "
            "{task: {lr: {type: float, low: 0.0001, high: 0.01, log: true}}}."
        )
    params: list[Param] = []
    for key, value in space.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping) and "type" in value:
            params.append(_param(name, name.removeprefix("sweep.space."), value))
        elif isinstance(value, Mapping):
            params += parse_space(value, name)
        else:
            raise SpaceError(
                f"{name}={value!r} is not a search-space entry: give a mapping such as "
                f"{{type: float, low: 0.0001, high: 0.01, log: true}}, {{type: int, low: 1, "
                f"high: 4}} or {{type: categorical, choices: [a, b]}}."
            )
    if prefix == "sweep.space" and not params:
        raise SpaceError(
            "sweep.space is empty: add entries such as "
            "`+sweep.space.task.lr={type:float,low:0.0001,high:0.01,log:true}`."
        )
    return params


def _param(name: str, path: str, spec: Mapping[str, Any]) -> Param:
    kind = spec["type"]
    if kind not in KINDS:
        raise SpaceError(
            f"{name}.type={kind!r} is not a distribution; use one of {', '.join(KINDS)}."
        )
    unknown = sorted(set(spec) - SPEC_KEYS[kind])
    if unknown:
        allowed = ", ".join(sorted(SPEC_KEYS[kind]))
        raise SpaceError(f"{name}: {', '.join(unknown)} is not a {kind} key; use {allowed}.")
    if kind == "categorical":
        return Param(path, kind, values=_choices(name, spec.get("choices")))
    low, high = (_number(name, spec, k, kind) for k in ("low", "high"))
    log_scale = spec.get("log", False)
    step = spec.get("step")
    if not isinstance(log_scale, bool):
        raise SpaceError(f"{name}.log={log_scale!r}: write true or false.")
    if not low < high:
        raise SpaceError(f"{name}: low={low} must be below high={high}.")
    if log_scale and low <= 0:
        raise SpaceError(f"{name}: a log scale needs low > 0 (got {low}); raise low or drop log.")
    if step is not None and (log_scale or not isinstance(step, int | float) or step <= 0):
        raise SpaceError(f"{name}.step={step!r}: give a positive number, and no log scale with it.")
    return Param(path, kind, low, high, log_scale, step)


def _number(name: str, spec: Mapping[str, Any], key: str, kind: str) -> float:
    value = spec.get(key)
    valid = int if kind == "int" else int | float
    if isinstance(value, bool) or not isinstance(value, valid):
        example = "4" if kind == "int" else "0.001"
        raise SpaceError(
            f"{name}.{key}={value!r}: a {kind} range needs a number, e.g. {key}: {example}."
        )
    return value


def _choices(name: str, choices: Any) -> tuple[Any, ...]:
    if not isinstance(choices, Sequence) or isinstance(choices, str) or len(choices) < 2:
        raise SpaceError(f"{name}.choices={choices!r}: give a list of at least two values.")
    if len({hydra_value(c) for c in choices}) < len(choices):
        raise SpaceError(f"{name}.choices={list(choices)!r}: a choice is repeated; list each once.")
    return tuple(choices)
