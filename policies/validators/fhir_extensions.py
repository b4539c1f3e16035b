"""Extensions checked against their definitions, as the reference validator checks them.

Why: an extension is a claim that its StructureDefinition allows it there. The reference
validator resolves each one and refuses (1) an extension whose definition it cannot find ("could
not be found so is not allowed here"), unless its URL is under an extension domain the caller
allows; (2) a modifier extension used as a plain ``extension``, or the reverse; (3) an extension
used outside its context (``humanname-mothers-family`` belongs on ``HumanName.family``, not on
``HumanName``); (4) a ``value[x]`` of a type the definition does not allow; (5) in a complex
extension, a required sub-extension missing, one repeated beyond its max, or one whose url the
definition does not name. psvn knows the R4 core extensions (``policies/fhir/r4-extensions.json``,
written by ``policies/fhir/build_extensions.py``, loaded lazily once): one dict lookup per
extension.

Not resolved, so accepted: cross-version extensions (``http://hl7.org/fhir/3.0/StructureDefinition/
extension-Observation.value``), which the reference synthesises from another FHIR version's
definitions that psvn does not carry, and the reference's own tooling extensions
(``http://hl7.org/fhir/tools/StructureDefinition/``), which it always allows.

The walk (:mod:`.fhir`) reports every problem with its path (:func:`extension_problems`). The
fast paths (:mod:`.fhir_fast`, :mod:`.fhir_typed`) call :func:`fast_extension_ok`, which answers
``True`` only when the walk would report nothing; an unknown URL passes only under a domain that
the calling validator allows, which it sets for the thread with :func:`allow_domains` (the
domains are per catalogue type, the fast paths are shared by all).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from msgspec import UNSET as _UNSET

EXTENSIONS = Path(__file__).resolve().parent.parent / "fhir" / "r4-extensions.json"
FHIR_VERSION = "4.0.1"
#: cross-version extensions (https://hl7.org/fhir/versions.html#extensions): defined by another
#: version's element, not carried by psvn, so not checked
XVER = re.compile(r"http://hl7\.org/fhir/[0-9.]+/StructureDefinition/extension-[A-Za-z]")
#: extensions the reference validator always allows (its own tooling extensions)
ALWAYS_ALLOWED = ("http://hl7.org/fhir/tools/StructureDefinition/",)
_HL7 = "http://hl7.org/fhir/"  # both of the above start so: one cheap test first
_ANYWHERE = frozenset({"Element", "Any", "Base", "*"})
_RESOURCE_CONTEXTS = frozenset({"Resource", "DomainResource"})


@dataclass(frozen=True, slots=True)
class ExtensionDef:
    """One extension's definition, as far as the checks need it."""

    url: str
    contexts: frozenset[str]  # element-context expressions
    anywhere: bool  # Element / Any (or a context psvn does not evaluate): allowed on any element
    modifier: bool
    values: frozenset[str]  # the JSON keys its value may take (valueString, ...); empty: complex
    subs: dict[str, tuple[int, int, frozenset[str] | None]] | None  # complex: url -> (min, max, value keys)

    @property
    def context_text(self) -> str:
        return ", ".join(sorted(self.contexts)) or "(none)"


def _keys(types: list[str]) -> frozenset[str]:
    return frozenset("value" + t[0].upper() + t[1:] for t in types)


_TABLE: dict[str, ExtensionDef] = {}


@lru_cache(maxsize=1)
def extension_table() -> dict[str, ExtensionDef]:
    """url -> definition of every R4 core extension (read once, on first use)."""
    doc = json.loads(EXTENSIONS.read_text())
    table: dict[str, ExtensionDef] = {}
    for url, (contexts, modifier, values, subs) in doc["extensions"].items():
        ctx = frozenset(contexts)
        table[url] = ExtensionDef(
            url=url, contexts=ctx, anywhere=bool(ctx & _ANYWHERE), modifier=bool(modifier), values=_keys(values),
            subs=None if subs is None else {u: (mn, mx, _keys(t) if t else None) for u, (mn, mx, t) in subs.items()})
    _TABLE.update(table)
    return table


def resolve(url: str) -> ExtensionDef | None:
    """The definition of ``url`` (``url|4.0.1`` too); ``None``: unknown."""
    table = extension_table()
    d = table.get(url)
    if d is None and "|" in url:
        base, _, version = url.partition("|")
        if version == FHIR_VERSION:
            d = table.get(base)
    return d


