"""Consent, network-wide, looked up per decision: a member learns a citizen's consent state only
for the subjects of the messages it handles.

A personal data store (``pds`` member) sends a ``psvn.consent-change`` message to the network
operator's gateway. That gateway, having opened, verified, validated and policy-checked it like
any message, records it in the ``psvn_consent`` KV bucket as a :class:`SignedConsent` (signed with
its own key), sealed under a key derived from the subject:

- the KV key is ``p.<HKDF(subject, "kv-key")>``: a pseudonym, not the NHS number;
- the value is ChaCha20-Poly1305 under ``HKDF(subject, "record-key")`` (the KV key as associated
  data, the plaintext padded to 512-byte steps), so only someone who already knows the subject can
  find or read its record.

Gateways keep no copy of the bucket. Before each policy decision that names subjects (the
envelope's ``subject`` and the NHS numbers validation found in the payload) the gateway reads
exactly those keys by direct get, decrypts, verifies the operator's signature against the registry
(retired keys by the record's backbone timestamp, as before), and hands the decision a
:class:`~policies.consent.ConsentRegistry` holding only them. Nothing is cached, so a recorded
opt-out takes effect at the very next decision anywhere. A stored value that is empty (a blanked
value, a KV delete marker), does not decrypt, is unsigned or badly signed is refused loudly
(error log naming the key, ``psvn_backbone_values_refused_total{bucket="consent"}``) and held as an
opt-out of everything (fail closed: ``consent-record-unreadable``); it is never read as "no
opt-out". Consent is only ever withdrawn by a newer signed record (a change with no opt-outs is
the signed tombstone); the bucket keeps 5 revisions per key so a bad value can be recovered from.

Members may not list the bucket: the network exports them only the by-subject direct get of it
(no stream info, no change notifications, no by-sequence read). Because a by-subject direct get
with a wildcard subject returns the newest record of the whole bucket, every write is followed at
once by a cover record (``p.cover``, random bytes of a record's size), so that the newest record
is nearly always the cover.

Known limits (said plainly, see the README's "Consent" section):

- Any member can test whether a given NHS number has a record, and read it, at one backbone
  request per guess: every gateway must be able to look a subject up. Nothing limits the rate.
- The NHS number space is small (~10^9 valid numbers): whoever holds a KV key (the backbone,
  which stores them) can recover its number by trying every number (minutes of HMAC on one core)
  and then decrypt the record. The derivation hides subjects from casual reading, not from a
  determined backbone. The operator's own gateway sees every consent change in clear anyway: it
  is the one that records them.
- The backbone sees each lookup's key, and so which pseudonyms each member looks up and when.
- Sizes (padded to 512-byte steps) and times of records and lookups stay visible; so does how
  often consent changes (the cover's sequence).
- The cover is written right after, not atomically with, the record: a member polling the
  wildcard read at the instant between the two writes can see the newest record's pseudonym.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import msgspec
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from psvn.backbone.jsfast import JetStreamOps
from psvn.backbone.kvwatch import KV_OPERATION
from psvn.backbone.registry_view import RegistryView
from psvn.certs.keys import ed25519_public
from psvn.core.errors import Code, PsvnError
from psvn.core.tasks import together
from psvn.policies.consent import ConsentChange, ConsentRegistry
from psvn.protocol import seal
from psvn.protocol.subjects import CONSENT_BUCKET

log = structlog.get_logger("psvn.gateway.consent")
OPERATOR_TYPE = "operator"
STREAM = f"KV_{CONSENT_BUCKET}"
KEY_PREFIX = "p."
COVER_KEY = KEY_PREFIX + "cover"  # same token shape as a record's key: any wildcard read matches it
# The fixed, network-wide context of the subject-derived keys (the HKDF salt). Public by design:
# every gateway must derive the same key from the same subject.
CONTEXT = b"psvn consent v2 (UK public services network)"
VERSION = b"\x02"
NONCE_BYTES = 12
PAD_STEP = 512  # plaintexts are padded to a multiple of this: a note's length does not show
# Refusals a registry view a moment behind explains (the operator's key rotation, a new operator)
LAG_CODES = frozenset({Code.SIGNATURE_INVALID, Code.UNKNOWN_RECIPIENT})


class SignedConsent(msgspec.Struct, kw_only=True, frozen=True):
    payload: bytes  # the consent-change payload as the pds sent it
    issuer: str  # the pds member that sent it (from the verified envelope)
    message_id: str
    recorded_by: str  # the operator gateway's organisation
    signature: bytes


def _signed_bytes(payload: bytes, issuer: str, message_id: str, recorded_by: str) -> bytes:
    return b"psvn-consent-v1\x00" + msgspec.msgpack.encode([payload, issuer, message_id, recorded_by])


def normalise(subject: str) -> str:
    """One spelling per person, so every gateway derives the same key: the scheme in lower case,
    and an NHS number's digits only (``nhs:943 476 5919`` is ``nhs:9434765919``)."""
    scheme, _, ident = subject.strip().partition(":")
    scheme = scheme.lower()
    if scheme == "nhs":
        ident = "".join(ch for ch in ident if ch.isdigit())
    return f"{scheme}:{ident}"


