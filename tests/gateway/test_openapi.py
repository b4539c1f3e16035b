"""The gateway's OpenAPI 3.1 document: committed, served, and true of a live gateway.

``docs/openapi.json`` is generated from the models the gateway encodes and decodes
(:mod:`gateway.openapi`); a drift between it and the code fails here. schemathesis then drives
every operation of a real gateway (real TLS, real nats-server, the ``network`` fixture) with
generated requests: no 500, and every answer's status, content type, headers and body conform.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from psvn_client import AsyncClient
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from psvn.gateway import openapi
from tests.conftest import Network, read_mostly

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "openapi.json"
REGENERATE = "python -m psvn.gateway.openapi > docs/openapi.json"
REFERRAL: dict[str, Any] = {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                            "subject": {"reference": "Patient/9434765919", "identifier": {
                                "system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}},
                            "code": {"text": "Assessment"}}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
EXAMPLES_PER_OPERATION = 8
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


def test_committed_document_is_the_generated_one() -> None:
    assert COMMITTED.exists(), f"docs/openapi.json is missing: run `{REGENERATE}`"
    assert COMMITTED.read_text() == openapi.render(), (
        f"docs/openapi.json differs from what the gateway's models generate: run `{REGENERATE}` and commit it")


def test_document_is_openapi_31_and_schemas_are_the_gateways_models() -> None:
    doc = openapi.build()
    assert doc["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(doc)  # loads (validates) as OpenAPI 3.1
    schemas = doc["components"]["schemas"]
    # the request model the gateway decodes, field for field
    assert set(schemas["SendRequest"]["properties"]) == {
        "to", "type", "payload", "purpose", "classification", "subject", "correlation_id", "workflow_id",
        "local_id", "idempotency_key", "ttl_seconds", "datacontenttype"}
    assert schemas["SendRequest"]["additionalProperties"] is False  # forbid_unknown_fields
    # the views decode the Raw* subclasses (payload kept as bytes): the same fields, the same rules
    import msgspec

    from psvn.protocol.envelope import FeedRequest, RawFeedRequest, RawSendRequest, SendRequest
    for raw, doc_model in ((RawSendRequest, SendRequest), (RawFeedRequest, FeedRequest)):
        decoded = msgspec.json.schema(raw)["$defs"][raw.__name__]
        documented = schemas[doc_model.__name__]
        assert decoded["properties"] == documented["properties"] and decoded["required"] == documented["required"]
    assert "from" in schemas["InboxItem"]["properties"] and "seq" not in schemas["InboxItem"]["properties"]
    listed = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert ("get", "/v1/inbox") in listed and ("get", "/v1/subscriptions") in listed
    for path in ("/v1/inbox", "/v1/subscriptions"):
        names = {p["name"] for p in doc["paths"][path]["get"]["parameters"]}
        assert {"cursor", "limit"} <= names


def test_the_drift_check_would_fail_on_a_changed_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard for the guard: a field added to a model the gateway encodes changes the document."""
    import msgspec

    class Widened(openapi.AckResult, kw_only=True):
        extra: str = ""

    ops = tuple(openapi.Operation(**{**op.__dict__, "responses": {200: Widened}}) if op.operation_id ==
                "ackInboxMessage" else op for op in openapi.OPERATIONS)
    monkeypatch.setattr(openapi, "OPERATIONS", ops)
    assert openapi.render() != COMMITTED.read_text()
    assert msgspec.json.schema(Widened)  # sanity: the model itself is fine


async def _seed(network: Network) -> None:
    """Give the live API something to list: mail in the trust's inbox, a subscription."""
    cert, key = network.system_cert(network.COUNCIL)
    tcert, tkey = network.system_cert(network.TRUST)
    async with AsyncClient(network.url(network.COUNCIL), ca=network.ca, cert=cert, key=key) as council, \
            AsyncClient(network.url(network.TRUST), ca=network.ca, cert=tcert, key=tkey) as trust:
        sent = [await council.send(network.TRUST, "fhir.r4.ServiceRequest", REFERRAL, purpose="direct-care")
                for _ in range(3)]
        for s in sent:
            await council.wait_for_status(s.id, "delivered", timeout=15)
        await trust.subscribe("sensors.brighton.air", purpose="environmental-monitoring")


def _session(network: Network, org: str) -> requests.Session:
    session = requests.Session()
    session.verify = str(network.ca)
    cert, key = network.system_cert(org)
    session.cert = (str(cert), str(key))
    return session


@read_mostly
async def test_served_document_is_the_committed_one(shared_network: Network) -> None:
    ctx = shared_network.client_ssl(shared_network.TRUST)
    async with httpx.AsyncClient(base_url=shared_network.url(shared_network.TRUST), verify=ctx) as http:
        r = await http.get("/v1/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json() == json.loads(COMMITTED.read_text())


@read_mostly
async def test_schemathesis_every_operation_against_a_live_gateway(shared_network: Network) -> None:
    """Generated requests (a few per operation: valid ones, and ones the document forbids)
    against the trust's gateway: no 500, and every response's status, content type, headers and
    body are as documented."""
    await _seed(shared_network)
    schema = schemathesis.openapi.from_dict(openapi.build())
    base_url = shared_network.url(shared_network.TRUST)
    session = _session(shared_network, shared_network.TRUST)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # every operation of the document loads
        operations.append(result.ok())
    assert len(operations) == len(openapi.OPERATIONS)
    calls: dict[str, int] = {}
    negative: set[str] = set()

    def checker(operation: Any, mode: schemathesis.GenerationMode) -> Any:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=base_url, session=session, checks=CHECKS, timeout=30,
                                   verify=session.verify, cert=session.cert)
            calls[case.operation.label] = calls.get(case.operation.label, 0) + 1
            if mode is schemathesis.GenerationMode.NEGATIVE:
                negative.add(case.operation.label)

        return check

    def run() -> None:
        for operation in operations:
            for mode in MODES:
                try:
                    checker(operation, mode)()
                except Unsatisfiable:  # nothing invalid to send (no parameters, no body): positive only
                    assert mode is schemathesis.GenerationMode.NEGATIVE

    try:
        await asyncio.to_thread(run)
    finally:
        session.close()
    assert set(calls) == {op.label for op in operations}, calls  # every operation was exercised
    assert {"POST /v1/messages", "GET /v1/inbox", "PUT /v1/subscriptions/{topic}"} <= negative, negative
    assert sum(calls.values()) >= 3 * len(operations), calls


def test_the_live_checks_catch_a_nonconforming_answer() -> None:
    """Guard for the guard: the checks the live test runs do fail on an answer the document
    does not allow (a body missing a required member), so a green run means something."""
    schema = schemathesis.openapi.from_dict(openapi.build())
    operation = schema["/v1/inbox/{id}/ack"]["POST"]
    case = operation.Case(path_parameters={"id": "abc"})
    response = requests.models.Response()
    response.status_code = 200
    response._content = b'{"id": "abc"}'
    response.headers["Content-Type"] = "application/json"
    response.request = requests.Request("POST", "https://localhost/v1/inbox/abc/ack").prepare()
    response.url = response.request.url or ""
    with pytest.raises(FailureGroup) as failed:
        case.validate_response(response, checks=CHECKS)
    assert any("'status' is a required property" in str(e) or '"status" is a required property' in str(e)
               for e in failed.value.exceptions)
