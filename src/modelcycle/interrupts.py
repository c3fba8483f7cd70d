"""Ctrl-C that waits until the main thread is out of the tracking store.

Python raises a KeyboardInterrupt between any two bytecodes of the main thread. Inside
SQLAlchemy (MLflow's tracking store) that can leave a session half-changed: its `close()`
then raises, the connection it held is never returned, and SQLite's write lock stays with
it. Every later write of the process waits out MLflow's 20 s busy timeout and fails
("database is locked"), so the runs a Ctrl-C stopped could not be marked KILLED; and a
KeyboardInterrupt between a pool lock's acquire and its `with` hangs the process for good.

`when_outside_store` wraps a SIGINT handler: a Ctrl-C that lands inside the store is held and
handled when the main thread has left it (checked every `RETRY_SECONDS`, with SIGALRM); a
second Ctrl-C while one is held is handled at once, wherever the thread is, for a store that
never returns.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

#: Packages a KeyboardInterrupt between two of their bytecodes can leave half-changed.
STORE_PACKAGES = ("sqlalchemy", "mlflow.store", "alembic")
#: How often a held Ctrl-C looks again whether the main thread has left the store.
RETRY_SECONDS = 0.02

Handler = Callable[[int, FrameType | None], Any]

#: The Ctrl-C being held (main thread only): the handler to run, the signal it came as, and
#: what SIGALRM did before, given back when it is handled.
_held: list[tuple[Handler, int, Any]] = []
#: Non-empty while a second Ctrl-C is handled: wrapped handlers within pass it straight on.
_through: list[bool] = []


def inside_store(frame: FrameType | None) -> bool:
    """Whether `frame`, or a frame that called it, runs code of `STORE_PACKAGES`."""
    while frame is not None:
        name = str(frame.f_globals.get("__name__", ""))
        if any(name == package or name.startswith(f"{package}.") for package in STORE_PACKAGES):
            return True
        frame = frame.f_back
    return False


def when_outside_store(handler: Handler) -> Handler:
    """`handler` as a SIGINT handler that waits while the main thread is inside the store."""

    def on_ctrl_c(signum: int, frame: FrameType | None) -> Any:
        if _through:
            return handler(signum, frame)
        if _held:  # pressed again while one waits: now, wherever the thread is
            _release()
            _through.append(True)
            try:
                return handler(signum, frame)
            finally:
                _through.pop()
        if inside_store(frame):
            _hold(handler, signum)
            return None
        return handler(signum, frame)

    return on_ctrl_c


@contextmanager
def ctrl_c_outside_store() -> Iterator[None]:
    """Within the block, Python's own Ctrl-C handler waits while the thread is in the store.

    A Ctrl-C still held when the block ends is raised there. Only on the main thread and
    when Python's handler is the one in place: a process started deaf to Ctrl-C (`nohup`,
    `cmd &`) stays so, and a handler someone else set is kept.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    signal.signal(signal.SIGINT, when_outside_store(signal.default_int_handler))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        held = _release()
    if held is not None:  # the block ended before the thread left the store: stop here
        raise KeyboardInterrupt


def _hold(handler: Handler, signum: int) -> None:
    _held.append((handler, signum, signal.signal(signal.SIGALRM, _retry)))
    signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)


def _release() -> tuple[Handler, int] | None:
    """Forget the held Ctrl-C (its handler and signal, returned) and give SIGALRM back."""
    if not _held:
        return None
    signal.setitimer(signal.ITIMER_REAL, 0)
    handler, signum, alarm = _held.pop()
    signal.signal(signal.SIGALRM, alarm)
    return handler, signum


def _retry(signum: int, frame: FrameType | None) -> Any:
    if not _held:
        return None
    if inside_store(frame):
        signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)
        return None
    held = _release()
    assert held is not None
    handler, ctrl_c = held
    return handler(ctrl_c, frame)
