"""The member registry's records and their verification: what the broker signs and every gateway checks.

Pure data and checks, no I/O: the broker writes entries (:mod:`psvn.broker.registry`), gateways
read them through :mod:`psvn.backbone.registry_view`, and both agree on these bytes.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from psvn.core.addresses import token
from psvn.core.errors import Code, PsvnError
from psvn.protocol.envelope import now_rfc3339, parse_time
from psvn.protocol.seal import DEFAULT_SUITE, strong_signing_key, verify_any
from psvn.protocol.subjects import REGISTRY_BUCKET

log = structlog.get_logger("psvn.registry")

Status = Literal["active", "suspended", "revoked"]
ROTATION_GRACE = timedelta(minutes=10)  # the old key signs what is in flight while gateways switch


class RetiredKey(msgspec.Struct, kw_only=True, frozen=True):
    """A member's former signing key: it verifies only what the backbone stamped before ``retired_at``.

    Every retired key is kept (rotations are rare; 32 bytes each): records that never expire, such
    as the operator's consent records, must verify after any number of rotations, and a retired
    key can verify nothing new."""

    key: bytes  # raw Ed25519 public key
    retired_at: str  # RFC 3339

    def covers(self, published: datetime) -> bool:
        return published <= parse_time(self.retired_at)


class Member(msgspec.Struct, kw_only=True, frozen=True):
    address: str
    name: str
    type: str
    sign_key: bytes  # raw Ed25519 public key
    hpke_key: bytes  # raw X25519 public key
    cert_fingerprint: str
    hpke_suite: str = DEFAULT_SUITE
    gateway_url: str = ""
    status: Status = "active"
    joined: str = ""
    retired_sign_keys: tuple[RetiredKey, ...] = ()
    # the newest seal wire version its gateway opens (psvn.protocol.seal): senders seal to it in
    # that form, so a network upgrades one gateway at a time. An entry signed before version 2
    # says nothing: 1, HPKE over each message, which every gateway opens
    wire: int = 1

    def verifying_keys(self, published: datetime | None) -> list[bytes]:
        """Keys that may have signed a message the backbone stamped at ``published``: the current
        key, then retired keys still current then (none without a backbone timestamp)."""
        keys = [self.sign_key]
        if published is not None:
            keys += [r.key for r in self.retired_sign_keys if r.covers(published)]
        return keys


def key_for(org: str) -> str:
    return f"org.{token(org)}"


# -- signed entries -------------------------------------------------------------------------------
# Nothing on the backbone is trusted because of where it lies: whoever can write the bucket (the
# backbone operator, a stolen broker credential, a mistaken purge) must not be able to add, change
# or remove a member. Every value is signed by the network operator's registry authority key and
# every reader verifies it against the trust anchor in its own configuration.

SIGNATURE_DOMAIN = b"psvn registry entry v1\x00"  # these signatures can never pass for another kind


class RegistryEntry(msgspec.Struct, kw_only=True, frozen=True):
    """What the registry authority signs for one KV key.

    ``key`` binds the entry to the KV key it was written for, so a genuine entry cannot be replayed
    under another member's key; ``serial`` increases with every write to the key (independent of
    the stream's revision, which a re-put resets), so an older genuine entry cannot be replayed
    over a newer one; ``member`` is None for a tombstone: the only way a member leaves."""

    key: str
    serial: int
    signed_at: str  # RFC 3339, for people reading the history
    member: Member | None = None

    @property
    def tombstone(self) -> bool:
        return self.member is None


class SignedEntry(msgspec.Struct, kw_only=True, frozen=True):
    """The stored value: the entry's exact signed bytes and the signature over them.

    The signed bytes are kept as they were signed (not re-encoded to verify), so a reader that
    knows fewer fields than the writer still verifies what was signed."""

    entry: bytes  # JSON of a RegistryEntry
    signature: bytes  # Ed25519 by the registry authority over SIGNATURE_DOMAIN + entry


class EntryRefused(Exception):
    """A registry value that must not be applied; ``reason`` says why, in words for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_signed_decoder = msgspec.json.Decoder(SignedEntry)
_entry_decoder = msgspec.json.Decoder(RegistryEntry)


def sign_entry(key: Ed25519PrivateKey, kv_key: str, member: Member | None, *, serial: int,
               now: datetime | None = None) -> bytes:
    """The value to store under ``kv_key``: ``member`` (or a tombstone when None), signed."""
    if member is not None and key_for(member.address) != kv_key:
        raise ValueError(f"entry for {member.address!r} cannot be signed for key {kv_key!r}")
    if member is not None and (weak := weak_signing_key(member)):
        raise PsvnError(Code.BAD_REQUEST, f"{member.address!r} is not admitted: {weak}", field="sign_key",
                        rule="ed25519-key")
    body = msgspec.json.encode(RegistryEntry(key=kv_key, serial=serial, signed_at=now_rfc3339(now or datetime.now(UTC)),
                                             member=member))
    return msgspec.json.encode(SignedEntry(entry=body, signature=key.sign(SIGNATURE_DOMAIN + body)))


