"""Validator modes of a FHIR catalogue type (policies/validators/fhir_modes.py): each mode is set
as data under the type in the policy set, checked when the policy set is compiled, and changes
exactly what it says -- while a type without modes validates as before. The fast paths, which
know no modes, must still give the walk's verdict for a type with modes."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from psvn.core.errors import PsvnError
from psvn.policies import bundle
from psvn.policies.catalogue import Catalogue
from psvn.policies.validation import PayloadValidator
from psvn.policies.validators.fhir import ANY_RESOURCE, FhirValidator
from psvn.policies.validators.fhir_modes import (
    MODE_KEYS,
    FhirModes,
    from_reference_options,
    strip_json_comments,
)

from .test_fhir_fast_path import PAYLOADS

BASE = "fhir.r4.Resource"
NHS = "https://fhir.nhs.uk/Id/nhs-number"


def _doc(**modes: Any) -> dict[str, Any]:
    doc = bundle.load_dir()
    doc["catalogue"]["test.Modes"] = {**doc["catalogue"][BASE], "modes": modes}
    return doc


def validator(**modes: Any) -> PayloadValidator:
    doc = _doc(**modes)
    return PayloadValidator(Catalogue.from_document(doc), doc["schemas"])


def rules(v: PayloadValidator, type_: str, payload: Any) -> list[str]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return [x.rule for x in v.validate(type_, body)]


def patient(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", "name": [{"family": "Smith", "text": "Jo Smith"}], **extra}


# -- the policy set ------------------------------------------------------------------------------
def test_a_type_without_modes_has_none_and_shows_none() -> None:
    cat = Catalogue.from_document(bundle.load_dir())
    assert cat.get(BASE).modes is None and "modes" not in cat.get(BASE).summary()


def test_modes_are_read_from_the_catalogue_and_shown() -> None:
    entry = Catalogue.from_document(_doc(reject_html_in_text=True)).get("test.Modes")
    assert entry.modes == FhirModes(reject_html_in_text=True)
    assert entry.summary()["modes"]["reject_html_in_text"] is True


def test_an_unknown_mode_is_refused_when_the_policy_set_is_compiled_naming_it() -> None:
    with pytest.raises(PsvnError) as exc:
        Catalogue.from_document(_doc(security_checks=True))
    assert exc.value.field == "catalogue.test.Modes.modes.security_checks"
    assert "security_checks" in str(exc.value) and "reject_html_in_text" in str(exc.value)


def test_a_mode_must_be_a_boolean() -> None:
    with pytest.raises(PsvnError) as exc:
        Catalogue.from_document(_doc(example_urls="no"))
    assert exc.value.field == "catalogue.test.Modes.modes.example_urls"


def test_modes_are_only_for_fhir_types() -> None:
    doc = bundle.load_dir()
    doc["catalogue"]["hl7v2.ADT_A01"]["modes"] = {"json_comments": True}
    with pytest.raises(PsvnError) as exc:
        Catalogue.from_document(doc)
    assert exc.value.field == "catalogue.hl7v2.ADT_A01.modes"


def test_the_defaults_are_the_reference_validators() -> None:
    assert from_reference_options({}) == {}
    assert FhirModes() == FhirModes(**{k: getattr(FhirModes(), k) for k in MODE_KEYS})
    assert from_reference_options({"examples": True, "validateContains": "CHECK_VALID"}) == {}
    assert from_reference_options({"security-checks": True, "for-publication": "true"}) == \
        {"reject_html_in_text": True, "hl7_publication": True}
    assert from_reference_options({"validateReference": "CHECK_EXISTS_AND_TYPE", "no-experimental-content": True,
                                   "best-practice": "Warning"}) == \
        {"resolve_references": True, "experimental_content": False}
    with pytest.raises(KeyError):
        from_reference_options({"no-such-option": True})


# -- each mode -----------------------------------------------------------------------------------
def test_reject_html_in_text() -> None:
    v = validator(reject_html_in_text=True)
    bad = patient(name=[{"text": "Jo <script>alert(1)</script>"}])
    assert rules(v, "test.Modes", bad) == ["fhir-html-in-text"]
    assert rules(v, BASE, bad) == []
    assert rules(v, "test.Modes", patient(name=[{"text": "a < b and c > d, <3"}])) == []
    for tag in ("see <a href='x'>", "<img/src=x onerror=y>", "x <b>"):
        assert rules(v, "test.Modes", patient(name=[{"text": tag}])) == ["fhir-html-in-text"], tag
    div = '<div xmlns="http://www.w3.org/1999/xhtml"><p>ok</p><table border="1"><tr><td>x</td></tr></table></div>'
    assert rules(v, "test.Modes", patient(text={"status": "generated", "div": div})) == []
    for unsafe in ("<script>x</script>", '<p onclick="x()">x</p>', "<iframe src='x'/>", "<script/x>y</script>"):
        div = f'<div xmlns="http://www.w3.org/1999/xhtml">text {unsafe}</div>'
        assert rules(v, "test.Modes", patient(text={"status": "generated", "div": div})) == ["fhir-unsafe-narrative"]


def test_example_urls_refused() -> None:
    v = validator(example_urls=False)
    bad = patient(identifier=[{"system": "http://example.org/ids", "value": "1"}])
    assert rules(v, "test.Modes", bad) == ["fhir-example-url"]
    assert rules(v, BASE, bad) == []
    assert rules(v, "test.Modes", patient(identifier=[{"system": "urn:oid:2.999.1", "value": "1"}])) == \
        ["fhir-example-url"]
    assert rules(v, "test.Modes", patient(identifier=[{"system": "https://fhir.nhs.uk/Id/local", "value": "1"}])) == []
    # a canonical resource's own url defines it: not a link to an example
    cs = {"resourceType": "CodeSystem", "url": "http://example.org/cs", "status": "draft", "content": "not-present"}
    assert rules(v, "test.Modes", cs) == []


def test_resolve_references() -> None:
    v = validator(resolve_references=True)
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient/1"}}
    assert rules(v, "test.Modes", obs) == ["fhir-reference-unresolved"]
    assert rules(v, BASE, obs) == []
    contained = {**obs, "subject": {"reference": "#p"}, "contained": [patient(id="p")]}
    assert rules(v, "test.Modes", contained) == []
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "p", "resource": patient(id="1")},
        {"name": "o", "part": [{"name": "obs", "resource": obs}]}]}
    assert rules(v, "test.Modes", params) == []
    params["parameter"][0]["resource"]["id"] = "2"
    assert rules(v, "test.Modes", params) == ["fhir-reference-unresolved"]
    coll = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:0c2d5b8e-7a8e-4c59-9a0e-3f0f4c7a2a11", "resource": obs}]}
    assert rules(v, BASE, coll) == []
    assert rules(v, "test.Modes", coll) == ["fhir-bundle-reference-unresolved"]


def test_validate_contained_off_still_finds_data_subjects() -> None:
    v = validator(validate_contained=False)
    nhs = {"system": NHS, "value": "9434765919"}
    res = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "#p"},
           "contained": [{"resourceType": "Patient", "id": "p", "identifier": [nhs], "gender": "nope"},
                         {"resourceType": "Practitioner", "id": "orphan"}]}
    body = json.dumps(res).encode()
    assert sorted(rules(v, BASE, res)) == ["fhir-binding", "fhir-invariant"]
    checked = v.check("test.Modes", body)
    assert checked.ok and checked.subjects == {"nhs:9434765919"}
    res["subject"] = {"reference": "#nobody"}  # a '#' reference must still name a contained resource
    assert rules(v, "test.Modes", res) == ["fhir-reference-unresolved"]


def test_reject_html_in_markdown() -> None:
    v = validator(reject_html_in_markdown=True)
    comm = {"resourceType": "Communication", "status": "completed", "note": [{"text": "<b>bold</b>"}]}
    assert rules(v, "test.Modes", comm) == ["fhir-html-in-markdown"]
    assert rules(v, BASE, comm) == []
    for fine in ("\\<b>escaped\\</b>", "a < b", "**bold**"):
        comm["note"][0]["text"] = fine
        assert rules(v, "test.Modes", comm) == [], fine
    comm["note"][0]["text"] = "x <!-- comment -->"
    assert rules(v, "test.Modes", comm) == ["fhir-html-in-markdown"]


def test_json_comments_only_in_their_mode() -> None:
    v = validator(json_comments=True)
    body = b'// a comment\n{"resourceType": "Patient", // here too\n "identifier": [{"system": "http://x.org/a//b", ' \
           b'"value": "1"}]}'
    assert rules(v, "test.Modes", body) == []
    assert rules(v, BASE, body) == ["json-syntax"]
    assert json.loads(strip_json_comments(body))["identifier"][0]["system"] == "http://x.org/a//b"
    assert rules(v, "test.Modes", b'{"resourceType": "Patient", "gender": "nope"} // c') == ["fhir-binding"]


def test_hl7_publication() -> None:
    v = validator(hl7_publication=True)
    cs = {"resourceType": "CodeSystem", "url": "http://hl7.org/fhir/x-status", "status": "draft",
          "content": "not-present"}
    assert rules(v, "test.Modes", cs) == ["fhir-hl7-publication"]
    assert rules(v, BASE, cs) == []
    wg = {"url": "http://hl7.org/fhir/StructureDefinition/structuredefinition-wg", "valueCode": "fhir"}
    assert rules(v, "test.Modes", {**cs, "extension": [wg]}) == []
    assert rules(v, "test.Modes", {**cs, "url": "https://fhir.nhs.uk/CodeSystem/x"}) == []


def test_experimental_content_refused() -> None:
    v = validator(experimental_content=False)
    vs = {"resourceType": "ValueSet", "status": "draft", "experimental": True}
    assert rules(v, "test.Modes", vs) == ["fhir-experimental"]
    assert rules(v, BASE, vs) == []
    assert rules(v, "test.Modes", {**vs, "experimental": False}) == []


def test_escaped_characters_do_not_slip_past_the_fast_paths() -> None:
    """The typed path decides from the bytes: a JSON escape must not hide what a mode looks for."""
    v = validator(reject_html_in_text=True, example_urls=False)
    for text in (b"Jo \\u003cscript\\u003e", b"Jo \\u003Cb>"):
        body = b'{"resourceType": "Patient", "name": [{"text": "' + text + b'"}]}'
        assert rules(v, "test.Modes", body) == ["fhir-html-in-text"], body
    body = b'{"resourceType": "Patient", "identifier": [{"system": "http:\\/\\/example.org\\/x", "value": "1"}]}'
    assert rules(v, "test.Modes", body) == ["fhir-example-url"]
    div = b'<div xmlns=\\"http://www.w3.org/1999/xhtml\\">x<script\\n>y</script></div>'
    body = b'{"resourceType": "Patient", "text": {"status": "generated", "div": "' + div + b'"}}'
    assert rules(v, "test.Modes", body) == ["fhir-unsafe-narrative"]


# -- the fast paths give the walk's verdict under every mode ------------------------------------
MODE_SETS = [{"reject_html_in_text": True, "reject_html_in_markdown": True}, {"example_urls": False},
             {"resolve_references": True}, {"validate_contained": False},
             {"hl7_publication": True, "experimental_content": False}]
TRIGGERS = ["x <b>y</b>", "http://example.org/x", "Patient/zz", "#nope", "http://hl7.org/fhir/x"]


def _verdicts(v: FhirValidator, data: Any) -> tuple[bool, bool]:
    body = json.dumps(data).encode()
    fast = v.check_bytes(body) is not None or not v.check(data)[0]
    v.fast = False
    slow = not v.check(data)[0]
    v.fast = True
    return fast, slow


def _string_leaves(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() if k != "resourceType" for p in _string_leaves(v, (*at, k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _string_leaves(v, (*at, i))]
    return [at] if isinstance(node, str) else []


@pytest.mark.parametrize("modes", MODE_SETS, ids=[",".join(m) for m in MODE_SETS])
def test_fast_paths_defer_to_the_walk_under_modes(modes: dict[str, Any]) -> None:
    v = FhirValidator(ANY_RESOURCE, modes=FhirModes(**modes))
    checked = 0
    for name, data in PAYLOADS:
        fast, slow = _verdicts(v, data)
        assert fast == slow, name
        if not slow:
            continue
        for path in _string_leaves(data)[:10]:  # a string of a valid payload replaced by each trigger
            for t in TRIGGERS:
                d = copy.deepcopy(data)
                parent = d
                for step in path[:-1]:
                    parent = parent[step]
                parent[path[-1]] = t
                fast, slow = _verdicts(v, d)
                assert fast == slow, (name, path, t)
                checked += 1
    assert checked > 300
