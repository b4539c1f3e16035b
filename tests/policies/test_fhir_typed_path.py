"""The typed path's compiled checks (policies/validators/fhir_typed.py) say what the walk says.

The typed path decodes a payload straight into generated msgspec Structs; its ``__post_init__``
code is written for speed (formats inline, wide choice groups counted in C, required
identifiers compiled per type, NHS numbers checked without building a message). Each shortcut is
held here to the reporting walk (``FhirValidator`` with ``fast = False``) on values chosen to sit
on either side of the rule: where the walk finds a violation the typed path must defer (``None``),
and where the walk finds none the typed path must answer itself (it would be correct to defer,
but then the payload pays for the walk: these tests also hold the speed-up).
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from psvn.policies.validators.common import nhs_number_ok, nhs_number_problem
from psvn.policies.validators.fhir import ANY_RESOURCE, FhirValidator, IdentifierRule, _typed_path
from psvn.policies.validators.fhir_definitions import definitions
from psvn.policies.validators.fhir_typed import carries, format_check, uncaptured

ROOT = Path(__file__).resolve().parents[2]
NHS = "https://fhir.nhs.uk/Id/nhs-number"
PATIENT = json.loads((ROOT / "examples" / "patient.json").read_text())
REFERRAL = json.loads((ROOT / "examples" / "referral.json").read_text())

#: Strings on either side of the uri, canonical, code and date/time rules.
STRINGS = [
    "http://example.org/x", "https://fhir.nhs.uk/Id/nhs-number", "HTTP://EXAMPLE.ORG", "ftp://x", "x:y",
    "relative/path", "Patient/123", "#frag", "#", "urn:uuid:0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
    "urn:uuid:0A1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4D", "urn:uuid:nope", "urn:oid:1.2.840.10008",
    "urn:oid:1.02.3", "urn:oid:", "urn:isbn:0451450523", "urn:", "1http://x", "a b", " a", "a ",
    "a\tb", "a\u00a0b", "\u200b", "caf\u00e9", "a\nb", "01", "S", "x  y", "x y", "2024-05-13T10:15:00+01:00",
    "2024-05-13T10:15:00Z", "2024-05-13", "2024-05", "2024", "0000", "2024-13-01", "2024-05-13T10:15:00",
    "2024-05-13T25:00:00Z", "2024-05-13T10:15:00.123+14:00", "2024-05-13T10:15:00+14:30", "10:15:00",
    "abc-DEF.123", "a" * 64, "a" * 65, "a_b", "-", ".",
]


#: Extension domains the validators here allow: UK Core's (the examples carry one) and the tests'.
DOMAINS = ["https://fhir.hl7.org.uk/StructureDefinition/", "https://example.org/", "https://e/"]


def walk(v: FhirValidator, data: Any) -> tuple[Any, Any]:
    """(what the typed path answers for data's bytes, what the walk finds)."""
    v.fast = True
    typed = v.check_bytes(json.dumps(data).encode())
    v.fast = False
    slow = v.check(data)
    v.fast = True
    return typed, slow


def agree(v: FhirValidator, data: Any, *, may_defer: bool = False) -> None:
    """The walk's verdict; ``may_defer``: a valid payload the typed path leaves to the walk by
    design (a '#' local reference, which only the walk resolves)."""
    typed, (violations, subjects) = walk(v, data)
    if violations:
        assert typed is None, (json.dumps(data)[:300], violations[:2])
    elif not may_defer:
        assert typed == subjects, (json.dumps(data)[:300], "the typed path deferred on a valid payload")
    else:
        assert typed in (None, subjects)


def with_value(doc: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    parent: Any = d
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return d


# the element, its JSON place in the example Patient, and its type
PLACES = [
    ("Patient.implicitRules", ["implicitRules"]),  # uri
    ("Identifier.system", ["identifier", 1, "system"]),  # uri, in a list
    ("Meta.profile", ["meta", "profile", 0]),  # canonical, in a list
    ("Coding.system", ["maritalStatus", "coding", 0, "system"]),  # uri that must be absolute
    ("Coding.code", ["maritalStatus", "coding", 0, "code"]),  # code without a required binding
    ("Patient.language", ["language"]),  # code
    ("Patient.id", ["id"]),  # id
    ("Patient.birthDate", ["birthDate"]),  # date
    ("Patient.deceasedDateTime", ["deceasedDateTime"]),  # dateTime, a choice
    ("Meta.lastUpdated", ["meta", "lastUpdated"]),  # instant
    ("Extension.valueUri", ["extension", 0, "valueUri"]),  # the 50-variant choice group
    ("Extension.valueCanonical", ["extension", 0, "valueCanonical"]),
    ("Extension.valueCode", ["extension", 0, "valueCode"]),
    ("Extension.valueDateTime", ["extension", 0, "valueDateTime"]),
    ("Extension.valueTime", ["extension", 0, "valueTime"]),
    ("Extension.url", ["extension", 0, "url"]),
]


def patient() -> dict[str, Any]:
    d = copy.deepcopy(PATIENT)
    d["identifier"].append({"system": "https://example.org/mrn", "value": "M1"})
    d["extension"] = [{"url": "https://example.org/ext", "valueString": "x"}]
    return d


@pytest.mark.parametrize(("element", "path"), PLACES, ids=[e for e, _ in PLACES])
def test_each_primitive_format_is_the_walks(element: str, path: list[Any]) -> None:
    v = FhirValidator("Patient", identifier_rules=[IdentifierRule("Patient", "identifier", NHS)],
                      extension_domains=DOMAINS)
    base = patient()
    if path[0] == "extension" and path[-1] != "url":
        del base["extension"][0]["valueString"]
    for value in STRINGS:
        agree(v, with_value(base, path, value), may_defer=value.startswith("#"))


def test_format_check_is_the_definitions_predicate() -> None:
    """format_check (for list values) accepts what the walk's own fast predicate does."""
    defs = definitions()
    for tcode in ("uri", "url", "canonical", "code", "id", "date", "dateTime", "instant", "time", "oid", "uuid"):
        regex = defs.primitives[tcode][1]
        assert regex is not None
        ours, theirs = format_check(tcode, regex), defs._fast(tcode, None)
        assert theirs is not None
        for value in STRINGS:
            if value:
                assert ours(value) == theirs(value), (tcode, value)


def test_uncaptured_patterns_match_what_the_definitions_match() -> None:
    """The typed path runs the definitions' format patterns with their groups non-capturing
    (fhir_typed.uncaptured): the same strings must match, on the rules' edge values and on random
    strings over each pattern's own alphabet."""
    defs = definitions()
    rng = random.Random(3)
    alphabet = "0123456789-:T+Z.eE abcfxyz:/#urnoiduu\t"
    samples = [*STRINGS, "2024-05-13T10:15:00.5-03:00", "1.5e10", "-0", "-01", "urn:oid:2.16.840",
               "urn:uuid:0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "true", "false", "0", "00", "10"]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 30))) for _ in range(3000)]
    for tcode, (_py, regex) in defs.primitives.items():
        if regex is None:
            continue
        fast = uncaptured(regex)
        if tcode in ("dateTime", "date", "instant", "time", "decimal", "integer", "code", "oid"):
            assert fast.pattern != regex.pattern and "(" in fast.pattern, tcode  # groups it had are uncaptured
        for value in samples:
            assert (fast.fullmatch(value) is None) == (regex.fullmatch(value) is None), (tcode, value)
        # the pattern's own matches, mutated by one character: the border of its language
        for value in [x for x in samples if regex.fullmatch(x)][:50]:
            for i in range(len(value)):
                for ch in "0919-:Z.+ a":
                    m = value[:i] + ch + value[i + 1:]
                    assert (fast.fullmatch(m) is None) == (regex.fullmatch(m) is None), (tcode, m)


def test_a_uri_that_splits_into_itself_has_the_uri_format() -> None:
    """The typed path settles a uri, url or canonical's pattern (``\\S*``) by ``v.split() == [v]``
    before it runs the pattern: whatever str.split finds no whitespace in must match ``\\S*``, on
    every character (each Unicode whitespace, the controls, the invisible ones). The converse does
    not hold (str.split also splits at \\x1c-\\x1f and \\x85, which ``\\s`` does not match): those
    run the pattern, and the verdict is the walk's."""
    uri = definitions().primitives["uri"][1]
    assert uri is not None
    for cp in [*range(0x0, 0x3001), 0x202F, 0x205F, 0x2060, 0xFEFF, 0x1680, 0x180E, 0x10FFFF]:
        ch = chr(cp)
        for v in (ch, "a" + ch, ch + "a", "http://x/" + ch + "y"):
            if v.split() == [v]:
                assert uri.fullmatch(v) is not None, (hex(cp), v)
    v = FhirValidator("Patient", extension_domains=DOMAINS)
    for value in ("http://example.org/a\u2003b", "http://example.org/a\u00a0b", "http://example.org/a\u200bb",
                  "http://example.org/a\x1cb", "http://example.org/a\x85b"):
        agree(v, with_value(patient(), ["identifier", 1, "system"], value))


@pytest.mark.parametrize("values", [
    {}, {"valueString": "x"}, {"valueBoolean": False}, {"valueInteger": 0}, {"valueCode": "a b"},
    {"valueCode": "ab"}, {"valueString": "x", "valueCode": "y"}, {"valueCodeableConcept": {"text": "x"}},
    {"valueCodeableConcept": {"text": "x"}, "valueBoolean": True},
    {"extension": [{"url": "https://e/x", "valueString": "y"}]},
    {"extension": [{"url": "https://e/x", "valueString": "y"}], "valueString": "x"}, {"id": "a", "valueString": "x"},
    {"id": "a"}, {"valueDecimal": 1.5}, {"valueBase64Binary": "aGk="}, {"valueBase64Binary": "a"},
], ids=str)
def test_the_wide_extension_choice_is_counted_as_the_walk_counts(values: dict[str, Any]) -> None:
    """Extension.value[x] (50 variants) is counted from the Struct as a tuple: one variant, or
    nested extensions instead (ext-1), never both, never neither."""
    v = FhirValidator("Patient", extension_domains=DOMAINS)
    agree(v, {**PATIENT, "extension": [{"url": "https://example.org/ext", **values}]})


def test_an_escaped_form_feed_is_left_to_the_walk() -> None:
    """JSON's \\f escape (not only \\u000c) puts a form feed in a string, which FHIR forbids."""
    v = FhirValidator("ServiceRequest")
    body = (ROOT / "examples" / "referral.json").read_bytes()
    assert v.check_bytes(body) is not None
    for escape in (rb"\f", rb"\u000c", rb"\u000B"):
        bad = body.replace(b"Lives alone", b"Lives" + escape + b"alone")
        assert v.check_bytes(bad) is None, escape
        assert v.check(json.loads(bad))[0], escape
    ok = body.replace(b"Lives alone", rb"Lives\t\"alone\"")  # other escapes stay on the typed path
    assert v.check_bytes(ok) is not None


@pytest.mark.parametrize(("rt", "doc", "element"), [
    ("ServiceRequest", REFERRAL, "subject"), ("Patient", PATIENT, "identifier"),
    ("Patient", PATIENT, "generalPractitioner"), ("Patient", PATIENT, "managingOrganization"),
    ("Patient", PATIENT, "name"), ("Patient", PATIENT, "nosuch"),
])
def test_a_compiled_required_identifier_is_carries(rt: str, doc: dict[str, Any], element: str) -> None:
    """TypedPath.carrier (compiled once per type) answers as carries() on every shape."""
    typed = _typed_path(definitions())
    variants = [doc]
    for place in (doc.get(element), *([doc[element][0]] if isinstance(doc.get(element), list) else [])):
        if isinstance(place, dict):
            for ident in (None, {"system": NHS}, {"system": NHS, "value": "9434765919"}, {"value": "9434765919"},
                          {"system": "https://other", "value": "1"}, {"system": "https://other"}):
                d = copy.deepcopy(doc)
                target = d[element][0] if isinstance(d[element], list) else d[element]
                target.pop("identifier", None)
                target.pop("system", None)
                target.pop("value", None)
                if ident is not None:
                    target.update({"identifier": ident} if element != "identifier" else ident)
                if not target:
                    target["display"] = "x"
                variants.append(d)
    for system in (NHS, "https://fhir.nhs.uk/Id/ods-organization-code", "https://other"):
        fn = typed.carrier(rt, element, system)
        for d in variants:
            got = typed.decode(rt, json.dumps(d).encode())
            if got is None:
                continue
            assert fn(got[0]) == carries(got[0], element, system), (element, system, json.dumps(d)[:200])


def test_nhs_number_ok_is_nhs_number_problem() -> None:
    rng = random.Random(7)
    values: list[object] = ["9434765919", "9434765918", "943476591", "94347659190", "943476591x", " 434765919",
                            "\uff19434765919", 9434765919, None, "", "0000000000", "4010232137",
                            "943476591\u0669", "9434\u0665765919", "94347659 9", "9434765919\n", "+434765919"]
    values += ["".join(rng.choice("0123456789") for _ in range(10)) for _ in range(5000)]
    # every valid number's check digit replaced by each other digit (one of them only is valid)
    values += [v[:9] + d for v in values[-5000:] if nhs_number_ok(v) for d in "0123456789"]
    for value in values:
        assert nhs_number_ok(value) == (nhs_number_problem(value) is None), value


def test_data_subjects_come_back_prefixed_once() -> None:
    v = FhirValidator(ANY_RESOURCE)
    d = copy.deepcopy(PATIENT)
    del d["identifier"][0]["extension"]  # a UK Core extension: the base type refuses its domain
    d["identifier"].append({"system": NHS, "value": "4010232137"})
    d["identifier"].append({"system": NHS, "value": "9434765919"})
    assert v.check_bytes(json.dumps(d).encode()) == frozenset({"nhs:9434765919", "nhs:4010232137"})
    assert v.check_bytes(json.dumps({"resourceType": "Basic", "code": {"text": "x"}}).encode()) == frozenset()
