"""The registry of members, kept in a JetStream KV bucket.

The broker writes it (only the broker's NATS user may); every gateway reads and watches it, so a
new member, a rotated key or a revocation reaches every gateway within moments.
"""

from __future__ import annotations

from typing import Literal

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from broker.kvwatch import KVFollower
from broker.subjects import REGISTRY_BUCKET
from psvn.addresses import token
from psvn.errors import Code, PsvnError

log = structlog.get_logger("psvn.registry")

Status = Literal["active", "suspended", "revoked"]


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


class RegistryView:
    """A gateway's live, read-only copy of the registry (KV watch -> dict)."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self._follower = KVFollower()

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

    async def start(self, js: JetStreamContext, *, timeout: float = 10.0) -> None:
        await self._follower.follow(js, REGISTRY_BUCKET, self.apply, timeout=timeout)

    async def stop(self) -> None:
        await self._follower.stop()
