"""UCUM codes in Quantities (policies/validators/fhir_ucum.py): a Quantity whose system is UCUM must
carry a UCUM expression; the fast paths give the walk's verdict."""

from __future__ import annotations

from typing import Any

import pytest

from psvn.policies.validators.fhir import ANY_RESOURCE, FhirValidator
from psvn.policies.validators.fhir_ucum import UCUM, ucum_valid
from tests.policies.walk_verdict import held_verdict


@pytest.mark.parametrize("code", ["mm[Hg]", "mm[Hg]{hg}", "kg/m2", "/min", "{beats}/min", "10*3/uL", "Cel", "%",
                                  "1", "[lb_av]", "kg.m-2", "mg/dL"])
def test_ucum_expressions_parse(code: str) -> None:
    assert ucum_valid(code)


@pytest.mark.parametrize("code", ["fmm[Hg]", "mmm", "foo", "m(", "", "mm Hg", "kg//m"])
def test_what_is_not_ucum_does_not(code: str) -> None:
    assert not ucum_valid(code)


def observation(code: str, system: str = UCUM) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "BP"},
            "valueQuantity": {"value": 120, "unit": "mmHg", "system": system, "code": code}}


def verdict(data: dict[str, Any]) -> list[tuple[str, str]]:
    return held_verdict(FhirValidator(ANY_RESOURCE), data)


def test_a_quantity_with_a_ucum_code_is_valid_and_a_bad_one_is_refused() -> None:
    assert verdict(observation("mm[Hg]")) == []
    assert verdict(observation("fmm[Hg]")) == [("/valueQuantity/code", "fhir-ucum")]
    assert verdict(observation("fmm[Hg]", system="http://example.org/units")) == []  # not UCUM: not checked
