"""FHIR R4 XML written from the FHIR JSON form: a test tool, not part of the gateway.

Why it lives with the tests: nothing in psvn writes FHIR XML (a gateway delivers the bytes it
was sent), but the tests and the corpus script (``corpus/make_xml_corpus.py``) keep one JSON
source per case and derive its XML twin, and a round trip (JSON -> XML -> JSON) checks the
reader (:mod:`psvn.policies.validators.fhir_xml`) against a writer that shares none of its code
beyond the definition order of elements. Its own escaping, for the same reason.
"""

from __future__ import annotations

import json
from typing import Any

from psvn.policies.validators.fhir_definitions import NodeDef, R4Definitions, definitions
from psvn.policies.validators.fhir_xml import FHIR_NS, FhirXmlReader, reader


def to_xml(resource: dict[str, Any], *, defs: R4Definitions | None = None, indent: str | None = "  ") -> str:
    """FHIR XML for a FHIR JSON resource, elements in definition order.

    Keys the definitions do not know are written as elements at the end (so a broken JSON
    resource gives the same broken XML resource).
    """
    d = defs or definitions()
    out: list[str] = ['<?xml version="1.0" encoding="UTF-8"?>\n'] if indent is not None else []
    _write_resource(d, resource, out, 0, indent, root=True)
    return "".join(out)


def _nl(out: list[str], level: int, indent: str | None) -> None:
    if indent is not None:
        out.append("\n" + indent * level)


def _write_resource(d: R4Definitions, res: dict[str, Any], out: list[str], level: int, indent: str | None,
                    *, root: bool = False) -> None:
    rt = str(res.get("resourceType"))
    node = d.nodes.get(rt)
    out.append(f"<{rt}" + (f' xmlns="{FHIR_NS}"' if root else "") + ">")
    if node is None:
        _write_unknown(res, out, level + 1, indent, skip=("resourceType",))
    else:
        _write_children(d, node, res, out, level + 1, indent)
    _nl(out, level, indent)
    out.append(f"</{rt}>")


def _write_children(d: R4Definitions, node: NodeDef, obj: dict[str, Any], out: list[str], level: int,
                    indent: str | None) -> None:
    order = (reader() if d is definitions() else FhirXmlReader(d)).order(node)
    attr_keys = () if node.kind == "resource" else ("id", "url") if node.path == "Extension" else ("id",)
    keys: list[str] = []
    for k in obj:
        base = k[1:] if k[:1] == "_" else k
        if k == "resourceType" or base in keys or base in attr_keys:
            continue
        keys.append(base)
    big = 1 << 30
    keys.sort(key=lambda k: order.get(k, big))
    for key in keys:
        ent = node.lookup.get(key)
        if ent is None:
            _write_unknown({key: obj.get(key, obj.get("_" + key))}, out, level, indent)
            continue
        child, tcode, _fast = ent
        val, ext = obj.get(key), obj.get("_" + key)
        if tcode in d.primitives and tcode != "xhtml":
            if child.max != 1 and (isinstance(val, list) or isinstance(ext, list)):
                vals = val if isinstance(val, list) else []
                exts = ext if isinstance(ext, list) else []
                for i in range(max(len(vals), len(exts))):
                    _write_primitive(d, key, vals[i] if i < len(vals) else None, exts[i] if i < len(exts) else None,
                                     out, level, indent)
            else:
                _write_primitive(d, key, val, ext, out, level, indent)
            continue
        for item in (val if isinstance(val, list) else [val]):
            _nl(out, level, indent)
            if tcode == "xhtml":
                out.append(str(item))
            elif tcode == "Resource" or d.is_resource(tcode):
                out.append(f"<{key}>")
                _nl(out, level + 1, indent)
                if isinstance(item, dict):
                    _write_resource(d, item, out, level + 1, indent)
                _nl(out, level, indent)
                out.append(f"</{key}>")
            elif isinstance(item, dict):
                sub = d.nodes[tcode[1:] if tcode[0] == "@" else tcode]
                attrs = "".join(f' {a}="{_escape_attr(str(item[a]))}"' for a in ("id", "url")
                                if a in item and (a == "id" or sub.path == "Extension"))
                inner: list[str] = []
                _write_children(d, sub, item, inner, level + 1, indent)
                if inner:
                    out.append(f"<{key}{attrs}>")
                    out.extend(inner)
                    _nl(out, level, indent)
                    out.append(f"</{key}>")
                else:
                    out.append(f"<{key}{attrs}/>")
            else:
                out.append(f'<{key} value="{_escape_attr(_lexical_of(item))}"/>')


def _write_primitive(d: R4Definitions, key: str, val: Any, ext: Any, out: list[str], level: int,
                     indent: str | None) -> None:
    _nl(out, level, indent)
    attrs = ""
    if isinstance(ext, dict) and "id" in ext:
        attrs += f' id="{_escape_attr(str(ext["id"]))}"'
    if val is not None:
        attrs += f' value="{_escape_attr(_lexical_of(val))}"'
    exts = ext.get("extension") if isinstance(ext, dict) else None
    if not isinstance(exts, list) or not exts:
        out.append(f"<{key}{attrs}/>")
        return
    out.append(f"<{key}{attrs}>")
    ext_node = d.nodes["Extension"]
    for e in exts:
        _nl(out, level + 1, indent)
        url = f' url="{_escape_attr(str(e.get("url")))}"' if isinstance(e, dict) and "url" in e else ""
        out.append(f"<extension{url}>")
        if isinstance(e, dict):
            _write_children(d, ext_node, e, out, level + 2, indent)
        _nl(out, level + 1, indent)
        out.append("</extension>")
    _nl(out, level, indent)
    out.append(f"</{key}>")


def _write_unknown(obj: dict[str, Any], out: list[str], level: int, indent: str | None,
                   skip: tuple[str, ...] = ()) -> None:
    for key, val in obj.items():
        if key in skip:
            continue
        for item in (val if isinstance(val, list) else [val]):
            _nl(out, level, indent)
            if isinstance(item, dict):
                out.append(f"<{key}>")
                _write_unknown(item, out, level + 1, indent)
                _nl(out, level, indent)
                out.append(f"</{key}>")
            else:
                out.append(f'<{key} value="{_escape_attr(_lexical_of(item))}"/>')


def _lexical_of(val: Any) -> str:
    if isinstance(val, bool):
        return "true" if val else "false"
    if isinstance(val, (int, float)):
        return json.dumps(val)
    return "" if val is None else str(val)


def _escape_attr(s: str) -> str:
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;"))
