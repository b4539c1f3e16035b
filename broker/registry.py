"""The registry of members, kept in a JetStream KV bucket.

The broker writes it (only the broker's NATS user may); every gateway reads and watches it, so a
new member, a rotated key or a revocation reaches every gateway within moments.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from psvn.addresses import token
from psvn.broker.kvwatch import SharedFollower, StoredEntry, read_history
from psvn.broker.subjects import REGISTRY_BUCKET
from psvn.envelope import now_rfc3339, parse_time
from psvn.errors import Code, PsvnError

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
    hpke_suite: str = "x25519-hkdf-sha256-aes128gcm"
    gateway_url: str = ""
    status: Status = "active"
    joined: str = ""
    retired_sign_keys: tuple[RetiredKey, ...] = ()

    def verifying_keys(self, published: datetime | None) -> list[bytes]:
        """Keys that may have signed a message the backbone stamped at ``published``: the current
        key, then retired keys still current then (none without a backbone timestamp)."""
        keys = [self.sign_key]
        if published is not None:
            keys += [r.key for r in self.retired_sign_keys if r.covers(published)]
        return keys


def key_for(org: str) -> str:
    return f"org.{token(org)}"


async def ensure_bucket(js: JetStreamContext, *, replicas: int = 1) -> KeyValue:
    try:
        return await js.key_value(REGISTRY_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(bucket=REGISTRY_BUCKET, history=5, replicas=replicas,
                                                        storage=StorageType.FILE, direct=True))


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
    try:
        authority.verify(signed.signature, SIGNATURE_DOMAIN + signed.entry)
    except InvalidSignature:
        raise EntryRefused("signature does not verify against the registry authority key") from None
    try:
        entry = _entry_decoder.decode(signed.entry)
    except msgspec.DecodeError as exc:  # signed but unreadable: a writer bug, still refused
        raise EntryRefused(f"signed entry undecodable ({exc})") from None
    if entry.key != kv_key:
        raise EntryRefused(f"signed for key {entry.key!r}, stored under {kv_key!r}")
    if entry.member is not None and key_for(entry.member.address) != kv_key:
        raise EntryRefused(f"entry names {entry.member.address!r}, stored under {kv_key!r}")
    return entry


class Stored(msgspec.Struct, kw_only=True, frozen=True):
    """A verified entry as a writer found it: what to merge with and what to compare-and-set on."""

    entry: RegistryEntry
    revision: int  # of the key's current stored value, verified or not (what to compare-and-set on)
    intact: bool = True  # False: the current value was refused and ``entry`` came from history


async def read_entry(kv: KeyValue, authority: Ed25519PublicKey, org: str) -> Stored | None:
    """The newest verified entry for ``org``, with the revision to compare-and-set on; None if the
    key was never written. If the current value does not verify (blanked, forged), the newest
    verified one still in the key's history is returned with the current revision, so a writer
    repairs the key from the last good state instead of starting from nothing."""
    k = key_for(org)
    try:
        current = await kv.get(k)
    except (KeyNotFoundError, KeyDeletedError):
        current = None  # never written, or its newest value is a delete or purge marker
    if current is not None:
        try:
            return Stored(entry=verify_entry(authority, k, current.value), revision=current.revision or 0)
        except EntryRefused as exc:
            log.error("registry value refused", bucket=REGISTRY_BUCKET, key=k, reason=exc.reason)
    history = await read_history(kv._js, REGISTRY_BUCKET, k)  # the bucket's own JetStream context
    last_rev = history[-1].revision if history else 0
    best = newest_verified(authority, k, history)
    if best is None:
        if not history:
            return None
        return Stored(entry=RegistryEntry(key=k, serial=0, signed_at=""), revision=last_rev, intact=False)
    return Stored(entry=best[0], revision=last_rev, intact=False)


def newest_verified(authority: Ed25519PublicKey, kv_key: str,
                    history: list[StoredEntry]) -> tuple[RegistryEntry, bytes] | None:
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


def _next_serial(previous: Stored | None) -> int:
    """Time in nanoseconds, but always past the previous entry's serial (a clock stepped back)."""
    return max(time.time_ns(), (previous.entry.serial if previous else 0) + 1)


async def _write(kv: KeyValue, signer: Ed25519PrivateKey, org: str, member: Member | None,
                 previous: Stored | None) -> int:
    """Sign and store, compare-and-set on what the writer read (a rival's write is not lost)."""
    k = key_for(org)
    value = sign_entry(signer, k, member, serial=_next_serial(previous))
    if previous is None:
        return await kv.create(k, value)
    return await kv.update(k, value, last=previous.revision)


async def get_member(kv: KeyValue, authority: Ed25519PublicKey, org: str) -> Member:
    """The member's verified entry; UNKNOWN_RECIPIENT if absent or removed."""
    stored = await read_entry(kv, authority, org)
    if stored is None or stored.entry.member is None:
        raise PsvnError(Code.UNKNOWN_RECIPIENT, f"{org!r} is not in the registry", field="org",
                        rule="registry-member")
    return stored.entry.member


