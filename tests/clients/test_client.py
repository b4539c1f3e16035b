"""psvn_client against real gateways (real TLS, real nats-server) from the ``network`` fixture.

The gateways run in the test's event loop, so the blocking :class:`Client` is driven from a
worker thread (``asyncio.to_thread``) while the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
import psvn_client
import pytest
from psvn_client import AsyncClient, Client

from psvn.certs.ca import init_ca, issue_system
from tests.conftest import Network, read_mostly

REFERRAL: dict[str, Any] = {
    "resourceType": "ServiceRequest",
    "status": "active",
    "intent": "order",
    "subject": {
        "reference": "Patient/9434765919",
        "identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"},
    },
    "code": {"text": "Assessment for care and support on discharge"},
}
SERVICE_REQUEST = "fhir.r4.ServiceRequest"
AIR_QUALITY = Path(__file__).resolve().parents[2] / "examples" / "air-quality.json"


def tls(net: Network, org: str) -> dict[str, Any]:
    cert, key = net.system_cert(org)
    return {"ca": net.ca, "cert": cert, "key": key}


def aclient(net: Network, org: str, **kw: Any) -> AsyncClient:
    return AsyncClient(net.url(org), **{**tls(net, org), **kw})


def client(net: Network, org: str, **kw: Any) -> Client:
    return Client(net.url(org), **{**tls(net, org), **kw})


async def test_async_send_status_inbox_get_ack_round_trip(network: Network) -> None:
    async with aclient(network, network.COUNCIL) as council, aclient(network, network.TRUST) as trust:
        health = await council.health()
        assert health.ok and health.org == network.COUNCIL and health.backbone == "connected"
        assert SERVICE_REQUEST in {t.type for t in await council.catalogue()}

        sent = await council.send(
            network.TRUST,
            SERVICE_REQUEST,
            REFERRAL,
            purpose="direct-care",
            classification="OFFICIAL-SENSITIVE",
            subject="nhs:9434765919",
            correlation_id="case-7",
            workflow_id="referral-v1",
            local_id="ASC/2026/0042",
        )
        assert "care-referrals" in sent.policy.rule_ids and sent.policy.version == health.policy_version
        assert sent.location == f"/v1/messages/{sent.id}" and not sent.duplicate
        assert sent.idempotency_key  # generated, so the send could be retried safely

        delivered = await council.wait_for_status(sent.id, "delivered", timeout=10)
        assert delivered.to == network.TRUST and delivered.type == SERVICE_REQUEST
        assert delivered.status in ("delivered", "acknowledged")

        waiting = await trust.inbox(status="delivered")
        assert [m.id for m in waiting] == [sent.id]
        item = waiting[0]
        assert (item.sender, item.type, item.classification, item.purpose, item.correlation_id) == (
            network.COUNCIL,
            SERVICE_REQUEST,
            "OFFICIAL-SENSITIVE",
            "direct-care",
            "case-7",
        )
        assert item.size > 0 and item.time.tzinfo is not None

        msg = await trust.get(sent.id)
        assert msg.payload == REFERRAL and msg.sender == network.COUNCIL and msg.status == "delivered"
        env = msg.envelope
        assert (env.subject, env.correlation_id, env.workflow_id, env.local_id) == (
            "nhs:9434765919",
            "case-7",
            "referral-v1",
            "ASC/2026/0042",
        )
        assert env.sender_system == "adult-social-care" and env.policy_version == health.policy_version

        ack = await trust.ack(sent.id)
        assert (ack.id, ack.status) == (sent.id, "acknowledged")
        assert await trust.inbox(status="delivered") == []

        final = await council.wait_for_status(sent.id, "acknowledged", timeout=10)
        assert final.final
        assert [h.status for h in final.history] == ["accepted", "sent", "delivered", "acknowledged"]
        assert [h.time for h in final.history] == sorted(h.time for h in final.history)
    assert council.closed and trust.closed


async def test_sync_send_status_inbox_get_ack_round_trip(network: Network) -> None:
    def flow() -> None:
        with client(network, network.COUNCIL) as council, client(network, network.TRUST) as trust:
            assert council.health().ok
            sent = council.send(network.TRUST, SERVICE_REQUEST, REFERRAL, purpose="safeguarding")
            assert "care-referrals" in sent.policy.rule_ids
            council.wait_for_status(sent.id, "delivered", timeout=10)
            assert [m.id for m in trust.inbox(limit=10)] == [sent.id]
            msg = trust.get(sent.id)
            assert msg.payload == REFERRAL and msg.envelope.purpose == "safeguarding"
            assert msg.envelope.classification == "OFFICIAL"
            assert trust.ack(sent.id).status == "acknowledged"
            assert trust.ack(sent.id).status == "acknowledged"  # repeating an ack is harmless
            status = council.wait_for_status(sent.id, "acknowledged", timeout=10)
            assert status.status == "acknowledged"
        assert council.closed

    await asyncio.to_thread(flow)


async def test_send_with_same_idempotency_key_returns_the_same_message(network: Network) -> None:
    async with aclient(network, network.COUNCIL) as council:
        first = await council.send(
            network.TRUST, SERVICE_REQUEST, REFERRAL, purpose="direct-care", idempotency_key="case-42"
        )
        again = await council.send(
            network.TRUST, SERVICE_REQUEST, REFERRAL, purpose="direct-care", idempotency_key="case-42"
        )
        assert again.id == first.id and again.duplicate and not first.duplicate
        with pytest.raises(psvn_client.Conflict) as info:
            await council.send(
                network.TRUST, SERVICE_REQUEST, REFERRAL, purpose="safeguarding", idempotency_key="case-42"
            )
        assert info.value.code == "conflict" and info.value.field == "idempotency_key"
        assert info.value.status == 409
        await council.wait_for_status(first.id, "delivered", timeout=10)
    async with aclient(network, network.TRUST) as trust:
        assert [m.id for m in await trust.inbox()] == [first.id]  # delivered once


@read_mostly
@pytest.mark.parametrize(
    ("over", "family", "code", "field"),
    [
        ({"to": "ods:XXX"}, psvn_client.ValidationError, "unknown-recipient", "to"),
        ({"to": "not an address"}, psvn_client.ValidationError, "invalid-envelope", "to"),
        ({"type": "fhir.r4.Banana"}, psvn_client.ValidationError, "unknown-type", "type"),
        ({"purpose": "Direct Care!"}, psvn_client.ValidationError, "invalid-envelope", "purpose"),
        ({"classification": "SECRET"}, psvn_client.ValidationError, "invalid-envelope", "classification"),
    ],
)
async def test_request_errors_name_the_field(
    shared_network: Network, over: dict[str, Any], family: type[psvn_client.PsvnError], code: str, field: str
) -> None:
    args: dict[str, Any] = {"to": shared_network.TRUST, "type": SERVICE_REQUEST, "purpose": "direct-care", **over}
    async with aclient(shared_network, shared_network.COUNCIL) as council:
        with pytest.raises(family) as info:
            await council.send(args.pop("to"), args.pop("type"), REFERRAL, **args)
    err = info.value
    assert type(err) is family
    assert (err.code, err.status, err.field) == (code, 422, field)
    assert err.detail and f"[{code}]" in str(err) and f"field={field}" in str(err)


@read_mostly
async def test_invalid_payload_lists_every_violation(shared_network: Network) -> None:
    bad = {**REFERRAL, "status": None, "intent": None}
    async with aclient(shared_network, shared_network.COUNCIL) as council:
        with pytest.raises(psvn_client.InvalidPayload) as info:
            await council.send(shared_network.TRUST, SERVICE_REQUEST, bad, purpose="direct-care")
    err = info.value
    assert isinstance(err, psvn_client.ValidationError)
    assert err.code == "invalid-payload" and err.status == 422 and err.message_id
    assert err.field is not None and err.field.startswith("payload")
    paths = {v.path for v in err.violations}
    assert "/status" in paths
    assert all(v.rule and v.message for v in err.violations)
    text = str(err)
    for v in err.violations:
        assert f"  - {v.path}: {v.message} [rule={v.rule}]" in text


@read_mostly
async def test_text_payload_is_validated_against_its_standard(shared_network: Network) -> None:
    """An HL7 v2 ER7 payload travels as a JSON string; its violations name segments."""
    er7 = (Path(__file__).parents[2] / "examples" / "adt_a01.hl7").read_text()
    broken = er7.replace("PID|1|", "PIX|1|")
    async with aclient(shared_network, shared_network.TRUST) as trust:
        with pytest.raises(psvn_client.InvalidPayload) as info:
            await trust.send(shared_network.COUNCIL, "hl7v2.ADT_A01", broken, purpose="direct-care")
    err = info.value
    assert err.code == "invalid-payload" and err.status == 422
    assert {"PIX", "PID"} <= {v.path for v in err.violations}
    assert all(v.rule.startswith("hl7v2") for v in err.violations)


@read_mostly
async def test_policy_denied_names_the_rule(shared_network: Network) -> None:
    async with aclient(shared_network, shared_network.COUNCIL) as council:
        with pytest.raises(psvn_client.PolicyDenied) as info:
            await council.send(shared_network.TRUST, SERVICE_REQUEST, REFERRAL, purpose="marketing")
    err = info.value
    assert (err.code, err.status) == ("policy-denied", 403)
    assert err.rule and err.message_id and "marketing" in err.detail
    assert err.problem["rule"] == err.rule and err.problem["instance"] == "/v1/messages"
    assert f"rule={err.rule}" in str(err)


@read_mostly
async def test_payload_too_large(shared_network: Network) -> None:
    big = {**REFERRAL, "note": [{"text": "x" * 1024}] * 3000}
    async with aclient(shared_network, shared_network.COUNCIL) as council:
        with pytest.raises(psvn_client.PayloadTooLarge) as info:
            await council.send(shared_network.TRUST, SERVICE_REQUEST, big, purpose="direct-care")
    assert (info.value.code, info.value.status, info.value.field) == ("payload-too-large", 413, "body")


@read_mostly
async def test_not_found_forbidden_and_bad_request(shared_network: Network) -> None:
    async with aclient(shared_network, shared_network.COUNCIL) as council:
        sent = await council.send(shared_network.TRUST, SERVICE_REQUEST, REFERRAL, purpose="direct-care")
        await council.wait_for_status(sent.id, "delivered", timeout=10)
        with pytest.raises(psvn_client.NotFound) as info:
            await council.status("no-such-message")
        assert (info.value.code, info.value.status) == ("not-found", 404)
        with pytest.raises(psvn_client.NotFound):  # the trust's mail is not the council's to read
            await council.get(sent.id)
        with pytest.raises(psvn_client.NotFound):
            await council.ack(sent.id)
        with pytest.raises(psvn_client.ValidationError) as bad:
            await council.inbox(limit=5000)
        assert (bad.value.code, bad.value.field, bad.value.status) == ("bad-request", "limit", 400)
    async with aclient(shared_network, shared_network.GP) as gp:
        with pytest.raises(psvn_client.NotFound):  # nor the GP's to track
            await gp.status(sent.id)
    # The trust's system certificate is valid on the network, but not at the council's gateway.
    net = shared_network
    async with AsyncClient(net.url(net.COUNCIL), **tls(net, net.TRUST)) as stranger:
        with pytest.raises(psvn_client.Forbidden) as forbidden:
            await stranger.inbox()
    assert (forbidden.value.code, forbidden.value.status, forbidden.value.rule) == (
        "forbidden",
        403,
        "system-org",
    )


@read_mostly
async def test_sync_client_raises_the_same_families(shared_network: Network) -> None:
    def flow() -> list[tuple[type, str, str | None]]:
        seen = []
        with client(shared_network, shared_network.COUNCIL) as council:
            for call in (
                lambda: council.send(shared_network.TRUST, SERVICE_REQUEST, REFERRAL, purpose="marketing"),
                lambda: council.send(
                    shared_network.TRUST, SERVICE_REQUEST, {"resourceType": "ServiceRequest"}, purpose="direct-care"
                ),
                lambda: council.send("ods:XXX", SERVICE_REQUEST, REFERRAL, purpose="direct-care"),
                lambda: council.status("no-such-message"),
            ):
                try:
                    call()
                except psvn_client.PsvnError as err:
                    seen.append((type(err), err.code, err.field))
        return seen

    seen = await asyncio.to_thread(flow)
    assert [(t, c) for t, c, _ in seen] == [
        (psvn_client.PolicyDenied, "policy-denied"),
        (psvn_client.InvalidPayload, "invalid-payload"),
        (psvn_client.ValidationError, "unknown-recipient"),
        (psvn_client.NotFound, "not-found"),
    ]
    assert seen[2][2] == "to"


@read_mostly
async def test_without_client_certificate_is_unauthenticated(shared_network: Network) -> None:
    """The gateway makes the client certificate optional at TLS so it can answer with a problem."""
    url = shared_network.url(shared_network.COUNCIL)
    async with AsyncClient(url, ca=shared_network.ca) as anonymous:
        health = await anonymous.health()  # health is public on the gateway's listener
        assert health.ok
        with pytest.raises(psvn_client.Unauthenticated) as info:
            await anonymous.inbox()
    err = info.value
    assert err.code == "unauthenticated" and err.status == 401 and err.rule == "mutual-tls"

    def sync() -> psvn_client.PsvnError:
        with Client(url, ca=shared_network.ca) as c:
            try:
                c.send(shared_network.TRUST, SERVICE_REQUEST, REFERRAL, purpose="direct-care")
            except psvn_client.PsvnError as e:
                return e
        raise AssertionError("sent without a client certificate")

    err = await asyncio.to_thread(sync)
    assert isinstance(err, psvn_client.Unauthenticated) and err.code == "unauthenticated"


async def test_gateway_not_trusted_or_client_cert_foreign(network: Network, tmp_path: Path) -> None:
    cert, key = network.system_cert(network.COUNCIL)
    url = network.url(network.COUNCIL)
    # The network CA is not in the system trust store: without ca= the gateway is not trusted.
    async with AsyncClient(url, cert=cert, key=key) as untrusting:
        with pytest.raises(psvn_client.ConnectionError) as info:
            await untrusting.health()
    assert info.value.code == "tls-failed" and "certificate" in info.value.detail

    # A certificate for the right name from another CA: the gateway drops the connection.
    other = init_ca(tmp_path / "other-ca")
    fcert, fkey = issue_system(other, network.COUNCIL, "adult-social-care", tmp_path / "foreign")
    async with AsyncClient(url, ca=network.ca, cert=fcert, key=fkey, retries=1) as impostor:
        with pytest.raises(psvn_client.ConnectionError) as info:
            await impostor.status("anything")
    assert info.value.status is None and "client certificate" in info.value.detail


async def test_nothing_listening_is_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the client connects
    async with AsyncClient(f"https://127.0.0.1:{port}", retries=2, backoff=0.01) as nowhere:
        with pytest.raises(psvn_client.ConnectionError) as info:
            await nowhere.health()
    assert info.value.code == "connection-failed" and f"127.0.0.1:{port}" in str(info.value)

    def sync() -> psvn_client.PsvnError:
        with Client(f"https://127.0.0.1:{port}", retries=0) as c:
            try:
                c.inbox()
            except psvn_client.PsvnError as e:
                return e
        raise AssertionError("connected to nothing")

    err = await asyncio.to_thread(sync)
    assert isinstance(err, psvn_client.ConnectionError) and err.code == "connection-failed"


async def test_wait_for_status_gives_up_with_the_last_status(network: Network) -> None:
    async with aclient(network, network.COUNCIL) as council:
        sent = await council.send(network.TRUST, SERVICE_REQUEST, REFERRAL, purpose="direct-care")
        await council.wait_for_status(sent.id, "delivered", timeout=10)
        with pytest.raises(psvn_client.TimeoutError) as info:  # nobody at the trust acks it
            await council.wait_for_status(sent.id, "acknowledged", timeout=0.3)
        with pytest.raises(ValueError):
            await council.wait_for_status(sent.id, "arrived", timeout=1)
    err = info.value
    assert err.code == "timeout" and err.message_id == sent.id
    assert err.message_status is not None and err.message_status.status == "delivered"

    def sync() -> psvn_client.PsvnError:
        with client(network, network.COUNCIL) as c:
            try:
                c.wait_for_status(sent.id, "acknowledged", timeout=0.2)
            except psvn_client.PsvnError as e:
                return e
        raise AssertionError("acknowledged without an ack")

    assert isinstance(await asyncio.to_thread(sync), psvn_client.TimeoutError)


async def test_degraded_gateway_reports_health_instead_of_raising(network: Network) -> None:
    network.nats.stop()
    async with aclient(network, network.COUNCIL) as council:
        health = await council.health()
        for _ in range(200):  # the gateway notices the lost backbone within a few seconds
            if health.backbone == "disconnected":
                break
            await asyncio.sleep(0.05)
            health = await council.health()
    assert (health.ok, health.status, health.backbone) == (False, "degraded", "disconnected")
    assert health.org == network.COUNCIL


async def test_requests_share_one_tls_connection(network: Network) -> None:
    """Reuse matters: a mutual-TLS handshake per request is ~20x slower."""
    made: list[object] = []
    reused: list[object] = []
    trace = aiohttp.TraceConfig()

    async def created(session: object, ctx: object, params: object) -> None:
        made.append(params)

    async def again(session: object, ctx: object, params: object) -> None:
        reused.append(params)

    trace.on_connection_create_end.append(created)
    trace.on_connection_reuseconn.append(again)
    async with aclient(network, network.COUNCIL) as council:
        council._http.trace_configs.append(trace)
        for _ in range(20):
            await council.health()
        await council.inbox()
        await council.catalogue()
    assert len(made) == 1 and len(reused) == 21


async def test_feeds_subscribe_publish_receive_unsubscribe(network: Network) -> None:
    """Async subscribe and publish, sync listing; the event arrives as an ordinary message."""
    import json as _json

    reading = _json.loads(AIR_QUALITY.read_text())
    topic, purpose = "sensors.brighton.air", "environmental-monitoring"
    async with aclient(network, network.COUNCIL) as council, aclient(network, network.TRUST) as trust, \
            aclient(network, network.GP) as gp:
        sub = await trust.subscribe(topic, purpose=purpose)
        assert (sub.subscriber, sub.topic, sub.purpose, sub.mailbox) == (network.TRUST, topic, purpose, None)
        with pytest.raises(psvn_client.PolicyDenied) as denied:
            await gp.subscribe(topic, purpose=purpose)
        assert denied.value.rule and denied.value.code == "policy-denied"
        listed = await asyncio.to_thread(lambda: client(network, network.TRUST).subscriptions())
        assert [s.topic for s in listed] == [topic]
        for _ in range(200):  # the council's gateway sees the subscription
            if network.gateways[network.COUNCIL].gateway.feeds.subscribers(topic):
                break
            await asyncio.sleep(0.025)
        pub = await council.publish(topic, "cloudevents.air-quality.reading", reading, purpose=purpose)
        assert [d.to for d in pub.deliveries] == [network.TRUST] and pub.refused == ()
        await council.wait_for_status(pub.deliveries[0].id, "delivered", timeout=10)
        got = await trust.get(pub.deliveries[0].id)
        assert got.payload == reading and got.envelope.type == "cloudevents.air-quality.reading"
        assert got.envelope.topic == topic
        with pytest.raises(psvn_client.PolicyDenied):
            await trust.publish(topic, "cloudevents.air-quality.reading", reading, purpose=purpose)
        await trust.unsubscribe(topic)
        assert await trust.subscriptions() == []
        with pytest.raises(psvn_client.NotFound):
            await trust.unsubscribe(topic)
