"""The compiled FHIR R4 definitions: the one model every FHIR path reads.

Why a module of its own: the reporting walk (:mod:`.fhir`), the compiled fast path
(:mod:`.fhir_fast`), the typed path (:mod:`.fhir_typed`) and the XML reader (:mod:`.fhir_xml`)
all read the same table, compiled once per process from ``policies/fhir/r4-definitions.json``.
When that table lived inside :mod:`.fhir`, the other three reached back into the walk's private
classes and the walk imported them, so the four modules formed one import cycle. Here it
depends on none of them (only on the invariants each node carries and the URI rules its fast
predicates share), and they all depend on it.

A definition *node* (:class:`NodeDef`) is a resource, a data type or a backbone element; its
elements (:class:`ElementDef`) are keyed the way they appear in JSON, so a choice ``value[x]``
has one key per type (``valueString``, ``valueQuantity``...) and a primitive also its
``_element`` sibling among the required keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .fhir_invariants import Check, compiled_for
from .fhir_rules import ABSOLUTE_ELEMENTS, absolute, uri_extra

DEFINITIONS = Path(__file__).resolve().parent.parent / "fhir" / "r4-definitions.json"
#: base64Binary, once its whitespace is removed. The definitions' own regex for it nests
#: quantifiers and backtracks exponentially on a value that fails it (two dozen groups and a bad
#: character take seconds), so the table drops that regex and every path checks this one instead.
BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}", re.ASCII)
_PY_KIND = {"string": str, "boolean": bool, "integer": int}


@dataclass(slots=True)
class ElementDef:
    """One element of a node, as the definitions give it."""

    name: str  # as in the definitions: "status", "value[x]"
    fhir_path: str  # "ServiceRequest.status"
    min: int
    max: int  # -1 = unbounded
    types: list[str]
    valueset: str | None  # the required binding's value set, if any
    choice: bool


@dataclass(slots=True)
class NodeDef:
    """A resource, data type or backbone element: its elements by JSON key, the required ones,
    and the FHIRPath invariants on it."""

    path: str
    kind: str  # resource | type | backbone
    #: JSON key -> (element, its type code for this key, the primitive's fast predicate or None)
    lookup: dict[str, tuple[ElementDef, str, Callable[[Any], bool] | None]] = field(default_factory=dict)
    required: list[tuple[ElementDef, tuple[str, ...]]] = field(default_factory=list)  # any key present will do
    choices: bool = False
    invariants: list[Check] = field(default_factory=list)  # FHIRPath invariants on this element


class R4Definitions:
    """The compiled, immutable R4 definitions; one instance per process (cached)."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.version: str = raw["fhirVersion"]
        self.primitives: dict[str, tuple[type | None, re.Pattern[str] | None]] = {}
        for name, (kind, regex) in raw["primitives"].items():
            pattern = None if regex is None or name == "base64Binary" else re.compile(regex, re.ASCII)
            self.primitives[name] = (_PY_KIND.get(kind), pattern)
        self.valuesets: dict[str, dict[str, frozenset[str]]] = {
            url: {s: frozenset(c) for s, c in systems.items()} for url, systems in raw["valuesets"].items()
        }
        self.vs_codes: dict[str, frozenset[str]] = {
            url: frozenset().union(*systems.values()) for url, systems in self.valuesets.items()
        }
        self.nodes: dict[str, NodeDef] = {}
        self.resources: set[str] = set()
        for path, spec in raw["nodes"].items():
            node = NodeDef(path=path, kind=spec["k"])
            if node.kind == "resource":
                self.resources.add(path)
            for name, (mn, mx, types, vs) in spec["e"].items():
                choice = name.endswith("[x]")
                child = ElementDef(name=name, fhir_path=f"{path}.{name}", min=mn, max=mx, types=types,
                                   valueset=vs, choice=choice)
                if choice:
                    node.choices = True
                    base = name[:-3]
                    keys = []
                    for t in types:
                        key = base + t[0].upper() + t[1:]
                        node.lookup[key] = (child, t, self._fast(t, vs, child.fhir_path))
                        keys.append(key)
                        if t in self.primitives or t in raw["primitives"]:
                            keys.append("_" + key)
                else:
                    t = types[0] if types else "string"
                    node.lookup[name] = (child, t, self._fast(t, vs, child.fhir_path))
                    keys = [name]
                    if types and types[0] in raw["primitives"]:
                        keys.append("_" + name)
                if mn > 0:
                    node.required.append((child, tuple(keys)))
            node.invariants = compiled_for(path)
            self.nodes[path] = node

    def is_resource(self, name: str) -> bool:
        return name in self.resources

    def _fast(self, tcode: str, valueset: str | None, fhir_path: str = "") -> Callable[[Any], bool] | None:
        """A predicate true only of a primitive value that passes every check :meth:`FhirValidator.
        _primitive` makes and needs nothing else (no '#' link to note): the walk's fast path.
        ``None`` for complex types and the primitives that always take the full path. It must
        make the element's own checks too (``fhir_path``: a Coding.system must be absolute), or
        the walk, which trusts it, would never report them."""
        prim = self.primitives.get(tcode)
        if prim is None or tcode in ("xhtml", "base64Binary", "decimal"):
            return None
        pytype, regex = prim
        if pytype is bool:
            return lambda v: type(v) is bool
        if pytype is int:
            low = {"positiveInt": 1, "unsignedInt": 0}.get(tcode, -2147483648)
            return lambda v: type(v) is int and low <= v <= 2147483647
        codes = self.vs_codes.get(valueset) if (valueset is not None and tcode == "code") else None
        if tcode in ("string", "markdown"):  # [ \r\n\t\S]+ (ASCII): anything but \f and \v
            return lambda v: type(v) is str and v != "" and "\x0b" not in v and "\x0c" not in v
        if regex is None:
            return None
        match = regex.fullmatch
        local = tcode in ("canonical", "uri", "url")
        if codes is not None:  # the value set's codes that are well-formed codes: membership is the check
            good = frozenset(c for c in codes if regex.fullmatch(c))
            return lambda v: type(v) is str and v in good
        if local:  # \\S*: a printable string without a space has no ASCII whitespace
            extra = uri_extra(tcode)
            if fhir_path in ABSOLUTE_ELEMENTS:
                uri_ok = extra
                extra = lambda v: uri_ok(v) and absolute(v)  # noqa: E731
            return lambda v: type(v) is str and v != "" and v[0] != "#" and (
                (v.isprintable() and " " not in v) or match(v) is not None) and extra(v)
        if tcode == "code":
            return lambda v: type(v) is str and v != "" and ((v.isprintable() and " " not in v)
                                                             or match(v) is not None)
        return lambda v: type(v) is str and v != "" and match(v) is not None


@lru_cache(maxsize=1)
def definitions() -> R4Definitions:
    """The process's one compiled copy (about a second to build; every validator shares it)."""
    return R4Definitions(json.loads(DEFINITIONS.read_text()))
