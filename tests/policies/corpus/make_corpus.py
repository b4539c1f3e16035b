# ruff: noqa: E501  (a data file in Python form: one corpus case per line reads best)
"""Regenerate the validation corpus (run from the repo root: python tests/policies/corpus/make_corpus.py).

Valid messages are real-shaped (UK Core / NHS usage, official FHIR example shapes); each invalid
one is a valid message with one typical mistake, listed in manifest.toml with the exact path and
rule the validator must report. The files are committed; this script documents how they were made.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
EX = ROOT.parents[2] / "examples"
CASES: list[dict[str, Any]] = []


def put(rel: str, type_: str, content: Any, violations: list[tuple[str, str]] | None = None,
        exact: bool = True, note: str = "") -> None:
    path = ROOT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, (dict, list)):
        path.write_text(json.dumps(content, indent=2) + "\n")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    CASES.append({"file": rel, "type": type_, "violations": violations or [], "exact": exact, "note": note})


def load(name: str) -> Any:
    return json.loads((EX / name).read_text())


def mutate(base: Any, fn: Any) -> Any:
    d = copy.deepcopy(base)
    fn(d)
    return d


def hl7(lines: list[str]) -> str:
    return "\r".join(lines) + "\r"


def _toml_str(s: str) -> str:
    return json.dumps(s)


def write_manifest(path: Path, header: list[str], cases: list[dict[str, Any]], optional: tuple[str, ...]) -> None:
    """Write a corpus manifest (this script's and make_xml_corpus.py's, which the tests read alike).

    Each case gets file, type, violations and exact; each key in ``optional`` only where the case sets it.
    """
    lines = [*header, ""]
    for c in cases:
        lines.append("[[case]]")
        lines.append(f"file = {_toml_str(c['file'])}")
        lines.append(f"type = {_toml_str(c['type'])}")
        viol = ", ".join(f"[{_toml_str(p)}, {_toml_str(r)}]" for p, r in c["violations"])
        lines.append(f"violations = [{viol}]")
        lines.append(f"exact = {'true' if c['exact'] else 'false'}")
        for key in optional:
            if c[key]:
                lines.append(f"{key} = {_toml_str(c[key])}")
        lines.append("")
    path.write_text("\n".join(lines))


NHS = "https://fhir.nhs.uk/Id/nhs-number"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"


def main() -> None:
    patient = load("patient.json")
    referral = load("referral.json")

    # ------------------------------------------------------------------ FHIR valid
    put("fhir/valid/patient-uk-core.json", "fhir.r4.Patient", patient)
    put("fhir/valid/servicerequest-referral.json", "fhir.r4.ServiceRequest", referral)
    official = {  # the shape of the official R4 "Patient example", with an NHS number added
        "resourceType": "Patient", "id": "example",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Peter James Chalmers</div>"},
        "identifier": [
            {"use": "usual", "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
             "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345", "period": {"start": "2001-05-06"},
             "assigner": {"display": "Acme Healthcare"}},
            {"system": NHS, "value": "9000000009"}],
        "active": True,
        "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]},
                 {"use": "usual", "given": ["Jim"]},
                 {"use": "maiden", "family": "Windsor", "given": ["Peter", "James"], "period": {"end": "2002"}}],
        "telecom": [{"use": "home"}, {"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1},
                    {"system": "phone", "value": "(03) 3410 5613", "use": "mobile", "rank": 2}],
        "gender": "male", "birthDate": "1974-12-25",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                      "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
        "deceasedBoolean": False,
        "address": [{"use": "home", "type": "both", "text": "534 Erewhon St PeasantVille, Rainbow, Vic  3999",
                     "line": ["534 Erewhon St"], "city": "PleasantVille", "district": "Rainbow", "state": "Vic",
                     "postalCode": "3999", "period": {"start": "1974-12-25"}}],
        "contact": [{"relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}],
                     "name": {"family": "du Marché", "_family": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/humanname-own-prefix", "valueString": "VV"}]}, "given": ["Bénédicte"]},
                     "telecom": [{"system": "phone", "value": "+33 (237) 998327"}],
                     "address": {"use": "home", "type": "both", "line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999"},
                     "gender": "female", "period": {"start": "2012"}}],
        "managingOrganization": {"reference": "Organization/1"},
    }
    put("fhir/valid/patient-official-example.json", "fhir.r4.Patient", official)
    contained = copy.deepcopy(referral)
    contained["contained"] = [{"resourceType": "Patient", "id": "pat", "identifier": [{"system": NHS, "value": "9434765919"}],
                               "name": [{"family": "Smith", "given": ["John"]}]}]
    contained["subject"] = {"reference": "#pat"}
    put("fhir/valid/servicerequest-contained-patient.json", "fhir.r4.ServiceRequest", contained,
        note="the subject's NHS number comes from the contained Patient it references")
    pat_uuid, sr_uuid, org_uuid = ("urn:uuid:" + u for u in ("0b8e9f5c-6a3d-4c1e-9b2a-7f6e5d4c3b2a",
                                                            "1c9f0a6d-7b4e-4d2f-8c3b-8a7f6e5d4c3b",
                                                            "2d0a1b7e-8c5f-4e3a-9d4c-9b8a7f6e5d4c"))
    p2 = copy.deepcopy(patient)
    del p2["id"]
    sr2 = copy.deepcopy(referral)
    del sr2["id"]
    sr2["subject"] = {"reference": pat_uuid}
    sr2["requester"] = {"reference": org_uuid}
    org = {"resourceType": "Organization", "identifier": [{"system": ODS, "value": "RYR"}],
           "name": "University Hospitals Sussex NHS Foundation Trust"}
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": pat_uuid, "resource": p2, "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": sr_uuid, "resource": sr2, "request": {"method": "POST", "url": "ServiceRequest"}},
        {"fullUrl": org_uuid, "resource": org, "request": {"method": "PUT", "url": "Organization?identifier=" + ODS + "|RYR"}}]}
    # any R4 resource, base specification only (catalogue type fhir.r4.Resource)
    observation = {
        "resourceType": "Observation", "id": "bp-1", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}]},
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}},
        "effectiveDateTime": "2025-03-01T09:30:00Z",
        "performer": [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "G81001"}}],
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 128, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": 82, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}],
    }
    encounter = {
        "resourceType": "Encounter", "id": "visit-1", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH", "display": "home health"},
        "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}},
        "period": {"start": "2025-03-01T09:00:00Z", "end": "2025-03-01T09:45:00Z"},
        "serviceProvider": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code",
                                           "value": "RYR"}},
    }
    put("fhir/valid/observation-base-r4.json", "fhir.r4.Resource", observation)
    put("fhir/valid/encounter-base-r4.json", "fhir.r4.Resource", encounter)
    put("fhir/invalid/encounter-period-backwards.json", "fhir.r4.Resource",
        mutate(encounter, lambda d: d["period"].update(end="2025-03-01T08:00:00Z")),
        [("/period", "fhir-invariant")], note="per-1: start after end")
    put("fhir/invalid/observation-value-and-absent-reason.json", "fhir.r4.Resource",
        mutate(observation, lambda d: d.update(valueString="see components", dataAbsentReason={"text": "n/a"})),
        [("", "fhir-invariant")], note="obs-6: a value and a dataAbsentReason")
    put("fhir/invalid/observation-bad-nhs-number.json", "fhir.r4.Resource",
        mutate(observation, lambda d: d["subject"]["identifier"].update(value="1234567890")),
        [("/subject/identifier/value", "uk-nhs-number-check-digit")])
    put("fhir/invalid/encounter-unknown-status.json", "fhir.r4.Resource",
        mutate(encounter, lambda d: d.update(status="done")), [("/status", "fhir-binding")])
    put("fhir/valid/bundle-transaction-referral.json", "fhir.r4.Bundle", transaction)
    message = {"resourceType": "Bundle", "id": "msg-1", "type": "message", "timestamp": "2024-05-13T10:15:00+01:00", "entry": [
        {"fullUrl": "urn:uuid:3e1b2c8f-9d6a-4f4b-8e5d-0c9b8a7f6e5d", "resource": {
            "resourceType": "MessageHeader", "eventCoding": {"system": "https://fhir.nhs.uk/CodeSystem/message-event", "code": "referral-request"},
            "source": {"endpoint": "urn:psvn:org:ods:RYR"}, "focus": [{"reference": sr_uuid}]}},
        {"fullUrl": sr_uuid, "resource": sr2}, {"fullUrl": pat_uuid, "resource": p2}, {"fullUrl": org_uuid, "resource": org}]}
    put("fhir/valid/bundle-message-referral.json", "fhir.r4.Bundle", message)

    # ------------------------------------------------------------------ FHIR invalid
    put("fhir/invalid/patient-nhs-check-digit.json", "fhir.r4.Patient",
        mutate(patient, lambda d: d["identifier"][0].update(value="9434765918")),
        [("/identifier/0/value", "uk-nhs-number-check-digit")])
    put("fhir/invalid/patient-nhs-number-format.json", "fhir.r4.Patient",
        mutate(patient, lambda d: d["identifier"][0].update(value="943 476 5919")),
        [("/identifier/0/value", "uk-nhs-number-format")])
    put("fhir/invalid/patient-without-nhs-number.json", "fhir.r4.Patient",
        mutate(patient, lambda d: d.update(identifier=[{"system": "https://fhir.rsch.nhs.uk/Id/mrn", "value": "RYR1234567"}])),
        [("/identifier", "uk-required-identifier")])
    put("fhir/invalid/patient-gender-banana.json", "fhir.r4.Patient",
        mutate(patient, lambda d: d.update(gender="banana")), [("/gender", "fhir-binding")])
    put("fhir/invalid/patient-birthdate-uk-format.json", "fhir.r4.Patient",
        mutate(patient, lambda d: d.update(birthDate="14/02/1955")), [("/birthDate", "fhir-format")])
    put("fhir/invalid/patient-unknown-element.json", "fhir.r4.Patient",
        mutate(patient, lambda d: d.update(nhsNumber="9434765919")), [("/nhsNumber", "fhir-unknown-element")])
    put("fhir/invalid/patient-name-not-array.json", "fhir.r4.Patient",
        mutate(patient, lambda d: d.update(name={"family": "Smith"})), [("/name", "fhir-cardinality")])
    put("fhir/invalid/patient-active-string.json", "fhir.r4.Patient",
        mutate(patient, lambda d: d.update(active="yes")), [("/active", "fhir-type")])
    put("fhir/invalid/patient-empty-given.json", "fhir.r4.Patient",
        mutate(patient, lambda d: d["name"][0].update(given=[])), [("/name/0/given", "fhir-empty")])
    put("fhir/invalid/patient-gp-ods-lowercase.json", "fhir.r4.Patient",
        mutate(patient, lambda d: d["generalPractitioner"][0]["identifier"].update(value="g81001")),
        [("/generalPractitioner/0/identifier/value", "uk-ods-code-format")])
    put("fhir/invalid/servicerequest-missing-status.json", "fhir.r4.ServiceRequest",
        mutate(referral, lambda d: d.pop("status")), [("/status", "fhir-required")])
    put("fhir/invalid/servicerequest-intent-whenever.json", "fhir.r4.ServiceRequest",
        mutate(referral, lambda d: d.update(intent="whenever")), [("/intent", "fhir-binding")])
    put("fhir/invalid/servicerequest-is-a-patient.json", "fhir.r4.ServiceRequest", patient,
        [("/resourceType", "fhir-resource-type")], note="wrong resourceType for the declared type")
    put("fhir/invalid/servicerequest-requester-bad-ods.json", "fhir.r4.ServiceRequest",
        mutate(referral, lambda d: d["requester"]["identifier"].update(value="RY R")),
        [("/requester/identifier/value", "uk-ods-code-format")])
    put("fhir/invalid/servicerequest-subject-without-nhs-number.json", "fhir.r4.ServiceRequest",
        mutate(referral, lambda d: d.update(subject={"display": "John Smith"})),
        [("/subject", "uk-required-identifier")])
    put("fhir/invalid/servicerequest-contained-unresolved.json", "fhir.r4.ServiceRequest",
        mutate(contained, lambda d: d.update(subject={"reference": "#patient-1"})),
        [("/subject/reference", "fhir-reference-unresolved"), ("/subject", "uk-required-identifier"),
         ("/contained/0", "fhir-invariant")], note="dom-3: the contained Patient is now referenced by nothing")
    put("fhir/invalid/servicerequest-two-occurrences.json", "fhir.r4.ServiceRequest",
        mutate(referral, lambda d: d.update(occurrenceDateTime="2024-05-16", occurrencePeriod={"start": "2024-05-16"})),
        [("/occurrencePeriod", "fhir-choice")])
    put("fhir/invalid/bundle-unresolved-reference.json", "fhir.r4.Bundle",
        mutate(transaction, lambda d: d["entry"][1]["resource"]["subject"].update(
            reference="urn:uuid:99999999-9999-4999-8999-999999999999")),
        [("/entry/1/resource/subject/reference", "fhir-bundle-reference-unresolved"),
         ("/entry/1/resource/subject", "uk-required-identifier")])
    put("fhir/invalid/bundle-transaction-without-request.json", "fhir.r4.Bundle",
        mutate(transaction, lambda d: d["entry"][2].pop("request")), [("/entry/2/request", "fhir-bundle-entry")])
    put("fhir/invalid/bundle-duplicate-fullurl.json", "fhir.r4.Bundle",
        mutate(transaction, lambda d: d["entry"][2].update(fullUrl=pat_uuid)),
        [("/entry/2/fullUrl", "fhir-bundle-fullurl-unique"), ("/entry/1/resource/requester/reference",
                                                              "fhir-bundle-reference-unresolved")])
    put("fhir/invalid/bundle-message-without-header.json", "fhir.r4.Bundle",
        mutate(message, lambda d: d["entry"].pop(0)), [("/entry/0/resource", "fhir-bundle-first-entry")])
    put("fhir/invalid/bundle-searchset-not-accepted.json", "fhir.r4.Bundle",
        {"resourceType": "Bundle", "type": "searchset", "total": 0}, [("/type", "fhir-bundle-type")])
    put("fhir/invalid/bundle-entry-bad-nhs-number.json", "fhir.r4.Bundle",
        mutate(transaction, lambda d: d["entry"][0]["resource"]["identifier"][0].update(value="1234567890")),
        [("/entry/0/resource/identifier/0/value", "uk-nhs-number-check-digit")])
    put("fhir/invalid/not-json.json", "fhir.r4.Patient", '{"resourceType": "Patient", "id": ', [("", "json-syntax")])

    # ------------------------------------------------------------------ HL7 v2
    adt = (EX / "adt_a01.hl7").read_text().replace("\n", "\r")
    segs = [s for s in adt.split("\r") if s]
    put("hl7v2/valid/adt_a01_v25.hl7", "hl7v2.ADT_A01", adt)
    put("hl7v2/valid/adt_a01_v24_lf.hl7", "hl7v2.ADT_A01",
        "\n".join(s.replace("|P|2.5|", "|P|2.4|").replace("|UNICODE UTF-8", "|UNICODE")
                  .replace("THE SURGERY^^^^^^^^^G81001", "THE SURGERY^^^^^^^^G81001") for s in segs) + "\n",
        note="v2.4, LF line ends as exported by many tools")
    a08 = [s.replace("ADT^A01^ADT_A01", "ADT^A08^ADT_A01").replace("EVN|A01", "EVN|A08") for s in segs]
    put("hl7v2/valid/adt_a08_update.hl7", "hl7v2.ADT_A08", hl7(a08))
    a03 = [s.replace("ADT^A01^ADT_A01", "ADT^A03^ADT_A03").replace("EVN|A01", "EVN|A03") for s in segs
           if not s.startswith(("PV2", "AL1"))] + ["ZDS|DISCHARGED HOME|PACKAGE OF CARE REQUESTED"]
    put("hl7v2/valid/adt_a03_discharge_zsegment.hl7", "hl7v2.ADT_A03", hl7(a03))
    put("hl7v2/invalid/adt_a01-nhs-check-digit.hl7", "hl7v2.ADT_A01", adt.replace("9434765919", "9434765918"),
        [("PID-3", "uk-nhs-number-check-digit")])
    put("hl7v2/invalid/adt_a01-no-nhs-number.hl7", "hl7v2.ADT_A01", adt.replace("9434765919^^^NHS^NH~", ""),
        [("PID-3", "uk-required-identifier")])
    put("hl7v2/invalid/adt_a01-malformed-segment.hl7", "hl7v2.ADT_A01",
        hl7([*segs[:3], "PD1^^^THE SURGERY", *segs[4:]]), [("#4", "hl7v2-segment-syntax")])
    put("hl7v2/invalid/adt_a01-missing-pv1.hl7", "hl7v2.ADT_A01", hl7([s for s in segs if not s.startswith("PV")]),
        [("PV1", "hl7v2-segment-required")])
    put("hl7v2/invalid/adt_a01-declared-a03.hl7", "hl7v2.ADT_A01", adt.replace("ADT^A01^ADT_A01", "ADT^A03^ADT_A03"),
        [("MSH-9", "hl7v2-message-type")], note="declared type does not match MSH-9")
    put("hl7v2/invalid/adt_a01-missing-control-id.hl7", "hl7v2.ADT_A01", adt.replace("|MSG00001|", "||"),
        [("MSH-10", "hl7v2-field-required")])
    put("hl7v2/invalid/adt_a01-pv1-before-pid.hl7", "hl7v2.ADT_A01", hl7([segs[0], segs[1], segs[5], *segs[2:5], *segs[6:]]),
        [("PID", "hl7v2-segment-required"), ("PID", "hl7v2-segment-order")], exact=False)
    put("hl7v2/invalid/adt_a01-birth-date.hl7", "hl7v2.ADT_A01", adt.replace("|19550214|", "|14/02/1955|"),
        [("PID-7.1", "hl7v2-datatype")])
    put("hl7v2/invalid/adt_a01-no-msh.hl7", "hl7v2.ADT_A01", hl7(segs[1:]), [("MSH", "hl7v2-msh-first")])
    put("hl7v2/invalid/adt_a01-version-2.9.hl7", "hl7v2.ADT_A01", adt.replace("|P|2.5|", "|P|2.9|"),
        [("MSH-12", "hl7v2-version")])
    put("hl7v2/invalid/adt_a01-unknown-segment.hl7", "hl7v2.ADT_A01", hl7([*segs[:2], "QQQ|1|2", *segs[2:]]),
        [("QQQ", "hl7v2-segment-unknown")])

    # ------------------------------------------------------------------ CloudEvents
    ce = load("air-quality.json")
    put("cloudevents/valid/air-quality.json", "cloudevents.air-quality.reading", ce)
    river = {"specversion": "1.0", "id": "6f0c7b1e-0a5b-4a8e-9b0b-3e2d1c0f9e8d", "source": "urn:psvn:sensor:gss:E06000043:river-ouse-lewes",
             "type": "uk.psvn.flood.river-level.v1", "time": "2024-05-13T10:15:00+01:00", "sensorbattery": 71,
             "data": {"station_id": "E2043", "observed_at": "2024-05-13T10:15:00+01:00", "level_m": 1.82, "datum": "stage", "trend": "rising"}}
    put("cloudevents/valid/river-level.json", "cloudevents.v1", river)
    put("cloudevents/invalid/no-specversion.json", "cloudevents.v1", mutate(ce, lambda d: d.pop("specversion")),
        [("/specversion", "cloudevents-required")])
    put("cloudevents/invalid/specversion-0.3.json", "cloudevents.v1", mutate(ce, lambda d: d.update(specversion="0.3")),
        [("/specversion", "cloudevents-specversion")])
    put("cloudevents/invalid/pm25-in-ppb.json", "cloudevents.air-quality.reading",
        mutate(ce, lambda d: d["data"]["readings"][1].update(unit="ppb")), [("/data/readings/1/unit", "schema-const")])
    put("cloudevents/invalid/reading-without-unit.json", "cloudevents.air-quality.reading",
        mutate(ce, lambda d: d["data"]["readings"][0].pop("unit")), [("/data/readings/0/unit", "schema-required")])
    put("cloudevents/invalid/unknown-event-type.json", "cloudevents.air-quality.reading",
        mutate(river, lambda d: None), [("/type", "cloudevents-event-type")])
    put("cloudevents/invalid/no-data.json", "cloudevents.v1", mutate(ce, lambda d: d.pop("data")), [("/data", "cloudevents-data")])
    put("cloudevents/invalid/local-time.json", "cloudevents.v1", mutate(ce, lambda d: d.update(time="13/05/2024 10:15")),
        [("/time", "cloudevents-format")])
    put("cloudevents/invalid/wrong-dataschema.json", "cloudevents.v1",
        mutate(ce, lambda d: d.update(dataschema="https://example.org/other.json")), [("/dataschema", "cloudevents-dataschema")])
    put("cloudevents/invalid/extension-uppercase.json", "cloudevents.v1", mutate(ce, lambda d: d.update(SensorBattery=88)),
        [("/SensorBattery", "cloudevents-extension-name")])

    # ------------------------------------------------------------------ Open Referral UK + JSON Schema types
    svc = load("openreferral-service.json")
    put("openreferral/valid/service.json", "openreferral.uk.Service", svc)
    put("openreferral/invalid/service-without-url.json", "openreferral.uk.Service", mutate(svc, lambda d: d.pop("url")),
        [("/url", "schema-required")])
    put("openreferral/invalid/service-status-open.json", "openreferral.uk.Service", mutate(svc, lambda d: d.update(status="open")),
        [("/status", "schema-enum")])
    put("openreferral/invalid/service-bad-postcode.json", "openreferral.uk.Service",
        mutate(svc, lambda d: d["service_at_locations"][0]["location"]["addresses"][0].update(postal_code="BN99")),
        [("/service_at_locations/0/location/addresses/0/postal_code", "schema-format")])
    put("openreferral/invalid/service-id-not-uuid.json", "openreferral.uk.Service", mutate(svc, lambda d: d.update(id="42")),
        [("/id", "schema-format")])
    addr = load("address-change.json")
    put("jsonschema/valid/address-change.json", "psvn.address-change", addr)
    put("jsonschema/invalid/address-change-nhs-check-digit.json", "psvn.address-change",
        mutate(addr, lambda d: d.update(subject="nhs:9434765918")), [("/subject", "uk-nhs-number-check-digit")])
    put("jsonschema/invalid/address-change-extra-member.json", "psvn.address-change",
        mutate(addr, lambda d: d.update(council_tax_band="C")), [("/council_tax_band", "schema-additionalProperties")])
    put("jsonschema/invalid/address-change-no-postcode.json", "psvn.address-change",
        mutate(addr, lambda d: d["new_address"].pop("postcode")), [("/new_address/postcode", "schema-required")])

    write_manifest(ROOT / "manifest.toml",
                   ["# Generated by make_corpus.py: each case's file, catalogue type and the exact (path, rule) violations.",
                    "# exact = true: the validator must report exactly these; false: at least these."],
                   CASES, ("note",))
    print(f"{len(CASES)} cases")


if __name__ == "__main__":  # make_xml_corpus.py imports write_manifest: importing writes nothing
    main()
