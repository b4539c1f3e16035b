"""Data subjects: the people a payload is about, reported by validation for the consent check.

A sender must not be able to dodge a citizen's opt-out by naming someone else in the envelope,
or no one; so validation names every NHS number the payload carries wherever the standard puts
one (FHIR Identifiers anywhere, Bundles and contained resources included; HL7 v2 PID-3; schema
members with an NHS-number format), from the same parse that checks it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from psvn.policies.bundle import load_dir
from psvn.policies.catalogue import Catalogue
from psvn.policies.consent import mask_subject
from psvn.policies.validation import Checked, PayloadValidator
from psvn.policies.validators.jsonschema import SubjectFinder
from tests.policies.fhir_xml_writer import to_xml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DOC = load_dir()
V = PayloadValidator(Catalogue.from_document(DOC), DOC["schemas"])
NHS = "https://fhir.nhs.uk/Id/nhs-number"
JOHN, JANE, ALEX = "9434765919", "9434765811", "9434765870"  # valid NHS numbers (modulus 11)
REFERRAL: dict[str, Any] = json.loads((EXAMPLES / "referral.json").read_text())
PATIENT: dict[str, Any] = json.loads((EXAMPLES / "patient.json").read_text())
ADT = (EXAMPLES / "adt_a01.hl7").read_text()


def check(type_: str, payload: Any, content_type: str | None = None) -> Checked:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return V.check(type_, body, content_type=content_type)


def subjects(type_: str, payload: Any, content_type: str | None = None) -> set[str]:
    checked = check(type_, payload, content_type)
    assert checked.ok, checked.violations
    return set(checked.subjects)


def patient(number: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": NHS, "value": number}],
            "name": [{"family": "Smith"}], **extra}


# -- the examples ------------------------------------------------------------------------------
@pytest.mark.parametrize(("type_", "name", "content_type"), [
    ("fhir.r4.Patient", "patient.json", None),
    ("fhir.r4.ServiceRequest", "referral.json", None),
    ("fhir.r4.Patient", "patient.xml", "application/fhir+xml"),
    ("fhir.r4.ServiceRequest", "referral.xml", "application/fhir+xml"),
    ("hl7v2.ADT_A01", "adt_a01.hl7", None),
    ("psvn.address-change", "address-change.json", None),
])
def test_every_example_about_a_person_names_them(type_: str, name: str, content_type: str | None) -> None:
    assert subjects(type_, (EXAMPLES / name).read_bytes(), content_type) == {f"nhs:{JOHN}"}


@pytest.mark.parametrize(("type_", "name"), [
    ("cloudevents.air-quality.reading", "air-quality.json"),
    ("openreferral.uk.Service", "openreferral-service.json"),
])
def test_payloads_about_no_one_name_no_one(type_: str, name: str) -> None:
    checked = V.check(type_, (EXAMPLES / name).read_bytes())
    assert checked.ok and checked.subjects == frozenset()


def test_validate_is_check_without_the_subjects() -> None:
    body = (EXAMPLES / "referral.json").read_bytes()
    assert V.validate("fhir.r4.ServiceRequest", body) == V.check("fhir.r4.ServiceRequest", body).violations == []
    bad = json.dumps({**REFERRAL, "status": "whenever"}).encode()
    assert V.validate("fhir.r4.ServiceRequest", bad) == V.check("fhir.r4.ServiceRequest", bad).violations != []


# -- FHIR: wherever an NHS number is, it is found -----------------------------------------------
def test_a_subject_found_through_a_contained_patient() -> None:
    sr = copy.deepcopy(REFERRAL)
    sr["contained"] = [{**patient(JANE), "id": "pat"}]
    sr["subject"] = {"reference": "#pat"}  # no identifier on the reference itself
    assert subjects("fhir.r4.ServiceRequest", sr) == {f"nhs:{JANE}"}


def test_a_second_person_tucked_into_another_reference_is_found() -> None:
    sr = copy.deepcopy(REFERRAL)
    sr["supportingInfo"] = [{"identifier": {"system": NHS, "value": JANE}, "display": "her carer"}]
    assert subjects("fhir.r4.ServiceRequest", sr) == {f"nhs:{JOHN}", f"nhs:{JANE}"}


def test_every_patient_of_a_bundle_is_a_subject() -> None:
    sr = copy.deepcopy(REFERRAL)
    del sr["id"]
    sr["subject"] = {"reference": "urn:uuid:0b8e9f5c-6a3d-4c1e-9b2a-7f6e5d4c3b2a"}
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:0b8e9f5c-6a3d-4c1e-9b2a-7f6e5d4c3b2a", "resource": patient(JANE)},
        {"fullUrl": "urn:uuid:1c9f0a6d-7b4e-4d2f-8c3b-8a7f6e5d4c3b", "resource": sr},
        {"fullUrl": "urn:uuid:2d0a1b7e-8c5f-4e3a-9d4c-9b8a7f6e5d4c", "resource": patient(ALEX)},
        # a Bundle inside the Bundle: its people count too
        {"fullUrl": "urn:uuid:3e1b2c8f-9d6a-4f4b-8e5d-0c9b8a7f6e5d", "resource": {
            "resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient(JOHN)}]}},
    ]}
    assert subjects("fhir.r4.Bundle", bundle) == {f"nhs:{JANE}", f"nhs:{ALEX}", f"nhs:{JOHN}"}
    # and the same Bundle as FHIR XML
    xml = to_xml(bundle).encode()
    assert subjects("fhir.r4.Bundle", xml, "application/fhir+xml") == {f"nhs:{JANE}", f"nhs:{ALEX}", f"nhs:{JOHN}"}


def test_identifiers_of_other_systems_are_not_subjects() -> None:
    pat = patient(JOHN)
    pat["identifier"].append({"system": "https://fhir.rsch.nhs.uk/Id/mrn", "value": JANE})
    assert subjects("fhir.r4.Patient", pat) == {f"nhs:{JOHN}"}


def test_an_invalid_payload_names_no_one() -> None:
    """Subjects are only for a payload the gateway would let through; an invalid one is refused."""
    pat = patient(JOHN)
    pat["identifier"].append({"system": NHS, "value": "9434765918"})  # bad check digit
    checked = check("fhir.r4.Patient", pat)
    assert [v.rule for v in checked.violations] == ["uk-nhs-number-check-digit"]
    assert checked.subjects == frozenset()


# -- HL7 v2 --------------------------------------------------------------------------------------
def test_adt_names_every_nhs_number_of_pid_3_only() -> None:
    two = ADT.replace("9434765919^^^NHS^NH~RYR1234567^^^RYR^MR",
                      f"{JANE}^^^NHS^NH~{ALEX}^^^RYR^MR~{JOHN}^^^2.16.840.1.113883.2.1.4.1^PT")
    assert two != ADT
    # NH type or an NHS authority marks an NHS number; a trust's MR number is not one
    assert subjects("hl7v2.ADT_A01", two.encode()) == {f"nhs:{JANE}", f"nhs:{JOHN}"}
    bad = ADT.replace("9434765919^^^NHS^NH", "9434765918^^^NHS^NH").encode()
    checked = V.check("hl7v2.ADT_A01", bad)
    assert checked.violations and checked.subjects == frozenset()


# -- JSON Schema and CloudEvents ---------------------------------------------------------------------
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
    "properties": {
        "about": {"$ref": "#/$defs/person"},
        "household": {"type": "array", "items": {"$ref": "#/$defs/person"}},
        "reporter": {"type": "string", "format": "uk-nhs-number"},
        "note": {"type": "string"},
    },
    "$defs": {"person": {"type": "object", "properties": {
        "subject": {"type": "string", "format": "psvn-nhs-subject"},
        "carer": {"$ref": "#/$defs/person"},  # recursive: must not loop
    }}},
}


def test_schema_members_with_an_nhs_format_are_found_however_deep_a_recursive_schema_goes() -> None:
    finder = SubjectFinder(SCHEMA)
    assert finder.finds_any
    carers: dict[str, Any] = {"subject": f"nhs:{ALEX}"}
    for _ in range(20):  # a carer's carer's carer...: deeper than any fixed unrolling of the $ref
        carers = {"carer": carers}
    data = {"about": {"subject": f"nhs:{JOHN}", "carer": {"subject": f"nhs:{JANE}", **carers}},
            "household": [{"subject": f"nhs:{JOHN}"}, {"note": "x"}, "not an object"],
            "reporter": JOHN, "note": "9434765811 in free text is not a subject"}
    assert finder.subjects(data) == {f"nhs:{JOHN}", f"nhs:{JANE}", f"nhs:{ALEX}"}
    # only valid NHS numbers in the marked members count
    assert finder.subjects({"about": {"subject": "nhs:123"}, "reporter": 42, "x": JOHN}) == frozenset()
    assert not SubjectFinder({"type": "object", "properties": {"id": {"type": "string"}}}).finds_any


@pytest.mark.parametrize(("schema", "data"), [
    ({"type": "object", "additionalProperties": {"type": "string", "format": "uk-nhs-number"},
      "properties": {"ref": {"type": "string"}}}, {"ref": JANE, "a": JOHN}),
    ({"type": "object", "patternProperties": {"^patient": {"type": "string", "format": "uk-nhs-number"}}},
     {"patient1": JOHN, "other": JANE}),
    ({"type": "array", "prefixItems": [{"type": "string"}, {"type": "string", "format": "psvn-nhs-subject"}]},
     [JANE, f"nhs:{JOHN}"]),
    ({"allOf": [{"$ref": "#/$defs/p"}], "$defs": {"p": {"properties": {"who": {"format": "uk-nhs-number"}}}}},
     {"who": JOHN}),
])
def test_every_way_a_schema_can_mark_a_member(schema: dict[str, Any], data: Any) -> None:
    assert SubjectFinder(schema).subjects(data) == {f"nhs:{JOHN}"}


def test_a_consent_change_is_not_about_a_data_subject() -> None:
    """Its subject is matched by a pattern, not an NHS-number format: a citizen who opted out of
    everything must still be able to restore their consent."""
    body = json.dumps({"subject": f"nhs:{JOHN}", "seq": 1, "opt_outs": ["*"],
                       "effective": "2026-11-25T10:00:00Z"}).encode()
    checked = V.check("psvn.consent-change", body)
    assert checked.ok and checked.subjects == frozenset()


def test_custom_types_name_their_subjects_as_data_only() -> None:
    doc = json.loads(json.dumps(DOC))
    doc["schemas"]["household"] = {"$id": "https://schemas.example/household/1.json", **SCHEMA}
    doc["catalogue"]["council.household"] = {
        "standard": "JSON Schema 2020-12", "version": "1", "validator": "jsonschema",
        "schema": "household", "description": "A household", "owner": "LGA"}
    doc["catalogue"]["cloudevents.household"] = {
        "standard": "CloudEvents 1.0", "version": "1.0", "validator": "cloudevents",
        "description": "A household event", "owner": "LGA",
        "events": {"uk.example.household.v1": "household"}}
    v = PayloadValidator(Catalogue.from_document(doc), doc["schemas"])
    data = {"about": {"subject": f"nhs:{JANE}"}, "reporter": JOHN}
    assert v.check("council.household", json.dumps(data).encode()).subjects == {f"nhs:{JANE}", f"nhs:{JOHN}"}
    event = {"specversion": "1.0", "id": "e-1", "source": "urn:x", "type": "uk.example.household.v1",
             "subject": "not-a-data-subject", "data": data}
    assert v.check("cloudevents.household", json.dumps(event).encode()).subjects == {f"nhs:{JANE}", f"nhs:{JOHN}"}
    bad = {**data, "reporter": "9434765918"}
    checked = v.check("council.household", json.dumps(bad).encode())
    assert checked.violations and checked.subjects == frozenset()


# -- masking -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("subject", "masked"), [
    ("nhs:9434765919", "nhs:******5919"),
    ("9434765919", "******5919"),
    ("ch:012", "ch:***"),  # too short to show any of it
    ("urn:x:abcdefghijkl", "urn:x:******ijkl"),
])
def test_mask_subject_never_shows_a_whole_number(subject: str, masked: str) -> None:
    assert mask_subject(subject) == masked
