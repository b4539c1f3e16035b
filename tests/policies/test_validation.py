"""PayloadValidator: limits before parsing, catalogue checks, caching, UK rules, the CLI and bench."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from psvn.cli.main import main
from psvn.core.errors import Code, PsvnError
from psvn.policies.bundle import load_dir
from psvn.policies.catalogue import Catalogue
from psvn.policies.validation import PayloadValidator, invalid_payload_error
from psvn.policies.validation_bench import bench_validation
from psvn.policies.validators.common import nhs_number_problem
from psvn.policies.validators.limits import Limits, check_json

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DOC = load_dir()


def validator(doc: dict | None = None) -> PayloadValidator:
    d = doc or DOC
    return PayloadValidator(Catalogue.from_document(d), d["schemas"])


V = validator()


def rules(violations: list) -> list[tuple[str, str]]:
    return [(v.path, v.rule) for v in violations]


# -- catalogue ---------------------------------------------------------------------------------
def test_catalogue_has_every_required_type_with_its_metadata() -> None:
    cat = Catalogue.from_document(DOC)
    wanted = {"fhir.r4.ServiceRequest", "fhir.r4.Bundle", "fhir.r4.Patient", "openreferral.uk.Service",
              "cloudevents.v1", "cloudevents.air-quality.reading", "psvn.address-change",
              *(f"hl7v2.ADT_A0{i}" for i in range(1, 9))}
    assert wanted <= {e.type for e in cat}
    for e in cat:
        assert e.standard and e.version and e.profile and e.validator and e.owner and e.description, e.type
        assert e.datacontenttype and e.retention_days > 0
    V.warm()  # every entry compiles


def test_every_example_payload_is_valid_for_its_type() -> None:
    for type_, name in [("fhir.r4.ServiceRequest", "referral.json"), ("fhir.r4.Patient", "patient.json"),
                        ("hl7v2.ADT_A01", "adt_a01.hl7"), ("cloudevents.v1", "air-quality.json"),
                        ("cloudevents.air-quality.reading", "air-quality.json"),
                        ("psvn.address-change", "address-change.json"),
                        ("openreferral.uk.Service", "openreferral-service.json")]:
        assert V.validate(type_, (EXAMPLES / name).read_bytes()) == [], name
    referral = (EXAMPLES / "referral.json").read_bytes()
    assert 900 <= len(referral) <= 1600  # the ~1 KiB referral the README promises


def test_custom_json_schema_type_added_as_data_only() -> None:
    doc = json.loads(json.dumps(DOC))
    doc["schemas"]["bin-collection-missed"] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "required": ["uprn", "reported_by"], "properties": {
            "uprn": {"type": "string", "pattern": "^[0-9]{1,12}$"},
            "reported_by": {"type": "string", "format": "uk-nhs-number"}}}
    doc["catalogue"]["council.bin-collection-missed"] = {
        "standard": "JSON Schema 2020-12", "version": "1", "validator": "jsonschema",
        "schema": "bin-collection-missed", "description": "A missed bin", "owner": "LGA"}
    v = validator(doc)
    assert v.validate("council.bin-collection-missed", b'{"uprn": "22057411", "reported_by": "9434765919"}') == []
    assert rules(v.validate("council.bin-collection-missed", b'{"uprn": "x", "reported_by": "9434765918"}')) == [
        ("/uprn", "schema-pattern"), ("/reported_by", "uk-nhs-number-check-digit")]


@pytest.mark.parametrize(("entry", "needle"), [
    ({"validator": "magic"}, "validator 'magic'"),
    ({"validator": "jsonschema", "schema": "nope"}, "schema 'nope'"),
    ({"validator": "fhir-r4"}, "resource"),
    ({"validator": "cloudevents"}, "events"),
    ({"validator": "cloudevents", "events": {"a.b": "missing"}}, "missing"),
])
def test_bad_catalogue_entries_are_rejected_at_load(entry: dict, needle: str) -> None:
    doc = {"catalogue": {"x.y": {"standard": "S", "description": "d", "owner": "o", **entry}}, "schemas": {}}
    with pytest.raises(PsvnError) as exc:
        Catalogue.from_document(doc)
    assert exc.value.code is Code.CONFIG_INVALID and needle in exc.value.detail


def test_unknown_fhir_resource_and_bad_schema_fail_when_compiled() -> None:
    doc = {"catalogue": {"fhir.r4.Banana": {"standard": "FHIR R4", "description": "d", "owner": "o",
                                            "validator": "fhir-r4", "resource": "Banana"},
                         "bad.schema": {"standard": "S", "description": "d", "owner": "o", "validator": "jsonschema",
                                        "schema": "bad"}},
           "schemas": {"bad": {"type": "no-such-type"}}}
    v = validator(doc)
    for t in ("fhir.r4.Banana", "bad.schema"):
        with pytest.raises(PsvnError) as exc:
            v.validate(t, b"{}")
        assert exc.value.code is Code.CONFIG_INVALID


def test_unknown_type_raises_unknown_type() -> None:
    with pytest.raises(PsvnError) as exc:
        V.validate("fhir.r4.Banana", b"{}")
    assert exc.value.code is Code.UNKNOWN_TYPE


def test_compiled_validator_is_cached_per_type() -> None:
    v = validator()
    v.validate("fhir.r4.Patient", b"{}")
    first = v.compiled("fhir.r4.Patient")
    v.validate("fhir.r4.Patient", b"{}")
    assert v.compiled("fhir.r4.Patient") is first


# -- UK identifiers ----------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "rule"), [
    ("9434765919", None), ("9000000009", None), ("4010232137", None),
    ("9434765918", "uk-nhs-number-check-digit"), ("1234567890", "uk-nhs-number-check-digit"),
    ("943476591", "uk-nhs-number-format"), ("943 476 5919", "uk-nhs-number-format"),
    (9434765919, "uk-nhs-number-format"),
])
def test_nhs_number_modulus_11(value: object, rule: str | None) -> None:
    problem = nhs_number_problem(value)
    assert (problem[0] if problem else None) == rule


# -- limits before parsing ---------------------------------------------------------------------
def test_size_limit_is_checked_first() -> None:
    body = b'{"resourceType": "Patient", "x": "' + b"a" * 300_000 + b'"}'
    assert rules(V.validate("fhir.r4.Patient", body)) == [("", "max-bytes")]


@pytest.mark.parametrize("type_", ["fhir.r4.Patient", "psvn.address-change", "cloudevents.v1"])
def test_depth_bomb_rejected_without_parsing(type_: str) -> None:
    body = b"[" * 5000 + b"]" * 5000
    assert rules(V.validate(type_, body)) == [("", "max-depth")]
    nested = b'{"a":' * 65 + b"1" + b"}" * 65
    assert rules(V.validate(type_, nested)) == [("", "max-depth")]


def test_element_bomb_rejected_without_parsing() -> None:
    assert rules(V.validate("fhir.r4.Patient", b"[" + b"0," * 60_000 + b"0]")) == [("", "max-elements")]
    doc = json.loads(json.dumps(DOC))
    doc["catalogue"]["psvn.address-change"]["max_elements"] = 100
    small = validator(doc)
    assert rules(small.validate("psvn.address-change", b'{"a": [' + b"1," * 200 + b'1]}')) == [("", "max-elements")]
    assert rules(small.validate("psvn.address-change", b'{"a": "' + b"1," * 200 + b'"}')) != [("", "max-elements")]


def test_json_precheck_ignores_brackets_and_commas_inside_strings() -> None:
    limits = Limits(max_depth=3, max_elements=10)
    tricky = json.dumps({"a": "[[[[[[,,,,,,,,,,,,{{{{\\\"", "b": ["x\\\"]]]"]}).encode()
    assert check_json(tricky, limits) == []
    assert [v.rule for v in check_json(b'[[[["x"]]]]', limits)] == ["max-depth"]


def test_hostile_payloads_cost_little() -> None:
    """A megabyte of structure is refused by the byte-level precheck, not parsed (bounded, loose)."""
    v = validator()
    bombs = [b"[" * 200_000 + b"]" * 200_000, b"[" + b"1," * 400_000 + b"1]", b'"' + b'\\"' * 400_000]
    doc = json.loads(json.dumps(DOC))
    doc["catalogue"]["fhir.r4.Patient"]["max_bytes"] = 2_000_000
    big = validator(doc)
    for bomb in bombs:
        start = time.perf_counter()
        out = big.validate("fhir.r4.Patient", bomb)
        assert out and time.perf_counter() - start < 5
    assert v.validate("hl7v2.ADT_A01", b"MSH|^~\\&|" + b"|" * 60_000)[0].rule == "max-elements"


# -- error document ----------------------------------------------------------------------------
def test_invalid_payload_error_lists_every_violation() -> None:
    bad = json.loads((EXAMPLES / "referral.json").read_text())
    bad["intent"] = "whenever"
    del bad["status"]
    got = V.validate("fhir.r4.ServiceRequest", json.dumps(bad).encode())
    err = invalid_payload_error(Catalogue.from_document(DOC).get("fhir.r4.ServiceRequest"), got)
    problem = err.to_problem()
    assert problem["status"] == 422 and problem["code"] == "invalid-payload"
    assert [(v["path"], v["rule"]) for v in problem["violations"]] == [("/intent", "fhir-binding"),
                                                                       ("/status", "fhir-required")]
    assert "request-intent" in problem["violations"][0]["message"] and "order" in problem["violations"][0]["expected"]
    assert PsvnError.from_problem(problem).violations == got
    hl7 = V.validate("hl7v2.ADT_A01", (EXAMPLES / "adt_a01.hl7").read_bytes().replace(b"9434765919", b"9434765918"))
    assert V.error("hl7v2.ADT_A01", hl7).field == "payload:PID-3"


# -- CLI ---------------------------------------------------------------------------------------
def test_cli_validate_valid_and_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--type", "fhir.r4.ServiceRequest", str(EXAMPLES / "referral.json")]) == 0
    assert "valid:" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text((EXAMPLES / "referral.json").read_text().replace("9434765919", "9434765918"))
    assert main(["validate", "--type", "fhir.r4.ServiceRequest", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "error invalid-payload" in err and "/subject/identifier/value" in err and "uk-nhs-number-check-digit" in err
    assert main(["validate", "--type", "fhir.r4.ServiceRequest", "--json", str(bad)]) == 1
    problem = json.loads(capsys.readouterr().out)
    same = V.error("fhir.r4.ServiceRequest", V.validate("fhir.r4.ServiceRequest", bad.read_bytes())).to_problem()
    assert problem["violations"] == same["violations"] and problem["detail"] == same["detail"]


def test_cli_validate_hl7_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--type", "hl7v2.ADT_A01", str(EXAMPLES / "adt_a01.hl7")]) == 0
    assert main(["validate", "--type", "hl7v2.ADT_A03", str(EXAMPLES / "adt_a01.hl7")]) == 1
    assert "MSH-9" in capsys.readouterr().err
    assert main(["validate", "--type", "fhir.r4.Banana", str(EXAMPLES / "referral.json")]) == 1
    assert "unknown-type" in capsys.readouterr().err
    assert main(["validate", "--type", "fhir.r4.Patient", "/nonexistent/file.json"]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_cli_catalogue_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalogue", "list"]) == 0
    out = capsys.readouterr().out
    assert "fhir.r4.ServiceRequest" in out and "hl7v2.ADT_A08" in out and "openreferral.uk.Service" in out
    assert main(["catalogue", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {e["type"] for e in listed} == {e.type for e in Catalogue.from_document(DOC)}
    assert main(["catalogue", "show", "cloudevents.air-quality.reading", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["events"] == {"uk.psvn.air-quality.reading.v1": "air-quality-reading"}
    assert main(["catalogue", "show", "fhir.r4.Patient"]) == 0
    assert "UKCore-Patient" in capsys.readouterr().out
    assert main(["catalogue", "show", "nope.nope"]) == 1


# -- bench -------------------------------------------------------------------------------------
def test_bench_validation_reports_each_case() -> None:
    rows = bench_validation(seconds=0.05)
    assert [r["case"] for r in rows] == ["fhir.r4.Patient", "fhir.r4.ServiceRequest", "hl7v2.ADT_A01",
                                         "cloudevents.air-quality"]
    for r in rows:
        assert r["valid"] and r["validations_per_s"] > 0 and r["bytes"] > 500
        # beside the wall clock, the rate by process CPU time, best of the rounds
        assert r["cpu_validations_per_s"] > 0 and r["rounds"] == 5
    assert 1024 <= rows[0]["bytes"] <= 2048
    assert {r["rounds"] for r in bench_validation(seconds=0.02, rounds=2)} == {2}


def test_consent_schema_file_matches_the_engine_schema() -> None:
    from psvn.policies.consent import SCHEMA

    assert DOC["schemas"]["consent-change"] == SCHEMA
