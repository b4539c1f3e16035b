"""The policy set a gateway enforces, hot-reloaded from the backbone.

A new signed version is verified (authority signature, version strictly increasing), compiled,
and swapped in as one immutable snapshot: requests in flight finish on the snapshot they began
with, so a reload never drops or half-applies anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.js import JetStreamContext

from broker.kvwatch import SharedFollower
from broker.subjects import POLICY_BUCKET, POLICY_KEY
from policies import bundle
from policies.catalogue import Catalogue
from policies.engine import Engine
from policies.validation import PayloadValidator
from psvn.errors import Code, PsvnError

log = structlog.get_logger("psvn.gateway.policy")


@dataclass(frozen=True)
class PolicySnapshot:
    version: int
    document: dict[str, Any]
    engine: Engine
    catalogue: Catalogue
    validator: PayloadValidator

    @classmethod
    def compile(cls, doc: dict[str, Any]) -> PolicySnapshot:
        catalogue = Catalogue.from_document(doc)
        validator = PayloadValidator(catalogue, doc.get("schemas", {}))
        validator.warm()  # a policy version is compiled whole before it is enforced
        return cls(version=int(doc["version"]), document=doc, engine=Engine.from_document(doc),
                   catalogue=catalogue, validator=validator)


class PolicyHolder:
    def __init__(self, authority: Ed25519PublicKey, *, on_change: Callable[[int], None] | None = None) -> None:
        self.authority = authority
        self.snapshot: PolicySnapshot | None = None
        self.ready = asyncio.Event()
        self.rejected: list[tuple[int, str]] = []  # (version, reason) of refused updates
        self._on_change = on_change
        self.floor = 0
        self._follower = SharedFollower()

    @property
    def version(self) -> int:
        return self.snapshot.version if self.snapshot else 0

    def install(self, signed: bundle.SignedPolicySet) -> PolicySnapshot:
        """Verify and swap in; raise PsvnError (and keep the old set) if refused."""
        # after a restart, ``floor`` (the highest version this gateway ever enforced) keeps an
        # older signed version served by the backbone from rolling the network's rules back
        doc = bundle.verify(signed, self.authority, current_version=max(self.version, self.floor - 1))
        snap = PolicySnapshot.compile(doc)
        self.snapshot = snap
        self.ready.set()
        if self._on_change:
            self._on_change(snap.version)
        log.info("policy set installed", policy_version=snap.version)
        return snap

    def _offer(self, data: bytes) -> None:
        try:
            signed = bundle.decode(data)
        except Exception as exc:
            self.rejected.append((-1, f"undecodable policy bundle: {exc}"))
            log.error("policy update refused", reason="undecodable")
            return
        if signed.version == self.version and self.snapshot is not None:
            return
        try:
            self.install(signed)
        except PsvnError as exc:
            self.rejected.append((signed.version, exc.detail))
            log.error("policy update refused", offered_version=signed.version, enforced_version=self.version,
                      code=exc.code.value, reason=exc.detail)

    def _apply(self, key: str, value: bytes | None, revision: int = 0) -> None:
        if value:
            self._offer(value)

    async def start(self, js: JetStreamContext, *, timeout: float = 10.0) -> None:
        """Follow the policy key; return once a verified policy set is installed."""
        try:
            await self._follower.follow(js, POLICY_BUCKET, self._apply, key=POLICY_KEY, ready=self.ready,
                                        timeout=timeout)
        except TimeoutError:
            await self._follower.stop()
            refused = "; ".join(f"v{v}: {why}" for v, why in self.rejected) or "none published"
            raise PsvnError(Code.POLICY_VERSION_REGRESSION if self.rejected else Code.BACKBONE_UNAVAILABLE,
                            f"no acceptable policy set to enforce (floor v{self.floor}); refused: {refused}",
                            rule="policy-ready") from None

    async def stop(self) -> None:
        await self._follower.stop()
