"""Validator modes of a FHIR catalogue type: stricter (or, for contained resources, looser)
checks a compliance officer switches on per type, as data in ``catalogue.toml``.

Why modes: the official Java validator runs with options (``security-checks``, ``examples``,
``validateReference``...) that change what it rejects, and a network has the same needs per
message type: a national type may refuse text that smuggles HTML into a receiver's screen, or
example URLs in live traffic. Each mode here is named in psvn's words, defaults to the reference
validator's default (so a type without a ``modes`` table validates exactly as before), and is
checked when the policy set is compiled (an unknown key is a ``config-invalid`` error naming it)::

    [types."fhir.r4.Resource".modes]
    reject_html_in_text = true      # strings that look like HTML tags are refused
    example_urls = false            # example.org / acme.com / 2.999 URLs are refused

:data:`REFERENCE_OPTIONS` maps the reference validator's option names to these modes (the
vendored test suite runs each case in its mode through it). The checks live here; the walk
(:mod:`.fhir`) calls them from small hooks, and the two fast paths defer to the walk whenever a
mode could find something (:meth:`ModeChecks.fast_paths_may_decide`), so no mode is skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from psvn.core.errors import Violation

__all__ = ["MODE_KEYS", "REFERENCE_OPTIONS", "FhirModes", "ModeChecks", "from_reference_options",
           "html_tag_in_text", "markdown_html", "strip_json_comments"]


class FhirModes(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The modes of one FHIR catalogue type (the ``modes`` table under it); every default is the
    reference validator's default."""

    #: refuse any string (not the narrative) that looks like it embeds an HTML tag, and any
    #: narrative outside FHIR's safe XHTML subset (txt-1) -- reference: ``security-checks``
    reject_html_in_text: bool = False
    #: accept URLs of the example domains (example.org, acme.com, urn:oid:2.999 ...) in uri, url,
    #: canonical and oid elements -- reference: ``examples``
    example_urls: bool = True
    #: every literal reference must resolve inside the payload (contained, Bundle entry, or a
    #: resource of the same Parameters); psvn fetches nothing -- reference: ``validateReference``
    resolve_references: bool = False
    #: validate contained resources (false: their content is not checked, but their NHS numbers
    #: still count as data subjects) -- reference: ``validateContains``
    validate_contained: bool = True
    #: refuse markdown that embeds an HTML tag (a presentation layer escapes it, or should)
    #: -- reference: ``noHtmlInMarkdown``
    reject_html_in_markdown: bool = False
    #: accept ``//`` line comments between JSON tokens (never strict JSON otherwise)
    #: -- reference: ``allow-comments``
    json_comments: bool = False
    #: HL7's publication rules for HL7 conformance resources (the owning work group is stated)
    #: -- reference: ``for-publication``
    hl7_publication: bool = False
    #: accept conformance resources marked ``experimental: true`` -- reference:
    #: ``no-experimental-content`` (inverted)
    experimental_content: bool = True

    def active(self) -> bool:
        return self != _DEFAULT


_DEFAULT = FhirModes()
MODE_KEYS: tuple[str, ...] = FhirModes.__struct_fields__


def _flag(name: str, invert: bool = False) -> Callable[[Any], dict[str, Any]]:
    return lambda v: {name: (str(v).lower() == "true") != invert}


