"""The fastest path: the R4 definitions compiled into msgspec Structs, decoded straight from bytes.

For a catalogue type's resource, :class:`TypedPath` generates (once, from the compiled
definitions) a msgspec ``Struct`` per definition node it can reach: every element a field under
its JSON name, typed as the definitions say (single or a non-empty, bounded array; primitives as
``str`` with the type's regex, ``bool``, bounded ``int``, ``float``; a required ``code`` as the
literal codes of its value set; complex types as their Structs), unknown fields forbidden, and a
``__post_init__`` holding what a type cannot say: ele-1 (an element with no content, or an id
only), one variant per choice, required choices, the UK Core identifier checks (noting each valid
NHS number as a data subject), required bindings on Coding/CodeableConcept, ext-1, and the
node's FHIRPath invariants. Decoding a valid payload therefore makes every check of the walk in
one C-speed pass. Anything else -- a violation, a ``null``, a primitive's ``_element``, a
contained or nested resource, a ``#`` local reference or link, a Bundle -- fails the decode, and
the caller parses the payload and runs the reporting walk, so this path only ever says "valid".
"""

from __future__ import annotations

import operator
import re
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

import msgspec

from .common import (
    NHS_NUMBER_SYSTEM,
    NHS_SUBJECT_PREFIX,
    NO_SUBJECTS,
    ODS_PATTERN,
    ODS_SYSTEMS,
    nhs_number_ok,
    nhs_subject,
)
from .fhir_definitions import BASE64, ElementDef, NodeDef, R4Definitions
from .fhir_extensions import allow_domains, restore, typed_extensions_ok
from .fhir_rules import (
    ABSOLUTE_ELEMENTS,
    URI_SYSTEM,
    absolute,
    extension_url_absolute,
    narrative_has_content,
    uri_problem,
)
from .fhir_terminology import SNOMED, coding_ok, core_codesystems, snomed_code_ok
from .fhir_ucum import QUANTITY_TYPES, UCUM, ucum_valid

_local = threading.local()


#: Invariants that say "if any of these elements is present, one of those must be": written
#: inline into the generated checks (each is also a native predicate, held to its FHIRPath).
PRESENCE: dict[str, tuple[list[str], list[str]]] = {
    "prr-1": (["orderDetail"], ["code"]),
    "qty-3": (["code"], ["system"]),
    "cpt-2": (["value"], ["system"]),
    "att-1": (["data"], ["contentType"]),
    "pat-1": ([], ["name", "telecom", "address", "organization"]),
    "org-1": ([], ["identifier", "name"]),
    "obs-3": ([], ["low", "high", "text"]),
    "app-1": ([], ["type", "actor"]),
}


#: Choice groups with at least this many variants are counted by one C call (``attrgetter`` then
#: ``tuple.count``) instead of one ``is not UNSET`` test per variant (Extension.value[x] has 50).
_WIDE_GROUP = 4
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:").match  # as fhir_rules._ABSOLUTE


_WEB = ("https://", "http://")
#: Values a uri's shape does not settle: a local reference (the walk resolves it), and the urn:
#: forms with a format of their own.
_URI_SPECIAL = ("#", "urn:uuid:", "urn:oid:")


def _uri_rest(tcode: str, *, absolute: bool) -> Callable[[str], bool]:
    """For a value of a uri's shape (:data:`_URI_SPECIAL` or a scheme still to check): what
    :meth:`FhirValidator._primitive` checks beyond the regex."""
    def rest(v: str) -> bool:
        if v[0] == "#" or uri_problem(tcode, v) is not None:
            return False
        return not absolute or _SCHEME(v) is not None

    return rest


def uncaptured(regex: re.Pattern[str]) -> re.Pattern[str]:
    """``regex`` with its capturing groups made non-capturing: the same language (the fast paths
    only ask whether a value matches), but Python's engine need not record where each group
    matched -- a third off the definitions' dateTime pattern, with its nine nested groups. A
    pattern with a back-reference is returned as it is."""
    src = regex.pattern
    if re.search(r"\\[1-9]|\(\?P=", src):
        return regex
    out: list[str] = []
    i, in_class = 0, False
    while i < len(src):
        ch = src[i]
        if ch == "\\":
            out.append(src[i:i + 2])
            i += 2
            continue
        if in_class:
            if ch == "]" and not (out[-1] == "[" or out[-1] == "[^"):
                in_class = False
        elif ch == "[":
            in_class = True
            if src[i + 1:i + 2] == "^":
                out.append("[^")
                i += 2
                continue
        elif ch == "(" and src[i + 1:i + 2] != "?":
            ch = "(?:"
        out.append(ch)
        i += 1
    return re.compile("".join(out), regex.flags)


