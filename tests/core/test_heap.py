"""psvn/core/heap.py: the garbage collector as a started gateway sets it, and the allocator trimmed."""

from __future__ import annotations

import asyncio
import gc
import platform
from collections.abc import Iterator

import pytest

from psvn.core import heap


@pytest.fixture
def restored() -> Iterator[None]:
    """Put this test process's collector back as it was."""
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_settle_freezes_what_start_up_built_and_raises_the_young_threshold(restored: None) -> None:
    built = [[i, "long-lived"] for i in range(1000)]  # tracked containers, as start-up leaves
    settled = heap.settle(100_000)
    assert settled.thresholds == (100_000, *heap.OLDER) == gc.get_threshold()
    assert gc.get_freeze_count() == settled.frozen >= len(built)
    walked = {id(o) for o in gc.get_objects()}  # what the collector still walks: not the frozen
    assert gc.is_tracked(built[0]) and id(built[0]) not in walked and id(built) not in walked


def test_settle_zero_keeps_the_collector_as_it_is(restored: None) -> None:
    gc.set_threshold(700, 10, 10)
    settled = heap.settle(0)
    assert settled == heap.HeapSettings(thresholds=(700, 10, 10), frozen=gc.get_freeze_count())
    assert gc.get_threshold() == (700, 10, 10)


def test_settle_refuses_a_negative_threshold(restored: None) -> None:
    before = gc.get_threshold()
    with pytest.raises(ValueError, match="-5"):
        heap.settle(-5)
    assert gc.get_threshold() == before


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_malloc_trim_hands_free_pages_between_live_objects_back() -> None:
    trim = heap.malloc_trim()
    assert trim is not None  # glibc has it: a None here would silently never trim
    trim()  # start from a trimmed heap
    # ~64 MB from malloc's heap (over pymalloc's 512 bytes, under its 128 KiB mmap threshold), in
    # blocks large enough that no small hole an earlier test left can hold one
    blocks = [bytes(64 * 1024) for _ in range(1_000)]
    kept = blocks[::16]  # one live block in sixteen: the free space between them is not the heap's top
    del blocks
    before = _rss_mib()
    assert trim() is True
    after = _rss_mib()
    assert before - after > 30, (before, after)  # ~60 MB of free pages went back
    assert len(kept) == 63 and all(len(b) == 64 * 1024 for b in kept)  # the live ones are untouched


async def test_trim_every_calls_trim_each_interval_and_reports_each_call() -> None:
    slept: list[float] = []
    observed: list[tuple[float, bool]] = []
    ticks = iter([10.0, 10.003, 20.0, 20.001, 30.0, 30.002])
    released = iter([True, False, True])

    async def sleep(seconds: float) -> None:
        if len(slept) == 3:
            raise asyncio.CancelledError  # the gateway stopping: the loop ends there
        slept.append(seconds)

    with pytest.raises(asyncio.CancelledError):
        await heap.trim_every(10.0, lambda: next(released), sleep=sleep, clock=lambda: next(ticks),
                              observe=lambda s, r: observed.append((round(s, 6), r)))
    assert slept == [10.0, 10.0, 10.0]
    assert observed == [(0.003, True), (0.001, False), (0.002, True)]  # waited on, and whether it released


async def test_trim_every_logs_a_failed_call_and_goes_on() -> None:
    calls: list[int] = []

    def trim() -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("the first call fails")
        return True

    async def sleep(seconds: float) -> None:
        if len(calls) == 3:
            raise asyncio.CancelledError

    observed: list[bool] = []
    with pytest.raises(asyncio.CancelledError):
        await heap.trim_every(1.0, trim, sleep=sleep, observe=lambda s, r: observed.append(r))
    assert len(calls) == 3 and observed == [True, True]  # the task outlived the failure


@pytest.mark.parametrize("interval", [0.0, -1.0])
async def test_trim_every_refuses_an_interval_that_is_not_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="interval"):
        await heap.trim_every(interval, lambda: True, observe=lambda s, r: None)
