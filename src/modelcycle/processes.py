"""Child processes with a deadline that ends everything they started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any


def run_in_session(
    argv: Sequence[str], timeout: float, **popen: Any
) -> subprocess.CompletedProcess[Any]:
    """`subprocess.run`, in a session of its own so that a timeout kills its whole group.

    `subprocess.run` kills only the direct child: what a script started (a `sleep`, Locust's
    workers) lives on and may hold the output pipes open, so the wait goes on too.

    Raises:
        subprocess.TimeoutExpired: After `timeout` seconds, once the group is killed.
    """
    process = subprocess.Popen(argv, start_new_session=True, **popen)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # the group has ended meanwhile
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(argv, process.returncode, out, err)
