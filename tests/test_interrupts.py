"""A Ctrl-C waits until the main thread is out of the tracking store, then stops the command."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from modelcycle.interrupts import ctrl_c_outside_store, inside_store, when_outside_store


def in_package(package: str, function: Callable[[], Any]) -> Any:
    """Call `function` from a frame of `package` (as if SQLAlchemy called it)."""
    namespace: dict[str, Any] = {"__name__": package, "function": function}
    exec("def call():\n    return function()\n", namespace)
    return namespace["call"]()


def press_ctrl_c_and_work(steps: int = 20) -> list[int]:
    """Send this process SIGINT, then go on for `steps` short steps; the steps done."""
    done: list[int] = []
    os.kill(os.getpid(), signal.SIGINT)
    for step in range(steps):
        time.sleep(0.005)
        done.append(step)
    return done


@pytest.fixture
def pythons_handler() -> Iterator[None]:
    """Python's own Ctrl-C handler, as in a terminal (a background process inherits SIG_IGN)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    alarm = signal.getsignal(signal.SIGALRM)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
        assert signal.getsignal(signal.SIGALRM) == alarm  # given back every time
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_the_store_is_sqlalchemy_mlflows_store_and_alembic_and_what_they_call() -> None:
    def here() -> FrameType:
        return sys._getframe(1)

    for package in ("sqlalchemy.orm.session", "mlflow.store.db.utils", "alembic", "sqlalchemy"):
        assert inside_store(in_package(package, here)), package
    for package in ("sqlalchemyx", "mlflow.tracking.client", "modelcycle.tracking"):
        assert not inside_store(in_package(package, here)), package
    assert not inside_store(sys._getframe())
    assert not inside_store(None)


def test_a_ctrl_c_inside_the_store_is_raised_once_the_thread_has_left_it(
    pythons_handler: None,
) -> None:
    signal.signal(signal.SIGINT, when_outside_store(signal.default_int_handler))
    finished: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        finished = in_package("sqlalchemy.engine.base", press_ctrl_c_and_work)
        for _ in range(200):  # the held Ctrl-C comes within a retry (20 ms), not later
            time.sleep(0.005)
        pytest.fail("the Ctrl-C held in the store never came")
    assert finished == list(range(20))  # the store's work was done whole


def test_a_ctrl_c_outside_the_store_is_raised_at_once(pythons_handler: None) -> None:
    signal.signal(signal.SIGINT, when_outside_store(signal.default_int_handler))
    done: list[int] = []

    def work() -> None:
        done.extend(press_ctrl_c_and_work())

    with pytest.raises(KeyboardInterrupt):
        in_package("mlflow.tracking.client", work)
    assert done == []


@pytest.mark.parametrize("depth", [1, 2], ids=["a handler", "a handler in a handler (DDP)"])
def test_a_second_ctrl_c_while_one_waits_stops_even_a_store_that_never_returns(
    pythons_handler: None, depth: int
) -> None:
    handler: Any = signal.default_int_handler
    for _ in range(depth):  # rank zero's handler wraps the fit's, which waits on its own
        handler = when_outside_store(handler)
    signal.signal(signal.SIGINT, handler)
    steps: list[int] = []

    def stuck() -> None:  # a store waiting on a lock another process holds
        os.kill(os.getpid(), signal.SIGINT)
        for step in range(400):
            time.sleep(0.005)
            steps.append(step)
            if step == 10:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        in_package("sqlalchemy.pool.impl", stuck)
    assert 10 <= len(steps) < 400


def test_a_command_ends_at_a_ctrl_c_still_held_when_it_returns(pythons_handler: None) -> None:
    with pytest.raises(KeyboardInterrupt), ctrl_c_outside_store():
        # the last thing the command did was a store write; SIGALRM never came in time
        in_package("sqlalchemy.orm.session", lambda: os.kill(os.getpid(), signal.SIGINT))
        signal.setitimer(signal.ITIMER_REAL, 0)  # as if the block ended before the retry
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_command_started_deaf_to_ctrl_c_stays_so() -> None:
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # nohup, `cmd &`
    try:
        with ctrl_c_outside_store():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.slow
def test_a_ctrl_c_anywhere_in_an_mlflow_write_leaves_the_store_writable(
    tmp_path: Path, pythons_handler: None
) -> None:
    """A Ctrl-C at each of many points of MLflow's SQLAlchemy write, the way Python raises it.

    Raised where it landed, some left a session that could not close and kept SQLite's write
    lock (every later write: "database is locked" after 20 s; the runs a Ctrl-C stopped
    stayed RUNNING), and one hung the process on a pool lock taken and never released.
    """
    from mlflow import MlflowClient

    database = tmp_path / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{database}")
    experiment = client.create_experiment("interrupted", (tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id

    def lines_of_one_write(step: int) -> int:
        count = 0

        def tracer(frame: FrameType, event: str, arg: object) -> Any:
            nonlocal count
            count += event == "line" and inside_store(frame)
            return tracer

        sys.settrace(tracer)
        try:
            client.log_metric(run_id, "loss", 1.0, step=step)
        finally:
            sys.settrace(None)
        return count

    # The first write fills caches; later ones vary a little.
    total = int(0.9 * min(lines_of_one_write(0) for _ in range(4)))
    assert total > 300  # a write is thousands of lines of SQLAlchemy and MLflow
    signal.signal(signal.SIGINT, when_outside_store(signal.default_int_handler))
    for at in range(1, total, max(1, total // 150)):
        count = 0

        def press_at_line(frame: FrameType, event: str, arg: object, at: int = at) -> Any:
            nonlocal count
            if event == "line" and inside_store(frame):
                count += 1
                if count == at:
                    os.kill(os.getpid(), signal.SIGINT)  # its handler runs at the next bytecode
            return press_at_line

        sys.settrace(press_at_line)
        try:
            with pytest.raises(KeyboardInterrupt):
                client.log_metric(run_id, "loss", float(at), step=at)
                for _ in range(200):
                    time.sleep(0.005)
        finally:
            sys.settrace(None)
        assert count >= at
        # No connection of this process holds SQLite's write lock.
        probe = sqlite3.connect(database, timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
        finally:
            probe.close()
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss") if m.step)
    assert steps == list(range(1, total, max(1, total // 150)))  # each write done, and whole
    client.set_terminated(run_id, "KILLED")
    assert client.get_run(run_id).info.status == "KILLED"
