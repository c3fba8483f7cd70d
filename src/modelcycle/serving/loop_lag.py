"""How long a request waits before the app sees it, and how long answers take now.

A client's `X-Deadline-Ms` counts from when it sent the request. A server whose event loop
is busy reads that request only on the loop's next pass over its sockets, so the app sees it
some time after it arrived; under overload (twins, 4× the peak) that was 40-55 ms of a
request's last 100 ms. `LoopLag` estimates that wait as the event loop's lateness: a timer
due every `tick` seconds runs late by about one pass of the loop.

`RecentTime` keeps how long answers took lately (arrival in the app to answer), so that a
request that cannot be answered before its client gives up is refused at once, with a cheap
429 on a connection that stays open, rather than computed for nobody.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable


class LoopLag:
    """The event loop's recent lateness, in seconds: the most of the last `window` ticks.

    `run()` (a task on the loop measured) wakes every `tick` seconds; each wake-up's delay
    beyond the tick is one sample. Idle, the samples are the timer's resolution (about 1 ms);
    a loop busy for 50 ms reads about 0.05 for the next `window` ticks. On an idle server
    the wake-ups cost 0.01-0.02 of a core (uvloop, asyncio); a busy loop is awake anyway.
    """

    def __init__(self, tick: float = 0.005, window: int = 8) -> None:
        if tick <= 0 or window < 1:
            raise ValueError(f"LoopLag(tick={tick}, window={window}): give tick > 0, window >= 1")
        self.tick, self.window = tick, window
        self._samples: collections.deque[float] = collections.deque(maxlen=window)

    @property
    def seconds(self) -> float:
        """Recent lateness (0.0 before the first tick)."""
        return max(self._samples, default=0.0)

    async def run(self, report: Callable[[float], None] | None = None) -> None:
        """Sample until cancelled; `report(seconds)` after every `window` ticks (a gauge)."""
        ticks = 0
        while True:
            due = time.perf_counter() + self.tick
            await asyncio.sleep(self.tick)
            self._samples.append(max(0.0, time.perf_counter() - due))
            ticks += 1
            if report is not None and ticks % self.window == 0:
                report(self.seconds)


class RecentTime:
    """An exponentially weighted mean of recent durations that forgets itself when idle.

    `estimate()` is None before the first `add` and once `fresh` seconds pass without one:
    a refusal based on it must not outlive the load that set it (a client whose short
    deadlines were all refused would otherwise never see the estimate fall again).
    """

    def __init__(self, weight: float = 0.1, fresh: float = 1.0) -> None:
        self.weight, self.fresh = weight, fresh
        self._mean: float | None = None
        self._at = 0.0

    def add(self, seconds: float) -> None:
        """One more duration."""
        now = time.perf_counter()
        if self._mean is None or now - self._at > self.fresh:
            self._mean = seconds
        else:
            self._mean += self.weight * (seconds - self._mean)
        self._at = now

    def estimate(self) -> float | None:
        """The recent mean, or None when there is none."""
        if self._mean is None or time.perf_counter() - self._at > self.fresh:
            return None
        return self._mean
