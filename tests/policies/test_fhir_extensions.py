"""Extensions against their definitions (policies/validators/fhir_extensions.py): an unknown one is
refused unless its domain is allowed, a modifier must be a modifierExtension (and the reverse), the
context, the value type and a complex extension's sub-extensions are checked; the fast paths give
the walk's verdict on each input."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from psvn.policies.validators.fhir import ANY_RESOURCE, FhirValidator
from psvn.policies.validators.fhir_extensions import extension_table, full_path
from tests.policies.walk_verdict import held_verdict

HL7 = "http://hl7.org/fhir/StructureDefinition/"
UK = "https://fhir.hl7.org.uk/StructureDefinition/"
ANIMAL = HL7 + "patient-animal"
SPECIES = {"url": "species", "valueCodeableConcept": {"text": "dog"}}


def patient(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", **extra}


rules = held_verdict


@pytest.fixture(scope="module")
def base() -> FhirValidator:
    return FhirValidator(ANY_RESOURCE)


@pytest.fixture(scope="module")
def uk() -> FhirValidator:
    return FhirValidator(ANY_RESOURCE, extension_domains=[UK])


def test_the_table_holds_the_r4_core_extensions() -> None:
    table = extension_table()
    assert len(table) > 350
    animal = table[ANIMAL]
    assert animal.subs is not None and animal.subs["species"][:2] == (1, 1) and not animal.values
    assert table[HL7 + "request-doNotPerform"].modifier
    assert table[HL7 + "patient-birthTime"].values == {"valueDateTime"}


def test_an_unknown_extension_is_refused_unless_its_domain_is_allowed(base: FhirValidator,
                                                                       uk: FhirValidator) -> None:
    data = patient(extension=[{"url": UK + "Extension-UKCore-EthnicCategory", "valueString": "A"}])
    assert rules(base, data) == [("/extension/0/url", "fhir-extension-unknown")]
    assert rules(uk, data) == []
    other = patient(extension=[{"url": "https://example.org/fhir/StructureDefinition/x", "valueString": "A"}])
    assert rules(uk, other) == [("/extension/0/url", "fhir-extension-unknown")]
    deep = patient(name=[{"family": "Smith", "extension": [{"url": "https://acme.test/x", "valueString": "y"}]}])
    assert rules(base, deep) == [("/name/0/extension/0/url", "fhir-extension-unknown")]


def test_cross_version_and_tooling_extensions_are_not_resolved_but_allowed(base: FhirValidator) -> None:
    data = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "extension": [{"url": "http://hl7.org/fhir/3.0/StructureDefinition/extension-Observation.value",
                           "valueString": "v"},
                          {"url": "http://hl7.org/fhir/tools/StructureDefinition/anything", "valueString": "v"}]}
    assert rules(base, data) == []


def test_a_known_extension_in_its_context_with_its_value_type_is_valid(base: FhirValidator) -> None:
    birth_time = {"url": HL7 + "patient-birthTime", "valueDateTime": "1970-01-01T10:00:00Z"}
    mothers = {"url": HL7 + "humanname-mothers-family", "valueString": "Jones"}
    data = patient(birthDate="1970-01-01", _birthDate={"extension": [birth_time]},
                   name=[{"_family": {"extension": [mothers]}}],
                   extension=[{"url": HL7 + "patient-mothersMaidenName", "valueString": "Jones"}])
    assert rules(base, data) == []


def test_an_extension_outside_its_context_is_refused(base: FhirValidator) -> None:
    data = patient(name=[{"family": "Smith", "extension": [{"url": HL7 + "humanname-mothers-family",
                                                            "valueString": "Jones"}]}])
    assert rules(base, data) == [("/name/0/extension/0/url", "fhir-extension-context")]
    on_resource = patient(extension=[{"url": HL7 + "patient-birthTime", "valueDateTime": "1970-01-01T10:00:00Z"}])
    assert rules(base, on_resource) == [("/extension/0/url", "fhir-extension-context")]


def test_a_context_given_as_a_full_path_is_read_from_where_the_extension_sits(base: FhirValidator) -> None:
    ext = {"url": HL7 + "event-performerFunction", "valueCodeableConcept": {"text": "author"}}
    obs: dict[str, Any] = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                           "performer": [{"display": "Dr A", "extension": [ext]}]}
    assert rules(base, obs) == []
    wrong = copy.deepcopy(obs)
    wrong["subject"] = wrong.pop("performer")[0]
    assert rules(base, wrong) == [("/subject/extension/0/url", "fhir-extension-context")]
    assert full_path("Observation", "/performer/0") == "Observation.performer"
    assert full_path("Patient", "/name/0/_family") == "Patient.name.family"


def test_a_value_of_a_type_the_definition_does_not_allow_is_refused(base: FhirValidator) -> None:
    data = patient(extension=[{"url": HL7 + "patient-mothersMaidenName", "valueBoolean": True}])
    assert rules(base, data) == [("/extension/0/valueBoolean", "fhir-extension-value")]


def test_a_modifier_extension_must_be_a_modifier_extension(base: FhirValidator) -> None:
    ext = {"url": HL7 + "request-doNotPerform", "valueBoolean": True}
    order = {"resourceType": "NutritionOrder", "status": "active", "intent": "order",
             "patient": {"reference": "Patient/p1"}, "dateTime": "2024-01-01"}
    assert rules(base, {**order, "modifierExtension": [ext]}) == []
    assert rules(base, {**order, "extension": [ext]}) == [("/extension/0/url", "fhir-extension-modifier")]
    plain = {"url": HL7 + "patient-mothersMaidenName", "valueString": "Jones"}
    assert rules(base, patient(modifierExtension=[plain])) == [("/modifierExtension/0/url", "fhir-extension-modifier")]


def test_a_complex_extensions_sub_extensions_are_checked(base: FhirValidator) -> None:
    good = patient(extension=[{"url": ANIMAL, "extension": [SPECIES, {"url": "breed", "valueCodeableConcept":
                                                                      {"text": "lab"}}]}])
    assert rules(base, good) == []
    missing = patient(extension=[{"url": ANIMAL, "extension": [{"url": "breed", "valueCodeableConcept":
                                                                {"text": "lab"}}]}])
    assert rules(base, missing) == [("/extension/0/extension", "fhir-extension-slice")]
    unknown = patient(extension=[{"url": ANIMAL, "extension": [SPECIES, {"url": "species-x", "valueString": "x"}]}])
    assert rules(base, unknown) == [("/extension/0/extension/1/url", "fhir-extension-unknown")]
    twice = patient(extension=[{"url": ANIMAL, "extension": [SPECIES, SPECIES]}])
    assert rules(base, twice) == [("/extension/0/extension", "fhir-extension-slice")]
    typed = patient(extension=[{"url": ANIMAL, "extension": [{"url": "species", "valueString": "dog"}]}])
    assert rules(base, typed) == [("/extension/0/extension/0/valueString", "fhir-extension-value")]
