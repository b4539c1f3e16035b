"""backbone.natsraw's pull consumer against a real nats-server: one pull request kept open
(not two requests per fetch piling up on the server under a trickle), nothing lost between
fetches, requests renewed when they end, and a publisher's ``Status`` header neither hides a
message nor ends a request."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from psvn import devnet
from psvn.backbone import natsraw
from psvn.backbone.natsraw import Puller, RawReads
from tests.backbone.test_jsfast import Backbone, backbone  # noqa: F401  (the module's server)

STREAM = "PULLRAW"


@pytest.fixture
async def nc(backbone: Backbone) -> AsyncIterator[NATS]:  # noqa: F811
    conn = await devnet.broker_connect(backbone.layout, backbone.url, name="natsraw-test")
    yield conn
    await conn.close()


class Pulling:
    """A fresh stream and consumer, the requests the puller sends (seen on the server's API
    subject by a subscription of our own), and the puller."""

    def __init__(self, nc: NATS, puller: Puller, requests: list[Msg], subject: str) -> None:
        self.nc, self.puller, self.requests, self.subject = nc, puller, requests, subject

    async def publish(self, data: bytes, headers: dict[str, str] | None = None) -> None:
        await self.nc.jetstream().publish(self.subject, data, headers=headers)


@pytest.fixture
async def pulling(nc: NATS) -> AsyncIterator[Pulling]:
    js = nc.jetstream()
    name = f"c{time.monotonic_ns()}"
    subject = f"pullraw.{name}"
    try:
        await js.add_stream(name=STREAM, subjects=["pullraw.>"])
    except Exception:
        pass  # made by an earlier test of this module
    await js.add_consumer(STREAM, ConsumerConfig(durable_name=name, filter_subject=subject,
                                                 ack_policy=AckPolicy.EXPLICIT, ack_wait=30))
    requests: list[Msg] = []

    async def seen(msg: Msg) -> None:
        requests.append(msg)

    watch = await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{name}", cb=seen)
    await nc.flush()
    puller = await RawReads(nc).puller(js, STREAM, name)
    yield Pulling(nc, puller, requests, subject)
    await puller.close()
    await watch.unsubscribe()


async def test_a_trickle_is_read_through_one_open_request(pulling: Pulling) -> None:
    """Thirty messages one at a time, each fetched as it comes: a handful of requests, renewed
    only as time runs out on them (a request per fetch would be thirty or more)."""
    started = time.monotonic()
    for i in range(30):
        await pulling.publish(f"m{i}".encode())
        got = await pulling.puller.fetch(256, timeout=5)
        assert [m.data for m in got] == [f"m{i}".encode()]
        await got[0].ack()
    await pulling.nc.flush()
    elapsed = time.monotonic() - started
    lasts = natsraw.PULL_EXPIRES - natsraw.PULL_RENEW_BEFORE
    assert 1 <= len(pulling.requests) <= 2 + math.ceil(elapsed / lasts), (len(pulling.requests), elapsed)


async def test_what_arrives_after_a_fetch_returned_is_taken_by_the_next(pulling: Pulling) -> None:
    for i in range(5):
        await pulling.publish(f"m{i}".encode())
    first = await pulling.puller.fetch(2, timeout=5)
    assert [m.data for m in first] == [b"m0", b"m1"]
    rest: list[Msg] = []
    for _ in range(10):  # bounded: the other three are delivered already or on their way
        rest += await pulling.puller.fetch(256, timeout=5)
        if len(rest) >= 3:
            break
    assert [m.data for m in rest] == [b"m2", b"m3", b"m4"]


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
    assert len(pulling.requests) >= 2  # the first ran out and was followed
    await pulling.publish(b"late")
    got = await pulling.puller.fetch(256, timeout=5)
    assert [m.data for m in got] == [b"late"]


async def test_a_publishers_status_header_neither_hides_a_message_nor_ends_a_request(pulling: Pulling) -> None:
    for status in ("100", "404", "408", "409", "503"):
        await pulling.publish(status.encode(), headers={"Status": status, "Description": "forged"})
    got: list[Msg] = []
    for _ in range(10):
        got += await pulling.puller.fetch(256, timeout=5)
        if len(got) >= 5:
            break
    assert [m.data for m in got] == [b"100", b"404", b"408", b"409", b"503"]
    assert len(pulling.requests) == 1  # the one open request still stands


async def test_a_deleted_consumer_ends_its_request_and_a_new_one_is_served(pulling: Pulling, nc: NATS) -> None:
    js = nc.jetstream()
    assert await pulling.puller.fetch(256, timeout=0.1) == []  # a request is open
    name = pulling.requests[0].subject.rsplit(".", 1)[-1]
    [open_request] = [r.reply for r in pulling.puller._open]
    await js.delete_consumer(STREAM, name)
    for _ in range(5):  # the server says so at once (409); its time would run out only after 2.5 s
        assert await pulling.puller.fetch(256, timeout=0.2) == []
        if open_request not in [r.reply for r in pulling.puller._open]:
            break
    assert open_request not in [r.reply for r in pulling.puller._open]
    await js.add_consumer(STREAM, ConsumerConfig(durable_name=name, filter_subject=pulling.subject,
                                                 ack_policy=AckPolicy.EXPLICIT, ack_wait=30))
    await pulling.publish(b"after")
    got: list[Msg] = []
    for _ in range(10):  # bounded: the old request is ended by a 409 or, at worst, by its time
        got += await pulling.puller.fetch(256, timeout=1)
        if got:
            break
    assert [m.data for m in got] == [b"after"]