def unresolvable_but_allowed(url: str, domains: tuple[str, ...] = ()) -> bool:
    """An extension psvn has no definition for that is allowed all the same: a cross-version one,
    the reference's tooling ones, and any under an extension domain the catalogue type allows."""
    if domains and url.startswith(domains):
        return True
    return url.startswith(_HL7) and (url.startswith(ALWAYS_ALLOWED) or XVER.match(url) is not None)


# -- where an extension sits ----------------------------------------------------------------------
class Hosts:
    """The type of each element an extension can sit on (``Patient`` -> Patient, ``HumanName.family``
    -> string, ``Questionnaire.item`` -> BackboneElement), computed once per path."""

    def __init__(self, defs: Any) -> None:
        self.defs = defs
        self._types: dict[str, str] = {}

    def type_of(self, host: str) -> str:
        t = self._types.get(host)
        if t is None:
            t = self._types[host] = self._type(host)
        return t

    def _type(self, host: str) -> str:
        nodes = self.defs.nodes
        node = nodes.get(host)
        if node is not None:
            return "BackboneElement" if node.kind == "backbone" else host
        parent, _, name = host.rpartition(".")
        pnode = nodes.get(parent)
        ent = pnode.lookup.get(name) if pnode is not None else None
        if ent is None and pnode is not None:  # a choice element: value[x]
            ent = next(((c, t, f) for c, t, f in pnode.lookup.values() if c.name == name), None)
        return str(ent[1]).lstrip("@") if ent is not None else ""

    def is_resource(self, host: str) -> bool:
        node = self.defs.nodes.get(host)
        return node is not None and node.kind == "resource"

    def context_ok(self, d: ExtensionDef, host: str, full: Callable[[], str] | None = None) -> bool:
        """Is ``d`` allowed on an element at definition path ``host`` (``full``: its path from the
        resource, e.g. ``Patient.name``, asked only when the cheaper checks fail)?"""
        if d.anywhere:
            return True
        c = d.contexts
        if host in c or self.type_of(host) in c:
            return True
        if c & _RESOURCE_CONTEXTS and self.is_resource(host):
            return True
        return full is not None and full() in c


@lru_cache(maxsize=4)
def hosts(defs: Any) -> Hosts:
    return Hosts(defs)


def value_key(ext: dict[str, Any]) -> str | None:
    for k in ext:
        if k[:5] == "value":
            return k
    return None


# -- the walk ---------------------------------------------------------------------------------------
Problem = tuple[str, str, str, str]  # (path suffix, rule, message, expected)


def extension_problems(ext: dict[str, Any], host: str, modifier: bool, defs: Any, domains: tuple[str, ...],
                       full: Callable[[], str] | None = None) -> list[Problem]:
    """Every problem of one extension (a JSON object with an absolute ``url``) sitting on the
    element at definition path ``host``, as ``modifierExtension`` when ``modifier``."""
    url = ext.get("url")
    if not isinstance(url, str):
        return []
    d = resolve(url)
    where = "modifierExtension" if modifier else "extension"
    if d is None:
        if unresolvable_but_allowed(url, domains):
            return []
        allowed = f"an R4 core extension, or one under an allowed domain ({', '.join(domains)})" if domains \
            else "an R4 core extension (this message type allows no other extension domain)"
        return [("/url", "fhir-extension-unknown", f"the extension {url} has no definition psvn knows "
                 f"(not an R4 core extension, nor under an extension domain this message type allows), "
                 f"so it is not allowed here", allowed)]
    out: list[Problem] = []
    if d.modifier and not modifier:
        out.append(("/url", "fhir-extension-modifier", f"the extension {url} is a modifier extension: it must "
                    "be a modifierExtension, not an extension", "modifierExtension"))
    elif modifier and not d.modifier:
        out.append(("/url", "fhir-extension-modifier", f"the extension {url} is not a modifier extension: it "
                    "must be an extension, not a modifierExtension", "extension"))
    if not hosts(defs).context_ok(d, host, full):
        shown = full() if full is not None else host
        out.append(("/url", "fhir-extension-context", f"the extension {url} is not allowed on {shown} "
                    f"({where} of {host}); its definition allows it on {d.context_text}",
                    f"an element of: {d.context_text}"))
    out.extend(_content_problems(ext, d))
    return out


