"""Code-system semantics without a terminology server (policies/validators/fhir_terminology.py):
each rule on a good and a bad input, through the walk and both fast paths."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from psvn.policies.validators.fhir import ANY_RESOURCE, FhirValidator
from psvn.policies.validators.fhir_terminology import (
    SNOMED,
    code_problem,
    fhirpath_syntax,
    sctid_problem,
    snomed_code_ok,
    verhoeff_valid,
)

ROOT = Path(__file__).resolve().parents[2]


def verdicts(data: dict[str, Any]) -> list[tuple[str, str]]:
    """The walk's (path, rule) list; neither fast path may say valid where the walk does not (they
    may defer, e.g. on a primitive's ``_value`` extension)."""
    v = FhirValidator(ANY_RESOURCE)
    v.fast = False
    found = v.check(data)[0]
    v.fast = True
    typed = v.check_bytes(json.dumps(data).encode())
    fast = v._fast_check(copy.deepcopy(data))
    if found:
        assert typed is None and fast is None, "a fast path says valid where the walk does not"
    return [(x.path, x.rule) for x in found]


def observation(*codings: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"coding": list(codings)}}


# -- SNOMED CT identifiers -------------------------------------------------------------------
@pytest.mark.parametrize("code", ["276885007", "404684003", "138875005", "22298006", "3457005", "306206005",
                                  "900000000000207008", "32506021000036107", "731000124108",
                                  "1240581000000104", "999000691000001104"])
def test_real_sctids_are_accepted(code: str) -> None:
    assert sctid_problem(code) is None
    assert verdicts(observation({"system": "http://snomed.info/sct", "code": code})) == []


@pytest.mark.parametrize(("code", "why"), [("1", "6 to 18 digits"), ("12345", "6 to 18 digits"),
                                           ("276885007x", "digits only"), ("276885008", "Verhoeff"),
                                           ("0276885007", "leading zero"), ("123456789", "partition"),
                                           ("1234567890123456789", "6 to 18 digits")])
def test_malformed_sctids_are_refused(code: str, why: str) -> None:
    problem = sctid_problem(code)
    assert problem is not None and why in problem
    assert verdicts(observation({"system": "http://snomed.info/sct", "code": code})) == [
        ("/code/coding/0/code", "fhir-code-unknown")]


def test_a_snomed_expression_is_left_alone() -> None:
    for expr in ("83152002:405815000=122456005", "64572001 |Disease|", "<<404684003"):
        assert sctid_problem(expr) is None


def test_verhoeff() -> None:
    assert verhoeff_valid("2363") and not verhoeff_valid("2364")


