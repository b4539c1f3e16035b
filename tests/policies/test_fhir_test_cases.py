"""psvn against the official FHIR validator test suite (``FHIR/fhir-test-cases``, Apache-2.0).

Every R4 base-specification case vendored in ``fhir_test_cases/`` (see its README) is validated
as the catalogue type ``fhir.r4.Resource`` (any R4 resource, base specification only), JSON or
XML as the case is written, and compared with the Java reference validator's verdict. A case
that sets validator options runs under a copy of that type whose ``modes`` table carries them in
psvn's words (``fhir_modes.REFERENCE_OPTIONS``). The cases where psvn and the reference disagree
are listed, each with its reason, in ``fhir_test_cases/disagreements.toml``: a disagreement not
listed fails, and so does a listed one that has started to agree (so the list cannot rot).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from policies import bundle
from policies.catalogue import Catalogue
from policies.validation import PayloadValidator
from policies.validators.fhir_modes import from_reference_options

HERE = Path(__file__).resolve().parent / "fhir_test_cases"
SUITE: dict[str, Any] = json.loads((HERE / "cases.json").read_text())
CASES: list[dict[str, Any]] = SUITE["cases"]
DISAGREE: dict[str, dict[str, str]] = tomllib.loads((HERE / "disagreements.toml").read_text())["case"]
REASONS = {"terminology", "definitions", "invariant", "rule", "option", "uk-core"}
TYPE = "fhir.r4.Resource"


def _domains(case: dict[str, Any]) -> list[str]:
    """The case's ``allowed-extension-domain``: the catalogue type's ``extension_domains``."""
    domain = case["options"].get("allowed-extension-domain")
    return [domain] if domain else []


def mode_type(case: dict[str, Any]) -> str:
    """The catalogue type a case runs under: ``fhir.r4.Resource``, or for a case that sets
    reference-validator options, a copy of it whose ``modes`` table carries their psvn names (and
    whose ``extension_domains`` carry its allowed extension domain)."""
    modes = from_reference_options(case["options"])
    parts = [f"{k}={v}" for k, v in sorted(modes.items())] + [f"ext={d}" for d in _domains(case)]
    return TYPE if not parts else TYPE + "+" + ",".join(parts)


def _validator() -> PayloadValidator:
    doc = bundle.load_dir()
    for case in CASES:
        name = mode_type(case)
        if name != TYPE:
            doc["catalogue"][name] = {**doc["catalogue"][TYPE], "modes": from_reference_options(case["options"]),
                                      "extension_domains": _domains(case)}
    return PayloadValidator(Catalogue.from_document(doc), doc["schemas"])


V = _validator()


def psvn_valid(case: dict[str, Any]) -> tuple[bool, list[str]]:
    body = (HERE / "cases" / case["file"]).read_bytes()
    xml = case["file"].endswith(".xml")
    out = V.validate(mode_type(case), body, content_type="application/fhir+xml" if xml else "application/fhir+json")
    return not out, [f"{v.path} {v.rule}: {v.message}" for v in out]


def test_the_suite_is_vendored_whole() -> None:
    assert len(CASES) == 189 and len({c["name"] for c in CASES}) == len(CASES)
    assert "Apache License" in (HERE / "LICENSE.txt").read_text()
    assert {c["file"].rsplit(".", 1)[1] for c in CASES} >= {"json", "xml"}


def test_every_listed_disagreement_has_a_known_reason() -> None:
    names = {c["name"] for c in CASES}
    assert set(DISAGREE) <= names, set(DISAGREE) - names
    for name, d in DISAGREE.items():
        assert d["reason"] in REASONS and d["why"], name


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case_agrees_with_the_reference_validator_or_is_listed(case: dict[str, Any]) -> None:
    ok, found = psvn_valid(case)
    agrees = ok == case["valid"]
    listed = case["name"] in DISAGREE
    if listed:
        assert not agrees, f"{case['name']} now agrees with the reference: remove it from disagreements.toml"
    else:
        assert agrees, (f"{case['name']}: reference says {'valid' if case['valid'] else 'invalid'} "
                        f"{case['errors'][:3]}, psvn says {found[:3] or 'valid'}")


def test_agreement_figure() -> None:
    """The share of cases on which psvn gives the reference verdict (the README's figure)."""
    agree = len(CASES) - len(DISAGREE)
    assert agree / len(CASES) >= 0.95, f"{agree}/{len(CASES)}"
