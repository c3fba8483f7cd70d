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
    """

    def __init__(
        self,
        process: Callable[[list[Any]], list[Any]],
        executor: Executor,
        max_batch: int = 32,
        max_wait: float = 0.0,
        queue_limit: int = 256,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.process, self.executor = process, executor
        self.max_batch, self.max_wait, self.on_batch = max_batch, max_wait, on_batch
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_limit)
        self._worker: asyncio.Task[None] | None = None

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

    def full(self) -> bool:
        """Whether one more payload would be refused now (lets a server shed before reading)."""
        return self.queue.full()

    async def submit(self, payload: Any) -> Any:
        """Queue one payload and wait for its result."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Item(payload, future))
        except asyncio.QueueFull:
            raise OverloadedError(f"queue full ({self.queue.maxsize} waiting)") from None
        return await future

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            live = [item for item in batch if not item.future.done()]  # skip expired ones
            try:
                if live:
                    self.on_batch(len(live))
                    loop = asyncio.get_running_loop()
                    results = await loop.run_in_executor(
                        self.executor, self.process, [item.payload for item in live]
                    )
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