def format_check(tcode: str, regex: re.Pattern[str], *, absolute: bool = False) -> Callable[[str], bool]:
    """True of a non-empty str that :meth:`FhirValidator._primitive` finds well formed as ``tcode``
    and that needs nothing else (no '#' local reference to resolve): the definitions' regex, and
    for a uri, url or canonical the urn:uuid/urn:oid formats, a canonical's (or, ``absolute``, a
    Coding.system's) scheme. ``TypedPath._format_expr`` writes the same test inline."""
    match = uncaptured(regex).fullmatch
    if tcode == "code":
        return lambda v: (v.isprintable() and " " not in v) or match(v) is not None
    if tcode not in ("canonical", "uri", "url"):
        return lambda v: match(v) is not None
    rest = _uri_rest(tcode, absolute=absolute)
    if absolute or tcode == "canonical":
        return lambda v: (v.split() == [v] or match(v) is not None) and (v.startswith(_WEB) or rest(v))
    return lambda v: (v.split() == [v] or match(v) is not None) and (not v.startswith(_URI_SPECIAL) or rest(v))


class _ResourceType(msgspec.Struct):
    resourceType: str | None = None


_PEEK = msgspec.json.Decoder(_ResourceType)


class _Fallback(ValueError):
    """Raised in a ``__post_init__``: let the full walk decide."""


def _fail() -> None:
    raise _Fallback


def _subject(value: str) -> None:
    """Note a valid NHS number as a data subject (the decode in progress on this thread)."""
    _local.subjects.add(nhs_subject(value))


class _View:
    """A Struct seen as the JSON object it was decoded from (for the native invariant predicates)."""

    __slots__ = ("_s",)

    def __init__(self, s: msgspec.Struct) -> None:
        self._s = s

    def _names(self) -> dict[str, str]:
        return type(self._s).__json_names__  # type: ignore[no-any-return,attr-defined]

    def get(self, key: str, default: Any = None) -> Any:
        attr = self._names().get(key)
        if attr is None:
            return default
        v = getattr(self._s, attr)
        return default if v is msgspec.UNSET else _wrap(v)

    def __contains__(self, key: object) -> bool:
        attr = self._names().get(str(key))
        return attr is not None and getattr(self._s, attr) is not msgspec.UNSET

    def __iter__(self) -> Any:
        return iter([k for k, a in self._names().items() if getattr(self._s, a) is not msgspec.UNSET])

    def __getitem__(self, key: str) -> Any:
        v = self.get(key, msgspec.UNSET)
        if v is msgspec.UNSET:
            raise KeyError(key)
        return v


def _wrap(v: Any) -> Any:
    if isinstance(v, msgspec.Struct):
        return _View(v)
    if type(v) is list:
        return [_wrap(x) for x in v]
    return v


