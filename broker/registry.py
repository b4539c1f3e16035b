"""The registry of members, kept in a JetStream KV bucket.

The broker writes it (only the broker's NATS user may); every gateway reads and watches it, so a
new member, a rotated key or a revocation reaches every gateway within moments.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker.kvwatch import SharedFollower
from broker.subjects import REGISTRY_BUCKET
from psvn.addresses import token
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


async def put_member(kv: KeyValue, member: Member) -> int:
    return await kv.put(key_for(member.address), msgspec.json.encode(member))


async def upsert_member(kv: KeyValue, member: Member) -> int:
    """Put a member's entry; if one exists, keep its retired keys (and retire a signing key being
    replaced) and its join date, so re-provisioning never forgets a rotation (stored mail signed
    with a former key must still verify)."""
    try:
        entry = await kv.get(key_for(member.address))
        old = msgspec.json.decode(entry.value or b"", type=Member)
    except (KeyNotFoundError, msgspec.DecodeError):
        return await put_member(kv, member)
    retired = old.retired_sign_keys
    if old.sign_key != member.sign_key:
        retired = (*retired, RetiredKey(key=old.sign_key, retired_at=now_rfc3339(datetime.now(UTC) + ROTATION_GRACE)))
    merged = msgspec.structs.replace(member, retired_sign_keys=retired,
                                     joined=old.joined or member.joined)
    if merged == old:
        return entry.revision or 0
    return await kv.update(key_for(member.address), msgspec.json.encode(merged), last=entry.revision)


async def rotate_member_keys(kv: KeyValue, org: str, *, sign_key: bytes, hpke_key: bytes, hpke_suite: str,
                             now: datetime | None = None, grace: timedelta = ROTATION_GRACE) -> Member:
    """Make new keys a member's current ones; its old signing key retires after ``grace``.

    Compare-and-set on the entry, so a concurrent revocation is not overwritten.
    """
    try:
        entry = await kv.get(key_for(org))
    except KeyNotFoundError:
        raise PsvnError(Code.UNKNOWN_RECIPIENT, f"{org!r} is not in the registry", field="org",
                        rule="registry-member") from None
    member = msgspec.json.decode(entry.value or b"", type=Member)
    if member.sign_key == sign_key and member.hpke_key == hpke_key:
        return member  # already rotated (a retry)
    retired_at = now_rfc3339((now or datetime.now(UTC)) + grace)
    retired = (*member.retired_sign_keys, RetiredKey(key=member.sign_key, retired_at=retired_at))
    if member.sign_key == sign_key:
        retired = member.retired_sign_keys
    rotated = msgspec.structs.replace(member, sign_key=sign_key, hpke_key=hpke_key, hpke_suite=hpke_suite,
                                      retired_sign_keys=retired)
    try:
        await kv.update(key_for(org), msgspec.json.encode(rotated), last=entry.revision)
    except KeyWrongLastSequenceError:
        raise PsvnError(Code.CONFLICT, f"{org}'s registry entry changed during the rotation; run it again",
                        field="org", rule="registry-changed") from None
    return rotated


class RegistryView:
    """A gateway's live, read-only copy of the registry (KV watch -> dict)."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.listeners: list[Callable[[], None]] = []  # called after each change (e.g. re-check refusals)
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

    def apply(self, key: str, value: bytes | None, revision: int = 0) -> None:
        if not key.startswith("org."):
            return
        if not value:
            for org, m in list(self.members.items()):
                if key_for(org) == key:
                    del self.members[m.address]
            return
        try:
            member = msgspec.json.decode(value, type=Member)
        except msgspec.DecodeError as exc:
            log.error("registry entry ignored: malformed", key=key, error=str(exc))
            return
        self.members[member.address] = member
        for listener in self.listeners:
            listener()

    async def start(self, js: JetStreamContext, *, timeout: float = 10.0) -> None:
        await self._follower.follow(js, REGISTRY_BUCKET, self.apply, timeout=timeout)

    async def stop(self) -> None:
        await self._follower.stop()
