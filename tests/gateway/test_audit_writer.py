"""The gateway's audit writer retrying a batch (a fake stream: no network)."""

from __future__ import annotations

import asyncio
import time

import pytest

from psvn.gateway.audit import AuditWriter


class Stream:
    """Refuses the first ``failures`` writes; records every try's headers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.tries: list[dict[str, str]] = []
        self.stored: list[bytes] = []
        self.done = asyncio.Event()

    async def publish(self, data: bytes, headers: dict[str, str]) -> None:
        self.tries.append(dict(headers))
        if len(self.tries) <= self.failures:
            raise ConnectionError("backbone away")
        self.stored.append(data)
        self.done.set()


class Lost(list[int]):
    """The on_lost counts, and an event set at the first."""

    def __init__(self) -> None:
        super().__init__()
        self.event = asyncio.Event()

    def __call__(self, n: int) -> None:
        self.append(n)
        self.event.set()


async def test_a_batch_is_retried_with_the_same_message_id_and_stored_once() -> None:
    stream, lost = Stream(failures=2), Lost()
    writer = AuditWriter(stream.publish, on_lost=lost, attempts=6)
    writer.add({"event": "sent", "id": "m1"})
    writer.add({"event": "delivered", "id": "m1"})
    await asyncio.wait_for(stream.done.wait(), 5)
    assert len(stream.tries) == 3 and len({h["Nats-Msg-Id"] for h in stream.tries}) == 1
    assert len(stream.stored) == 1 and stream.stored[0].count(b"\n") >= 1 and lost == []
    assert await writer.close(1) == 0


@pytest.mark.timeout(30)
async def test_a_batch_never_acknowledged_is_counted_lost_after_every_attempt() -> None:
    stream, lost = Stream(failures=100), Lost()
    writer = AuditWriter(stream.publish, on_lost=lost, attempts=3)
    started = time.monotonic()
    writer.add({"event": "sent", "id": "m2"})
    await asyncio.wait_for(lost.event.wait(), 10)
    took = time.monotonic() - started
    # tries after 0.25 s and 0.5 s, then one more wait as long as the last (1 s) before giving up
    assert len(stream.tries) == 3 and lost == [1]
    assert 1.7 <= took < 3.5, took
    assert await writer.close(1) == 0


async def test_closing_gives_a_failing_batch_one_more_try_only() -> None:
    stream, lost = Stream(failures=100), Lost()
    writer = AuditWriter(stream.publish, on_lost=lost, attempts=6)
    writer.add({"event": "sent", "id": "m3"})
    started = time.monotonic()
    assert await writer.close(5) == 0  # given up (and counted lost) before the close timeout
    assert len(stream.tries) == 2 and lost == [1]
    assert time.monotonic() - started < 1.0


async def test_records_queued_while_the_writer_lingers_share_one_write_and_closing_cuts_it_short() -> None:
    """At a trickle each record would be written alone (the writer wakes at the first); lingering
    lets the next join it. Closing does not wait the linger out: what is queued goes at once."""
    stream, lost = Stream(failures=0), Lost()
    writer = AuditWriter(stream.publish, on_lost=lost, attempts=6, linger=3600)
    writer.add({"event": "sent", "id": "m4"})
    for _ in range(5):  # the writer wakes and starts lingering
        await asyncio.sleep(0)
    assert stream.stored == []
    writer.add({"event": "delivered", "id": "m4"})
    assert await asyncio.wait_for(writer.close(3600), 10) == 0
    assert len(stream.stored) == 1 and stream.stored[0].count(b"\n") == 1 and lost == []


async def test_a_batch_worth_of_records_is_written_without_waiting_out_the_linger() -> None:
    stream, lost = Stream(failures=0), Lost()
    writer = AuditWriter(stream.publish, on_lost=lost, attempts=6, linger=3600, max_batch_bytes=200)
    for i in range(8):  # ~30 bytes each: more than a batch's worth
        writer.add({"event": "sent", "id": f"m5-{i}"})
    await asyncio.wait_for(stream.done.wait(), 10)
    assert stream.stored and all(len(batch) <= 200 for batch in stream.stored)
    assert await writer.close(1) == 0
