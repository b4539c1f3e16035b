"""The backbone itself refuses what is not a gateway, and gateways quarantine what they cannot trust.

Everything here runs against a real nats-server with real certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from psvn import devnet
from psvn.certs import tls
from psvn.certs.ca import init_ca, issue_gateway
from psvn.certs.keys import x25519_public
from psvn.core.errors import Code, PsvnError
from psvn.gateway import core
from psvn.gateway.server import GatewayServer
from psvn.policies.validation import PayloadValidator, Violation
from psvn.protocol import seal
from psvn.protocol.envelope import SendRequest
from psvn.protocol.subjects import CONSUMER, OPERATOR_JS_PREFIX, inbox_prefix, inbox_stream, msg_subject
from tests.conftest import Network
from tests.gateway.test_service import REFERRAL, call, referral, wait_status


async def stream_count(net: Network, org: str) -> int:
    nc = await devnet.broker_connect(net.layout, net.nats.url)
    try:
        info = await nc.jetstream().stream_info(inbox_stream(org))
        return int(info.state.messages)
    finally:
        await nc.close()


async def settled(net: Network, org: str, timeout: float = 10.0) -> None:
    """Wait until the member's gateway has taken in everything its inbox holds: the inbox
    consumer has nothing left to deliver and nothing delivered unacknowledged (a condition, not a
    sleep: what a test then finds missing or doubled, it would not find later either)."""
    from psvn.protocol.subjects import CONSUMER

    nc = await devnet.broker_connect(net.layout, net.nats.url)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            info = await nc.jetstream().consumer_info(inbox_stream(org), CONSUMER)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{org}'s gateway did not take in its inbox: {info}")
            await asyncio.sleep(0.02)
    finally:
        await nc.close()


async def wait_quarantined(net: Network, org: str, msg_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:  # every poll on the test's keep-alive client
        _, body = await call(net, org, "GET", "/v1/inbox?status=quarantined")
        for m in body["messages"]:
            if m["id"] == msg_id:
                return m
        await asyncio.sleep(0.05)
    raise AssertionError(f"{msg_id} not quarantined at {org}")


class MemberConnection:
    """A backbone connection with a member gateway's own certificate and backbone user (so the
    same account as its gateway), recording what the server reports through ``error_cb``."""

    def __init__(self) -> None:
        self.nc: NATS | None = None
        self.errors: list[Exception] = []
        self._changed = asyncio.Event()

    @classmethod
    async def open(cls, net: Network, org: str) -> MemberConnection:
        conn = cls()
        d = net.layout.org_dir(org)

        async def on_error(exc: Exception) -> None:
            conn.errors.append(exc)
            conn._changed.set()

        conn.nc = await nats.connect(net.nats.url, tls=tls.client_context(net.ca, d / "nats.crt", d / "nats.key"),
                                     user_credentials=str(net.layout.nats_creds(org)),
                                     inbox_prefix=inbox_prefix(org).encode(), error_cb=on_error,
                                     allow_reconnect=False, name=f"test as {org}")
        return conn

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


class SkipValidation(PayloadValidator):
    """A tampered gateway's validator: accepts every payload."""

    def validate(self, type_: str, body: bytes, *, content_type: str | None = None) -> list[Violation]:
        return []

    def check(self, type_: str, body: bytes, *, content_type: str | None = None) -> Any:
        """What the gateway calls: no violations (and, for an invalid payload, no data subjects)."""
        return msgspec.structs.replace(super().check(type_, body, content_type=content_type), violations=[])


@contextlib.contextmanager
def skipping_egress_validation(server: GatewayServer) -> Iterator[None]:
    """The gateway's own send path (seal, publish, outbox status) with payload validation bypassed,
    as a tampered or buggy sender would do; everything else (envelope, policy) still applies."""
    holder = server.gateway.policy
    snap = holder.snapshot
    assert snap is not None
    holder.snapshot = dataclasses.replace(snap, validator=SkipValidation(snap.catalogue, snap.validator.schemas))
    try:
        yield
    finally:
        holder.snapshot = snap


