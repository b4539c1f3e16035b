"""A hostile member's headers. Its publish through a service import reaches the network's streams
with whatever headers it chose; nats-py takes a *stored* message with a ``Status`` header for a
server status (fetch drops ``Status: 100`` as a heartbeat, a direct get of ``Status: 503`` raises
"no responders"). Found in review; the readers in ``broker.natsraw`` judge by what the server
sets (an ack reply subject, a ``Nats-Sequence`` header), never by the publisher's headers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from nats.aio.client import Client as NATS

from psvn import devnet
from psvn.broker import natsjwt
from psvn.broker.accounts import BackboneAccounts
from psvn.core.addresses import token
from psvn.gateway.server import GatewayServer
from psvn.protocol.subjects import CONSUMER, FEEDS_BUCKET, OPERATOR_JS_PREFIX, audit_subject, inbox_stream
from tests.conftest import Network
from tests.gateway.test_feeds import PURPOSE, TOPIC, event, wait_subscribers
from tests.gateway.test_service import call, referral, wait_status


async def hostile(network: Network, org: str) -> NATS:
    return await devnet.member_connect(network.layout, network.nats.url, org, name="hostile")


@pytest.fixture
async def gp_hostile(network: Network) -> AsyncIterator[NATS]:
    nc = await hostile(network, network.GP)
    yield nc
    await nc.close()


@pytest.fixture
async def council_hostile(network: Network) -> AsyncIterator[NATS]:
    nc = await hostile(network, network.COUNCIL)
    yield nc
    await nc.close()


@pytest.mark.timeout(180)
async def test_a_poisoned_feed_subscription_stops_neither_feeds_nor_gateways(network: Network,
                                                                             gp_hostile: NATS) -> None:
    """One write to the GP's own feed key, empty, with ``Status: 503``: publishing on the topic
    still reaches the trust, and a gateway still joins the backbone (its feed view reads it)."""
    code, sub = await call(network, network.TRUST, "PUT", f"/v1/subscriptions/{TOPIC}", {"purpose": PURPOSE})
    assert code in (200, 201), sub
    await wait_subscribers(network, network.COUNCIL, {network.TRUST})
    await gp_hostile.jetstream().publish(f"$KV.{FEEDS_BUCKET}.s.{token(network.GP)}.{TOPIC}", b"",
                                         headers={"Status": "503"})
    code, published = await call(network, network.COUNCIL, "POST", f"/v1/feeds/{TOPIC}", event())
    assert code == 202, published
    assert [d["to"] for d in published["deliveries"]] == [network.TRUST]
    old = network.gateways[network.TRUST]
    await old.stop()
    network.gateways[network.TRUST] = await asyncio.wait_for(GatewayServer(old.config).start(), 60)
    code, body = await call(network, network.TRUST, "GET", "/healthz")
    assert code == 200, body


@pytest.mark.timeout(180)
async def test_status_headers_cannot_hide_mail_from_the_recipient(network: Network, council_hostile: NATS) -> None:
    """Mail with ``Status: 100`` into the GP's inbox: its gateway sees every one (and quarantines
    the junk), so none stays pending for ever and the trust's mail is delivered."""
    junk = 300
    subject = f"psvn.msg.{token(network.GP)}.{token(network.COUNCIL)}"
    for _ in range(junk):
        await council_hostile.publish(subject, b"x", headers={"Status": "100"})
    await council_hostile.flush(timeout=30)
    await council_hostile.request(f"{OPERATOR_JS_PREFIX}.CONSUMER.MSG.NEXT.{inbox_stream(network.COUNCIL)}.{CONSUMER}",
                                  json.dumps({"batch": 1, "no_wait": True}).encode(), timeout=10)  # barrier
    code, body = await call(network, network.TRUST, "POST", "/v1/messages", referral(to=network.GP))
    assert code == 202, body
    await wait_status(network, network.TRUST, body["id"], "delivered", timeout=60)
    broker = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        info = None
        for _ in range(600):  # up to a minute: each junk message is retried, then quarantined
            info = await broker.jetstream().consumer_info(inbox_stream(network.GP), CONSUMER)
            if info.num_ack_pending == 0 and info.num_pending == 0:
                break
            await asyncio.sleep(0.1)
        assert info is not None and info.num_ack_pending == 0 and info.num_pending == 0, info
    finally:
        await broker.close()
    code, quarantined = await call(network, network.GP, "GET", "/v1/inbox?status=quarantined&limit=1000")
    assert code == 200 and len(quarantined["messages"]) == junk


async def test_a_members_audit_record_cannot_break_the_operators_audit_view(network: Network,
                                                                         council_hostile: NATS) -> None:
    from psvn.broker.console.storage import ConsoleStore

    await council_hostile.jetstream().publish(audit_subject(network.COUNCIL), b"{}", headers={"Status": "503"})
    code, sent = await call(network, network.TRUST, "POST", "/v1/messages", referral())
    assert code == 202, sent
    await wait_status(network, network.TRUST, sent["id"], "delivered")
    broker = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        store = ConsoleStore.__new__(ConsoleStore)  # only what recent_audit uses
        store.nc, store.js = broker, broker.jetstream()
        store.registry = SimpleNamespace(members={m.org: None for m in network.members})  # type: ignore[assignment]
        events = await store.recent_audit()
    finally:
        await broker.close()
    assert any(e.get("message_id") == sent["id"] and e["org"] == network.TRUST for e in events)
    assert any(e["org"] == network.COUNCIL for e in events)  # the poisoned stream is still read


def test_a_member_account_bounds_its_subscriptions(tmp_path: Path) -> None:
    limits = natsjwt.decode_claims(BackboneAccounts(tmp_path).member_jwt("ods:G81001"))["nats"]["limits"]
    assert 0 < limits["subs"] <= 100_000, limits
