"""The FHIRPath invariants of the base R4 resources and data types, compiled once into the walk.

``policies/fhir/r4-invariants.json`` (generated with the definitions) lists every invariant of
severity *error* (205): its key, the element it sits on (a resource, a data type or a backbone
element such as ``Questionnaire.item``), its FHIRPath expression and its text. Each is compiled
once, onto the node of the compiled definitions it belongs to, so the walk checks it where the
element occurs and costs nothing where it does not:

* **native** (27): a Python predicate written from the expression, for the invariants on the path of
  UK traffic (every ``Period``, ``Quantity``, ``ContactPoint``, ``Attachment``, ``Extension``,
  ``Reference``, ``Narrative``; ServiceRequest, Patient, Observation, Condition, AllergyIntolerance,
  Organization, MeasureReport, Appointment...) so the hot path stays fast. Each native predicate
  is held to the official expression evaluated by ``fhirpathpy`` in the tests. ``ele-1``, the
  ``dom-*`` and ``bdl-*`` invariants live in the walk itself (:mod:`.fhir`).
* **fhirpathpy** (163): every other invariant is evaluated by the ecosystem's FHIRPath engine
  (``fhirpathpy``), compiled on first use and cached; about 80 us an evaluation, paid only for
  elements that carry such an invariant.
* **skipped** (:data:`SKIPPED`): those the walk enforces itself (ele-1, ext-1, dom-*, bdl-*,
  ref-1, txt-2) and the two the engine cannot evaluate (txt-1 ``htmlChecks()``, ctm-1).

A catalogue type can add its profile's invariants as data (``invariants`` in
``catalogue.toml``); they are evaluated with ``fhirpathpy`` on the resources of their type.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import budget

INVARIANTS = Path(__file__).resolve().parent.parent / "fhir" / "r4-invariants.json"

Predicate = Callable[[dict[str, Any], dict[str, Any]], bool]  # (element, its resource) -> holds


@dataclass(frozen=True, slots=True)
class Invariant:
    key: str
    path: str  # the element it sits on: "Period", "Questionnaire.item", "ServiceRequest"
    expression: str
    human: str


def _get(d: dict[str, Any], key: str) -> Any:
    return d.get(key)


def _has(d: dict[str, Any], key: str) -> bool:
    """FHIRPath ``key.exists()`` on the JSON form (an extension-only primitive counts)."""
    return key in d or ("_" + key) in d


def _has_value(d: dict[str, Any], key: str) -> bool:
    """FHIRPath ``key.hasValue()``: the primitive's value itself is present."""
    return d.get(key) is not None


def _has_choice(d: dict[str, Any], base: str) -> bool:
    n = len(base)
    return any(k.startswith(base) and len(k) > n and k[n].isupper() for k in d)


_DT = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?")


def _period_ok(p: dict[str, Any], _r: dict[str, Any]) -> bool:
    """per-1: ``start.hasValue().not() or end.hasValue().not() or (start <= end)``.

    FHIRPath compares date/times field by field as far as both go; when they agree that far but
    one is more precise, the comparison is empty, and an invariant holds only when it is true
    (as the reference validator reads it)."""
    start, end = p.get("start"), p.get("end")
    if not (isinstance(start, str) and isinstance(end, str)):
        return True
    a, b = _instant(start), _instant(end)
    if a is None or b is None:
        return True  # a malformed date is the walk's finding
    x, y = a[0], b[0]
    if (a[1] is None) != (b[1] is None) and min(len(x), len(y)) > 3:
        x, y = x[:3], y[:3]  # one has a time zone, the other not: compare the dates only
    n = min(len(x), len(y))
    if x[:n] != y[:n]:
        return x[:n] < y[:n]
    return len(x) == len(y)


def _instant(s: str) -> tuple[tuple[int, ...], str | None] | None:
    """(fields to the precision given, normalised to UTC when a time zone is given; zone)."""
    m = _DT.fullmatch(s)
    if m is None:
        return None
    parts = [int(x) for x in m.groups()[:6] if x is not None]
    tz = m.group(8)
    if tz is not None and len(parts) >= 5:
        from datetime import datetime, timedelta, timezone

        sec = parts[5] if len(parts) > 5 else 0
        offset = timedelta(0) if tz == "Z" else (1 if tz[0] == "+" else -1) * timedelta(
            hours=int(tz[1:3]), minutes=int(tz[4:6]))
        dt = datetime(parts[0], parts[1], parts[2], parts[3], parts[4], sec, tzinfo=timezone(offset))
        u = dt.astimezone(UTC)
        frac = m.group(7)
        norm = [u.year, u.month, u.day, u.hour, u.minute, u.second][:len(parts)]
        if frac:
            norm.append(int(Decimal(frac) * 1000))
        return tuple(norm), "utc"
    return tuple(parts), None


