"""The backbone itself refuses what is not a gateway, and gateways quarantine what they cannot trust.

Everything here runs against a real nats-server with real certificates.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import nats
import pytest
from nats.errors import NoServersError

from broker.subjects import inbox_stream, msg_subject
from certs import pki, tls
from gateway import core, seal
from psvn.envelope import SendRequest
from psvn.errors import Code, PsvnError
from tests.conftest import Network
from tests.gateway.test_service import REFERRAL, call, referral, wait_status


async def stream_count(net: Network, org: str) -> int:
    nc = await nats.connect(net.nats.url, tls=tls.client_context(net.ca, *net.layout.broker_cert))
    try:
        info = await nc.jetstream().stream_info(inbox_stream(org))
        return int(info.state.messages)
    finally:
        await nc.close()


async def wait_quarantined(net: Network, org: str, msg_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        _, body = await call(net, org, "GET", "/v1/inbox?status=quarantined")
        for m in body["messages"]:
            if m["id"] == msg_id:
                return m
        await asyncio.sleep(0.05)
    raise AssertionError(f"{msg_id} not quarantined at {org}")


async def test_a_system_certificate_cannot_join_the_backbone(network: Network) -> None:
    cert, key = network.system_cert(network.COUNCIL)
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    with pytest.raises(Exception) as err:
        await nats.connect(network.nats.url, tls=tls.client_context(network.ca, cert, key), allow_reconnect=False,
                           connect_timeout=3, error_cb=on_error)
    assert "Authorization Violation" in repr(err.value) + repr(errors)


async def test_a_certificate_from_another_ca_cannot_connect(network: Network, tmp_path: Any) -> None:
    other = pki.init_ca(tmp_path / "other-ca")
    files = pki.issue_gateway(other, network.COUNCIL, tmp_path / "other-gw")
    with pytest.raises((NoServersError, OSError, Exception)):
        await nats.connect(network.nats.url, tls=tls.client_context(network.ca, files.nats_cert, files.nats_key),
                           allow_reconnect=False, connect_timeout=3, max_reconnect_attempts=0)


async def test_a_gateway_cannot_publish_as_another_member(network: Network) -> None:
    """The council's own backbone connection tries to write into the trust's inbox as the GP."""
    gw = network.gateways[network.COUNCIL].gateway
    before = await stream_count(network, network.TRUST)
    assert gw.nc is not None
    await gw.nc.publish(msg_subject(network.TRUST, network.GP), b"forged")
    await gw.nc.flush()
    await asyncio.sleep(0.3)
    assert await stream_count(network, network.TRUST) == before


async def test_a_gateway_cannot_read_another_members_inbox(network: Network) -> None:
    gw = network.gateways[network.COUNCIL].gateway
    assert gw.js is not None
    sub = await gw.js.pull_subscribe_bind("gw", stream=inbox_stream(network.TRUST))
    try:
        with pytest.raises(Exception):  # noqa: B017 - permission violations surface as timeouts in nats-py
            await sub.fetch(1, timeout=1)
    finally:
        await sub.unsubscribe()


async def test_garbage_on_the_backbone_is_quarantined(network: Network) -> None:
    """Someone with raw backbone access (not a gateway) injects bytes into the trust's inbox."""
    nc = await nats.connect(network.nats.url, tls=tls.client_context(network.ca, *network.layout.broker_cert))
    try:
        await nc.jetstream().publish(msg_subject(network.TRUST, network.COUNCIL), b"\x93\x01\xa1x\xc4\x00",
                                     headers={"Nats-Msg-Id": "injected-1"})
    finally:
        await nc.close()
    q = await wait_quarantined(network, network.TRUST, "injected-1")
    assert q["status"] == "quarantined" and q["reason"].startswith("decrypt-failed")
    _, inbox = await call(network, network.TRUST, "GET", "/v1/inbox")
    assert inbox["messages"] == []
    status, problem = await call(network, network.TRUST, "GET", "/v1/inbox/injected-1")
    assert status == 403 and problem["rule"] == "quarantined"