def _derive(subject: str, label: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) of the normalised subject, salt :data:`CONTEXT`, one 32-byte block."""
    prk = hmac.digest(CONTEXT, normalise(subject).encode(), hashlib.sha256)
    return hmac.digest(prk, label + b"\x01", hashlib.sha256)


def key_for(subject: str) -> str:
    """The subject's KV key: a pseudonym that reading the bucket does not reverse (see the limits)."""
    return KEY_PREFIX + _derive(subject, b"psvn consent kv-key").hex()


def _aead(subject: str) -> ChaCha20Poly1305:
    return ChaCha20Poly1305(_derive(subject, b"psvn consent record-key"))


def _aad(key: str) -> bytes:
    return b"psvn-consent-v2\x00" + key.encode()


def _pad(plain: bytes) -> bytes:
    framed = struct.pack(">I", len(plain)) + plain
    return framed + b"\x00" * (-len(framed) % PAD_STEP)


def seal_record(subject: str, rec: SignedConsent) -> bytes:
    """The stored value of ``rec``: only someone who knows ``subject`` can open it."""
    nonce = os.urandom(NONCE_BYTES)
    return VERSION + nonce + _aead(subject).encrypt(nonce, _pad(msgspec.msgpack.encode(rec)), _aad(key_for(subject)))


def cover_value() -> bytes:
    """Random bytes the size of a sealed record (one pad step): indistinguishable by size or content."""
    return VERSION + os.urandom(NONCE_BYTES + PAD_STEP + 16)


def open_record(subject: str, value: bytes | None) -> SignedConsent:
    """Decrypt and decode a stored value; every failure a PsvnError naming its rule."""
    if not value:
        raise PsvnError(Code.SIGNATURE_INVALID, "the stored value is empty (blanked or deleted): "
                        "only a newer signed record may change consent", rule="consent-empty")
    if value[:1] != VERSION or len(value) < 1 + NONCE_BYTES + 16:
        raise PsvnError(Code.DECRYPT_FAILED, "the stored value is not a sealed consent record",
                        rule="consent-format")
    try:
        framed = _aead(subject).decrypt(value[1:1 + NONCE_BYTES], value[1 + NONCE_BYTES:], _aad(key_for(subject)))
    except InvalidTag:
        raise PsvnError(Code.DECRYPT_FAILED, "the stored value does not decrypt under the subject's key",
                        rule="consent-decrypt") from None
    (size,) = struct.unpack(">I", framed[:4])
    try:
        return msgspec.msgpack.decode(framed[4:4 + size], type=SignedConsent)
    except msgspec.DecodeError as exc:
        raise PsvnError(Code.SIGNATURE_INVALID, f"the record is not a signed consent record: {exc}",
                        rule="consent-unsigned") from None


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


def verify_value(subject: str, value: bytes | None, registry: RegistryView, *,
                 recorded: datetime | None = None) -> ConsentChange:
    """A stored value, opened and verified: the subject's current consent change."""
    change = verify_record(open_record(subject, value), registry, recorded=recorded)
    if normalise(change.subject) != normalise(subject):  # a record copied under another subject's key
        raise PsvnError(Code.SIGNATURE_INVALID, "the signed record is about another subject",
                        rule="consent-subject-binding")
    return change


@dataclass(frozen=True)
class Stored:
    """One subject's stored value as read: its bytes, revision and backbone timestamp."""

    value: bytes | None
    revision: int
    time: datetime | None


@dataclass(frozen=True)
class Consulted:
    """What a decision may know: the records of its subjects only. ``lagging``: a record was
    refused for a reason a registry view a moment behind explains (worth redelivering for)."""

    consent: ConsentRegistry
    refused: tuple[tuple[str, str], ...] = ()
    lagging: bool = False


def _settle_failed(fut: asyncio.Future[Stored | None], exc: BaseException) -> None:
    """Fail a shared read, marked as seen: each waiting caller still gets it raised, and a caller
    cancelled meanwhile leaves no "exception never retrieved" in the log."""
    fut.set_exception(exc)
    fut.exception()


@dataclass(slots=True)
class _Queued:
    """A read asked for and not yet sent: its outcome, and how many callers besides the first share it."""

    result: asyncio.Future[Stored | None]
    sharers: int = 0