class TypedPath:
    """Decoders per resource type, built lazily from the definitions."""

    def __init__(self, defs: R4Definitions) -> None:
        self.defs = defs
        # the generated classes live in a module of their own, where msgspec resolves their
        # forward references (a node's type names other nodes, and itself: Questionnaire.item)
        module = types.ModuleType(f"{__name__}._generated_{id(self)}")
        sys.modules[module.__name__] = module
        self.ns: dict[str, Any] = module.__dict__
        self.ns.update({"msgspec": msgspec, "UNSET": msgspec.UNSET, "UnsetType": msgspec.UnsetType,
                                   "Annotated": __import__("typing").Annotated, "Literal": __import__("typing").Literal,
                                   "Meta": msgspec.Meta, "_fail": _fail, "_subject": _subject, "_local": _local,
                                   "_nhs_ok": nhs_number_ok, "_ods_ok": re.compile(ODS_PATTERN, re.ASCII).fullmatch,
                                   "_NHS": NHS_NUMBER_SYSTEM, "_NHS_SUBJECT": NHS_SUBJECT_PREFIX, "_ODS": ODS_SYSTEMS,
                                   "_View": _View,
                                   "_to_builtins": msgspec.to_builtins, "_cc_codings": _cc_codings,
                                   "_in_vs": _in_vs, "_ext_url_ok": extension_url_absolute,
                                   "_URI_SYSTEM": URI_SYSTEM, "_absolute": absolute, "_coding_ok": coding_ok,
                                   "_SNOMED": SNOMED, "_snomed_ok": snomed_code_ok, "_CORE_CS": core_codesystems(),
                                   "_exts_ok": typed_extensions_ok, "_defs": defs,
                                   "_UCUM": UCUM, "_ucum_ok": ucum_valid,
                                   "_WEB": _WEB, "_URI_SPECIAL": _URI_SPECIAL,
                                   "_astuple": msgspec.structs.astuple})
        self._made: set[str] = set()
        self._decoders: dict[str, msgspec.json.Decoder[Any]] = {}
        self._lock = threading.Lock()

    def resource_type(self, body: bytes) -> str | None:
        """The payload's resourceType, read without building the rest (for ``fhir.r4.Resource``)."""
        try:
            rt = _PEEK.decode(body).resourceType
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            return None
        return rt if isinstance(rt, str) else None

    def decode(self, rt: str, body: bytes, *, domains: tuple[str, ...] | None = None,
               escaped: bool | None = None) -> tuple[Any, frozenset[str]] | None:
        """(the decoded resource, its data subjects) for a valid ``rt`` payload; ``None``: the
        full walk must decide. ``domains``: the extension domains the calling catalogue type
        allows (:func:`.fhir_extensions.allow_domains`; ``None``: an unknown one defers);
        ``escaped``: whether ``body`` holds a backslash, if the caller has looked already."""
        dec = self._decoders.get(rt)
        if dec is None:
            with self._lock:
                dec = self._decoders.get(rt)
                if dec is None:
                    dec = self._decoders[rt] = msgspec.json.Decoder(self._struct(rt))
        # a string may hold \f or \v (FHIR forbids them) only through an escape: \f, or \u000b/\u000c
        # (any \u000x is left to the walk); one memchr finds no backslash in most payloads
        if (b"\\" in body if escaped is None else escaped) and (b"\\u000" in body or b"\\f" in body):
            return None
        subjects: set[str] = set()
        _local.subjects = subjects
        outer = allow_domains(domains)
        try:
            res = dec.decode(body)
        except Exception:  # any failure here, even a bug, only means: let the reporting walk decide
            return None
        finally:
            _local.subjects = None
            restore(outer)
        if res.resourceType != rt:
            return None
        return res, frozenset(subjects) if subjects else NO_SUBJECTS  # noted as nhs:<number>


    def carrier(self, rt: str, element: str, system: str) -> Callable[[Any], bool]:
        """:func:`carries` for one resource type, element and system, compiled: the attribute
        names are looked up once here, not on every payload (a required-identifier rule is
        checked on every valid payload of its type)."""
        node = self.defs.nodes[rt]
        self._struct(rt)
        entry = node.lookup.get(element)
        names: dict[str, str] = self.ns[f"{self.cls_name(rt)}_names"]
        if entry is None or element not in names or entry[1] not in ("Identifier", "Reference"):
            return lambda res: carries(res, element, system)
        child, tcode, _fast = entry
        ident = self.ns[f"{self.cls_name('Identifier')}_names"]
        s, v = ident["system"], ident["value"]
        has = f"i.{s} == system and i.{v} is not UNSET and i.{v} != ''"
        if tcode == "Identifier" and child.max != 1:
            body = f"    x = res.{names[element]}\n    return x is not UNSET and any({has} for i in x)"
        elif tcode == "Identifier":
            body = "    return False  # an Identifier, not a list of them nor a Reference: as carries()"
        elif child.max != 1:
            body = "    return False  # a list of References: as carries()"
        else:
            ref = self.ns[f"{self.cls_name('Reference')}_names"]
            body = (f"    x = res.{names[element]}\n    if x is UNSET:\n        return False\n"
                    f"    i = x.{ref['identifier']}\n    return i is not UNSET and {has}")
        ns: dict[str, Any] = {"UNSET": msgspec.UNSET, "system": system}
        exec(compile(f"def carrier(res):\n{body}\n", f"<fhir-typed carrier {rt}.{element}>", "exec"), ns)
        fn: Callable[[Any], bool] = ns["carrier"]
        return fn

    # -- generation ----------------------------------------------------------------------------
    @staticmethod
    def cls_name(path: str) -> str:
        return "T_" + path.replace(".", "_")

    def _struct(self, path: str) -> Any:
        todo = [path]
        made: list[str] = []
        while todo:
            p = todo.pop()
            if p in self._made:
                continue
            self._made.add(p)
            src, deps = self._source(self.defs.nodes[p])
            exec(compile(src, f"<fhir-typed {p}>", "exec"), self.ns)  # generated from the definitions
            order = self.ns[f"{self.cls_name(p)}_order"]
            if self.ns[self.cls_name(p)].__struct_fields__ != order:  # the astuple positions rely on it
                raise RuntimeError(f"fhir_typed: {p}'s fields are not in the generated order")
            made.append(p)
            todo.extend(d for d in deps if d not in self._made)
        return self.ns[self.cls_name(path)]

    def _source(self, node: NodeDef) -> tuple[str, set[str]]:
        defs = self.defs
        name = self.cls_name(node.path)
        deps: set[str] = set()
        fields: list[str] = []
        post: list[str] = []
        json_names: dict[str, str] = {}
        groups: dict[str, list[str]] = {}
        content: list[str] = []  # attributes that count as content (not id) for ele-1
        has_required_content = False
        formats: dict[str, list[str]] = {}  # choice group -> its variants' format checks
        formatted: dict[str, list[str]] = {}  # choice group -> the variants those checks read
        system_format: list[str] = []  # Identifier.system's format check
        pos: dict[str, int] = {}  # attribute -> its place in the Struct (msgspec.structs.astuple)
        optional: list[str] = []  # attributes that may be UNSET
        is_resource = node.kind == "resource"
        if is_resource:
            fields.append("    resourceType: str")
        for i, (key, (child, tcode, _fast)) in enumerate(node.lookup.items()):
            attr = f"f{i}"
            # a choice variant's format check goes with its group (a wide group guards them all)
            sink = formats.setdefault(child.name, []) if child.choice else post
            if node.path in ("Identifier", "Coding") and key == "system":
                sink = system_format  # not for the NHS, ODS and SNOMED CT systems, which are well formed
            before = len(sink)
            typ = self._type(child, tcode, attr, deps, sink)
            if child.choice and len(sink) > before:
                formatted.setdefault(child.name, []).append(attr)
            if child.fhir_path in ABSOLUTE_ELEMENTS and (child.max != 1 or tcode not in ("uri", "url", "canonical")):
                post.append(f"        if self.{attr} is not UNSET and not _absolute(self.{attr}):\n            _fail()")
            if typ is None:
                continue  # not carried by this path (a resource): its presence fails the decode
            json_names[key] = attr
            required = child.min > 0 and not child.choice
            pos[attr] = len(fields)
            if required:
                fields.append(f"    {attr}: {typ} = msgspec.field(name={key!r})")
            else:
                optional.append(attr)
                fields.append(f"    {attr}: {typ} | UnsetType = msgspec.field(default=UNSET, name={key!r})")
            if key != "id":
                content.append(attr)
                has_required_content = has_required_content or required
            if child.choice:
                groups.setdefault(child.name, []).append(attr)
            if tcode in ("Coding", "CodeableConcept") and child.valueset in defs.valuesets:
                self.ns[f"{name}_{attr}_vs"] = defs.valuesets[child.valueset]
                post.append(self._coded(attr, tcode, child.max, f"{name}_{attr}_vs"))
        counted: dict[str, str] = {}  # choice group -> the local holding its count of variants present
        for g, (gname, attrs) in enumerate(groups.items()):
            others = [a for a in optional if a not in attrs]
            checks = formats.get(gname, [])
            wide = len(attrs) >= _WIDE_GROUP and len(others) <= _WIDE_GROUP
            if wide:
                # the Struct as a tuple (one C call), then how many are unset (another): what is
                # set, less the fields outside the group (Extension.value[x] has 50 variants)
                rest = "".join(f" - (self.{a} is not UNSET)" for a in others)
                count = f"{len(optional)} - t.count(UNSET){rest}"  # required fields are never UNSET
                post.append("        t = _astuple(self)")
            else:
                count = " + ".join(f"(self.{a} is not UNSET)" for a in attrs)
            req = any(c.name == gname and c.min > 0 for c, _k in node.required)
            cond = f"n{g} > 1" + (f" or n{g} == 0" if req else "")
            counted[gname] = f"n{g}"
            post.append(f"        n{g} = {count}\n        if {cond}:\n            _fail()")
            if wide and checks:
                # at most one variant is present now: check formats only if it is a primitive one
                # (one tuple comparison, not a test per variant: Extension has 19 of them)
                prims = formatted[gname]
                if len(prims) == 1:
                    post.append(f"        if t[{pos[prims[0]]}] is not UNSET:")
                else:
                    self.ns[f"{name}_p{g}"] = operator.itemgetter(*(pos[a] for a in prims))
                    self.ns[f"{name}_u{g}"] = (msgspec.UNSET,) * len(prims)
                    post.append(f"        if {name}_p{g}(t) != {name}_u{g}:")
                post.extend("\n".join("    " + ln for ln in c.split("\n")) for c in checks)
            else:
                post.extend(checks)
        if not is_resource and not has_required_content:
            if content:
                # extensions last: the test stops at the first element present, seldom one of those
                exts = {json_names.get("extension"), json_names.get("modifierExtension")}
                cond = " and ".join(f"self.{a} is UNSET" for a in sorted(content, key=lambda a: a in exts))
                post.append(f"        if {cond}:\n            _fail()")  # ele-1: no content (or an id only)
            else:
                post.append("        _fail()")
        if node.path == "Extension":
            ext = json_names.get("extension")
            if "value[x]" in counted and ext:  # ext-1: extensions or a value, not both (nor neither)
                n = counted["value[x]"]
                post.append(f"        if (self.{ext} is not UNSET) == ({n} > 0):\n            _fail()")
        if node.path == "Extension" and "url" in json_names:
            url = json_names["url"]  # absolute (http(s):// is, without the regex)
            post.append(f"        if not (self.{url}.startswith(_WEB) or _ext_url_ok(self.{url})):\n"
                        "            _fail()")
        for key in ("extension", "modifierExtension"):  # each against its definition (fhir_extensions)
            if key in json_names:
                post.append(f"        if self.{json_names[key]} is not UNSET and not _exts_ok(self.{json_names[key]}, "
                            f"{node.path!r}, {key == 'modifierExtension'}, _defs):\n            _fail()")
        if node.path in QUANTITY_TYPES:  # a UCUM code parses as UCUM (fhir_ucum)
            post.append(f"        if self.{json_names['system']} == _UCUM and self.{json_names['code']} is not UNSET "
                        f"and not _ucum_ok(self.{json_names['code']}):\n            _fail()")
        if node.path == "Attachment":
            post.append(f"        if self.{json_names['size']} is not UNSET and self.{json_names['data']} is not UNSET:"
                        "\n            _fail()")
        if node.path == "Identifier":
            s, v = json_names["system"], json_names["value"]
            # an NHS number is checked and noted as a data subject, an ODS code checked, inline
            post.append(f"        s = self.{s}\n        if s == _NHS:\n            v = self.{v}\n"
                        "            if not _nhs_ok(v):\n                _fail()\n"
                        "            _local.subjects.add(_NHS_SUBJECT + v)\n"
                        f"        elif s in _ODS:\n            v = self.{v}\n"
                        "            if v is UNSET or _ods_ok(v) is None:\n                _fail()\n"
                        "        elif s == _URI_SYSTEM:\n            _fail()")
            if system_format:  # any other system: its format (the two above are constants that pass)
                post.append("        else:")
                post.extend("\n".join("    " + ln for ln in c.split("\n")) for c in system_format)
        if node.path == "Coding":  # its code in its code system (fhir_terminology)
            s, c, v = json_names["system"], json_names["code"], json_names["version"]
            # SNOMED CT (the common system on the hot path: a constant, so no format test) by one
            # call of its SCTID check; any other system its format, then its code system's codes
            post.append(f"        s = self.{s}\n        if s == _SNOMED:\n"
                        f"            if not _snomed_ok(self.{c}):\n                _fail()\n"
                        "        else:")
            post.extend("\n".join("    " + ln for ln in chk.split("\n")) for chk in system_format)
            # a system that is no core code system is the common case: one dict lookup (as coding_ok)
            post.append(f"            if s in _CORE_CS and not _coding_ok(s, self.{c}, None if self.{v} is UNSET "
                        f"else self.{v}):\n                _fail()")
        if node.path == "Reference":
            r = json_names["reference"]
            post.append(f"        if self.{r} is not UNSET and self.{r}[:1] == '#':\n            _fail()")
        for j, (inv, native, engine) in enumerate(node.invariants):
            presence = PRESENCE.get(inv.key)
            if presence is not None and all(k in json_names for k in presence[0] + presence[1]):
                then = " or ".join(f"self.{json_names[k]} is not UNSET" for k in presence[1])
                if presence[0]:
                    when = " or ".join(f"self.{json_names[k]} is not UNSET" for k in presence[0])
                    post.append(f"        if ({when}) and not ({then}):\n            _fail()  # {inv.key}")
                else:
                    post.append(f"        if not ({then}):\n            _fail()  # {inv.key}")
            elif native is not None:
                self.ns[f"{name}_inv{j}"] = native
                post.append(f"        if not {name}_inv{j}(_View(self), None):\n            _fail()")
            elif engine is not None and not is_resource and "%resource" in inv.expression.replace("%rootResource",
                                                                                               "%resource"):
                post.append("        _fail()")  # needs the enclosing resource: the full walk
            elif engine is not None:
                self.ns[f"{name}_inv{j}"] = engine
                post.append(f"        d = _to_builtins(self)\n        try:\n"
                            f"            ok = {name}_inv{j}.holds(d, d, d)\n"
                            "        except Exception:\n            ok = False\n"
                            "        if not ok:\n            _fail()")
        self.ns[f"{name}_names"] = json_names
        self.ns[f"{name}_order"] = tuple(f.split(":")[0].strip() for f in fields)
        lines = ["from __future__ import annotations",
                 f"class {name}(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):", *fields]
        if post:
            lines.append("    def __post_init__(self):")
            lines.extend(post)
        lines.append(f"{name}.__json_names__ = {name}_names")
        return "\n".join(lines) + "\n", deps

    def _type(self, child: ElementDef, tcode: str, attr: str, deps: set[str], post: list[str]) -> str | None:
        defs = self.defs
        if tcode == "Resource" or defs.is_resource(tcode):
            return None
        if tcode in defs.primitives:
            one = self._primitive(child, tcode, attr, post)
        else:
            path = tcode[1:] if tcode[0] == "@" else tcode
            deps.add(path)
            one = self.cls_name(path)  # a forward reference (annotations are lazy), resolved in the module
        if child.max == 1:
            return one
        meta = "Meta(min_length=1" + (f", max_length={child.max})" if child.max > 0 else ")")
        return f"Annotated[list[{one}], {meta}]"

    def _primitive(self, child: ElementDef, tcode: str, attr: str, post: list[str]) -> str:
        defs = self.defs
        pytype, regex = defs.primitives[tcode]
        if pytype is bool:
            return "bool"
        if pytype is int:
            low = {"positiveInt": 1, "unsignedInt": 0}.get(tcode, -2147483648)
            return f"Annotated[int, Meta(ge={low}, le=2147483647)]"
        if tcode == "decimal":
            return "float"
        codes = defs.vs_codes.get(child.valueset) if (child.valueset is not None and tcode == "code") else None
        if codes is not None and regex is not None:
            good = sorted(c for c in codes if regex.fullmatch(c))
            if good:
                return f"Literal[{', '.join(repr(c) for c in good)}]"
            return "Annotated[str, Meta(pattern='(?!)')]"
        if tcode in ("string", "markdown"):  # \f and \v are ruled out on the bytes (see decode)
            return "Annotated[str, Meta(min_length=1)]"
        if tcode == "xhtml":
            return self._xhtml(attr, child, post)
        if tcode == "base64Binary":
            self.ns["_b64"] = _b64_ok
            if child.max == 1:
                post.append(f"        if self.{attr} is not UNSET and not _b64(self.{attr}):\n            _fail()")
            else:
                post.append(f"        if self.{attr} is not UNSET and not all(map(_b64, self.{attr})):\n"
                            "            _fail()")
            return "str"
        assert regex is not None
        # the format is checked in __post_init__ (cheaper than a msgspec pattern per value, which
        # costs more than the regex itself; and a string without whitespace is a valid uri, a
        # printable token without a space a valid code, without running the regex)
        absolute = child.fhir_path in ABSOLUTE_ELEMENTS and tcode in ("canonical", "uri", "url")
        if child.max == 1:
            post.append(f"        v = self.{attr}\n"
                        f"        if v is not UNSET and not ({self._format_expr(tcode, regex, absolute)}):\n"
                        "            _fail()")
        else:  # each item by the same inline test (a loop costs less than all(map(...)) of a call)
            post.append(f"        if self.{attr} is not UNSET:\n            for v in self.{attr}:\n"
                        f"                if not ({self._format_expr(tcode, regex, absolute)}):\n"
                        "                    _fail()")
        return "Annotated[str, Meta(min_length=1)]"

    def _format_expr(self, tcode: str, regex: re.Pattern[str], absolute: bool) -> str:
        """The inline expression (of ``v``, a non-empty str) that is true when ``v`` has the
        format :func:`format_check` accepts: the same test, without a call per value."""
        self.ns[f"_rx_{tcode}"] = uncaptured(regex).fullmatch
        if tcode not in ("canonical", "uri", "url", "code"):
            return f"_rx_{tcode}(v) is not None"
        if tcode == "code":  # short, as a rule: a printable token without a space has the format
            return f"(v.isprintable() and ' ' not in v or _rx_{tcode}(v) is not None)"
        # a uri's pattern is \S*: a string that splits into itself has no whitespace, so matches
        # (str.split and the pattern's \s agree on what is whitespace); faster than isprintable()
        # on a URL's length, and it needs no regex
        shape = f"(v.split() == [v] or _rx_{tcode}(v) is not None)"
        rest = f"_uri_rest_{tcode}" + ("_abs" if absolute else "")
        self.ns[rest] = _uri_rest(tcode, absolute=absolute)
        if absolute or tcode == "canonical":  # http(s):// has a scheme, and is no urn: nor '#'
            return f"{shape} and (v.startswith(_WEB) or {rest}(v))"
        return f"{shape} and (not v.startswith(_URI_SPECIAL) or {rest}(v))"

    def _xhtml(self, attr: str, child: ElementDef, post: list[str]) -> str:
        self.ns["_xhtml_ok"] = _xhtml_ok
        post.append(f"        if self.{attr} is not UNSET and not _xhtml_ok(self.{attr}):\n            _fail()")
        return "str"

    @staticmethod
    def _coded(attr: str, tcode: str, mx: int, vs: str) -> str:
        items = f"[self.{attr}]" if mx == 1 else f"self.{attr}"
        get = "[x]" if tcode == "Coding" else "_cc_codings(x)"
        return (f"        if self.{attr} is not UNSET:\n"
                f"            for x in {items}:\n"
                f"                cs = {get}\n"
                f"                if cs and not any(_in_vs({vs}, c) for c in cs):\n"
                f"                    _fail()")


