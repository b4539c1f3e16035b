"""Regenerate disagreements.toml: every vendored case where psvn's verdict differs from the
reference's, with a reason classified from the reference's errors and the case's options.

    .venv/bin/python tests/policies/fhir_test_cases/list_disagreements.py
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from tests.policies.test_fhir_test_cases import CASES, HERE, psvn_valid  # noqa: E402

#: Reference options psvn accepts but gives no effect (fhir_modes.REFERENCE_OPTIONS maps them to
#: nothing); every other option runs as a psvn validator mode, so its case is judged on its merits.
INERT = ("best-practice", "allowed-extension-domain", "allowed-extension-domains", "assumeValidRestReferences",
         "r5-bundle-relative-reference-policy")
DEFINITIONS = ("could not be found so is not allowed", "is not allowed to be used at this point", "Sub-extension",
               "must not be used as an extension", "matching slice is required", "magic LOINC", "Snapshot")
TERMINOLOGY = ("Wrong Display Name", "Unknown code", "ECL", "not valid in the system", "value set", "ValueSet",
               "CodeSystem", "UCUM")


def classify(c: dict[str, Any], found: list[str]) -> tuple[str, str]:
    e = " ".join(c["errors"])
    first = c["errors"][0][:160] if c["errors"] else ""
    inert = sorted(k for k in c["options"] if k in INERT)
    if inert and not any(k in e for k in DEFINITIONS + TERMINOLOGY):
        return "option", "a validator option psvn accepts without effect (" + ", ".join(inert) + ")"
    if any(k in e for k in DEFINITIONS):
        return "definitions", f"needs extension or profile StructureDefinitions psvn does not load: {first}"
    if c["module"] in ("tx", "tx-advanced") or any(k in e for k in TERMINOLOGY):
        return "terminology", f"needs a terminology server or code system semantics psvn does not have: {first}"
    if "Constraint failed" in e:
        return "invariant", f"FHIRPath invariant not evaluated, or evaluated differently: {first}"
    if not c["valid"]:
        return "rule", f"a rule of the reference validator beyond the base definitions and invariants: {first}"
    return "rule", "psvn rejects: " + (found[0][:200] if found else "")


def main() -> None:
    rows = []
    for c in CASES:
        ok, found = psvn_valid(c)
        if ok != c["valid"]:
            rows.append((c["name"], *classify(c, found)))
    out = ["# Cases of the vendored FHIR validator test suite where psvn's verdict differs from the Java",
           "# reference validator's, each with its reason (test_fhir_test_cases.py fails on an unlisted",
           "# disagreement and on a listed case that has started to agree). Regenerate with",
           "# list_disagreements.py.",
           "# reason: terminology | definitions (extension/profile StructureDefinitions not loaded) |",
           "#         invariant (FHIRPath invariant not implemented) | rule (a reference-validator rule beyond",
           "#         the definitions, not implemented) | option (a validator option psvn accepts without",
           "#         effect) | uk-core", ""]
    for name, reason, why in rows:
        out += [f'[case."{name}"]', f'reason = "{reason}"', "why = " + json.dumps(why, ensure_ascii=False), ""]
    (HERE / "disagreements.toml").write_text("\n".join(out))
    print(f"{len(CASES) - len(rows)}/{len(CASES)} agree;", dict(collections.Counter(r for _, r, _ in rows)))


if __name__ == "__main__":
    main()
