"""Micro-batching: requests that wait together run together, bounded and shed when full.

The worker takes every request already queued (up to `max_batch`) and, when `max_wait` is
above zero, waits that long for more. With `max_wait=0` (the default) it never delays a
request: a lone request runs at once, and batches form only from requests that queued
while the previous batch ran — so batching is never worse than none.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any


class OverloadedError(RuntimeError):
    """The queue is full: the request is refused at once (HTTP 429)."""


@dataclass
class _Item:
    payload: Any
    future: asyncio.Future[Any]
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Runs `process(payloads) -> results` in `executor` on batches of queued payloads.

    Args:
        process: Maps a list of payloads to a list of results, same order; runs in a thread.
        executor: Where `process` runs (so the event loop never blocks).
        max_batch: Largest batch.
        max_wait: Seconds to wait for more payloads once one is queued (0: never wait).
        queue_limit: Payloads that may wait; one more raises `OverloadedError`.
        on_batch: Called with each batch's size (metrics).
        wait_budget: Seconds a new payload may expect to wait; when the queue is so long that
            its expected wait (queued payloads ÷ the measured rate) is longer, it is refused
            at once (`OverloadedError`) rather than queued to miss its deadline. None: only
            `queue_limit` bounds the queue.
    """

    def __init__(
        self,
        process: Callable[[list[Any]], list[Any]],
        executor: Executor,
        max_batch: int = 32,
        max_wait: float = 0.0,
        queue_limit: int = 256,
        on_batch: Callable[[int], None] = lambda size: None,
        wait_budget: float | None = None,
    ) -> None:
        self.process, self.executor = process, executor
        self.max_batch, self.max_wait, self.on_batch = max_batch, max_wait, on_batch
        self.wait_budget = wait_budget
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_limit)
        self._worker: asyncio.Task[None] | None = None
        self._rate: float | None = None  # payloads per second while processing (EWMA)

    def start(self) -> None:
        """Start the worker on the running loop."""
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        await self.queue.join()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    def depth(self) -> int:
        """Payloads waiting now."""
        return self.queue.qsize()

    def expected_wait(self) -> float | None:
        """Seconds a payload queued now should wait, from the measured rate (None: not yet)."""
        if self._rate is None:
            return None
        return (self.queue.qsize() + 1) / self._rate

    def refusal(self, budget: float | None = None) -> str | None:
        """Why one more payload would be refused now, or None (lets a server shed early).

        `budget`: seconds this payload may wait (e.g. from its own deadline), instead of
        `wait_budget`.
        """
        if self.queue.full():
            return f"queue full ({self.queue.maxsize} waiting)"
        wait, budget = self.expected_wait(), self.wait_budget if budget is None else budget
        if budget is not None and wait is not None and wait > budget:
            return (
                f"expected wait {wait * 1000:.0f} ms with {self.queue.qsize()} queued is over "
                f"the {budget * 1000:.0f} ms budget"
            )
        return None

    def put(self, payload: Any, budget: float | None = None) -> asyncio.Future[Any]:
        """Queue one payload now; its result's future (cancel it to drop the payload).

        Raises:
            OverloadedError: See `refusal` (`budget` too).
        """
        why = self.refusal(budget)
        if why is not None:
            raise OverloadedError(why)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(_Item(payload, future))
        return future

    async def submit(self, payload: Any, budget: float | None = None) -> Any:
        """Queue one payload and wait for its result (`budget`: see `refusal`)."""
        return await self.put(payload, budget)

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            live = [item for item in batch if not item.future.done()]  # skip expired ones
            try:
                if live:
                    self.on_batch(len(live))
                    loop = asyncio.get_running_loop()
                    started = time.perf_counter()
                    results = await loop.run_in_executor(
                        self.executor, self.process, [item.payload for item in live]
                    )
                    self._measure(len(live), time.perf_counter() - started)
                    for item, result in zip(live, results, strict=True):
                        if not item.future.done():
                            item.future.set_result(result)
            except Exception as err:  # one bad batch fails its own requests, not the worker
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(err)
            finally:
                for _ in batch:
                    self.queue.task_done()

    def _measure(self, size: int, seconds: float) -> None:
        rate = size / max(seconds, 1e-6)
        self._rate = rate if self._rate is None else 0.8 * self._rate + 0.2 * rate

    async def _collect(self) -> list[_Item]:
        batch = [await self.queue.get()]
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        return batch
