"""Consent, network-wide: a citizen's opt-outs reach every gateway within moments.

A personal data store (``pds`` member) sends a ``psvn.consent-change`` message to the network
operator's gateway. That gateway, having opened, verified, validated and policy-checked it like
any message, records it in the ``psvn_consent`` KV bucket, signed with its own key; every gateway
watches the bucket, verifies the operator's signature against the registry, and feeds the change
to its :class:`~policies.consent.ConsentRegistry`, which the engine consults at egress and ingress.
Changes carry a per-subject sequence, so order and duplicates do not matter.

Known limit: the bucket's entries name the subject (e.g. an NHS number) and the purposes opted
out of, so the backbone operator can read them; payloads of messages stay sealed.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import datetime

import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.js import JetStreamContext

from broker.kvwatch import SharedFollower
from broker.registry import RegistryView
from broker.subjects import CONSENT_BUCKET
from certs.pki import ed25519_public
from gateway import seal
from policies.consent import ConsentChange, ConsentRegistry
from psvn.errors import Code, PsvnError

log = structlog.get_logger("psvn.gateway.consent")
OPERATOR_TYPE = "operator"
MAX_PENDING = 10_000  # refused records kept to be offered again (bounded: forged ones never pass)


class SignedConsent(msgspec.Struct, kw_only=True, frozen=True):
    payload: bytes  # the consent-change payload as the pds sent it
    issuer: str  # the pds member that sent it (from the verified envelope)
    message_id: str
    recorded_by: str  # the operator gateway's organisation
    signature: bytes


def _signed_bytes(payload: bytes, issuer: str, message_id: str, recorded_by: str) -> bytes:
    return b"psvn-consent-v1\x00" + msgspec.msgpack.encode([payload, issuer, message_id, recorded_by])


def key_for(subject: str) -> str:
    return "c." + hashlib.sha256(subject.encode()).hexdigest()


def sign_record(change_payload: bytes, *, issuer: str, message_id: str, operator: str,
                key: Ed25519PrivateKey) -> SignedConsent:
    sig = key.sign(_signed_bytes(change_payload, issuer, message_id, operator))
    return SignedConsent(payload=change_payload, issuer=issuer, message_id=message_id, recorded_by=operator,
                         signature=sig)


def verify_record(rec: SignedConsent, registry: RegistryView, *, recorded: datetime | None = None) -> ConsentChange:
    """Only the operator may record consent, and only as sent by a pds member.

    The issuer need not be active *now*: the operator signs a record only after its gateway
    received the change from an active pds (ingress refuses any other), so the signature is the
    proof that it was valid when recorded. Requiring an active issuer here would make a
    restarted gateway drop every opt-out of a store suspended or revoked since (fail-open, and
    gateways that did not restart would disagree with it). A citizen's opt-out outlives the
    store that carried it; a newer change from their new store replaces it by ``seq``.

    ``recorded`` is the backbone's timestamp of the record: a record signed with the operator's
    since-retired key still verifies if it was written before that key retired (a key rotation
    must not wipe the network's opt-outs)."""
    op = registry.lookup(rec.recorded_by, field="recorded_by")
    if op.type != OPERATOR_TYPE:
        raise PsvnError(Code.FORBIDDEN, f"{rec.recorded_by} is not the network operator", rule="consent-recorder")
    issuer = registry.lookup(rec.issuer, field="issuer", require_active=False)
    if issuer.type != "pds":
        raise PsvnError(Code.FORBIDDEN, f"{rec.issuer} is not a personal data store", rule="consent-issuer")
    signed = _signed_bytes(rec.payload, rec.issuer, rec.message_id, rec.recorded_by)
    if not seal.verify_any(rec.signature, signed, [ed25519_public(k) for k in op.verifying_keys(recorded)]):
        raise PsvnError(Code.SIGNATURE_INVALID, "consent record signature does not verify",
                        rule="consent-signature", message_id=rec.message_id)
    return ConsentChange.from_payload(rec.payload, issuer=rec.issuer)


class ConsentView:
    """A gateway's live copy of the network's consent records."""

    def __init__(self, registry: RegistryView) -> None:
        self.members = registry
        self.consent = ConsentRegistry()
        self.refused: list[tuple[str, str]] = []
        # records refused for a signature or an unknown recorder: the registry may be a moment
        # behind (the operator's key rotation); offered again whenever the registry changes
        self._pending: dict[str, tuple[bytes, datetime | None]] = {}
        registry.listeners.append(self._retry_pending)
        self._follower = SharedFollower()
        self._record_lock = asyncio.Lock()
        self._js: JetStreamContext | None = None

    def offer(self, key: str, value: bytes, *, recorded: datetime | None = None) -> bool:
        try:
            rec = msgspec.msgpack.decode(value, type=SignedConsent)
            change = verify_record(rec, self.members, recorded=recorded)
        except (msgspec.DecodeError, PsvnError) as exc:
            reason = exc.detail if isinstance(exc, PsvnError) else str(exc)
            self.refused = [*(r for r in self.refused if r[0] != key), (key, reason)]
            if isinstance(exc, PsvnError) and exc.code in (Code.SIGNATURE_INVALID, Code.UNKNOWN_RECIPIENT) \
                    and len(self._pending) < MAX_PENDING:
                self._pending[key] = (value, recorded)
            log.error("consent record refused", key=key, reason=reason)
            return False
        self._pending.pop(key, None)
        self.refused = [(k, r) for k, r in self.refused if k != key]
        return self.consent.apply(change)

    def _retry_pending(self) -> None:
        for key, (value, recorded) in list(self._pending.items()):
            self._pending.pop(key, None)
            self.offer(key, value, recorded=recorded)

    def _apply(self, key: str, value: bytes | None, revision: int = 0) -> None:
        if value:
            self.offer(key, value, recorded=self._follower.entry_time)

    async def start(self, js: JetStreamContext, *, timeout: float = 10.0) -> None:
        self._js = js
        await self._follower.follow(js, CONSENT_BUCKET, self._apply, timeout=timeout)

    async def record(self, change_payload: bytes, *, issuer: str, message_id: str, operator: str,
                     key: Ed25519PrivateKey) -> bool:
        """Operator only: make a verified consent change take effect network-wide."""
        change = ConsentChange.from_payload(change_payload, issuer=issuer)
        rec = sign_record(change_payload, issuer=issuer, message_id=message_id, operator=operator, key=key)
        async with self._record_lock:  # changes of one batch are handled concurrently: keep seq order
            known = self.consent.get(change.subject)
            if known is not None and known.seq >= change.seq:
                return False  # a duplicate or an older change: the newer one stays
            assert self._js is not None
            kv = await self._js.key_value(CONSENT_BUCKET)
            await kv.put(key_for(change.subject), msgspec.msgpack.encode(rec))
            self.consent.apply(change)  # only once the network has it: a failed put is retried
        return True

    async def stop(self) -> None:
        await self._follower.stop()