async def _inject(network: Network, sender_org: str, req: SendRequest, *, signing_key: Any = None,
                  claim_source: str | None = None, msg_id: str = "forged-1") -> None:
    """Seal exactly like a gateway would, but skipping its egress checks, and publish it."""
    gw = network.gateways[sender_org].gateway
    recipient = gw.registry.lookup(network.TRUST)
    env = msgspec.structs.replace(
        core.build(req, source=claim_source or sender_org, source_system="x", policy_version=1,
                   datacontenttype="application/fhir+json", message_id=msg_id))
    data = seal.seal(seal.KIND_MESSAGE, msgspec.json.encode(env), msgspec.json.encode(req.payload),
                     signing_key=signing_key or gw.signing_key, recipient_key=pki.x25519_public(recipient.hpke_key),
                     info=seal.info_for(sender_org, network.TRUST, msg_id))
    assert gw.js is not None
    await gw.js.publish(msg_subject(network.TRUST, sender_org), data, headers={"Nats-Msg-Id": msg_id})


async def test_forged_signature_is_quarantined(network: Network) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    req = msgspec.convert(referral(), SendRequest)
    await _inject(network, network.COUNCIL, req, signing_key=Ed25519PrivateKey.generate(), msg_id="forged-sig")
    q = await wait_quarantined(network, network.TRUST, "forged-sig")
    assert q["reason"].startswith("signature-invalid") and q["rule"] == "ed25519-signature"


async def test_envelope_claiming_another_source_is_quarantined(network: Network) -> None:
    req = msgspec.convert(referral(), SendRequest)
    await _inject(network, network.COUNCIL, req, claim_source=network.GP, msg_id="wrong-source")
    q = await wait_quarantined(network, network.TRUST, "wrong-source")
    assert q["reason"].startswith("sender-mismatch") and q["rule"] == "source-binding"


async def test_sender_that_skips_egress_policy_is_stopped_at_ingress(network: Network) -> None:
    """A tampered council gateway sends what the policy forbids; the trust's gateway refuses it."""
    req = msgspec.convert(referral(purpose="marketing"), SendRequest)
    with pytest.raises(PsvnError):  # the honest path refuses it at egress
        core.prepare_send(req, me=network.gateways[network.COUNCIL].gateway.identity, system="x",
                          snap=network.gateways[network.COUNCIL].gateway.snapshot,
                          registry=network.gateways[network.COUNCIL].gateway.registry, message_id="m")
    await _inject(network, network.COUNCIL, req, msg_id="skipped-egress")
    q = await wait_quarantined(network, network.TRUST, "skipped-egress")
    assert q["reason"].startswith("policy-denied: ingress") and q["rule"]


async def test_invalid_payload_at_ingress_is_quarantined_and_sender_told(network: Network) -> None:
    council = network.gateways[network.COUNCIL].gateway
    req = msgspec.convert(referral(payload={**REFERRAL, "status": None}), SendRequest)
    # record it as sent so the rejected receipt has somewhere to land
    status, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    assert status == 202
    await _inject(network, network.COUNCIL, req, msg_id="bad-payload")
    q = await wait_quarantined(network, network.TRUST, "bad-payload")
    assert q["reason"].startswith("invalid-payload")
    assert council.store.out.get("bad-payload") is None  # never went through the honest path
    await wait_status(network, network.COUNCIL, body["id"], "delivered")
    assert Code.INVALID_PAYLOAD.value in q["reason"]


async def test_a_full_inbox_refuses_new_mail_instead_of_dropping_old(network: Network) -> None:
    """Per-sender quota on the trust's inbox: past it the sender is told, nothing is discarded."""
    from broker import provision
    from psvn.devnet import broker_tls

    nc = await nats.connect(network.nats.url, tls=broker_tls(network.layout))
    try:
        js = nc.jetstream()
        info = await js.stream_info(inbox_stream(network.TRUST))
        cfg = info.config
        assert str(getattr(cfg.discard, "value", cfg.discard)) == "new" and cfg.discard_new_per_subject
        assert cfg.max_msgs_per_subject == provision.PER_SENDER_MAX_MSGS and cfg.max_bytes == provision.INBOX_MAX_BYTES
        cfg.max_msgs_per_subject = 1
        await js.update_stream(cfg)
    finally:
        await nc.close()
    first = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    assert first[0] == 202
    second = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    assert (second[0], second[1]["code"]) == (503, "backbone-unavailable")
    third = await call(network, network.GP, "POST", "/v1/messages", referral())  # another sender is unaffected
    assert third[0] == 202
    await wait_status(network, network.COUNCIL, first[1]["id"], "delivered")
