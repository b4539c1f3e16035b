"""The SDK's paging iterators and receive loops against real gateways (the ``network`` fixture),
and its exceptions as the ecosystem expects them (subclasses of the builtins they resemble)."""

from __future__ import annotations

import asyncio
import builtins
import pickle
import warnings
from typing import Any

import psvn_client
import pytest
from psvn_client import AsyncInboundMessage, InboundMessage, Page

from tests.clients.test_client import REFERRAL, SERVICE_REQUEST, aclient, client
from tests.conftest import Network, read_mostly


async def deliver(net: Network, n: int, *, tag: str = "r") -> list[str]:
    """n referrals council -> trust, each delivered; ids in the order sent."""
    async with aclient(net, net.COUNCIL) as council:
        results = await council.send_many(
            psvn_client.Message(to=net.TRUST, type=SERVICE_REQUEST, payload=REFERRAL, purpose="direct-care",
                                local_id=f"{tag}{i}") for i in range(n))
        ids = [r.unwrap().id for r in results]
        for i in ids:
            await council.wait_for_status(i, "delivered", timeout=15)
    return ids


async def arrival_order(net: Network) -> list[str]:
    return [r.id for r in await net.gateways[net.TRUST].gateway.inbox(limit=1000)]


async def test_iter_inbox_goes_past_one_page_sync_and_async(network: Network) -> None:
    await deliver(network, 7)
    arrived = await arrival_order(network)
    async with aclient(network, network.TRUST) as trust:
        assert [m.id async for m in trust.iter_inbox(page_size=3)] == arrived
        page = await trust.inbox_page(limit=5)
        assert isinstance(page, Page) and len(page) == 5 and page.more and page.next
        rest = await trust.inbox_page(limit=5, cursor=page.next)
        assert [m.id for m in (*page, *rest)] == arrived and not rest.more
        assert [m.id for m in await trust.inbox(limit=2)] == arrived[:2]

    def sync() -> list[str]:
        with client(network, network.TRUST) as trust:
            return [m.id for m in trust.iter_inbox(page_size=2)]

    assert await asyncio.to_thread(sync) == arrived


async def test_iter_statuses_lists_every_send_sync_and_async_and_follows_changes(network: Network) -> None:
    """What the council sent, through the SDK: every message once, a page at a time; the last
    page's ``next`` then yields only what changed since (here: one acknowledged)."""
    ids = await deliver(network, 5)
    async with aclient(network, network.COUNCIL) as council, aclient(network, network.TRUST) as trust:
        listed = [m async for m in council.iter_statuses(page_size=2)]
        assert sorted(m.id for m in listed) == sorted(ids) and {m.status for m in listed} == {"delivered"}
        first = await council.statuses_page(limit=3)
        assert isinstance(first, Page) and len(first) == 3 and first.more and first.next
        rest = await council.statuses_page(limit=3, cursor=first.next)
        assert not rest.more and sorted(m.id for m in (*first, *rest)) == sorted(ids)
        await trust.ack(ids[2])
        await council.wait_for_status(ids[2], "acknowledged", timeout=15)
        changed = await council.statuses_page(limit=3, cursor=rest.next)
        assert [(m.id, m.status) for m in changed] == [(ids[2], "acknowledged")]
        assert [m.id async for m in council.iter_statuses(status="acknowledged")] == [ids[2]]

    def sync() -> list[str]:
        with client(network, network.COUNCIL) as council:
            return sorted(m.id for m in council.iter_statuses(page_size=2))

    assert await asyncio.to_thread(sync) == sorted(ids)


@read_mostly
async def test_a_bad_cursor_raises_a_validation_error_naming_it(shared_network: Network) -> None:
    async with aclient(shared_network, shared_network.TRUST) as trust:
        with pytest.raises(psvn_client.ValidationError) as bad:
            await trust.inbox_page(cursor="not-a-cursor")
    assert (bad.value.status, bad.value.field, bad.value.rule) == (400, "cursor", "cursor")
    async with aclient(shared_network, shared_network.TRUST) as trust:
        with pytest.raises(ValueError, match="limit"):
            await trust.inbox_page(limit=0)


async def test_async_receive_acknowledges_only_what_the_caller_accepts(network: Network) -> None:
    ids = await deliver(network, 4)
    async with aclient(network, network.TRUST) as trust:
        got: list[str] = []
        async for msg in trust.receive(idle_timeout=0.5, poll_interval=0.1, page_size=2):
            assert isinstance(msg, AsyncInboundMessage) and msg.payload == REFERRAL
            assert msg.sender == network.COUNCIL and msg.envelope.sender_system == "adult-social-care"
            got.append(msg.id)
            if msg.envelope.local_id in ("r1", "r3"):
                continue  # not accepted: left unacknowledged
            assert (await msg.ack()).status == "acknowledged"
        assert sorted(got) == sorted(ids)  # each offered once by this loop, then it went idle
        waiting = {m.id for m in await trust.inbox()}
        assert waiting == {i for i in ids if i in (ids[1], ids[3])}
        # a new loop offers what the last one left; raising out of the loop leaves it too
        with pytest.raises(RuntimeError):
            async for _msg in trust.receive(idle_timeout=0.5, poll_interval=0.1):
                raise RuntimeError("cannot store it now")
        assert {m.id for m in await trust.inbox()} == waiting
        again = [m async for m in trust.receive(max_messages=2, idle_timeout=5, poll_interval=0.1)]
        assert {m.id for m in again} == waiting
    async with aclient(network, network.COUNCIL) as council:
        assert (await council.status(ids[0])).status == "acknowledged"
        assert (await council.status(ids[1])).status == "delivered"