def _cc_codings(cc: Any) -> Any:
    v = getattr(cc, type(cc).__json_names__["coding"])
    return () if v is msgspec.UNSET else v


def _in_vs(systems: dict[str, frozenset[str]], c: Any) -> bool:
    names = type(c).__json_names__
    s, k = getattr(c, names["system"]), getattr(c, names["code"])
    codes = systems.get(s) if type(s) is str else None
    return codes is not None and type(k) is str and k in codes


def _b64_ok(v: str) -> bool:
    return BASE64.fullmatch("".join(v.split())) is not None


def _xhtml_ok(v: str) -> bool:
    return v != "" and v.lstrip().startswith("<div") and '"#' not in v and narrative_has_content(v)


def carries(res: Any, element: str, system: str) -> bool:
    """:func:`policies.validators.fhir._carries` on a decoded resource: ``element`` (an Identifier
    list, or a Reference) carries an identifier of ``system`` with a value."""
    attr = _names(res).get(element)
    val = getattr(res, attr) if attr is not None else msgspec.UNSET
    if type(val) is list:
        for i in val:
            if _has_system(i, system):
                return True
        return False
    if val is msgspec.UNSET:
        return False
    names = _names(val)
    if "identifier" not in names or "system" in names:  # not a Reference
        return False
    ident = getattr(val, names["identifier"])
    return ident is not msgspec.UNSET and _has_system(ident, system)


def _names(obj: Any) -> dict[str, str]:
    """JSON name -> attribute of a generated Struct."""
    names: dict[str, str] = getattr(type(obj), "__json_names__")  # noqa: B009 - set on generated classes
    return names


def _has_system(ident: Any, system: str) -> bool:
    names = _names(ident)
    if "system" not in names or "value" not in names:  # not an Identifier
        return False
    s, v = getattr(ident, names["system"]), getattr(ident, names["value"])
    return bool(s == system and v is not msgspec.UNSET and v)
