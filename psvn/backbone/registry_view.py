"""The registry as a gateway follows it: a :class:`~psvn.protocol.members.MemberTable` kept
current by one KV watch on the registry bucket."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.js import JetStreamContext

from psvn.backbone.kvwatch import SharedFollower
from psvn.protocol.members import MemberTable, Refused
from psvn.protocol.subjects import REGISTRY_BUCKET


class RegistryView(MemberTable):
    """A gateway's live, read-only copy of the registry (change notifications -> dict)."""

    def __init__(self, authority: Ed25519PublicKey, *, on_refused: Refused | None = None) -> None:
        super().__init__(authority, on_refused=on_refused)
        self._follower = SharedFollower()

    async def start(self, js: JetStreamContext, *, timeout: float = 10.0) -> None:
        await self._follower.follow(js, REGISTRY_BUCKET, self.apply, timeout=timeout)

    async def stop(self) -> None:
        await self._follower.stop()
