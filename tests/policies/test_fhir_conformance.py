"""Reference-validator rules beyond the definitions: SearchParameter derivation, expression and
composites, CapabilityStatement search types, Questionnaire enableWhen targets
(policies/validators/fhir_conformance.py); a Bundle reference whose type does not match the urn
entry it names, a Bundle's JWS signature (fhir_bundle.py, fhir_signature.py); a relative
Coding.system (fhir_definitions.py). Each with good and bad inputs, through the validator as it
runs (fast paths on), so a fast path that took one of these types would fail here too."""

from __future__ import annotations

import base64
import copy
import datetime
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from psvn.policies.validators.fhir import ANY_RESOURCE, FhirValidator
from psvn.policies.validators.fhir_conformance import published_search_parameter
from psvn.policies.validators.fhir_signature import canonical

V = FhirValidator(ANY_RESOURCE)
ORG_NAME = "http://hl7.org/fhir/SearchParameter/Organization-name"  # string, base Organization


def rules(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, rule) of every violation, the typed path first as the validator runs it."""
    if V.check_bytes(json.dumps(data).encode()) is not None:
        return []
    return [(v.path, v.rule) for v in V.validate(data)]


def sp(**kw: Any) -> dict[str, Any]:
    base = {"resourceType": "SearchParameter", "url": "http://example.org/SearchParameter/x", "name": "x",
            "status": "active", "description": "x", "code": "name", "base": ["Organization"], "type": "string",
            "expression": "Organization.name"}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


# -- SearchParameter -----------------------------------------------------------------------------

def test_the_table_holds_the_published_search_parameters() -> None:
    assert published_search_parameter(ORG_NAME) == ("string", ("Organization",))
    assert published_search_parameter(ORG_NAME + "|4.0.1") == ("string", ("Organization",))
    assert published_search_parameter(ORG_NAME + "|3.0.2") is None
    assert published_search_parameter("http://example.org/SearchParameter/other") is None


def test_a_derived_search_parameter_keeps_its_type_and_bases() -> None:
    assert rules(sp(derivedFrom=ORG_NAME)) == []
    assert rules(sp(derivedFrom=ORG_NAME, type="token")) == [("/type", "fhir-searchparameter-derivation")]
    assert rules(sp(derivedFrom=ORG_NAME, base=["Patient"], expression="Patient.name")) == \
        [("/base/0", "fhir-searchparameter-derivation")]
    # a master on Resource admits every base; one the table does not hold is not judged
    assert rules(sp(derivedFrom="http://hl7.org/fhir/SearchParameter/Resource-id", type="token",
                    base=["Patient"], expression="Patient.id")) == []
    assert rules(sp(derivedFrom="http://example.org/SearchParameter/unknown", type="token")) == []


def test_a_search_expression_names_only_its_bases() -> None:
    assert rules(sp(base=["Patient"], expression="Organization.name | Organization.alias")) == \
        [("/expression", "fhir-searchparameter-expression")]
    assert rules(sp(base=["Patient", "Practitioner"], expression="Patient.name | (Practitioner.name)")) == []
    assert rules(sp(base=["Patient"], expression="(Patient.name.where(use = 'Organization.x'))")) == []
    assert rules(sp(base=["Patient"], expression="name")) == []  # an element, not a type
    assert rules(sp(base=["Resource"], expression="Patient.id")) == []
    assert rules(sp(base=["Patient"], expression="Patient.link.other.resolve() | Observation.subject")) == \
        [("/expression", "fhir-searchparameter-expression")]


def test_a_composite_search_parameter_has_two_components() -> None:
    comp = {"definition": ORG_NAME, "expression": "name"}
    assert rules(sp(type="composite")) == [("/component", "fhir-searchparameter-composite")]
    assert rules(sp(type="composite", component=[comp])) == [("/component", "fhir-searchparameter-composite")]
    assert rules(sp(type="composite", component=[comp, comp])) == []


# -- CapabilityStatement -------------------------------------------------------------------------

def capstmt(sp_type: str, definition: str) -> dict[str, Any]:
    return {"resourceType": "CapabilityStatement", "status": "draft", "date": "2024-01-01", "kind": "instance",
            "fhirVersion": "4.0.1", "format": ["json"],
            "implementation": {"description": "x"},
            "rest": [{"mode": "server", "resource": [{"type": "AllergyIntolerance", "searchParam": [
                {"name": "clinical-status", "definition": definition, "type": sp_type}]}]}]}


def test_a_capability_statement_search_param_has_its_definitions_type() -> None:
    definition = "http://hl7.org/fhir/SearchParameter/AllergyIntolerance-clinical-status"  # token
    assert rules(capstmt("token", definition)) == []
    assert rules(capstmt("date", definition)) == \
        [("/rest/0/resource/0/searchParam/0/type", "fhir-capabilitystatement-searchparam-type")]
    assert rules(capstmt("date", definition + "|4.0.1")) != []
    assert rules(capstmt("date", "http://example.org/SearchParameter/own")) == []


# -- Questionnaire -------------------------------------------------------------------------------

def item(link: str, *, when: str | None = None, items: list[dict[str, Any]] | None = None,
         kind: str = "boolean") -> dict[str, Any]:
    it: dict[str, Any] = {"linkId": link, "text": link, "type": "group" if items else kind}
    if when is not None:
        it["enableWhen"] = [{"question": when, "operator": "=", "answerBoolean": True}]
    if items:
        it["item"] = items
    return it


def questionnaire(*items: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Questionnaire", "status": "draft", "item": list(items)}


def test_enable_when_names_another_item_outside_its_own() -> None:
    assert rules(questionnaire(item("a"), item("b", when="a"))) == []
    assert rules(questionnaire(item("b", when="a"), item("a"))) == []  # after it: the reference only warns
    assert rules(questionnaire(item("g", items=[item("a"), item("b", when="a")]))) == []  # a sibling
    assert rules(questionnaire(item("g", when="c", items=[item("c"), item("d")]))) == \
        [("/item/0/enableWhen/0/question", "fhir-questionnaire-enablewhen")]  # its own inner question
    assert rules(questionnaire(item("a", when="nowhere"))) == \
        [("/item/0/enableWhen/0/question", "fhir-questionnaire-enablewhen")]
    assert rules(questionnaire(item("a", when="a"))) == \
        [("/item/0/enableWhen/0/question", "fhir-questionnaire-enablewhen")]


def test_a_contained_questionnaire_is_checked_too() -> None:
    q = questionnaire(item("a", when="nowhere"))
    q["id"] = "q"
    resp = {"resourceType": "QuestionnaireResponse", "status": "completed", "questionnaire": "#q", "contained": [q]}
    assert ("/contained/0/item/0/enableWhen/0/question", "fhir-questionnaire-enablewhen") in rules(resp)


# -- Bundle references ---------------------------------------------------------------------------

UUID = "5d9588d8-3cd6-4b32-8fb7-ad13694e069d"


def collection(target_type: str) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:54fc3e09-e279-4b74-a8ff-2649ec968642",
         "resource": {"resourceType": "Patient", "generalPractitioner": [{"reference": f"Practitioner/{UUID}"}]}},
        {"fullUrl": f"urn:uuid:{UUID}", "resource": {"resourceType": target_type, "name": [{"family": "x"}]}
         if target_type == "Practitioner" else {"resourceType": target_type, "name": "x"}}]}


def test_a_reference_whose_type_is_not_the_urn_entrys_is_rejected() -> None:
    assert rules(collection("Organization")) == \
        [("/entry/0/resource/generalPractitioner/0/reference", "fhir-bundle-reference-type")]
    assert rules(collection("Practitioner")) == []


# -- Coding.system -------------------------------------------------------------------------------

@pytest.mark.parametrize("fast", [True, False])
def test_a_relative_coding_system_is_rejected_by_the_walk(fast: bool) -> None:
    v = FhirValidator(ANY_RESOURCE)
    v.fast = fast
    obs = {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "Location1", "code": "x"}]}}
    assert [(x.path, x.rule) for x in v.validate(obs)] == [("/code/coding/0/system", "fhir-format")]
    obs["code"]["coding"][0]["system"] = "http://loinc.org"
    assert v.validate(obs) == []


# -- Bundle signatures ---------------------------------------------------------------------------

def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _cert(key: Any) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer")])
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
CANON = "http://hl7.org/fhir/canonicalization/json#document"


def signed(bundle: dict[str, Any], *, alg: str = "RS256", x5c: bool = True, payload: bytes | None = None,
           sig_format: str = "application/jose") -> dict[str, Any]:
    """``bundle`` with a JWS signature over its canonical form (or over ``payload``)."""
    key = RSA_KEY if alg == "RS256" else EC_KEY
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if x5c:
        header["x5c"] = [_cert(key)]
    content = canonical(bundle, CANON) if payload is None else payload
    signing_input = (_b64url(json.dumps(header).encode()) + "." + _b64url(content)).encode()
    if alg == "RS256":
        sig = RSA_KEY.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(EC_KEY.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    jws = signing_input.decode() + "." + _b64url(sig)
    out = copy.deepcopy(bundle)
    out["signature"] = {"type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.5"}],
                        "when": "2024-01-01T00:00:00Z", "who": {"display": "signer"},
                        "targetFormat": f"application/fhir+json;canonicalization={CANON}",
                        "sigFormat": sig_format, "data": base64.b64encode(jws.encode()).decode()}
    return out


BUNDLE = {"resourceType": "Bundle", "id": "b1", "type": "collection", "entry": [
    {"fullUrl": "urn:uuid:17a80a8d-4cf1-4deb-a1fd-2db1130e5f76",
     "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
                  "valueQuantity": {"value": 72.5, "unit": "kg"}}}]}


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_a_signature_over_the_bundle_verifies(alg: str) -> None:
    assert rules(signed(BUNDLE, alg=alg)) == []
    moved = signed(BUNDLE, alg=alg)
    moved["id"] = "another"  # #document: id and meta are not signed
    assert rules(moved) == []


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_a_bundle_changed_after_signing_does_not_verify(alg: str) -> None:
    bad = signed(BUNDLE, alg=alg)
    bad["entry"][0]["resource"]["valueQuantity"]["value"] = 75
    assert rules(bad) == [("/signature/data", "fhir-bundle-signature")]
    forged = signed(BUNDLE, alg=alg)
    data = base64.b64decode(forged["signature"]["data"]).decode().rsplit(".", 1)
    forged["signature"]["data"] = base64.b64encode((data[0] + "." + _b64url(b"x" * 64)).encode()).decode()
    assert rules(forged) == [("/signature/data", "fhir-bundle-signature")]


def test_signatures_it_cannot_judge_pass() -> None:
    changed = copy.deepcopy(BUNDLE)
    changed["entry"][0]["resource"]["status"] = "amended"
    assert rules(signed(BUNDLE, x5c=False, payload=canonical(changed, CANON))) == []  # no certificate
    assert rules(signed(BUNDLE, sig_format="image/png", payload=b"other")) == []
    # the signer wrote 72.50 where canonical() writes 72.5: the same content, trusted
    text = canonical(BUNDLE, CANON).replace(b"72.5", b"72.50")
    assert rules(signed(BUNDLE, payload=text)) == []


def searchset(self_url: str | None, *entries: tuple[str | None, dict[str, Any]]) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"fullUrl": f"http://example.org/fhir/{r['resourceType']}/{r['id']}" if "id" in r
         else f"urn:uuid:00000000-0000-4000-8000-{i:012d}", "resource": r,
         **({"search": {"mode": mode}} if mode else {})} for i, (mode, r) in enumerate(entries)]}
    if self_url:
        bundle["link"] = [{"relation": "self", "url": self_url}]
    return bundle


PAT = {"resourceType": "Patient", "id": "p1"}
OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational"}]}


def test_search_results_have_ids_and_the_searched_types() -> None:
    assert rules(searchset("http://example.org/fhir/Patient?name=x", ("match", PAT), ("outcome", OUTCOME))) == []
    assert rules(searchset("http://example.org/fhir?_type=Observation,Patient", ("match", PAT))) == []
    assert rules(searchset(None, (None, {"resourceType": "Patient"}))) == []  # no modes: not judged by mode
    no_id = {"resourceType": "Patient"}
    assert rules(searchset("base/Patient?name=x", ("match", no_id))) == [("/entry/0/resource", "fhir-bundle-search")]
    assert rules(searchset("base/Patient?name=x", ("include", no_id))) == [("/entry/0/resource", "fhir-bundle-search")]
    assert rules(searchset("base/Patient?name=x", ("match", {**PAT, "resourceType": "Person"}))) == [
        ("/entry/0/resource/resourceType", "fhir-bundle-search")]
    assert rules(searchset("base?_type=Observation", ("match", PAT))) == [
        ("/entry/0/resource/resourceType", "fhir-bundle-search")]
    assert rules(searchset("base/Patient?name=x", ("match", PAT), ("outcome", {**PAT, "id": "p2"}))) == [
        ("/entry/1/resource/resourceType", "fhir-bundle-search")]