class ConsentLookup:
    """Reads the records of named subjects where they live (direct get); the operator writes them."""

    def __init__(self, registry: RegistryView, *, on_refused: Callable[[str, PsvnError], None] | None = None) -> None:
        self.members = registry
        self.on_refused = on_refused
        self._js: JetStreamContext | None = None
        self._ops: JetStreamOps | None = None  # direct gets a writer's headers cannot fool (broker.jsfast)
        self._record_lock = asyncio.Lock()
        # reads asked for and not yet sent, by subject: every decision that needs a subject before
        # its read goes out shares that read (it still starts after each of them asked)
        self._queued: dict[str, _Queued] = {}
        self._reading: set[asyncio.Task[Stored | None]] = set()  # held: the loop keeps only weak references

    async def start(self, js: JetStreamContext, ops: JetStreamOps) -> None:
        """``js``, ``ops``: the network account's JetStream (through this member's imports)."""
        self._js = js
        self._ops = ops

    async def stop(self) -> None:
        self._js = None
        self._ops = None  # the gateway's, closed by the gateway

    async def read(self, subject: str) -> Stored | None:
        """The subject's stored value (None: no record), read after this call began. Concurrent
        calls for one subject made before the read is sent share it (a batch about one patient
        costs one read); none shares a read that began before it asked, so an opt-out recorded
        before a decision began always applies to it. A backbone that does not answer is an
        error, never "no record".

        The first caller reads in its own task (the caller's), after one turn of the loop in
        which others may join: no task of the lookup's, since nearly every read has one caller,
        and a task, a shield and a callback cost about as much as the read's own Python. If that
        caller is cancelled while others share its read, they get a read of their own, in a task."""
        queued = self._queued.get(subject)
        if queued is not None:
            queued.sharers += 1
            try:
                return await asyncio.shield(queued.result)
            except asyncio.CancelledError:
                if not queued.result.done():  # gone: the read is no longer owed to this caller
                    queued.sharers -= 1
                raise
            except PsvnError as exc:  # each caller gets its own (callers add their message id to it)
                raise PsvnError(exc.code, exc.detail, field=exc.field, rule=exc.rule) from exc
        queued = self._queued[subject] = _Queued(asyncio.get_running_loop().create_future())
        try:
            try:
                await asyncio.sleep(0)  # one turn: decisions asking for this subject meanwhile share the read
            finally:
                self._sent(subject, queued)
            value = await self._read_now(subject)
        except Exception as exc:
            if queued.sharers:
                _settle_failed(queued.result, exc)
            raise
        except BaseException:  # cancelled (or closed): those who share the read still get one
            if queued.sharers:
                self._read_for(subject, queued.result)
            raise
        if queued.sharers:
            queued.result.set_result(value)
        return value

    def _sent(self, subject: str, queued: _Queued) -> None:
        """No one joins a read once it is sent."""
        if self._queued.get(subject) is queued:
            del self._queued[subject]

    def _read_for(self, subject: str, fut: asyncio.Future[Stored | None]) -> None:
        """Read for those who shared a read whose first caller was cancelled."""
        task = asyncio.get_running_loop().create_task(self._read_now(subject))
        self._reading.add(task)

        def settle(t: asyncio.Task[Stored | None]) -> None:
            self._reading.discard(task)
            if fut.done():
                return
            if t.cancelled():
                _settle_failed(fut, PsvnError(Code.BACKBONE_UNAVAILABLE, "consent lookup cancelled",
                                              rule="consent-lookup"))
            elif t.exception() is not None:
                _settle_failed(fut, t.exception())  # type: ignore[arg-type]
            else:
                fut.set_result(t.result())

        task.add_done_callback(settle)

    async def _read_now(self, subject: str) -> Stored | None:
        if self._ops is None:
            raise PsvnError(Code.BACKBONE_UNAVAILABLE, "not connected to the backbone", rule="consent-lookup")
        try:
            msg = await self._ops.direct_get(STREAM, subject=f"$KV.{CONSENT_BUCKET}.{key_for(subject)}")
        except (TimeoutError, NatsTimeoutError, NoRespondersError, APIError) as exc:
            raise PsvnError(Code.BACKBONE_UNAVAILABLE, "the backbone did not answer a consent lookup; retry",
                            rule="consent-lookup") from exc
        if msg is None:
            return None
        deleted = (msg.headers or {}).get(KV_OPERATION) in ("DEL", "PURGE")
        # an empty value is passed on as None, which verification refuses (a blanked record is
        # never "no record")
        return Stored(value=None if deleted else (msg.data or None), revision=msg.seq, time=msg.time)

    def _refuse(self, subject: str, exc: PsvnError) -> None:
        log.error("consent record refused", key=key_for(subject), rule=exc.rule, reason=exc.detail)
        if self.on_refused is not None:
            self.on_refused(subject, exc)

    async def consult(self, subjects: Iterable[str]) -> Consulted:
        """The current consent of exactly ``subjects`` (one direct get each, concurrently)."""
        wanted = sorted(set(subjects))
        # (one subject, as nearly every message names one patient: read in this task)
        found = await together([self.read(subject) for subject in wanted])
        consent = ConsentRegistry()
        refused: list[tuple[str, str]] = []
        lagging = False
        for subject, stored in zip(wanted, found, strict=True):
            if stored is None:
                continue
            try:
                consent.apply(verify_value(subject, stored.value, self.members, recorded=stored.time))
            except PsvnError as exc:
                self._refuse(subject, exc)
                consent.refuse(subject, f"{exc.rule}: {exc.detail}")
                refused.append((key_for(subject), exc.rule or exc.code.value))
                lagging = lagging or exc.code in LAG_CODES
        return Consulted(consent=consent, refused=tuple(refused), lagging=lagging)

    async def record(self, change_payload: bytes, *, issuer: str, message_id: str, operator: str,
                     key: Ed25519PrivateKey) -> bool:
        """Operator only: make a verified consent change take effect network-wide.

        Written only if newer (by ``seq``) than the stored record, with compare-and-set on the
        key's revision so that two instances of the operator's gateway cannot interleave. A
        stored value that does not verify is replaced by a newer signed change (that is how a
        blanked or forged record is repaired)."""
        change = ConsentChange.from_payload(change_payload, issuer=issuer)
        rec = sign_record(change_payload, issuer=issuer, message_id=message_id, operator=operator, key=key)
        async with self._record_lock:  # changes of one batch are handled concurrently: keep seq order
            for _ in range(10):
                stored = await self.read(change.subject)
                if stored is not None:
                    try:
                        known = verify_value(change.subject, stored.value, self.members, recorded=stored.time)
                        if known.seq >= change.seq:
                            return False  # a duplicate or an older change: the newer one stays
                    except PsvnError as exc:
                        self._refuse(change.subject, exc)
                if await self._put(change.subject, seal_record(change.subject, rec),
                                   last=stored.revision if stored is not None else 0):
                    return True
            raise PsvnError(Code.CONFLICT, "consent record kept changing while being written; retry",
                            rule="consent-record", message_id=message_id)

    async def _put(self, subject: str, value: bytes, *, last: int) -> bool:
        """Compare-and-set the record (False: someone wrote it since we read), then the cover."""
        assert self._js is not None
        k = key_for(subject)
        record = self._js.publish(f"$KV.{CONSENT_BUCKET}.{k}", value,
                                  headers={"Nats-Expected-Last-Subject-Sequence": str(last)})
        # queued right behind the record (same connection, so stored right after it): a wildcard
        # read of the bucket's newest record finds the cover, not the record
        cover = self._js.publish(f"$KV.{CONSENT_BUCKET}.{COVER_KEY}", cover_value())
        done = await asyncio.gather(record, cover, return_exceptions=True)
        if isinstance(done[0], APIError) and getattr(done[0], "err_code", None) == 10071:
            return False  # wrong last sequence
        if isinstance(done[0], BaseException):
            raise done[0]
        if isinstance(done[1], BaseException):
            log.warning("consent cover record not written", error=repr(done[1]))
        return True


