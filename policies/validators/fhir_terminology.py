"""Code-system semantics the reference validator checks without needing a terminology server.

The Java reference validator asks its terminology server about every coded value it meets; psvn
has no server, but part of what the server would say is decidable offline, and this module
makes those checks, for the walk (:mod:`.fhir`, which reports them) and for the two fast paths
(:mod:`.fhir_fast`, :mod:`.fhir_typed`, which only ask "is it clean?"):

* **Codes of the core code systems.** A Coding (or a ValueSet ``compose`` concept) whose system
  is a code system the R4 core specification defines completely (``http://hl7.org/fhir/...``,
  4.0.1; ``policies/fhir/r4-codesystems.json``) must use one of its codes, whatever the binding
  strength -- the reference reports "Unknown code" even under an example binding or none.
* **SNOMED CT identifiers.** A SNOMED CT code that is a single identifier (letters and digits
  only, so not a post-coordinated expression) must be a well-formed SCTID: 6-18 digits, no
  leading zero, a known partition identifier and a valid Verhoeff check digit (SNOMED CT
  Technical Implementation Guide, 6.1 "SCTID Data Type"). Whether the concept *exists* needs the
  release files; the syntax does not.
* **CodeSystem rules** (the reference's ``CodeSystemValidator``): a supplement has content
  ``supplement`` and no ``caseSensitive``; ``content = supplement`` needs ``supplements``; a
  complete code system's ``count`` is its number of concepts, and a ``not-present`` one lists
  none; property definitions: an absolute, unique ``uri``, a unique ``code``, and a standard
  concept property (``http://hl7.org/fhir/concept-properties#...``) keeps its code and type;
  each concept property value has its definition's type.
* **SNOMED CT ECL.** A ValueSet filter on SNOMED CT with ``property = constraint`` and ``op = =``
  carries an Expression Constraint Language expression, which must parse
  (:mod:`.snomed_ecl`, the official ECL 2.2 ABNF; only the syntax).
* **ValueSet parameters** (``valueset-parameter`` extensions and ``cqf-expression`` filter
  values): the expression's language is ``text/fhirpath``, it parses as FHIRPath, and every
  ``%name`` in it is a declared parameter.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from antlr4 import CommonTokenStream, InputStream  # type: ignore[import-untyped]
from antlr4.error.ErrorListener import ErrorListener  # type: ignore[import-untyped]
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer  # type: ignore[import-untyped]
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser  # type: ignore[import-untyped]

from psvn.core.errors import Violation

from . import budget
from .common import escape
from .snomed_ecl import ecl_syntax_error

CODESYSTEMS = Path(__file__).resolve().parent.parent / "fhir" / "r4-codesystems.json"
SNOMED = "http://snomed.info/sct"
CORE_VERSION = "4.0.1"
#: Resources with rules of their own here (the fast paths leave them to the walk when any fails).
TERMINOLOGY_RESOURCES = frozenset({"CodeSystem", "ValueSet"})

# -- SNOMED CT identifiers -------------------------------------------------------------------
_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 4, 0, 6, 7, 8, 9, 5), (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7), (4, 0, 1, 2, 3, 9, 5, 6, 7, 8), (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2), (7, 6, 5, 9, 8, 2, 1, 0, 4, 3), (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0))
#: The permutations: the i-th is the first applied i times (written out: a typo here is silent).
_VERHOEFF_P1 = (1, 5, 7, 6, 2, 8, 3, 0, 9, 4)
_VERHOEFF_P: tuple[tuple[int, ...], ...] = (tuple(range(10)),)
for _ in range(7):
    _VERHOEFF_P += (tuple(_VERHOEFF_P1[k] for k in _VERHOEFF_P[-1]),)
#: Partition identifiers (the two digits before the check digit): 0x in the International
#: release (concept, description, relationship; 03-05 the RF1 subset and cross-map ids), 1x the
#: same with a namespace (extensions).
_PARTITIONS = frozenset({"00", "01", "02", "03", "04", "05", "10", "11", "12", "13", "14", "15", "16"})
_SINGLE_ID = re.compile(r"[0-9A-Za-z]+")


#: d(c, p_i(digit)) as one table per position (mod 8), indexed by c * 10 + digit, and the same for
#: three digits at once (positions o, o+1, o+2 mod 8, indexed by c * 1000 + the three digits as a
#: number): a 9-digit SCTID costs three lookups on the hot path (a ServiceRequest carries SNOMED CT).
_VERHOEFF_T = tuple(bytes(_VERHOEFF_D[c][_VERHOEFF_P[i][d]] for c in range(10) for d in range(10))
                    for i in range(8))


def _three(o: int, c: int, x: int) -> int:
    for j in range(3):
        c = _VERHOEFF_T[(o + j) & 7][c * 10 + x % 10]
        x //= 10
    return c


_VERHOEFF_T3 = tuple(bytes(_three(o, c, x) for c in range(10) for x in range(1000)) for o in range(8))


#: The same tables keyed by the digits as text, each entry the 10 outcomes by incoming c: a
#: chunk costs a slice, a dict lookup and an index (no int(), no divmod: ~40% less per code).
_VERHOEFF_S3 = tuple({f"{x:03d}": bytes(t[c * 1000 + x] for c in range(10)) for x in range(1000)}
                     for t in _VERHOEFF_T3)
_VERHOEFF_S1 = tuple({str(x): bytes(t[c * 10 + x] for c in range(10)) for x in range(10)} for t in _VERHOEFF_T)


def _verhoeff_loop(digits: str) -> bool:
    """The Verhoeff check by chunks, any length (:func:`verhoeff_valid` for the lengths it has no
    straight-line form for)."""
    c, pos, end = 0, 0, len(digits)
    s3 = _VERHOEFF_S3
    while end >= 3:  # three digits at a time from the right (the check digit is position 0)
        c = s3[pos & 7][digits[end - 3:end]][c]
        end -= 3
        pos += 3
    while end:  # the leading one or two digits
        end -= 1
        c = _VERHOEFF_S1[pos & 7][digits[end]][c]
        pos += 1
    return c == 0


def _straight_line(n: int, *, sctid: bool) -> Any:
    """The Verhoeff check of exactly ``n`` digits as one expression: no loop, no counters, the
    chunks' slices constants (a 9-digit code costs three slices and three lookups). ``sctid``:
    the first chunk's table holds only the chunks with a partition identifier and the last
    chunk's (the leading digits) none with a leading zero, so a code that is no well-formed SCTID
    raises KeyError (as any non-digit does) instead of costing tests of its own."""
    expr, end, pos = "0", n, 0
    ns: dict[str, Any] = {}
    while end > 0:
        k = 3 if end >= 3 else 1
        full = _VERHOEFF_S3[pos & 7] if k == 3 else _VERHOEFF_S1[pos & 7]
        table = full
        if sctid and pos == 0:  # the check digit's chunk: its first two digits are the partition
            table = {x: t for x, t in full.items() if x[:2] in _PARTITIONS}
        if sctid and end == k:  # the leading chunk
            table = {x: t for x, t in table.items() if x[0] != "0"}
        name = f"T{pos}"
        ns[name] = table
        expr = f"{name}[d[{end - k}:{end}]][{expr}]" if k == 3 else f"{name}[d[{end - 1}]][{expr}]"
        end, pos = end - k, pos + k
    exec(compile(f"def check(d):\n    return {expr} == 0\n", f"<verhoeff {n}>", "exec"), ns)
    return ns["check"]


#: the straight-line checks by length (every length an SCTID may have, 6-18, and the shorter)
_VERHOEFF_BY_LENGTH = {n: _straight_line(n, sctid=False) for n in range(1, 19)}
#: the same, that also raise KeyError for what is no well-formed SCTID (see :func:`snomed_code_ok`)
_SCTID_BY_LENGTH = {n: _straight_line(n, sctid=True) for n in range(6, 19)}


def verhoeff_valid(digits: str) -> bool:
    """The Verhoeff check (dihedral group D5) over a string of ASCII digits, check digit last."""
    check = _VERHOEFF_BY_LENGTH.get(len(digits))
    return bool(check(digits)) if check is not None else _verhoeff_loop(digits)


def snomed_code_ok(code: Any) -> bool:
    """``code_problem(SNOMED, code) is None``, for the fast paths. A well-formed SCTID (6-18 ASCII
    digits, no leading zero, a partition identifier, the check digit) is one call of its length's
    straight-line check, whose tables hold only what such a code can have: anything else raises
    KeyError there (or has no check of its length) and :func:`sctid_problem` decides."""
    if type(code) is not str:
        return True
    check = _SCTID_BY_LENGTH.get(len(code))
    if check is not None:
        try:
            if check(code):
                return True
        except KeyError:
            pass
    return sctid_problem(code) is None


def sctid_problem(code: str) -> str | None:
    """Why ``code`` (a SNOMED CT code) is not a valid SCTID; ``None`` if it is one, or if it is
    not a single identifier at all (a post-coordinated expression is left alone)."""
    if not _SINGLE_ID.fullmatch(code):
        return None
    if not code.isdigit() or not code.isascii():
        return "is not a SNOMED CT identifier (an SCTID has digits only)"
    if not 6 <= len(code) <= 18:
        return f"is not a SNOMED CT identifier (an SCTID has 6 to 18 digits, not {len(code)})"
    if code[0] == "0":
        return "is not a SNOMED CT identifier (an SCTID has no leading zero)"
    if code[-3:-1] not in _PARTITIONS:
        return f"is not a SNOMED CT identifier (no partition identifier {code[-3:-1]!r})"
    if not verhoeff_valid(code):
        return "is not a SNOMED CT identifier (its Verhoeff check digit is wrong)"
    return None


# -- the core code systems -------------------------------------------------------------------
@lru_cache(maxsize=1)
def core_codesystems() -> dict[str, frozenset[str]]:
    """url -> codes of every complete code system of the R4 core specification (loaded once)."""
    doc = json.loads(CODESYSTEMS.read_text())
    return {url: frozenset(codes) for url, codes in doc["codesystems"].items()}


_core = core_codesystems


def code_problem(system: Any, code: Any, version: Any = None) -> tuple[str, str, str] | None:
    """(rule, what is wrong, what is expected) for a code of ``system``; ``None`` when the code
    is fine or cannot be decided offline."""
    if type(system) is not str or type(code) is not str or not code:
        return None
    if system == SNOMED:
        why = sctid_problem(code)
        if why is None:
            return None
        return ("fhir-code-unknown", f"SNOMED CT code {code[:40]!r} {why}",
                "a SNOMED CT concept id (SCTID), e.g. 276885007")
    codes = core_codesystems().get(system)
    if codes is None or code in codes or (version is not None and version != CORE_VERSION):
        return None
    shown = ", ".join(sorted(codes)[:12]) + (", ..." if len(codes) > 12 else "")
    return ("fhir-code-unknown", f"unknown code {code[:60]!r} in the code system {system} (version "
            f"{CORE_VERSION}, defined completely by the FHIR R4 specification)", f"one of: {shown}")


def coding_ok(system: Any, code: Any, version: Any = None) -> bool:
    """The fast paths' form of :func:`code_problem` (most systems are neither SNOMED nor core)."""
    if system == SNOMED:  # the common case of the hot path
        return snomed_code_ok(code)
    if system not in _core():
        return True
    return code_problem(system, code, version) is None


