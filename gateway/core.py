"""The gateway's protocol logic, sans-IO: requests and bytes in, sealed bytes and decisions out.

Egress: envelope rules -> recipient in the registry -> catalogue -> payload validation ->
subject binding -> policy decision -> sign + seal. Ingress: subject proves the sender -> open ->
verify the sender's signature against the registry -> envelope agrees with the subject ->
expiry -> validation -> subject binding -> the same policy again. Every refusal is a PsvnError
naming field, rule and id. No network and no clock of its own, so every branch is testable as a
plain function.

Consent is decided for the people the payload is about, not only for the one the sender names:
validation reports the payload's data subjects (NHS numbers), the envelope's ``subject`` must be
one of them, and every one's opt-outs apply. Otherwise a sender could dodge an opt-out by naming
someone else in the envelope, or no one.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
from cryptography.hazmat.primitives import constant_time, hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from psvn.certs.keys import ed25519_public, raw_public
from psvn.core import addresses
from psvn.core.errors import Code, PsvnError
from psvn.policies.catalogue import CatalogueEntry
from psvn.policies.consent import ConsentRegistry, mask_subject
from psvn.policies.engine import Decision, DecisionRequest
from psvn.policies.snapshot import PolicySnapshot
from psvn.policies.validation import XML_TYPES, media_type
from psvn.policies.validators.common import NO_SUBJECTS
from psvn.protocol import seal
from psvn.protocol.envelope import (
    Envelope,
    SendRequest,
    build,
    check_request,
    is_expired,
    now_rfc3339,
    parse_time,
    payload_bytes,
)
from psvn.protocol.members import Member, MemberTable
from psvn.protocol.subjects import MAILBOX_MAX_AGE_DAYS, msg_subject, rcpt_subject


@dataclass(frozen=True)
class Identity:
    """Who this gateway is: its organisation, member type and private keys.

    ``retired_hpke`` keeps decryption keys from before a rotation: mail sealed to an old key (in
    flight, or stored in the mailbox) still opens.
    """

    org: str
    member_type: str
    signing_key: Ed25519PrivateKey
    hpke_key: X25519PrivateKey
    hybrid_key: hpke.MLKEM768X25519PrivateKey | None = None  # post-quantum, when this gateway has one
    retired_hpke: tuple[seal.PrivateKey, ...] = ()
    # the data keys it seals under and those it has unsealed (None: the process's own)
    data_keys: seal.DataKeys | None = None
    opened_keys: seal.OpenedKeys | None = None

    @property
    def private_keys(self) -> dict[str, list[seal.PrivateKey]]:
        """Per suite this gateway accepts, its decryption keys: the current one first."""
        keys: dict[str, list[seal.PrivateKey]] = {seal.DEFAULT_SUITE: [self.hpke_key]}
        if self.hybrid_key is not None:
            keys[seal.HYBRID_SUITE] = [self.hybrid_key]
        for old in self.retired_hpke:
            suite = seal.DEFAULT_SUITE if isinstance(old, X25519PrivateKey) else seal.HYBRID_SUITE
            keys.setdefault(suite, []).append(old)
        return keys


def choose_signing_key(keys: Sequence[Ed25519PrivateKey], registered: bytes) -> Ed25519PrivateKey:
    """Sign with the key the registry lists for us: before the registry has the new key, keep
    signing with the old one. A peer whose registry view is a moment behind ours may still refuse
    the first messages signed with the new key; it redelivers them (``LAG_RETRIES``) until its
    view catches up, rather than quarantining them."""
    for key in keys:
        if constant_time.bytes_eq(raw_public(key), registered):
            return key
    return keys[0]


@functools.lru_cache(maxsize=4096)
def _verifying_key(raw: bytes) -> Ed25519PublicKey:
    return ed25519_public(raw)  # parsed once per key (immutable), not once per message


def sender_keys(sender: Member, published: datetime | None) -> list[Ed25519PublicKey]:
    return [_verifying_key(k) for k in sender.verifying_keys(published)]


@dataclass(frozen=True)
class Outgoing:
    envelope: Envelope
    subject: str
    data: bytes
    decision: Decision
    size: int


@dataclass(frozen=True)
class Incoming:
    envelope: Envelope
    payload: bytes
    decision: Decision
    sender: Member


class ReceiptItem(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """What a recipient gateway says of one message: delivered / acknowledged / rejected /
    expired, and for mail it filed the SHA-256 of the sealed message as it arrived, so the
    statement names exactly which bytes it took."""

    message_id: str
    status: str
    reason: str | None = None
    rule_ids: list[str] = msgspec.field(default_factory=list)
    sha256: str | None = None
    # when the backbone stored the message in this inbox (RFC 3339): the sender's ``sent`` step,
    # for a record no status write has moved on yet (gateway.sent_step)
    stored: str | None = None


class ReceiptBatch(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """The signed header of one receipt message: one or many items, all to one sender, signed
    and sealed once. A receipt of a single message written before receipts were batched (its
    fields at the top level, no ``items``) is the form still written for one item, so a gateway
    from before batching reads it."""

    by: str
    time: str
    items: list[ReceiptItem] | None = None
    message_id: str | None = None
    status: str | None = None
    reason: str | None = None
    rule_ids: list[str] = msgspec.field(default_factory=list)
    sha256: str | None = None
    stored: str | None = None


class Receipt(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Signed by the recipient gateway: 'I have delivered / acknowledged / rejected message X'
    (one item of an opened receipt message, with who said it and when)."""

    message_id: str
    status: str
    by: str
    time: str
    reason: str | None = None
    rule_ids: list[str] = msgspec.field(default_factory=list)
    sha256: str | None = None
    stored: str | None = None


