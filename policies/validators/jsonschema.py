"""JSON Schema 2020-12 validation (jsonschema-rs), with UK formats and actionable errors.

The policy set adds a type without code: drop a schema in ``schemas/`` and name it in the
catalogue. Schemas may use the formats ``uk-nhs-number`` (modulus-11), ``psvn-nhs-subject``
(``nhs:`` + NHS number), ``uk-ods-code`` and ``uk-postcode`` besides the standard ones. Each
error names the JSON pointer of the offending value (for ``required``: of the missing member),
the keyword as ``schema-<keyword>``, and what the schema expected.

Data subjects: a schema says which members name a person by giving them the format
``psvn-nhs-subject`` or ``uk-nhs-number``; :class:`SubjectFinder` reads them from a valid
document as ``nhs:<number>``, for the consent check. Members matched only by a ``pattern`` (the
consent-change payload's own subject) are not data subjects: a consent change must reach the
operator whatever the citizen has opted out of.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs

from psvn.core.errors import Violation

from .common import (
    NHS_SUBJECT_PREFIX,
    NO_SUBJECTS,
    escape,
    is_nhs_number,
    nhs_number_problem,
    nhs_subject,
    ods_code_problem,
    pointer,
)

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


# -- data subjects --------------------------------------------------------------------------------
SUBJECT_FORMATS = frozenset({"psvn-nhs-subject", "uk-nhs-number"})
# How a schema edge moves through a document: stay on the value ($ref, allOf...), enter a named
# member, each item of an array, each member not named in properties, or each member whose
# name matches a pattern.
_SAME, _MEMBER, _ITEMS, _ADDITIONAL, _PATTERN = range(5)
_Edge = tuple[int, Any, dict[str, Any]]  # (kind, argument, subschema)


class SubjectFinder:
    """Reads the NHS numbers a schema marks (format ``psvn-nhs-subject`` or ``uk-nhs-number``)
    out of a valid document, as ``nhs:<number>``.

    Built once per schema: a graph of its subschemas (``properties``, ``items``/``prefixItems``,
    ``additionalProperties``/``patternProperties``, ``allOf``/``anyOf``/``oneOf``, local
    ``$ref``s), pruned to those from which a marked member can be reached. The document is then
    walked along that graph, so a recursive schema (a person with a carer who is a person...)
    is followed as deep as the document goes, and members that lead nowhere are not visited.
    """

    def __init__(self, schema: dict[str, Any]) -> None:
        self._root = schema
        self._edges: dict[int, list[_Edge]] = {}
        self._marked: dict[int, str] = {}  # node id -> its NHS format
        stack, seen = [schema], {id(schema)}
        while stack:
            node = stack.pop()
            edges = self._edges[id(node)] = self._children(node)
            fmt = node.get("format")
            if fmt in SUBJECT_FORMATS:
                self._marked[id(node)] = fmt
            for _, _, child in edges:
                if id(child) not in seen:
                    seen.add(id(child))
                    stack.append(child)
        relevant = set(self._marked)
        changed = True
        while changed:  # a fixed point: a schema's graph may have cycles
            changed = False
            for nid, edges in self._edges.items():
                if nid not in relevant and any(id(c) in relevant for _, _, c in edges):
                    relevant.add(nid)
                    changed = True
        self._edges = {nid: [e for e in edges if id(e[2]) in relevant]
                       for nid, edges in self._edges.items() if nid in relevant}

    @property
    def finds_any(self) -> bool:
        """Whether the schema marks any member at all (if not, there is nothing to walk)."""
        return id(self._root) in self._edges

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return None  # a remote schema: not followed (the policy set's schemas are self-contained)
        node: Any = self._root
        for part in ref[2:].split("/") if len(ref) > 2 else []:
            part = part.replace("~1", "/").replace("~0", "~")
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def _children(self, node: dict[str, Any]) -> list[_Edge]:
        out: list[tuple[int, Any, Any]] = []
        ref = node.get("$ref")
        if isinstance(ref, str):
            out.append((_SAME, None, self._resolve(ref)))
        for key in ("allOf", "anyOf", "oneOf"):
            subs = node.get(key)
            if isinstance(subs, list):
                out.extend((_SAME, None, sub) for sub in subs)
        props = node.get("properties")
        named = frozenset(props) if isinstance(props, dict) else frozenset()
        if isinstance(props, dict):
            out.extend((_MEMBER, name, sub) for name, sub in props.items())
        patterns = node.get("patternProperties")
        if isinstance(patterns, dict):
            for pattern, sub in patterns.items():
                try:
                    out.append((_PATTERN, re.compile(pattern), sub))
                except re.error:  # an ECMA-only regex: apply the subschema to every member
                    out.append((_PATTERN, re.compile(""), sub))
        out.append((_ADDITIONAL, named, node.get("additionalProperties")))
        out.append((_ITEMS, None, node.get("items")))
        prefix = node.get("prefixItems")
        if isinstance(prefix, list):
            out.extend((_ITEMS, None, sub) for sub in prefix)
        return [e for e in out if isinstance(e[2], dict)]

    def subjects(self, data: Any) -> frozenset[str]:
        """The marked NHS numbers in ``data`` (a document valid against the schema)."""
        if not self.finds_any:
            return NO_SUBJECTS
        out: set[str] = set()
        seen: set[tuple[int, int]] = set()
        edges_of, marked = self._edges, self._marked

        def walk(node: dict[str, Any], value: Any) -> None:
            key = (id(node), id(value))
            if key in seen:  # the same subschema on the same value: a $ref cycle
                return
            seen.add(key)
            fmt = marked.get(id(node))
            if fmt is not None and isinstance(value, str):
                number = value[len(NHS_SUBJECT_PREFIX):] if fmt == "psvn-nhs-subject" else value
                if (fmt != "psvn-nhs-subject" or value.startswith(NHS_SUBJECT_PREFIX)) and is_nhs_number(number):
                    out.add(nhs_subject(number))
            for kind, arg, child in edges_of[id(node)]:
                if kind == _SAME:
                    walk(child, value)
                elif kind == _ITEMS:
                    if isinstance(value, list):
                        for item in value:
                            walk(child, item)
                elif isinstance(value, dict):
                    if kind == _MEMBER:
                        if arg in value:
                            walk(child, value[arg])
                    else:
                        for name, member in value.items():
                            if (name not in arg) if kind == _ADDITIONAL else arg.search(name):
                                walk(child, member)

        walk(self._root, data)
        return frozenset(out) if out else NO_SUBJECTS