#: The reference validator's option (as the FHIR test cases' ``manifest.json`` names it) -> the
#: psvn modes it means. Options that change only warnings or concern what another part of psvn
#: owns map to nothing (accepted, no effect): ``best-practice`` (warnings),
#: ``allowed-extension-domain(s)`` (extension definitions), ``assumeValidRestReferences`` (psvn
#: never fetches a REST reference, so it never fails one), ``r5-bundle-relative-reference-policy``
#: (psvn reads relative references in a Bundle only against a RESTful fullUrl, which is what
#: "always" asks).
REFERENCE_OPTIONS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "security-checks": _flag("reject_html_in_text"),
    "examples": _flag("example_urls"),
    "validateReference": lambda v: {"resolve_references": v in ("CHECK_EXISTS", "CHECK_EXISTS_AND_TYPE",
                                                                "CHECK_VALID")},
    "validateContains": lambda v: {"validate_contained": v != "IGNORE"},
    "noHtmlInMarkdown": lambda v: {"reject_html_in_markdown": True},
    "allow-comments": _flag("json_comments"),
    "for-publication": _flag("hl7_publication"),
    "no-experimental-content": _flag("experimental_content", invert=True),
    "best-practice": lambda v: {},
    "allowed-extension-domain": lambda v: {},
    "allowed-extension-domains": lambda v: {},
    "assumeValidRestReferences": lambda v: {},
    "r5-bundle-relative-reference-policy": lambda v: {},
}


def from_reference_options(options: dict[str, Any]) -> dict[str, Any]:
    """The ``modes`` table for a set of reference-validator options; ``KeyError`` names an
    option psvn has no mapping for."""
    modes: dict[str, Any] = {}
    for name, value in options.items():
        modes.update(REFERENCE_OPTIONS[name](value))
    return {k: v for k, v in modes.items() if getattr(_DEFAULT, k) != v}


# -- the checks ----------------------------------------------------------------------------------
#: An HTML tag inside text: '<', a tag name, then '>' or attributes (the reference's
#: ``HTMLUtilities.containsHtmlTags``, without its blind spot for a string's last tag, and with
#: ``<script/x>`` counted, as a browser reads it).
_HTML_TAG = re.compile(r"<[^\W\d_]\w*(?:[\s/][^<>]*)?>")
#: What CommonMark would pass through as raw HTML: an unescaped open or close tag, a comment,
#: a declaration or processing instruction (``MarkDownProcessor.preProcess``).
_MARKDOWN_HTML = re.compile(r"(?<!\\)</?[A-Za-z][A-Za-z0-9-]*[\s>]|<[!?]")
_EXAMPLE_PARTS = ("example.org/", "acme.com/", "acme.org/", "example.com/", "example.net/")
_EXAMPLE_ENDS = ("example.org", "acme.com", "acme.org", "example.com", "example.net")
_EXAMPLE_OIDS = ("urn:oid:1.3.6.1.4.1.32473.", "urn:oid:2.999.")
_EXAMPLE_BYTES = tuple(s.encode() for s in (*_EXAMPLE_ENDS, *_EXAMPLE_OIDS))
_URI_TYPES = frozenset({"uri", "url", "canonical", "oid"})
#: txt-1: the XHTML elements and attributes a FHIR narrative may use (R4 narrative.html).
_XHTML_ELEMENTS = frozenset({
    "p", "br", "div", "h1", "h2", "h3", "h4", "h5", "h6", "a", "span", "b", "em", "i", "strong", "small", "big",
    "tt", "dfn", "q", "var", "abbr", "acronym", "cite", "blockquote", "hr", "address", "bdo", "kbd", "sub",
    "sup", "ul", "ol", "li", "dl", "dt", "dd", "pre", "table", "caption", "colgroup", "col", "thead", "tr",
    "tfoot", "tbody", "th", "td", "code", "samp", "img", "map", "area"})
_XHTML_ATTRIBUTES = frozenset({
    "title", "style", "class", "id", "lang", "xml:lang", "dir", "accesskey", "tabindex", "span", "width",
    "align", "valign", "char", "charoff", "abbr", "axis", "headers", "scope", "rowspan", "colspan"})
_XHTML_PAIRS = frozenset({
    "a.href", "a.name", "img.src", "img.border", "div.xmlns", "blockquote.cite", "q.cite", "a.charset",
    "a.type", "a.hreflang", "a.rel", "a.rev", "a.shape", "a.coords", "img.alt", "img.longdesc", "img.height",
    "img.width", "img.usemap", "img.ismap", "map.name", "area.shape", "area.coords", "area.href", "area.nohref",
    "area.alt", "table.summary", "table.width", "table.border", "table.frame", "table.rules",
    "table.cellspacing", "table.cellpadding", "pre.space", "td.nowrap"})