# Items in one receipt message (a default fetch batch): ~40 KiB of JSON, and a bound on the state
# reads one receipt message can cost its receiver
MAX_RECEIPT_ITEMS = 256
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})")


MAILBOX_MAX_AGE = timedelta(days=MAILBOX_MAX_AGE_DAYS)


def _with_id(exc: PsvnError, message_id: str) -> PsvnError:
    if exc.message_id is None:
        exc.message_id = message_id
    return exc


def decide(snap: PolicySnapshot, env_like: Envelope | SendRequest, *, sender: str, sender_type: str,
           recipient: str, recipient_type: str, direction: str,
           consent: ConsentRegistry | None = None, subjects: frozenset[str] = NO_SUBJECTS,
           topic: str | None = None) -> Decision:
    """The policy's decision, with consent checked for the envelope's subject and every data
    subject of the payload (``subjects``, from validation): one opt-out denies. With a ``topic``,
    the message is one delivery of a feed event: the feed rules decide (``subscribe``: may this
    subscriber have this publisher's events of this type), not the point-to-point routing rules.

    A payload that names nobody costs one engine call, as before. Otherwise the engine decides
    once, for a subject whose opt-out applies if there is one: consent rules (honour or
    override) depend on type and purpose only, so one blocked subject's decision holds for all.
    """
    _, mailbox = addresses.parse(env_like.to)
    named = env_like.subject
    if subjects and (named is None or len(subjects) > 1 or named not in subjects):
        every = ([named] if named is not None else []) + sorted(subjects - {named})
        blocked = [s for s in every if consent.blocks(s, env_like.purpose) is not None] if consent else []
        named = blocked[0] if blocked else every[0]
    else:
        blocked = []
    decision = snap.engine.decide(DecisionRequest(
        sender=sender, sender_type=sender_type, recipient=recipient, recipient_type=recipient_type,
        type=env_like.type, purpose=env_like.purpose, classification=env_like.classification,
        mailbox=mailbox, subject=named, direction=direction,  # type: ignore[arg-type]
        action="subscribe" if topic else "send", topic=topic),
        consent=consent)
    if decision.allow and len(blocked) > 1:  # an override (e.g. safeguarding) covered them all
        decision = msgspec.structs.replace(decision, reason=f"{decision.reason} (and for {len(blocked) - 1} "
                                           "more data subject(s) of the payload)")
    return decision