async def assert_refused_in_tls_handshake(net: Network, cert: Path, key: Path, server_reason: str) -> None:
    """The client learns only that the server hung up (TLS 1.3: its alert, a reset, or an EOF right
    after the client's half of the handshake); the server's log names the reason, once per attempt."""
    log = net.nats.log_path
    line = f"TLS handshake error: {server_reason}"
    before = log.read_text().count(line)
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    try:
        nc = await nats.connect(net.nats.url, tls=tls.client_context(net.ca, cert, key), allow_reconnect=False,
                                connect_timeout=3, max_reconnect_attempts=0, error_cb=on_error)
    except ssl.SSLError as exc:
        assert exc.reason == "TLSV1_ALERT_UNKNOWN_CA", exc
    except ConnectionResetError:
        pass
    else:  # the client's half of the handshake finished first; the server then hung up on it
        try:
            assert not nc.is_connected, errors
        finally:
            await nc.close()
    deadline = asyncio.get_running_loop().time() + 10
    while log.read_text().count(line) != before + 1:
        assert asyncio.get_running_loop().time() < deadline, f"{line!r} not logged: {log.read_text()[-1000:]}"
        await asyncio.sleep(0.05)


async def test_a_certificate_without_a_backbone_user_cannot_join(network: Network) -> None:
    """A certificate from the network CA is not enough: a local system's certificate, and a
    gateway's own, are refused without a user JWT of a member account (its ``.creds``)."""
    for cert, key in (network.system_cert(network.COUNCIL),
                      (network.layout.org_dir(network.COUNCIL) / "nats.crt",
                       network.layout.org_dir(network.COUNCIL) / "nats.key")):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(network.nats.url, tls=tls.client_context(network.ca, cert, key), allow_reconnect=False,
                               connect_timeout=3, max_reconnect_attempts=0)


async def test_a_certificate_from_another_ca_cannot_connect(network: Network, tmp_path: Path) -> None:
    other = init_ca(tmp_path / "other-ca")
    files = issue_gateway(other, network.COUNCIL, tmp_path / "other-gw")
    await assert_refused_in_tls_handshake(network, files.nats_cert, files.nats_key,
                                          "tls: failed to verify certificate: x509: certificate signed by "
                                          "unknown authority")


async def test_a_gateway_cannot_publish_as_another_member(network: Network) -> None:
    """With the council gateway's backbone user, a write into the trust's inbox as the GP reaches
    nothing (the council's account imports only its own sender token); the same connection's write
    as itself lands (so the count would have seen it)."""
    before = await stream_count(network, network.TRUST)
    council = await MemberConnection.open(network, network.COUNCIL)
    try:
        assert council.nc is not None
        forged = msg_subject(network.TRUST, network.GP)
        with pytest.raises(nats.js.errors.NoStreamResponseError):  # no responder in its account
            await council.nc.jetstream().publish(forged, b"forged")
        # published after the forged one on the same connection: once it is stored, the server
        # has long dealt with the forged one
        ack = await council.nc.jetstream().publish(msg_subject(network.TRUST, network.COUNCIL), b"as itself",
                                                   headers={"Nats-Msg-Id": "as-itself"})
        assert ack.stream == inbox_stream(network.TRUST)
    finally:
        await council.close()
    assert await stream_count(network, network.TRUST) == before + 1


async def test_a_gateway_cannot_read_another_members_inbox(network: Network) -> None:
    """A message waits, unread, on the trust's consumer: the council's credentials cannot fetch it
    (neither its own JetStream nor its imports of the network's have it); the broker's can."""
    trust = network.gateways.pop(network.TRUST)
    await trust.stop()  # nobody takes the message off the trust's consumer
    status, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    assert status == 202, body
    await wait_status(network, network.COUNCIL, body["id"], "sent")

    council = await MemberConnection.open(network, network.COUNCIL)
    try:
        assert council.nc is not None
        for js in (council.nc.jetstream(), council.nc.jetstream(prefix=OPERATOR_JS_PREFIX)):
            sub = await js.pull_subscribe_bind(CONSUMER, stream=inbox_stream(network.TRUST))
            with pytest.raises((nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError)):
                await sub.fetch(1, timeout=1)
    finally:
        await council.close()

    broker = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        sub = await broker.jetstream().pull_subscribe_bind(CONSUMER, stream=inbox_stream(network.TRUST))
        msgs = await sub.fetch(1, timeout=5)
        assert [(m.subject, (m.headers or {}).get("Nats-Msg-Id")) for m in msgs] == \
            [(msg_subject(network.TRUST, network.COUNCIL), body["id"])]
        await msgs[0].nak()
    finally:
        await broker.close()


async def test_garbage_on_the_backbone_is_quarantined(network: Network) -> None:
    """Someone with raw backbone access (not a gateway) injects bytes into the trust's inbox."""
    nc = await devnet.broker_connect(network.layout, network.nats.url)
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
                     signing_key=signing_key or gw.signing_key, recipient_key=x25519_public(recipient.hpke_key),
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


