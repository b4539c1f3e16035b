"""backbone.natsraw's pull consumer against a real nats-server: one pull request kept open
(not two requests per fetch piling up on the server under a trickle), nothing lost between
fetches, requests renewed when they end, a publisher's ``Status`` header neither hiding a
message nor ending a request, and what the server says when it ends one raised, not spun on."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import APIError, ServiceUnavailableError

from psvn import devnet
from psvn.backbone import natsraw
from psvn.backbone.natsraw import Puller, RawReads, _Request
from tests.backbone.test_jsfast import Backbone, backbone  # noqa: F401  (the module's server)

STREAM = "PULLRAW"


@pytest.fixture
async def nc(backbone: Backbone) -> AsyncIterator[NATS]:  # noqa: F811
    conn = await devnet.broker_connect(backbone.layout, backbone.url, name="natsraw-test")
    yield conn
    await conn.close()


class Pulling:
    """A fresh consumer on the test stream, and a puller reading it."""

    def __init__(self, nc: NATS, puller: Puller, consumer: str, subject: str) -> None:
        self.nc, self.puller, self.consumer, self.subject = nc, puller, consumer, subject

    async def publish(self, data: bytes, headers: dict[str, str] | None = None) -> None:
        await self.nc.jetstream().publish(self.subject, data, headers=headers)

    async def add_consumer(self) -> None:
        await add_consumer(self.nc, self.consumer, self.subject)


async def add_consumer(nc: NATS, name: str, subject: str) -> None:
    await nc.jetstream().add_consumer(STREAM, ConsumerConfig(
        durable_name=name, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT, ack_wait=30))


@pytest.fixture
async def pulling(nc: NATS) -> AsyncIterator[Pulling]:
    js = nc.jetstream()
    name = f"c{time.monotonic_ns()}"
    try:
        await js.add_stream(name=STREAM, subjects=["pullraw.>"])
    except APIError:
        pass  # made by an earlier test of this module
    await add_consumer(nc, name, f"pullraw.{name}")
    puller = await RawReads(nc).puller(js, STREAM, name)
    yield Pulling(nc, puller, name, f"pullraw.{name}")
    await puller.close()


def most_requests(elapsed: float) -> int:
    """The requests a puller may send in ``elapsed`` seconds of steady reading: the first, one
    per request lifetime, and one more for a renewal on the boundary."""
    return 2 + math.ceil(elapsed / (natsraw.PULL_EXPIRES - natsraw.PULL_RENEW_BEFORE))


async def test_a_trickle_is_read_through_one_open_request(pulling: Pulling) -> None:
    """Thirty messages one at a time, each fetched as it comes: a handful of requests, renewed
    only as time runs out on them (a request per fetch would be thirty or more)."""
    started = time.monotonic()
    for i in range(30):
        await pulling.publish(f"m{i}".encode())
        got = await pulling.puller.fetch(256, timeout=5)
        assert [m.data for m in got] == [f"m{i}".encode()]
        await got[0].ack()
    elapsed = time.monotonic() - started
    assert 1 <= pulling.puller.requests_sent <= most_requests(elapsed), (pulling.puller.requests_sent, elapsed)


async def test_what_arrives_after_a_fetch_returned_is_taken_by_the_next(pulling: Pulling) -> None:
    for i in range(5):
        await pulling.publish(f"m{i}".encode())
    first: list[Msg] = []
    for _ in range(10):  # bounded: the two may come in one read or in two
        first += await pulling.puller.fetch(2, timeout=5)  # never more than two: A asked for two
        if len(first) >= 2:
            break
    assert [m.data for m in first] == [b"m0", b"m1"]
    # the next batch of two is delivered meanwhile (its request went as the fetch returned): their
    # ack timers are running, and a slow batch's handler restarts them through waiting()
    for _ in range(500):  # bounded: polled until the server has delivered them
        if len(pulling.puller.waiting()) == 2:
            break
        await asyncio.sleep(0.01)
    assert [m.data for m in pulling.puller.waiting()] == [b"m2", b"m3"]
    for m in pulling.puller.waiting():
        await m.in_progress()
    rest: list[Msg] = []
    for _ in range(10):  # bounded: the other three are delivered already or on their way
        rest += await pulling.puller.fetch(256, timeout=5)
        if len(rest) >= 3:
            break
    assert [m.data for m in rest] == [b"m2", b"m3", b"m4"]


async def test_deliveries_are_taken_as_the_reading_loop_parses_them(pulling: Pulling) -> None:
    """On psvn's own client a pull's deliveries skip nats-py's per-subscription queue and task:
    each is in the puller's hands once the reading loop has parsed it, still acknowledgeable."""
    from psvn.backbone.connect import CoalescingClient

    assert isinstance(pulling.nc, CoalescingClient)
    sub = pulling.puller._sub
    assert sub._id in pulling.nc._direct
    await pulling.publish(b"m")
    got: list[Msg] = []
    async with asyncio.timeout(10):
        while not got:
            got += await pulling.puller.fetch(1, timeout=5)
    assert [m.data for m in got] == [b"m"] and sub._pending_queue.qsize() == 0  # nothing queued
    await got[0].ack()


