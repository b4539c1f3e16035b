# ruff: noqa: E501  (the sample table below is data, one invariant a line)
"""Every R4 resource type can be carried (catalogue type ``fhir.r4.Resource``), a profiled type is
data in the catalogue, and the native invariant predicates equal the official FHIRPath."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from psvn.core.errors import PsvnError
from psvn.policies import bundle
from psvn.policies.catalogue import Catalogue
from psvn.policies.validation import PayloadValidator
from psvn.policies.validators.fhir_invariants import CORRECTED, NATIVE, FhirPath, all_invariants

CORPUS = Path(__file__).resolve().parent / "corpus" / "fhir"
OBS: dict[str, Any] = json.loads((CORPUS / "valid" / "observation-base-r4.json").read_text())
ENC: dict[str, Any] = json.loads((CORPUS / "valid" / "encounter-base-r4.json").read_text())
DOC = bundle.load_dir()


def validator(extra: dict[str, Any] | None = None) -> PayloadValidator:
    doc = copy.deepcopy(DOC)
    doc["catalogue"].update(extra or {})
    return PayloadValidator(Catalogue.from_document(doc), doc["schemas"])


def rules(v: PayloadValidator, type_: str, payload: Any) -> list[tuple[str, str]]:
    return [(x.path, x.rule) for x in v.validate(type_, json.dumps(payload).encode())]


def test_the_base_r4_type_carries_any_resource_and_checks_it() -> None:
    v = validator()
    assert rules(v, "fhir.r4.Resource", OBS) == [] and rules(v, "fhir.r4.Resource", ENC) == []
    assert v.check("fhir.r4.Resource", json.dumps(ENC).encode()).subjects == {"nhs:9434765919"}
    bad = copy.deepcopy(ENC)
    bad["period"]["end"] = "2025-03-01T08:00:00Z"
    assert rules(v, "fhir.r4.Resource", bad) == [("/period", "fhir-invariant")]  # per-1
    bad = copy.deepcopy(OBS)
    bad["status"] = "done"
    assert rules(v, "fhir.r4.Resource", bad) == [("/status", "fhir-binding")]
    assert rules(v, "fhir.r4.Resource", {"resourceType": "Banana"}) == [("/resourceType", "fhir-resource-type")]


UKCORE_OBS = {
    "standard": "FHIR R4", "version": "4.0.1", "validator": "fhir-r4", "resource": "Observation",
    "profile": "https://fhir.hl7.org.uk/StructureDefinition/UKCore-Observation",
    "description": "test: a UK Core Observation", "owner": "test",
    "identifiers": [{"resource": "Observation", "element": "subject",
                     "system": "https://fhir.nhs.uk/Id/nhs-number", "label": "patient's NHS number"}],
    "required": ["Observation.effective[x]", "Observation.performer"],
    "invariants": [{"resource": "Observation", "key": "test-obs-1",
                    "expression": "status != 'final' or component.exists() or value.exists()",
                    "human": "a final observation has a value or components"}],
}


def test_a_profiled_type_is_data() -> None:
    v = validator({"ukcore.Observation": UKCORE_OBS})
    assert rules(v, "ukcore.Observation", OBS) == []
    no_effective = {k: val for k, val in OBS.items() if k != "effectiveDateTime"}
    assert rules(v, "ukcore.Observation", no_effective) == [("/effective", "fhir-profile-required")]
    assert rules(v, "fhir.r4.Resource", no_effective) == []  # the base type does not ask for it
    no_subject = {k: val for k, val in OBS.items() if k != "subject"}
    assert rules(v, "ukcore.Observation", no_subject) == [("/subject", "uk-required-identifier")]
    empty = {k: val for k, val in OBS.items() if k != "component"}
    assert rules(v, "ukcore.Observation", empty) == [("", "fhir-profile-invariant")]
    assert rules(v, "ukcore.Observation", ENC) == [("/resourceType", "fhir-resource-type")]


def test_a_profile_naming_an_element_that_does_not_exist_is_refused_when_compiled() -> None:
    v = validator({"ukcore.Observation": {**UKCORE_OBS, "required": ["Observation.colour"]}})
    with pytest.raises(PsvnError) as exc:
        v.warm()
    assert "colour" in str(exc.value)


CLIN = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CVER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
AVER = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
SAMPLES: dict[str, list[dict[str, Any]]] = {
    "per-1": [{"start": "2020-01-01", "end": "2020-01-02"}, {"start": "2020-01-02", "end": "2020-01-01"},
              {"start": "2020-01-01"}, {"start": "2020-01-01T10:00:00Z", "end": "2020-01-01T09:00:00Z"},
              {"start": "2020-01-01T10:00", "end": "2020-01-01"}],
    "qty-3": [{"value": 1, "code": "mg"}, {"value": 1, "code": "mg", "system": "http://unitsofmeasure.org"}, {"value": 1}],
    "cpt-2": [{"value": "0113"}, {"value": "0113", "system": "phone"}, {"use": "home"}],
    "att-1": [{"data": "aGk="}, {"data": "aGk=", "contentType": "text/plain"}, {"url": "http://x"}],
    "rng-2": [{"low": {"value": 1}, "high": {"value": 2}}, {"low": {"value": 3}, "high": {"value": 2}}, {"low": {"value": 1}}],
    "rat-1": [{"numerator": {"value": 1}, "denominator": {"value": 2}}, {"numerator": {"value": 1}},
              {"extension": [{"url": "http://x", "valueString": "y"}]}, {}],
    "prr-1": [{"orderDetail": [{"text": "x"}]}, {"orderDetail": [{"text": "x"}], "code": {"text": "y"}}, {}],
    "pat-1": [{"name": {"text": "x"}}, {"gender": "male"}, {"organization": {"display": "x"}}],
    "obs-6": [{"valueString": "x"}, {"valueString": "x", "dataAbsentReason": {"text": "y"}}, {"dataAbsentReason": {"text": "y"}}],
    "obs-7": [{"code": {"coding": [{"system": "s", "code": "c"}]}, "valueString": "x",
               "component": [{"code": {"coding": [{"system": "s", "code": "c"}]}}]},
              {"code": {"coding": [{"system": "s", "code": "c"}]}, "valueString": "x",
               "component": [{"code": {"coding": [{"system": "s", "code": "d"}]}}]},
              {"code": {"coding": [{"system": "s", "code": "c"}]},
               "component": [{"code": {"coding": [{"system": "s", "code": "c"}]}}]}],
    "obs-3": [{"low": {"value": 1}}, {"text": "x"}, {"appliesTo": [{"text": "x"}]}],
    "ras-2": [{"probabilityDecimal": 50}, {"probabilityDecimal": 150}, {"probabilityRange": {"low": {"value": 1}}}],
    "con-4": [{"abatementDateTime": "2020", "clinicalStatus": {"coding": [{"system": CLIN, "code": "resolved"}]}},
              {"abatementDateTime": "2020", "clinicalStatus": {"coding": [{"system": CLIN, "code": "active"}]}},
              {}],
    "con-5": [{"verificationStatus": {"coding": [{"system": CVER, "code": "entered-in-error"}]},
               "clinicalStatus": {"text": "x"}}, {"clinicalStatus": {"text": "x"}}],
    "ait-1": [{"verificationStatus": {"coding": [{"system": AVER, "code": "entered-in-error"}]}},
              {}, {"clinicalStatus": {"text": "x"}}],
    "ait-2": [{"verificationStatus": {"coding": [{"system": AVER, "code": "entered-in-error"}]},
               "clinicalStatus": {"text": "x"}}, {"clinicalStatus": {"text": "x"}}],
    "org-1": [{"name": "x"}, {"identifier": [{"value": "1"}]}, {"active": True}],
    "mrp-1": [{"type": "data-collection", "group": [{"id": "g"}]}, {"type": "summary", "group": [{"id": "g"}]},
              {"type": "data-collection"}],
    "app-2": [{"start": "2020-01-01T10:00:00Z"}, {"start": "2020-01-01T10:00:00Z", "end": "2020-01-01T11:00:00Z"}, {}],
    "app-3": [{"status": "booked"}, {"status": "proposed"}, {"status": "booked", "start": "2020-01-01T10:00:00Z",
                                                              "end": "2020-01-01T11:00:00Z"}],
    "app-4": [{"status": "booked", "cancelationReason": {"text": "x"}}, {"status": "cancelled", "cancelationReason": {"text": "x"}}],
    "app-1": [{"type": [{"text": "x"}]}, {"status": "accepted"}],
}


# fhirpathpy cannot type these elements when given them alone (a Quantity comparison, ``is decimal``
# on a choice): their natives are checked against the expected verdicts instead.
ENGINE_GAPS: dict[str, list[bool]] = {"rng-2": [True, False, True], "ras-2": [True, False, True]}


def test_natives_the_engine_cannot_judge_alone() -> None:
    for key, expected in ENGINE_GAPS.items():
        assert [NATIVE[key](s, s) for s in SAMPLES[key]] == expected, key
    # per-1 across time zones: 10:00+01:00 is 09:00Z, before 09:30Z
    assert NATIVE["per-1"]({"start": "2020-01-01T10:00:00+01:00", "end": "2020-01-01T09:30:00Z"}, {})
    assert not NATIVE["per-1"]({"start": "2020-01-01T10:00:00+01:00", "end": "2020-01-01T08:30:00Z"}, {})


def test_que_12_is_read_as_its_text_says() -> None:
    """R4's que-12 expression says > 2; the native reads "more than one", as R4B and the reference do."""
    two = {"linkId": "q", "type": "boolean", "enableWhen": [{"question": "a", "operator": "exists",
                                                             "answerBoolean": True}] * 2}
    assert not NATIVE["que-12"](two, two) and NATIVE["que-12"]({**two, "enableBehavior": "any"}, two)
    assert FhirPath(next(i for i in all_invariants() if i.key == "que-12").expression).holds(two, two, two)
    assert set(CORRECTED) == {"que-12"}


@pytest.mark.parametrize("key", sorted(set(NATIVE) - set(ENGINE_GAPS) - set(CORRECTED)))
def test_each_native_invariant_equals_the_official_fhirpath(key: str) -> None:
    """The native predicate gives fhirpathpy's verdict on the official expression, both ways."""
    inv = next((i for i in all_invariants() if i.key == key), None)
    assert inv is not None, f"{key} is not an invariant of the R4 definitions"
    samples = SAMPLES[key]
    verdicts = set()
    from psvn.policies.validators.fhir_definitions import definitions

    on_resource = definitions().is_resource(inv.path)
    for raw in samples:
        # a resource's own invariants see it typed (value[x] is read as value only then)
        sample = {"resourceType": inv.path, **raw} if on_resource else raw
        native = NATIVE[key](sample, sample)
        assert native == FhirPath(inv.expression).holds(sample, sample, sample), (key, sample)
        verdicts.add(native)
    assert verdicts == {True, False}, key  # each predicate is seen to pass and to fail
