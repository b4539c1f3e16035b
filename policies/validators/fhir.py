"""FHIR R4 (4.0.1) validation compiled from the official definitions, plus UK Core rules.

Why not ``fhir.resources`` alone: it ships R4B (4.3.0), not R4, and accepts codes outside
required bindings; the official JSON Schema misses cardinality. This validator walks the JSON
against a compact table generated from the official R4 StructureDefinitions and ValueSets
(``policies/fhir/r4-definitions.json``, see its README; compiled by :mod:`.fhir_definitions`),
so it checks, and reports *every*:

* unknown elements, JSON kind and regex of every primitive (``_element`` siblings too);
* cardinality: ``min`` (required elements) and ``max`` (array or single value);
* choice types (``value[x]``: exactly one variant);
* required bindings (``code``, ``Coding`` and ``CodeableConcept``) against the expanded
  value set;
* empty objects, arrays and strings (FHIR forbids them), ``null`` where not allowed;
* contained (``#id``) references and references inside a Bundle resolve; Bundle invariants
  (unique fullUrl, request/response per type, document/message first entry; :mod:`.fhir_bundle`);

and the UK Core rules that matter for routing and safety: NHS number format and modulus-11
check digit in every Identifier, ODS code format in every ODS identifier (organisation
references included), and the identifiers each profile requires (from the catalogue).

:meth:`FhirValidator.check` also names the payload's data subjects: every valid NHS number in
any Identifier of the document (``Patient.identifier``, a ``subject``/``patient`` reference's
identifier, contained resources, every resource of a Bundle, extensions), as ``nhs:<number>``.
It is collected where the walk already checks each NHS number, so it costs no second pass; and
it reaches every Identifier the definitions type as one, so a sender cannot hide a patient in an
element the consent check does not look at.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from psvn.core.errors import Violation

from . import budget
from .common import (
    NHS_EXPECTED,
    NHS_NUMBER_SYSTEM,
    NO_SUBJECTS,
    ODS_EXPECTED,
    ODS_SYSTEMS,
    describe_codes,
    escape,
    nhs_number_problem,
    nhs_subject,
    ods_code_problem,
)
from .fhir_bundle import check_bundle
from .fhir_conformance import CONFORMANCE_TYPES, check_conformance
from .fhir_definitions import BASE64, ElementDef, NodeDef, R4Definitions, definitions
from .fhir_extensions import allow_domains, extension_problems, full_path, restore
from .fhir_fast import FastWalk
from .fhir_invariants import FhirPath, Invariant
from .fhir_modes import FhirModes, ModeChecks
from .fhir_rules import (
    ABSOLUTE_ELEMENTS,
    URI_SYSTEM,
    absolute,
    attachment_size_problem,
    narrative_has_content,
    uri_problem,
)
from .fhir_sd import structure_definition_problems
from .fhir_terminology import TERMINOLOGY_RESOURCES, coding_violations, resource_violations
from .fhir_typed import TypedPath
from .fhir_ucum import QUANTITY_TYPES, ucum_problem
from .fhir_xml import reader as xml_reader
from .limits import Limits

#: The resource name of a catalogue type that carries any R4 resource (base specification only).
ANY_RESOURCE = "Resource"
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_LOCAL_LINK = re.compile(r'(?:href|src)="#([^"]+)"')
_FORMAT_HINTS = {
    "date": "a FHIR date: YYYY, YYYY-MM or YYYY-MM-DD, e.g. 1955-02-14",
    "dateTime": "a FHIR dateTime: YYYY-MM-DD, or YYYY-MM-DDThh:mm:ss with a time zone, e.g. 2024-05-13T10:15:00+01:00",
    "instant": "a FHIR instant: YYYY-MM-DDThh:mm:ss[.sss] with a time zone, e.g. 2024-05-13T10:15:00Z",
    "time": "a FHIR time: hh:mm:ss",
    "id": "a FHIR id: 1-64 letters, digits, '-' and '.'",
    "code": "a FHIR code: no leading, trailing or double whitespace",
    "uri": "a URI without whitespace",
    "url": "a URL without whitespace",
    "canonical": "a canonical URL without whitespace",
    "oid": "urn:oid: followed by a dotted OID, e.g. urn:oid:2.16.840.1.113883",
    "uuid": "urn:uuid: followed by a lower-case UUID",
    "string": "a non-empty string (FHIR forbids whitespace-only and control characters)",
    "markdown": "non-empty markdown text",
}


@lru_cache(maxsize=1)
def _fast_walk(defs: R4Definitions) -> FastWalk:
    return FastWalk(defs)


@lru_cache(maxsize=1)
def _typed_path(defs: R4Definitions) -> TypedPath:
    return TypedPath(defs)


@dataclass(slots=True)
class IdentifierRule:
    """A profile's required identifier: ``element`` of ``resource`` must carry ``system``."""

    resource: str
    element: str
    system: str
    label: str = ""


