"""Every catalogue type is validated by the gateway on send, with the same errors as `psvn validate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from policies import bundle
from policies.catalogue import Catalogue
from policies.validation import PayloadValidator
from tests.conftest import Network
from tests.gateway.test_service import call, wait_status

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

def without(key: str) -> Any:
    return lambda p: {k: v for k, v in p.items() if k != key}


# (type, example file, a way to break it)
CASES: list[tuple[str, str, Any]] = [
    ("fhir.r4.ServiceRequest", "referral.json", lambda p: {**p, "status": "whenever"}),
    ("fhir.r4.Patient", "patient.json", lambda p: {**p, "gender": "banana"}),
    ("hl7v2.ADT_A01", "adt_a01.hl7", lambda p: p.replace("ADT^A01^ADT_A01", "ADT^A08^ADT_A01")),
    ("cloudevents.air-quality.reading", "air-quality.json", without("specversion")),
    ("psvn.address-change", "address-change.json", lambda p: {**p, "subject": "nhs:9434765918"}),
    ("openreferral.uk.Service", "openreferral-service.json", without("name")),
]


def load(name: str) -> Any:
    text = (EXAMPLES / name).read_text()
    return text.replace("\r\n", "\r").replace("\n", "\r") if name.endswith(".hl7") else json.loads(text)


def offline_violations(type_: str, payload: Any) -> list[dict[str, Any]]:
    doc = bundle.load_dir()
    v = PayloadValidator(Catalogue.from_document(doc), doc["schemas"])
    body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
    return [{k: val for k, val in (("path", x.path), ("rule", x.rule), ("message", x.message),
                                    ("expected", x.expected)) if val is not None}
            for x in v.validate(type_, body)]


@pytest.mark.parametrize("type_,example,breaker", CASES, ids=[c[0] for c in CASES])
async def test_each_type_is_validated_on_send(network: Network, type_: str, example: str, breaker: Any) -> None:
    payload = load(example)
    assert offline_violations(type_, payload) == []
    msg = {"to": network.GP, "type": type_, "purpose": "direct-care", "payload": payload}
    status, body = await call(network, network.TRUST, "POST", "/v1/messages", msg)
    assert body.get("code") != "invalid-payload", body  # valid: sent, or refused only by policy

    broken = breaker(payload)
    expected = offline_violations(type_, broken)
    assert expected, "the breaker must break the example"
    status, problem = await call(network, network.TRUST, "POST", "/v1/messages", {**msg, "payload": broken})
    assert (status, problem["code"]) == (422, "invalid-payload"), problem
    assert problem["violations"] == expected
    assert problem["rule"] == expected[0]["rule"] and problem["message_id"]


async def test_hl7_admission_is_delivered_as_text(network: Network) -> None:
    adt = load("adt_a01.hl7")
    msg = {"to": network.COUNCIL + "/adult-social-care", "type": "hl7v2.ADT_A01", "purpose": "direct-care",
           "classification": "OFFICIAL-SENSITIVE", "subject": "nhs:9434765919", "payload": adt}
    status, body = await call(network, network.TRUST, "POST", "/v1/messages", msg)
    assert status == 202, body
    await wait_status(network, network.TRUST, body["id"], "delivered")
    status, item = await call(network, network.COUNCIL, "GET", f"/v1/inbox/{body['id']}")
    assert status == 200 and item["payload"] == adt
    assert item["envelope"]["datacontenttype"].startswith("x-application/hl7-v2") or \
        "hl7" in item["envelope"]["datacontenttype"]


async def test_fhir_xml_is_validated_and_delivered_as_xml(network: Network) -> None:
    xml = (EXAMPLES / "referral.xml").read_text()
    msg = {"to": network.TRUST, "type": "fhir.r4.ServiceRequest", "purpose": "direct-care",
           "classification": "OFFICIAL-SENSITIVE", "subject": "nhs:9434765919", "payload": xml,
           "datacontenttype": "application/fhir+xml"}
    status, body = await call(network, network.COUNCIL, "POST", "/v1/messages", msg)
    assert status == 202, body
    await wait_status(network, network.COUNCIL, body["id"], "delivered")
    status, item = await call(network, network.TRUST, "GET", f"/v1/inbox/{body['id']}")
    assert item["payload"] == xml and item["envelope"]["datacontenttype"] == "application/fhir+xml"

    broken = xml.replace('<status value="active"/>', '<status value="whenever"/>')
    assert broken != xml
    doc = bundle.load_dir()
    v = PayloadValidator(Catalogue.from_document(doc), doc["schemas"])
    expected = v.validate("fhir.r4.ServiceRequest", broken.encode(), content_type="application/fhir+xml")
    status, problem = await call(network, network.COUNCIL, "POST", "/v1/messages", {**msg, "payload": broken})
    assert (status, problem["code"]) == (422, "invalid-payload")
    assert [(x["path"], x["rule"]) for x in problem["violations"]] == [(x.path, x.rule) for x in expected]

    status, problem = await call(network, network.COUNCIL, "POST", "/v1/messages",
                                 {**msg, "datacontenttype": "text/plain"})
    assert (status, problem["field"], problem["rule"]) == (422, "datacontenttype", "content-type")
