"""A constraint StructureDefinition's element paths (policies/validators/fhir_sd.py): each names an
element of the constrained type; the fast paths defer to the walk on a bad one."""

from __future__ import annotations

from typing import Any

from psvn.policies.validators.fhir import ANY_RESOURCE, FhirValidator
from tests.policies.walk_verdict import held_verdict


def profile(*paths: str, derivation: str = "constraint", type_: str = "Observation") -> dict[str, Any]:
    return {"resourceType": "StructureDefinition", "url": "http://example.com/P", "name": "P", "status": "draft",
            "kind": "resource", "abstract": False, "type": type_, "derivation": derivation,
            "baseDefinition": f"http://hl7.org/fhir/StructureDefinition/{type_}",
            "differential": {"element": [{"id": p, "path": p} for p in paths]}}


def verdict(data: dict[str, Any]) -> list[tuple[str, str]]:
    return held_verdict(FhirValidator(ANY_RESOURCE), data)


def test_paths_of_the_constrained_type_are_valid() -> None:
    assert verdict(profile("Observation", "Observation.value[x]", "Observation.valueQuantity",
                           "Observation.valueQuantity.code", "Observation.component.code.coding.system",
                           "Observation.status.extension", "Observation.extension.url")) == []


def test_a_path_naming_no_element_is_refused() -> None:
    assert verdict(profile("Observation.valueBla")) == [("/differential/element/0/path", "fhir-profile-path")]
    assert verdict(profile("Observation.code.codingx")) == [("/differential/element/0/path", "fhir-profile-path")]
    assert ("/differential/element/0/path", "fhir-profile-path") in verdict(profile("Patient.name"))


def test_specialisations_and_unknown_types_are_not_resolved() -> None:
    assert verdict(profile("Observation.valueBla", derivation="specialization")) == []
    assert verdict(profile("MyModel.anything", type_="MyModel")) == []
