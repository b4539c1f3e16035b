"""FHIR R4 XML: read into the FHIR JSON form and validated by the same rules, with the same paths.

The corpus (tests/policies/corpus/xml-manifest.toml, made by make_xml_corpus.py) holds the XML
twin of every FHIR JSON corpus case XML can express, which must give the JSON case's violations
exactly, plus XML-only faults and hostile documents (entity expansion, XXE), each with the exact
path and rule.
"""

from __future__ import annotations

import copy
import json
import tomllib
import xml.etree.ElementTree as ET  # parses only our own DOCTYPE-free corpus files, to mutate them
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from psvn.cli.main import main
from psvn.core.errors import Code, PsvnError, Violation
from psvn.policies.bundle import load_dir
from psvn.policies.catalogue import Catalogue
from psvn.policies.validation import XML_TYPES, PayloadValidator, media_type
from psvn.policies.validation_bench import bench_validation
from psvn.policies.validators.fhir import FhirValidator
from psvn.policies.validators.fhir_xml import FHIR_NS, XHTML_NS, reader
from psvn.policies.validators.limits import Limits, check_xml
from tests.policies.fhir_xml_writer import to_xml
from tests.policies.test_validation_properties import mutate_bytes

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CORPUS = Path(__file__).parent / "corpus"
CASES = tomllib.loads((CORPUS / "xml-manifest.toml").read_text())["case"]
JSON_CASES = tomllib.loads((CORPUS / "manifest.toml").read_text())["case"]
DOC = load_dir()
V = PayloadValidator(Catalogue.from_document(DOC), DOC["schemas"])
FHIR_XML = "application/fhir+xml"


def xml_rules(type_: str, body: bytes | str, content_type: str = FHIR_XML) -> list[tuple[str, str]]:
    return [(v.path, v.rule) for v in V.validate(type_, body, content_type=content_type)]


def ordered(violations: list[Violation]) -> list[Violation]:
    return sorted(violations, key=lambda v: (v.path, v.rule, v.message))


# -- examples -------------------------------------------------------------------------------------
@pytest.mark.parametrize("content_type", [*sorted(XML_TYPES), "application/fhir+xml; charset=utf-8",
                                          "Application/FHIR+XML;fhirVersion=4.0"])
def test_xml_examples_are_valid_under_every_xml_media_type(content_type: str) -> None:
    for type_, name in [("fhir.r4.Patient", "patient.xml"), ("fhir.r4.ServiceRequest", "referral.xml")]:
        assert V.validate(type_, (EXAMPLES / name).read_bytes(), content_type=content_type) == [], name


@pytest.mark.parametrize("name", ["patient", "referral"])
def test_xml_examples_carry_the_json_examples_content(name: str) -> None:
    read = reader().read((EXAMPLES / f"{name}.xml").read_bytes(), Limits())
    assert read.violations == []
    assert read.data == json.loads((EXAMPLES / f"{name}.json").read_text())


def test_same_nhs_number_fault_same_path_in_both_forms() -> None:
    xml = (EXAMPLES / "referral.xml").read_text().replace('<value value="9434765919"/>', '<value value="9434765918"/>')
    js = (EXAMPLES / "referral.json").read_text().replace('"value": "9434765919"', '"value": "9434765918"')
    got = V.validate("fhir.r4.ServiceRequest", xml.encode(), content_type=FHIR_XML)
    assert [(v.path, v.rule) for v in got] == [("/subject/identifier/value", "uk-nhs-number-check-digit")]
    assert got == V.validate("fhir.r4.ServiceRequest", js.encode())


# -- corpus ---------------------------------------------------------------------------------------
def test_xml_corpus_covers_twins_xml_only_faults_and_attacks() -> None:
    twins = {c["json"] for c in CASES if c.get("json")}
    fhir_json = {c["file"] for c in JSON_CASES if c["file"].startswith("fhir/")}
    assert len(fhir_json - twins) == 4  # only the four JSON-only faults have no XML twin
    rules = {r for c in CASES for _p, r in c["violations"]}
    assert rules >= {"fhir-xml-namespace", "fhir-xml-value", "fhir-xml-mixed-content", "fhir-xml-order",
                     "fhir-xml-attribute", "fhir-xml-resource", "fhir-cardinality", "fhir-unknown-element",
                     "xml-syntax", "xml-dtd"}
    assert sum(1 for c in CASES if not c["violations"]) >= 8


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_xml_corpus_case(case: dict[str, Any]) -> None:
    from tests.policies.test_validation_corpus import assert_matches_case

    assert_matches_case(case, V.validate(case["type"], (CORPUS / case["file"]).read_bytes(), content_type=FHIR_XML))


