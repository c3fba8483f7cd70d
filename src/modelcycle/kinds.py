"""What kind a config value is: YAML's `true` is a bool, and a bool is an int to Python."""

from __future__ import annotations


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