def _codings(cc: Any) -> list[tuple[Any, Any]]:
    if not hasattr(cc, "get") or not isinstance(cc.get("coding"), list):  # a dict, or a typed view of one
        return []
    return [(c.get("system"), c.get("code")) for c in cc.get("coding") if hasattr(c, "get")]


def _obs7(o: dict[str, Any], _r: dict[str, Any]) -> bool:
    if not _has_choice(o, "value"):
        return True
    mine = set(_codings(o.get("code")))
    comps = o.get("component")
    if not isinstance(comps, list):
        return True
    return not any(set(_codings(c.get("code"))) & mine for c in comps if hasattr(c, "get"))


def _decimal_le(x: Any, y: Any) -> bool:
    return not (isinstance(x, (int, float)) and isinstance(y, (int, float))) or x <= y


#: Native predicates for the invariants on UK traffic's path; each equals its FHIRPath (tested).
NATIVE: dict[str, Predicate] = {
    "per-1": _period_ok,
    # Quantity and its profiles: a unit code needs its system
    "qty-3": lambda q, _r: not _has(q, "code") or _has(q, "system"),
    "cpt-2": lambda c, _r: not _has(c, "value") or _has(c, "system"),
    "att-1": lambda a, _r: not _has(a, "data") or _has(a, "contentType"),
    "rng-2": lambda g, _r: not (hasattr(g.get("low"), "get") and hasattr(g.get("high"), "get"))
    or _decimal_le(g["low"].get("value"), g["high"].get("value")),
    "rat-1": lambda t, _r: ("numerator" in t) == ("denominator" in t) and ("numerator" in t or "extension" in t),
    "prr-1": lambda s, _r: "orderDetail" not in s or "code" in s,
    "pat-1": lambda c, _r: any(k in c for k in ("name", "telecom", "address", "organization")),
    "obs-6": lambda o, _r: "dataAbsentReason" not in o or not _has_choice(o, "value"),
    "obs-7": _obs7,
    "ras-2": lambda p, _r: not isinstance(p.get("probabilityDecimal"), (int, float)) or p["probabilityDecimal"] <= 100,
    # R4 publishes que-12 as "enableWhen.count() > 2", against its own text ("more than one");
    # R4B corrected it to > 1, and so does the reference validator: see CORRECTED
    "que-12": lambda item, _r: len(item.get("enableWhen") or ()) <= 1 or "enableBehavior" in item,
    "obs-3": lambda rr, _r: any(k in rr for k in ("low", "high", "text")),
    "con-4": lambda c, _r: not _has_choice(c, "abatement")
    or _clinical_status_in(c, {"inactive", "resolved", "remission"}),
    "con-5": lambda c, _r: not _verification_is(c, _CON_VER, "entered-in-error") or "clinicalStatus" not in c,
    "ait-1": lambda a, _r: _verification_is(a, _AIT_VER, "entered-in-error") or "clinicalStatus" in a,
    "ait-2": lambda a, _r: not _verification_is(a, _AIT_VER, "entered-in-error") or "clinicalStatus" not in a,
    "org-1": lambda o, _r: "identifier" in o or "name" in o or "_name" in o,
    "mrp-1": lambda m, _r: m.get("type") != "data-collection" or "group" not in m,
    "app-2": lambda a, _r: ("start" in a) == ("end" in a),
    "app-3": lambda a, _r: ("start" in a and "end" in a) or a.get("status") in (
        "proposed", "cancelled", "waitlist"),
    # as published in R4: 'noshow' (the code is 'noshow' in the expression, 'no-show' in the value set)
    "app-4": lambda a, _r: "cancelationReason" not in a or a.get("status") in ("noshow", "cancelled"),
    "app-1": lambda p, _r: "type" in p or "actor" in p,
}