class ArrivalOrder:
    """What the loop runs after each of the puller's arrivals, in order: a fetch woken by it
    notes "fetch returned", and a callback the arrival schedules notes that it ran."""

    def __init__(self, pulling: Pulling) -> None:
        self.pulling, self.seen = pulling, list[str]()
        loop = asyncio.get_running_loop()
        sub_id = pulling.puller._sub._id
        handler = pulling.nc._direct[sub_id]  # type: ignore[attr-defined]

        def arrive(msg: Msg) -> None:
            handler(msg)
            loop.call_soon(self.seen.append, "the loop's next callback")

        pulling.nc._direct[sub_id] = arrive  # type: ignore[attr-defined]

    async def fetch_one(self) -> list[Msg]:
        got = await self.pulling.puller.fetch(1, timeout=30)
        self.seen.append("fetch returned")
        return got


async def _quiet_turns() -> None:
    for _ in range(5):  # a fetch started now is waiting after these (its request out, the server quiet)
        await asyncio.sleep(0)


async def test_a_waiting_fetch_has_its_message_the_loop_turn_after_it_arrives(pulling: Pulling) -> None:
    """An idle gateway's fetch waits for the next message; once the reading loop has it, the
    fetch resumes in the next turn of the event loop, before anything the loop was asked to do
    after the arrival (the order is what is checked, not a time): Python 3.11's
    ``wait_for(Event.wait())`` first woke a task of its own, and the fetch came a turn later."""
    order = ArrivalOrder(pulling)
    for i in range(5):
        fetching = asyncio.ensure_future(order.fetch_one())
        await _quiet_turns()
        assert not fetching.done()
        order.seen.clear()
        await pulling.publish(f"m{i}".encode())
        got = await fetching
        assert [m.data for m in got] == [f"m{i}".encode()]
        assert order.seen[0] == "fetch returned", order.seen
        await got[0].ack()


async def test_fetches_waiting_at_once_are_each_woken_by_an_arrival(pulling: Pulling) -> None:
    """Two fetches waiting at once (not what a gateway does, but nothing forbids it): the first
    arrival wakes both (one takes it, the other waits again), and the next arrival still wakes
    the one left waiting at once, not when its wait would time out."""
    order = ArrivalOrder(pulling)
    fetches = [asyncio.ensure_future(order.fetch_one()) for _ in range(2)]
    got: list[bytes] = []
    for i in range(2):
        await _quiet_turns()
        order.seen.clear()
        await pulling.publish(f"m{i}".encode())
        done, _ = await asyncio.wait(fetches, return_when=asyncio.FIRST_COMPLETED)
        assert order.seen[0] == "fetch returned", order.seen
        for f in done:
            fetches.remove(f)
            for m in f.result():
                got.append(m.data)
                await m.ack()
    assert sorted(got) == [b"m0", b"m1"] and not fetches


async def test_a_fetch_cancelled_while_waiting_loses_nothing(pulling: Pulling) -> None:
    """A fetch cancelled while it waits (its gateway stopping) leaves no waiter behind: an
    arrival meanwhile raises nothing in the reading loop, and what arrives next is kept for the
    next fetch."""
    sub_id = pulling.puller._sub._id
    arrive = pulling.nc._direct[sub_id]  # type: ignore[attr-defined]
    waiting = asyncio.ensure_future(pulling.puller.fetch(1, timeout=5))
    await _quiet_turns()
    waiting.cancel()  # (its waiter is cancelled now; the fetch finishes on its next turn)
    heartbeat = Msg(pulling.nc, subject=pulling.puller._open[0].reply, headers={"Status": "100"})
    arrive(heartbeat)  # an idle heartbeat reaching the cancelled waiter: no error
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert pulling.puller._waiters == []
    await pulling.publish(b"after")
    got: list[Msg] = []
    async with asyncio.timeout(10):
        while not got:
            got += await pulling.puller.fetch(1, timeout=5)
    assert [m.data for m in got] == [b"after"]
    await got[0].ack()