def coding_violations(coding: dict[str, Any], p: str) -> list[Violation]:
    """The walk's check of one Coding object at pointer ``p``."""
    problem = code_problem(coding.get("system"), coding.get("code"), coding.get("version"))
    if problem is None:
        return []
    return [Violation(path=f"{p}/code", rule=problem[0], message=problem[1], expected=problem[2])]


# -- resources -------------------------------------------------------------------------------
def resource_violations(rt: str, res: dict[str, Any], ptr: str) -> list[Violation]:
    """The rules of a CodeSystem or ValueSet resource (nothing for other types)."""
    out: list[Violation] = []
    if rt == "CodeSystem":
        _codesystem(res, ptr, out)
    elif rt == "ValueSet":
        _valueset(res, ptr, out)
    return out


def resource_ok(rt: str, res: dict[str, Any]) -> bool:
    return rt not in TERMINOLOGY_RESOURCES or not resource_violations(rt, res, "")


#: The standard concept properties and their types (R5 / THO ``concept-properties``, as the
#: reference validator knows them: ``CodeSystemValidator.KnownProperty``).
KNOWN_PROPERTIES: dict[str, str] = {
    "status": "code", "inactive": "boolean", "effectiveDate": "dateTime", "deprecationDate": "dateTime",
    "retirementDate": "dateTime", "notSelectable": "boolean", "parent": "code", "child": "code",
    "partOf": "code", "synonym": "code", "comment": "string", "itemWeight": "decimal"}
