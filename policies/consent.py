"""Citizens' opt-outs and withdrawn consent, as a pure data structure the engine consults.

A personal data store (a ``pds`` member) holds a citizen's preferences and sends a
``psvn.consent-change`` message whenever they change. Each change carries the citizen's *whole*
current set of opted-out purposes (not a delta) and a sequence number that the store increases
for every change it issues about that subject. So applying changes is idempotent and
order-insensitive: a duplicate or a late, older change (same or lower ``seq``) is ignored, and the
registry converges to the newest state whatever order the network delivers changes in. A change
with no opt-outs restores consent but is kept (as a tombstone with its ``seq``) so that an older
withdrawal arriving late cannot resurrect itself.

No I/O here: before each decision the gateway reads the records of exactly the subjects it names
from the network-wide KV (see gateway/consent.py) and passes them to
``Engine.decide(req, consent=registry)``. A record that cannot be trusted is held as refused
(:meth:`ConsentRegistry.refuse`): an opt-out of everything, never "no opt-out".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import jsonschema_rs
import msgspec

from psvn.core.errors import Code, PsvnError, Violation

TYPE = "psvn.consent-change"
ALL_PURPOSES = "*"

_SUBJECT = r"^[a-z]+:[A-Za-z0-9-]{1,64}$"  # the envelope's subject reference format
_PURPOSE = r"^(\*|[a-z][a-z0-9-]{1,63})$"

# The payload of a psvn.consent-change message (JSON Schema 2020-12). Kept here as the one source;
# the catalogue's schemas/consent-change.json is this document.
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:psvn:schema:consent-change:1",
    "title": "Consent change: a citizen's current opt-outs, sent by their personal data store",
    "description": (
        "The citizen's whole current set of opted-out purposes (not a delta). 'seq' increases with "
        "every change the store issues about the subject; a change with a seq not above the one "
        "recorded is ignored. An empty opt_outs restores consent for every purpose. '*' opts out "
        "of every purpose the policy lets an opt-out cover."),
    "type": "object",
    "required": ["subject", "seq", "opt_outs", "effective"],
    "additionalProperties": False,
    "properties": {
        "subject": {"type": "string", "pattern": _SUBJECT,
                    "description": "Who the preferences are about, e.g. nhs:9434765919"},
        "seq": {"type": "integer", "minimum": 1, "maximum": 9007199254740991,
                "description": "Per-subject sequence number; a millisecond timestamp works"},
        "opt_outs": {"type": "array", "maxItems": 64, "uniqueItems": True,
                     "items": {"type": "string", "pattern": _PURPOSE},
                     "description": "Purposes the citizen has opted out of or withdrawn consent for"},
        "effective": {"type": "string", "format": "date-time",
                      "description": "When the citizen made the change (RFC 3339)"},
        "note": {"type": "string", "maxLength": 500,
                 "description": "Free text for the audit trail; never shown to recipients"},
    },
}

_validator = jsonschema_rs.validator_for(SCHEMA, validate_formats=True)
_SUBJECT_RX = re.compile(_SUBJECT)


def mask_subject(subject: str) -> str:
    """``nhs:9434765919`` -> ``nhs:******5919``: enough for a person who knows the number to
    recognise it in a refusal, an audit or a receipt, not enough to narrow it down (six hidden
    digits, and the check digit shown is one of the four). Reasons that get stored or sent on
    name subjects only this way."""
    scheme, sep, ident = subject.rpartition(":")
    masked = f"******{ident[-4:]}" if len(ident) >= 10 else "***"
    return f"{scheme}{sep}{masked}"


class ConsentChange(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One consent-change payload, plus the issuer the gateway took from the verified envelope."""

    subject: str
    seq: int
    opt_outs: list[str]
    effective: str
    note: str = ""
    issuer: str = ""  # the sending pds member (from the envelope, never from the payload)

    @classmethod
    def from_payload(cls, data: bytes, *, issuer: str = "") -> ConsentChange:
        """Parse and validate a payload; a PsvnError names every violation."""
        try:
            raw = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise PsvnError(Code.INVALID_PAYLOAD, f"{TYPE}: {exc}", rule="json-syntax",
                            violations=[Violation(path="", rule="json-syntax", message=str(exc))]
                            ) from exc
        errors = [Violation(path="".join(f"/{p}" for p in err.instance_path),
                            rule=f"schema-{err.kind.name}", message=err.message)
                  for err in _validator.iter_errors(raw)]
        if errors:
            raise PsvnError(Code.INVALID_PAYLOAD,
                            f"{TYPE}: {len(errors)} violation(s), first: {errors[0].path} "
                            f"{errors[0].message}", field=errors[0].path, rule=errors[0].rule,
                            violations=errors)
        return msgspec.convert({**raw, "issuer": issuer}, cls)

    def to_payload(self) -> bytes:
        body: dict[str, Any] = {"subject": self.subject, "seq": self.seq,
                                "opt_outs": list(self.opt_outs), "effective": self.effective}
        if self.note:
            body["note"] = self.note
        return msgspec.json.encode(body)


