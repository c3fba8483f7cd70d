"""Library errors quoted inside the project's sentences."""

from __future__ import annotations

import pytest

from modelcycle.messages import clause


@pytest.mark.parametrize(
    ("message", "quoted"),
    [
        ("Name or service not known.", "Name or service not known"),
        ("no such table: captures", "no such table: captures"),
        ("HTTP 401 - Unauthorized. ", "HTTP 401 - Unauthorized"),
        ("version 1.2", "version 1.2"),
    ],
)
def test_a_quoted_error_loses_only_its_final_full_stop(message: str, quoted: str) -> None:
    assert clause(OSError(message)) == quoted
