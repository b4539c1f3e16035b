"""The SDK against the gateway's OpenAPI document (docs/openapi.json, the one the gateway
serves): every request the SDK can build is one the document describes, and in a whole flow
against a live gateway every request the SDK sends and every answer it reads conform to it."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import psvn_client
import pytest
import schemathesis
from psvn_client import _core
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.clients.test_client import AIR_QUALITY, REFERRAL, SERVICE_REQUEST, aclient, client
from tests.conftest import Network

DOC: dict[str, Any] = json.loads((Path(__file__).resolve().parents[2] / "docs" / "openapi.json").read_text())
SCHEMA = schemathesis.openapi.from_dict(DOC)
CHECKS = [status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


def _template(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{([a-z_]+)\\\}", r"(?P<\1>[^/]+)", re.escape(path)) + "$")


TEMPLATES = [(_template(p), p) for p in DOC["paths"]]


def operation_for(method: str, path: str) -> tuple[str, dict[str, Any]]:
    """(path template, operation) of the document that a request is, or fail naming it."""
    for pattern, template in TEMPLATES:
        if pattern.match(path) and method.lower() in DOC["paths"][template]:
            return template, DOC["paths"][template][method.lower()]
    raise AssertionError(f"the document has no operation for {method} {path}")


def sent(call: Any) -> Any:
    """The body the SDK sends for ``call``, as the gateway reads it (its very bytes, decoded)."""
    body = call.body()
    return None if body is None else json.loads(body)


def check_request(method: str, path: str, params: dict[str, Any] | None, body: Any) -> str:
    """A request the SDK sends, checked against the document: operation, query parameters,
    and body (against the request body's schema, with the document's components)."""
    template, op = operation_for(method, path)
    declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
    assert set(params or {}) <= declared, f"{method} {template}: undeclared query {set(params or {}) - declared}"
    for p in op.get("parameters", []):
        if p["in"] == "query" and params and p["name"] in params:
            value = params[p["name"]]
            value = int(value) if p["schema"].get("type") == "integer" else value
            errors = [e.message for e in jsonschema_rs.validator_for(p["schema"]).iter_errors(value)]
            assert not errors, f"{method} {template} ?{p['name']}={value!r}: {errors}"
    if "requestBody" in op:
        assert body is not None, f"{method} {template} needs a body"
        schema = {**op["requestBody"]["content"]["application/json"]["schema"], "components": DOC["components"]}
        errors = [f"{e.instance_path}: {e.message}" for e in jsonschema_rs.validator_for(schema).iter_errors(body)]
        assert not errors, f"{method} {template}: the SDK's body does not conform: {errors}"
    else:
        assert body is None, f"{method} {template} takes no body"
    return template


CALLS: dict[str, _core.Call[Any]] = {
    "send": _core.send_call("ods:RYR", SERVICE_REQUEST, REFERRAL, purpose="direct-care", classification="OFFICIAL",
                            subject="nhs:9434765919", correlation_id="c", workflow_id="w", local_id="l",
                            idempotency_key="k", ttl_seconds=60, datacontenttype="application/fhir+json"),
    "send-minimal": _core.send_call("ods:RYR", SERVICE_REQUEST, REFERRAL, purpose="direct-care",
                                    classification="OFFICIAL", subject=None, correlation_id=None, workflow_id=None,
                                    local_id=None, idempotency_key=None, ttl_seconds=None),
    "batch": _core.batch_call([_core.batch_item(0, psvn_client.Message(
        to="ods:RYR", type=SERVICE_REQUEST, payload=REFERRAL, purpose="direct-care", ttl_seconds=5))]),
    "status": _core.status_call("m-1"),
    "statuses": _core.statuses_call("delivered", 1000, "bWVzc2FnZXM6Mw"),
    "inbox": _core.inbox_call("referrals", "delivered", 1000, "aW5ib3g6Mw"),
    "get": _core.get_call("m-1"),
    "ack": _core.ack_call("m-1"),
    "publish": _core.publish_call("sensors.brighton.air", "cloudevents.air-quality.reading", {}, purpose="p",
                                  classification="OFFICIAL", subject="s", correlation_id="c", idempotency_key="k",
                                  ttl_seconds=9),
    "subscribe": _core.subscribe_call("sensors.brighton.air", purpose="environmental-monitoring", mailbox="feeds"),
    "unsubscribe": _core.unsubscribe_call("sensors.brighton.air"),
    "subscriptions": _core.subscriptions_call(1000, "c3Vic2NyaXB0aW9uczp4"),
    "catalogue": _core.catalogue_call(),
    "health": _core.health_call(),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_request_the_sdk_builds_is_in_the_document(name: str) -> None:
    call = CALLS[name]
    check_request(call.method, call.path, call.params, sent(call))


def test_the_contract_check_catches_a_request_the_document_does_not_allow() -> None:
    """Guard for the guard: a body with a field the gateway does not take, an unknown query
    parameter, a path with no operation: each fails the check."""
    with pytest.raises(AssertionError, match="does not conform"):
        check_request("POST", "/v1/messages", None, {"to": "x", "type": "t", "payload": 1, "purpose": "p",
                                                      "sender": "me"})
    with pytest.raises(AssertionError, match="undeclared"):
        check_request("GET", "/v1/inbox", {"offset": 3}, None)
    with pytest.raises(AssertionError, match="no operation"):
        check_request("GET", "/v1/outbox", None, None)


def test_every_sdk_method_has_its_operation() -> None:
    """Each operation of the document (but the document itself, the probes and the metrics)
    is one the SDK calls, so nothing the gateway offers is out of the SDK's reach."""
    used = {(c.method.lower(), check_request(c.method, c.path, c.params, sent(c))) for c in CALLS.values()}
    offered = {(m, p) for p, item in DOC["paths"].items() for m in item}
    assert offered - used == {("get", "/v1/openapi.json"), ("get", "/readyz"), ("get", "/livez"),
                              ("get", "/metrics")}