@dataclass(slots=True)
class _Ctx:
    out: list[Violation]
    refs: list[tuple[str, str] | None] = field(default_factory=list)  # (pointer, reference)
    deferred: list[tuple[str, list[dict[str, Any]], IdentifierRule, dict[str, Any]]] = field(
        default_factory=list)
    index: dict[str, dict[str, Any]] = field(default_factory=dict)  # fullUrl / Type/id -> resource
    subjects: set[str] = field(default_factory=set)  # nhs:<number> of every valid NHS number seen
    resource: dict[str, Any] = field(default_factory=dict)  # FHIRPath %resource: the resource being walked
    root: dict[str, Any] = field(default_factory=dict)  # %rootResource: the container of a contained one
    local: list[str] = field(default_factory=list)  # "#id" canonicals, URIs and narrative links, without '#'
    res_ptr: str = ""  # the pointer of the resource being walked (an extension's element path is read from it)
    work_limited: bool = False  # the payload needed more FHIRPath evaluations than budget.MAX_EVALUATIONS


class FhirValidator:
    """Validates one JSON FHIR resource against R4 and the catalogue's UK Core rules."""

    def __init__(self, resource: str, *, identifier_rules: list[IdentifierRule] | None = None,
                 bundle_types: list[str] | None = None, resolve_urn_references: bool = False,
                 required: list[str] | None = None,
                 invariants: list[tuple[str, str, str, str]] | None = None,
                 modes: FhirModes | None = None,
                 extension_domains: list[str] | None = None) -> None:
        self.defs = definitions()
        # URL prefixes of extensions allowed without a definition psvn knows (e.g. UK Core's)
        self.extension_domains = tuple(extension_domains or ())
        if resource != ANY_RESOURCE and not self.defs.is_resource(resource):
            raise KeyError(f"{resource!r} is not a FHIR R4 resource type")
        self.resource = resource
        self.rules: dict[str, list[IdentifierRule]] = {}
        for r in identifier_rules or []:
            self.rules.setdefault(r.resource, []).append(r)
        self.bundle_types = list(bundle_types or [])
        self.resolve_urn = resolve_urn_references
        self.fast = True  # the compiled fast paths for valid payloads (fhir_typed, fhir_fast); False: the walk only
        self._typed: TypedPath | None = None
        self._typed_types: frozenset[str] = frozenset()  # the resource types it decides (set with it)
        # the catalogue type's validator modes (fhir_modes); None: the defaults, no hook runs
        self.modes: ModeChecks | None = ModeChecks(modes) if modes is not None and modes.active() else None
        self._mode_primitive = self.modes.primitive if self.modes is not None else None
        self._carriers: dict[str, list[Callable[[Any], bool]]] = {}  # resource type -> its rules, compiled
        # a profile as data: elements it makes mandatory, and its FHIRPath invariants, per resource
        self.profile: dict[str, list[tuple[str, str, Invariant | None, FhirPath | None]]] = {}
        for path in required or []:
            rt, _, el = path.partition(".")
            if not self.defs.is_resource(rt) or not el or "." in el:
                raise KeyError(f"required element {path!r} is not Resource.element")
            node = self.defs.nodes[rt]
            if el not in node.lookup and not any(c.name == el for c, _t, _f in node.lookup.values()):
                raise KeyError(f"required element {path!r}: {rt} has no element {el!r}")
            self.profile.setdefault(rt, []).append((path, el, None, None))
        for rt, key, expression, human in invariants or []:
            if not self.defs.is_resource(rt):
                raise KeyError(f"invariant {key}: {rt!r} is not a FHIR R4 resource type")
            self.profile.setdefault(rt, []).append(
                (rt, key, Invariant(key, rt, expression, human or key), FhirPath(expression)))

    # -- entry point -------------------------------------------------------------------------
    def validate(self, data: Any) -> list[Violation]:
        return self.check(data)[0]

    def check(self, data: Any) -> tuple[list[Violation], frozenset[str]]:
        """(every violation, the data subjects named); the subjects mean something only when
        there is no violation."""
        budget.reset()
        if self.fast and type(data) is dict and (self.modes is None or not self.modes.data_checks
                                                 or self.modes.data_may_decide(data)):
            try:
                outer = allow_domains(self.extension_domains)
                try:
                    done = self._fast_check(data)
                finally:
                    restore(outer)
            except Exception:  # the fast path only ever says "valid": on any failure the walk decides
                done = None
            if done is not None:
                return [], done
            budget.reset()  # the walk judges what the fast path judged
        ctx = _Ctx(out=[])
        if not isinstance(data, dict):
            return [Violation(path="", rule="fhir-resource", message="a FHIR resource must be a JSON object",
                              expected=f"a JSON object with resourceType {self.resource!r}")], NO_SUBJECTS
        rt = data.get("resourceType")
        if rt != self.resource and self.resource != ANY_RESOURCE:
            ctx.out.append(Violation(
                path="/resourceType", rule="fhir-resource-type",
                message=f"resourceType is {rt!r} but this message type carries a {self.resource}",
                expected=self.resource))
            if not (isinstance(rt, str) and self.defs.is_resource(rt)):
                return ctx.out, NO_SUBJECTS
        self._resource(data, "", ctx, contained=False)
        for ptr, ref, rule, scope in ctx.deferred:
            self._check_required_reference(ptr, ref, rule, scope, ctx)
        if self.modes is not None and self.modes.resolve_references:
            self.modes.unresolved(data, ctx.refs, ctx.out)
        return ctx.out, frozenset(ctx.subjects) if ctx.subjects else NO_SUBJECTS

    def check_bytes(self, body: bytes) -> frozenset[str] | None:
        """The data subjects of a JSON payload the typed path (:mod:`.fhir_typed`) finds valid,
        decoded straight from the bytes with every check of the walk; ``None``: parse it and run
        :meth:`check` (any doubt, any violation, or a type the typed path does not take)."""
        if not self.fast:
            return None
        budget.reset()
        escaped = b"\\" in body  # one scan for the modes' screen and the typed path's
        if self.modes is not None and not self.modes.fast_paths_may_decide(body, escaped=escaped):
            return None
        typed = self._typed
        if typed is None:
            typed = self._typed = _typed_path(self.defs)
            # Bundles, conformance and terminology resources, profiles' paths: the parsed payload's
            self._typed_types = frozenset(
                rt for rt in self.defs.resources if rt not in ("Bundle", "StructureDefinition")
                and rt not in self.profile and rt not in CONFORMANCE_TYPES and rt not in TERMINOLOGY_RESOURCES)
        rt = self.resource
        if rt == ANY_RESOURCE:
            rt = typed.resource_type(body) or "Bundle"
        if rt not in self._typed_types:
            return None
        got = typed.decode(rt, body, domains=self.extension_domains, escaped=escaped)
        if got is None:
            return None
        res, subjects = got
        if rt in self.rules:
            checks = self._carriers.get(rt)
            if checks is None:  # the required identifiers, compiled once per resource type
                checks = self._carriers[rt] = [typed.carrier(rt, r.element, r.system) for r in self.rules[rt]]
            for carried in checks:
                if not carried(res):
                    return None
        return subjects

    def _fast_check(self, data: dict[str, Any]) -> frozenset[str] | None:
        """The data subjects of a payload the compiled fast path finds valid, with the resource
        level rules (required identifiers, the profile) checked as the full walk checks them;
        ``None`` when the full walk must decide (any doubt, any violation)."""
        rt = data.get("resourceType")
        if type(rt) is not str or rt == "Bundle" or "contained" in data or rt in CONFORMANCE_TYPES:
            return None
        if rt == "StructureDefinition" and structure_definition_problems(data, self.defs):
            return None
        if rt != self.resource and not (self.resource == ANY_RESOURCE and rt in self.defs.resources):
            return None
        ok, subjects = _fast_walk(self.defs).resource(rt, data)
        if not ok:
            return None
        rules = self.rules.get(rt)
        if rules and rt not in self.profile and all(_carries(data, r) for r in rules):
            return frozenset(subjects) if subjects else NO_SUBJECTS
        if rules or rt in self.profile:
            ctx = _Ctx(out=[])
            ctx.resource = ctx.root = data
            for rule in rules or ():
                self._check_required_identifier(data, "", rule, {}, ctx)
            for ptr, ref, rule, scope in ctx.deferred:
                self._check_required_reference(ptr, ref, rule, scope, ctx)
            if rt in self.profile:
                self._profile(rt, data, "", ctx)
            if ctx.out:
                return None
        return frozenset(subjects) if subjects else NO_SUBJECTS

    def validate_xml(self, body: bytes, limits: Limits | None = None) -> list[Violation]:
        """The same rules for a FHIR XML payload (read into the JSON form by :mod:`.fhir_xml`)."""
        return self.check_xml(body, limits)[0]

    def check_xml(self, body: bytes, limits: Limits | None = None) -> tuple[list[Violation], frozenset[str]]:
        """:meth:`check` for a FHIR XML payload: the XML-only violations first, then the walk's on
        its JSON form, less those the reader already explained (one parse, one walk)."""
        read = xml_reader().read(body, limits or Limits())
        if read.data is None:
            return read.violations, NO_SUBJECTS
        violations, subjects = self.check(read.data)
        return read.violations + [v for v in violations if read.keeps(v)], subjects

    # -- resources -----------------------------------------------------------------------------
    def _resource(self, val: Any, ptr: str, ctx: _Ctx, *, contained: bool, expected: str = "Resource") -> None:
        out = ctx.out
        if type(val) is not dict:
            out.append(Violation(path=ptr, rule="fhir-type", message="a resource must be a JSON object",
                                 expected="a JSON object with resourceType"))
            return
        rt = val.get("resourceType")
        node = self.defs.nodes.get(rt) if isinstance(rt, str) else None
        if node is None or node.kind != "resource":
            out.append(Violation(path=f"{ptr}/resourceType", rule="fhir-resource-type",
                                 message=f"resourceType {rt!r} is not a FHIR R4 resource",
                                 expected="a FHIR R4 resource type, e.g. Patient"))
            return
        if expected != "Resource" and rt != expected:
            out.append(Violation(path=f"{ptr}/resourceType", rule="fhir-resource-type",
                                 message=f"resourceType is {rt!r} where a {expected} is required",
                                 expected=expected))
            return
        start = len(ctx.refs)
        outer, outer_root, outer_local, outer_ptr = ctx.resource, ctx.root, ctx.local, ctx.res_ptr
        ctx.resource, ctx.res_ptr = val, ptr
        if not contained:
            ctx.root = val
            ctx.local = []
        self._walk(node, val, ptr, ctx)
        if node.invariants:
            self._invariants(node, val, ptr, ctx)
        if rt in CONFORMANCE_TYPES:  # reference-validator rules on SearchParameter, CapabilityStatement...
            check_conformance(rt, val, ptr, self.defs, ctx.out)
        if rt in TERMINOLOGY_RESOURCES:  # code-system semantics (fhir_terminology)
            out.extend(resource_violations(rt, val, ptr))
        if self.modes is not None and self.modes.resource_level:
            self.modes.resource(str(rt), val, ptr, out)
        ctx.resource, ctx.root, ctx.res_ptr = outer, outer_root, outer_ptr
        if contained:
            return
        local, ctx.local = ctx.local, outer_local
        # contained (#id) references resolve inside this resource
        contained_ids: dict[str, dict[str, Any]] = {}
        contained_list = val.get("contained")
        if isinstance(contained_list, list):
            for c in contained_list:
                if isinstance(c, dict) and isinstance(c.get("id"), str):
                    contained_ids[c["id"]] = c
        if (contained_ids or contained_list is not None) and (self.modes is None or self.modes.validate_contained):
            self._contained(contained_list, ptr, start, local, ctx)
        for i in range(start, len(ctx.refs)):
            item = ctx.refs[i]
            if item is None or not item[1].startswith("#"):
                continue
            ctx.refs[i] = None
            if item[1] != "#" and item[1][1:] not in contained_ids:
                out.append(Violation(path=f"{item[0]}/reference", rule="fhir-reference-unresolved",
                                     message=f"reference {item[1]!r} names no contained resource",
                                     expected="the id of a resource in this resource's contained list"))
        for rule in self.rules.get(str(rt), ()):
            self._check_required_identifier(val, ptr, rule, contained_ids, ctx)
        if self.profile:
            self._profile(str(rt), val, ptr, ctx)
        if rt == "StructureDefinition":
            for sub, message in structure_definition_problems(val, self.defs):
                ctx.out.append(Violation(path=ptr + sub, rule="fhir-profile-path", message=message,
                                         expected=f"an element path of {val.get('type')}"))
        if rt == "Bundle":
            check_bundle(val, ptr, defs=self.defs, bundle_types=self.bundle_types, resolve_urn=self.resolve_urn,
                         refs=ctx.refs, ref_start=start, index=ctx.index, out=ctx.out,
                         resolve_all=self.modes is not None and self.modes.resolve_references)

    def _profile(self, rt: str, res: dict[str, Any], ptr: str, ctx: _Ctx) -> None:
        """The catalogue profile's own rules for a resource of type ``rt``."""
        for path, el, inv, engine in self.profile.get(rt, ()):
            if inv is None:
                base = el[:-3] if el.endswith("[x]") else None
                present = any(k.startswith(base) and k[len(base):][:1].isupper() for k in res) if base \
                    else (el in res or "_" + el in res)
                if not present:
                    ctx.out.append(Violation(path=f"{ptr}/{el.removesuffix('[x]')}", rule="fhir-profile-required",
                                             message=f"{path} is required by this message type's profile",
                                             expected=path))
                continue
            try:
                holds = engine.holds(res, res, res) if engine is not None else True
            except budget.WorkLimitExceeded:
                self._work_limited(ptr, ctx)
                return
            except Exception:  # an expression the engine cannot evaluate counts as failed: fail closed
                holds = False
            if not holds:
                ctx.out.append(Violation(path=ptr, rule="fhir-profile-invariant",
                                         message=f"{el}: {inv.human}", expected=inv.expression))

    @staticmethod
    def _work_limited(p: str, ctx: _Ctx) -> None:
        """Past the payload's FHIRPath evaluations (:data:`budget.MAX_EVALUATIONS`): refused once,
        naming the limit, never passed with invariants unjudged."""
        if not ctx.work_limited:
            ctx.work_limited = True
            ctx.out.append(Violation(
                path=p, rule="fhir-work-limit",
                message=f"the payload needs more than {budget.MAX_EVALUATIONS:,} FHIRPath invariant evaluations, "
                "more than psvn judges in one message: send it in smaller parts",
                expected=f"at most {budget.MAX_EVALUATIONS:,} elements that carry FHIRPath invariants"))

    def _invariants(self, node: NodeDef, val: dict[str, Any], p: str, ctx: _Ctx) -> None:
        """The FHIRPath invariants on this element (compiled once: native, else fhirpathpy)."""
        for inv, native, engine in node.invariants:
            try:
                holds = native(val, ctx.resource) if native is not None else \
                    engine.holds(val, ctx.resource, ctx.root) if engine is not None else True
            except budget.WorkLimitExceeded:
                self._work_limited(p, ctx)
                return
            except Exception:
                holds = True
            if not holds:
                ctx.out.append(Violation(path=p, rule="fhir-invariant", message=f"{inv.key}: {inv.human}",
                                         expected=inv.expression))

    def _contained(self, contained: Any, ptr: str, start: int, local: list[str], ctx: _Ctx) -> None:
        """dom-2..dom-5: contained resources contain none, are referenced from the resource (or
        refer to it with '#'), and carry no versionId, lastUpdated or security label."""
        if not isinstance(contained, list):
            return
        cp = f"{ptr}/contained/"
        referenced: set[str] = set(local)
        refers_back: set[str] = set()
        for i in range(start, len(ctx.refs)):
            item = ctx.refs[i]
            if item is None or not item[1].startswith("#"):
                continue
            if item[1] == "#" and item[0].startswith(cp):
                refers_back.add(item[0][len(cp):].split("/", 1)[0])
            else:
                referenced.add(item[1][1:])
        for i, c in enumerate(contained):
            if not isinstance(c, dict):
                continue
            p = f"{cp}{i}"
            if "contained" in c:
                ctx.out.append(Violation(path=f"{p}/contained", rule="fhir-invariant", message="dom-2: a contained "
                                         "resource must not contain resources", expected="no nested contained"))
            meta = c.get("meta")
            if isinstance(meta, dict):
                for el, inv in (("versionId", "dom-4"), ("lastUpdated", "dom-4"), ("security", "dom-5")):
                    if el in meta:
                        ctx.out.append(Violation(path=f"{p}/meta/{el}", rule="fhir-invariant",
                                                 message=f"{inv}: a contained resource must not have meta.{el}",
                                                 expected=f"no meta.{el}"))
            cid = c.get("id")
            if isinstance(cid, str) and cid not in referenced and str(i) not in refers_back:
                ctx.out.append(Violation(path=p, rule="fhir-invariant", message=f"dom-3: contained resource "
                                         f"{cid!r} is not referenced from elsewhere in the resource and does not "
                                         "refer to it", expected=f"a reference '#{cid}' in the resource"))

    def _walk(self, node: NodeDef, obj: dict[str, Any], ptr: str, ctx: _Ctx) -> None:
        out = ctx.out
        lookup = node.lookup
        seen_choice: dict[str, str] | None = {} if node.choices else None
        use_fast = self._mode_primitive is None  # a mode checks every primitive, valid ones too
        for key, val in obj.items():
            ent = lookup.get(key)
            if ent is None:
                if key == "resourceType" and node.kind == "resource":
                    continue
                if key[:1] == "_":
                    base = lookup.get(key[1:])
                    if base is not None and base[1] in self.defs.primitives:
                        self._primitive_element(base[0], val, f"{ptr}/{escape(key)}", ctx, obj.get(key[1:]))
                        continue
                out.append(Violation(path=f"{ptr}/{escape(key)}", rule="fhir-unknown-element",
                                     message=f"{node.path} has no element {key!r}",
                                     expected=f"an element defined for {node.path} in FHIR R4"))
                continue
            child, tcode, fast = ent
            if seen_choice is not None and child.choice:
                other = seen_choice.get(child.name)
                if other is not None:
                    out.append(Violation(path=f"{ptr}/{key}", rule="fhir-choice", message=f"{child.fhir_path} "
                                         f"has both {other!r} and {key!r}", expected="exactly one value[x] variant"))
                seen_choice[child.name] = key
            if fast is not None and use_fast:  # a valid primitive (or all valid, for a repeating one) needs no more
                if child.max == 1:
                    if fast(val):
                        continue
                elif type(val) is list and val and (child.max < 0 or len(val) <= child.max) \
                        and all(map(fast, val)):
                    continue
            p = f"{ptr}/{key}"
            if child.max != 1:
                if type(val) is not list:
                    out.append(Violation(path=p, rule="fhir-cardinality",
                                         message=f"{child.fhir_path} repeats (max {_max(child.max)}), "
                                         "so it must be a JSON array", expected="a JSON array"))
                    continue
                if not val:
                    out.append(Violation(path=p, rule="fhir-empty", message=f"{child.fhir_path} is an "
                                         "empty array", expected="omit the element, or give at least one value"))
                    continue
                if 0 < child.max < len(val):
                    out.append(Violation(path=p, rule="fhir-cardinality",
                                         message=f"{child.fhir_path} has {len(val)} values",
                                         expected=f"at most {child.max}"))
                has_ext = ("_" + key) in obj
                for i, item in enumerate(val):
                    if item is None and has_ext:
                        continue
                    self._value(child, tcode, item, f"{p}/{i}", ctx)
            else:
                if type(val) is list:
                    out.append(Violation(path=p, rule="fhir-cardinality",
                                         message=f"{child.fhir_path} is a single value (max 1), not an array",
                                         expected="a single value"))
                    continue
                self._value(child, tcode, val, p, ctx)
        for child, keys in node.required:
            for k in keys:
                if k in obj:
                    break
            else:
                name = child.name[:-3] if child.choice else child.name
                out.append(Violation(path=f"{ptr}/{name}", rule="fhir-required",
                                     message=f"{child.fhir_path} is required (min {child.min})",
                                     expected=f"{child.fhir_path}: {' or '.join(child.types)}"))

    def _value(self, child: ElementDef, tcode: str, val: Any, p: str, ctx: _Ctx) -> None:
        prim = self.defs.primitives.get(tcode)
        if prim is not None:
            self._primitive(child, tcode, prim, val, p, ctx)
            return
        if tcode == "Resource" or self.defs.is_resource(tcode):
            if child.name == "contained" and self.modes is not None and not self.modes.validate_contained:
                kept, ctx.out = ctx.out, []  # not validated: walked only for its data subjects
                self._resource(val, p, ctx, contained=True, expected=tcode)
                ctx.out = kept
                return
            self._resource(val, p, ctx, contained=child.name == "contained", expected=tcode)
            return
        node = self.defs.nodes.get(tcode[1:] if tcode[0] == "@" else tcode)
        if node is None:  # pragma: no cover - the definitions are closed
            return
        if type(val) is not dict:
            ctx.out.append(Violation(path=p, rule="fhir-type", message=f"{child.fhir_path} must be a JSON "
                                     f"object ({tcode.lstrip('@')}), not {_json_kind(val)}",
                                     expected=f"a {tcode.lstrip('@')} object"))
            return
        if not val:
            ctx.out.append(Violation(path=p, rule="fhir-empty", message=f"{child.fhir_path} is an empty object",
                                     expected="omit the element, or give it content"))
            return
        if len(val) == 1 and "id" in val:
            ctx.out.append(Violation(path=p, rule="fhir-invariant", message=f"ele-1: {child.fhir_path} has only "
                                     "an id (all FHIR elements must have a value or children)",
                                     expected="a value or child elements besides id"))
        self._walk(node, val, p, ctx)
        if node.invariants:
            self._invariants(node, val, p, ctx)
        if tcode == "Extension":
            if ("extension" in val) == any(k.startswith("value") for k in val):
                ctx.out.append(Violation(path=p, rule="fhir-invariant", message="ext-1: an extension must have "
                                         "either extensions or a value[x], not both", expected="value[x] or extension"))
            url = val.get("url")
            if isinstance(url, str) and child.fhir_path != "Extension.extension" and not _ABSOLUTE.match(url):
                ctx.out.append(Violation(path=f"{p}/url", rule="fhir-format", message=f"Extension.url {_short(url)} "
                                         "is not an absolute URL (only an extension inside an extension may use a "
                                         "relative one)", expected="the extension's canonical URL"))
            elif isinstance(url, str) and (child.fhir_path != "Extension.extension" or _ABSOLUTE.match(url)):
                self._extension(child, val, url, p, ctx)
        elif tcode == "Attachment":
            size_problem = attachment_size_problem(val)
            if size_problem is not None:
                ctx.out.append(Violation(path=f"{p}/size", rule="fhir-attachment-size", message=size_problem,
                                         expected="the size in bytes of the decoded data"))
        elif tcode == "Identifier":
            self._uk_identifier(val, p, ctx)
        elif tcode in QUANTITY_TYPES:
            problem = ucum_problem(val)
            if problem is not None:
                ctx.out.append(Violation(path=f"{p}/code", rule="fhir-ucum", message=f"{child.fhir_path}: {problem}",
                                         expected="a UCUM unit expression, e.g. mm[Hg], kg/m2, /min, {beats}/min"))
        elif tcode == "Reference":
            ref = val.get("reference")
            if isinstance(ref, str):
                ctx.refs.append((p, ref))
        elif tcode == "Coding" and "code" in val:  # the code in its code system (fhir_terminology)
            ctx.out.extend(coding_violations(val, p))
        if child.valueset is not None and tcode in ("Coding", "CodeableConcept"):
            self._coded(child, tcode, val, p, ctx)

    def _extension(self, child: ElementDef, val: dict[str, Any], url: str, p: str, ctx: _Ctx) -> None:
        """The extension against its definition (:mod:`.fhir_extensions`); a relative url inside
        an extension is its complex parent's sub-extension, checked with the parent."""
        if child.fhir_path == "Extension.extension" and not _ABSOLUTE.match(url):
            return
        host, _, name = child.fhir_path.rpartition(".")
        rt, res_ptr = str(ctx.resource.get("resourceType")), ctx.res_ptr

        def full() -> str:  # the element's path from its resource, e.g. Patient.name
            return full_path(rt, p[len(res_ptr):].rsplit("/", 2)[0])
        for sub, rule, message, expected in extension_problems(val, host, name == "modifierExtension", self.defs,
                                                               self.extension_domains, full):
            ctx.out.append(Violation(path=p + sub, rule=rule, message=message, expected=expected))

    def _primitive(self, child: ElementDef, tcode: str, prim: tuple[type | None, re.Pattern[str] | None],
                   val: Any, p: str, ctx: _Ctx) -> None:
        pytype, regex = prim
        ok = True
        if tcode == "decimal":
            ok = type(val) in (int, float)
        elif pytype is not None:
            ok = type(val) is pytype
        if not ok:
            ctx.out.append(Violation(path=p, rule="fhir-type", message=f"{child.fhir_path} must be a "
                                     f"{tcode}, not {_json_kind(val)}", expected=f"a JSON {_kind_word(tcode)}"))
            return
        if tcode == "base64Binary":
            if not BASE64.fullmatch("".join(val.split())):
                ctx.out.append(Violation(path=p, rule="fhir-format", message=f"{child.fhir_path} is not "
                                         "base64", expected="base64 (RFC 4648)"))
            return
        if (tcode == "positiveInt" and val < 1) or (tcode == "unsignedInt" and val < 0):
            ctx.out.append(Violation(path=p, rule="fhir-format", message=f"{child.fhir_path} is {val}",
                                     expected=f"a {tcode}"))
            return
        if tcode == "integer" and not -2147483648 <= val <= 2147483647:
            ctx.out.append(Violation(path=p, rule="fhir-format", message=f"{child.fhir_path} is out of "
                                     "the 32-bit range", expected="a 32-bit integer"))
            return
        if type(val) is str:
            if not val:
                ctx.out.append(Violation(path=p, rule="fhir-empty", message=f"{child.fhir_path} is an empty "
                                         "string", expected="omit the element, or give a value"))
                return
            mode_check = self._mode_primitive
            if mode_check is not None:
                mode_check(child.fhir_path, tcode, val, p, ctx.out)
            if tcode == "xhtml":
                if not val.lstrip().startswith("<div"):
                    ctx.out.append(Violation(path=p, rule="fhir-format", message="narrative must be an "
                                             "XHTML <div>", expected='<div xmlns="http://www.w3.org/1999/xhtml">'))
                else:
                    if '"#' in val:
                        ctx.local.extend(_LOCAL_LINK.findall(val))  # dom-3: the narrative links to it
                    if not narrative_has_content(val):
                        ctx.out.append(Violation(path=p, rule="fhir-invariant", message="txt-2: the narrative "
                                                 "has no non-whitespace content", expected="text or an image"))
                return
            if val[0] == "#" and tcode in ("canonical", "uri", "url"):
                ctx.local.append(val[1:])  # dom-3: a canonical or URI naming a contained resource
            if regex is not None and not regex.fullmatch(val):
                ctx.out.append(Violation(path=p, rule="fhir-format", message=f"{child.fhir_path} value "
                                         f"{_short(val)} is not a valid {tcode}",
                                         expected=_FORMAT_HINTS.get(tcode) or f"a FHIR {tcode} matching "
                                         f"{regex.pattern[:120]}"))
                return
            if tcode in ("canonical", "uri", "url"):
                problem = uri_problem(tcode, val)
                if problem is None and child.fhir_path in ABSOLUTE_ELEMENTS and not absolute(val):
                    problem = ("is not an absolute URI (a code system is named by its canonical URL)",
                               "an absolute URI, e.g. http://snomed.info/sct")
                if problem is not None:
                    ctx.out.append(Violation(path=p, rule="fhir-format", message=f"{child.fhir_path} value "
                                             f"{_short(val)}: {problem[0]}", expected=problem[1]))
                    return
            if child.valueset is not None and tcode == "code":
                codes = self.defs.vs_codes.get(child.valueset)
                if codes is not None and val not in codes:
                    ctx.out.append(Violation(path=p, rule="fhir-binding", message=f"{child.fhir_path} code "
                                             f"{_short(val)} is not in the required value set {child.valueset}",
                                             expected=describe_codes(codes)))

    def _primitive_element(self, child: ElementDef, val: Any, p: str, ctx: _Ctx, value: Any = None) -> None:
        """``_birthDate``: the id and extensions of a primitive (an array for repeating ones);
        ``value`` is the primitive's own value (ele-1: an id alone is not enough)."""
        items = val if (child.max != 1 and type(val) is list) else [val]
        values = (value if type(value) is list else []) if items is val else [value]
        for i, item in enumerate(items):
            ip = f"{p}/{i}" if items is val else p
            if item is None and items is val:
                continue
            own = values[i] if i < len(values) else None
            if type(item) is dict and own is None and "extension" in item and child.valueset in self.defs.vs_codes \
                    and child.types and child.types[0] == "code":
                ctx.out.append(Violation(path=ip, rule="fhir-binding", message=f"{child.fhir_path} has no code, only "
                                         f"extensions, where the required value set {child.valueset} applies",
                                         expected=describe_codes(self.defs.vs_codes[child.valueset or ""])))
            if type(item) is dict and own is None and "extension" not in item and item:
                ctx.out.append(Violation(path=ip, rule="fhir-invariant", message=f"ele-1: {child.fhir_path} "
                                         "has neither a value nor extensions (all FHIR elements must have a "
                                         "value or children)", expected="a value, or extensions"))
            if type(item) is not dict or not item:
                ctx.out.append(Violation(path=ip, rule="fhir-type", message=f"{child.fhir_path} extension "
                                         "part must be a non-empty JSON object", expected="{id?, extension?}"))
                continue
            for k in item:
                if k not in ("id", "extension"):
                    ctx.out.append(Violation(path=f"{ip}/{escape(k)}", rule="fhir-unknown-element",
                                             message=f"primitive element has no {k!r}", expected="id or extension"))
            ext = item.get("extension")
            if ext is not None:
                if type(ext) is not list:
                    ctx.out.append(Violation(path=f"{ip}/extension", rule="fhir-cardinality",
                                             message="extension must be a JSON array", expected="a JSON array"))
                    continue
                ext_child = ElementDef(name="extension", fhir_path=f"{child.fhir_path}.extension", min=0, max=-1,
                                   types=["Extension"], valueset=None, choice=False)
                for j, e in enumerate(ext):
                    self._value(ext_child, "Extension", e, f"{ip}/extension/{j}", ctx)

    def _coded(self, child: ElementDef, tcode: str, val: dict[str, Any], p: str, ctx: _Ctx) -> None:
        systems = self.defs.valuesets.get(child.valueset or "")
        if systems is None:
            return
        if tcode == "Coding":
            codings = [(p, val)]
        else:
            raw = val.get("coding")
            codings = [(f"{p}/coding/{i}", c) for i, c in enumerate(raw) if isinstance(c, dict)] \
                if isinstance(raw, list) else []
        if not codings:
            return
        for _cp, c in codings:
            system, code = c.get("system"), c.get("code")
            codes = systems.get(system) if isinstance(system, str) else None
            if codes is not None and isinstance(code, str) and code in codes:
                return
        cp, c = codings[0]
        ctx.out.append(Violation(path=cp, rule="fhir-binding",
                                 message=f"{child.fhir_path} has no coding from the required value set "
                                 f"{child.valueset} (got {c.get('system')!r} {c.get('code')!r})",
                                 expected=f"system {' or '.join(systems)}, code "
                                 + describe_codes(self.defs.vs_codes[child.valueset or ""])))

    # -- UK Core ---------------------------------------------------------------------------------
    def _uk_identifier(self, ident: dict[str, Any], p: str, ctx: _Ctx) -> None:
        system = ident.get("system")
        if not isinstance(system, str):
            return
        if system == URI_SYSTEM:
            value = ident.get("value")
            if isinstance(value, str) and not _ABSOLUTE.match(value):
                ctx.out.append(Violation(path=f"{p}/value", rule="fhir-format", message=f"identifier value "
                                         f"{_short(value)} is not a URI, but its system is {URI_SYSTEM}",
                                         expected="an absolute URI (with a scheme), e.g. urn:oid:2.16.840.1.113883"))
            return
        if system == NHS_NUMBER_SYSTEM:
            value = ident.get("value")
            problem = nhs_number_problem(value)
            if problem is not None:
                ctx.out.append(Violation(path=f"{p}/value", rule=problem[0], message=problem[1],
                                         expected=NHS_EXPECTED))
            else:  # a person this payload is about: their opt-outs apply to it
                ctx.subjects.add(nhs_subject(str(value)))
        elif system in ODS_SYSTEMS:
            msg = ods_code_problem(ident.get("value"))
            if msg is not None:
                ctx.out.append(Violation(path=f"{p}/value", rule="uk-ods-code-format", message=msg,
                                         expected=ODS_EXPECTED))

    def _check_required_identifier(self, res: dict[str, Any], ptr: str, rule: IdentifierRule,
                                   contained: dict[str, dict[str, Any]], ctx: _Ctx) -> None:
        val = res.get(rule.element)
        p = f"{ptr}/{rule.element}"
        if isinstance(val, list):
            items = [i for i in val if isinstance(i, dict)]
            if any(i.get("system") == rule.system and i.get("value") for i in items):
                return
            refs = [i for i in items if "reference" in i or "identifier" in i]
            if refs:
                ctx.deferred.append((p, refs, rule, contained))
                return
        elif isinstance(val, dict):
            ctx.deferred.append((p, [val], rule, contained))
            return
        ctx.out.append(self._missing_identifier(p, rule))

    def _check_required_reference(self, p: str, refs: list[dict[str, Any]], rule: IdentifierRule,
                                  contained: dict[str, dict[str, Any]], ctx: _Ctx) -> None:
        for ref in refs:
            ident = ref.get("identifier")
            if isinstance(ident, dict) and ident.get("system") == rule.system and ident.get("value"):
                return
            target = None
            r = ref.get("reference")
            if isinstance(r, str):
                target = contained.get(r[1:]) if r.startswith("#") else ctx.index.get(r)
            if isinstance(target, dict):
                ids = target.get("identifier")
                if isinstance(ids, list) and any(isinstance(i, dict) and i.get("system") == rule.system
                                                 and i.get("value") for i in ids):
                    return
        ctx.out.append(self._missing_identifier(p, rule))

    def _missing_identifier(self, p: str, rule: IdentifierRule) -> Violation:
        what = rule.label or rule.system
        return Violation(path=p, rule="uk-required-identifier",
                         message=f"{rule.resource}.{rule.element} must carry the {what} "
                         "(as an identifier, or a reference to a contained or bundled resource with it)",
                         expected=f"an identifier with system {rule.system}")


