"""Validations per second for the common payloads, for ``psvn bench`` and the README.

Each case validates the same realistic 0.7-2 KiB payload through :class:`PayloadValidator`
(the gateway's code path: size and complexity pre-check, parse, standard's rules) on one core,
after a warm-up so the compiled validator is cached, in ``rounds`` rounds of ``seconds /
rounds`` each. Two figures per case, both the best round's:

* ``validations_per_s``: wall clock (``time.perf_counter``), what the core delivered;
* ``cpu_validations_per_s``: process CPU time (``time.process_time``), what one core does per
  second of its own time. On a shared, busy machine the wall clock counts the time other
  processes held the core; CPU time does not, so this is the figure to judge a target by
  there (caches and frequency still feel the neighbours: compare within one run).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from psvn.policies import bundle
from psvn.policies.catalogue import Catalogue
from psvn.policies.validation import PayloadValidator

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

CASES: list[tuple[str, str, str] | tuple[str, str, str, str]] = [
    ("fhir.r4.Patient", "fhir.r4.Patient", "patient.json"),
    ("fhir.r4.ServiceRequest", "fhir.r4.ServiceRequest", "referral.json"),
    ("hl7v2.ADT_A01", "hl7v2.ADT_A01", "adt_a01.hl7"),
    ("cloudevents.air-quality", "cloudevents.air-quality.reading", "air-quality.json"),
]
# The same FHIR resources as FHIR XML (read into the JSON form, then the same rules): opt-in
# with ``xml=True`` so the default rows stay the four the README and ``psvn bench`` show.
XML_CASES: list[tuple[str, str, str, str]] = [
    ("fhir.r4.Patient (XML)", "fhir.r4.Patient", "patient.xml", "application/fhir+xml"),
    ("fhir.r4.ServiceRequest (XML)", "fhir.r4.ServiceRequest", "referral.xml", "application/fhir+xml"),
]


def bench_validation(*, seconds: float = 1.0, policy_dir: Path | str | None = None,
                     xml: bool = False, rounds: int = 5) -> list[dict[str, Any]]:
    """``[{"case", "type", "bytes", "validations_per_s", "cpu_validations_per_s", "rounds",
    "valid"}]``, one per payload kind (``xml=True`` adds the FHIR XML rows, which also carry
    ``content_type``); the rates are the best of ``rounds`` rounds (wall clock, CPU time)."""
    doc = bundle.load_dir(policy_dir or bundle.DEFAULT_DIR)
    validator = PayloadValidator(Catalogue.from_document(doc), doc.get("schemas", {}))
    rounds = max(1, rounds)
    results: list[dict[str, Any]] = []
    for case, type_, filename, *media in [*CASES, *(XML_CASES if xml else [])]:
        content_type = media[0] if media else None
        body = (EXAMPLES / filename).read_bytes()
        violations = validator.validate(type_, body, content_type=content_type)  # warm-up: compile and cache
        wall = cpu = 0.0
        for _ in range(rounds):
            n, w, c = _round(validator, type_, body, content_type, seconds / rounds)
            wall = max(wall, n / w)
            if c > 0:
                cpu = max(cpu, n / c)
        row = {"case": case, "type": type_, "bytes": len(body), "validations_per_s": round(wall),
               "cpu_validations_per_s": round(cpu or wall), "rounds": rounds, "valid": not violations}
        if content_type:
            row["content_type"] = content_type
        results.append(row)
    return results


def _round(validator: PayloadValidator, type_: str, body: bytes, content_type: str | None,
           seconds: float) -> tuple[int, float, float]:
    """(validations, wall seconds, process CPU seconds) of one round of about ``seconds``."""
    validate = validator.validate
    n = 0
    start, cpu0 = time.perf_counter(), time.process_time()
    deadline = start + seconds
    now = start
    while now < deadline:
        for _ in range(50):
            validate(type_, body, content_type=content_type)
        n += 50
        now = time.perf_counter()
    return n, now - start, time.process_time() - cpu0


if __name__ == "__main__":
    for row in bench_validation(xml=True):
        print(f"{row['case']:<30} {row['bytes']:>5} B  {row['validations_per_s']:>8,} validations/s  "
              f"CPU {row['cpu_validations_per_s']:>8,}/s per core (best of {row['rounds']})")
