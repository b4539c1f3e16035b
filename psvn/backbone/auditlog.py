"""The audit streams' record format, for the writers (gateways) and the readers (console, tests).

A stream message holds one or more audit records, each one compact JSON object, separated by
newlines (JSON Lines): a gateway writes its records in batches, one acknowledged stream write
per batch instead of one per record. A message with a single record is the same format.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec


def join(records: Iterable[bytes]) -> bytes:
    """One stream message from encoded records (compact JSON never contains a newline)."""
    return b"\n".join(records)


def records(data: bytes | None) -> list[dict[str, Any]]:
    """The audit records of one stream message; a line that is not a JSON object is skipped
    (a member's stream holds what that member wrote, and must not stop a reader)."""
    out: list[dict[str, Any]] = []
    for line in (data or b"").split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = msgspec.json.decode(line)
        except msgspec.DecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out
