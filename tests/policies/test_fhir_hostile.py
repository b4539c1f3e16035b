"""Hostile payloads against the validator's newer rules (found by review): wrong JSON types never
make the walk raise, and the costly checks are bounded per payload -- counted, never timed."""

from __future__ import annotations

import base64
import copy
import datetime
import json
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from psvn.policies import bundle
from psvn.policies.catalogue import Catalogue
from psvn.policies.validation import PayloadValidator
from psvn.policies.validators import budget, fhir_ucum
from psvn.policies.validators.fhir import ANY_RESOURCE, FhirValidator
from psvn.policies.validators.fhir_signature import _key
from tests.policies.walk_verdict import held_verdict

V = FhirValidator(ANY_RESOURCE)


def test_wrong_json_types_in_the_new_rules_do_not_raise() -> None:
    sp = {"resourceType": "SearchParameter", "url": "http://x.org/sp", "name": "n", "status": "active",
          "description": "d", "code": "name", "type": "string",
          "derivedFrom": "http://hl7.org/fhir/SearchParameter/Organization-name"}
    for base in (5, "Organization", {"a": 1}):
        assert ("/base", "fhir-cardinality") in held_verdict(V, {**sp, "base": base})
    for op in (["is-a"], {"x": 1}, 3):
        vs = {"resourceType": "ValueSet", "status": "draft", "compose": {"include": [
            {"system": "http://snomed.info/sct", "filter": [{"property": "concept", "op": op, "value": "3457005"}]}]}}
        assert held_verdict(V, vs)  # the op's type is reported, nothing raised


def test_a_malformed_narrative_under_the_html_screen_is_a_json_error() -> None:
    doc = bundle.load_dir()
    pv = PayloadValidator(Catalogue.from_document(doc), doc["schemas"])
    out = pv.validate("fhir.r4.Patient", b'{"resourceType":"Patient","text":{"status":"generated",'
                      b'"div":"<div xmlns=\\"http://www.w3.org/1999/xhtml\\">\\x</div>"}}')
    assert [v.rule for v in out] == ["json-syntax"]


def questionnaire(items: int) -> dict[str, Any]:
    return {"resourceType": "Questionnaire", "status": "active",
            "item": [{"linkId": f"i{i}", "type": "display", "text": "t"} for i in range(items)]}


def counted_evaluations(data: dict[str, Any]) -> int:
    """How many fhirpathpy evaluations the walk asks for (budget.evaluation counts them)."""
    v = FhirValidator(ANY_RESOURCE)
    v.fast = False
    budget.reset()
    real = budget.reset
    budget.reset = lambda: None  # type: ignore[assignment]
    try:
        budget._state.evaluations = 10**9
        v.check(data)
        return 10**9 - int(budget._state.evaluations)
    finally:
        budget.reset = real  # type: ignore[assignment]


def test_fhirpath_evaluations_past_the_limit_refuse_the_payload_once() -> None:
    per_item = counted_evaluations(questionnaire(2)) - counted_evaluations(questionnaire(1))
    assert per_item >= 1
    fits = (budget.MAX_EVALUATIONS - counted_evaluations(questionnaire(0))) // per_item
    assert "fhir-work-limit" not in {r for _p, r in held_verdict(V, questionnaire(fits))}
    over = held_verdict(V, questionnaire(fits + 1))
    assert [r for _p, r in over] == ["fhir-work-limit"]
    assert held_verdict(V, questionnaire(3)) == []  # the next payload has its own count


def test_enable_when_conditions_are_looked_up_not_searched() -> None:
    q = questionnaire(300)
    q["item"][0] = {"linkId": "q", "type": "group", "item": [{"linkId": "inner", "type": "boolean"}],
                    "enableWhen": [{"question": "zz", "operator": "exists", "answerBoolean": True},
                                   {"question": "inner", "operator": "exists", "answerBoolean": True},
                                   {"question": "q", "operator": "exists", "answerBoolean": True},
                                   {"question": "i299", "operator": "exists", "answerBoolean": True}]}
    found = [(p, r) for p, r in held_verdict(V, q) if r == "fhir-questionnaire-enablewhen"]
    assert [p.rsplit("/", 2)[-2] for p, _r in found] == ["0", "1", "2"]  # unknown, inner, itself


def test_ucum_codes_past_the_budget_are_not_judged() -> None:
    fhir_ucum._seen.clear()
    code = "m." * 100 + "g"
    n = budget.BUDGET // (fhir_ucum.UCUM_COST_PER_CHAR * len(code)) + 1
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "component": [
        {"code": {"text": f"c{i}"}, "valueQuantity": {"value": 1, "system": "http://unitsofmeasure.org",
                                                      "code": "m." * i + code}}
        for i in range(n)]}
    bad = "fmm[Hg]{" + "x" * len(code) + "}"  # not UCUM, and dearer than what the others leave
    obs["component"].append({"code": {"text": "bad"}, "valueQuantity": {
        "value": 1, "system": "http://unitsofmeasure.org", "code": bad}})
    assert held_verdict(V, obs) == []  # the bad code came after the budget: not judged
    assert held_verdict(V, obs) == []  # and still not once the others are known
    alone = copy.deepcopy(obs)
    alone["component"] = alone["component"][-1:]
    assert held_verdict(V, alone) == [("/component/0/valueQuantity/code", "fhir-ucum")]


def certificate(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def test_signing_keys_that_cost_an_attacker_nothing_and_us_much_are_not_judged() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    good = certificate(key)
    assert _key({"x5c": [good]}) is not None
    der = bytearray(base64.b64decode(good))
    oid = bytes.fromhex("2A864886F70D010101")  # rsaEncryption, made unknown below
    der[der.index(oid) + len(oid) - 1] = 0x63
    assert _key({"x5c": [base64.b64encode(bytes(der)).decode()]}) is None  # unsupported: no crash
    assert _key({"x5c": ["not base64!"]}) is None
    assert json.dumps({"x5c": [good]})  # the header as it travels