@pytest.mark.parametrize("case", [c for c in CASES if c.get("json")], ids=lambda c: c["file"])
def test_xml_twin_gives_exactly_the_json_violations(case: dict[str, Any]) -> None:
    """Same rules, paths, messages and expectations: the XML form is read into the JSON form."""
    xml = V.validate(case["type"], (CORPUS / case["file"]).read_bytes(), content_type=FHIR_XML)
    js = V.validate(case["type"], (CORPUS / case["json"]).read_bytes())
    assert ordered(xml) == ordered(js)


@pytest.mark.parametrize("case", [c for c in JSON_CASES if c["file"].startswith("fhir/valid/")],
                         ids=lambda c: c["file"])
def test_json_to_xml_to_json_round_trip(case: dict[str, Any]) -> None:
    doc = json.loads((CORPUS / case["file"]).read_text())
    for indent in ("  ", None):
        read = reader().read(to_xml(doc, indent=indent).encode(), Limits())
        assert read.violations == [] and read.data == doc


def test_official_layout_reads_as_the_official_json_example() -> None:
    read = reader().read((CORPUS / "fhir-xml/valid/patient-official-layout.xml").read_bytes(), Limits())
    want = json.loads((CORPUS / "fhir/valid/patient-official-example.json").read_text())
    assert read.violations == [] and read.data is not None
    div = read.data["text"].pop("div")
    want["text"].pop("div")
    assert read.data == want
    assert div.startswith(f'<div xmlns="{XHTML_NS}">') and "<b>Chalmers</b> (&quot;Jim&quot;)" not in div
    assert '<b>Chalmers</b> ("Jim")' in div and "(Acme Healthcare)<br/>NHS" in div


def test_primitive_id_and_extension_go_to_the_underscore_sibling() -> None:
    read = reader().read((CORPUS / "fhir-xml/valid/patient-absent-birthdate-and-element-ids.xml").read_bytes(),
                         Limits())
    assert read.data is not None
    assert "birthDate" not in read.data
    assert read.data["_birthDate"] == {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                                                      "valueCode": "unknown"}]}
    assert read.data["name"][0]["given"] == ["John", "Alan"]
    assert read.data["name"][0]["_given"] == [None, {"id": "middle"}]
    assert "_prefix" not in read.data["name"][0]  # no all-null "_name" arrays


def test_narrative_div_is_kept_as_xhtml_text() -> None:
    body = (f'<Patient xmlns="{FHIR_NS}"><text><status value="generated"/>'
            f'<h:div xmlns:h="{XHTML_NS}" class="n"><h:p>A &amp; B &lt;3</h:p><h:br/>'
            '<svg xmlns="http://www.w3.org/2000/svg" width="1"/>'
            '<h:a xml:lang="en" href="x?a=1&amp;b=&quot;2&quot;">y</h:a>'
            '</h:div></text></Patient>')
    read = reader().read(body.encode(), Limits())
    assert read.violations == [] and read.data is not None
    assert read.data["text"]["div"] == (
        f'<div xmlns="{XHTML_NS}" class="n"><p>A &amp; B &lt;3</p><br/>'
        '<svg xmlns="http://www.w3.org/2000/svg" width="1"/>'
        '<a xml:lang="en" href="x?a=1&amp;b=&quot;2&quot;">y</a></div>')


def test_prefixed_fhir_namespace_and_xsi_on_the_root_are_accepted() -> None:
    body = (f'<f:Patient xmlns:f="{FHIR_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xsi:schemaLocation="http://hl7.org/fhir patient.xsd"><f:identifier><f:system '
            'value="https://fhir.nhs.uk/Id/nhs-number"/><f:value value="9434765919"/></f:identifier>'
            '<f:gender value="female"/></f:Patient>')
    assert xml_rules("fhir.r4.Patient", body) == []
    assert xml_rules("fhir.r4.Patient", body.replace("<f:gender", '<f:gender xsi:type="x"')) == [
        ("/gender", "fhir-xml-attribute")]