async def migrate_legacy(js: JetStreamContext) -> int:
    """Network account only (the broker, at provisioning): seal every record written before
    subject-derived keys (plaintext, keyed ``c.<sha256(subject)>``) under its new key, then purge
    the old key's messages entirely (a purge marker would keep the old, guessable key). The
    operator's signature is over the plaintext, so it carries over unchanged. Returns how many.

    A record signed with an operator key retired before the migration is re-stamped by the
    backbone now, after that key retired, and so is refused (fail closed) until the pds sends the
    citizen's change again; run the migration before rotating the operator's key."""
    from psvn.backbone.kvwatch import read_keys

    moved = 0
    for k in await read_keys(js, CONSENT_BUCKET):
        if not k.startswith("c."):
            continue
        old = f"$KV.{CONSENT_BUCKET}.{k}"
        try:
            rec = msgspec.msgpack.decode((await js.get_msg(STREAM, subject=old)).data or b"", type=SignedConsent)
            subject = ConsentChange.from_payload(rec.payload).subject
        except (msgspec.DecodeError, PsvnError) as exc:  # not ours to guess at: left for an operator
            log.error("legacy consent record not migrated", key=k, error=repr(exc))
            continue
        new = f"$KV.{CONSENT_BUCKET}.{key_for(subject)}"
        try:
            await js.get_msg(STREAM, subject=new)
        except NotFoundError:
            await js.publish(new, seal_record(subject, rec), headers={"Nats-Expected-Last-Subject-Sequence": "0"})
        await js.purge_stream(STREAM, subject=old)
        moved += 1
    if moved:
        await js.publish(f"$KV.{CONSENT_BUCKET}.{COVER_KEY}", cover_value())
    return moved