def bind_subject(subject: str | None, subjects: frozenset[str], message_id: str) -> None:
    """The envelope's ``subject``, if it names one, must be a person the payload is about.

    A payload that names nobody (or a type whose standard psvn cannot read people from) leaves
    the envelope's subject as the only one, as before."""
    if subject is None or not subjects or subject in subjects:
        return
    about = sorted(subjects)
    names = ", ".join(mask_subject(s) for s in about[:3]) + (f" and {len(about) - 3} more" if len(about) > 3 else "")
    raise PsvnError(Code.INVALID_ENVELOPE,
                    f"subject: {mask_subject(subject)} is not a data subject of the payload, which is about "
                    f"{names}; name one of them, or leave subject out (consent is checked for every one)",
                    field="subject", rule="subject-binding", message_id=message_id)


def policy_denied(decision: Decision, message_id: str, direction: str) -> PsvnError:
    return PsvnError(Code.POLICY_DENIED, f"{direction}: {decision.reason}", rule=",".join(decision.rule_ids),
                     message_id=message_id,
                     extra={"rule_ids": decision.rule_ids, "policy_version": decision.policy_version})


def validate_payload(snap: PolicySnapshot, type_: str, body: bytes, message_id: str, *,
                     content_type: str | None = None) -> frozenset[str]:
    """The same validator and the same words as ``psvn validate``; an oversized payload is a 413.
    Returns the payload's data subjects (``nhs:<number>``), found by the same parse."""
    checked = snap.validator.check(type_, body, content_type=content_type)
    violations = checked.violations
    if violations:
        err = snap.validator.error(type_, violations, message_id=message_id)
        if violations[0].rule == "max-bytes":
            err.code = Code.PAYLOAD_TOO_LARGE
        raise err
    return checked.subjects


def _content_type(asked: str, entry: CatalogueEntry) -> str:
    """A type's own media type, or FHIR XML for a FHIR type; nothing else travels."""
    mt = media_type(asked)
    allowed = {entry.datacontenttype} | (set(XML_TYPES) if entry.validator.startswith("fhir") else set())
    if mt not in allowed:
        raise PsvnError(Code.INVALID_ENVELOPE, f"datacontenttype: {asked!r} is not accepted for {entry.type} "
                        f"(one of: {', '.join(sorted(allowed))})", field="datacontenttype", rule="content-type")
    return "application/fhir+xml" if mt in XML_TYPES else mt


def decide_publish(snap: PolicySnapshot, req: SendRequest, *, me: Identity, topic: str,
                   message_id: str) -> None:
    """May this gateway publish ``req``'s type on ``topic`` at all (before any subscriber)?"""
    decision = snap.engine.decide(DecisionRequest(
        sender=me.org, sender_type=me.member_type, type=req.type, purpose=req.purpose,
        classification=req.classification, action="publish", topic=topic))
    if not decision.allow:
        raise policy_denied(decision, message_id, "publish")


@dataclass(frozen=True)
class SendCheck:
    """A send request checked up to (not including) the policy decision: what the decision and
    the consent lookup before it need."""

    req: SendRequest
    recipient_org: str
    recipient: Member
    entry: CatalogueEntry
    body: bytes
    subjects: frozenset[str]  # the payload's data subjects (from validation)

    @property
    def consent_subjects(self) -> frozenset[str]:
        """Everyone whose consent the decision consults: the envelope's subject and the payload's."""
        return self.subjects | ({self.req.subject} if self.req.subject else frozenset())