CONCEPT_PROPERTIES = "http://hl7.org/fhir/concept-properties#"
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")


def _count(concepts: Any) -> int:
    if type(concepts) is not list:
        return 0
    return sum(1 + _count(c.get("concept")) for c in concepts if type(c) is dict)


def _codesystem(cs: dict[str, Any], ptr: str, out: list[Violation]) -> None:
    content, supplements = cs.get("content"), cs.get("supplements")
    if supplements is not None:
        if content != "supplement":
            out.append(Violation(path=f"{ptr}/content", rule="fhir-codesystem", message="a CodeSystem "
                                 "supplement (it has supplements) must have content 'supplement', not "
                                 f"{content!r}", expected="content: supplement"))
        if "caseSensitive" in cs:
            out.append(Violation(path=f"{ptr}/caseSensitive", rule="fhir-codesystem", message="a CodeSystem "
                                 "supplement must not set caseSensitive (its base code system says it)",
                                 expected="no caseSensitive"))
    elif content == "supplement":
        out.append(Violation(path=f"{ptr}/supplements", rule="fhir-codesystem", message="a CodeSystem with "
                             "content 'supplement' must name the code system it supplements",
                             expected="supplements: the base code system's canonical URL"))
    concepts = cs.get("concept")
    count = cs.get("count")
    if content == "complete" and type(count) is int and count != _count(concepts):
        out.append(Violation(path=f"{ptr}/count", rule="fhir-codesystem", message=f"count is {count} but this "
                             f"complete code system has {_count(concepts)} concepts",
                             expected="the number of concepts"))
    if content == "not-present" and type(concepts) is list and concepts:
        out.append(Violation(path=f"{ptr}/concept/0", rule="fhir-codesystem", message="a CodeSystem with "
                             "content 'not-present' must not list concepts", expected="no concept"))
    defs = _property_definitions(cs, ptr, out)
    if type(concepts) is list:
        _concept_properties(concepts, f"{ptr}/concept", defs, out)


