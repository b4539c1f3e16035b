"""The policy set a gateway enforces, hot-reloaded from the backbone.

A new signed version is verified (authority signature, version strictly increasing), compiled,
and swapped in as one immutable snapshot: requests in flight finish on the snapshot they began
with, so a reload never drops or half-applies anything.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.js import JetStreamContext

from psvn.backbone.kvwatch import SharedFollower
from psvn.core.errors import Code, PsvnError
from psvn.policies import bundle
from psvn.policies.snapshot import PolicySnapshot
from psvn.protocol.subjects import POLICY_BUCKET, POLICY_KEY

log = structlog.get_logger("psvn.gateway.policy")


MAX_REJECTED = 64  # refusals remembered for the start-up error (a flood of forgeries stays bounded)


class PolicyHolder:
    """The policy set in force, replaced only by a newer version the policy authority signed.

    Anything else under the policy key (an empty value, a delete or purge marker, an undecodable
    or badly signed bundle, an older version) is refused loudly: logged as an error, passed to
    ``on_refused`` (the gateway counts it), recorded in ``refused`` for readiness, and the policy
    set in force stays in force."""

    def __init__(self, authority: Ed25519PublicKey, *, on_change: Callable[[int], None] | None = None,
                 on_refused: Callable[[str, str, str], None] | None = None) -> None:
        self.authority = authority
        self.snapshot: PolicySnapshot | None = None
        self.ready = asyncio.Event()
        self.rejected: list[tuple[int, str]] = []  # (version, reason) of refused updates, newest last
        self.refused: dict[str, str] = {}  # KV key -> why its current value is refused (cleared by a good one)
        self._on_change = on_change
        self._on_refused = on_refused
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
        self.refused.pop(POLICY_KEY, None)
        self.ready.set()
        if self._on_change:
            self._on_change(snap.version)
        log.info("policy set installed", policy_version=snap.version)
        return snap

    def _refuse(self, key: str, version: int, reason: str, revision: int, code: str = "") -> None:
        self.rejected = [*self.rejected[-(MAX_REJECTED - 1):], (version, reason)]
        self.refused[key] = reason
        log.error("policy update refused: the policy set in force stays in force", bucket=POLICY_BUCKET, key=key,
                  revision=revision, offered_version=version, enforced_version=self.version, code=code,
                  reason=reason)
        if self._on_refused is not None:
            self._on_refused(POLICY_BUCKET, key, reason)

    def _offer(self, key: str, data: bytes, revision: int = 0) -> None:
        try:
            signed = bundle.decode(data)
        except Exception as exc:
            self._refuse(key, -1, f"undecodable policy bundle: {exc}", revision)
            return
        if signed.version == self.version and self.snapshot is not None:
            # the version in force, put again (e.g. restored from history): quiet only if it is
            # byte for byte the document in force and carries the authority's signature
            same = hmac.compare_digest(signed.document, bundle.canonical(self.snapshot.document))
            try:
                self.authority.verify(signed.signature, signed.document)
            except InvalidSignature:
                same = False
            if same:
                self.refused.pop(key, None)
            else:
                self._refuse(key, signed.version, f"policy set version {signed.version}: not the signed document "
                             "in force under that version", revision, Code.POLICY_SIGNATURE_INVALID.value)
            return
        try:
            self.install(signed)
        except PsvnError as exc:
            self._refuse(key, signed.version, exc.detail, revision, exc.code.value)

    def _apply(self, key: str, value: bytes | None, revision: int = 0) -> None:
        if value is None:
            self._refuse(key, -1, "a KV delete or purge marker (a policy set is replaced only by a newer signed "
                         "version)", revision)
        elif not value:
            self._refuse(key, -1, "an empty value", revision)
        else:
            self._offer(key, value, revision)

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
