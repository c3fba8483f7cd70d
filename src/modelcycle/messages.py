"""Library errors quoted inside the project's own sentences."""

from __future__ import annotations


def clause(err: BaseException) -> str:
    """`err`'s message without its final full stop, to be followed by ". " and a fix.

    Many libraries end their messages in one, which read as ".." inside ours.
    """
    return str(err).rstrip().rstrip(".")
