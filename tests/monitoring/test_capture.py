"""The capture store on real SQLite files, with real threads and a real killed process."""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from modelcycle.monitoring import capture as capture_module
from modelcycle.monitoring.capture import Capture, CaptureError, CaptureStore


def capture(model: str = "twins", at: float = 1.0, x: float = 0.0, version: str = "3") -> Capture:
    return Capture(
        model=model,
        version=version,
        features={"x": x, "y": 2.0},
        outputs={"p": 0.25},
        latency_ms=1.5,
        at=at,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CaptureStore]:
    with CaptureStore(tmp_path / "captures.sqlite") as opened:
        yield opened


def test_round_trip_keeps_every_field(store: CaptureStore) -> None:
    row = Capture("twins", "3", {"x": 1.0, "y": -2.5}, {"p": 0.9, "q": 0.1}, 12.5, 1700000000.25)
    store.write([row])
    assert store.read() == [row]


def test_rows_come_back_oldest_first_whatever_the_write_order(store: CaptureStore) -> None:
    store.write([capture(at=3.0, x=3), capture(at=1.0, x=1)])
    store.write([capture(at=2.0, x=2), capture(at=2.0, x=2.5)])
    assert [(c.at, c.features["x"]) for c in store.read()] == [
        (1.0, 1),
        (2.0, 2),
        (2.0, 2.5),  # same time: insertion order
        (3.0, 3),
    ]


def test_filters_by_model_since_and_last(store: CaptureStore) -> None:
    store.write([capture("a", at=t) for t in (1.0, 2.0, 3.0, 4.0)])
    store.write([capture("b", at=t) for t in (1.5, 2.5)])

    assert [c.at for c in store.read(model="a")] == [1.0, 2.0, 3.0, 4.0]
    assert [c.at for c in store.read(since=2.5)] == [2.5, 3.0, 4.0]  # inclusive
    assert [c.at for c in store.read(last=3)] == [2.5, 3.0, 4.0]  # newest 3, oldest first
    assert [c.at for c in store.read(model="b", last=1)] == [2.5]
    assert [c.at for c in store.read(model="a", since=1.5, last=2)] == [3.0, 4.0]
    assert store.read(last=0) == []
    assert store.read(model="nobody") == []
    assert [c.at for c in store.read(last=100)] == [1.0, 1.5, 2.0, 2.5, 3.0, 4.0]


def test_filters_by_version_before_keeping_the_newest(store: CaptureStore) -> None:
    store.write([capture("a", at=t, version="1") for t in (1.0, 2.0, 3.0)])
    store.write([capture("a", at=t, version="2") for t in (2.5, 4.0)])
    assert [c.at for c in store.read(model="a", version="1", last=2)] == [2.0, 3.0]
    assert [c.at for c in store.read(model="a", version="2")] == [2.5, 4.0]


def test_count_all_and_by_model(store: CaptureStore) -> None:
    assert store.count() == 0
    store.write([capture("a"), capture("a"), capture("b")])
    assert (store.count(), store.count("a"), store.count("b"), store.count("c")) == (3, 2, 1, 0)


def test_negative_last_is_refused(store: CaptureStore) -> None:
    with pytest.raises(ValueError, match="last must be >= 0"):
        store.read(last=-1)


def test_empty_write_is_a_no_op(store: CaptureStore) -> None:
    store.write([])
    assert store.count() == 0


def test_nan_and_inf_come_back_as_nan_and_the_json_stays_valid(store: CaptureStore) -> None:
    inf = math.inf
    store.write(
        [Capture("m", "1", {"a": math.nan, "b": inf, "c": -inf, "d": 1.5}, {"p": math.nan}, 2.0, 1)]
    )
    (back,) = store.read()
    assert [math.isnan(back.features[k]) for k in "abc"] == [True, True, True]
    assert back.features["d"] == 1.5
    assert math.isnan(back.outputs["p"])

    def refuse(token: str) -> float:
        raise AssertionError(f"invalid JSON token {token} stored")

    with sqlite3.connect(store.path) as raw:
        features, outputs = raw.execute("SELECT features, outputs FROM captures").fetchone()
    assert json.loads(features, parse_constant=refuse) == {
        "a": None,
        "b": None,
        "c": None,
        "d": 1.5,
    }
    assert json.loads(outputs, parse_constant=refuse) == {"p": None}


