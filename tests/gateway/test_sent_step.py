"""gateway.sent_step: the queue of ``sent`` steps waiting for a receipt to write them: its
order, its bound, a failed write, the time a receipt's move takes from it, the loop.

The store here is a stand-in for :meth:`StateStore.move_out` that records each call (the queue's
own logic is what is tested); the real store, receipts and backbone are in test_state_volume
(two writes per message, the step written alone when no receipt comes) and test_receipts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from psvn.gateway.config import GatewaySection
from psvn.gateway.metrics import Metrics
from psvn.gateway.sent_step import SentSteps
from psvn.protocol.lifecycle import State

T0 = datetime(2026, 12, 7, 9, 0, 0, tzinfo=UTC)


class Moves:
    """Records each ``move_out`` call; ids in ``failing`` raise as a lost backbone would."""

    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        self.calls: list[tuple[str, State, str | None, tuple[str, ...] | None]] = []
        self.failing = failing
        self.moved_on: set[str] = set()  # records another writer moved on: the write gives way
        self.changed = asyncio.Event()

    async def move_out(self, message_id: str, new: State, *, at: str | None = None,
                       only_from: tuple[str, ...] | None = None, give_way: bool = False, **_: Any) -> Any:
        self.changed.set()
        assert give_way  # a step never fights another writer for the record
        if message_id in self.failing:
            raise ConnectionError("backbone gone")
        self.calls.append((message_id, new, at, only_from))
        return None if message_id in self.moved_on else SimpleNamespace(status=new.value)


class Gated(Moves):
    """Each write waits at a gate the test opens (a backbone slow to answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.entered = asyncio.Event(), asyncio.Event()

    async def move_out(self, message_id: str, new: State, **kw: Any) -> Any:
        self.entered.set()
        await self.gate.wait()
        return await super().move_out(message_id, new, **kw)


def steps(moves: Moves, *, delay: float = 3600.0, bound: int = 100) -> tuple[SentSteps, Metrics, list[datetime]]:
    settings = GatewaySection(org="gss:E06000043", sent_step_delay_seconds=delay, max_pending_sent_steps=bound)
    clock = [T0]
    metrics = Metrics()
    queue = SentSteps(store=moves, settings=settings, clock=lambda: clock[0],  # type: ignore[arg-type]
                      metrics=metrics, stopping=lambda: False)
    return queue, metrics, clock


def gauge(metrics: Metrics) -> float:
    return metrics.sent_steps_pending._value.get()  # type: ignore[attr-defined,no-any-return]


async def test_nothing_is_written_before_its_delay_and_everything_at_close_oldest_first() -> None:
    moves = Moves()
    queue, metrics, clock = steps(moves)
    for i in range(3):
        clock[0] = T0 + timedelta(seconds=i)
        queue.published(f"m{i}")
    assert await queue.write_due() == 0 and moves.calls == [] and gauge(metrics) == 3
    await queue.close(5.0)
    assert moves.calls == [(f"m{i}", State.SENT, f"2026-12-07T09:00:0{i}.000Z", ("accepted",)) for i in range(3)]
    assert queue.written == 3 and not queue.pending and gauge(metrics) == 0


async def test_a_step_falls_due_after_the_delay() -> None:
    moves = Moves()
    queue, _metrics, _clock = steps(moves, delay=0.0)
    queue.published("m0")
    assert await queue.write_due() == 1
    assert [c[0] for c in moves.calls] == ["m0"]


async def test_past_the_bound_the_oldest_is_written_at_once() -> None:
    moves = Moves()
    queue, metrics, _clock = steps(moves, bound=2)
    for i in range(5):
        queue.published(f"m{i}")
    assert await queue.write_due() == 3  # none is due yet: the three oldest, over the bound of 2
    assert [c[0] for c in moves.calls] == ["m0", "m1", "m2"]
    assert list(queue.pending) == ["m3", "m4"] and gauge(metrics) == 2


async def test_a_move_written_with_the_step_leaves_nothing_to_write_and_a_failed_one_leaves_it() -> None:
    moves = Moves()
    queue, metrics, clock = steps(moves)
    clock[0] = T0 + timedelta(milliseconds=1500)
    queue.published("m0")
    queue.published("m1")
    queue.published("m2")
    assert queue.peek("m0") == "2026-12-07T09:00:01.500Z"  # the receipt's move writes it ...
    queue.overtaken("m0")  # ... and, once written, it waits no more
    assert queue.peek("m0") is None and queue.peek("never-published") is None
    assert queue.peek("m1") is not None  # a move refused or failed: still waiting
    await queue.close(5.0)
    assert [c[0] for c in moves.calls] == ["m1", "m2"] and gauge(metrics) == 0


async def test_a_step_whose_record_another_writer_moved_on_is_counted_overtaken() -> None:
    moves = Moves()
    moves.moved_on.add("m1")
    queue, metrics, _clock = steps(moves)
    queue.published("m0")
    queue.published("m1")
    await queue.close(5.0)
    assert queue.written == 1 and not queue.pending
    assert metrics.sent_steps.labels("overtaken")._value.get() == 1  # type: ignore[attr-defined]


async def test_a_retry_published_again_keeps_the_first_acknowledgement() -> None:
    moves = Moves()
    queue, _metrics, clock = steps(moves)
    queue.published("m0")
    clock[0] = T0 + timedelta(seconds=30)
    queue.published("m0")  # a retry's publish, a duplicate
    assert queue.peek("m0") == "2026-12-07T09:00:00.000Z"


async def test_a_delay_changed_while_running_applies_to_what_waits() -> None:
    moves = Moves()
    queue, _metrics, _clock = steps(moves, delay=3600.0)
    queue.published("m0")
    queue.published("m1")
    assert await queue.write_due() == 0
    queue.settings.sent_step_delay_seconds = 0.0
    assert await queue.write_due() == 2 and [c[0] for c in moves.calls] == ["m0", "m1"]


async def test_a_step_stays_waiting_while_its_write_is_in_flight() -> None:
    """Until its write is done, a receipt's move still finds the step's time (peek)."""
    moves = Gated()
    queue, _metrics, _clock = steps(moves, delay=0.0)
    queue.published("m0")
    writing = asyncio.create_task(queue.write_due())
    await asyncio.wait_for(moves.entered.wait(), 10)
    assert queue.peek("m0") == "2026-12-07T09:00:00.000Z" and "m0" in queue.pending
    moves.gate.set()
    assert await writing == 1 and not queue.pending


async def test_a_failed_write_is_counted_and_the_others_are_still_written() -> None:
    moves = Moves(failing=frozenset({"m1"}))
    queue, metrics, _clock = steps(moves)
    for i in range(3):
        queue.published(f"m{i}")
    await queue.close(5.0)
    assert [c[0] for c in moves.calls] == ["m0", "m2"] and queue.written == 2
    assert metrics.sent_steps.labels("failed")._value.get() == 1  # type: ignore[attr-defined]
    assert metrics.sent_steps.labels("written")._value.get() == 2  # type: ignore[attr-defined]
    assert not queue.pending  # not retried: the record stays accepted until its receipt


async def test_the_loop_sleeps_until_a_step_falls_due_then_writes_it() -> None:
    moves = Moves()
    queue, _metrics, _clock = steps(moves, delay=0.05)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(queue.run())
    try:
        await asyncio.sleep(0)  # the loop waits on an empty queue
        assert moves.calls == []
        published = loop.time()
        queue.published("m0")
        await asyncio.wait_for(moves.changed.wait(), 10)  # woken, slept out the delay, wrote it
        assert loop.time() - published >= 0.05  # not before its delay (a lower bound: never flaky)
        assert [c[0] for c in moves.calls] == ["m0"] and not queue.pending
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_stop_in_the_middle_of_a_write_leaves_the_steps_for_close() -> None:
    """The loop is cancelled (the gateway stops) while its writes wait on the backbone: the
    steps stay waiting, and close() writes them."""
    moves = Gated()
    queue, _metrics, _clock = steps(moves, delay=0.0)
    queue.published("m0")
    queue.published("m1")
    task = asyncio.create_task(queue.run())
    await asyncio.wait_for(moves.entered.wait(), 10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert list(queue.pending) == ["m0", "m1"] and moves.calls == []
    moves.gate.set()
    await queue.close(5.0)
    assert [c[0] for c in moves.calls] == ["m0", "m1"] and not queue.pending


def test_the_settings_are_bounded_and_their_errors_name_the_key() -> None:
    base = {"org": "gss:E06000043"}
    for bad in ({"sent_step_delay_seconds": -1}, {"sent_step_delay_seconds": 3601},
                {"sent_step_delay_seconds": float("nan")}, {"max_pending_sent_steps": -1}):
        with pytest.raises(msgspec.ValidationError) as err:
            msgspec.convert({**base, **bad}, GatewaySection)
        assert next(iter(bad)) in str(err.value)
    assert msgspec.convert(base, GatewaySection).sent_step_delay_seconds == 1.0
