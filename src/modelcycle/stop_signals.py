"""SIGTERM stops a command as Ctrl-C does: its runs marked KILLED, one line, exit 143.

SIGTERM is how `kill`, `timeout`, CI runners, Kubernetes and SLURM stop a job. Python's
default ends the process on the spot, leaving its tracked runs RUNNING; during a fit,
Lightning's own handler turned it into a silent exit 0 with the runs FAILED, so a stopped
training read as a success. Here SIGTERM runs whatever handles Ctrl-C at that moment (the
command's, a fit's, the one that ends DDP ranks), so a store write is finished first and
everything a Ctrl-C cleans up is cleaned up; the command then names the signal.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from modelcycle.interrupts import when_outside_store

#: The stop signals received by this process's command, in order (main thread only).
_received: list[int] = []


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Within the block, SIGTERM is handled by the current Ctrl-C handler.

    Only on the main thread and when SIGTERM has its default action: a handler someone else
    set (a server's graceful stop) is kept, and so is a SIGTERM ignored at start.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    _received.clear()
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def on_sigterm(signum: int, frame: FrameType | None) -> Any:
    """The SIGTERM handler of a command: run the current Ctrl-C handler."""
    _received.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):  # Ctrl-C ignored (a script's background job): stop regardless
        handler = when_outside_store(signal.default_int_handler)
    return handler(signal.SIGINT, frame)


def stopped_by() -> str:
    """What stopped the command, as the user knows it: "SIGTERM" or "Ctrl-C"."""
    return "SIGTERM" if _received else "Ctrl-C"


def stop_exit_code() -> int:
    """128 + the signal's number, as shells report a process it stopped (130 or 143)."""
    return 128 + (_received[-1] if _received else signal.SIGINT)