def test_attribute_only_elements_and_unknown_attributes() -> None:
    patient = (EXAMPLES / "patient.xml").read_text()
    url = 'url="https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"'
    as_element = patient.replace(f"<extension {url}>", f"<extension>\n<url value={url[4:]}/>")
    assert xml_rules("fhir.r4.Patient", as_element) == [("/identifier/0/extension/0/url", "fhir-xml-attribute")]
    on_root = patient.replace(f'<Patient xmlns="{FHIR_NS}">', f'<Patient xmlns="{FHIR_NS}" id="x">')
    assert xml_rules("fhir.r4.Patient", on_root) == [("", "fhir-xml-attribute")]
    element_id = patient.replace("<maritalStatus>", '<maritalStatus id="ms1">')
    assert xml_rules("fhir.r4.Patient", element_id) == []
    assert reader().read(element_id.encode(), Limits()).data["maritalStatus"]["id"] == "ms1"  # type: ignore[index]


def test_typed_primitives_read_as_json_numbers_and_booleans() -> None:
    obs = FhirValidator("Observation")

    def observation(value: str) -> bytes:
        return (f'<Observation xmlns="{FHIR_NS}"><status value="final"/><code><text value="x"/></code>'
                f'{value}</Observation>').encode()

    assert obs.validate_xml(observation('<valueQuantity><value value="72.5"/><unit value="kg"/></valueQuantity>')) == []
    assert reader().read(observation('<valueInteger value="-3"/>'), Limits()).data["valueInteger"] == -3  # type: ignore[index]
    assert reader().read(observation('<valueQuantity><value value="1e3"/></valueQuantity>'),
                         Limits()).data["valueQuantity"] == {"value": 1000.0}  # type: ignore[index]
    for bad, rule in [('<valueQuantity><value value="72,5"/></valueQuantity>', ("/valueQuantity/value", "fhir-format")),
                      ('<valueInteger value="007"/>', ("/valueInteger", "fhir-format")),
                      ('<valueBoolean value="TRUE"/>', ("/valueBoolean", "fhir-format"))]:
        assert [(v.path, v.rule) for v in obs.validate_xml(observation(bad))] == [rule], bad
    # range and sign are the walker's, so XML and JSON say the same words
    too_big = obs.validate_xml(observation('<valueInteger value="99999999999"/>'))
    same = obs.validate({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                         "valueInteger": 99999999999})
    assert too_big == same and [v.rule for v in same] == ["fhir-format"]


def test_xml_only_problems_do_not_hide_the_standard_rules() -> None:
    patient = (EXAMPLES / "patient.xml").read_text()
    both = patient.replace("  <name>\n", "  <name>John\n", 1).replace('value="9434765919"/>\n  </identifier>',
                                                                   'value="9434765918"/>\n  </identifier>')
    assert sorted(xml_rules("fhir.r4.Patient", both)) == [("/identifier/0/value", "uk-nhs-number-check-digit"),
                                                          ("/name/0", "fhir-xml-mixed-content")]


# -- security and limits ----------------------------------------------------------------------------
BILLION = (CORPUS / "fhir-xml/invalid/patient-billion-laughs.xml").read_bytes()
XXE = (CORPUS / "fhir-xml/invalid/patient-xxe-file.xml").read_bytes()


@pytest.mark.parametrize("body", [
    BILLION, XXE, (CORPUS / "fhir-xml/invalid/patient-external-dtd.xml").read_bytes(),
    b'<?xml version="1.0"?><!DOCTYPE Patient [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'
    b'<Patient xmlns="http://hl7.org/fhir"/>',
    b'<!DOCTYPE Patient [<!ENTITY a "&#38;#60;b/&#38;#62;">]><Patient xmlns="http://hl7.org/fhir">&a;</Patient>',
], ids=["billion-laughs", "xxe-file", "external-dtd", "parameter-entity", "markup-entity"])
def test_dtd_payloads_are_refused_by_the_precheck_and_by_the_parser(body: bytes) -> None:
    assert xml_rules("fhir.r4.Patient", body) == [("", "xml-dtd")]
    assert [v.rule for v in check_xml(body, Limits())] == ["xml-dtd"]
    # without the byte precheck the parser refuses the DOCTYPE itself, before any entity exists
    read = reader().read(body, Limits())
    assert read.data is None and [(v.path, v.rule) for v in read.violations] == [("", "xml-dtd")]
    assert "root:" not in read.violations[0].message