async def test_a_request_that_ran_out_is_renewed(pulling: Pulling) -> None:
    """Nothing arrives for longer than a request lasts: the server ends it (408), a new one is
    open, and the next message still comes."""
    loop = asyncio.get_running_loop()
    quiet_until = loop.time() + natsraw.PULL_EXPIRES + natsraw.PULL_GRACE + 0.5
    for _ in range(100):  # bounded: each empty fetch waits its 0.1 s timeout
        assert await pulling.puller.fetch(256, timeout=0.1) == []
        assert len(pulling.puller._open) <= 2  # never a pile of waiting requests
        if loop.time() > quiet_until:
            break
    assert pulling.puller.requests_sent >= 2  # the first ran out and was followed
    await pulling.publish(b"late")
    got = await pulling.puller.fetch(256, timeout=5)
    assert [m.data for m in got] == [b"late"]


async def test_a_publishers_status_header_neither_hides_a_message_nor_ends_a_request(pulling: Pulling) -> None:
    started = time.monotonic()
    for status in ("100", "404", "408", "409", "503"):
        await pulling.publish(status.encode(), headers={"Status": status, "Description": "forged"})
    got: list[Msg] = []
    for _ in range(10):
        got += await pulling.puller.fetch(256, timeout=5)  # a forged 503 or 409 would raise here
        if len(got) >= 5:
            break
    assert [m.data for m in got] == [b"100", b"404", b"408", b"409", b"503"]
    # no request ended early: only those time alone renews
    assert pulling.puller.requests_sent <= most_requests(time.monotonic() - started) - 1


async def test_a_deleted_consumer_is_said_and_a_new_one_is_served(pulling: Pulling, nc: NATS) -> None:
    """The server ends the open request with 409 "Consumer Deleted": the fetch raises it (the
    gateway's loop logs it and backs off) instead of asking again at once; once the consumer is
    back, the next message comes."""
    assert await pulling.puller.fetch(256, timeout=0.1) == []  # a request is open
    await nc.jetstream().delete_consumer(STREAM, pulling.consumer)
    with pytest.raises(APIError) as said:
        for _ in range(10):  # bounded: the 409 comes at once
            await pulling.puller.fetch(256, timeout=0.5)
    assert said.value.code == 409 and "deleted" in (said.value.description or "").lower(), said.value
    await pulling.add_consumer()
    await pulling.publish(b"after")
    got: list[Msg] = []
    for _ in range(10):
        got += await pulling.puller.fetch(256, timeout=1)
        if got:
            break
    assert [m.data for m in got] == [b"after"]


async def test_no_consumer_at_all_is_service_unavailable(nc: NATS) -> None:
    puller = await RawReads(nc).puller(nc.jetstream(), STREAM, "never-made")
    try:
        with pytest.raises(ServiceUnavailableError):
            for _ in range(10):
                await puller.fetch(16, timeout=0.5)
    finally:
        await puller.close()


def test_requests_are_counted_down_in_the_order_the_server_serves_them() -> None:
    """nats-server serves its waiting requests in turn, one message each, a request with slots
    left going to the back; a fully served request gets no status, so the count must follow that
    order to know when nothing is asked for any more."""
    p = Puller(None, "", "_INBOX.t")  # type: ignore[arg-type]  (no I/O below)
    p._open.extend([_Request("_INBOX.t.1", 2, 10.0), _Request("_INBOX.t.2", 2, 11.0)])
    stored = Msg(None, subject="s", reply="$JS.ACK.S.C.1.1.1.0.0")  # type: ignore[arg-type]
    for _ in range(3):  # served: 1, 2, 1
        assert p._took(stored)
    assert [(r.reply, r.left) for r in p._open] == [("_INBOX.t.2", 1)]
    status = Msg(None, subject="_INBOX.t.2", headers={"Status": "408"})  # type: ignore[arg-type]
    assert not p._took(status) and not p._open and p._ended is None  # expired: a normal end
