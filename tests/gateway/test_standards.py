"""Every catalogue type is validated by the gateway on send, with the same errors as `psvn validate`;
an invalid payload of every standard that skipped egress validation is quarantined at ingress.

Payloads come from the validation corpus (tests/policies/corpus); the few catalogue types it has
no example of are derived here from a corpus example or written out small.
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from psvn import devnet
from psvn.broker import provision
from psvn.certs.keys import load_signing_key
from psvn.policies import bundle
from psvn.policies.catalogue import Catalogue
from psvn.policies.validation import PayloadValidator
from tests.broker.test_backbone import skipping_egress_validation, wait_quarantined
from tests.broker.test_policy_admin import wait_versions
from tests.conftest import Network, read_mostly, start_network, stop_network
from tests.gateway.test_service import call, wait_status

CORPUS = Path(__file__).resolve().parents[1] / "policies" / "corpus"
MANIFEST: list[dict[str, Any]] = tomllib.loads((CORPUS / "manifest.toml").read_text())["case"]
DOC = bundle.load_dir()
CATALOGUE = Catalogue.from_document(DOC)
VALIDATOR = PayloadValidator(CATALOGUE, DOC["schemas"])
TYPES = sorted(CATALOGUE.entries)


def corpus_file(type_: str, *, valid: bool) -> str | None:
    return next((c["file"] for c in MANIFEST if c["type"] == type_ and bool(c["violations"]) != valid), None)


def read(path: str) -> Any:
    text = (CORPUS / path).read_bytes().decode()  # as stored: HL7 v2 segments end in CR
    return text if path.endswith((".hl7", ".xml")) else json.loads(text)


ADT = read("hl7v2/valid/adt_a01_v25.hl7")
ADT_STRUCTURE = {"A02": "ADT_A02", "A04": "ADT_A01", "A05": "ADT_A05", "A06": "ADT_A06", "A07": "ADT_A06"}


def adt(event: str) -> str:
    """The corpus admission re-labelled as another ADT event; A02's structure has no NK1 or AL1."""
    msg = ADT.replace("ADT^A01^ADT_A01", f"ADT^{event}^{ADT_STRUCTURE[event]}").replace("EVN|A01|", f"EVN|{event}|")
    if event == "A02":
        msg = "\r".join(s for s in msg.split("\r") if s[:3] not in ("NK1", "AL1"))
    return msg


# catalogue types the corpus has no valid example of
DERIVED: dict[str, Any] = {
    **{f"hl7v2.ADT_{ev}": adt(ev) for ev in ADT_STRUCTURE},
    "fhir.r4.MeasureReport": {"resourceType": "MeasureReport", "status": "complete", "type": "summary",
                              "measure": "https://schemas.psvn.uk/Measure/delayed-discharges",
                              "period": {"start": "2025-01-01", "end": "2025-03-31"}},
    "psvn.consent-change": {"subject": "nhs:9434765919", "seq": 1, "opt_outs": ["research-consented"],
                            "effective": "2025-03-01T09:00:00Z"},
}


def valid_payload(type_: str) -> Any:
    path = corpus_file(type_, valid=True)
    return read(path) if path else DERIVED[type_]


def invalid_payload(type_: str) -> Any:
    """The corpus's first invalid case of the type, else its valid example broken by one field."""
    path = corpus_file(type_, valid=False)
    if path:
        return read(path)
    p = valid_payload(type_)
    if isinstance(p, str):  # HL7 v2: an NHS number whose check digit is wrong
        return p.replace("9434765919^^^NHS", "9434765918^^^NHS")
    return {**p, "status": "whenever"} if "resourceType" in p else {**p, "seq": "first"}


def purpose_for(type_: str) -> str:
    """A purpose the policy's legal basis makes lawful for the type."""
    return next(lb["purposes"][0] for lb in DOC["rules"]["legal_basis"]
                if any(fnmatch.fnmatchcase(type_, t) for t in lb["types"]))


def offline_violations(type_: str, payload: Any, content_type: str | None = None) -> list[dict[str, Any]]:
    """What `psvn validate` says, as the API's problem lists it."""
    body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
    return [{k: val for k, val in (("path", x.path), ("rule", x.rule), ("message", x.message),
                                    ("expected", x.expected)) if val is not None}
            for x in VALIDATOR.validate(type_, body, content_type=content_type)]


def test_the_cases_cover_the_whole_catalogue() -> None:
    assert len(TYPES) == 18 and set(TYPES) == set(DOC["catalogue"])
    for t in TYPES:
        assert offline_violations(t, valid_payload(t)) == [], t
        assert offline_violations(t, invalid_payload(t)), t


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def net(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Network]:
    """The example network under the default policy plus one rule: the council may send the trust
    any catalogue type, so a valid payload of every type is answered 202 (most types otherwise
    travel only on feeds or from a personal data store). One for the module: every test sends
    its own messages and reads only their statuses (``read_mostly``)."""
    network = await start_network(tmp_path_factory.mktemp("standards"))
    try:
        doc = json.loads(json.dumps(DOC))
        doc["version"] = 2
        doc["rules"]["rule"].append({
            "id": "test-every-catalogue-type", "effect": "allow", "description": "test: any type, council to trust",
            "from": ["council"], "to": ["nhs-trust"], "types": TYPES, "purposes": sorted(DOC["rules"]["purposes"]),
            "classifications": ["OFFICIAL"]})
        nc = await devnet.broker_connect(network.layout, network.nats.url)
        try:
            await provision.publish_policy(nc.jetstream(), bundle.sign(
                doc, load_signing_key(network.layout.authority_key)))
        finally:
            await nc.close()
        assert await wait_versions(network, 2) == {org: 2 for org in network.gateways}
        yield network
    finally:
        await stop_network(network)