def check_send(req: SendRequest, *, snap: PolicySnapshot, registry: MemberTable, message_id: str) -> SendCheck:
    """Envelope rules, recipient, catalogue, payload validation and subject binding (no decision)."""
    try:
        check_request(req)
        recipient_org, _ = addresses.parse(req.to)
        recipient = registry.lookup(recipient_org, field="to", message_id=message_id)
        entry = snap.catalogue.get(req.type, message_id=message_id)
        if req.datacontenttype is not None:
            req = msgspec.structs.replace(req, datacontenttype=_content_type(req.datacontenttype, entry))
        body = payload_bytes(req.payload)
        subjects = validate_payload(snap, req.type, body, message_id, content_type=req.datacontenttype)
        bind_subject(req.subject, subjects, message_id)
    except PsvnError as exc:
        raise _with_id(exc, message_id) from None
    return SendCheck(req=req, recipient_org=recipient_org, recipient=recipient, entry=entry, body=body,
                     subjects=subjects)


@dataclass(frozen=True)
class Planned:
    """A send decided and its envelope built, not yet sealed (no cryptography yet): what the
    sender's record needs (rule ids, expiry) and what :func:`seal_send` seals."""

    req: SendRequest  # as sent: the time to live capped by the policy's retention rule
    checked: SendCheck
    decision: Decision
    envelope: Envelope


def plan_send(req: SendRequest, *, me: Identity, system: str | None, snap: PolicySnapshot,
              registry: MemberTable, message_id: str, now: datetime | None = None,
              consent: ConsentRegistry | None = None, topic: str | None = None,
              checked: SendCheck | None = None) -> Planned:
    """Check and decide one message and build its envelope; a refusal raises."""
    checked = checked or check_send(req, snap=snap, registry=registry, message_id=message_id)
    req, recipient_org, recipient, entry = checked.req, checked.recipient_org, checked.recipient, checked.entry
    try:
        decision = decide(snap, req, sender=me.org, sender_type=me.member_type, recipient=recipient_org,
                          recipient_type=recipient.type, direction="egress", consent=consent,
                          subjects=checked.subjects, topic=topic)
    except PsvnError as exc:
        raise _with_id(exc, message_id) from None
    if not decision.allow:
        raise policy_denied(decision, message_id, "egress")
    if decision.max_ttl_seconds and (req.ttl_seconds is None or req.ttl_seconds > decision.max_ttl_seconds):
        # the policy's retention rule caps how long the message may wait to be delivered
        req = msgspec.structs.replace(req, ttl_seconds=decision.max_ttl_seconds)
    env = build(req, source=me.org, source_system=system, policy_version=snap.version,
                datacontenttype=req.datacontenttype or entry.datacontenttype, now=now, message_id=message_id,
                topic=topic)
    return Planned(req=req, checked=checked, decision=decision, envelope=env)


def seal_send(planned: Planned, *, me: Identity) -> Outgoing:
    """Sign and seal a planned message to its recipient."""
    env, recipient_org, recipient = planned.envelope, planned.checked.recipient_org, planned.checked.recipient
    header = msgspec.json.encode(env)
    data = seal.seal(seal.KIND_MESSAGE, header, planned.checked.body, signing_key=me.signing_key,
                     recipient_key=seal.public_key_for(recipient.hpke_suite, recipient.hpke_key),
                     info=seal.info_for(me.org, recipient_org, env.id), suite=recipient.hpke_suite,
                     version=recipient.wire, keys=me.data_keys)
    return Outgoing(envelope=env, subject=msg_subject(recipient_org, me.org), data=data, decision=planned.decision,
                    size=len(data))


def prepare_send(req: SendRequest, *, me: Identity, system: str | None, snap: PolicySnapshot,
                 registry: MemberTable, message_id: str, now: datetime | None = None,
                 consent: ConsentRegistry | None = None, topic: str | None = None,
                 checked: SendCheck | None = None) -> Outgoing:
    """Check, decide, sign and seal one message; with ``topic``, one delivery of a feed event.
    ``checked``: the request as :func:`check_send` already checked it (the gateway checks first,
    reads the consent of the subjects it names, then decides)."""
    return seal_send(plan_send(req, me=me, system=system, snap=snap, registry=registry, message_id=message_id,
                               now=now, consent=consent, topic=topic, checked=checked), me=me)