def test_utf16_doctype_passes_the_byte_search_but_not_the_parser() -> None:
    body = (CORPUS / "fhir-xml/invalid/patient-billion-laughs-utf16.xml").read_bytes()
    assert check_xml(body, Limits()) == []
    assert xml_rules("fhir.r4.Patient", body) == [("", "xml-dtd")]


def test_undeclared_entities_are_syntax_errors_not_lookups() -> None:
    body = (EXAMPLES / "patient.xml").read_text().replace('value="Smith"', 'value="&xxe;"', 1).encode()
    got = V.validate("fhir.r4.Patient", body, content_type=FHIR_XML)
    assert [(v.path, v.rule) for v in got] == [("", "xml-syntax")] and "undefined entity" in got[0].message


def test_depth_is_enforced_while_parsing() -> None:
    nest = 100
    body = (f'<Patient xmlns="{FHIR_NS}">' + '<extension url="x">' * nest + "</extension>" * nest
            + "</Patient>").encode()
    assert check_xml(body, Limits()) == []  # not a byte-level refusal
    assert xml_rules("fhir.r4.Patient", body) == [("", "max-depth")]
    deep_div = (f'<Patient xmlns="{FHIR_NS}"><text><status value="generated"/><div xmlns="{XHTML_NS}">'
                + "<b>" * 80 + "x" + "</b>" * 80 + "</div></text></Patient>").encode()
    assert xml_rules("fhir.r4.Patient", deep_div) == [("", "max-depth")]


def test_element_count_is_limited_before_and_while_parsing() -> None:
    many = (f'<Patient xmlns="{FHIR_NS}"><name>' + "<a/>" * 60_000 + "</name></Patient>").encode()
    assert [v.rule for v in check_xml(many, Limits())] == ["max-elements"]
    assert xml_rules("fhir.r4.Patient", many) == [("", "max-elements")]
    small = (EXAMPLES / "patient.xml").read_bytes()
    read = reader().read(small, Limits(max_elements=10))
    assert read.data is None and [v.rule for v in read.violations] == ["max-elements"]


def test_size_limit_is_checked_first() -> None:
    body = (EXAMPLES / "patient.xml").read_bytes().replace(b"<active", b"<!--" + b"x" * 300_000 + b"--><active")
    assert xml_rules("fhir.r4.Patient", body) == [("", "max-bytes")]


# -- content types ----------------------------------------------------------------------------------
@pytest.mark.parametrize("type_", ["hl7v2.ADT_A01", "cloudevents.v1", "psvn.address-change",
                                   "openreferral.uk.Service"])
def test_xml_content_type_for_a_non_fhir_type_is_a_violation(type_: str) -> None:
    for content_type in XML_TYPES:
        got = V.validate(type_, b"<x/>", content_type=content_type)
        assert [(v.path, v.rule) for v in got] == [("", "content-type")]
        assert got[0].expected == Catalogue.from_document(DOC).get(type_).datacontenttype
        assert "FHIR" in got[0].message


def test_other_content_types_keep_the_json_path() -> None:
    patient_json = (EXAMPLES / "patient.json").read_bytes()
    for content_type in (None, "", "application/fhir+json", "application/json", "text/plain"):
        assert V.validate("fhir.r4.Patient", patient_json, content_type=content_type) == []
    assert [v.rule for v in V.validate("fhir.r4.Patient", (EXAMPLES / "patient.xml").read_bytes())] == ["json-syntax"]
    assert xml_rules("fhir.r4.Patient", patient_json) == [("", "xml-syntax")]
    with pytest.raises(PsvnError) as exc:
        V.validate("fhir.r4.Banana", b"<x/>", content_type=FHIR_XML)
    assert exc.value.code is Code.UNKNOWN_TYPE


def test_media_type_parsing() -> None:
    assert XML_TYPES == {"application/fhir+xml", "application/xml", "text/xml"}
    assert media_type(" Application/FHIR+XML ; charset=UTF-8") == "application/fhir+xml"
    assert media_type(None) is None and media_type("") is None and media_type(";q=1") is None


def test_xml_str_body_is_accepted_like_bytes() -> None:
    text = (EXAMPLES / "patient.xml").read_text()
    assert V.validate("fhir.r4.Patient", text, content_type=FHIR_XML) == []  # type: ignore[arg-type]


