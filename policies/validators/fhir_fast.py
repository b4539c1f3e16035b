"""The FHIR walk compiled into one closure per definition node: the fast path for valid payloads.

:class:`FastWalk` turns the compiled R4 definitions into predicates, once per process: one per
node (resource, data type, backbone element) that checks a JSON object against it and returns
``True`` only when the full walk (:meth:`policies.validators.fhir.FhirValidator._walk` and
friends) would report nothing for it; each element of a node has its checks bound in advance
(cardinality, the primitive's type, format and required codes, the complex type's predicate,
ele-1, ext-1, the type's invariants, the UK Core identifier checks, required bindings on
Coding/CodeableConcept). No paths are built and no violations made: on the first doubt the
predicate answers ``False`` and the caller runs the full walk, which reports every violation
with its path. So the fast path never decides that a payload is invalid, only that it is valid,
and every check of the full walk is made on it (the tests hold the two to the same verdicts and
the same data subjects on the whole corpus and the official test suite).

Left to the full walk (the predicate answers ``False``): contained and nested resources, Bundles,
``#`` local references and links, primitive ``_element`` extensions, and any violation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .common import NHS_NUMBER_SYSTEM, ODS_SYSTEMS, nhs_number_problem, nhs_subject, ods_code_problem
from .fhir_definitions import BASE64, ElementDef, NodeDef, R4Definitions
from .fhir_extensions import fast_extension_ok, value_key
from .fhir_rules import (
    ABSOLUTE_ELEMENTS,
    URI_SYSTEM,
    absolute,
    extension_url_absolute,
    narrative_has_content,
    uri_extra,
)
from .fhir_terminology import TERMINOLOGY_RESOURCES, coding_ok, resource_ok
from .fhir_ucum import QUANTITY_TYPES, quantity_ok

Item = Callable[[Any, "State"], bool]


class State:
    """What a fast walk carries: the resource being walked and the data subjects seen."""

    __slots__ = ("res", "subjects")

    def __init__(self, res: dict[str, Any]) -> None:
        self.res = res
        self.subjects: set[str] = set()


def _never(_v: Any, _st: State) -> bool:
    return False


class FastWalk:
    """Node predicates built lazily from the definitions, shared by every validator."""

    def __init__(self, defs: R4Definitions) -> None:
        self.defs = defs
        self._nodes: dict[str, Callable[[dict[str, Any], State], bool]] = {}

    def resource(self, rt: str, data: dict[str, Any]) -> tuple[bool, set[str]]:
        """(valid as far as the element walk and invariants go, the NHS-number subjects)."""
        st = State(data)
        node = self.defs.nodes[rt]
        if not self.node(rt)(data, st):
            return False, st.subjects
        if rt in TERMINOLOGY_RESOURCES and not resource_ok(rt, data):
            return False, st.subjects
        for _inv, native, engine in node.invariants:
            if native is not None:
                if not native(data, data):
                    return False, st.subjects
            elif engine is not None:
                try:
                    if not engine.holds(data, data, data):
                        return False, st.subjects
                except Exception:  # the full walk decides (it does not report an engine failure)
                    return False, st.subjects
        return True, st.subjects

    def node(self, path: str) -> Callable[[dict[str, Any], State], bool]:
        fn = self._nodes.get(path)
        if fn is None:
            cell: list[Callable[[dict[str, Any], State], bool]] = []
            self._nodes[path] = lambda obj, st: cell[0](obj, st)  # recursion (Questionnaire.item)
            fn = self._build(self.defs.nodes[path])
            cell.append(fn)
            self._nodes[path] = fn
        return fn

    # -- building ------------------------------------------------------------------------------
    #: nodes with at most this many JSON keys get an unrolled predicate (see :meth:`_unrolled`)
    UNROLL = 24

    def _build(self, node: NodeDef) -> Callable[[dict[str, Any], State], bool]:
        if len(node.lookup) <= self.UNROLL:
            return self._unrolled(node)
        return self._looped(node)

    def _unrolled(self, node: NodeDef) -> Callable[[dict[str, Any], State], bool]:
        """A small node's predicate as generated Python: each defined key fetched once with its
        checks inline (no call per primitive), then ``len(obj)`` must equal the keys matched, so
        an unknown key, a ``_key`` extension or a ``null`` sends the payload to the full walk."""
        env: dict[str, Any] = {}
        lines = ["def walk(obj, st):", "    n = 0"]
        groups: dict[str, list[str]] = {}
        for i, (key, (child, tcode, prim)) in enumerate(node.lookup.items()):
            lines.append(f"    v = obj.get({key!r})")
            lines.append("    if v is not None:")
            lines.append("        n += 1")
            if child.choice:
                groups.setdefault(child.name, []).append(key)
                lines.append(f"        c{list(groups).index(child.name)} += 1")
            check = self._inline(child, tcode, prim, f"k{i}", env)
            if child.fhir_path in ABSOLUTE_ELEMENTS:
                env["_absolute"] = absolute
                check = [*check, "if not _absolute(v):", "    return False"]
            lines.extend("        " + ln for ln in check)
            if child.min > 0 and not child.choice:
                lines.append("    else:")
                lines.append("        return False")
        # choice counters must exist before use: initialise them at the top
        for j in range(len(groups)):
            lines.insert(2, f"    c{j} = 0")
        for j, (name, _keys) in enumerate(groups.items()):
            lines.append(f"    if c{j} > 1:")
            lines.append("        return False")
            req = next((c for c, _ks in node.required if c.name == name), None)
            if req is not None:
                lines.append(f"    if c{j} == 0:")
                lines.append("        return False")
        lines.append("    return n == len(obj)")
        exec(compile("\n".join(lines), f"<fhir-fast {node.path}>", "exec"), env)  # generated from the definitions
        fn: Callable[[dict[str, Any], State], bool] = env["walk"]
        return fn

    def _inline(self, child: ElementDef, tcode: str, prim: Callable[[Any], bool] | None, name: str,
                env: dict[str, Any]) -> list[str]:
        """The check of one element's value ``v`` as lines that ``return False`` on doubt."""
        defs = self.defs
        mx = child.max
        if tcode in defs.primitives:
            if prim is None:
                prim = self._slow_primitive(tcode)
            if prim is None:  # pragma: no cover - every primitive has a predicate
                return ["return False"]
            if mx != 1:
                env[name] = prim
                cond = "type(v) is not list or not v" + (f" or len(v) > {mx}" if mx > 0 else "")
                return [f"if {cond} or not all(map({name}, v)):", "    return False"]
            pytype, regex = defs.primitives[tcode]
            codes = defs.vs_codes.get(child.valueset) if (child.valueset is not None and tcode == "code") else None
            if pytype is bool:
                return ["if type(v) is not bool:", "    return False"]
            if tcode in ("string", "markdown"):
                return ["if type(v) is not str or v == '' or '\\x0b' in v or '\\x0c' in v:", "    return False"]
            if codes is not None and regex is not None:
                env[name] = frozenset(c for c in codes if regex.fullmatch(c))
                return [f"if type(v) is not str or v not in {name}:", "    return False"]
            if pytype is int:
                low = {"positiveInt": 1, "unsignedInt": 0}.get(tcode, -2147483648)
                return [f"if type(v) is not int or not ({low} <= v <= 2147483647):", "    return False"]
            if regex is not None and tcode not in ("xhtml", "base64Binary", "decimal"):
                env[name] = regex.fullmatch
                if tcode in ("canonical", "uri", "url"):
                    env[name + "x"] = uri_extra(tcode)
                    return ["if type(v) is not str or v == '' or v[0] == '#' or not ((v.isprintable() and ' ' "
                            f"not in v) or {name}(v) is not None) or not {name}x(v):", "    return False"]
                if tcode == "code":
                    return ["if type(v) is not str or v == '' or not ((v.isprintable() and ' ' not in v) "
                            f"or {name}(v) is not None):", "    return False"]
                return [f"if type(v) is not str or v == '' or {name}(v) is None:", "    return False"]
            env[name] = prim
            return [f"if not {name}(v):", "    return False"]
        env[name] = self._item(child, tcode)
        if mx == 1:
            return [f"if not {name}(v, st):", "    return False"]
        cond = "type(v) is not list or not v" + (f" or len(v) > {mx}" if mx > 0 else "")
        return [f"if {cond}:", "    return False", "for x in v:", f"    if not {name}(x, st):",
                "        return False"]

    def _looped(self, node: NodeDef) -> Callable[[dict[str, Any], State], bool]:
        """The node's predicate: one handler per JSON key, each with the element's cardinality
        and type bound in, so a key costs one dict lookup and one call."""
        handlers: dict[str, Item] = {}
        choice_of: dict[str, str] = {}
        for key, (child, tcode, prim) in node.lookup.items():
            if prim is None and tcode in self.defs.primitives:
                prim = self._slow_primitive(tcode)
            if prim is not None and child.max == 1:
                handlers[key] = self._single(tcode, child.valueset) or self._handler(child.max, prim, None)
                if child.fhir_path in ABSOLUTE_ELEMENTS:
                    handlers[key] = _and_absolute(handlers[key])
            else:
                handlers[key] = self._handler(child.max, prim, None if prim is not None else self._item(child, tcode))
            if child.choice:
                choice_of[key] = child.name
        required = tuple(keys for _child, keys in node.required)
        is_resource = node.kind == "resource"
        get = handlers.get

        if not choice_of:
            def walk(obj: dict[str, Any], st: State) -> bool:
                for key, val in obj.items():
                    h = get(key)
                    if h is None:
                        if key == "resourceType" and is_resource:
                            continue
                        return False
                    if not h(val, st):
                        return False
                for keys in required:
                    for k in keys:
                        if k in obj:
                            break
                    else:
                        return False
                return True
            return walk

        choice = choice_of.get

        def walk_choices(obj: dict[str, Any], st: State) -> bool:
            seen: set[str] = set()
            for key, val in obj.items():
                h = get(key)
                if h is None:
                    if key == "resourceType" and is_resource:
                        continue
                    return False
                c = choice(key)
                if c is not None:
                    if c in seen:
                        return False
                    seen.add(c)
                if not h(val, st):
                    return False
            for keys in required:
                for k in keys:
                    if k in obj:
                        break
                else:
                    return False
            return True
        return walk_choices

    def _single(self, tcode: str, valueset: str | None) -> Item | None:
        """A single primitive's handler with its checks inlined (one call per value), mirroring
        ``R4Definitions._fast``; ``None`` where that one applies through a wrapper."""
        pytype, regex = self.defs.primitives[tcode]
        if tcode in ("xhtml", "base64Binary", "decimal"):
            return None
        if pytype is bool:
            return lambda v, _st: type(v) is bool
        if tcode in ("string", "markdown"):
            return lambda v, _st: type(v) is str and v != "" and "\x0b" not in v and "\x0c" not in v
        if pytype is int or regex is None:
            return None
        match = regex.fullmatch
        codes = self.defs.vs_codes.get(valueset) if (valueset is not None and tcode == "code") else None
        if codes is not None:  # the value set's codes that are well-formed codes: membership is the check
            good = frozenset(c for c in codes if regex.fullmatch(c))
            return lambda v, _st: type(v) is str and v in good
        if tcode in ("canonical", "uri", "url"):  # \\S*: printable with no space has no ASCII whitespace
            extra = uri_extra(tcode)
            return lambda v, _st: type(v) is str and v != "" and v[0] != "#" and (
                (v.isprintable() and " " not in v) or match(v) is not None) and extra(v)
        if tcode == "code":  # one token without whitespace is a code; the regex decides the rest
            return lambda v, _st: type(v) is str and v != "" and (
                (v.isprintable() and " " not in v) or match(v) is not None)
        return lambda v, _st: type(v) is str and v != "" and match(v) is not None

    @staticmethod
    def _handler(mx: int, prim: Callable[[Any], bool] | None, item: Item | None) -> Item:
        if prim is not None:
            if mx == 1:
                return lambda v, _st: prim(v)
            if mx < 0:
                return lambda v, _st: type(v) is list and v != [] and all(map(prim, v))
            return lambda v, _st: type(v) is list and 0 < len(v) <= mx and all(map(prim, v))
        assert item is not None
        if mx == 1:
            return item
        hi = mx if mx > 0 else 1 << 62

        def items(v: Any, st: State) -> bool:
            if type(v) is not list or not v or len(v) > hi:
                return False
            for x in v:
                if not item(x, st):
                    return False
            return True
        return items

    def _slow_primitive(self, tcode: str) -> Callable[[Any], bool] | None:
        """The primitives without a definitions-level fast predicate (see ``R4Definitions._fast``)."""
        if tcode == "decimal":
            return lambda v: type(v) is int or type(v) is float
        if tcode == "base64Binary":
            return lambda v: type(v) is str and BASE64.fullmatch("".join(v.split())) is not None
        if tcode == "xhtml":  # a '#' link counts for dom-3: the full walk notes it
            return lambda v: type(v) is str and v != "" and v.lstrip().startswith("<div") and '"#' not in v \
                and narrative_has_content(v)
        return None

    def _item(self, child: ElementDef, tcode: str) -> Item:
        defs = self.defs
        if tcode == "Resource" or defs.is_resource(tcode):
            return _never  # contained and nested resources: the full walk
        node = defs.nodes.get(tcode[1:] if tcode[0] == "@" else tcode)
        if node is None:  # pragma: no cover - the definitions are closed
            return _never
        invariants = node.invariants
        vs = child.valueset if tcode in ("Coding", "CodeableConcept") else None
        systems = defs.valuesets.get(vs) if vs is not None else None
        name = node.path
        walk = self.node(name)

        def item(v: Any, st: State) -> bool:
            if type(v) is not dict or not v or (len(v) == 1 and "id" in v):
                return False
            if not walk(v, st):
                return False
            for _inv, native, engine in invariants:
                if native is not None:
                    if not native(v, st.res):
                        return False
                elif engine is not None:
                    try:
                        if not engine.holds(v, st.res, st.res):
                            return False
                    except Exception:
                        return False
            return True

        if tcode == "Coding":  # its code in its code system (fhir_terminology)
            plain = item

            def item(v: Any, st: State) -> bool:
                return plain(v, st) and coding_ok(v.get("system"), v.get("code"), v.get("version"))

        if tcode == "Extension":
            host, _, el = child.fhir_path.rpartition(".")
            modifier = el == "modifierExtension"

            def extension(v: Any, st: State) -> bool:
                return item(v, st) and ("extension" in v) != any(k.startswith("value") for k in v) \
                    and extension_url_absolute(v.get("url")) \
                    and fast_extension_ok(v.get("url"), value_key(v), host, modifier, defs)  # its definition
            return extension
        if tcode in QUANTITY_TYPES:
            def quantity(v: Any, st: State) -> bool:
                return item(v, st) and quantity_ok(v)  # a UCUM code parses as UCUM
            return quantity
        if tcode == "Attachment":
            def attachment(v: Any, st: State) -> bool:
                return item(v, st) and not ("size" in v and "data" in v)  # the size: the full walk
            return attachment
        if tcode == "Identifier":
            def identifier(v: Any, st: State) -> bool:
                if not item(v, st):
                    return False
                system = v.get("system")
                if type(system) is not str:
                    return True
                if system == URI_SYSTEM:
                    return False  # its value must be a URI: the full walk
                if system == NHS_NUMBER_SYSTEM:
                    value = v.get("value")
                    if nhs_number_problem(value) is not None:
                        return False
                    st.subjects.add(nhs_subject(str(value)))
                elif system in ODS_SYSTEMS and ods_code_problem(v.get("value")) is not None:
                    return False
                return True
            return identifier
        if tcode == "Reference":
            def reference(v: Any, st: State) -> bool:
                ref = v.get("reference") if type(v) is dict else None
                if type(ref) is str and ref[:1] == "#":
                    return False  # contained resolution: the full walk
                return item(v, st)
            return reference
        if systems is not None:
            coding = tcode == "Coding"

            def coded(v: Any, st: State) -> bool:
                if not item(v, st):
                    return False
                codings = [v] if coding else v.get("coding")
                if not codings or type(codings) is not list:
                    return True
                for c in codings:
                    if type(c) is dict:
                        system, code = c.get("system"), c.get("code")
                        codes = systems.get(system) if type(system) is str else None
                        if codes is not None and type(code) is str and code in codes:
                            return True
                return not any(type(c) is dict for c in codings)
            return coded
        return item


def _and_absolute(inner: Item) -> Item:
    def handler(v: Any, st: State) -> bool:
        return inner(v, st) and absolute(v)
    return handler
