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

import re
import sys
import threading
import types
from typing import Any

import msgspec

from .common import NHS_NUMBER_SYSTEM, ODS_SYSTEMS, nhs_number_problem, nhs_subject, ods_code_problem
from .fhir_definitions import BASE64, ElementDef, NodeDef, R4Definitions
from .fhir_extensions import typed_extensions_ok
from .fhir_rules import (
    ABSOLUTE_ELEMENTS,
    URI_SYSTEM,
    absolute,
    extension_url_absolute,
    narrative_has_content,
    uri_extra,
)
from .fhir_terminology import coding_ok
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


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")  # as fhir_rules._ABSOLUTE


class _ResourceType(msgspec.Struct):
    resourceType: str | None = None


_PEEK = msgspec.json.Decoder(_ResourceType)


class _Fallback(ValueError):
    """Raised in a ``__post_init__``: let the full walk decide."""


def _fail() -> None:
    raise _Fallback


def _subject(value: str) -> None:
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
                                   "Meta": msgspec.Meta, "_fail": _fail, "_subject": _subject,
                                   "_nhs_problem": nhs_number_problem, "_ods_problem": ods_code_problem,
                                   "_NHS": NHS_NUMBER_SYSTEM, "_ODS": ODS_SYSTEMS, "_View": _View,
                                   "_to_builtins": msgspec.to_builtins, "_cc_codings": _cc_codings,
                                   "_in_vs": _in_vs, "_ext_url_ok": extension_url_absolute,
                                   "_URI_SYSTEM": URI_SYSTEM, "_absolute": absolute, "_coding_ok": coding_ok,
                                   "_exts_ok": typed_extensions_ok, "_defs": defs,
                                   "_UCUM": UCUM, "_ucum_ok": ucum_valid})
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

    def decode(self, rt: str, body: bytes) -> tuple[Any, frozenset[str]] | None:
        """(the decoded resource, its data subjects) for a valid ``rt`` payload; ``None``: the
        full walk must decide."""
        dec = self._decoders.get(rt)
        if dec is None:
            with self._lock:
                dec = self._decoders.get(rt)
                if dec is None:
                    dec = self._decoders[rt] = msgspec.json.Decoder(self._struct(rt))
        if b"\\u000" in body:  # an escaped control character: a string may hold \f or \v (FHIR forbids)
            return None
        subjects: set[str] = set()
        _local.subjects = subjects
        try:
            res = dec.decode(body)
        except Exception:  # any failure here, even a bug, only means: let the reporting walk decide
            return None
        finally:
            _local.subjects = None
        if res.resourceType != rt:
            return None
        return res, frozenset(subjects)


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
        is_resource = node.kind == "resource"
        if is_resource:
            fields.append("    resourceType: str")
        for i, (key, (child, tcode, _fast)) in enumerate(node.lookup.items()):
            attr = f"f{i}"
            typ = self._type(child, tcode, attr, deps, post)
            if child.fhir_path in ABSOLUTE_ELEMENTS and (child.max != 1 or tcode not in ("uri", "url", "canonical")):
                post.append(f"        if self.{attr} is not UNSET and not _absolute(self.{attr}):\n            _fail()")
            if typ is None:
                continue  # not carried by this path (a resource): its presence fails the decode
            json_names[key] = attr
            required = child.min > 0 and not child.choice
            if required:
                fields.append(f"    {attr}: {typ} = msgspec.field(name={key!r})")
            else:
                fields.append(f"    {attr}: {typ} | UnsetType = msgspec.field(default=UNSET, name={key!r})")
            if key != "id":
                content.append(attr)
                has_required_content = has_required_content or required
            if child.choice:
                groups.setdefault(child.name, []).append(attr)
            if tcode in ("Coding", "CodeableConcept") and child.valueset in defs.valuesets:
                self.ns[f"{name}_{attr}_vs"] = defs.valuesets[child.valueset]
                post.append(self._coded(attr, tcode, child.max, f"{name}_{attr}_vs"))
        for gname, attrs in groups.items():
            count = " + ".join(f"(self.{a} is not UNSET)" for a in attrs)
            req = any(c.name == gname and c.min > 0 for c, _k in node.required)
            cond = "n > 1" + (" or n == 0" if req else "")
            post.append(f"        n = {count}\n        if {cond}:\n            _fail()")
        if not is_resource and not has_required_content:
            if content:
                cond = " and ".join(f"self.{a} is UNSET" for a in content)
                post.append(f"        if {cond}:\n            _fail()")  # ele-1: no content (or an id only)
            else:
                post.append("        _fail()")
        if node.path == "Extension":
            values = groups.get("value[x]", [])
            ext = json_names.get("extension")
            if values and ext:
                anyv = " or ".join(f"self.{a} is not UNSET" for a in values)
                post.append(f"        if (self.{ext} is not UNSET) == ({anyv}):\n            _fail()")
        if node.path == "Extension" and "url" in json_names:
            post.append(f"        if not _ext_url_ok(self.{json_names['url']}):\n            _fail()")
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
            post.append(f"        if self.{s} == _URI_SYSTEM:\n            _fail()")
            post.append(f"        s = self.{s}\n        if s == _NHS:\n            v = self.{v}\n"
                        "            if _nhs_problem(v) is not None:\n                _fail()\n"
                        "            _subject(v)\n"
                        f"        elif s in _ODS and _ods_problem(self.{v}) is not None:\n            _fail()")
        if node.path == "Coding":  # its code in its code system (fhir_terminology)
            s, c, v = json_names["system"], json_names["code"], json_names["version"]
            post.append(f"        if not _coding_ok(self.{s}, self.{c}, None if self.{v} is UNSET else self.{v}):\n"
                        "            _fail()")
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
        # the format is checked in __post_init__ (cheaper than a pattern per value: a printable
        # token without a space is a valid uri or code without running the regex)
        fn = f"_fmt_{tcode}"
        if fn not in self.ns:
            match = regex.fullmatch
            if tcode in ("canonical", "uri", "url"):
                extra = uri_extra(tcode)
                self.ns[fn] = lambda v: v[0] != "#" and ((v.isprintable() and " " not in v)
                                                         or match(v) is not None) and extra(v)
            elif tcode == "code":
                self.ns[fn] = lambda v: (v.isprintable() and " " not in v) or match(v) is not None
            else:
                self.ns[fn] = lambda v: match(v) is not None
        if child.max == 1 and tcode in ("canonical", "uri", "url", "code"):
            self.ns[f"_rx_{tcode}"] = regex.fullmatch
            hash_ok = "v[0] != '#' and " if tcode != "code" else ""
            more = ""
            if tcode != "code":
                self.ns[f"_ux_{tcode}"] = uri_extra(tcode)
                more = f" and _ux_{tcode}(v)" if tcode == "canonical" else f" and (v[:4] != 'urn:' or _ux_{tcode}(v))"
            if child.fhir_path in ABSOLUTE_ELEMENTS:
                self.ns["_scheme"] = _SCHEME.match
                more += " and _scheme(v) is not None"
            post.append(f"        v = self.{attr}\n"
                        f"        if v is not UNSET and not ({hash_ok}((v.isprintable() and ' ' not in v) "
                        f"or _rx_{tcode}(v) is not None){more}):\n            _fail()")
        elif child.max == 1:
            post.append(f"        if self.{attr} is not UNSET and not {fn}(self.{attr}):\n            _fail()")
        else:
            post.append(f"        if self.{attr} is not UNSET and not all(map({fn}, self.{attr})):\n"
                        "            _fail()")
        return "Annotated[str, Meta(min_length=1)]"

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