def _content_problems(ext: dict[str, Any], d: ExtensionDef) -> list[Problem]:
    key = value_key(ext)
    out: list[Problem] = []
    if d.values:
        if key is not None and key not in d.values:
            out.append((f"/{key}", "fhir-extension-value", f"the extension {d.url} does not allow {key}",
                        " or ".join(sorted(d.values))))
        return out
    if key is not None:
        out.append((f"/{key}", "fhir-extension-value", f"the extension {d.url} is complex: it has "
                    f"sub-extensions, not a value ({key})", "sub-extensions: " + ", ".join(d.subs or {})))
    subs = d.subs or {}
    counts: dict[str, int] = {}
    raw = ext.get("extension")
    for i, sub in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(sub, dict):
            continue
        su = sub.get("url")
        if not isinstance(su, str):
            continue
        spec = subs.get(su)
        if spec is None:
            if "://" in su or su.startswith("urn:"):
                continue  # an extension on the extension: checked as one in its own right
            out.append((f"/extension/{i}/url", "fhir-extension-unknown", f"sub-extension url {su!r} is not "
                        f"defined by the extension {d.url}", "one of: " + ", ".join(subs)))
            continue
        counts[su] = counts.get(su, 0) + 1
        sk = value_key(sub)
        if spec[2] is not None and sk is not None and sk not in spec[2]:
            out.append((f"/extension/{i}/{sk}", "fhir-extension-value", f"sub-extension {su!r} of {d.url} does "
                        f"not allow {sk}", " or ".join(sorted(spec[2]))))
    for su, (mn, mx, _v) in subs.items():
        n = counts.get(su, 0)
        if n < mn:
            out.append(("/extension", "fhir-extension-slice", f"the extension {d.url} requires the sub-extension "
                        f"{su!r} (min {mn}), but it is missing", f"a sub-extension with url {su!r}"))
        elif 0 <= mx < n:
            out.append(("/extension", "fhir-extension-slice", f"the extension {d.url} allows the sub-extension "
                        f"{su!r} at most {mx} time(s), but it occurs {n} times", f"at most {mx}"))
    return out


def full_path(rt: str, ptr: str) -> str:
    """The element path of a JSON pointer inside a resource of type ``rt``: ``/name/0/_family``
    -> ``Patient.name.family`` (array indexes dropped, ``_`` of a primitive's extension part too)."""
    parts = [p.lstrip("_") for p in ptr.split("/") if p and not p.isdigit()]
    return ".".join([rt, *parts])


# -- the fast paths -------------------------------------------------------------------------------------
_local = threading.local()


def allow_domains(domains: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """Open the fast paths to the unknown extensions under ``domains`` (the calling validator's
    catalogue type allows them) on this thread; returns what to hand back to :func:`restore`.
    With none open (``None``), an unknown URL defers to the walk."""
    outer: tuple[str, ...] | None = getattr(_local, "domains", None)
    _local.domains = domains
    return outer


def restore(outer: tuple[str, ...] | None) -> None:
    _local.domains = outer


def _unknown_ok(url: str) -> bool:
    """An unknown URL on a fast path: allowed without a definition, or under a domain the
    calling validator allows (:func:`allow_domains`); else the walk decides."""
    domains: tuple[str, ...] | None = getattr(_local, "domains", None)
    if domains is None or "|" in url:
        return False
    return (bool(domains) and url.startswith(domains)) or unresolvable_but_allowed(url, ())


def fast_extension_ok(url: Any, vkey: str | None, host: str, modifier: bool, defs: Any) -> bool:
    """For the fast paths: ``True`` only when :func:`extension_problems` finds nothing for an
    extension with ``url`` and value key ``vkey`` (``None``: sub-extensions) on ``host``, or the
    URL is unknown and noted for the validator's domain check. A complex extension (its
    sub-extensions), and a context that needs the element's full path, defer to the walk."""
    if type(url) is not str:
        return False
    d = extension_table().get(url)
    if d is None:
        return _unknown_ok(url)
    if d.modifier != modifier or not d.values or vkey not in d.values:
        return False
    return hosts(defs).context_ok(d, host)


def typed_extensions_ok(exts: list[Any], host: str, modifier: bool, defs: Any) -> bool:
    """:func:`fast_extension_ok` on a list of decoded Extension Structs (the typed path, where a
    struct has at most one value[x] set). Called for every element that has extensions, so the
    common case (one extension under an allowed domain) is a few lookups."""
    table = _TABLE or extension_table()
    for e in exts:
        names: dict[str, str] = e.__json_names__
        url = getattr(e, names["url"])
        if type(url) is not str:
            return False
        d = table.get(url)
        if d is None:
            if not _unknown_ok(url):
                return False
            continue
        if d.modifier != modifier or not d.values or not hosts(defs).context_ok(d, host):
            return False
        if not any(k in names and getattr(e, names[k]) is not _UNSET for k in d.values):
            return False  # no value, or one of a type the definition does not allow
    return True