#: an element's start: '<', its name, and its attribute text up to the next '>' (deliberately
#: loose: whatever a browser would read as a tag, however malformed, is looked at)
_XHTML_TAG = re.compile(r"<([A-Za-z][\w:.-]*)([^>]*)")
_XHTML_ATTR = re.compile(r"""([^\s=/>"']+)(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s>]+))?""")
#: R4's canonical resources: the ones a ``url`` defines (their ``X.url`` is a definition, not a
#: link, so the example-URL mode leaves it alone).
CANONICAL_TYPES = frozenset({
    "ActivityDefinition", "CapabilityStatement", "ChargeItemDefinition", "CodeSystem", "CompartmentDefinition",
    "ConceptMap", "EffectEvidenceSynthesis", "EventDefinition", "Evidence", "EvidenceVariable", "ExampleScenario",
    "GraphDefinition", "ImplementationGuide", "Library", "Measure", "MessageDefinition", "OperationDefinition",
    "PlanDefinition", "Questionnaire", "ResearchDefinition", "ResearchElementDefinition", "RiskEvidenceSynthesis",
    "SearchParameter", "StructureDefinition", "StructureMap", "TerminologyCapabilities", "TestScript", "ValueSet"})
_WG_EXTENSION = "http://hl7.org/fhir/StructureDefinition/structuredefinition-wg"
#: a narrative in JSON bytes (its value still escaped: decoded before it is looked at)
_DIV = re.compile(rb'"div"\s*:\s*"((?:[^"\\]|\\.)*)"')
_JSON_COMMENT = re.compile(rb'("(?:[^"\\]|\\.)*")|//[^\r\n]*', re.DOTALL)


def html_tag_in_text(val: str) -> str | None:
    """The first HTML tag embedded in a string, or ``None``."""
    m = _HTML_TAG.search(val) if "<" in val else None
    return m.group(0) if m is not None else None


def markdown_html(val: str) -> str | None:
    """Where markdown embeds raw HTML (its first characters), or ``None``."""
    m = _MARKDOWN_HTML.search(val) if "<" in val else None
    return val[m.start():m.start() + 2] if m is not None else None


def is_example_url(url: str) -> bool:
    """A URL of a domain reserved for examples (the reference's ``isExampleUrl``)."""
    return any(p in url for p in _EXAMPLE_PARTS) or url.endswith(_EXAMPLE_ENDS) or url.startswith(_EXAMPLE_OIDS)


def unsafe_xhtml(div: str) -> str | None:
    """txt-1: the first element or attribute a narrative may not use (``<script>``,
    ``onclick=``...), or ``None``."""
    for m in _XHTML_TAG.finditer(div):
        name = m.group(1)
        if name not in _XHTML_ELEMENTS:
            return f"element <{name}>"
        for a in _XHTML_ATTR.finditer(m.group(2)):
            an = a.group(1)
            if not (an.startswith("xmlns") or an in _XHTML_ATTRIBUTES or f"{name}.{an}" in _XHTML_PAIRS):
                return f"attribute {an!r} on <{name}>"
    return None


def strip_json_comments(body: bytes) -> bytes:
    """``//`` line comments between JSON tokens removed (strings are left whole)."""
    if b"//" not in body:
        return body
    return _JSON_COMMENT.sub(lambda m: m.group(1) or b"", body)


