"""gateway/server.py: what the gateway's own process sets up once started."""

from __future__ import annotations

import asyncio
import platform

import pytest

from psvn.core import heap
from psvn.gateway.metrics import Metrics
from psvn.gateway.server import trim_heap


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
async def test_trim_heap_runs_the_trimmer_and_reports_its_interval() -> None:
    metrics = Metrics()
    task = trim_heap(0.01, metrics)
    assert task is not None
    try:
        assert _sample(metrics, "psvn_heap_trim_interval_seconds") == 0.01
        for _ in range(2_000):  # bounded: until the first trim is reported (it runs every 10 ms)
            if _sample(metrics, "psvn_heap_trim_seconds_count"):
                break
            await asyncio.sleep(0.01)
        trims = sum(_sample(metrics, "psvn_heap_trims_total", released=r) or 0 for r in ("yes", "no"))
        assert trims >= 1 and _sample(metrics, "psvn_heap_trim_seconds_count") == trims
    finally:
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


async def test_trim_heap_zero_never_trims_and_says_so() -> None:
    metrics = Metrics()
    assert trim_heap(0, metrics) is None
    assert _sample(metrics, "psvn_heap_trim_interval_seconds") == 0
    assert _sample(metrics, "psvn_heap_trim_seconds_count") == 0


async def test_trim_heap_where_the_c_library_cannot_trim_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "malloc_trim", lambda: None)  # musl, macOS: no malloc_trim
    metrics = Metrics()
    assert trim_heap(10, metrics) is None
    assert _sample(metrics, "psvn_heap_trim_interval_seconds") == 0