async def put_member(kv: KeyValue, member: Member, signer: Ed25519PrivateKey) -> int:
    """Write a member's entry as given (signed), whatever was there."""
    previous = await read_entry(kv, signer.public_key(), member.address)
    return await _write(kv, signer, member.address, member, previous)


async def remove_member(kv: KeyValue, org: str, signer: Ed25519PrivateKey) -> int:
    """A signed tombstone: every gateway forgets the member (a KV delete or purge would not)."""
    previous = await read_entry(kv, signer.public_key(), org)
    if previous is None or previous.entry.member is None:
        raise PsvnError(Code.UNKNOWN_RECIPIENT, f"{org!r} is not in the registry", field="org",
                        rule="registry-member")
    return await _write(kv, signer, org, None, previous)


async def upsert_member(kv: KeyValue, member: Member, signer: Ed25519PrivateKey) -> int:
    """Put a member's entry; if one exists, keep its retired keys (and retire a signing key being
    replaced) and its join date, so re-provisioning never forgets a rotation (stored mail signed
    with a former key must still verify). A current value that does not verify is repaired from
    the newest verified one in the key's history."""
    previous = await read_entry(kv, signer.public_key(), member.address)
    old = previous.entry.member if previous else None
    if old is None:
        return await _write(kv, signer, member.address, member, previous)
    retired = old.retired_sign_keys
    if old.sign_key != member.sign_key:
        retired = (*retired, RetiredKey(key=old.sign_key, retired_at=now_rfc3339(datetime.now(UTC) + ROTATION_GRACE)))
    merged = msgspec.structs.replace(member, retired_sign_keys=retired,
                                     joined=old.joined or member.joined)
    assert previous is not None
    if merged == old and previous.intact:
        return previous.revision  # unchanged, and what is stored verifies
    return await _write(kv, signer, member.address, merged, previous)


async def rotate_member_keys(kv: KeyValue, org: str, *, signer: Ed25519PrivateKey, sign_key: bytes, hpke_key: bytes,
                             hpke_suite: str, now: datetime | None = None,
                             grace: timedelta = ROTATION_GRACE) -> Member:
    """Make new keys a member's current ones; its old signing key retires after ``grace``.

    Compare-and-set on the entry, so a concurrent revocation is not overwritten.
    """
    previous = await read_entry(kv, signer.public_key(), org)
    if previous is None or previous.entry.member is None:
        raise PsvnError(Code.UNKNOWN_RECIPIENT, f"{org!r} is not in the registry", field="org",
                        rule="registry-member")
    member = previous.entry.member
    if member.sign_key == sign_key and member.hpke_key == hpke_key:
        return member  # already rotated (a retry)
    retired_at = now_rfc3339((now or datetime.now(UTC)) + grace)
    retired = (*member.retired_sign_keys, RetiredKey(key=member.sign_key, retired_at=retired_at))
    if member.sign_key == sign_key:
        retired = member.retired_sign_keys
    rotated = msgspec.structs.replace(member, sign_key=sign_key, hpke_key=hpke_key, hpke_suite=hpke_suite,
                                      retired_sign_keys=retired)
    try:
        await _write(kv, signer, org, rotated, previous)
    except KeyWrongLastSequenceError:
        raise PsvnError(Code.CONFLICT, f"{org}'s registry entry changed during the rotation; run it again",
                        field="org", rule="registry-changed") from None
    return rotated


async def set_status(kv: KeyValue, org: str, status: Status, signer: Ed25519PrivateKey) -> Member:
    """Suspend, revoke or reinstate: a signed write like any other (compare-and-set)."""
    previous = await read_entry(kv, signer.public_key(), org)
    if previous is None or previous.entry.member is None:
        raise PsvnError(Code.UNKNOWN_RECIPIENT, f"{org!r} is not in the registry", field="org",
                        rule="registry-member")
    updated = msgspec.structs.replace(previous.entry.member, status=status)
    await _write(kv, signer, org, updated, previous)
    return updated


async def recover_member(kv: KeyValue, org: str, authority: Ed25519PublicKey) -> RegistryEntry:
    """Put back the newest verified entry still in the key's history, exactly as it was signed.

    Needs no signing key (the bytes carry their own signature): a gateway holding that entry
    already sees the same serial and changes nothing; one that restarted meanwhile gets it back.
    Raises NOT_FOUND if history holds no verified entry (then re-provision the member)."""
    k = key_for(org)
    history = await read_history(kv._js, REGISTRY_BUCKET, k)
    best = newest_verified(authority, k, history)
    if best is None:
        raise PsvnError(Code.NOT_FOUND, f"no verified entry for {org!r} is left in the registry's history "
                        f"({len(history)} kept): provision the member again", field="org", rule="registry-history")
    await kv.put(k, best[1])
    return best[0]


Refused = Callable[[str, str, str], None]  # (bucket, key, reason): e.g. a gateway's metric


class RegistryView:
    """A gateway's live, read-only copy of the registry (change notifications -> dict).

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
        self._follower = SharedFollower()

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

    async def start(self, js: JetStreamContext, *, timeout: float = 10.0) -> None:
        await self._follower.follow(js, REGISTRY_BUCKET, self.apply, timeout=timeout)

    async def stop(self) -> None:
        await self._follower.stop()
