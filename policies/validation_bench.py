"""Validations per second for the common payloads, for ``psvn bench`` and the README.

Each case validates the same realistic 0.7-2 KiB payload through :class:`PayloadValidator`
(the gateway's code path: size and complexity pre-check, parse, standard's rules) for
``seconds`` on one core, after a warm-up so the compiled validator is cached.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from policies import bundle
from policies.catalogue import Catalogue
from policies.validation import PayloadValidator

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

CASES: list[tuple[str, str, str]] = [
    ("fhir.r4.Patient", "fhir.r4.Patient", "patient.json"),
    ("fhir.r4.ServiceRequest", "fhir.r4.ServiceRequest", "referral.json"),
    ("hl7v2.ADT_A01", "hl7v2.ADT_A01", "adt_a01.hl7"),
    ("cloudevents.air-quality", "cloudevents.air-quality.reading", "air-quality.json"),
]


def bench_validation(*, seconds: float = 1.0, policy_dir: Path | str | None = None) -> list[dict[str, Any]]:
    """``[{"case", "type", "bytes", "validations_per_s", "valid"}]``, one per payload kind."""
    doc = bundle.load_dir(policy_dir or bundle.DEFAULT_DIR)
    validator = PayloadValidator(Catalogue.from_document(doc), doc.get("schemas", {}))
    results: list[dict[str, Any]] = []
    for case, type_, filename in CASES:
        body = (EXAMPLES / filename).read_bytes()
        violations = validator.validate(type_, body)  # warm-up: compile and cache
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        now = start
        while now < deadline:
            for _ in range(50):
                validator.validate(type_, body)
            n += 50
            now = time.perf_counter()
        results.append({"case": case, "type": type_, "bytes": len(body),
                        "validations_per_s": round(n / (now - start)), "valid": not violations})
    return results


if __name__ == "__main__":
    for row in bench_validation():
        print(f"{row['case']:<26} {row['bytes']:>5} B  {row['validations_per_s']:>8,} validations/s")
