"""What the costly checks may spend on one payload, so that no payload within the gateway's body
limit holds the event loop for long.

Most of the validator's work is linear in the payload and cheap per element. A few checks are
not: the SNOMED CT ECL parser (superlinear in an expression's length), the FHIRPath parser of
ValueSet filter expressions (~0.7 ms of set-up each), the UCUM parser (an Earley parser, up to
~0.2 ms a character) and signature verification. They draw on one budget per payload, counted
in units of about 8 us of work (so the budget is ~130 ms); what comes past it is accepted
unjudged, as a text too long for a parser is. Real payloads are far inside it: a ValueSet of
~50 ECL expressions, a few hundred distinct UCUM units, a few signatures.

FHIRPath invariants evaluated by ``fhirpathpy`` (80-350 us each) are counted apart: at most
:data:`MAX_EVALUATIONS` a payload. They are checks no payload may skip, so a payload that needs
more is refused (rule ``fhir-work-limit``, naming the limit), never passed unjudged: a 623 KB
Questionnaire of 12,000 items and conditions took 26 s of one core before this bound.

The budget is per thread (the validator is shared by every request of a gateway); the validator
starts it once per payload and path (:func:`reset`).
"""

from __future__ import annotations

import threading

BUDGET = 16_384
MAX_EVALUATIONS = 2_000
_state = threading.local()


class WorkLimitExceeded(Exception):
    """A payload needs more FHIRPath invariant evaluations than :data:`MAX_EVALUATIONS`."""


def reset() -> None:
    """Start a payload's budget."""
    _state.left = BUDGET
    _state.evaluations = MAX_EVALUATIONS


def evaluation() -> None:
    """Count one FHIRPath evaluation; :class:`WorkLimitExceeded` past the payload's limit."""
    left = getattr(_state, "evaluations", MAX_EVALUATIONS)
    if left <= 0:
        raise WorkLimitExceeded
    _state.evaluations = left - 1


def spend(cost: int) -> bool:
    """Take ``cost`` units from this payload's budget; False (nothing taken) when it cannot pay:
    the caller then leaves that check unjudged."""
    left = getattr(_state, "left", BUDGET)
    if cost > left:
        return False
    _state.left = left - cost
    return True
