"""FHIR R4 XML (``application/fhir+xml``): read into the FHIR JSON form, then validate that.

Why convert rather than write a second validator: the JSON walker in :mod:`.fhir` already
holds every rule (cardinality, types, bindings, UK Core, Bundle references), so an XML payload
gets exactly the same rules, messages and paths (JSON pointers into the equivalent JSON form,
e.g. ``/subject/identifier/value``) as its JSON twin. The reader uses the same compact R4
definitions to shape the JSON the way the FHIR JSON format does (repeating elements become
arrays, a primitive's ``value`` attribute becomes the JSON value and its ``id``/extensions go
to the ``_name`` sibling, ``resourceType`` comes from the element name, contained and bundled
resources nest, the Narrative ``div`` stays an XHTML string) and reports what only XML can get
wrong: the namespace, element order, a missing ``value`` attribute, text where only elements
belong, an element repeated that may appear once, attributes FHIR does not define.

This module only reads: :meth:`.fhir.FhirValidator.check_xml` runs the reader, then the walk on
its JSON form. So the reader imports the definitions (:mod:`.fhir_definitions`), never the walk,
and the walk imports the reader without a cycle.

Security: the stdlib expat parser is driven directly with DOCTYPE refused at its first byte
(``StartDoctypeDeclHandler`` raises), so no DTD is read, no entity is declared or expanded
(no billion laughs) and nothing external is fetched (no XXE); an undeclared entity reference is
a well-formedness error. Element count and depth are enforced while parsing, so a hostile
document stops at the first element over the limit instead of building a tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from xml.parsers import expat

from psvn.core.errors import Violation

from .fhir_definitions import ElementDef, NodeDef, R4Definitions, definitions
from .limits import Limits

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
XML_NS = "http://www.w3.org/XML/1998/namespace"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
_FHIR = FHIR_NS + " "  # expat's "namespace name" prefix with namespace_separator=" "
_INT = re.compile(r"-?(0|[1-9][0-9]*)", re.ASCII)
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?", re.ASCII)
_INT_TYPES = frozenset({"integer", "positiveInt", "unsignedInt"})
_XML_SPACE = " \t\r\n"
_EXPECTED_DOC = 'a FHIR resource element in the FHIR namespace, e.g. <Patient xmlns="http://hl7.org/fhir">'

# how an element is read (frame kinds, and plan entries)
_COMPLEX, _PRIM, _WRAP, _XHTML, _SKIP, _ATTR, _DIV_IN_FHIR = range(7)
_TYPED = frozenset({"boolean", "decimal", *_INT_TYPES})  # JSON booleans and numbers

# one element of a node, as the reader needs it: (key, child, tcode, position, how, node of a complex)
_Plan = tuple[str, ElementDef, str, int, int, NodeDef | None]


class _Stop(Exception):
    """Ends the parse at once (raised in a handler, expat stops and re-raises it)."""

    def __init__(self, violation: Violation) -> None:
        self.violation = violation


class _Frame:
    """One open element. A plain slotted class: the reader makes one per element."""

    __slots__ = ("base", "child", "ext", "has_value", "index", "key", "kind", "last", "last_name", "node", "ns",
                 "obj", "plan", "prim_keys", "ptr", "seen", "text", "tline", "value")
    kind: int
    ptr: str  # JSON pointer of this element's JSON value
    text: str | None  # first non-whitespace text directly inside
    tline: int  # its line
    plan: dict[str, _Plan]  # complex: expat element name -> how to read it
    node: NodeDef  # complex: its definition
    obj: dict[str, Any] | None  # complex, wrapper: the JSON object; primitive, div: where the value goes
    last: int  # complex: position of the furthest element so far (order check)
    last_name: str
    seen: set[str]  # complex: single-occurrence elements already met
    prim_keys: list[str] | None  # complex: repeating primitives (their "_name" lists are tidied at the end)
    child: ElementDef  # primitive, wrapper: the element's definition
    key: str
    base: str  # primitive: the parent's pointer
    index: int  # primitive: position in a repeating element, -1 when single
    value: Any  # XHTML: the tag name; complex: its name in messages
    ext: dict[str, Any] | None  # primitive: its id and extensions (the JSON "_name")
    has_value: bool  # primitive: value attribute present; wrapper: resource element met
    ns: str  # XHTML: the default namespace in force

    def __init__(self, kind: int, ptr: str = "") -> None:
        self.kind = kind
        self.ptr = ptr
        self.text = None


_SKIP_FRAME = _Frame(_SKIP)


@dataclass(slots=True)
class XmlRead:
    """The JSON form of an XML resource (``None`` when unreadable) and the XML-only problems.

    ``quiet`` holds pointers the reader already explained (an element it could not place), so
    the walker's knock-on complaint there (``fhir-required``, ``fhir-type`` on a placeholder)
    is not reported twice; ``quiet_under`` silences everything below a pointer.
    """

    data: dict[str, Any] | None
    violations: list[Violation]
    quiet: set[str] = field(default_factory=set)
    quiet_under: list[str] = field(default_factory=list)

    def keeps(self, v: Violation) -> bool:
        if v.path in self.quiet:
            return False
        return not any(v.path == p or v.path.startswith(p + "/") for p in self.quiet_under)


class FhirXmlReader:
    """Reads FHIR R4 XML into the FHIR JSON form; one instance per process is enough.

    Per definition node it keeps a plan keyed by expat's element name (``"namespace local"``),
    so the common element costs one dict lookup.
    """

    def __init__(self, defs: R4Definitions | None = None) -> None:
        self.defs = defs or definitions()
        self._orders: dict[str, dict[str, int]] = {}
        self._plans: dict[str, dict[str, _Plan]] = {}

    def order(self, node: NodeDef) -> dict[str, int]:
        """Element name -> position in the definition (choice variants share one position)."""
        o = self._orders.get(node.path)
        if o is None:
            o = {}
            positions: dict[int, int] = {}
            for key, (child, _t, _f) in node.lookup.items():
                o[key] = positions.setdefault(id(child), len(positions))
            self._orders[node.path] = o
        return o

    def plan(self, node: NodeDef) -> dict[str, _Plan]:
        plan = self._plans.get(node.path)
        if plan is not None:
            return plan
        plan = {}
        defs = self.defs
        for key, pos in self.order(node).items():
            child, tcode, _fast = node.lookup[key]
            sub = None
            if (key == "id" and node.kind != "resource") or (key == "url" and node.path == "Extension"):
                how = _ATTR
            elif tcode == "xhtml":
                how = _DIV_IN_FHIR
                plan[f"{XHTML_NS} {key}"] = (key, child, tcode, pos, _XHTML, None)
            elif tcode in defs.primitives:
                how = _PRIM
            elif tcode == "Resource" or defs.is_resource(tcode):
                how = _WRAP
            else:
                how = _COMPLEX
                sub = defs.nodes[tcode[1:] if tcode[0] == "@" else tcode]
            plan[_FHIR + key] = (key, child, tcode, pos, how, sub)
        self._plans[node.path] = plan
        return plan

    def read(self, body: bytes, limits: Limits) -> XmlRead:
        return _Reader(self, limits).run(body)


@lru_cache(maxsize=1)
def reader() -> FhirXmlReader:
    return FhirXmlReader()


class _Reader:
    """The state of one parse: expat calls the handlers below, which build the JSON form."""

    def __init__(self, owner: FhirXmlReader, limits: Limits) -> None:
        self.owner = owner
        self.defs = owner.defs
        self.max_elements = limits.max_elements
        self.max_depth = limits.max_depth
        self.stack: list[_Frame] = []
        self.out: list[Violation] = []
        self.quiet: set[str] = set()
        self.quiet_under: list[str] = []
        self.data: dict[str, Any] | None = None
        self.elements = 0
        self.xbuf: list[str] = []
        self.xopen = False  # an XHTML start tag is written without its closing ">" yet
        self.parser: Any = None

    # -- driver ----------------------------------------------------------------------------------
    def run(self, body: bytes) -> XmlRead:
        p = self.parser = expat.ParserCreate(namespace_separator=" ")
        p.buffer_text = True
        p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        p.StartDoctypeDeclHandler = self._doctype
        p.EntityDeclHandler = self._entity
        p.ExternalEntityRefHandler = self._external
        p.StartElementHandler = self._start
        p.EndElementHandler = self._end
        p.CharacterDataHandler = self._text
        try:
            p.Parse(body, True)
        except _Stop as stop:
            return XmlRead(None, [stop.violation])
        except expat.ExpatError as exc:
            return XmlRead(None, [Violation(
                path="", rule="xml-syntax",
                message=f"not well-formed XML: {expat.ErrorString(exc.code)} at line {exc.lineno}, "
                f"column {exc.offset + 1}", expected="a well-formed UTF-8 XML document")])
        except (LookupError, ValueError) as exc:  # encoding="..." that Python cannot decode
            return XmlRead(None, [Violation(
                path="", rule="xml-syntax", message=f"cannot read the declared character encoding ({exc})",
                expected="a well-formed UTF-8 XML document")])
        finally:
            self.parser = None  # break the handler <-> parser cycle
        if self.data is None:  # pragma: no cover - expat rejects a document without a root element
            return XmlRead(None, [Violation(path="", rule="xml-syntax", message="no root element",
                                            expected=_EXPECTED_DOC)])
        return XmlRead(self.data, self.out, self.quiet, self.quiet_under)

    def _doctype(self, name: str, *_args: Any) -> None:
        raise _Stop(Violation(
            path="", rule="xml-dtd",
            message=f"the document has a DOCTYPE ({name}); DTDs and entity declarations are refused "
            "(they allow entity-expansion and external-entity attacks, and FHIR XML never uses them)",
            expected="FHIR XML without <!DOCTYPE>"))

    def _entity(self, name: str, *_args: Any) -> None:  # pragma: no cover - needs a DOCTYPE first
        raise _Stop(Violation(path="", rule="xml-dtd", message=f"entity declaration {name!r} refused",
                              expected="FHIR XML without entity declarations"))

    def _external(self, *_args: Any) -> int:  # pragma: no cover - needs a DOCTYPE first
        raise _Stop(Violation(path="", rule="xml-dtd", message="external entity refused",
                              expected="FHIR XML without external entities"))

    def _report(self, path: str, rule: str, message: str, expected: str, line: int | None = None) -> None:
        if line is None:
            line = self.parser.CurrentLineNumber if self.parser is not None else 0
        self.out.append(Violation(path=path, rule=rule, message=f"{message} (line {line})", expected=expected))

    # -- element start ---------------------------------------------------------------------------
    def _start(self, name: str, attrs: dict[str, str]) -> None:
        self.elements += 1
        stack = self.stack
        if self.elements > self.max_elements or len(stack) >= self.max_depth:
            self._limit()
        if not stack:
            self._root(name, attrs)
            return
        parent = stack[-1]
        kind = parent.kind
        if kind != _COMPLEX:
            if kind == _SKIP:
                stack.append(_SKIP_FRAME)
            elif kind == _XHTML:
                self._xhtml_start(parent, name, attrs)
            elif kind == _PRIM:
                self._primitive_child(parent, name, attrs)
            else:
                self._wrapped_resource(parent, name, attrs)
            return
        plan = parent.plan.get(name)
        if plan is None:
            self._unplanned(parent, name)
            return
        key, child, tcode, pos, how, sub = plan
        if child.max == 1:
            if key in parent.seen:
                self._report(f"{parent.ptr}/{key}", "fhir-cardinality", f"{child.fhir_path} may appear only "
                             f"once (max 1), but <{key}> is repeated", f"a single <{key}> element")
                stack.append(_SKIP_FRAME)
                return
            parent.seen.add(key)
        if pos > parent.last:
            parent.last = pos
            parent.last_name = key
        elif pos < parent.last:
            self._report(f"{parent.ptr}/{key}", "fhir-xml-order", f"<{key}> comes after <{parent.last_name}>; "
                         f"FHIR XML keeps the elements of {parent.node.path} in their defined order",
                         f"<{key}> before <{parent.last_name}> (definition order; repeats side by side)")
        obj = parent.obj
        assert obj is not None
        if how == _PRIM:
            self._open_primitive(parent, obj, parent.ptr, key, child, tcode, attrs)
        elif how == _COMPLEX:
            assert sub is not None
            self._open_complex(obj, parent.ptr, key, child, sub, attrs)
        elif how == _WRAP:
            self._open_wrapper(obj, parent.ptr, key, child, attrs)
        elif how == _XHTML:
            self._div(parent, key, attrs)
        else:
            ptr = f"{parent.ptr}/{key}"
            if how == _ATTR:
                tag = parent.node.path.rsplit(".", 1)[-1]
                self._report(ptr, "fhir-xml-attribute", f"{child.fhir_path} is an XML attribute, not an element",
                             f'<{tag[:1].lower() + tag[1:]} {key}="...">')
            else:  # Narrative.div in the FHIR namespace: a common slip
                self._report(ptr, "fhir-xml-namespace", f"{child.fhir_path} must be XHTML, not a FHIR element",
                             f'<div xmlns="{XHTML_NS}">...</div>')
            self.quiet.add(ptr)
            stack.append(_SKIP_FRAME)

    def _limit(self) -> None:
        if self.elements > self.max_elements:
            raise _Stop(Violation(path="", rule="max-elements",
                                  message=f"payload has more than {self.max_elements} XML elements",
                                  expected=f"at most {self.max_elements} elements"))
        raise _Stop(Violation(path="", rule="max-depth", message=f"payload nests deeper than {self.max_depth} levels",
                              expected=f"at most {self.max_depth} levels of elements"))

    def _root(self, name: str, attrs: dict[str, str]) -> None:
        ns, local = _split(name)
        if ns != FHIR_NS:
            where = f"in namespace {ns}" if ns else "in no namespace"
            raise _Stop(Violation(path="", rule="fhir-xml-namespace",
                                  message=f"the root element <{local}> is {where}, not the FHIR namespace "
                                  f"{FHIR_NS}", expected=_EXPECTED_DOC))
        self.data = {"resourceType": local}
        node = self.defs.nodes.get(local)
        if node is None or node.kind != "resource":
            self.stack.append(_SKIP_FRAME)  # the walker reports the resourceType
            return
        self._attributes(attrs, "", local, node.path, (), root=True)
        self.stack.append(self._complex_frame(node, self.data, ""))

    def _complex_frame(self, node: NodeDef, obj: dict[str, Any], ptr: str, what: str = "") -> _Frame:
        f = _Frame(_COMPLEX, ptr)
        f.value = what or node.path  # how messages name it: Patient.name rather than HumanName
        f.node = node
        f.plan = self.owner.plan(node)
        f.obj = obj
        f.last = -1
        f.last_name = ""
        f.seen = set()
        f.prim_keys = None
        return f

    def _unplanned(self, parent: _Frame, name: str) -> None:
        """An element the node does not define, or one in another namespace."""
        node = parent.node
        ns, local = _split(name)
        ptr = f"{parent.ptr}/{local}"
        if ns != FHIR_NS:
            where = f"in namespace {ns}" if ns else "in no namespace"
            self._report(ptr, "fhir-xml-namespace", f"<{local}> inside {node.path} is {where}",
                         f"elements in the FHIR namespace {FHIR_NS}")
        else:  # the JSON walker's words, so both forms say the same
            self.out.append(Violation(path=ptr, rule="fhir-unknown-element",
                                      message=f"{node.path} has no element {local!r}",
                                      expected=f"an element defined for {node.path} in FHIR R4"))
        self.stack.append(_SKIP_FRAME)

    def _open_primitive(self, parent: _Frame, container: dict[str, Any], base: str, key: str, child: ElementDef,
                        tcode: str, attrs: dict[str, str]) -> None:
        f = _Frame(_PRIM)
        f.child = child
        f.key = key
        f.base = base
        f.obj = container
        f.ext = None
        raw = attrs.get("value")
        if child.max != 1:
            values = container.get(key)
            if values is None:
                values = container[key] = []
                container["_" + key] = []
                if parent.prim_keys is None:
                    parent.prim_keys = [key]
                else:
                    parent.prim_keys.append(key)
            f.index = len(values)
            f.ptr = f"{base}/{key}/{f.index}"
            values.append(None)
            container["_" + key].append(None)
        else:
            f.index = -1
            f.ptr = f"{base}/{key}"
        if len(attrs) > (raw is not None):
            for aname, aval in attrs.items():
                if aname == "id":
                    f.ext = {"id": aval}
                elif aname != "value":
                    self._bad_attribute(f.ptr, key, aname, child.fhir_path, "value, id")
        f.has_value = raw is not None
        if raw is not None:
            value: Any = self._lexical(child, tcode, raw, f.ptr) if tcode in _TYPED else raw
            if f.index >= 0:
                container[key][f.index] = value
            else:
                container[key] = value
        self.stack.append(f)

    def _open_complex(self, container: dict[str, Any], base: str, key: str, child: ElementDef, node: NodeDef,
                      attrs: dict[str, str]) -> None:
        obj: dict[str, Any] = {}
        ptr = self._place(container, key, child.max != 1, obj, base)
        if attrs:
            self._attributes(attrs, ptr, key, child.fhir_path,
                             ("id", "url") if node.path == "Extension" else ("id",), obj=obj)
        self.stack.append(self._complex_frame(node, obj, ptr, child.fhir_path))

    def _open_wrapper(self, container: dict[str, Any], base: str, key: str, child: ElementDef,
                      attrs: dict[str, str]) -> None:
        obj: dict[str, Any] = {}
        ptr = self._place(container, key, child.max != 1, obj, base)
        if attrs:
            self._attributes(attrs, ptr, key, child.fhir_path, ())
        f = _Frame(_WRAP, ptr)
        f.obj = obj
        f.child = child
        f.has_value = False
        self.stack.append(f)

    @staticmethod
    def _place(container: dict[str, Any], key: str, repeat: bool, obj: Any, base: str) -> str:
        if repeat:
            items = container.get(key)
            if items is None:
                items = container[key] = []
            items.append(obj)
            return f"{base}/{key}/{len(items) - 1}"
        container[key] = obj
        return f"{base}/{key}"

    def _attributes(self, attrs: dict[str, str], ptr: str, local: str, fhir_path: str, allowed: tuple[str, ...],
                    *, obj: dict[str, Any] | None = None, root: bool = False) -> None:
        for aname, aval in attrs.items():
            if aname in allowed and obj is not None:
                obj[aname] = aval
            elif root and aname.startswith(XSI_NS + " "):
                continue  # xsi:schemaLocation on the root is harmless and common in examples
            else:
                self._bad_attribute(ptr, local, aname, fhir_path, ", ".join(allowed) or "none")

    def _bad_attribute(self, ptr: str, local: str, aname: str, fhir_path: str, allowed: str) -> None:
        ns, an = _split(aname)
        shown = f"{{{ns}}}{an}" if ns else an
        hint = " (a value belongs in child elements)" if an == "value" and "value" not in allowed else ""
        self._report(ptr, "fhir-xml-attribute", f"<{local}> ({fhir_path}) has attribute {shown!r}, which FHIR "
                     f"XML does not define there{hint}", f"attributes: {allowed}")

    def _lexical(self, child: ElementDef, tcode: str, raw: str, ptr: str) -> Any:
        """The JSON value of a ``value`` attribute: booleans and numbers are typed in JSON."""
        if tcode == "boolean":
            if raw == "true":
                return True
            if raw == "false":
                return False
            self._report(ptr, "fhir-format", f"{child.fhir_path} value {_short(raw)} is not a boolean",
                         "true or false")
            return True  # placeholder: reported here, so the walker must not complain again
        if tcode == "decimal":
            if _DECIMAL.fullmatch(raw):
                return float(raw) if any(c in raw for c in ".eE") else int(raw)
            self._report(ptr, "fhir-format", f"{child.fhir_path} value {_short(raw)} is not a decimal",
                         "a decimal number, e.g. 72.5")
            return 0
        if _INT.fullmatch(raw) and len(raw) <= 20:
            return int(raw)  # range and sign are the walker's (the same words as JSON)
        self._report(ptr, "fhir-format", f"{child.fhir_path} value {_short(raw)} is not an integer",
                     "an integer in decimal digits, e.g. 42")
        return 1

    def _primitive_child(self, parent: _Frame, name: str, attrs: dict[str, str]) -> None:
        """Inside a primitive only ``extension`` may appear (its JSON goes to ``_name``)."""
        ext_ptr = f"{parent.base}/_{parent.key}" + (f"/{parent.index}" if parent.index >= 0 else "")
        if name == _FHIR + "extension":
            if parent.ext is None:
                parent.ext = {}
            ext_child = _EXTENSION_CHILD.get(parent.child.fhir_path)
            if ext_child is None:
                ext_child = _EXTENSION_CHILD[parent.child.fhir_path] = ElementDef(
                    name="extension", fhir_path=f"{parent.child.fhir_path}.extension", min=0, max=-1,
                    types=["Extension"], valueset=None, choice=False)
            self._open_complex(parent.ext, ext_ptr, "extension", ext_child, self.defs.nodes["Extension"], attrs)
            return
        ns, local = _split(name)
        ptr = f"{ext_ptr}/{local}"
        if ns != FHIR_NS:
            where = f"in namespace {ns}" if ns else "in no namespace"
            self._report(ptr, "fhir-xml-namespace", f"<{local}> inside {parent.child.fhir_path} is {where}",
                         f"elements in the FHIR namespace {FHIR_NS}")
        else:
            self.out.append(Violation(path=ptr, rule="fhir-unknown-element",
                                      message=f"primitive element has no {local!r}", expected="id or extension"))
        self.stack.append(_SKIP_FRAME)

    def _wrapped_resource(self, parent: _Frame, name: str, attrs: dict[str, str]) -> None:
        """``<contained>``, ``<resource>``: exactly one resource element, its name the resourceType."""
        ns, local = _split(name)
        obj = parent.obj
        assert obj is not None
        if parent.has_value:
            self._report(parent.ptr, "fhir-xml-resource", f"{parent.child.fhir_path} holds more than one "
                         f"resource (<{local}> is another)", "exactly one resource element inside")
            self.stack.append(_SKIP_FRAME)
            return
        parent.has_value = True
        if ns != FHIR_NS:
            where = f"in namespace {ns}" if ns else "in no namespace"
            self._report(parent.ptr, "fhir-xml-namespace", f"resource <{local}> is {where}",
                         f"a resource element in the FHIR namespace {FHIR_NS}")
            self.quiet_under.append(parent.ptr)
            self.stack.append(_SKIP_FRAME)
            return
        obj["resourceType"] = local
        node = self.defs.nodes.get(local)
        if node is None or node.kind != "resource":
            self.stack.append(_SKIP_FRAME)  # the walker reports the resourceType
            return
        if attrs:
            self._attributes(attrs, parent.ptr, local, local, ())
        self.stack.append(self._complex_frame(node, obj, parent.ptr))

    # -- XHTML narrative ---------------------------------------------------------------------------
    def _div(self, parent: _Frame, key: str, attrs: dict[str, str]) -> None:
        self.xbuf = buf = [f'<div xmlns="{XHTML_NS}"']
        self.xopen = True
        f = _Frame(_XHTML, f"{parent.ptr}/{key}")
        f.obj = parent.obj
        f.key = key
        f.ns = XHTML_NS
        f.value = "div"
        _xhtml_attributes(buf, attrs)
        self.stack.append(f)

    def _xhtml_start(self, parent: _Frame, name: str, attrs: dict[str, str]) -> None:
        ns, local = _split(name)
        buf = self.xbuf
        if self.xopen:
            buf.append(">")
        buf.append("<" + local)
        if ns != parent.ns:
            buf.append(f' xmlns="{_escape_attr(ns)}"')
        _xhtml_attributes(buf, attrs)
        self.xopen = True
        f = _Frame(_XHTML, parent.ptr)
        f.ns = ns
        f.value = local
        f.obj = None
        self.stack.append(f)

    # -- element end, text -------------------------------------------------------------------------
    def _end(self, _name: str) -> None:
        f = self.stack.pop()
        kind = f.kind
        if kind == _PRIM:
            if f.text is not None or f.ext is not None or not f.has_value:
                self._end_primitive(f)
        elif kind == _COMPLEX:
            if f.text is not None:
                self._mixed(f, f.value)
            if f.prim_keys is not None:
                obj = f.obj
                assert obj is not None
                for key in f.prim_keys:
                    if all(e is None for e in obj["_" + key]):
                        del obj["_" + key]
        elif kind == _XHTML:
            buf = self.xbuf
            buf.append("/>" if self.xopen else f"</{f.value}>")
            self.xopen = False
            if f.obj is not None:  # the div itself
                f.obj[f.key] = "".join(buf)
                self.xbuf = []
        elif kind == _WRAP:
            if f.text is not None:
                self._mixed(f, f.child.fhir_path)
            if not f.has_value:
                self._report(f.ptr, "fhir-xml-resource", f"{f.child.fhir_path} holds no resource",
                             "exactly one resource element inside, e.g. <contained><Patient>...</Patient></contained>")
                self.quiet_under.append(f.ptr)

    def _end_primitive(self, f: _Frame) -> None:
        child = f.child
        tag = f.key
        if f.text is not None and not f.has_value:
            self._report(f.ptr, "fhir-xml-value", f"{child.fhir_path} carries its value as text "
                         f"({_short(f.text)}); FHIR XML puts a primitive's value in the value attribute",
                         f'<{tag} value="..."/>', f.tline)
        elif f.text is not None:
            self._mixed(f, child.fhir_path)
        elif not f.has_value and not f.ext:
            self._report(f.ptr, "fhir-xml-value", f"<{tag}> ({child.fhir_path}) has no value attribute "
                         "(and no extension)", f'<{tag} value="..."/>')
        if not f.has_value and not f.ext:
            self.quiet.add(f.ptr)
        if f.ext:
            container = f.obj
            assert container is not None
            if f.index >= 0:
                container["_" + tag][f.index] = f.ext
            else:
                container["_" + tag] = f.ext

    def _mixed(self, f: _Frame, what: str) -> None:
        self._report(f.ptr, "fhir-xml-mixed-content", f"{what} contains text ({_short(f.text or '')}); FHIR XML "
                     "elements hold only child elements and attributes",
                     "child elements only (a primitive's value goes in its value attribute)", f.tline)

    def _text(self, data: str) -> None:
        stack = self.stack
        if not stack:
            return
        f = stack[-1]
        if f.kind == _XHTML:
            if self.xopen:
                self.xbuf.append(">")
                self.xopen = False
            self.xbuf.append(_escape_text(data))
        elif f.text is None and f.kind != _SKIP:
            stripped = data.strip(_XML_SPACE)
            if stripped:
                f.text = stripped
                f.tline = self.parser.CurrentLineNumber


_EXTENSION_CHILD: dict[str, ElementDef] = {}


def _split(name: str) -> tuple[str, str]:
    """expat's ``"namespace local"`` (or ``"local"``) -> (namespace or "", local)."""
    ns, sep, local = name.rpartition(" ")
    return (ns, local) if sep else ("", name)


def _escape_text(s: str) -> str:
    if "&" in s:
        s = s.replace("&", "&amp;")
    if "<" in s:
        s = s.replace("<", "&lt;")
    if ">" in s:
        s = s.replace(">", "&gt;")
    return s


def _escape_attr(s: str) -> str:
    return (_escape_text(s).replace('"', "&quot;").replace("\n", "&#10;").replace("\r", "&#13;")
            .replace("\t", "&#9;"))


def _xhtml_attributes(buf: list[str], attrs: dict[str, str]) -> None:
    n = 0
    for aname, aval in attrs.items():
        ns, local = _split(aname)
        if not ns:
            buf.append(f' {local}="{_escape_attr(aval)}"')
        elif ns == XML_NS:
            buf.append(f' xml:{local}="{_escape_attr(aval)}"')
        else:
            buf.append(f' xmlns:a{n}="{_escape_attr(ns)}" a{n}:{local}="{_escape_attr(aval)}"')
            n += 1


def _short(val: str, n: int = 40) -> str:
    return repr(val if len(val) <= n else val[:n] + "...")
