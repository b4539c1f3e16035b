"""What the bench sends: its options and the ~1 KiB FHIR R4 ServiceRequest each message carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from psvn.core.errors import Code, PsvnError

PATIENTS = 500_000  # distinct patients the bench's messages are about (then they repeat)


@dataclass(frozen=True)
class Options:
    count: int = 2000
    concurrency: int = 8  # the README's figures; more in flight share more backbone writes (16: ~20% more msg/s)
    latency_samples: int = 100
    time_limit: float = 20.0  # seconds for each send phase; then wait for what was accepted
    delivery_timeout: float = 20.0
    local_seconds: float = 1.0  # per local figure; 0 skips them
    cleanup: bool = True  # acknowledge the bench's messages in the trust's inbox afterwards
    batch_size: int = 500  # messages per POST /v1/messages:batch in the batch run (the gateway's maximum)
    restart: bool = True  # restart the sender's gateway after the runs, timed to /readyz 200
    # after the clean-up: this many more through send_many, the recipient acknowledging each
    # round, each gateway's RSS read after every round (0 skips it; 100,000 judges the RSS target)
    memory_messages: int = 0
    restart_timeout: float = 60.0
    # the runs (latency, single send, batch, raw) this many times against the same devnet, each
    # target then read over all of them; the restart, the memory run and the local figures
    # come once, in the last
    runs: int = 1

    def check(self) -> None:
        for name, value, low in (("count", self.count, 1), ("concurrency", self.concurrency, 1),
                                 ("latency-samples", self.latency_samples, 0), ("batch-size", self.batch_size, 1),
                                 ("memory-messages", self.memory_messages, 0), ("runs", self.runs, 1)):
            if value < low:
                raise PsvnError(Code.BAD_REQUEST, f"--{name} must be at least {low}", field=f"--{name}",
                                rule="range")
        if self.time_limit <= 0 or self.delivery_timeout <= 0 or self.local_seconds < 0:
            raise PsvnError(Code.BAD_REQUEST, "time limits must be positive", field="--time-limit", rule="range")


def nhs_number(seq: int) -> str:
    """A valid NHS number in the 999 test range, a different patient for each ``seq`` (up to
    :data:`PATIENTS`). Each message is about its own patient, as referrals are: consent is read
    per patient, and concurrent decisions about one patient share a read, so a bench about one
    patient throughout would measure a cheaper path than real traffic takes."""
    base = 999_000_000 + 2 * (seq % PATIENTS)
    for nine in (base, base + 1):  # an even base's last digit is never 9, so +1 adds 2 to the sum:
        total = sum(w * int(ch) for w, ch in zip(range(10, 1, -1), str(nine), strict=True))  # if the base
        check = (11 - total % 11) % 11  # has no check digit (10), base + 1 has one
        if check != 10:
            return f"{nine}{check}"
    raise AssertionError("unreachable: base + 1 always has a check digit")


def subject_of(payload: dict[str, Any]) -> str:
    """The consent subject a :func:`service_request` is about (``nhs:<its patient>``)."""
    return f"nhs:{payload['subject']['identifier']['value']}"


def service_request(seq: int, run: str = "bench") -> dict[str, Any]:
    """A realistic council -> trust referral (FHIR R4 ServiceRequest, UK Core profile), ~1 KiB as
    compact JSON; ``seq`` makes each one distinct, as real traffic is, and about its own patient
    (:func:`nhs_number`)."""
    patient = nhs_number(seq)
    return {
        "resourceType": "ServiceRequest",
        "id": f"asc-referral-{seq:06d}",
        "meta": {"profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-ServiceRequest"]},
        "identifier": [{"system": "https://www.brighton-hove.gov.uk/Id/asc-referral",
                        "value": f"ASC-{run}-{seq:06d}"}],
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "306206005",
                                  "display": "Referral to service"}]}],
        "priority": "urgent",
        "code": {"text": "Falls and mobility assessment"},
        "subject": {"reference": f"Patient/{patient}",
                    "identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": patient},
                    "display": "John SMITH"},
        "authoredOn": "2024-05-13T10:15:00+01:00",
        "requester": {"type": "Organization", "display": "Brighton and Hove City Council - Adult Social Care"},
        "performer": [{"type": "Organization",
                       "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RYR"},
                       "display": "University Hospitals Sussex NHS Foundation Trust"}],
        "reasonCode": [{"text": "Two falls at home in the last month"}],
        "note": [{"text": "Lives alone, first-floor flat. Carers twice daily."}],
    }


def payload_size(payload: dict[str, Any]) -> int:
    return len(msgspec.json.encode(payload))
