"""One helper for the validator's rule tests: the walk's verdict, held to both fast paths."""

from __future__ import annotations

import json
from typing import Any

from psvn.policies.validators.fhir import FhirValidator


def held_verdict(v: FhirValidator, data: dict[str, Any]) -> list[tuple[str, str]]:
    """The walk's (path, rule) pairs, after checking that the fast path (parsed payload) and the
    typed path (bytes) say the same: a fast path may defer, never disagree."""
    v.fast = False
    slow = v.check(data)
    v.fast = True
    assert v.check(data) == slow
    typed = v.check_bytes(json.dumps(data).encode())
    assert typed is None or slow == ([], typed)
    return [(x.path, x.rule) for x in slow[0]]
