"""The micro-batcher on a real event loop, with its own thread."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
import pytest

from modelcycle.serving.batching import (
    Interleaved,
    MicroBatcher,
    OverloadedError,
    Slots,
    StoppingError,
)

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_results_return_to_their_own_requests_and_batches_form_under_load() -> None:
    sizes: list[int] = []

    def process(payloads: list[int]) -> list[int]:
        time.sleep(0.02)  # a slow model call: requests queue up meanwhile
        return [p * 10 for p in payloads]

    async def main() -> list[int]:
        batcher = MicroBatcher(process, max_batch=8, on_batch=sizes.append)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(40)))
        await batcher.stop()
        return list(results)

    assert _run(main()) == [i * 10 for i in range(40)]
    assert sum(sizes) == 40 and max(sizes) == 8 and len(sizes) < 40


def test_a_lone_request_is_never_delayed_with_max_wait_zero() -> None:
    def process(payloads: list[int]) -> list[int]:
        return payloads

    async def main() -> float:
        batcher = MicroBatcher(process, max_wait=0.0)
        batcher.start()
        await batcher.submit(0)  # the thread has run once
        started = time.perf_counter()
        await batcher.submit(1)
        elapsed = time.perf_counter() - started
        await batcher.stop()
        return elapsed

    assert _run(main()) < 0.05


def test_max_wait_gathers_requests_that_arrive_a_little_later() -> None:
    sizes: list[int] = []

    async def main() -> None:
        batcher = MicroBatcher(lambda p: p, max_batch=4, max_wait=0.2, on_batch=sizes.append)
        batcher.start()

        async def later(i: int) -> int:
            await asyncio.sleep(0.02 * i)
            return int(await batcher.submit(i))

        await asyncio.gather(*(later(i) for i in range(4)))
        await batcher.stop()

    _run(main())
    assert sizes == [4]


def test_a_full_queue_refuses_at_once() -> None:
    release = threading.Event()

    def process(payloads: list[int]) -> list[int]:
        release.wait(5)
        return payloads

    async def main() -> None:
        batcher = MicroBatcher(process, max_batch=1, queue_limit=2)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0)  # payload 0 is queued
        while batcher.depth():  # until the thread takes it; it then blocks in process
            await asyncio.sleep(0.001)
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        started = time.perf_counter()
        with pytest.raises(OverloadedError, match="queue full"):
            await batcher.submit(3)
        assert time.perf_counter() - started < 0.05
        release.set()
        assert await asyncio.gather(first, *queued) == [0, 1, 2]
        await batcher.stop()

    _run(main())


def test_a_failing_batch_fails_only_its_requests() -> None:
    def process(payloads: list[int]) -> list[int]:
        if -1 in payloads:
            raise RuntimeError("bad batch")
        return payloads

    async def main() -> None:
        batcher = MicroBatcher(process, max_batch=1)
        batcher.start()
        with pytest.raises(RuntimeError, match="bad batch"):
            await batcher.submit(-1)
        assert await batcher.submit(5) == 5
        await batcher.stop()

    _run(main())


def test_expired_requests_are_skipped_not_run() -> None:
    seen: list[int] = []
    release = threading.Event()

    def process(payloads: list[int]) -> list[int]:
        seen.extend(payloads)
        release.wait(5)
        return payloads

    async def main() -> None:
        batcher = MicroBatcher(process, max_batch=1)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.submit(1), 0.01)
        with pytest.raises(TimeoutError):  # what the server does: wait on put's future
            await asyncio.wait_for(batcher.put(2), 0.01)
        batcher.put(3).cancel()
        kept = batcher.put(4)
        release.set()
        await first
        assert await kept == 4
        await batcher.stop()

    _run(main())
    assert seen == [0, 4]


def test_a_queue_whose_expected_wait_is_over_budget_refuses_at_once() -> None:
    def process(payloads: list[int]) -> list[int]:
        time.sleep(0.05)  # 20 payloads per second, one at a time
        return payloads

    async def main() -> None:
        batcher = MicroBatcher(process, max_batch=1, queue_limit=100, wait_budget=0.2)
        batcher.start()
        assert batcher.expected_wait() is None and batcher.refusal() is None
        await batcher.submit(0)  # measures the rate: about 20 per second
        alone = batcher.service_time()
        assert alone is not None and 0.02 < alone < 0.2
        assert batcher.expected_wait() == 0  # nothing queued: its own processing is no wait
        started = time.perf_counter()
        tasks = []
        for i in range(12):
            tasks.append(asyncio.ensure_future(batcher.submit(i)))
            await asyncio.sleep(0)  # let it queue (or be refused) before the next one asks
        results = await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.perf_counter() - started
        refused = [str(r) for r in results if isinstance(r, OverloadedError)]
        answered = [r for r in results if not isinstance(r, BaseException)]
        # at 20 per second, a 0.2 s budget holds about 4 queued payloads, far below 100
        assert 2 <= len(answered) <= 6, (len(answered), refused)
        assert len(answered) + len(refused) == 12
        assert "over the 200 ms budget" in refused[0]
        assert elapsed < 1.0  # the accepted ones ran at once, none waited for the rest
        await batcher.stop()

    _run(main())


def test_a_payloads_own_budget_replaces_the_wait_budget() -> None:
    def process(payloads: list[int]) -> list[int]:
        time.sleep(0.05)  # 20 payloads per second
        return payloads

    async def main() -> None:
        batcher = MicroBatcher(process, max_batch=1, queue_limit=100, wait_budget=10.0)
        batcher.start()
        await batcher.submit(0)  # measures the rate
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(4)]
        await asyncio.sleep(0)
        # about 0.25 s of queue: within the server's 10 s, over a client's 0.1 s
        assert batcher.refusal() is None
        why = batcher.refusal(budget=0.1)
        assert why is not None and "over the 100 ms budget" in why
        with pytest.raises(OverloadedError, match="100 ms budget"):
            await batcher.submit(99, budget=0.1)
        await asyncio.gather(*queued)
        await batcher.stop()

    _run(main())


def test_an_idle_batcher_takes_a_payload_whose_budget_is_shorter_than_its_processing() -> None:
    """The budget is for waiting behind others: on an idle batcher a payload waits for none."""
    release = threading.Event()

    def process(payloads: list[int]) -> list[int]:
        if payloads == [-1]:
            release.wait(10)
        time.sleep(0.05)  # 20 payloads per second
        return payloads

    async def main() -> None:
        batcher = MicroBatcher(process, max_batch=1, queue_limit=100)
        batcher.start()
        await batcher.submit(0)  # measures the rate
        assert batcher.refusal(budget=0.01) is None  # 10 ms: a fifth of one answer
        assert await batcher.submit(1, budget=0.01) == 1
        held = asyncio.ensure_future(batcher.submit(-1))
        await asyncio.sleep(0.02)  # the thread takes it and is held: the queue is empty
        assert batcher.depth() == 0 and batcher.refusal(budget=0.01) is None
        queued = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0)
        why = batcher.refusal(budget=0.01)  # one ahead: about 50 ms of waiting
        assert why is not None and "with 1 queued is over the 10 ms budget" in why
        release.set()
        assert await asyncio.gather(held, queued) == [-1, 2]
        await batcher.stop()

    _run(main())


def test_batches_run_back_to_back_while_the_event_loop_is_busy() -> None:
    """The thread takes its next batch itself: a loop busy with HTTP does not idle the model."""
    ran = threading.Semaphore(0)

    def process(payloads: list[int]) -> list[int]:
        time.sleep(0.01)
        ran.release()
        return payloads

    async def main() -> None:
        batcher = MicroBatcher(process, max_batch=1)
        batcher.start()
        futures = [batcher.put(i) for i in range(4)]
        # The loop stays blocked in this coroutine until all four batches have run.
        assert all(ran.acquire(timeout=5) for _ in range(4))
        assert not any(f.done() for f in futures)  # their answers wait for the loop
        assert await asyncio.gather(*futures) == [0, 1, 2, 3]
        await batcher.stop()

    _run(main())


def test_shared_slots_bound_the_model_calls_running_at_once() -> None:
    running, most = [0], [0]
    lock = threading.Lock()

    def process(payloads: list[int]) -> list[int]:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return payloads

    async def main(slots: Slots | None) -> None:
        batchers = [MicroBatcher(process, max_batch=1, slots=slots) for _ in range(3)]
        for batcher in batchers:
            batcher.start()
        futures = [b.put(i) for i in range(5) for b in batchers]
        assert len(await asyncio.gather(*futures)) == 15
        for batcher in batchers:
            await batcher.stop()

    _run(main(Slots(1)))
    assert most[0] == 1
    most[0] = 0
    _run(main(None))  # without slots, the three models' calls do overlap
    assert most[0] > 1


def test_stop_answers_everything_queued_then_refuses_new_payloads() -> None:
    def process(payloads: list[int]) -> list[int]:
        time.sleep(0.01)
        return [-p for p in payloads]

    async def main() -> None:
        batcher = MicroBatcher(process, max_batch=2)
        with pytest.raises(RuntimeError, match="start"):
            batcher.put(0)
        batcher.start()
        futures = [batcher.put(i) for i in range(7)]
        await batcher.stop()
        assert all(f.done() for f in futures)
        assert [f.result() for f in futures] == [-i for i in range(7)]
        with pytest.raises(RuntimeError, match="not running"):
            batcher.put(8)

    _run(main())


def test_a_process_that_returns_too_few_results_fails_its_batch() -> None:
    async def main() -> None:
        batcher = MicroBatcher(lambda payloads: payloads[:-1], max_batch=4)
        batcher.start()
        futures = [batcher.put(i) for i in range(3)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results), results
        assert "gave" in str(results[0])
        await batcher.stop()

    _run(main())


def test_a_failing_batch_callback_fails_its_batch_not_the_thread() -> None:
    calls: list[int] = []

    def on_batch(size: int) -> None:
        calls.append(size)
        if len(calls) == 1:
            raise ValueError("metrics broke")

    async def main() -> None:
        batcher = MicroBatcher(lambda payloads: payloads, max_batch=1, on_batch=on_batch)
        batcher.start()
        with pytest.raises(ValueError, match="metrics broke"):
            await batcher.submit(1)
        assert await batcher.submit(2) == 2
        await batcher.stop()

    _run(main())
    assert calls == [1, 1]


class _Timed:
    """A model call that takes `per_row` seconds a row and records when each call ran."""

    def __init__(self, per_row: float) -> None:
        self.per_row = per_row
        self.calls: list[tuple[float, float, int]] = []  # (start, end, rows)

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        began = time.perf_counter()
        time.sleep(self.per_row * len(inputs[0]))
        self.calls.append((began, time.perf_counter(), len(inputs[0])))
        return [inputs[0] * 2, inputs[1].sum(axis=1)]


def test_interleaved_runs_in_pieces_of_about_the_asked_time_and_joins_them() -> None:
    model = _Timed(per_row=0.002)
    between = Interleaved(model, Slots(2), piece_seconds=0.01)
    x, y = np.arange(60.0).reshape(30, 2), np.arange(90).reshape(30, 3)
    doubled, sums = between([x, y])
    np.testing.assert_array_equal(doubled, x * 2)
    np.testing.assert_array_equal(sums, y.sum(axis=1))
    rows = [n for _, _, n in model.calls]
    assert sum(rows) == 30 and rows[0] == 1  # the first piece measures the rate
    assert max(rows) <= 6 and len(rows) >= 6  # about 10 ms of 2 ms rows each
    assert between.pauses == 0  # nothing else took a slot: no live batch to give way to


def test_interleaved_pauses_as_long_as_a_piece_ran_while_live_requests_wait() -> None:
    model = _Timed(per_row=0.002)
    between = Interleaved(model, Slots(2), idle=lambda: False, patience=0.0)
    between([np.zeros((30, 1)), np.zeros((30, 1))])
    assert between.pauses == len(model.calls) >= 6
    for (began, end, _), (start, _, _) in itertools.pairwise(model.calls):
        assert start - end >= 0.9 * (end - began)  # waits at least as long as the piece ran


@pytest.mark.parametrize("quiet", [0.0, 10.0])
def test_interleaved_pauses_for_quiet_seconds_after_a_live_batch_took_a_slot(quiet: float) -> None:
    slots = Slots(2)
    model = _Timed(per_row=0.002)
    between = Interleaved(model, slots, piece_seconds=0.004, quiet=quiet)
    calls = 0

    def live_batch() -> None:
        with slots:
            pass

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        nonlocal calls
        calls += 1
        if calls == 4:  # a live batch comes and goes between the 4th and 5th pieces
            threading.Thread(target=live_batch).start()
        return model(inputs)

    between.run = run
    between([np.zeros((20, 1)), np.zeros((20, 1))])
    pieces = len(model.calls)
    assert pieces > 5
    if quiet == 0:
        assert between.pauses == 1  # after the piece the batch waited behind, and no other
    else:
        assert between.pauses == pieces - 3  # after that piece and every one since


def test_interleaved_pieces_never_overlap_a_live_batch_and_let_batches_run_between() -> None:
    slots = Slots(2)  # a server with two model-call slots
    live: list[tuple[float, float]] = []

    def process(payloads: list[int]) -> list[int]:
        began = time.perf_counter()
        time.sleep(0.003)
        live.append((began, time.perf_counter()))
        return payloads

    model = _Timed(per_row=0.002)
    between = Interleaved(model, slots, piece_seconds=0.006)

    async def main() -> None:
        batcher = MicroBatcher(process, max_batch=1, slots=slots)
        batcher.start()
        job = asyncio.create_task(
            asyncio.to_thread(between, [np.zeros((40, 1)), np.zeros((40, 1))])
        )
        while not job.done():  # live traffic all along the job
            await batcher.submit(0)
        await job
        await batcher.stop()

    _run(main())
    pieces = [(a, b) for a, b, _ in model.calls]
    assert len(pieces) > 5
    for a, b in pieces:
        assert all(end <= a or start >= b for start, end in live), "a batch ran beside a piece"
    first, last = pieces[0][0], pieces[-1][1]
    between_pieces = [s for s, _ in live if first < s < last]
    assert len(between_pieces) >= len(pieces) // 2  # live batches ran in the pauses
    assert between.pauses >= len(pieces) // 2


def test_slots_are_granted_in_the_order_asked_and_one_may_take_them_all() -> None:
    slots, order = Slots(2), []
    slots.acquire()  # one of two held

    def take(name: str, n: int) -> None:
        slots.acquire(n)
        order.append(name)

    everything = threading.Thread(target=take, args=("all", 2))
    everything.start()
    time.sleep(0.05)
    one = threading.Thread(target=take, args=("one", 1))
    one.start()  # a slot is free, but "all" asked first
    time.sleep(0.05)
    assert order == []
    slots.release()
    everything.join(timeout=5)
    assert order == ["all"]
    slots.release(2)
    one.join(timeout=5)
    assert order == ["all", "one"]
    slots.release()
    with slots:  # a context manager for one slot
        assert slots._free == 1
    for bad in (0, 3):
        with pytest.raises(ValueError, match="between 1 and 2"):
            slots.acquire(bad)
    with pytest.raises(ValueError, match="at least 1"):
        Slots(0)


def test_interleaved_pieces_get_in_while_the_queue_never_empties() -> None:
    slots = Slots(1)
    model = _Timed(per_row=0.002)

    def process(payloads: list[int]) -> list[int]:
        time.sleep(0.002)
        return payloads

    async def main() -> float:
        batcher = MicroBatcher(process, max_batch=1, slots=slots, queue_limit=2000)
        batcher.start()
        futures = [batcher.put(i) for i in range(1000)]  # 2 s of work, queued at once
        between = Interleaved(
            model, slots, lambda: batcher.depth() == 0, piece_seconds=0.002, patience=0.01
        )
        began = time.perf_counter()
        await asyncio.to_thread(between, [np.zeros((20, 1)), np.zeros((20, 1))])
        took = time.perf_counter() - began
        assert batcher.depth() > 0  # the queue was never empty meanwhile
        await asyncio.gather(*futures)
        await batcher.stop()
        return took

    took = _run(main())
    assert len(model.calls) == 20
    # each piece waited its patience and one batch, not for the queue to drain
    assert took < 1.0


def test_interleaved_waits_for_an_empty_queue_but_no_longer_than_its_patience() -> None:
    x = [np.zeros((3, 1)), np.zeros((3, 1))]
    model = _Timed(per_row=0.001)
    quiet_from = time.perf_counter() + 0.1
    Interleaved(model, Slots(1), idle=lambda: time.perf_counter() >= quiet_from, patience=1.0)(x)
    assert model.calls[0][0] >= quiet_from  # the queue emptied after 0.1 s: not before

    model = _Timed(per_row=0.001)
    began = time.perf_counter()
    Interleaved(model, Slots(1), idle=lambda: False, piece_seconds=0.001, patience=0.03)(x)
    starts = [began] + [start for start, _, _ in model.calls]
    assert len(starts) == 4  # one row a piece
    assert all(b - a >= 0.03 for a, b in itertools.pairwise(starts))  # each waited, then went
    assert starts[-1] - began < 1.0


def test_interleaved_gives_up_before_its_next_piece_once_stopping() -> None:
    stopping = threading.Event()
    model = _Timed(per_row=0.002)

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        if len(model.calls) == 2:
            stopping.set()  # the server stops during the third piece
        return model(inputs)

    between = Interleaved(run, Slots(1), piece_seconds=0.002, stopping=stopping)
    with pytest.raises(StoppingError, match="3 of 10 rows run"):
        between([np.zeros((10, 1)), np.zeros((10, 1))])
    assert len(model.calls) == 3
