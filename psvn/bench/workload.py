"""What the bench sends: its options and the ~1 KiB FHIR R4 ServiceRequest each message carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from psvn.bench.report import (
    NHS_NUMBER,
)
from psvn.core.errors import Code, PsvnError


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

    def check(self) -> None:
        for name, value, low in (("count", self.count, 1), ("concurrency", self.concurrency, 1),
                                 ("latency-samples", self.latency_samples, 0), ("batch-size", self.batch_size, 1),
                                 ("memory-messages", self.memory_messages, 0)):
            if value < low:
                raise PsvnError(Code.BAD_REQUEST, f"--{name} must be at least {low}", field=f"--{name}",
                                rule="range")
        if self.time_limit <= 0 or self.delivery_timeout <= 0 or self.local_seconds < 0:
            raise PsvnError(Code.BAD_REQUEST, "time limits must be positive", field="--time-limit", rule="range")


def service_request(seq: int, run: str = "bench") -> dict[str, Any]:
    """A realistic council -> trust referral (FHIR R4 ServiceRequest, UK Core profile), ~1 KiB as
    compact JSON; ``seq`` makes each one distinct, as real traffic is."""
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
        "subject": {"reference": f"Patient/{NHS_NUMBER}",
                    "identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS_NUMBER},
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