def _property_definitions(cs: dict[str, Any], ptr: str, out: list[Violation]) -> dict[str, str | None]:
    """Check ``CodeSystem.property``; return property uri/code -> declared type (first wins)."""
    defs: dict[str, str | None] = {}
    props = cs.get("property")
    if type(props) is not list:
        return defs
    url = cs.get("url")
    for i, prop in enumerate(props):
        if type(prop) is not dict:
            continue
        p = f"{ptr}/property/{i}"
        uri, code, ptype = prop.get("uri"), prop.get("code"), prop.get("type")
        ptype = ptype if type(ptype) is str else None
        known_uri: str | None = None
        if type(uri) is str:
            if not _ABSOLUTE.match(uri):
                out.append(Violation(path=f"{p}/uri", rule="fhir-codesystem", message=f"property uri {uri!r} is "
                                     "not an absolute URI", expected="an absolute URI"))
                uri = None
            elif uri in defs:
                out.append(Violation(path=f"{p}/uri", rule="fhir-codesystem", message="a property is already "
                                     f"defined with the URI {uri!r}", expected="one property per URI"))
            else:
                defs[uri] = ptype
        if type(uri) is str and "://hl7.org/fhir" in uri:
            name = uri[len(CONCEPT_PROPERTIES):] if uri.startswith(CONCEPT_PROPERTIES) else None
            if name in KNOWN_PROPERTIES:
                known_uri = name
            elif not (_base_spec(url) or (type(url) is str and uri.startswith(url))):
                out.append(Violation(path=f"{p}/uri", rule="fhir-codesystem", message=f"property uri {uri!r} is "
                                     "in the HL7 namespace but names no standard concept property",
                                     expected=f"{CONCEPT_PROPERTIES} and one of: {', '.join(KNOWN_PROPERTIES)}"))
        if type(code) is str:
            if code in defs:
                out.append(Violation(path=f"{p}/code", rule="fhir-codesystem", message="a property is already "
                                     f"defined with the code {code!r}", expected="one property per code"))
            else:
                defs[code] = ptype
        if known_uri is not None:
            if type(code) is str and code in KNOWN_PROPERTIES and code != known_uri:
                out.append(Violation(path=f"{p}/code", rule="fhir-codesystem", message=f"the URI {uri!r} is "
                                     f"assigned the code {known_uri!r}; the code {code!r} names another standard "
                                     "property", expected=f"code: {known_uri}"))
            want = KNOWN_PROPERTIES[known_uri]
            if ptype is not None and ptype != want:
                out.append(Violation(path=f"{p}/type", rule="fhir-codesystem", message=f"wrong type {ptype!r}: the "
                                     f"URI {uri!r} identifies a property of type {want!r}", expected=f"type: {want}"))
    return defs