class Recorder:
    """httpx event hooks: every request the SDK sends and every response it reads, checked
    against the document as they pass."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def _check(self, response: httpx.Response) -> None:
        request = response.request
        body = json.loads(request.content) if request.content else None
        params = dict(request.url.params) or None
        template = check_request(request.method, request.url.path, params, body)
        match = _template(template).match(request.url.path)
        assert match is not None
        case = SCHEMA[template][request.method].Case(path_parameters=match.groupdict())
        case.validate_response(response, checks=CHECKS)
        self.seen.append((f"{request.method} {template}", response.status_code))

    def sync_hook(self, response: httpx.Response) -> None:
        response.read()
        self._check(response)

    async def async_hook(self, response: httpx.Response) -> None:
        await response.aread()
        self._check(response)


async def test_a_whole_sdk_flow_conforms_to_the_document(network: Network) -> None:
    rec = Recorder()
    reading = json.loads(AIR_QUALITY.read_text())
    topic, purpose = "sensors.brighton.air", "environmental-monitoring"
    async with aclient(network, network.COUNCIL) as council, aclient(network, network.TRUST) as trust:
        for c in (council, trust):
            c._http.on_response.append(rec.async_hook)
        assert (await council.health()).ok and await council.catalogue()
        sent = await council.send(network.TRUST, SERVICE_REQUEST, REFERRAL, purpose="direct-care",
                                  correlation_id="case-1")
        again = await council.send(network.TRUST, SERVICE_REQUEST, REFERRAL, purpose="direct-care",
                                   correlation_id="case-1", idempotency_key=sent.idempotency_key)
        assert again.duplicate and again.id == sent.id
        [ok, refused] = await council.send_many([
            psvn_client.Message(to=network.TRUST, type=SERVICE_REQUEST, payload=REFERRAL, purpose="direct-care"),
            {"to": network.TRUST, "type": SERVICE_REQUEST, "payload": {"resourceType": "ServiceRequest"},
             "purpose": "direct-care"}])
        assert ok.ok and isinstance(refused.error, psvn_client.InvalidPayload)
        with pytest.raises(psvn_client.InvalidPayload):
            await council.send(network.TRUST, SERVICE_REQUEST, {"resourceType": "ServiceRequest"},
                               purpose="direct-care")
        await council.wait_for_status(sent.id, "delivered", timeout=15)
        await council.wait_for_status(ok.unwrap().id, "delivered", timeout=15)
        assert [m.id async for m in trust.iter_inbox(page_size=1)] == [sent.id, ok.unwrap().id]
        async for msg in trust.receive(idle_timeout=0.3, poll_interval=0.1):
            await msg.ack()
        with pytest.raises(psvn_client.NotFound):
            await trust.get("no-such-message")
        with pytest.raises(psvn_client.ValidationError):
            await trust.inbox_page(cursor="bad")
        await trust.subscribe(topic, purpose=purpose)
        assert [s.topic for s in await trust.subscriptions()] == [topic]
        for _ in range(200):
            if network.gateways[network.COUNCIL].gateway.feeds.subscribers(topic):
                break
            await asyncio.sleep(0.025)
        pub = await council.publish(topic, "cloudevents.air-quality.reading", reading, purpose=purpose)
        assert pub.deliveries
        with pytest.raises(psvn_client.PolicyDenied):
            await trust.publish(topic, "cloudevents.air-quality.reading", reading, purpose=purpose)
        await trust.unsubscribe(topic)

    def sync_flow() -> None:  # the sync client sends and reads the same
        with client(network, network.TRUST) as trust, client(network, network.COUNCIL) as council:
            for c in (council, trust):
                c._http.event_hooks["response"].append(rec.sync_hook)
            assert council.status(sent.id).status == "acknowledged"
            assert [m.id for m in trust.iter_inbox(status="acknowledged", page_size=2)][:1] == [sent.id]
            assert trust.health().ok

    await asyncio.to_thread(sync_flow)
    operations = {op for op, _ in rec.seen}
    assert len(operations) >= 12, operations
    statuses = {s for _, s in rec.seen}
    assert {200, 202, 204, 400, 403, 404, 422} <= statuses, statuses
