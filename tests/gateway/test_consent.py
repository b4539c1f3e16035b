"""A citizen's opt-out, sent by their personal data store, takes effect at every gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from certs import tls
from gateway.consent import SignedConsent, key_for, sign_record
from policies.consent import ConsentChange
from psvn.devnet import EXAMPLE_MEMBERS, OPERATOR_MEMBER, PDS_MEMBER
from tests.conftest import Network, start_network, stop_network
from tests.gateway.test_service import REFERRAL, call, wait_status

PDS = PDS_MEMBER.org
OPERATOR = OPERATOR_MEMBER.org
SUBJECT = "nhs:9434765919"


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Network]:
    n = await start_network(tmp_path, [*EXAMPLE_MEMBERS, OPERATOR_MEMBER, PDS_MEMBER])
    try:
        yield n
    finally:
        await stop_network(n)


def research(subject: str = SUBJECT, purpose: str = "research-consented") -> dict[str, Any]:
    return {"to": "ods:RYR/research", "type": "fhir.r4.ServiceRequest", "purpose": purpose,
            "classification": "OFFICIAL-SENSITIVE", "subject": subject, "payload": REFERRAL}


def opt_out(seq: int, purposes: list[str]) -> dict[str, Any]:
    return {"to": OPERATOR, "type": "psvn.consent-change", "purpose": "consent-management",
            "payload": {"subject": SUBJECT, "seq": seq, "opt_outs": purposes,
                        "effective": "2026-11-25T10:00:00Z"}}


async def wait_everywhere(net: Network, check: Any) -> None:
    for _ in range(400):
        if all(check(gw.gateway.consent.consent) for gw in net.gateways.values()):
            return
        await asyncio.sleep(0.025)
    raise AssertionError("not every gateway saw the consent change")


async def test_opt_out_blocks_research_network_wide(net: Network) -> None:
    status, body = await call(net, net.GP, "POST", "/v1/messages", research())
    assert status == 202, body

    status, sent = await call(net, PDS, "POST", "/v1/messages", opt_out(1, ["research-consented"]))
    assert status == 202, sent
    await wait_everywhere(net, lambda c: c.blocks(SUBJECT, "research-consented") is not None)
    await wait_status(net, PDS, sent["id"], "acknowledged")  # the operator recorded it

    status, problem = await call(net, net.GP, "POST", "/v1/messages", research())
    assert (status, problem["code"]) == (403, "policy-denied")
    assert "consent-honour-opt-out" in problem["rule_ids"], problem
    # someone else is unaffected
    status, _ = await call(net, net.GP, "POST", "/v1/messages", research(subject="nhs:9000000009"))
    assert status == 202
    # the citizen changes their mind: a newer change restores consent, a stale one is ignored
    await call(net, PDS, "POST", "/v1/messages", opt_out(3, []))
    await wait_everywhere(net, lambda c: c.blocks(SUBJECT, "research-consented") is None)
    status, stale = await call(net, PDS, "POST", "/v1/messages", opt_out(2, ["research-consented"]))
    assert status == 202
    await wait_status(net, PDS, stale["id"], "acknowledged")
    status, _ = await call(net, net.GP, "POST", "/v1/messages", research())
    assert status == 202


async def test_only_a_pds_can_change_consent(net: Network) -> None:
    status, problem = await call(net, net.COUNCIL, "POST", "/v1/messages", opt_out(1, ["*"]))
    assert (status, problem["code"]) == (403, "policy-denied")


async def test_forged_consent_record_is_refused(net: Network) -> None:
    """Someone with raw backbone access writes a consent record they signed themselves."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    change = ConsentChange(subject=SUBJECT, seq=9, opt_outs=["*"], effective="2026-11-25T10:00:00Z")
    forged = sign_record(change.to_payload(), issuer=PDS, message_id="x", operator=OPERATOR,
                         key=Ed25519PrivateKey.generate())
    nc = await nats.connect(net.nats.url, tls=tls.client_context(net.ca, *net.layout.broker_cert))
    try:
        kv = await nc.jetstream().key_value("psvn_consent")
        await kv.put(key_for(SUBJECT), msgspec.msgpack.encode(forged))
    finally:
        await nc.close()
    for _ in range(200):
        if all(gw.gateway.consent.refused for gw in net.gateways.values()):
            break
        await asyncio.sleep(0.025)
    for gw in net.gateways.values():
        assert gw.gateway.consent.refused and "signature" in gw.gateway.consent.refused[-1][1]
        assert gw.gateway.consent.consent.get(SUBJECT) is None
    assert isinstance(forged, SignedConsent)


async def test_a_gateway_other_than_the_operator_cannot_write_consent(net: Network) -> None:
    from nats.js.errors import KeyNotFoundError

    from tests.broker.test_backbone import MemberConnection

    council = await MemberConnection.open(net, net.COUNCIL)  # the council gateway's own NATS user
    try:
        assert council.nc is not None
        await council.nc.publish("$KV.psvn_consent." + key_for(SUBJECT), b"junk")
        await council.violation("$KV.psvn_consent." + key_for(SUBJECT))  # the server dropped the write
    finally:
        await council.close()
    nc = await nats.connect(net.nats.url, tls=tls.client_context(net.ca, *net.layout.broker_cert))
    try:
        with pytest.raises(KeyNotFoundError):
            await (await nc.jetstream().key_value("psvn_consent")).get(key_for(SUBJECT))
    finally:
        await nc.close()
    assert all(gw.gateway.consent.consent.get(SUBJECT) is None and not gw.gateway.consent.refused
               for gw in net.gateways.values())
