"""How the batching thread joins the requests' inputs into one batch."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from modelcycle.serving.app import joined


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64, np.int64, np.bool_])
@pytest.mark.parametrize("row", [(96, 96), (5, 3)], ids=["images", "measures"])
def test_joined_equals_numpy_concatenate(dtype: type, row: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    arrays: list[np.ndarray] = [(rng.random((n, *row)) * 100).astype(dtype) for n in (1, 2, 0, 3)]
    out = joined(arrays)
    expected = np.concatenate(arrays)
    assert out.dtype == expected.dtype
    assert out.shape == expected.shape
    assert np.array_equal(out, expected)


def test_joined_reads_non_contiguous_arrays_and_one_array() -> None:
    strided = np.arange(2 * 96 * 192, dtype=np.float32).reshape(2, 96, 192)[:, :, ::2]
    plain = np.arange(96 * 96, dtype=np.float32).reshape(1, 96, 96)
    assert np.array_equal(joined([strided, plain]), np.concatenate([strided, plain]))
    assert np.array_equal(joined([plain]), plain)


def test_arrays_numpy_would_not_join_get_numpys_error_or_result() -> None:
    with pytest.raises(ValueError, match="dimension 2"):
        joined([np.zeros((1, 96, 96)), np.zeros((1, 96, 95))])
    mixed = joined([np.ones((1, 96, 96), np.float32), np.ones((2, 96, 96), np.float64)])
    assert mixed.dtype == np.float64
    assert mixed.shape == (3, 96, 96)


@contextmanager
def _other_thread_counting() -> Iterator[Callable[[], int]]:
    """A thread that counts each time it gets the GIL; with a 1 s switch interval it only
    gets it when this thread lets go (or after a whole second of Python bytecode)."""
    count = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            count[0] += 1
            time.sleep(0)  # gives the GIL back at once

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield lambda: count[0]
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)


def test_joining_images_keeps_the_gil_where_numpy_lets_go_of_it() -> None:
    images = [np.full((1, 224, 224, 3), k, np.uint8) for k in range(4)]
    with _other_thread_counting() as count:
        time.sleep(0.01)
        # Each let-go is a few microseconds: on busy cores the other thread is often not
        # scheduled in time, so numpy gets up to 2 s of tries, and ours as many (50 at most,
        # well within the 1 s switch interval) to keep it.
        before, tries, give_up = count(), 0, time.perf_counter() + 2.0
        while count() == before and time.perf_counter() < give_up:
            numpy_join = np.concatenate(images)
            tries += 1
        numpy_let_go = count() - before
        before = count()
        for _ in range(min(tries, 50)):
            ours = joined(images)
        ours_let_go = count() - before
    assert np.array_equal(ours, numpy_join)
    assert numpy_let_go > 0, "numpy no longer lets go of the GIL while copying; see joined()"
    assert ours_let_go == 0