async def test_async_receive_waits_for_mail_that_arrives_later(network: Network) -> None:
    async with aclient(network, network.TRUST) as trust:
        async def first() -> AsyncInboundMessage:
            async for msg in trust.receive(poll_interval=0.1, idle_timeout=20):
                await msg.ack()
                return msg
            raise AssertionError("the loop ended without a message")

        waiting = asyncio.create_task(first())
        await asyncio.sleep(0.5)
        assert not waiting.done()
        [sent] = await deliver(network, 1)
        msg = await asyncio.wait_for(waiting, 20)
        assert msg.id == sent and msg.status == "delivered"


async def test_sync_receive_loop(network: Network) -> None:
    ids = await deliver(network, 3)

    def run() -> tuple[list[str], list[str]]:
        with client(network, network.TRUST) as trust:
            taken: list[str] = []
            for msg in trust.receive(idle_timeout=0.5, poll_interval=0.1):
                assert isinstance(msg, InboundMessage)
                if msg.envelope.local_id == "r0":
                    continue
                msg.ack()
                taken.append(msg.id)
            return taken, [m.id for m in trust.inbox()]

    taken, left = await asyncio.to_thread(run)
    assert sorted(taken) == sorted(ids[1:]) and left == [ids[0]]


@read_mostly
async def test_receive_rejects_bad_options(shared_network: Network) -> None:
    async with aclient(shared_network, shared_network.TRUST) as trust:
        for kw in ({"max_messages": 0}, {"idle_timeout": -1}, {"poll_interval": 0}, {"page_size": 0}):
            with pytest.raises(ValueError):
                async for _ in trust.receive(**kw):
                    pass


async def test_subscriptions_are_all_listed_across_pages(network: Network) -> None:
    async with aclient(network, network.TRUST) as trust:
        await trust.subscribe("sensors.brighton.air", purpose="environmental-monitoring")
        page = await trust.subscriptions_page(limit=1)
        assert [s.topic for s in page] == ["sensors.brighton.air"] and page.more
        assert (await trust.subscriptions_page(limit=1, cursor=page.next)).items == ()
        assert [s.topic for s in await trust.subscriptions()] == ["sensors.brighton.air"]
        assert [s.topic async for s in trust.iter_subscriptions(page_size=1)] == ["sensors.brighton.air"]


# -- exceptions and names -----------------------------------------------------------------------
def test_sdk_errors_subclass_the_builtins_they_resemble() -> None:
    assert issubclass(psvn_client.ConnectionError, builtins.ConnectionError)
    assert issubclass(psvn_client.TimeoutError, builtins.TimeoutError)
    assert issubclass(psvn_client.TimeoutError, asyncio.TimeoutError)
    assert issubclass(psvn_client.RequestTimeout, builtins.TimeoutError)
    assert issubclass(psvn_client.RequestTimeout, psvn_client.ConnectionError)
    for cls in (psvn_client.ConnectionError, psvn_client.TimeoutError, psvn_client.RequestTimeout):
        assert issubclass(cls, psvn_client.PsvnError)
        err = cls("timeout", "no answer", message_id="m-1")
        assert str(err) == "[timeout]: no answer (message_id=m-1)"
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls and back.message_id == "m-1" and str(back) == str(err)


async def test_nothing_listening_is_caught_by_the_builtin_connection_error() -> None:
    from psvn.core.procs import free_port

    port = free_port()
    async with psvn_client.AsyncClient(f"http://127.0.0.1:{port}", retries=0) as c:
        with pytest.raises(builtins.ConnectionError) as caught:
            await c.health()
    assert isinstance(caught.value, psvn_client.ConnectionError) and caught.value.code == "connection-failed"


async def test_wait_for_status_timeout_is_a_builtin_timeout(network: Network) -> None:
    async with aclient(network, network.COUNCIL) as council:
        sent = await council.send(network.TRUST, SERVICE_REQUEST, REFERRAL, purpose="direct-care")
        with pytest.raises(TimeoutError) as caught:  # the builtin name
            await council.wait_for_status(sent.id, "acknowledged", timeout=0.3)
    assert isinstance(caught.value, psvn_client.TimeoutError)
    assert caught.value.message_status is not None and caught.value.message_status.id == sent.id


async def test_the_sender_is_called_sender_and_source_is_a_deprecated_alias(network: Network) -> None:
    [sent] = await deliver(network, 1)
    async with aclient(network, network.TRUST) as trust:
        [item] = await trust.inbox()
        msg = await trust.get(sent)
    assert item.sender == msg.sender == msg.envelope.sender == network.COUNCIL
    assert msg.envelope.sender_system == "adult-social-care"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert msg.envelope.source == network.COUNCIL
        assert msg.envelope.source_system == "adult-social-care"
    assert [w.category for w in caught] == [DeprecationWarning, DeprecationWarning]
    assert "sender" in str(caught[0].message)


def test_options_are_keyword_only() -> None:
    import inspect

    for cls in (psvn_client.Client, psvn_client.AsyncClient):
        for name in ("inbox", "inbox_page", "iter_inbox", "receive", "subscriptions_page", "iter_subscriptions"):
            params = list(inspect.signature(getattr(cls, name)).parameters.values())[1:]
            assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), (cls, name)
        send: Any = inspect.signature(cls.send).parameters
        assert [n for n, p in send.items() if p.kind is not inspect.Parameter.KEYWORD_ONLY] == [
            "self", "to", "type", "payload"]
