"""A network upgrades one gateway at a time: senders seal to each member in the wire version its
registry entry says its gateway opens (psvn.protocol.seal, psvn.protocol.members.Member.wire)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from psvn import devnet
from psvn.protocol import seal
from psvn.protocol.subjects import inbox_stream, msg_subject
from tests.conftest import Network, network_where
from tests.gateway.test_service import REFERRAL, call, referral, wait_status


@pytest.fixture
async def mixed_net(tmp_path: Path) -> AsyncIterator[Network]:
    """The trust's entry says its gateway opens version 1 only (not yet upgraded)."""
    async with network_where(tmp_path, "ods:RYR", wire=1) as net:
        yield net


async def test_each_member_gets_the_wire_version_its_entry_names(mixed_net: Network) -> None:
    net = mixed_net
    council = net.gateways[net.COUNCIL].gateway
    assert council.registry.lookup(net.TRUST).wire == 1 and council.registry.lookup(net.COUNCIL).wire == 2
    status, body = await call(net, net.COUNCIL, "POST", "/v1/messages", referral())
    assert status == 202
    await wait_status(net, net.COUNCIL, body["id"], "delivered")  # the receipt came back and opened
    _, item = await call(net, net.TRUST, "GET", f"/v1/inbox/{body['id']}")
    assert item["payload"] == REFERRAL
    nc = await devnet.broker_connect(net.layout, net.nats.url)
    try:
        to_trust = await nc.jetstream().get_last_msg(inbox_stream(net.TRUST), msg_subject(net.TRUST, net.COUNCIL))
    finally:
        await nc.close()
    assert msgspec.msgpack.decode(to_trust.data or b"", type=seal.Wire).v == 1  # HPKE over the message
    assert len(net.gateways[net.TRUST].gateway.member.opened_keys) == 0  # no data key to unseal
    # the trust's own gateway runs this code and the council's entry says 2: its receipt (gone
    # from the council's inbox once applied) came under a data key the council unsealed
    assert council.member.opened_keys.opened == 1
