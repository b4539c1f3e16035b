"""JSON Schema 2020-12 validation (jsonschema-rs), with UK formats and actionable errors.

The policy set adds a type without code: drop a schema in ``schemas/`` and name it in the
catalogue. Schemas may use the formats ``uk-nhs-number`` (modulus-11), ``psvn-nhs-subject``
(``nhs:`` + NHS number), ``uk-ods-code`` and ``uk-postcode`` besides the standard ones. Each
error names the JSON pointer of the offending value (for ``required``: of the missing member),
the keyword as ``schema-<keyword>``, and what the schema expected.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs

from psvn.errors import Violation

from .common import escape, is_nhs_number, nhs_number_problem, ods_code_problem, pointer

_POSTCODE = re.compile(r"(GIR 0AA|[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2})", re.ASCII)

FORMATS = {
    "uk-nhs-number": is_nhs_number,
    "psvn-nhs-subject": lambda v: v.startswith("nhs:") and is_nhs_number(v[4:]),
    "uk-ods-code": lambda v: ods_code_problem(v) is None,
    "uk-postcode": lambda v: bool(_POSTCODE.fullmatch(v)),
}
FORMAT_WORDS = {
    "uk-nhs-number": "an NHS number: 10 digits with a valid modulus-11 check digit",
    "uk-ods-code": "an ODS code: 3-10 upper-case letters and digits",
    "uk-postcode": "a UK postcode, e.g. BN1 1AA",
    "psvn-nhs-subject": "nhs: and an NHS number with a valid check digit, e.g. nhs:9434765919",
    "date": "a date YYYY-MM-DD (RFC 3339)",
    "date-time": "a date-time YYYY-MM-DDThh:mm:ssZ (RFC 3339, with offset)",
    "uri": "an absolute URI",
    "email": "an email address",
    "uuid": "a UUID",
}
_FORMAT_RULES = {"uk-ods-code": "uk-ods-code-format"}


def compile_schema(schema: dict[str, Any]) -> Any:
    """Compile once (cached by the caller per type); raises ``ValueError`` on a bad schema."""
    try:
        return jsonschema_rs.validator_for(schema, validate_formats=True, formats=FORMATS)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        raise ValueError(f"schema does not compile: {exc}") from exc


def _expected(kind: Any) -> str | None:
    name = kind.name
    d = kind.as_dict()
    if name == "required":
        return f"member {d.get('property')!r}"
    if name == "type":
        types = d.get("types") or [d.get("expected")]
        return " or ".join(str(t) for t in types if t)
    if name == "enum":
        return "one of: " + ", ".join(map(repr, d.get("options") or []))
    if name == "const":
        return repr(d.get("expected_value"))
    if name == "pattern":
        return f"a string matching {d.get('pattern')}"
    if name == "format":
        fmt = d.get("format")
        return FORMAT_WORDS.get(fmt, f"format {fmt}")
    if name in ("minimum", "exclusiveMinimum"):
        return f"{'>=' if name == 'minimum' else '>'} {d.get('limit')}"
    if name in ("maximum", "exclusiveMaximum"):
        return f"{'<=' if name == 'maximum' else '<'} {d.get('limit')}"
    if name in ("minLength", "maxLength"):
        return f"{'at least' if name == 'minLength' else 'at most'} {d.get('limit')} characters"
    if name in ("minItems", "maxItems"):
        return f"{'at least' if name == 'minItems' else 'at most'} {d.get('limit')} items"
    if name in ("additionalProperties", "unevaluatedProperties"):
        return "only the members the schema defines"
    if name == "uniqueItems":
        return "unique items"
    if name in ("anyOf", "oneOf"):
        return f"a value valid against {'exactly one' if name == 'oneOf' else 'at least one'} of the alternatives"
    return None


def schema_violations(compiled: Any, data: Any, *, prefix: str = "") -> list[Violation]:
    """Every schema error as a Violation; ``prefix`` roots the pointers (CloudEvents ``/data``)."""
    out: list[Violation] = []
    for err in compiled.iter_errors(data):
        kind = err.kind
        name = kind.name
        path = prefix + pointer(list(err.instance_path))
        rule = f"schema-{name}"
        if name == "required":
            path += "/" + escape(kind.as_dict().get("property"))
        elif name == "additionalProperties":
            extra = kind.as_dict().get("unexpected") or []
            for key in extra:
                out.append(Violation(path=f"{path}/{escape(key)}", rule=rule,
                                     message=f"member {key!r} is not allowed here",
                                     expected=_expected(kind)))
            if extra:
                continue
        elif name == "format":
            fmt = kind.as_dict().get("format")
            rule = _FORMAT_RULES.get(fmt, rule)
            if fmt in ("uk-nhs-number", "psvn-nhs-subject"):
                value = err.instance
                if fmt == "psvn-nhs-subject" and isinstance(value, str) and value.startswith("nhs:"):
                    value = value[4:]
                problem = nhs_number_problem(value)
                if problem is not None:
                    out.append(Violation(path=path, rule=problem[0], message=problem[1],
                                         expected=_expected(kind)))
                    continue
        out.append(Violation(path=path, rule=rule, message=err.message, expected=_expected(kind)))
    return out