def test_verhoeff_by_chunks_is_the_textbook_check() -> None:
    """verhoeff_valid (three digits at a time, by table) against the check written digit by
    digit from its definition, on every length an SCTID can have and beyond."""
    d = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
         [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
         [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
         [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]  # D5, as published
    p = [list(range(10)), [1, 5, 7, 6, 2, 8, 3, 0, 9, 4]]
    for _ in range(6):
        p.append([p[1][x] for x in p[-1]])

    def textbook(digits: str) -> bool:
        c = 0
        for i, ch in enumerate(reversed(digits)):
            c = d[c][p[i % 8][int(ch)]]
        return c == 0

    rng = random.Random(5)
    for n in range(1, 21):
        for _ in range(300):
            digits = "".join(rng.choice("0123456789") for _ in range(n))
            assert verhoeff_valid(digits) == textbook(digits), digits
    assert textbook("2363") and textbook("306206005") and not textbook("306206004")


def test_every_snomed_code_of_the_examples_and_corpus_is_a_valid_sctid() -> None:
    codes: set[str] = set()

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            if o.get("system") == "http://snomed.info/sct" and isinstance(o.get("code"), str):
                codes.add(o["code"])
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    for p in [*ROOT.glob("examples/*.json"), *ROOT.glob("tests/policies/corpus/**/*.json")]:
        try:
            walk(json.loads(p.read_text()))
        except ValueError:
            continue
    assert codes and all(sctid_problem(c) is None for c in codes), sorted(c for c in codes if sctid_problem(c))


# -- the core code systems -------------------------------------------------------------------
def test_a_code_of_a_core_code_system_is_checked_whatever_the_binding() -> None:
    contract = {"resourceType": "Contract",
                "legalState": {"coding": [{"system": "http://hl7.org/fhir/contract-legalstate", "code": "amended"}]}}
    assert verdicts(contract) == []
    contract["legalState"]["coding"][0]["code"] = "invalid-code-test"
    assert verdicts(contract) == [("/legalState/coding/0/code", "fhir-code-unknown")]
    # another version of the code system: not known here, so not decided
    contract["legalState"]["coding"][0]["version"] = "5.0.0"
    assert verdicts(contract) == []


def test_terminology_hl7_org_code_systems_are_not_checked() -> None:
    """THO code systems move on past R4's copies: the reference reads their current versions."""
    obs = observation({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "NEW-IN-THO"})
    assert verdicts(obs) == []


# -- CodeSystem ------------------------------------------------------------------------------
def codesystem(**kw: Any) -> dict[str, Any]:
    return {"resourceType": "CodeSystem", "url": "http://example.org/cs", "status": "active",
            "content": "complete", **kw}


def test_a_supplement_has_content_supplement() -> None:
    good = codesystem(content="supplement", supplements="http://loinc.org", concept=[{"code": "x"}])
    assert verdicts(good) == []
    assert verdicts({**good, "content": "complete"}) == [("/content", "fhir-codesystem")]
    assert verdicts({**good, "caseSensitive": True}) == [("/caseSensitive", "fhir-codesystem")]
    no_base = dict(good)
    del no_base["supplements"]
    assert verdicts(no_base) == [("/supplements", "fhir-codesystem")]


def test_count_of_a_complete_code_system() -> None:
    concepts = [{"code": "a", "concept": [{"code": "b"}]}]
    assert verdicts(codesystem(count=2, concept=concepts)) == []
    assert verdicts(codesystem(count=1, concept=concepts)) == [("/count", "fhir-codesystem")]
    assert verdicts(codesystem(content="not-present", concept=concepts)) == [("/concept/0", "fhir-codesystem")]


def test_standard_concept_properties_keep_their_type_and_code() -> None:
    uri = "http://hl7.org/fhir/concept-properties#notSelectable"
    good = codesystem(property=[{"uri": uri, "code": "notSelectable", "type": "boolean"}],
                      concept=[{"code": "a", "property": [{"code": "notSelectable", "valueBoolean": True}]}])
    assert verdicts(good) == []
    bad = copy.deepcopy(good)
    bad["property"][0]["type"] = "dateTime"
    assert verdicts(bad) == [("/property/0/type", "fhir-codesystem"),
                             ("/concept/0/property/0/valueBoolean", "fhir-codesystem")]
    bad = copy.deepcopy(good)
    bad["property"][0]["code"] = "inactive"
    assert ("/property/0/code", "fhir-codesystem") in verdicts(bad)
    bad = copy.deepcopy(good)
    bad["property"][0]["uri"] = "http://hl7.org/fhir/concept-properties#madeUp"
    assert verdicts(bad) == [("/property/0/uri", "fhir-codesystem")]


def test_property_uris_and_codes_are_unique() -> None:
    props = [{"code": "weight", "type": "decimal"}, {"code": "weight", "type": "integer"}]
    assert verdicts(codesystem(property=props)) == [("/property/1/code", "fhir-codesystem")]
    props = [{"uri": "http://example.org/p", "code": "p1", "type": "string"},
             {"uri": "http://example.org/p", "code": "p2", "type": "string"}]
    assert verdicts(codesystem(property=props)) == [("/property/1/uri", "fhir-codesystem")]


# -- ValueSet ----------------------------------------------------------------------------------
def valueset(expression: str, language: str = "text/fhirpath") -> dict[str, Any]:
    return {"resourceType": "ValueSet", "url": "http://example.org/vs", "status": "active",
            "extension": [{"url": "http://hl7.org/fhir/tools/StructureDefinition/valueset-parameter",
                           "extension": [{"url": "name", "valueCode": "p-inactive"}]}],
            "compose": {"include": [{"system": "http://snomed.info/sct", "filter": [{
                "property": "inactive", "op": "=", "_value": {"extension": [{
                    "url": "http://hl7.org/fhir/StructureDefinition/cqf-expression",
                    "valueExpression": {"language": language, "expression": expression}}]}}]}]}}


EXPR = "/compose/include/0/filter/0/_value/extension/0/valueExpression"


def test_a_filter_expression_is_fhirpath_over_declared_parameters() -> None:
    assert verdicts(valueset("%p-inactive")) == []
    assert verdicts(valueset("%p-inactive and true")) == []
    assert verdicts(valueset("%p-inactive3")) == [(f"{EXPR}/expression", "fhir-valueset-expression")]
    assert verdicts(valueset("$ and %p-inactive")) == [(f"{EXPR}/expression", "fhir-valueset-expression")]
    assert verdicts(valueset("%p-inactive", "text/cql")) == [(f"{EXPR}/language", "fhir-valueset-expression")]


def test_fhirpath_syntax() -> None:
    assert fhirpath_syntax("Patient.name.where(use = 'official').given.first()") == ([], None)
    assert fhirpath_syntax("%a-b = %`c d` and '%not'") == (["a-b", "c d"], None)
    for bad in ("1 +", "a b", "$ and x", "where(", ")"):
        assert fhirpath_syntax(bad)[1] is not None, bad


def test_valueset_concepts_are_checked_against_their_code_system() -> None:
    vs = {"resourceType": "ValueSet", "url": "http://example.org/vs", "status": "active",
          "compose": {"include": [{"system": "http://snomed.info/sct", "concept": [{"code": "22298006"}]},
                                  {"system": "http://hl7.org/fhir/contract-legalstate",
                                   "concept": [{"code": "amended"}]}]}}
    assert verdicts(vs) == []
    vs["compose"]["include"][0]["concept"].append({"code": "1"})
    vs["compose"]["include"][1]["concept"].append({"code": "nope"})
    assert verdicts(vs) == [("/compose/include/0/concept/1/code", "fhir-code-unknown"),
                            ("/compose/include/1/concept/1/code", "fhir-code-unknown")]


def snomed_filters(*filters: dict[str, str]) -> dict[str, Any]:
    return {"resourceType": "ValueSet", "status": "draft",
            "compose": {"include": [{"system": "http://snomed.info/sct", "filter": list(filters)}]}}


def test_a_snomed_concept_filter_names_sctids() -> None:
    good = snomed_filters({"property": "concept", "op": "is-a", "value": "404684003"},
                          {"property": "concept", "op": "in", "value": "22298006, 73211009"},
                          {"property": "constraint", "op": "=", "value": "<< 404684003"},
                          {"property": "parent", "op": "=", "value": "something"})
    assert verdicts(good) == []
    bad = snomed_filters({"property": "concept", "op": "is-a", "value": "something"},
                         {"property": "concept", "op": "descendent-of", "value": "276885008"},
                         {"property": "concept", "op": "not-in", "value": "22298006,x y"})
    assert verdicts(bad) == [(f"/compose/include/0/filter/{i}/value", "fhir-valueset-filter") for i in range(3)]
    other = {"resourceType": "ValueSet", "status": "draft", "compose": {"include": [
        {"system": "http://loinc.org", "filter": [{"property": "concept", "op": "is-a", "value": "LP1-2"}]}]}}
    assert verdicts(other) == []


def _with_check_digit(body: str) -> str:
    """``body`` and the digit that makes its Verhoeff check hold."""
    return next(body + d for d in "0123456789" if verhoeff_valid(body + d))


def test_the_fast_paths_snomed_check_is_code_problem() -> None:
    """snomed_code_ok (one straight-line check per length, whose tables refuse by KeyError what
    no SCTID can hold) says what code_problem says, on every length an SCTID may have and beyond,
    and on each way a code can be malformed; and the typed path answers valid SCTIDs itself."""
    rng = random.Random(11)
    codes: list[Any] = [None, 5, "", "0", "3457005", "306206005", "0306206005", "276885007x", "27688\u0665007",
                        "83152002:405815000=122456005", "<<404684003", "1234567890123456789"]
    for n in range(1, 21):
        for _ in range(200):
            body = rng.choice("123456789") + "".join(rng.choice("0123456789") for _ in range(max(0, n - 4)))
            part = rng.choice(["00", "01", "02", "10", "11", "16", "06", "17", "20", "99"])
            code = _with_check_digit(body + part)[:n] if n >= 3 else body[:n]
            leading_zero = _with_check_digit("0" + body[1:] + part)[:n] if n >= 3 else "0" + body[1:n]
            codes += [code, code[:-1] + str((int(code[-1]) + 1) % 10), leading_zero, code[:-2] + "\u0661" + code[-1:]]
    for code in codes:
        assert snomed_code_ok(code) == (code_problem(SNOMED, code) is None), code
    v = FhirValidator("Observation")
    for n in (6, 7, 9, 12, 18):
        code = _with_check_digit("1" * (n - 3) + "10")
        body = json.dumps(observation({"system": SNOMED, "code": code})).encode()
        assert v.check_bytes(body) is not None, code  # no deferral to the walk for a valid SCTID


def test_filter_expressions_parsed_per_payload_are_bounded() -> None:
    """FHIRPath filter expressions share the payload's parse budget: past it they are accepted
    unjudged (a ValueSet of thousands cannot hold the event loop); the next payload is judged."""
    from psvn.policies.validators.budget import BUDGET
    from psvn.policies.validators.fhir_terminology import FHIRPATH_PARSE_COST

    def flt(expression: str) -> dict[str, Any]:
        return {"property": "concept", "op": "=", "_value": {"extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/cqf-expression",
             "valueExpression": {"language": "text/fhirpath", "expression": expression}}]}}

    good, bad = flt("%a and %a"), flt("%a and and")
    n = BUDGET // (FHIRPATH_PARSE_COST + len("%a and %a")) + 1
    vs = {"resourceType": "ValueSet", "status": "draft", "extension": [
        {"url": "http://hl7.org/fhir/tools/StructureDefinition/valueset-parameter",
         "extension": [{"url": "name", "valueCode": "a"}]}],
        "compose": {"include": [{"system": "http://example.org/cs", "filter": [good] * n + [bad]}]}}
    assert verdicts(vs) == []  # the bad one came after the budget: not judged
    vs["compose"]["include"][0]["filter"] = [bad] + [good] * n
    assert verdicts(vs) == [("/compose/include/0/filter/0/_value/extension/0/valueExpression/expression",
                             "fhir-valueset-expression")]
