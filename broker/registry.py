"""The registry of members, kept in a JetStream KV bucket.

The broker writes it (only the broker's NATS user may); every gateway reads and watches it
(:mod:`psvn.backbone.registry_view`), so a new member, a rotated key or a revocation reaches every
gateway within moments. The records and their signatures are :mod:`psvn.protocol.members`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from psvn.backbone.kvwatch import read_history
from psvn.core.errors import Code, PsvnError
from psvn.protocol import seal
from psvn.protocol.envelope import now_rfc3339
from psvn.protocol.members import (
    ROTATION_GRACE,
    EntryRefused,
    Member,
    RegistryEntry,
    RetiredKey,
    Status,
    key_for,
    newest_verified,
    sign_entry,
    verify_entry,
)
from psvn.protocol.subjects import REGISTRY_BUCKET

log = structlog.get_logger("psvn.registry")


async def ensure_bucket(js: JetStreamContext, *, replicas: int = 1) -> KeyValue:
    try:
        return await js.key_value(REGISTRY_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(bucket=REGISTRY_BUCKET, history=5, replicas=replicas,
                                                        storage=StorageType.FILE, direct=True))


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
    return await _amend(kv, org, signer, status=status)


async def set_wire(kv: KeyValue, org: str, wire: int, signer: Ed25519PrivateKey) -> Member:
    """Say which seal wire version ``org``'s gateway opens (``Member.wire``): senders seal to it
    so. Raise it once the gateway runs code that opens the newer version; lower it before rolling
    the gateway back to code that does not."""
    if wire not in seal.WIRE_VERSIONS:
        raise PsvnError(Code.BAD_REQUEST, f"wire version {wire} is not one of {list(seal.WIRE_VERSIONS)}",
                        field="wire", rule="wire-version")
    return await _amend(kv, org, signer, wire=wire)


async def _amend(kv: KeyValue, org: str, signer: Ed25519PrivateKey, **changes: Any) -> Member:
    """Change fields of a member's entry and sign it again (compare-and-set: a concurrent write,
    a revocation say, is not overwritten)."""
    previous = await read_entry(kv, signer.public_key(), org)
    if previous is None or previous.entry.member is None:
        raise PsvnError(Code.UNKNOWN_RECIPIENT, f"{org!r} is not in the registry", field="org",
                        rule="registry-member")
    updated = msgspec.structs.replace(previous.entry.member, **changes)
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


