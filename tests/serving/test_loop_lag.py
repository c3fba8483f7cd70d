"""LoopLag reads how late a real event loop runs; RecentTime forgets itself when idle."""

from __future__ import annotations

import asyncio
import time

import pytest

from modelcycle.serving.loop_lag import LoopLag, RecentTime


def test_loop_lag_reads_a_blocked_loop_and_then_recovers() -> None:
    async def scenario() -> tuple[float, float, float]:
        lag = LoopLag(tick=0.005, window=4)
        task = asyncio.create_task(lag.run())
        await asyncio.sleep(0.1)
        idle = lag.seconds
        time.sleep(0.12)  # the loop runs nothing else meanwhile, as under a flood of requests
        await asyncio.sleep(0.001)  # let the late tick land
        blocked = lag.seconds
        await asyncio.sleep(0.2)  # more than `window` ticks: the blocked one is forgotten
        recovered = lag.seconds
        task.cancel()
        return idle, blocked, recovered

    idle, blocked, recovered = asyncio.run(scenario())
    assert idle < 0.05
    assert blocked >= 0.09  # the tick was due about 0.12 s before it ran
    assert recovered < 0.05


def test_loop_lag_is_zero_before_its_first_tick_and_refuses_bad_settings() -> None:
    assert LoopLag().seconds == 0.0
    with pytest.raises(ValueError, match="tick > 0"):
        LoopLag(tick=0)
    with pytest.raises(ValueError, match="window >= 1"):
        LoopLag(window=0)


def test_recent_time_averages_and_forgets_when_idle() -> None:
    recent = RecentTime(weight=0.5, fresh=0.1)
    assert recent.estimate() is None
    recent.add(0.2)
    recent.add(0.4)
    assert recent.estimate() == pytest.approx(0.3)
    time.sleep(0.15)
    assert recent.estimate() is None  # too old to refuse anything on
    recent.add(0.01)  # a fresh start, not weighed against the stale mean
    assert recent.estimate() == pytest.approx(0.01)
