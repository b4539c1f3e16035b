"""Generate ``r4-codesystems.json``: the codes of the code systems the FHIR R4 core defines completely.

Why: the reference validator checks a Coding's code against its code system whenever it knows
that code system, whatever the binding's strength (even an example binding, or none). For the
code systems published *in* the R4 core specification (``http://hl7.org/fhir/...``, version
4.0.1, ``content = complete``) psvn knows every code without a terminology server, so it can
make the same check (``policies/validators/fhir_terminology.py``). The HL7 terminology
(``http://terminology.hl7.org/...``) code systems are left out on purpose: the reference reads
their current THO versions, which have codes R4's copies lack.

Regenerate with the definitions (see README.md beside this file)::

    python -m psvn.policies.fhir.build_codesystems /tmp/package/dist/fhir/r4
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "r4-codesystems.json"
CORE = "http://hl7.org/fhir/"


def _codes(concepts: list[dict[str, Any]], out: list[str]) -> list[str]:
    for c in concepts:
        out.append(str(c["code"]))
        _codes(c.get("concept", []), out)
    return out


def build(src: Path) -> dict[str, list[str]]:
    """url -> sorted codes, for every complete 4.0.1 code system of the core specification."""
    out: dict[str, list[str]] = {}
    for name in ("valuesets.json", "v3-codesystems.json"):
        for entry in json.loads((src / name).read_text())["entry"]:
            r = entry["resource"]
            if r.get("resourceType") != "CodeSystem" or not str(r.get("url", "")).startswith(CORE):
                continue
            if r.get("content") != "complete" or r.get("version") != "4.0.1" or r.get("caseSensitive") is False:
                continue
            codes = _codes(r.get("concept", []), [])
            if codes:
                out[r["url"]] = sorted(set(codes))
    return dict(sorted(out.items()))


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else Path("/tmp/package/dist/fhir/r4")
    systems = build(src)
    OUT.write_text(json.dumps({"version": "4.0.1", "codesystems": systems}, separators=(",", ":")) + "\n")
    print(f"{OUT}: {len(systems)} code systems, {sum(map(len, systems.values()))} codes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