def _carries(res: dict[str, Any], rule: IdentifierRule) -> bool:
    """A required identifier carried in the resource itself (an Identifier list with it, or a
    Reference with it as its identifier): the common case, decided without the full rule."""
    val = res.get(rule.element)
    if type(val) is dict:
        ident = val.get("identifier")
        return type(ident) is dict and ident.get("system") == rule.system and bool(ident.get("value"))
    if type(val) is list:
        return any(type(i) is dict and i.get("system") == rule.system and bool(i.get("value")) for i in val)
    return False


def _max(mx: int) -> str:
    return "*" if mx < 0 else str(mx)


def _json_kind(val: Any) -> str:
    if val is None:
        return "null"
    if isinstance(val, bool):
        return "a boolean"
    if isinstance(val, (int, float)):
        return "a number"
    if isinstance(val, str):
        return "a string"
    if isinstance(val, list):
        return "an array"
    return "an object"


def _kind_word(tcode: str) -> str:
    return {"boolean": "boolean (true/false)", "integer": "integer", "positiveInt": "integer >= 1",
            "unsignedInt": "integer >= 0", "decimal": "number"}.get(tcode, f"string ({tcode})")


def _short(val: str, n: int = 60) -> str:
    return repr(val if len(val) <= n else val[:n] + "...")