# -- CLI and bench -----------------------------------------------------------------------------------
def test_cli_validates_xml_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--type", "fhir.r4.Patient", str(EXAMPLES / "patient.xml")]) == 0
    assert "(FHIR XML)" in capsys.readouterr().out
    bad = tmp_path / "bad.xml"
    bad.write_text((EXAMPLES / "referral.xml").read_text().replace('<status value="active"/>', "<status/>"))
    assert main(["validate", "--type", "fhir.r4.ServiceRequest", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "/status" in err and "fhir-xml-value" in err
    assert main(["validate", "--type", "fhir.r4.ServiceRequest", "--json", str(bad)]) == 1
    problem = json.loads(capsys.readouterr().out)
    same = V.error("fhir.r4.ServiceRequest", V.validate("fhir.r4.ServiceRequest", bad.read_bytes(),
                                                         content_type=FHIR_XML)).to_problem()
    assert problem["violations"] == same["violations"] and problem["detail"] == same["detail"]
    assert main(["validate", "--type", "fhir.r4.Patient", "--json", str(EXAMPLES / "patient.xml")]) == 0
    assert json.loads(capsys.readouterr().out)["content_type"] == FHIR_XML


def test_cli_content_type_option_overrides_the_file_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    renamed = tmp_path / "patient.txt"
    renamed.write_bytes((EXAMPLES / "patient.xml").read_bytes())
    assert main(["validate", "--type", "fhir.r4.Patient", str(renamed)]) == 1
    assert "json-syntax" in capsys.readouterr().err
    assert main(["validate", "--type", "fhir.r4.Patient", "--content-type", "text/xml", str(renamed)]) == 0
    assert main(["validate", "--type", "fhir.r4.Patient", "--content-type", "application/fhir+json",
                 str(EXAMPLES / "patient.xml")]) == 1
    assert "json-syntax" in capsys.readouterr().err
    assert main(["validate", "--type", "hl7v2.ADT_A01", str(EXAMPLES / "patient.xml")]) == 1
    assert "content-type" in capsys.readouterr().err


def test_bench_has_opt_in_xml_rows() -> None:
    rows = bench_validation(seconds=0.02, xml=True)
    xml_rows = [r for r in rows if r.get("content_type") == FHIR_XML]
    assert [r["case"] for r in xml_rows] == ["fhir.r4.Patient (XML)", "fhir.r4.ServiceRequest (XML)"]
    assert all(r["valid"] and r["validations_per_s"] > 0 for r in xml_rows)
    assert [r["case"] for r in bench_validation(seconds=0.01) if "content_type" in r] == []


# -- property tests: mutations never crash ------------------------------------------------------------
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID_XML = [(c["type"], (CORPUS / c["file"]).read_bytes()) for c in CASES if not c["violations"]]
ALL_FHIR_TYPES = sorted({c["type"] for c in CASES})
F = "{" + FHIR_NS + "}"
NAMES = ["id", "extension", "url", "value", "identifier", "system", "name", "given", "family", "gender",
         "birthDate", "contained", "entry", "resource", "fullUrl", "reference", "subject", "coding", "code",
         "text", "div", "status", "intent", "Patient", "Bundle", "ServiceRequest", "valueString", "meta"]
tags = st.one_of(st.sampled_from(NAMES).map(lambda n: F + n), st.sampled_from(NAMES),
                 st.sampled_from(["{urn:x}" + n for n in NAMES] + ["{" + XHTML_NS + "}div", "{" + XHTML_NS + "}p"]),
                 st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,10}", fullmatch=True))
texts = st.one_of(st.text(max_size=12), st.sampled_from(["", " ", "9434765919", "true", "1.5", "-0", "2024-13-45",
                                                         "urn:uuid:x", "#", "Patient/1", "male", "&", "<", "]]>"]))


def assert_answer(out: Any) -> None:
    assert isinstance(out, list)
    for v in out:
        assert isinstance(v, Violation) and isinstance(v.path, str) and v.rule and v.message
        assert v.path == "" or v.path.startswith("/"), v
        assert v.rule != "validator-error", v


def _mutate_tree(root: ET.Element, data: st.DataObject) -> ET.Element:
    root = copy.deepcopy(root)
    for _ in range(data.draw(st.integers(1, 4))):
        parents = [(p, c) for p in root.iter() for c in p]
        if not parents:
            break
        parent, elem = data.draw(st.sampled_from(parents))
        action = data.draw(st.sampled_from(["drop", "dup", "swap", "rename", "attr", "unvalue", "text", "move",
                                            "wrap", "insert"]))
        if action == "drop":
            parent.remove(elem)
        elif action == "dup":
            parent.insert(list(parent).index(elem), copy.deepcopy(elem))
        elif action == "swap":
            kids = list(parent)
            i, j = kids.index(elem), data.draw(st.integers(0, len(kids) - 1))
            kids[i], kids[j] = kids[j], kids[i]
            parent[:] = kids
        elif action == "rename":
            elem.tag = data.draw(tags)
        elif action == "attr":
            elem.set(data.draw(st.sampled_from(["value", "id", "url", "{urn:x}y", "xsi"])), data.draw(texts))
        elif action == "unvalue":
            elem.attrib.pop("value", None)
        elif action == "text":
            elem.text = data.draw(texts)
        elif action == "move":
            target = data.draw(st.sampled_from(list(root.iter())))
            if target is not elem and elem not in list(target.iter()):
                parent.remove(elem)
                target.append(elem)
        elif action == "wrap":
            wrapper = ET.Element(F + data.draw(st.sampled_from(["contained", "resource", "extension"])))
            parent.insert(list(parent).index(elem), wrapper)
            parent.remove(elem)
            wrapper.append(elem)
        else:
            new = ET.SubElement(elem, data.draw(tags))
            if data.draw(st.booleans()):
                new.set("value", data.draw(texts))
    return root


@SETTINGS
@given(st.data())
def test_structural_mutations_of_valid_xml_never_crash(data: st.DataObject) -> None:
    type_, body = data.draw(st.sampled_from(VALID_XML))
    mutated = ET.tostring(_mutate_tree(ET.fromstring(body), data), encoding="utf-8")
    assert_answer(V.validate(data.draw(st.sampled_from([type_, *ALL_FHIR_TYPES])), mutated,
                             content_type=data.draw(st.sampled_from(sorted(XML_TYPES)))))


@SETTINGS
@given(st.data())
def test_byte_mutations_of_xml_never_crash(data: st.DataObject) -> None:
    type_, original = data.draw(st.sampled_from(VALID_XML))
    body = mutate_bytes(data, original, [
        b"<", b">", b"/>", b"&", b"&amp;", b"&#0;", b"&#x10FFFF;", b'"', b"<!--", b"-->", b"<![CDATA[x]]>",
        b"<!DOCTYPE x>", b'<extension url="x">', b"</extension>", b'<given value="x"/>', b"<contained>",
        b'xmlns="urn:x"', b'xmlns:a="urn:a"', b"<a:b/>", b'value=""', b"\xff\xfe", b"\x00", b"<?pi x?>"])
    assert_answer(V.validate(type_, body, content_type=FHIR_XML))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_json_resources_written_as_xml_validate_like_json(data: st.DataObject) -> None:
    """JSON-level mutations of valid resources that XML can carry: both forms must agree.

    Only value replacements by well-typed values keep the JSON expressible in XML, so the draw is
    limited to those (a string for a string, a number for a number...).
    """
    case = data.draw(st.sampled_from([c for c in JSON_CASES if c["file"].startswith("fhir/valid/")]))
    doc = json.loads((CORPUS / case["file"]).read_text())
    leaves: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for k, v in items:
            if isinstance(v, (dict, list)):
                walk(v)
            elif isinstance(v, str) and k not in ("resourceType", "div"):
                leaves.append((node, k))

    walk(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        node, key = data.draw(st.sampled_from(leaves))
        node[key] = data.draw(st.sampled_from(["9434765918", "banana", "14/02/1955", "RY R", "urn:uuid:nope",
                                               "#missing", "Patient/9", "active", "x y", " "]))
    xml = V.validate(case["type"], to_xml(doc).encode(), content_type=FHIR_XML)
    js = V.validate(case["type"], json.dumps(doc).encode())
    assert ordered(xml) == ordered(js)


@pytest.mark.parametrize("encoding", ["TF-8", "utf-32", "utf-7", "rot13", "idna"])
def test_unreadable_declared_encodings_are_syntax_violations(encoding: str) -> None:
    body = f'<?xml version="1.0" encoding="{encoding}"?><Patient xmlns="{FHIR_NS}"/>'.encode()
    assert xml_rules("fhir.r4.Patient", body) == [("", "xml-syntax")]