def _base_spec(url: Any) -> bool:
    return type(url) is str and url.startswith("http://hl7.org/fhir/") and "/" not in url[20:]


def _concept_properties(concepts: list[Any], p: str, defs: dict[str, str | None], out: list[Violation]) -> None:
    for i, concept in enumerate(concepts):
        if type(concept) is not dict:
            continue
        cp = f"{p}/{i}"
        props = concept.get("property")
        if type(props) is list:
            for j, prop in enumerate(props):
                if type(prop) is not dict or type(prop.get("code")) is not str:
                    continue
                want = defs.get(prop["code"])
                key = next((k for k in prop if k.startswith("value") and len(k) > 5), None)
                if want is None or key is None:
                    continue
                got = key[5:] if key[5:] == "Coding" else key[5].lower() + key[6:]
                if got != want:
                    out.append(Violation(path=f"{cp}/property/{j}/{escape(key)}", rule="fhir-codesystem",
                                         message=f"the property {prop['code']!r} has the type {got!r}, but it is "
                                         f"defined with the type {want!r}",
                                         expected=f"value{want[0].upper()}{want[1:]}"))
        children = concept.get("concept")
        if type(children) is list:
            _concept_properties(children, f"{cp}/concept", defs, out)


PARAMETER_EXT = "http://hl7.org/fhir/tools/StructureDefinition/valueset-parameter"
EXPRESSION_EXT = "http://hl7.org/fhir/StructureDefinition/cqf-expression"