#: Natives that deliberately differ from the expression R4 publishes (a known error in it).
CORRECTED: dict[str, str] = {
    "que-12": "R4's expression says enableWhen.count() > 2, its text and R4B say more than one (> 1)",
}


def _clinical_status_in(c: dict[str, Any], codes: set[str]) -> bool:
    return any(sys == "http://terminology.hl7.org/CodeSystem/condition-clinical" and code in codes
               for sys, code in _codings(c.get("clinicalStatus")))


_CON_VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_AIT_VER = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"


def _verification_is(c: dict[str, Any], system: str, code: str) -> bool:
    return any(s == system and k == code for s, k in _codings(c.get("verificationStatus")))


#: Invariants not evaluated by either means, and why (the walk enforces some of them itself).
SKIPPED: dict[str, str] = {
    "ele-1": "enforced by the walk (empty objects, arrays, strings; an element with only an id)",
    "ref-1": "enforced by the walk (contained references resolve)",
    "txt-1": "htmlChecks(): the XHTML subset rules need an XHTML checker, not FHIRPath",
    "txt-2": "enforced by the walk (the narrative has text or an image)",
    "ext-1": "enforced by the walk (every Extension: a value or extensions, not both)",
}
for _k in ("dom-2", "dom-3", "dom-4", "dom-5", "dom-6"):
    SKIPPED[_k] = "enforced by the walk (contained resources)"
for _k in ("bdl-1", "bdl-2", "bdl-3", "bdl-4", "bdl-5", "bdl-7", "bdl-8", "bdl-9", "bdl-10", "bdl-11",
           "bdl-12"):
    SKIPPED[_k] = "enforced by the walk (Bundle rules)"


@lru_cache(maxsize=1)
def all_invariants() -> tuple[Invariant, ...]:
    return tuple(Invariant(**row) for row in json.loads(INVARIANTS.read_text()))


_TRACE = re.compile(r"\.trace\('[^']*'(?:\s*,\s*[^()]*(?:\([^()]*\))?)?\)")


def engine_expression(expr: str) -> str:
    """The expression as ``fhirpathpy`` takes it: ``trace()`` dropped (it prints), and
    ``hasValue()`` read as ``exists()`` (the JSON form holds a primitive's value under its name)."""
    return _TRACE.sub("", expr).replace(".hasValue()", ".exists()").replace("hasValue()", "exists()")


class FhirPath:
    """An expression compiled by ``fhirpathpy`` on first use; ``holds(element, resource, root)``."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self._fn: Any = None

    def holds(self, element: dict[str, Any], resource: dict[str, Any], root: dict[str, Any]) -> bool:
        if self._fn is None:
            from fhirpathpy import compile as fp_compile
            from fhirpathpy.models import models

            self._fn = fp_compile(engine_expression(self.expression), models["r4"])
        budget.evaluation()
        result = self._fn(element, {"resource": resource, "rootResource": root,
                                    "ucum": "http://unitsofmeasure.org"})
        return result == [True]


Check = tuple[Invariant, Predicate | None, FhirPath | None]


def compiled_for(path: str) -> list[Check]:
    """The checks of the invariants that sit on ``path``, each native or by fhirpathpy."""
    return list(_by_path().get(path, ()))


@lru_cache(maxsize=1)
def _by_path() -> dict[str, tuple[Check, ...]]:
    out: dict[str, list[Check]] = {}
    for inv in all_invariants():
        if inv.key in SKIPPED or "htmlChecks" in inv.expression or "resolve()" in inv.expression \
                or "conformsTo" in inv.expression:
            continue
        native = NATIVE.get(inv.key)
        out.setdefault(inv.path, []).append((inv, native, None if native else FhirPath(inv.expression)))
    return {k: tuple(v) for k, v in out.items()}


def not_evaluated() -> dict[str, str]:
    """key -> why, for every base invariant neither native nor evaluated by fhirpathpy."""
    res: dict[str, str] = {}
    for inv in all_invariants():
        if inv.key in SKIPPED:
            res[inv.key] = SKIPPED[inv.key]
        elif "htmlChecks" in inv.expression or "resolve()" in inv.expression or "conformsTo" in inv.expression:
            res[inv.key] = "uses a function fhirpathpy does not provide (htmlChecks, resolve, conformsTo)"
    return res
