"""Micro-batching: requests that wait together run together, bounded and shed when full.

Each model has one batching thread that takes every request already queued (up to
`max_batch`) and, when `max_wait` is above zero, waits that long for more. With `max_wait=0`
(the default) it never delays a request: a lone request runs at once, and batches form only
from requests that queued while the previous batch ran. A batch answers its requests when
its last one is computed, so for a model whose per-item cost dwarfs its per-call cost
(a CNN on CPU) batching pays in throughput, not in the latency of a lightly loaded server
(README, Benchmarks).

The thread takes its next batch itself, the moment the last one is done. Had the event loop
collected each batch and handed it to a thread pool, the model would sit idle while the
loop, busy with HTTP, noticed the end of a batch and the pool's thread woke for the next
one: about 2 ms between batches, measured (int8 resnet18, 8 clients, 2 cores), where the
model was busy 93 % of the time, against 97 % with its own thread.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Slots:
    """How many model calls may run at once in a server, granted in the order asked.

    A counting semaphore whose waiters are served first come, first served, and which one
    caller may take whole (`acquire(capacity)`). `threading.Semaphore` only wakes a waiter
    on release: the releasing thread may take the permit straight back before the waiter
    runs, so a piece of a reload waiting for every slot (`Interleaved`) could wait behind a
    batcher that always has another batch. Here a release hands permits to the oldest
    waiter. `grants` counts the acquisitions granted so far, so a caller can tell whether
    anyone else took a slot since it last looked.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"Slots({capacity}): give at least 1.")
        self.capacity = capacity
        self._free = capacity
        self._lock = threading.Lock()
        self._waiting: deque[tuple[int, threading.Event]] = deque()
        self.grants = 0  # acquisitions granted so far

    def acquire(self, n: int = 1) -> None:
        """Take `n` slots, waiting behind every earlier caller still waiting."""
        if not 1 <= n <= self.capacity:
            raise ValueError(f"acquire({n}): between 1 and {self.capacity} slots.")
        with self._lock:
            if not self._waiting and self._free >= n:
                self._free -= n
                self.grants += 1
                return
            granted = threading.Event()
            self._waiting.append((n, granted))
        granted.wait()  # release() took our slots for us

    def release(self, n: int = 1) -> None:
        """Give back `n` slots; they go to the oldest waiters that they satisfy, in order."""
        with self._lock:
            self._free += n
            while self._waiting and self._waiting[0][0] <= self._free:
                taken, granted = self._waiting.popleft()
                self._free -= taken
                self.grants += 1
                granted.set()

    def __enter__(self) -> Slots:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class StoppingError(RuntimeError):
    """The server is stopping: work between its batches gives up before its next piece."""


class OverloadedError(RuntimeError):
    """The queue is full: the request is refused at once (HTTP 429)."""


