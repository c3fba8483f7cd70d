"""What kind a config value is: YAML's `true` is a bool, and a bool is an int to Python."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

Builder = TypeVar("Builder", bound=Callable[..., Any])


def is_number(value: object) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_whole(value: object) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


#: The values a setting may take: at least the first, and below the second (None: no bound).
Range = tuple[float, float | None]


def in_range(value: object, bounds: Range) -> bool:
    """A number within `bounds`."""
    least, below = bounds
    return is_number(value) and value >= least and (below is None or value < below)  # type: ignore[operator]


def describe_range(bounds: Range) -> str:
    """`bounds` in words: ">= 1", "from 0 to below 1"."""
    least, below = bounds
    return f">= {least:g}" if below is None else f"from {least:g} to below {below:g}"


def declares(
    ranges: dict[str, Range] | None = None, check: Callable[[dict[str, Any]], None] | None = None
) -> Callable[[Builder], Builder]:
    """Give a builder function what a class declares as `RANGES`, and a `CHECK` of its values.

    A config target that is a function (a model factory) cannot hold class attributes;
    this sets them on it, so its settings are checked before the data loads. `check` gets
    the config group's values and raises ValueError("key=value: ...") for one it refuses.
    """

    def mark(builder: Builder) -> Builder:
        setattr(builder, "RANGES", ranges or {})  # noqa: B010 - a function has no declared slots
        if check is not None:
            setattr(builder, "CHECK", check)  # noqa: B010
        return builder

    return mark