def _valueset(vs: dict[str, Any], ptr: str, out: list[Violation]) -> None:
    compose = vs.get("compose")
    if type(compose) is not dict:
        return
    params: set[str] = set()
    exts = vs.get("extension")
    for ext in exts if type(exts) is list else ():
        if type(ext) is dict and ext.get("url") == PARAMETER_EXT and type(ext.get("extension")) is list:
            for sub in ext["extension"]:
                if type(sub) is dict and sub.get("url") == "name" and type(sub.get("valueCode")) is str:
                    params.add(sub["valueCode"])
    for part in ("include", "exclude"):
        items = compose.get(part)
        for i, inc in enumerate(items if type(items) is list else ()):
            if type(inc) is not dict:
                continue
            ip = f"{ptr}/compose/{part}/{i}"
            system, version = inc.get("system"), inc.get("version")
            concepts = inc.get("concept")
            for j, c in enumerate(concepts if type(concepts) is list else ()):
                if type(c) is dict:
                    problem = code_problem(system, c.get("code"), version)
                    if problem is not None:
                        out.append(Violation(path=f"{ip}/concept/{j}/code", rule=problem[0], message=problem[1],
                                             expected=problem[2]))
            filters = inc.get("filter")
            for j, f in enumerate(filters if type(filters) is list else ()):
                if type(f) is dict and "value" not in f and type(f.get("_value")) is dict:
                    _filter_expression(f["_value"], f"{ip}/filter/{j}/_value", params, out)
                elif type(f) is dict and system == SNOMED:
                    _snomed_concept_filter(f, f"{ip}/filter/{j}/value", out)
                    _ecl_filter(f, f"{ip}/filter/{j}", out)


# Operators whose value names concepts of the code system (one code, or a comma-separated list
# for in / not-in): https://hl7.org/fhir/R4/valueset-filter-operator.html
_CONCEPT_OPS = frozenset({"is-a", "descendent-of", "is-not-a", "generalizes", "in", "not-in", "="})


def _snomed_concept_filter(f: dict[str, Any], p: str, out: list[Violation]) -> None:
    """A SNOMED CT filter on ``concept`` names concepts by their SCTIDs: a value that is not one
    can select nothing (the reference: "must be a valid code from the system")."""
    value, op = f.get("value"), f.get("op")
    if f.get("property") != "concept" or type(op) is not str or op not in _CONCEPT_OPS or type(value) is not str:
        return
    for code in (value.split(",") if op in ("in", "not-in") else (value,)):
        code = code.strip()
        problem = sctid_problem(code) if _SINGLE_ID.fullmatch(code) else "is not a SNOMED CT identifier"
        if problem is not None:
            out.append(Violation(path=p, rule="fhir-valueset-filter", message=f"the value {code!r} of a SNOMED "
                                 f"CT filter on 'concept' ({op}) {problem}",
                                 expected="an SCTID (6-18 digits, partition identifier, Verhoeff check digit)"))


# A FHIRPath expression's parse costs a fixed 100 units of the payload's budget (~0.7 ms: the
# ANTLR parser's set-up) plus its length; an ECL text its length squared over 256 (at least its
# length): the ECL interpreter is superlinear (8 KiB of refinements took 2 s).
FHIRPATH_PARSE_COST = 100