def test_a_bad_value_fails_the_whole_batch(store: CaptureStore) -> None:
    bad = Capture("m", "1", {"x": "high"}, {}, 1.0, 1.0)  # type: ignore[dict-item]
    with pytest.raises(CaptureError, match=r"features\['x'\]='high', not a number"):
        store.write([capture(), bad])
    assert store.count() == 0


def test_the_variant_is_kept_and_filters(store: CaptureStore) -> None:
    fp32, int8 = capture(at=1.0), replace(capture(at=2.0), variant="int8")
    store.write([fp32, int8])
    assert store.read() == [fp32, int8]
    assert store.read(variant="int8") == [int8]
    assert store.read(version="3", variant="fp32") == [fp32]


def test_a_store_from_before_variants_is_upgraded_its_rows_read_as_fp32(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:  # the schema before captures named their variant
        old.execute("PRAGMA journal_mode=WAL")
        old.execute(
            "CREATE TABLE captures (id INTEGER PRIMARY KEY, at REAL NOT NULL, model TEXT NOT "
            "NULL, version TEXT NOT NULL, latency_ms REAL, features TEXT NOT NULL, outputs "
            "TEXT NOT NULL)"
        )
        old.execute(
            "INSERT INTO captures (at, model, version, latency_ms, features, outputs) "
            """VALUES (1.0, 'twins', '3', 1.5, '{"x": 0.0}', '{"p": 0.25}')"""
        )
    old.close()
    for _ in range(2):  # a second open (another worker) finds the column there
        with CaptureStore(path) as store:
            (row,) = store.read(variant="fp32")
            assert row.at == 1.0 and row.features == {"x": 0.0}
            store.write([replace(capture(at=2.0), variant="int8")])
    with CaptureStore(path) as store:
        assert [c.variant for c in store.read()] == ["fp32", "int8", "int8"]
        assert [c.source for c in store.read()] == ["live"] * 3  # upgraded for sources too


def test_the_source_is_kept_and_filters(store: CaptureStore) -> None:
    live, test = capture(at=1.0), replace(capture(at=2.0), source="loadtest")
    store.write([live, test])
    assert store.read() == [live, test]
    assert store.read(source="live") == [live]
    assert store.read(source="loadtest", last=5) == [test]


def test_wal_mode_and_durability_pragmas(store: CaptureStore) -> None:
    with sqlite3.connect(store.path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn = store._connection()
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # never on a write


def _rows(n: int) -> list[Capture]:
    features = {f"feature_{k}": float(k) for k in range(40)}
    return [Capture("m", "1", features, {"p": 0.5}, 1.0, float(i)) for i in range(n)]


def test_writes_never_checkpoint_the_background_thread_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints copy the WAL into the database file: it grows only when one runs."""
    monkeypatch.setattr(capture_module, "CHECKPOINT_SECONDS", 3600.0)
    with CaptureStore(tmp_path / "quiet.sqlite") as store:
        empty = store.path.stat().st_size
        for _ in range(30):  # ~4,000 pages of WAL: four automatic checkpoints' worth
            store.write(_rows(500))
        assert store.path.stat().st_size == empty
        assert store.count() == 15_000

    monkeypatch.setattr(capture_module, "CHECKPOINT_SECONDS", 0.05)
    with CaptureStore(tmp_path / "busy.sqlite") as store:
        empty = store.path.stat().st_size
        store.write(_rows(2000))
        deadline = time.monotonic() + 10
        while store.path.stat().st_size == empty and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.path.stat().st_size > empty
        assert store._checkpointer is not None and store._checkpointer.name == "capture-checkpoint"
    assert not store._checkpointer.is_alive()  # close stops it


def test_creates_parent_directories_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "captures.sqlite"
    with CaptureStore(path) as store:
        store.write([capture()])
    with CaptureStore(path) as again:
        assert again.count() == 1


def test_concurrent_writers_and_a_reader(store: CaptureStore) -> None:
    writers_done = threading.Event()

    def writer(worker: int) -> None:
        for batch in range(50):
            store.write([capture(f"m{worker}", at=batch + i / 10) for i in range(5)])

    def reader() -> int:
        reads = 0
        while not writers_done.is_set():
            assert len(store.read(last=10)) <= 10
            store.count()
            reads += 1
        return reads

    with ThreadPoolExecutor(max_workers=5) as pool:
        reading = pool.submit(reader)
        writing = [pool.submit(writer, w) for w in range(4)]
        try:
            for future in writing:
                future.result(timeout=30)
        finally:
            writers_done.set()
        assert reading.result(timeout=30) > 0

    assert store.count() == 1000
    assert [store.count(f"m{w}") for w in range(4)] == [250] * 4


def test_connections_of_finished_threads_are_closed(store: CaptureStore) -> None:
    for _ in range(3):
        worker = threading.Thread(target=store.count)
        worker.start()
        worker.join()
    probe = threading.Thread(target=store.count)
    probe.start()
    probe.join()
    # Each new thread's connection closed the finished ones': left are main's and the probe's.
    assert [thread for thread, _ in store._open] == [threading.main_thread(), probe]


def test_a_closed_store_says_so(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "c.sqlite")
    store.close()
    store.close()  # idempotent
    with pytest.raises(CaptureError, match="is closed; open a new one"):
        store.count()


def test_a_directory_is_refused_naming_it_and_the_fix(tmp_path: Path) -> None:
    directory = tmp_path / "not_a_file"
    directory.mkdir()
    with pytest.raises(CaptureError) as err:
        CaptureStore(directory)
    assert str(directory) in str(err.value)
    assert "not a directory" in str(err.value)


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are not the captures you are looking for\n" * 100)
    with pytest.raises(CaptureError, match=r"Cannot open the capture store .*notes\.txt"):
        CaptureStore(path)


CHILD = """
import sys, time
from pathlib import Path
from modelcycle.monitoring.capture import Capture, CaptureStore

store = CaptureStore(Path(sys.argv[1]))
total = 0
stop = time.monotonic() + 30  # never outlive a parent that died
while time.monotonic() < stop:
    store.write([
        Capture("m", "1", {"x": float(total + i)}, {"p": 0.5}, 1.0, time.time())
        for i in range(10)
    ])
    total += 10
    print(f"acked {total}", flush=True)
"""


def _pump(stream: object, lines: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line)
    lines.put(None)


def test_every_acknowledged_capture_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "captures.sqlite"
    stderr = (tmp_path / "child.err").open("w")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, stderr=stderr, text=True
    )
    lines: queue.Queue[str | None] = queue.Queue()
    pump = threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True)
    pump.start()
    acks, acked = 0, 0
    try:
        deadline = time.monotonic() + 12
        while acks < 30:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"child exited early: {(tmp_path / 'child.err').read_text()}"
            acks, acked = acks + 1, int(line.split()[1])
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=5) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=5)
        stderr.close()
    pump.join(timeout=5)
    while (line := lines.get_nowait()) is not None:  # acks printed before the kill landed
        acked = int(line.split()[1])

    with CaptureStore(path) as store:
        count = store.count()
        newest = store.read(last=1)
    assert acked >= 300
    assert acked <= count <= acked + 10  # at most one batch committed but not yet acked
    assert count % 10 == 0  # batches are all-or-nothing
    assert newest[0].features["x"] == count - 1