def verify_entry(authority: Ed25519PublicKey, kv_key: str, value: bytes | None) -> RegistryEntry:
    """The verified entry stored under ``kv_key``, or :class:`EntryRefused` saying why not.

    An empty value and a KV delete or purge marker are refused like a forgery: they are not
    signed, so they say nothing about the member (only a signed tombstone removes one)."""
    if value is None:
        raise EntryRefused("a KV delete or purge marker (not a signed tombstone)")
    if not value:
        raise EntryRefused("an empty value")
    try:
        signed = _signed_decoder.decode(value)
    except msgspec.DecodeError as exc:
        raise EntryRefused(f"not a signed registry entry ({exc})") from None
    if not verify_any(signed.signature, SIGNATURE_DOMAIN + signed.entry, (authority,)):  # libsodium's check
        raise EntryRefused("signature does not verify against the registry authority key")
    try:
        entry = _entry_decoder.decode(signed.entry)
    except msgspec.DecodeError as exc:  # signed but unreadable: a writer bug, still refused
        raise EntryRefused(f"signed entry undecodable ({exc})") from None
    if entry.key != kv_key:
        raise EntryRefused(f"signed for key {entry.key!r}, stored under {kv_key!r}")
    if entry.member is not None and key_for(entry.member.address) != kv_key:
        raise EntryRefused(f"entry names {entry.member.address!r}, stored under {kv_key!r}")
    if entry.member is not None and (weak := weak_signing_key(entry.member)):
        raise EntryRefused(weak)  # signed, but no signature could be bound to the member
    return entry


def weak_signing_key(member: Member) -> str | None:
    """Why ``member``'s signing keys (current or retired) cannot bind a signature, or None."""
    if not strong_signing_key(member.sign_key):
        return "its sign_key is not a valid Ed25519 key of the large prime-order subgroup"
    if any(not strong_signing_key(r.key) for r in member.retired_sign_keys):
        return "a retired_sign_keys key is not a valid Ed25519 key of the large prime-order subgroup"
    return None


class HistoryValue(Protocol):
    """One stored value of a key's history, as the backbone reads it."""

    @property
    def value(self) -> bytes | None: ...


def newest_verified(authority: Ed25519PublicKey, kv_key: str,
                    history: Sequence[HistoryValue]) -> tuple[RegistryEntry, bytes] | None:
    """The verified entry with the highest serial among ``history``, with its bytes as signed
    (what a recovery restores)."""
    best: tuple[RegistryEntry, bytes] | None = None
    for stored in history:
        try:
            entry = verify_entry(authority, kv_key, stored.value)
        except EntryRefused:
            continue
        if stored.value is not None and (best is None or entry.serial > best[0].serial):
            best = (entry, stored.value)
    return best


Refused = Callable[[str, str, str], None]  # (bucket, key, reason): e.g. a gateway's metric


class MemberTable:
    """A gateway's read-only copy of the registry, fed one stored value at a time (:meth:`apply`).

    Every value is verified against the registry authority key before it is applied. A value that
    does not verify (empty, a delete or purge marker, unsigned, signed by another key, signed for
    another key, older than what is held) is refused loudly: logged as an error, passed to
    ``on_refused`` (the gateway counts it), and recorded in ``refused`` (its readiness reports it),
    and the previous good entry stays in force. Only a signed tombstone removes a member: taking
    an empty value for a deletion is how one blanked entry once made every gateway answer
    ``unknown-recipient`` for a member while reporting itself healthy."""

    def __init__(self, authority: Ed25519PublicKey, *, on_refused: Refused | None = None) -> None:
        self.authority = authority
        self.members: dict[str, Member] = {}
        self.serials: dict[str, int] = {}  # KV key -> serial of the entry in force (tombstones too)
        self.refused: dict[str, str] = {}  # KV key -> why its current value was refused (cleared by a good one)
        self.listeners: list[Callable[[], None]] = []  # called after each change (e.g. re-check refusals)
        self._on_refused = on_refused
        self._applied: dict[str, bytes] = {}  # KV key -> the signed entry bytes in force

    def lookup(self, org: str, *, field: str = "to", message_id: str | None = None,
               require_active: bool = True) -> Member:
        member = self.members.get(org)
        if member is None:
            raise PsvnError(Code.UNKNOWN_RECIPIENT, f"{field}: {org!r} is not a member of the network",
                            field=field, rule="registry-member", message_id=message_id)
        if require_active and member.status != "active":
            raise PsvnError(Code.MEMBER_REVOKED, f"{field}: {org!r} is {member.status}",
                            field=field, rule="registry-status", message_id=message_id)
        return member

    def _refuse(self, key: str, reason: str, revision: int) -> None:
        self.refused[key] = reason
        log.error("registry value refused: the previous entry stays in force", bucket=REGISTRY_BUCKET, key=key,
                  revision=revision, reason=reason, holding="entry" if key in self.serials else "nothing")
        if self._on_refused is not None:
            self._on_refused(REGISTRY_BUCKET, key, reason)

    def apply(self, key: str, value: bytes | None, revision: int = 0) -> None:
        """Verify one stored value and apply it, or refuse it (see the class docstring)."""
        if not key.startswith("org."):
            self._refuse(key, "not a member key", revision)  # only the registry writes here: loud
            return
        try:
            entry = verify_entry(self.authority, key, value)
        except EntryRefused as exc:
            self._refuse(key, exc.reason, revision)
            return
        held = self.serials.get(key)
        if held is not None and entry.serial <= held:
            assert value is not None
            if entry.serial == held and hmac.compare_digest(value, self._applied.get(key, b"")):
                self.refused.pop(key, None)  # the entry in force, put back (a recovery): nothing changes
                return
            self._refuse(key, f"serial {entry.serial} is not newer than the entry in force ({held}): "
                         "an older entry replayed", revision)
            return
        assert value is not None
        self.serials[key], self._applied[key] = entry.serial, value
        self.refused.pop(key, None)
        for org in [org for org in self.members if key_for(org) == key]:
            del self.members[org]
        if entry.member is not None:
            self.members[entry.member.address] = entry.member
        else:
            log.info("member removed by a signed tombstone", key=key, serial=entry.serial)
        for listener in self.listeners:
            listener()