async def test_a_hostile_member_cannot_use_another_senders_sealed_data_key(network: Network) -> None:
    """The GP's gateway takes the sealed data key out of a message the council sent the trust
    (as the backbone operator could read it) and publishes, under its own sender subject, a
    message carrying that key, and then the council's whole message under a new id: the trust
    opens neither (the data key is bound to its sender, each message to its sender and id), and
    quarantines both."""
    status, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    assert status == 202
    await wait_status(network, network.COUNCIL, body["id"], "delivered")
    nc = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        stored = await nc.jetstream().get_last_msg(inbox_stream(network.TRUST),
                                                   msg_subject(network.TRUST, network.COUNCIL))
    finally:
        await nc.close()
    genuine = msgspec.msgpack.decode(stored.data or b"", type=seal.Wire)
    assert genuine.v == 2 and genuine.key
    gp = network.gateways[network.GP].gateway
    recipient = gp.registry.lookup(network.TRUST)
    req = msgspec.convert(referral(), SendRequest)
    env = core.build(req, source=network.GP, source_system="x", policy_version=1,
                     datacontenttype="application/fhir+json", message_id="copied-key")
    own = msgspec.msgpack.decode(seal.seal(
        seal.KIND_MESSAGE, msgspec.json.encode(env), msgspec.json.encode(req.payload), signing_key=gp.signing_key,
        recipient_key=x25519_public(recipient.hpke_key), info=seal.info_for(network.GP, network.TRUST, "copied-key")),
        type=seal.Wire)
    forged = msgspec.msgpack.encode(seal.Wire(v=2, suite=own.suite, ct=own.ct, key=genuine.key, nonce=own.nonce))
    assert gp.js is not None
    await gp.js.publish(msg_subject(network.TRUST, network.GP), forged, headers={"Nats-Msg-Id": "copied-key"})
    await gp.js.publish(msg_subject(network.TRUST, network.GP), stored.data or b"",
                        headers={"Nats-Msg-Id": "copied-message"})
    for msg_id in ("copied-key", "copied-message"):
        q = await wait_quarantined(network, network.TRUST, msg_id)
        assert q["reason"].startswith("decrypt-failed") and q["rule"] == "hpke-open", q
    _, inbox = await call(network, network.TRUST, "GET", "/v1/inbox")
    assert [m["id"] for m in inbox["messages"]] == [body["id"]]  # the genuine one only


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
    """The council's gateway skips payload validation; the trust's quarantines the referral with the
    validator's rule and path, and its signed rejected receipt moves the council's status."""
    payload = {**REFERRAL, "status": None}
    snap = network.gateways[network.TRUST].gateway.snapshot
    first = snap.validator.validate("fhir.r4.ServiceRequest", msgspec.json.encode(payload))[0]
    with skipping_egress_validation(network.gateways[network.COUNCIL]):
        status, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(payload=payload))
    assert status == 202, body  # the tampered sender let it out
    q = await wait_quarantined(network, network.TRUST, body["id"])
    assert q["reason"].startswith(Code.INVALID_PAYLOAD.value + ": ") and q["rule"] == first.rule
    assert q["reason"].endswith(f"first at {first.path} [{first.rule}]") and first.message not in q["reason"]
    final = await wait_status(network, network.COUNCIL, body["id"], "rejected")
    assert [h["status"] for h in final["history"]] == ["accepted", "sent", "rejected"]
    assert final["reason"] == q["reason"] and final["rule_ids"] == [first.rule]


async def test_a_full_inbox_refuses_new_mail_instead_of_dropping_old(network: Network) -> None:
    """Per-sender quota on the trust's inbox: past it the sender is told, nothing is discarded."""
    from psvn.broker import provision

    nc = await devnet.broker_connect(network.layout, network.nats.url)
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
    link = network.gateways[network.COUNCIL].gateway.link
    assert link.ops is not None
    real_publish, tries = link.ops.publish, []

    async def counted(subject: str, data: bytes, **kw: Any) -> Any:
        tries.append(subject)
        return await real_publish(subject, data, **kw)

    link.ops.publish = counted  # type: ignore[method-assign,assignment]
    second = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    link.ops.publish = real_publish  # type: ignore[method-assign]
    assert (second[0], second[1]["code"], second[1]["rule"]) == (503, "backbone-unavailable", "recipient-inbox-full")
    assert "inbox" in second[1]["detail"] and second[1]["message_id"]
    # tried once: a full inbox is not a leader election to ride out (it was retried for 8 s)
    assert len([t for t in tries if t.startswith("psvn.msg.")]) == 1, tries
    third = await call(network, network.GP, "POST", "/v1/messages", referral())  # another sender is unaffected
    assert third[0] == 202
    await wait_status(network, network.COUNCIL, first[1]["id"], "delivered")
