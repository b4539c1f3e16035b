"""psvn/core/heap.py: the garbage collector as a started gateway sets it."""

from __future__ import annotations

import gc
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