def message(net: Network, type_: str, payload: Any, **over: Any) -> dict[str, Any]:
    return {"to": net.TRUST, "type": type_, "purpose": purpose_for(type_), "classification": "OFFICIAL",
            "payload": payload, **over}


@read_mostly
@pytest.mark.parametrize("type_", TYPES)
async def test_each_type_is_validated_on_send(net: Network, type_: str) -> None:
    status, body = await call(net, net.COUNCIL, "POST", "/v1/messages", message(net, type_, valid_payload(type_)))
    assert status == 202, body
    await wait_status(net, net.COUNCIL, body["id"], "delivered")  # the trust's ingress validation agrees

    broken = invalid_payload(type_)
    expected = offline_violations(type_, broken)
    status, problem = await call(net, net.COUNCIL, "POST", "/v1/messages", message(net, type_, broken))
    assert (status, problem["code"]) == (422, "invalid-payload"), problem
    assert problem["violations"] == expected
    assert problem["rule"] == expected[0]["rule"] and problem["message_id"]


# one invalid payload per standard: (type, corpus file, datacontenttype)
INGRESS: dict[str, tuple[str, str, str | None]] = {
    "fhir-json": ("fhir.r4.ServiceRequest", "fhir/invalid/servicerequest-intent-whenever.json", None),
    "fhir-xml": ("fhir.r4.ServiceRequest", "fhir-xml/invalid/servicerequest-intent-whenever.xml",
                 "application/fhir+xml"),
    "hl7v2": ("hl7v2.ADT_A01", "hl7v2/invalid/adt_a01-nhs-check-digit.hl7", None),
    "cloudevents": ("cloudevents.air-quality.reading", "cloudevents/invalid/pm25-in-ppb.json", None),
    "openreferral-uk": ("openreferral.uk.Service", "openreferral/invalid/service-id-not-uuid.json", None),
    "jsonschema": ("psvn.address-change", "jsonschema/invalid/address-change-no-postcode.json", None),
}


@read_mostly
@pytest.mark.parametrize("standard", INGRESS)
async def test_each_standard_is_validated_at_ingress(net: Network, standard: str) -> None:
    """The council's gateway skips payload validation; the trust's quarantines the message naming
    the violation's rule and path, and the council hears it was rejected."""
    type_, path, content_type = INGRESS[standard]
    payload = read(path)
    body_bytes = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
    first = VALIDATOR.validate(type_, body_bytes, content_type=content_type)[0]
    over = {"datacontenttype": content_type} if content_type else {}
    with skipping_egress_validation(net.gateways[net.COUNCIL]):
        status, body = await call(net, net.COUNCIL, "POST", "/v1/messages", message(net, type_, payload, **over))
    assert status == 202, body
    q = await wait_quarantined(net, net.TRUST, body["id"])
    assert q["rule"] == first.rule and q["reason"].startswith("invalid-payload: ")
    assert f"first at {first.path or '/'} [{first.rule}]" in q["reason"]  # rule and path, never payload text
    final = await wait_status(net, net.COUNCIL, body["id"], "rejected")
    assert final["reason"] == q["reason"] and final["rule_ids"] == [first.rule]


async def test_hl7_admission_is_delivered_as_text(network: Network) -> None:
    adt_a01 = read("hl7v2/valid/adt_a01_v25.hl7")
    msg = {"to": network.COUNCIL + "/adult-social-care", "type": "hl7v2.ADT_A01", "purpose": "direct-care",
           "classification": "OFFICIAL-SENSITIVE", "subject": "nhs:9434765919", "payload": adt_a01}
    status, body = await call(network, network.TRUST, "POST", "/v1/messages", msg)
    assert status == 202, body
    await wait_status(network, network.TRUST, body["id"], "delivered")
    status, item = await call(network, network.COUNCIL, "GET", f"/v1/inbox/{body['id']}")
    assert status == 200 and item["payload"] == adt_a01
    assert item["envelope"]["datacontenttype"] == CATALOGUE.get("hl7v2.ADT_A01").datacontenttype \
        == "application/hl7-v2"


async def test_fhir_xml_is_validated_and_delivered_as_xml(network: Network) -> None:
    xml = read("fhir-xml/valid/servicerequest-referral.xml")
    msg = {"to": network.TRUST, "type": "fhir.r4.ServiceRequest", "purpose": "direct-care",
           "classification": "OFFICIAL-SENSITIVE", "subject": "nhs:9434765919", "payload": xml,
           "datacontenttype": "application/fhir+xml"}
    status, body = await call(network, network.COUNCIL, "POST", "/v1/messages", msg)
    assert status == 202, body
    await wait_status(network, network.COUNCIL, body["id"], "delivered")
    status, item = await call(network, network.TRUST, "GET", f"/v1/inbox/{body['id']}")
    assert item["payload"] == xml and item["envelope"]["datacontenttype"] == "application/fhir+xml"

    broken = read("fhir-xml/invalid/servicerequest-intent-whenever.xml")
    expected = offline_violations("fhir.r4.ServiceRequest", broken, "application/fhir+xml")
    assert expected
    status, problem = await call(network, network.COUNCIL, "POST", "/v1/messages", {**msg, "payload": broken})
    assert (status, problem["code"]) == (422, "invalid-payload")
    assert problem["violations"] == expected

    status, problem = await call(network, network.COUNCIL, "POST", "/v1/messages",
                                 {**msg, "datacontenttype": "text/plain"})
    assert (status, problem["field"], problem["rule"]) == (422, "datacontenttype", "content-type")
