"""A member that publishes a hybrid ML-KEM-768 + X25519 key receives post-quantum sealed mail."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from psvn import devnet
from psvn.certs.keys import hybrid_public_raw, load_hybrid_hpke_key
from psvn.protocol import seal
from psvn.protocol.subjects import inbox_stream
from tests.conftest import Network, network_where
from tests.gateway.test_service import REFERRAL, call, referral, wait_status


@pytest.fixture
async def pq_net(tmp_path: Path) -> AsyncIterator[Network]:
    async with network_where(tmp_path, "ods:RYR", post_quantum=True) as net:
        yield net


async def test_council_seals_post_quantum_to_the_trust(pq_net: Network) -> None:
    net = pq_net
    council = net.gateways[net.COUNCIL].gateway
    trust_entry = council.registry.lookup(net.TRUST)
    assert trust_entry.hpke_suite == seal.HYBRID_SUITE and len(trust_entry.hpke_key) == 1184 + 32
    key_file = net.layout.org_dir(net.TRUST) / "hpke-hybrid.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert hybrid_public_raw(*load_hybrid_hpke_key(key_file)) == trust_entry.hpke_key

    ids = []
    for _ in range(2):
        status, body = await call(net, net.COUNCIL, "POST", "/v1/messages", referral())
        assert status == 202
        await wait_status(net, net.COUNCIL, body["id"], "delivered")  # the receipt comes back classic
        _, item = await call(net, net.TRUST, "GET", f"/v1/inbox/{body['id']}")
        assert item["payload"] == REFERRAL
        ids.append(body["id"])

    nc = await devnet.broker_connect(net.layout, net.nats.url)
    try:
        raws = [await nc.jetstream().get_msg(inbox_stream(net.TRUST), seq=seq) for seq in (1, 2)]
    finally:
        await nc.close()
    wires = [msgspec.msgpack.decode(raw.data or b"", type=seal.Wire) for raw in raws]
    # what the backbone stores is post-quantum sealed: the data key under ML-KEM-768 + X25519
    # (its 1,088-byte ciphertext rides in the key), sealed once for both messages, each
    # message encrypted on its own
    assert {w.suite for w in wires} == {seal.HYBRID_SUITE} and {w.v for w in wires} == {2}
    assert wires[0].key == wires[1].key and len(wires[0].key) > 1088 and wires[0].nonce != wires[1].nonce
    assert {raw.header.get("Nats-Msg-Id") for raw in raws if raw.header} == set(ids)