class ConsentRecord(msgspec.Struct, kw_only=True, frozen=True):
    """A subject's current preferences: what the engine names when an opt-out blocks sharing."""

    subject: str
    opt_outs: frozenset[str]
    seq: int
    effective: str = ""
    issuer: str = ""
    # set when the subject's stored record could not be read or verified (empty, undecryptable,
    # unsigned, badly signed): the record then stands for an opt-out of everything (fail closed),
    # so that a blanked or forged value can never act as "no opt-out"
    refused: str = ""

    def covers(self, purpose: str) -> bool:
        return purpose in self.opt_outs or ALL_PURPOSES in self.opt_outs


class ConsentRegistry:
    """Latest preferences per subject; last writer (highest ``seq``) wins."""

    def __init__(self, records: Iterable[ConsentRecord] = ()) -> None:
        self._records: dict[str, ConsentRecord] = {}
        for r in records:
            current = self._records.get(r.subject)
            if current is None or r.seq > current.seq:
                self._records[r.subject] = r

    def apply(self, change: ConsentChange) -> bool:
        """Record a change; False (and nothing changes) if it is not newer than what is held."""
        if not _SUBJECT_RX.fullmatch(change.subject):
            raise PsvnError(Code.INVALID_PAYLOAD, f"subject: {change.subject!r} is not a subject "
                            "reference (e.g. nhs:9434765919)", field="/subject", rule="subject-format")
        if change.seq < 1:
            raise PsvnError(Code.INVALID_PAYLOAD, f"seq: must be 1 or more, not {change.seq}",
                            field="/seq", rule="seq-range")
        current = self._records.get(change.subject)
        if current is not None and change.seq <= current.seq:
            return False
        self._records[change.subject] = ConsentRecord(
            subject=change.subject, opt_outs=frozenset(change.opt_outs), seq=change.seq,
            effective=change.effective, issuer=change.issuer)
        return True

    def refuse(self, subject: str, reason: str) -> None:
        """The subject's record exists but cannot be trusted: hold it as an opt-out of every
        purpose (what an override rule still lets through, e.g. safeguarding, still goes)."""
        self._records[subject] = ConsentRecord(subject=subject, opt_outs=frozenset({ALL_PURPOSES}), seq=0,
                                               refused=reason)

    def blocks(self, subject: str, purpose: str) -> ConsentRecord | None:
        """The record if the subject has opted out of ``purpose``; else None."""
        record = self._records.get(subject)
        if record is not None and record.covers(purpose):
            return record
        return None

    def get(self, subject: str) -> ConsentRecord | None:
        return self._records.get(subject)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[ConsentRecord]:
        return iter(list(self._records.values()))

    def snapshot(self) -> bytes:
        """Every record (tombstones included), for a cache file or a KV bootstrap."""
        return msgspec.json.encode(sorted(self._records.values(), key=lambda r: r.subject),
                                 order="deterministic")

    @classmethod
    def from_snapshot(cls, data: bytes) -> ConsentRegistry:
        return cls(msgspec.json.decode(data, type=list[ConsentRecord]))