class ModeChecks:
    """The checks of a type's non-default modes, called by the walk (:mod:`.fhir`)."""

    def __init__(self, modes: FhirModes) -> None:
        self.modes = modes
        self.canonical_types = CANONICAL_TYPES
        self.primitive: Callable[[str, str, str, str, list[Violation]], None] | None = None
        if modes.reject_html_in_text or not modes.example_urls or modes.reject_html_in_markdown:
            self.primitive = self._primitive
        self.resource_level = modes.hl7_publication or not modes.experimental_content
        self.resolve_references = modes.resolve_references
        self.validate_contained = modes.validate_contained
        #: does a mode look at the content (so a parsed payload always takes the walk)?
        self.data_checks = self.primitive is not None or self.resource_level or self.resolve_references

    def fast_paths_may_decide(self, body: bytes | None, *, escaped: bool | None = None) -> bool:
        """May the fast paths (which know no modes) decide this payload? Only when no mode could
        find anything in it; ``body`` ``None`` (a parsed payload): never. ``escaped``: whether
        ``body`` holds a backslash, if the caller has looked already (one scan, not two)."""
        m = self.modes
        if body is None:
            return False
        if self.data_checks and (b"\\" in body if escaped is None else escaped) \
                and (b"\\u" in body or b"\\/" in body):
            return False  # an escaped character could spell what the byte screens below look for
        if (m.reject_html_in_text or m.reject_html_in_markdown) and b"<" in body:
            rest = body
            if b'"div"' in body:  # a narrative is XHTML: screened here for txt-1, then set aside
                for d in _DIV.finditer(body):
                    if not m.reject_html_in_text:
                        continue
                    try:
                        div = json.loads(b'"' + d.group(1) + b'"')
                    except ValueError:  # malformed JSON or UTF-8: the parse reports it, not this screen
                        return False
                    if type(div) is not str or unsafe_xhtml(div) is not None:
                        return False
                rest = _DIV.sub(b"", body)
            if b"<" in rest:
                return False
        if not m.example_urls and any(s in body for s in _EXAMPLE_BYTES):
            return False
        if m.resolve_references and b'"reference"' in body:
            return False
        if m.hl7_publication and b"http://hl7.org/fhir/" in body:
            return False
        return m.experimental_content or b'"experimental"' not in body

    def data_may_decide(self, data: Any) -> bool:
        """:meth:`fast_paths_may_decide` for a parsed payload (FHIR XML read into the JSON form):
        one pass over its keys and strings."""
        m = self.modes
        html = m.reject_html_in_text or m.reject_html_in_markdown
        stack: list[Any] = [data]
        while stack:
            node = stack.pop()
            items = node.items() if type(node) is dict else enumerate(node)
            for key, val in items:
                if type(val) is str:
                    if html and "<" in val and not (key == "div" and not (m.reject_html_in_text and unsafe_xhtml(val))):
                        return False
                    if not m.example_urls and is_example_url(val):
                        return False
                    if m.hl7_publication and val.startswith("http://hl7.org/fhir/"):
                        return False
                elif type(val) is dict or type(val) is list:
                    stack.append(val)
                if m.resolve_references and key == "reference":
                    return False
                if not m.experimental_content and key == "experimental":
                    return False
        return True

    def _primitive(self, fhir_path: str, tcode: str, val: str, p: str, out: list[Violation]) -> None:
        m = self.modes
        if tcode == "xhtml":
            if m.reject_html_in_text:
                bad = unsafe_xhtml(val)
                if bad is not None:
                    out.append(Violation(path=p, rule="fhir-unsafe-narrative", message=f"txt-1: the narrative "
                                         f"uses {bad}, outside FHIR's safe XHTML subset",
                                         expected="only the basic HTML formatting elements and attributes "
                                         "(no scripts, forms, event handlers)"))
            return
        if m.reject_html_in_text:
            tag = html_tag_in_text(val)
            if tag is not None:
                out.append(Violation(path=p, rule="fhir-html-in-text", message=f"{fhir_path} contains text that "
                                     f"looks like an HTML tag ({_short(tag)}), refused for security in this "
                                     "message type", expected="plain text without HTML tags"))
        if m.reject_html_in_markdown and tcode == "markdown":
            at = markdown_html(val)
            if at is not None:
                out.append(Violation(path=p, rule="fhir-html-in-markdown", message=f"{fhir_path} markdown embeds "
                                     f"what looks like an HTML tag (at {at!r}), refused in this message type",
                                     expected="markdown without raw HTML (escape '<' as '\\<')"))
        if not m.example_urls and tcode in _URI_TYPES and is_example_url(val) and fhir_path != "Bundle.entry.fullUrl" \
                and not self._defining_url(fhir_path):
            out.append(Violation(path=p, rule="fhir-example-url", message=f"{fhir_path} value {_short(val)} is an "
                                 "example URL, not accepted in this message type",
                                 expected="a real URL (not example.org, example.com, acme.com, urn:oid:2.999...)"))

    def _defining_url(self, fhir_path: str) -> bool:
        rt, _, el = fhir_path.partition(".")
        return el == "url" and rt in self.canonical_types

    def resource(self, rt: str, res: dict[str, Any], ptr: str, out: list[Violation]) -> None:
        """The resource-level modes: HL7 publication rules, no experimental content."""
        if rt not in self.canonical_types:
            return
        m = self.modes
        if not m.experimental_content and res.get("experimental") is True:
            out.append(Violation(path=f"{ptr}/experimental", rule="fhir-experimental",
                                 message=f"{rt} is marked experimental, not accepted in this message type",
                                 expected="experimental absent or false"))
        url = res.get("url")
        if m.hl7_publication and isinstance(url, str) and url.startswith("http://hl7.org/fhir/") \
                and "http://hl7.org/fhir/sid" not in url:
            exts = res.get("extension")
            wgs = [e for e in exts if isinstance(e, dict) and e.get("url") == _WG_EXTENSION] \
                if isinstance(exts, list) else []
            if len(wgs) != 1:
                out.append(Violation(path=f"{ptr}/extension", rule="fhir-hl7-publication",
                                     message=f"an HL7 {rt} ({_short(url)}) must state its owning work group "
                                     f"once with the {_WG_EXTENSION} extension (found {len(wgs)})",
                                     expected=f"one extension {_WG_EXTENSION} with a valueCode"))

    def unresolved(self, root: dict[str, Any], refs: list[tuple[str, str] | None],
                   out: list[Violation]) -> None:
        """resolve_references: every literal reference the walk noted and nothing resolved
        (contained and Bundle references are judged where they are) names a resource of the
        payload itself -- for a Parameters, a resource of one of its parameters (or parts)."""
        local = set(_parameters_resources(root)) if root.get("resourceType") == "Parameters" else set()
        for item in refs:
            if item is None:
                continue
            p, ref = item
            if ref[:1] == "#" or "?" in ref or ref in local:
                continue
            if self.modes.example_urls and ("example.org" in ref or "acme.com" in ref):
                continue
            out.append(Violation(path=f"{p}/reference", rule="fhir-reference-unresolved",
                                 message=f"reference {ref!r} resolves to no resource in this payload, and this "
                                 "message type requires every reference to resolve",
                                 expected="a reference to a contained resource, a Bundle entry, or a resource "
                                 "of the same Parameters (Type/id)"))


def _parameters_resources(params: dict[str, Any]) -> Iterator[str]:
    """``Type/id`` of every resource of a Parameters' parameters and their parts (the
    reference validator resolves a reference among them)."""
    stack = [params]
    while stack:
        node = stack.pop()
        items = node.get("parameter") if node is params else node.get("part")
        if not isinstance(items, list):
            continue
        for item in items:
            if not isinstance(item, dict):
                continue
            res = item.get("resource")
            if isinstance(res, dict) and isinstance(res.get("resourceType"), str) and isinstance(res.get("id"), str):
                yield f"{res['resourceType']}/{res['id']}"
            stack.append(item)


def _short(val: str, n: int = 60) -> str:
    return repr(val if len(val) <= n else val[:n] + "...")