def sender_from_subject(subject: str, me: Identity, kind: str) -> str:
    """``psvn.<kind>.<recipient>.<sender>``: the backbone's permissions make the sender token true."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "psvn" or parts[1] != kind or parts[2] != addresses.token(me.org):
        raise PsvnError(Code.SENDER_MISMATCH, f"unexpected backbone subject {subject!r}", rule="subject-format")
    return addresses.from_token(parts[3])


@dataclass(frozen=True)
class Opening:
    """A message opened and verified, and (on first receipt) checked up to the policy decision."""

    envelope: Envelope
    payload: bytes
    sender: Member
    subjects: frozenset[str]  # the payload's data subjects (empty without checks)
    checks: bool

    @property
    def consent_subjects(self) -> frozenset[str]:
        """Everyone whose consent the decision consults (none without checks: no decision)."""
        if not self.checks:
            return frozenset()
        return self.subjects | ({self.envelope.subject} if self.envelope.subject else frozenset())


def open_message(data: bytes, *, subject: str, message_id: str, me: Identity, registry: MemberTable,
                 snap: PolicySnapshot, now: datetime | None = None, checks: bool = True,
                 published: datetime | None = None) -> Opening:
    """Open and verify a message; with ``checks`` (on first receipt) also expiry, payload and subject
    binding. The policy decision is :func:`decide_incoming` (after the consent lookup).

    ``published`` is the backbone's timestamp of the message: a sender's retired signing key
    verifies only what was published before it retired."""
    subjects: frozenset[str] = NO_SUBJECTS
    try:
        sender_org = sender_from_subject(subject, me, "msg")
        sender = registry.lookup(sender_org, field="source", message_id=message_id, require_active=checks)
        inner = seal.unseal(data, private_key=me.private_keys, info=seal.info_for(sender_org, me.org, message_id),
                            message_id=message_id, opened=me.opened_keys)
        if inner.kind != seal.KIND_MESSAGE:
            raise PsvnError(Code.DECRYPT_FAILED, f"expected a message, got a {inner.kind}", rule="inner-kind")
        seal.verify(inner, sender_keys(sender, published), message_id=message_id)
        try:
            env = msgspec.json.decode(inner.header, type=Envelope)
        except msgspec.DecodeError as exc:
            raise PsvnError(Code.INVALID_ENVELOPE, f"envelope: {exc}", field="envelope",
                            rule="envelope-schema") from exc
        if env.id != message_id:
            raise PsvnError(Code.SENDER_MISMATCH, "envelope id differs from the backbone message id",
                            field="id", rule="id-binding")
        if env.sender_org != sender_org:
            raise PsvnError(Code.SENDER_MISMATCH,
                            f"envelope claims source {env.source!r} but the backbone subject proves {sender_org!r}",
                            field="source", rule="source-binding")
        if env.recipient_org != me.org:
            raise PsvnError(Code.SENDER_MISMATCH, f"envelope is addressed to {env.to!r}, not to {me.org!r}",
                            field="to", rule="recipient-binding")
        if checks:
            if is_expired(env, now):
                raise PsvnError(Code.EXPIRED, f"message expired at {env.expires}", field="expires", rule="expiry")
            if published is not None and parse_time(env.time) < published - MAILBOX_MAX_AGE:
                # older than any inbox keeps mail: a replay of a message whose record is gone
                raise PsvnError(Code.EXPIRED, f"message was written at {env.time}, more than "
                                f"{MAILBOX_MAX_AGE.days} days before it reached the backbone", field="time",
                                rule="arrival-age")
            subjects = validate_payload(snap, env.type, inner.payload, message_id,
                                        content_type=env.datacontenttype)
            bind_subject(env.subject, subjects, message_id)  # a sender's gateway that skipped it
    except PsvnError as exc:
        raise _with_id(exc, message_id) from None
    return Opening(envelope=env, payload=inner.payload, sender=sender, subjects=subjects, checks=checks)


def decide_incoming(opening: Opening, *, me: Identity, snap: PolicySnapshot, message_id: str,
                    consent: ConsentRegistry | None = None) -> Incoming:
    """The ingress decision (on first receipt), with the consent of the subjects it names."""
    env = opening.envelope
    decision = Decision(allow=True, rule_ids=[], reason="previously delivered", policy_version=snap.version)
    if opening.checks:
        try:
            decision = decide(snap, env, sender=env.sender_org, sender_type=opening.sender.type,
                              recipient=me.org, recipient_type=me.member_type, direction="ingress",
                              consent=consent, subjects=opening.subjects, topic=env.topic)
        except PsvnError as exc:
            raise _with_id(exc, message_id) from None
        if not decision.allow:
            raise policy_denied(decision, message_id, "ingress")
    return Incoming(envelope=env, payload=opening.payload, decision=decision, sender=opening.sender)


def open_incoming(data: bytes, *, subject: str, message_id: str, me: Identity, registry: MemberTable,
                  snap: PolicySnapshot, now: datetime | None = None, checks: bool = True,
                  consent: ConsentRegistry | None = None, published: datetime | None = None) -> Incoming:
    """:func:`open_message` then :func:`decide_incoming`, for a caller that has the consent already."""
    opening = open_message(data, subject=subject, message_id=message_id, me=me, registry=registry, snap=snap,
                           now=now, checks=checks, published=published)
    return decide_incoming(opening, me=me, snap=snap, message_id=message_id, consent=consent)


def stored_reason(exc: PsvnError) -> str:
    """A refusal's reason as kept in state and sent in receipts, which the backbone can read: a
    payload violation is named by its rule and path only, since a validator's message may quote
    the payload (an NHS number, a name)."""
    if exc.code is Code.INVALID_PAYLOAD and exc.violations:
        first = exc.violations[0]
        return (f"{exc.code.value}: {len(exc.violations)} violation(s), first at {first.path or '/'} "
                f"[{first.rule}]")
    return f"{exc.code.value}: {exc.detail}"


def receipt_id(message_id: str, status: str) -> str:
    return f"rcpt.{message_id}.{status}"


def receipts_id(items: Sequence[ReceiptItem]) -> str:
    """The dedupe id of a receipt message: fixed by what it says (each message id and status), so
    publishing the same receipt again never stores it twice. One item keeps the single form."""
    if len(items) == 1:
        return receipt_id(items[0].message_id, items[0].status)
    said = msgspec.json.encode([(item.message_id, item.status) for item in items])  # unambiguous
    return f"rcpt.batch.{hashlib.sha256(said).hexdigest()[:40]}"


def make_receipts(items: Sequence[ReceiptItem], *, me: Identity, to: Member,
                  now: datetime | None = None) -> tuple[str, str, bytes]:
    """(subject, dedupe id, sealed bytes) of one signed receipt message to the original sender
    ``to``, saying what became of each of ``items`` (1 to :data:`MAX_RECEIPT_ITEMS`): one
    signature and one seal for them all, each item still naming its message and its hash."""
    if not 0 < len(items) <= MAX_RECEIPT_ITEMS:
        raise ValueError(f"a receipt carries 1 to {MAX_RECEIPT_ITEMS} items, not {len(items)}")
    # in message-id order, each message once (a batch may hold two copies of one id): the same
    # receipt made again (a redelivered batch) has the same id
    once: dict[str, ReceiptItem] = {}
    for item in sorted(items, key=lambda i: (i.message_id, i.status)):
        once.setdefault(item.message_id, item)
    items = list(once.values())
    rid = receipts_id(items)
    if len(items) == 1:  # the single form, which a gateway from before batching also reads
        one = items[0]
        header = ReceiptBatch(by=me.org, time=now_rfc3339(now), message_id=one.message_id, status=one.status,
                              reason=one.reason, rule_ids=one.rule_ids, sha256=one.sha256, stored=one.stored)
    else:
        header = ReceiptBatch(by=me.org, time=now_rfc3339(now), items=items)
    body = msgspec.json.encode(header)
    data = seal.seal(seal.KIND_RECEIPT, body, b"", signing_key=me.signing_key,
                     recipient_key=seal.public_key_for(to.hpke_suite, to.hpke_key),
                     info=seal.info_for(me.org, to.address, rid),
                     suite=to.hpke_suite, version=to.wire, keys=me.data_keys)
    return rcpt_subject(to.address, me.org), rid, data


def open_receipts(data: bytes, *, subject: str, receipt_msg_id: str, me: Identity,
                  registry: MemberTable, published: datetime | None = None) -> list[Receipt]:
    """Open, verify and bind a receipt message: its subject names who sent it, the signature
    must be that member's, and its dedupe id must be the one its items fix (so a receipt cannot
    be relabelled, or its items swapped for others, on the backbone)."""
    sender_org = sender_from_subject(subject, me, "rcpt")
    sender = registry.lookup(sender_org, field="by", require_active=False)
    inner = seal.unseal(data, private_key=me.private_keys, info=seal.info_for(sender_org, me.org, receipt_msg_id),
                        opened=me.opened_keys)
    if inner.kind != seal.KIND_RECEIPT:
        raise PsvnError(Code.DECRYPT_FAILED, f"expected a receipt, got a {inner.kind}", rule="inner-kind")
    seal.verify(inner, sender_keys(sender, published))
    batch = msgspec.json.decode(inner.header, type=ReceiptBatch)
    items = batch.items
    if items is None and batch.message_id is not None and batch.status is not None:  # the single form
        items = [ReceiptItem(message_id=batch.message_id, status=batch.status, reason=batch.reason,
                             rule_ids=batch.rule_ids, sha256=batch.sha256, stored=batch.stored)]
    if not items or len(items) > MAX_RECEIPT_ITEMS:
        raise PsvnError(Code.INVALID_ENVELOPE, f"a receipt carries 1 to {MAX_RECEIPT_ITEMS} items",
                        field="items", rule="receipt-items", message_id=receipt_msg_id)
    if len({item.message_id for item in items}) != len(items):
        raise PsvnError(Code.INVALID_ENVELOPE, "a receipt names a message twice", field="items",
                        rule="receipt-items", message_id=receipt_msg_id)
    if any(item.sha256 is not None and not SHA256_HEX.fullmatch(item.sha256) for item in items):
        raise PsvnError(Code.INVALID_ENVELOPE, "a receipt item's sha256 is not 64 lowercase hex digits",
                        field="items.sha256", rule="receipt-items", message_id=receipt_msg_id)
    if batch.by != sender_org or receipts_id(items) != receipt_msg_id:
        raise PsvnError(Code.SENDER_MISMATCH, "receipt does not match its backbone subject and id",
                        rule="receipt-binding", message_id=items[0].message_id)
    return [Receipt(message_id=i.message_id, status=i.status, by=batch.by, time=batch.time, reason=i.reason,
                    rule_ids=i.rule_ids, sha256=i.sha256, stored=_stored(i.stored, receipt_msg_id)) for i in items]


def _stored(text: str | None, receipt_msg_id: str) -> str | None:
    """A receipt item's ``stored`` time, in the one form every record's times take. Only RFC
    3339 with an offset is read (``fromisoformat`` alone takes week dates, basic forms and no
    offset at all); the record puts it between the steps around it whatever it says."""
    if text is None:
        return None
    try:
        if not RFC3339.fullmatch(text):
            raise ValueError("not RFC 3339")
        return now_rfc3339(parse_time(text).astimezone(UTC))
    except (ValueError, OverflowError):
        raise PsvnError(Code.INVALID_ENVELOPE, f"a receipt item's stored time is not an RFC 3339 time: {text[:40]!r}",
                        field="items.stored", rule="receipt-items", message_id=receipt_msg_id) from None

