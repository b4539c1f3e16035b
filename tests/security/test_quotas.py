"""Floods by a hostile member: its share of another's inbox, its own audit stream, its own
JetStream. Each is stopped at the member's own limit while every other member carries on."""

from __future__ import annotations

import asyncio
import os

import msgspec
import pytest
from nats.js.errors import APIError, BadRequestError

from psvn import devnet
from psvn.protocol.envelope import SendRequest
from psvn.protocol.subjects import audit_stream, audit_subject, inbox_stream, msg_subject, quarantine_stream
from tests.broker.test_backbone import _inject, wait_quarantined
from tests.conftest import Network
from tests.gateway.test_service import REFERRAL, call, referral, wait_status


async def subject_count(net: Network, stream: str, subject: str) -> int:
    nc = await devnet.broker_connect(net.layout, net.nats.url)
    try:
        info = await nc.jetstream().stream_info(stream, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))
    finally:
        await nc.close()


async def test_quarantined_junk_leaves_the_inbox_so_a_sender_cannot_fill_it(network: Network) -> None:
    """The council's share of the trust's inbox is 5 messages here. It sends junk (a message
    claiming to come from the GP): each is quarantined, moved to the trust's quarantine stream and
    deleted from the inbox, so its share is free again and its real mail still gets through."""
    broker = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        js = broker.jetstream()
        cfg = (await js.stream_info(inbox_stream(network.TRUST))).config
        cfg.max_msgs_per_subject = 5
        await js.update_stream(cfg)
    finally:
        await broker.close()
    junk = SendRequest(to=network.TRUST, type="fhir.r4.ServiceRequest", payload=REFERRAL, purpose="direct-care")
    sender_subject = msg_subject(network.TRUST, network.COUNCIL)
    for i in range(12):  # more than its share: each must have left the inbox before the next fits
        await _inject(network, network.COUNCIL, junk, claim_source=network.GP, msg_id=f"junk-{i}")
        q = await wait_quarantined(network, network.TRUST, f"junk-{i}")
        assert q["status"] == "quarantined"
    for _ in range(100):  # the last one's deletion follows its filing
        if await subject_count(network, inbox_stream(network.TRUST), sender_subject) == 0:
            break
        await asyncio.sleep(0.05)
    assert await subject_count(network, inbox_stream(network.TRUST), sender_subject) == 0
    assert await subject_count(network, quarantine_stream(network.TRUST),
                               f"psvn.quarantine.{network.TRUST.replace(':', '_')}") == 12
    status, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    assert status == 202, body
    await wait_status(network, network.COUNCIL, body["id"], "delivered")


async def test_a_member_flooding_its_audit_stream_fills_only_its_own(network: Network) -> None:
    broker = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        js = broker.jetstream()
        cfg = (await js.stream_info(audit_stream(network.COUNCIL))).config
        cfg.max_bytes = 256 * 1024  # its limit, made small so the test fills it quickly
        await js.update_stream(cfg)
    finally:
        await broker.close()
    hostile = await devnet.member_connect(network.layout, network.nats.url, network.COUNCIL, name="hostile")
    refused_at = None
    try:
        js = hostile.jetstream()
        record = msgspec.json.encode({"event": "junk", "pad": os.urandom(8 * 1024).hex()})
        for i in range(200):  # bounded: 200 x 16 KiB is far past its 256 KiB
            try:
                await js.publish(audit_subject(network.COUNCIL), record, timeout=3)
            except (APIError, BadRequestError):
                refused_at = i
                break
        # it cannot reach anyone else's audit stream at all
        with pytest.raises(Exception):  # noqa: B017 - no responder in its account: a refusal either way
            await js.publish(audit_subject(network.TRUST), record, timeout=2)
    finally:
        await hostile.close()
    assert refused_at is not None and refused_at < 200
    # everyone else carries on: the trust sends, and its audit records are stored
    status, body = await call(network, network.TRUST, "POST", "/v1/messages", referral(to=network.GP))
    assert status == 202, body
    await wait_status(network, network.TRUST, body["id"], "delivered")
    from tests.gateway.test_service import audit_records

    assert {r["event"] for r in await audit_records(network, {body["id"]}, at_least=1)} >= {"sent"}


async def test_a_members_own_jetstream_is_bounded_by_its_account(network: Network) -> None:
    """Its state bucket lives in its own account; the account's limits (streams, bytes) stop it
    from making more or bigger, and the network account is out of its reach."""
    hostile = await devnet.member_connect(network.layout, network.nats.url, network.COUNCIL, name="hostile")
    try:
        js = hostile.jetstream()
        with pytest.raises(APIError):  # more bytes than its whole account may hold
            await js.add_stream(name="HOARD", subjects=["hoard.>"], max_bytes=64 * 1024 ** 3)
        made = 0
        with pytest.raises(APIError):  # more streams than its account may have
            for i in range(10):
                await js.add_stream(name=f"S{i}", subjects=[f"s{i}.>"], max_bytes=1024 * 1024)
                made += 1
        assert made < 10
    finally:
        await hostile.close()
    status, _ = await call(network, network.TRUST, "POST", "/v1/messages", referral())
    assert status == 202


async def test_every_stream_of_the_network_has_a_byte_limit(network: Network) -> None:
    """What JetStream reserves for bounded streams cannot exceed the store: with every stream of
    the network account bounded, no write can fill the backbone for everyone."""
    broker = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        infos = await broker.jetstream().streams_info()
    finally:
        await broker.close()
    unbounded = [i.config.name for i in infos if not i.config.max_bytes or i.config.max_bytes < 0]
    assert infos and unbounded == []


async def test_one_sender_cannot_hold_more_than_its_share_of_an_inbox(network: Network) -> None:
    """The trust lets each sender hold 3 referrals' worth of unacknowledged mail: the council's
    fourth is refused (it is told `rejected`, rule sender-share) and leaves the inbox, the GP's mail
    still arrives, and once the trust acknowledges one, the council's next is delivered."""
    trust = network.gateways[network.TRUST].gateway
    size = len(msgspec.json.encode(REFERRAL))
    trust.config.gateway.sender_share_bytes = 3 * size + size // 2
    ids = []
    for _ in range(3):
        status, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
        assert status == 202, body
        await wait_status(network, network.COUNCIL, body["id"], "delivered")
        ids.append(body["id"])
    status, over = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    assert status == 202, over  # accepted by the council's gateway; the trust's refuses it
    refused = await wait_status(network, network.COUNCIL, over["id"], "rejected")
    assert "sender-share" in (refused.get("reason") or "") or "sender-share" in refused.get("rule_ids", [])
    assert await subject_count(network, inbox_stream(network.TRUST), msg_subject(network.TRUST, network.COUNCIL)) == 3
    status, body = await call(network, network.GP, "POST", "/v1/messages", referral())  # another sender
    assert status == 202
    await wait_status(network, network.GP, body["id"], "delivered")
    status, _ = await call(network, network.TRUST, "POST", f"/v1/inbox/{ids[0]}/ack")
    assert status == 200
    status, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    assert status == 202
    await wait_status(network, network.COUNCIL, body["id"], "delivered")
