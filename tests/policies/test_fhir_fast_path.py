"""The compiled fast path (policies/validators/fhir_fast.py) decides only "valid", and exactly when
the full walk finds nothing: same violations, same data subjects, on every FHIR payload the tests
hold (the corpus, the examples, the official suite's JSON cases) and on every one-value mutation
of the valid ones."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from psvn.policies.validators.fhir import ANY_RESOURCE, FhirValidator, IdentifierRule

ROOT = Path(__file__).resolve().parents[2]
NHS = "https://fhir.nhs.uk/Id/nhs-number"
UK_RULES = [IdentifierRule("ServiceRequest", "subject", NHS), IdentifierRule("Patient", "identifier", NHS)]
# the UK types' extension domains (policies/default/catalogue.toml): UK Core and NHS England extensions
UK_DOMAINS = ["https://fhir.hl7.org.uk/StructureDefinition/", "https://fhir.nhs.uk/StructureDefinition/"]


def payloads() -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for path in sorted((ROOT / "tests" / "policies" / "corpus" / "fhir").rglob("*.json")) + \
            sorted((ROOT / "examples").glob("*.json")):
        try:
            out.append((path.name, json.loads(path.read_text())))
        except ValueError:
            continue
    cases = ROOT / "tests" / "policies" / "fhir_test_cases" / "cases"
    for path in sorted(cases.glob("*.json")):
        try:
            out.append((path.name, json.loads(path.read_text())))
        except ValueError:
            continue
    return [(n, d) for n, d in out if isinstance(d, dict)]


PAYLOADS = payloads()
BAD_VALUES: list[Any] = [None, "", 7, 1.5, True, [], {}, "two  spaces ", {"id": "x"}, ["x"], "#x", "urn:uuid:X"]


def both(v: FhirValidator, data: Any) -> tuple[Any, Any]:
    v.fast = True
    fast = v.check(data)
    v.fast = False
    slow = v.check(data)
    v.fast = True
    return fast, slow


def validators() -> list[FhirValidator]:
    return [FhirValidator(ANY_RESOURCE),
            FhirValidator(ANY_RESOURCE, identifier_rules=UK_RULES, extension_domains=UK_DOMAINS)]


def mutations(doc: Any, limit: int = 200) -> Iterator[Any]:
    """Each leaf (and each object) of ``doc`` replaced by each bad value, one at a time."""
    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, at: tuple[Any, ...]) -> None:
        if isinstance(node, dict):
            for k, val in node.items():
                paths.append((*at, k))
                walk(val, (*at, k))
        elif isinstance(node, list):
            for i, val in enumerate(node):
                paths.append((*at, i))
                walk(val, (*at, i))

    walk(doc, ())
    n = 0
    for path in paths:
        for bad in BAD_VALUES:
            d = copy.deepcopy(doc)
            parent = d
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]] = copy.deepcopy(bad)
            yield d
            n += 1
            if n >= limit:
                return


@pytest.mark.parametrize(("name", "data"), PAYLOADS, ids=[n for n, _ in PAYLOADS])
def test_fast_path_gives_the_full_walks_verdict(name: str, data: Any) -> None:
    for v in validators():
        fast, slow = both(v, data)
        assert fast == slow, name


VALID = [(n, d) for n, d in PAYLOADS
         if d.get("resourceType") != "Bundle" and not FhirValidator(ANY_RESOURCE).validate(d)]


@pytest.mark.parametrize(("name", "data"), VALID[:12], ids=[n for n, _ in VALID[:12]])
def test_fast_path_gives_the_full_walks_verdict_on_every_mutation(name: str, data: Any) -> None:
    v = FhirValidator(ANY_RESOURCE, identifier_rules=UK_RULES, extension_domains=UK_DOMAINS)
    for d in mutations(data):
        fast, slow = both(v, d)
        assert fast == slow, (name, json.dumps(d)[:300])


def test_the_fast_path_is_taken_for_a_valid_referral() -> None:
    v = FhirValidator("ServiceRequest", identifier_rules=UK_RULES, extension_domains=UK_DOMAINS)
    data = json.loads((ROOT / "examples" / "referral.json").read_text())
    assert v._fast_check(data) == frozenset({"nhs:9434765919"})
    data["status"] = "whenever"
    assert v._fast_check(data) is None and v.check(data)[0]


def typed_vs_slow(v: FhirValidator, data: Any) -> tuple[Any, Any]:
    typed = v.check_bytes(json.dumps(data).encode())
    v.fast = False
    slow = v.check(data)
    v.fast = True
    return typed, slow


def typed_validators(rt: str) -> list[FhirValidator]:
    return [FhirValidator(rt), FhirValidator(rt, identifier_rules=UK_RULES, extension_domains=UK_DOMAINS),
            FhirValidator(ANY_RESOURCE)]


TYPED = [(n, d) for n, d in PAYLOADS if isinstance(d.get("resourceType"), str)
         and FhirValidator(ANY_RESOURCE).defs.is_resource(d["resourceType"])]


@pytest.mark.parametrize(("name", "data"), TYPED, ids=[n for n, _ in TYPED])
def test_typed_path_says_valid_only_when_the_full_walk_does(name: str, data: Any) -> None:
    """The typed path (decoded from the bytes) answers valid with the walk's subjects, or defers."""
    for v in typed_validators(data["resourceType"]):
        typed, slow = typed_vs_slow(v, data)
        assert typed is None or slow == ([], typed), (name, typed, slow[0][:3])


@pytest.mark.parametrize(("name", "data"), VALID[:12], ids=[n for n, _ in VALID[:12]])
def test_typed_path_on_every_mutation(name: str, data: Any) -> None:
    v = FhirValidator(data["resourceType"], identifier_rules=UK_RULES, extension_domains=UK_DOMAINS)
    for d in mutations(data):
        typed, slow = typed_vs_slow(v, d)
        assert typed is None or slow == ([], typed), (name, json.dumps(d)[:300], slow[0][:2])


def test_the_typed_path_takes_the_referral_and_patient() -> None:
    for rt, name in (("ServiceRequest", "referral.json"), ("Patient", "patient.json")):
        v = FhirValidator(rt, identifier_rules=UK_RULES, extension_domains=UK_DOMAINS)
        assert v.check_bytes((ROOT / "examples" / name).read_bytes()) == frozenset({"nhs:9434765919"}), rt