def ecl_cost(text: str) -> int:
    """Budget units an ECL text's parse may take (see :mod:`.budget`)."""
    return max(len(text), len(text) * len(text) // 256)


def _ecl_filter(f: dict[str, Any], p: str, out: list[Violation]) -> None:
    """A SNOMED CT ``constraint = <ECL>`` filter: the expression must parse (the reference's
    "Invalid ECL"). Only the syntax: whether its concepts exist needs a SNOMED CT release."""
    value = f.get("value")
    if f.get("property") != "constraint" or f.get("op") != "=" or type(value) is not str:
        return
    if not budget.spend(ecl_cost(value)):
        return
    error = ecl_syntax_error(value)
    if error is not None:
        out.append(Violation(path=f"{p}/value", rule="fhir-snomed-ecl", message=f"the value {value[:80]!r} for "
                             f"the filter constraint is not a valid SNOMED CT ECL expression: {error}",
                             expected="an Expression Constraint Language expression "
                             "(https://snomed.org/ecl), e.g. << 73211009 |Diabetes mellitus|"))


def _filter_expression(value: dict[str, Any], p: str, params: set[str], out: list[Violation]) -> None:
    """A filter value given as a ``cqf-expression``: FHIRPath over the declared parameters."""
    exts = value.get("extension")
    for k, ext in enumerate(exts if type(exts) is list else ()):
        if type(ext) is not dict or ext.get("url") != EXPRESSION_EXT or type(ext.get("valueExpression")) is not dict:
            continue
        ep = f"{p}/extension/{k}/valueExpression"
        expr = ext["valueExpression"]
        lang, text = expr.get("language"), expr.get("expression")
        if lang != "text/fhirpath":
            out.append(Violation(path=f"{ep}/language", rule="fhir-valueset-expression", message="a ValueSet "
                                 f"filter expression must be in 'text/fhirpath', not {lang!r}",
                                 expected="language: text/fhirpath"))
            continue
        if type(text) is not str or not budget.spend(FHIRPATH_PARSE_COST + len(text)):
            continue
        constants, error = fhirpath_syntax(text)
        if error is not None:
            out.append(Violation(path=f"{ep}/expression", rule="fhir-valueset-expression", message=f"the "
                                 f"expression {text[:80]!r} is not valid FHIRPath: {error}",
                                 expected="a FHIRPath expression"))
            continue
        for name in constants:
            if name not in params:
                out.append(Violation(path=f"{ep}/expression", rule="fhir-valueset-expression", message=f"the "
                                     f"expression {text[:80]!r} refers to the unknown parameter {name!r}",
                                     expected=f"a parameter the ValueSet declares ({PARAMETER_EXT})"
                                     + (f": {', '.join(sorted(params))}" if params else "")))


# -- FHIRPath syntax ---------------------------------------------------------------------------
_CONSTANT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:-_")


class _Raise(ErrorListener):  # type: ignore[misc]
    """fhirpathpy's parser recovers from syntax errors silently; here any error is reported."""

    def syntaxError(self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any) -> None:
        raise ValueError(f"at {line}:{column + 1}: {msg}")


def fhirpath_syntax(text: str) -> tuple[list[str], str | None]:
    """(the ``%constants`` named, in order; the syntax error or ``None``) of a FHIRPath expression.

    A ``%name`` is read as the reference validator's lexer reads it (letters, digits, ``: - _``,
    or a backquoted name) -- the FHIRPath grammar itself has no ``-`` in a name, so each constant
    is replaced by a plain one before the expression is parsed with fhirpathpy's ANTLR grammar."""
    names: list[str] = []
    parts: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "'`\"":  # a string or a delimited identifier: copied as it is
            j = i + 1
            while j < n and text[j] != ch:
                j += 2 if text[j] == "\\" else 1
            parts.append(text[i:j + 1])
            i = j + 1
        elif ch == "%":
            j = i + 1
            if j < n and text[j] == "`":
                k = text.find("`", j + 1)
                k = n if k < 0 else k
                name, j = text[j + 1:k], k + 1
            else:
                while j < n and text[j] in _CONSTANT_CHARS:
                    j += 1
                name = text[i + 1:j]
            if name:
                names.append(name)
                parts.append(f"%c{len(names)}")
            else:
                parts.append("%")
            i = j
        else:
            parts.append(ch)
            i += 1
    listener = _Raise()
    try:
        lexer = FHIRPathLexer(InputStream("".join(parts)))
        lexer.removeErrorListeners()
        lexer.addErrorListener(listener)
        parser = FHIRPathParser(CommonTokenStream(lexer))
        parser.removeErrorListeners()
        parser.addErrorListener(listener)
        parser.expression()
        if parser.getCurrentToken().type != -1:  # EOF: the whole text is one expression
            raise ValueError(f"unexpected {parser.getCurrentToken().text!r}")
    except ValueError as e:
        return names, str(e)
    except Exception as e:
        return names, f"{type(e).__name__}: {e}"
    return names, None