@dataclass
class _Item:
    payload: Any
    future: asyncio.Future[Any]
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Runs `process(payloads) -> results` in its own thread on batches of queued payloads.

    Payloads are queued from the event loop (`put`), and their results come back to it.

    Args:
        process: Maps a list of payloads to a list of results, same order; runs in the
            batcher's thread, never on the event loop.
        max_batch: Largest batch.
        max_wait: Seconds to wait for more payloads once one is queued (0: never wait).
        queue_limit: Payloads that may wait; one more raises `OverloadedError`.
        on_batch: Called with each batch's size (metrics), in the batcher's thread.
        wait_budget: Seconds a new payload may expect to wait; when the queue is so long that
            its expected wait (queued payloads ÷ the measured rate) is longer, it is refused
            at once (`OverloadedError`) rather than queued to miss its deadline. None: only
            `queue_limit` bounds the queue.
        slots: Held around each `process` call; one `Slots` shared by the batchers of a
            server bounds how many model calls run at once. None: no bound.
        name: The thread's name.
    """

    def __init__(
        self,
        process: Callable[[list[Any]], list[Any]],
        max_batch: int = 32,
        max_wait: float = 0.0,
        queue_limit: int = 256,
        on_batch: Callable[[int], None] = lambda size: None,
        wait_budget: float | None = None,
        slots: Slots | None = None,
        name: str = "batch",
    ) -> None:
        self.process = process
        self.max_batch, self.max_wait, self.on_batch = max_batch, max_wait, on_batch
        self.queue_limit, self.wait_budget, self.name = queue_limit, wait_budget, name
        self._slots: AbstractContextManager[Any] = slots if slots is not None else nullcontext()
        self._items: deque[_Item] = deque()
        self._ready = threading.Condition(threading.Lock())  # guards _items and _stopping
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._rate: float | None = None  # payloads per second while processing (EWMA)

    def start(self) -> None:
        """Start the batching thread; results return to the running loop."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Finish what is queued, then stop the thread.

        Every result is delivered when this returns: the thread sent each to the loop before
        the join ended, so the loop ran them before it resumes this coroutine.
        """
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def depth(self) -> int:
        """Payloads waiting now."""
        return len(self._items)

    def service_time(self) -> float | None:
        """Seconds one payload takes to process at the measured rate (None: not yet)."""
        return None if self._rate is None else 1 / self._rate

    def expected_wait(self) -> float | None:
        """Seconds a payload queued now should wait for those queued before it (None: not yet).

        Its own processing is not waiting: counting it refused a request on an idle server
        whose budget was shorter than one answer (`service_time` is that, for the caller).
        """
        if self._rate is None:
            return None
        return len(self._items) / self._rate

    def refusal(self, budget: float | None = None) -> str | None:
        """Why one more payload would be refused now, or None (lets a server shed early).

        `budget`: seconds this payload may wait (e.g. from its own deadline), instead of
        `wait_budget`.
        """
        if len(self._items) >= self.queue_limit:
            return f"queue full ({self.queue_limit} waiting)"
        wait, budget = self.expected_wait(), self.wait_budget if budget is None else budget
        if budget is not None and wait is not None and wait > budget:
            return (
                f"expected wait {wait * 1000:.0f} ms with {len(self._items)} queued is over "
                f"the {budget * 1000:.0f} ms budget"
            )
        return None

    def put(self, payload: Any, budget: float | None = None) -> asyncio.Future[Any]:
        """Queue one payload now; its result's future (cancel it to drop the payload).

        Call it on the loop that started the batcher.

        Raises:
            OverloadedError: See `refusal` (`budget` too).
            RuntimeError: The batcher was not started, or is stopping.
        """
        if self._loop is None or self._stopping:
            raise RuntimeError(f"{self.name}: batcher not running; start() it first.")
        why = self.refusal(budget)
        if why is not None:
            raise OverloadedError(why)
        future: asyncio.Future[Any] = self._loop.create_future()
        with self._ready:
            self._items.append(_Item(payload, future))
            self._ready.notify()
        return future

    async def submit(self, payload: Any, budget: float | None = None) -> Any:
        """Queue one payload and wait for its result (`budget`: see `refusal`)."""
        return await self.put(payload, budget)

    def _work(self) -> None:
        assert self._loop is not None
        while (batch := self._take()) is not None:
            # A future is done before its batch runs when its request gave up (its deadline
            # passed): skip it. One that gives up after this check is computed, not answered.
            live = [item for item in batch if not item.future.done()]
            if not live:
                continue
            try:
                self.on_batch(len(live))
                with self._slots:
                    started = time.perf_counter()
                    results = self.process([item.payload for item in live])
                    self._measure(len(live), time.perf_counter() - started)
                if len(results) != len(live):
                    raise RuntimeError(f"{len(live)} payloads gave {len(results)} results")
            except Exception as err:  # one bad batch fails its own requests, not the thread
                outcome: list[Any] | Exception = err
            else:
                outcome = results
            try:
                self._loop.call_soon_threadsafe(_deliver, live, outcome)
            except RuntimeError:  # the loop closed without stop(): nobody waits any more
                return

    def _take(self) -> list[_Item] | None:
        """The next batch, waiting for its first payload; None once stopping and drained."""
        with self._ready:
            while not self._items:
                if self._stopping:
                    return None
                self._ready.wait()
            batch = [self._items.popleft() for _ in range(min(self.max_batch, len(self._items)))]
            deadline = time.perf_counter() + self.max_wait
            while len(batch) < self.max_batch and not self._stopping:
                if self._items:
                    batch.append(self._items.popleft())
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            return batch

    def _measure(self, size: int, seconds: float) -> None:
        rate = size / max(seconds, 1e-6)
        self._rate = rate if self._rate is None else 0.8 * self._rate + 0.2 * rate


def _deliver(items: list[_Item], outcome: list[Any] | Exception) -> None:
    """On the loop: each item's result, or the batch's error; given-up items are skipped."""
    for n, item in enumerate(items):
        if item.future.done():
            continue
        if isinstance(outcome, Exception):
            item.future.set_exception(outcome)
        else:
            item.future.set_result(outcome[n])


class Interleaved:
    """Runs a model's calls between a server's live batches, a small piece at a time.

    Some model calls run while a server serves: a reloaded version's warm-up before its
    swap, and its drift reference (400 images for an image model) after it. Called
    directly, they share the cores with the live batches: requests sent during an int8
    resnet18 reload at 60 req/s waited 30 ms at p50 and 113 ms at p99 instead of 11 and 42,
    for 4.9 s, and at 100 req/s 998 ms and 1.43 s (`bench/serving_startup.py`, when the
    reference was computed before the swap).

    Here a piece waits until no live request is queued (`idle`), or `patience` seconds at
    most, then takes every one of the server's model-call slots (`Slots`: in turn, behind a
    batch already waiting), so no live batch runs beside it and a request that arrives
    meanwhile waits for one piece at most. After a piece it pauses as long as the piece ran
    while there is live traffic (a live batch took a slot in the last `quiet` seconds, or a
    request is queued), so live batches keep at least half the model's time even when the
    queue never empties; the patience bounds how long the work can be held off then. On a
    server without traffic it goes straight on, where pausing only doubled the time (int8
    resnet18 at 2 requests per second: a reference ready 2.9 s after the alias moves, against
    6.3 s). At 60 requests per second (one every 17 ms) it still pauses after every piece:
    pausing only after a piece that a live batch had waited for raised the p50 of the
    requests sent meanwhile from 10 to 13 ms (`bench/serving_startup.py`). Pieces are
    sized from the rows per second measured so far to take about `piece_seconds`; the first
    is one row.

    Args:
        run: The model call to interleave (the new version's `ServedModel.run`).
        slots: The server's model-call slots, which its batchers hold around each call.
        idle: Whether no live request waits now (e.g. every batcher's queue is empty).
        piece_seconds: How long a piece should take.
        patience: Longest wait for `idle` before a piece goes anyway.
        stopping: Once set, the next piece raises `StoppingError` instead of running (a server
            that stops does not wait for a reference it will never use).
        quiet: Seconds without a live batch after which the pieces stop pausing.
    """

    def __init__(
        self,
        run: Callable[[list[np.ndarray]], list[np.ndarray]],
        slots: Slots,
        idle: Callable[[], bool] = lambda: True,
        piece_seconds: float = 0.01,
        patience: float = 0.05,
        stopping: threading.Event | None = None,
        quiet: float = 0.1,
    ) -> None:
        self.run, self.slots, self.idle = run, slots, idle
        self.piece_seconds, self.patience, self.quiet = piece_seconds, patience, quiet
        self.stopping = stopping or threading.Event()
        self._rows = 1  # rows of the next piece
        self._live_at = -math.inf  # when a live batch was last seen to take a slot
        self.pauses = 0  # pauses taken after a piece, over every call

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """`run(inputs)`, in pieces along the batch axis, joined again."""
        total = len(inputs[0]) if inputs else 0
        parts: list[list[np.ndarray]] = []
        start = 0
        grants = self.slots.grants  # slots granted so far, to anyone: see below
        while start < total or not parts:
            rows = max(1, min(self._rows, total - start))
            self._wait_for_idle()
            if self.stopping.is_set():
                raise StoppingError(f"stopping: {start} of {total} rows run, the rest left")
            self.slots.acquire(self.slots.capacity)
            try:
                began = time.perf_counter()
                parts.append(self.run([x[start : start + rows] for x in inputs]))
                took = time.perf_counter() - began
            finally:
                self.slots.release(self.slots.capacity)
            self._rows = max(1, int(rows * self.piece_seconds / max(took, 1e-6)))
            start += rows
            now = time.perf_counter()
            if self.slots.grants - grants > 1:  # any grant but this piece's own: a live batch
                self._live_at = now  # (one handed its slot by the release above included)
            grants = self.slots.grants
            if now - self._live_at <= self.quiet or not self.idle():
                self.pauses += 1
                time.sleep(took)  # the live batches' turn
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]

    def _wait_for_idle(self) -> None:
        give_up = time.perf_counter() + self.patience
        while not self.idle() and time.perf_counter() < give_up:
            time.sleep(0.002)
