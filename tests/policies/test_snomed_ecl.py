"""SNOMED CT ECL syntax (policies/validators/snomed_ecl.py) and its ValueSet rule
(fhir_terminology: a SNOMED CT ``constraint = <ECL>`` filter must parse).

The check must never call valid ECL invalid, so it is held to every example of the official ECL
repository (ECL 1.x to 2.2) and to the specification's constructs in both brief and long
syntax, and only then to invalid texts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from psvn.policies.validators.snomed_ecl import MAX_BYTES, Grammar, ecl_syntax_error

from .test_fhir_terminology import verdicts

EXAMPLES: dict[str, str] = json.loads(
    (Path(__file__).resolve().parent / "snomed_ecl_examples.json").read_text(encoding="utf-8"))["examples"]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_official_example_is_ecl(name: str) -> None:
    assert ecl_syntax_error(EXAMPLES[name]) is None


VALID = [
    # simple expressions, each constraint operator, brief and long
    "404684003", "  404684003 |Clinical finding|  ", "*", "ANY", "< 404684003", "<< 404684003", "<! 404684003",
    "<<! 404684003", "> 40541001", ">> 40541001", ">! 40541001", ">>! 40541001", "!!> (< 404684003)",
    "!!< (<< 404684003)", "descendantOf 404684003", "descendantorselfof 404684003 |Clinical finding|",
    "childOf 404684003", "ancestorOrSelfOf 40541001", "parentOf 40541001", "top (<< 404684003)",
    "<<404684003", "<  404684003  |  Clinical finding  |",
    # member of, refset fields, alternate identifiers
    "^ 700043003 |Example problem list concepts reference set|", "memberOf 700043003", "^700043003",
    "< ^ 700043003", "^ [referencedComponentId] 816080008", "^ [targetComponentId, mapTarget] 447562003",
    "^ [*] 447562003", "<< LOINC#54486-6", '"LOINC#54486-6" |Some term|',
    # refinements: attributes, groups, cardinality, reverse, any, wildcards
    "< 19829001 |Disorder of lung| : 116676008 |Associated morphology| = 79654002 |Edema|",
    "< 19829001: 116676008 = << 79654002",
    "< 404684003 : 363698007 = << 39057004, 116676008 = << 415582006",
    "< 404684003 : { 363698007 = << 39057004, 116676008 = << 415582006 }",
    "< 404684003 : [1..3] { 363698007 = << 39057004 }, [0..0] 246075003 != *",
    "< 373873005 : [1..*] 127489000 = < 105590001", "< 373873005 : [0 to many] 127489000 = < 105590001",
    "< 105590001 : R 127489000 = 111115", "< 105590001 : reverseOf 127489000 = 111115",
    "< 105590001 : [3..3] R 127489000 = *", "< 404684003 : * = 79654002", "< 404684003 : << 47429007 = *",
    "< 404684003 : 363698007 != << 39057004", "< 404684003 : 363698007 not = << 39057004",
    "< 404684003 : 363698007 <> << 39057004",
    "< 404684003 : ( 363698007 = << 39057004 OR 116676008 = << 415582006 )",
    "< 404684003 : { 363698007 = << 39057004 } OR { 116676008 = << 415582006 }",
    "< 404684003 : 363698007 = (<< 39057004 OR << 71388002)",
    # concrete values
    "< 27658006 : 411116001 = 385055001, [1..*] { 127489000 = << 372687004, 111115 >= #500, 111115 < #800 }",
    "< 27658006 : 111115 = #-1.5", "< 27658006 : 111115 = #+20",
    '< 27658006 : 111115 = "PANADOL"', '< 27658006 : 111115 = ("a" "b")', '< 27658006 : 111115 = wild:"PAN*"',
    "< 27658006 : 111115 = true", "< 27658006 : 111115 != FALSE",
    # dotted attributes
    "<< 19829001 . 116676008", "<< 19829001.116676008.<< 116676008",
    "(<< 19829001 |Disorder of lung| AND < 301867009).116676008",
    # compound expressions, nesting, comments
    "< 19829001 AND < 301867009", "< 19829001 and < 301867009", "< 19829001 , < 301867009",
    "< 19829001 OR < 301867009 OR 404684003", "< 19829001 MINUS < 301867009",
    "(< 19829001 OR < 301867009) AND < 404684003", "((((< 19829001))))",
    "< ( << 19829001 MINUS << 301867009 )", "< 19829001 /* lung */ AND /* oedema */ < 301867009",
    "/* only a comment before */ 404684003", "404684003\n\t|Clinical finding|\r\n",
    "<< ^ 700043003 AND (< 19829001 : 116676008 = << 79654002)",
    # filters: description, concept, member; history supplements
    '< 64572001 {{ term = "heart att" }}', '< 64572001 {{ D term = match:"heart att", language = en }}',
    '< 64572001 {{ term = wild:"cardi*opathy" }}', '< 64572001 {{ term = ("heart" wild:"*itis") }}',
    '< 64572001 {{ term != "heart", type = (syn fsn), dialect = en-gb (prefer) }}',
    '< 64572001 {{ typeId = 900000000000013009, dialectId = 999001261000000100 (900000000000548007) }}',
    '< 64572001 {{ id = 1234567011 }}', '< 64572001 {{ type = definition, dialect = ( en-us en-gb (accept) ) }}',
    "< 64572001 {{ C definitionStatus = primitive, moduleId = << 900000000000445007 }}",
    '< 64572001 {{ c effectiveTime >= "20190731", active = 1 }}', "< 64572001 {{ C active = false }}",
    "^ 447562003 {{ M mapTarget = \"J45.9\" }}", "^ 447562003 {{ M active = 1, effectiveTime < \"20200101\" }}",
    "^ [targetComponentId] 900000000000527005 {{ M referencedComponentId = 67415000 |Hay asthma| }}",
    "< 195967001 {{ +HISTORY-MIN }}", "< 195967001 {{ + history_max }}", "< 195967001 {{ +HISTORY }}",
    "< 195967001 {{ +HISTORY (<< 900000000000527005 |SAME AS association reference set|) }}",
    # terms in any script, with the characters a clinical term has
    "258710007 |degrees C|", "258710007 |°C|", "258683005 |µg|", "422496002 |Hjärtinfarkt (störning)|",
    "404684003 |Клиническая находка|", "404684003 |临床发现|", "404684003 |a (b) [c] {d} * < > = , : ^ ! \\ / \" '|",
    "404684003 |emoji 🩺 term|",
]


@pytest.mark.parametrize("text", VALID)
def test_valid_ecl_is_accepted(text: str) -> None:
    assert ecl_syntax_error(text) is None


INVALID = [
    "234234 << 234234",  # the reference suite's vs-bad-ecl
    "", "   ", "<<", "<< ", "< 1", "< 12345", "< 0123456", "1234567890123456789", "404684003 AND",
    "AND 404684003", "< 404684003 OR", "(< 404684003", "< 404684003)", "< 404684003 : ",
    "< 404684003 : 363698007", "< 404684003 : 363698007 == 39057004", "< 404684003 |Clinical finding",
    "< 404684003 || ", "<<< 404684003", "< 404684003 AND < 19829001 OR < 301867009",  # mixed without brackets
    "< 404684003 MINUS < 19829001 MINUS < 301867009", "< 404684003 : [1..] 363698007 = *",
    "< 404684003 : [a..3] 363698007 = *", '< 64572001 {{ term = heart }}', "< 64572001 {{ }}",
    "< 64572001 {{ C active = maybe }}", '< 64572001 {{ c effectiveTime = "2019-07-31" }}',
    "< 195967001 {{ +HISTORY-ALL }}", "< 404684003 /* unclosed comment", "404684003 |term|x",
    "is-a 404684003", "<< 404684003 ORR << 19829001", "<<404684003AND<<19829001",
    "!!< << 404684003",  # one constraint operator; a nested one needs brackets
    '"http://loinc.org"#"54486-6"',  # an alternate identifier's scheme is an alias
]


@pytest.mark.parametrize("text", INVALID)
def test_invalid_ecl_is_refused(text: str) -> None:
    assert ecl_syntax_error(text) is not None


def test_the_error_says_where() -> None:
    assert ecl_syntax_error("234234 << 234234") == "parse error at character 8 ('<< 234234')"
    assert ecl_syntax_error("< 404684003 AND") == "parse error: the expression ends early"


def test_what_cannot_be_judged_is_accepted() -> None:
    too_long = " OR ".join(["404684003"] * (MAX_BYTES // 13 + 1)) + " OR"
    assert ecl_syntax_error(too_long) is None
    deep = "(" * 2000 + "404684003" + ")" * 2000  # deeper than the interpreter's recursion
    assert ecl_syntax_error(deep) is None


def test_the_abnf_interpreter_follows_rfc_5234() -> None:
    g = Grammar('start = 2*3"ab" [%x30-39] %s"Z" / 1*(x / "-") ; comment\nx = %x78.79\n', "start")
    assert [g.match(t.encode())[0] for t in ("abAbZ", "ABab0Z", "abZ", "ababababZ", "ababz", "xy-xy", "xyx")] == \
        [True, True, False, False, False, True, False]
    nullable = Grammar("s = *(*\"a\") \"b\"", "s")  # a repetition of what can match nothing ends
    assert nullable.match(b"aab")[0] and not nullable.match(b"aa")[0]


# -- the ValueSet rule ----------------------------------------------------------------------------
def valueset(value: str, prop: str = "constraint", op: str = "=",
             system: str = "http://snomed.info/sct") -> dict[str, Any]:
    return {"resourceType": "ValueSet", "url": "http://example.org/vs", "status": "active",
            "compose": {"include": [{"system": system, "version": "http://snomed.info/sct/900000000000207008",
                                     "filter": [{"property": prop, "op": op, "value": value}]}]}}


VALUE = "/compose/include/0/filter/0/value"


def test_a_snomed_constraint_filter_is_ecl() -> None:
    assert verdicts(valueset("<< 73211009 |Diabetes mellitus| : 363698007 |Finding site| = << 113331007")) == []
    assert verdicts(valueset("^ 700043003 {{ +HISTORY-MIN }}")) == []
    assert verdicts(valueset("234234 << 234234")) == [(VALUE, "fhir-snomed-ecl")]
    assert verdicts(valueset("<< 73211009 AND")) == [(VALUE, "fhir-snomed-ecl")]


def test_only_snomed_constraint_equals_filters_are_read_as_ecl() -> None:
    assert verdicts(valueset("234234 << 234234", prop="concept", op="is-a")) != [(VALUE, "fhir-snomed-ecl")]
    assert verdicts(valueset("234234 << 234234", op="regex")) == []
    assert verdicts(valueset("234234 << 234234", system="http://loinc.org")) == []
    exclude = valueset("<< 73211009")
    exclude["compose"]["exclude"] = exclude["compose"].pop("include")
    exclude["compose"]["include"] = [{"system": "http://snomed.info/sct"}]
    assert verdicts(exclude) == []
    exclude["compose"]["exclude"][0]["filter"][0]["value"] = "<< 73211009 OR"
    assert verdicts(exclude) == [("/compose/exclude/0/filter/0/value", "fhir-snomed-ecl")]


def test_the_violation_names_the_expression() -> None:
    from psvn.policies.validators.fhir import ANY_RESOURCE, FhirValidator

    v = FhirValidator(ANY_RESOURCE)
    v.fast = False
    found = v.check(valueset("234234 << 234234"))[0]
    assert [x.rule for x in found] == ["fhir-snomed-ecl"]
    assert "'234234 << 234234'" in found[0].message and "ECL" in found[0].message


def test_ecl_judged_per_payload_is_bounded() -> None:
    """Past the payload's work budget of ECL, filters are accepted unjudged (a payload
    within the body limit cannot hold the event loop with parses); the next payload is judged."""
    from psvn.policies.validators.budget import BUDGET
    from psvn.policies.validators.fhir import ANY_RESOURCE, FhirValidator
    from psvn.policies.validators.fhir_terminology import ecl_cost

    good = "<< 404684003 |Clinical finding| OR << 71388002 |Procedure|"
    n = BUDGET // ecl_cost(good) + 1
    filters = [{"property": "constraint", "op": "=", "value": good} for _ in range(n)]
    bad = {"property": "constraint", "op": "=", "value": good + " <<"}  # longer than what is left
    vs = {"resourceType": "ValueSet", "status": "draft",
          "compose": {"include": [{"system": "http://snomed.info/sct", "filter": [*filters, bad]}]}}
    v = FhirValidator(ANY_RESOURCE)
    assert v.validate(vs) == []  # the bad one came after the budget: not judged
    vs["compose"]["include"][0]["filter"] = [bad, *filters]
    assert [x.rule for x in v.validate(vs)] == ["fhir-snomed-ecl"]
    assert [x.rule for x in v.validate(vs)] == ["fhir-snomed-ecl"]  # a new payload, a new budget
