"""The corpus: real-shaped valid and invalid messages per standard, each invalid one with the
exact path and rule the validator must report (tests/policies/corpus/manifest.toml)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from psvn.policies.bundle import load_dir
from psvn.policies.catalogue import Catalogue
from psvn.policies.validation import PayloadValidator

CORPUS = Path(__file__).parent / "corpus"
CASES = tomllib.loads((CORPUS / "manifest.toml").read_text())["case"]
DOC = load_dir()
VALIDATOR = PayloadValidator(Catalogue.from_document(DOC), DOC["schemas"])


def test_corpus_covers_every_standard_with_valid_and_invalid_cases() -> None:
    kinds = {(c["file"].split("/")[0], bool(c["violations"])) for c in CASES}
    for std in ("fhir", "hl7v2", "cloudevents", "openreferral", "jsonschema"):
        assert (std, False) in kinds and (std, True) in kinds, std
    assert {c["type"] for c in CASES} >= {"fhir.r4.Patient", "fhir.r4.ServiceRequest", "fhir.r4.Bundle",
                                          "hl7v2.ADT_A01", "cloudevents.v1", "openreferral.uk.Service",
                                          "psvn.address-change"}


def assert_matches_case(case: dict, got: list) -> None:  # type: ignore[type-arg]
    """The corpus contract, for JSON and XML alike: exactly (or at least) the listed (path, rule)
    pairs, and every violation actionable: a rule, a message and what was expected."""
    pairs = [(v.path, v.rule) for v in got]
    expected = [tuple(p) for p in case["violations"]]
    if not expected:
        assert got == [], f"{case['file']} should be valid, got {got}"
        return
    if case["exact"]:
        assert sorted(pairs) == sorted(expected), got
    else:
        assert set(expected) <= set(pairs), got
    for v in got:
        assert v.rule and v.message and v.expected, v


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_corpus_case(case: dict) -> None:
    assert_matches_case(case, VALIDATOR.validate(case["type"], (CORPUS / case["file"]).read_bytes()))
