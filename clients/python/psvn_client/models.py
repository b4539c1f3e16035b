"""What the gateway answers, as small frozen dataclasses.

Each model reads its JSON with ``from_json``, which ignores members it does not know (a newer
gateway may add some) and turns times into timezone-aware ``datetime``. A response missing a
required member raises :class:`~psvn_client.errors.ProtocolError`, never a bare ``KeyError``.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from psvn_client.errors import Code, ProtocolError, PsvnError

__all__ = [
    "Ack",
    "AsyncInboundMessage",
    "BatchResult",
    "Envelope",
    "Health",
    "InboundMessage",
    "InboxItem",
    "Message",
    "MessageStatus",
    "MessageType",
    "Page",
    "PolicyDecision",
    "ReceivedMessage",
    "SendResult",
    "Status",
    "StatusEvent",
]

T = TypeVar("T")


class Status(StrEnum):
    """A message's status. Fields hold plain ``str`` (a newer gateway may add statuses);
    these members compare equal to them."""

    ACCEPTED = "accepted"
    SENT = "sent"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    REJECTED = "rejected"
    EXPIRED = "expired"
    QUARANTINED = "quarantined"


#: Statuses after which nothing changes any more.
FINAL_STATUSES = frozenset({Status.ACKNOWLEDGED, Status.REJECTED, Status.EXPIRED, Status.QUARANTINED})
#: The successful path, in order; a later one implies the earlier ones happened.
PROGRESS = (Status.ACCEPTED, Status.SENT, Status.DELIVERED, Status.ACKNOWLEDGED)


def _bad(what: str, data: Any) -> ProtocolError:
    return ProtocolError(Code.BAD_RESPONSE, f"gateway response has no valid {what}: {str(data)[:200]}")


def _obj(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise _bad(what, data)
    return data


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise _bad(repr(key), data)
    return value


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else str(value)


def _int(data: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(repr(key), data)
    return value


def _time(value: Any, what: str = "time") -> datetime:
    if not isinstance(value, str):
        raise _bad(what, value)
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise _bad(what, value) from None


def _opt_time(value: Any) -> datetime | None:
    return None if value is None else _time(value)


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """Which policy set version allowed the message, and the rules that decided."""

    version: int
    rule_ids: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Any) -> PolicyDecision:
        d = _obj(data, "policy")
        rules = d.get("rule_ids") or ()
        return cls(version=_int(d, "version", 0), rule_ids=tuple(str(r) for r in rules))


@dataclass(frozen=True, slots=True)
class SendResult:
    """The gateway accepted the message: it is now the gateway's to deliver.

    The answer comes once the backbone has stored the message. ``status`` is what the sender's
    record says then, ``accepted`` (or, for a repeat, where the message has got to since): the
    recipient's receipt moves it on to ``delivered``, writing the ``sent`` step with it.

    ``idempotency_key`` is the key sent with it (generated if you gave none): store it with your
    record and send again with it after a crash, and the gateway will not send twice.
    ``duplicate`` is true when the gateway had already accepted this key (HTTP 200, same id).
    """

    id: str
    status: str
    policy: PolicyDecision
    idempotency_key: str
    location: str | None = None
    duplicate: bool = False

    @classmethod
    def from_json(
        cls,
        data: Any,
        *,
        idempotency_key: str,
        location: str | None = None,
        duplicate: bool = False,
    ) -> SendResult:
        d = _obj(data, "send result")
        return cls(
            id=_str(d, "id"),
            status=_str(d, "status"),
            policy=PolicyDecision.from_json(d.get("policy") or {}),
            idempotency_key=idempotency_key,
            location=location,
            duplicate=duplicate,
        )


@dataclass(frozen=True, slots=True)
class Message:
    """One message for :meth:`~psvn_client.Client.send_many`: the arguments of
    :meth:`~psvn_client.Client.send`, as a value. (``send_many`` also takes plain mappings
    with the HTTP API's field names, e.g. lines of an NDJSON file.)"""

    to: str
    type: str
    payload: Any
    purpose: str
    classification: str = "OFFICIAL"
    subject: str | None = None
    correlation_id: str | None = None
    workflow_id: str | None = None
    local_id: str | None = None
    idempotency_key: str | None = None
    ttl_seconds: int | None = None
    datacontenttype: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The request body of one send; unset options are left to the gateway."""
        body: dict[str, Any] = {"to": self.to, "type": self.type, "payload": self.payload, "purpose": self.purpose,
                                "classification": self.classification}
        for name in ("subject", "correlation_id", "workflow_id", "local_id", "idempotency_key", "ttl_seconds",
                     "datacontenttype"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        return body


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What became of one message of :meth:`~psvn_client.Client.send_many`: either ``result``
    (the gateway accepted it, as :meth:`send` returns) or ``error`` (the same
    :class:`~psvn_client.PsvnError` subclass, with the same data, that :meth:`send` would have
    raised for it). ``index`` is its position in what was passed in; ``idempotency_key`` the
    key it was sent with (generated if it had none): send it again with that key and the
    gateway will not send it twice."""

    index: int
    idempotency_key: str | None
    result: SendResult | None = None
    error: PsvnError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def id(self) -> str | None:
        """The message id: of the accepted message, or the one the gateway gave the refusal."""
        return self.result.id if self.result is not None else self.error.message_id if self.error else None

    def unwrap(self) -> SendResult:
        """The :class:`SendResult`, or raise the error (as :meth:`send` would have)."""
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """One step in a message's history."""

    status: str
    time: datetime
    reason: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> StatusEvent:
        d = _obj(data, "history entry")
        return cls(status=_str(d, "status"), time=_time(d.get("time")), reason=_opt_str(d, "reason"))


@dataclass(frozen=True, slots=True)
class MessageStatus:
    """Where a sent message is: ``status`` now, and every step with its time."""

    id: str
    status: str
    to: str | None = None
    type: str | None = None
    history: tuple[StatusEvent, ...] = ()
    reason: str | None = None

    @property
    def final(self) -> bool:
        """True once the status can no longer change."""
        return self.status in FINAL_STATUSES

    @classmethod
    def from_json(cls, data: Any) -> MessageStatus:
        d = _obj(data, "message status")
        history = d.get("history") or ()
        if not isinstance(history, list | tuple):
            raise _bad("history", d)
        return cls(
            id=_str(d, "id"),
            status=_str(d, "status"),
            to=_opt_str(d, "to"),
            type=_opt_str(d, "type"),
            history=tuple(StatusEvent.from_json(h) for h in history),
            reason=_opt_str(d, "reason"),
        )


@dataclass(frozen=True, slots=True)
class Ack:
    """The answer to :meth:`ack`: the message is now ``acknowledged``."""

    id: str
    status: str

    @classmethod
    def from_json(cls, data: Any) -> Ack:
        d = _obj(data, "ack")
        return cls(id=_str(d, "id"), status=_str(d, "status"))


@dataclass(frozen=True, slots=True)
class InboxItem:
    """One message waiting in (or already read from) this system's mailbox.

    ``sender`` is the address the message came from (``from`` in the JSON). ``size`` is the
    payload size in bytes; ``reason`` says why, for a quarantined one.
    """

    id: str
    sender: str
    to: str
    type: str
    time: datetime
    status: str
    size: int
    classification: str = "OFFICIAL"
    purpose: str = ""
    correlation_id: str | None = None
    mailbox: str | None = None
    reason: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> InboxItem:
        d = _obj(data, "inbox item")
        return cls(
            id=_str(d, "id"),
            sender=_str(d, "from"),
            to=_str(d, "to"),
            type=_str(d, "type"),
            time=_time(d.get("time")),
            status=_str(d, "status"),
            size=_int(d, "size", 0),
            classification=_opt_str(d, "classification") or "OFFICIAL",
            purpose=_opt_str(d, "purpose") or "",
            correlation_id=_opt_str(d, "correlation_id"),
            mailbox=_opt_str(d, "mailbox"),
            reason=_opt_str(d, "reason"),
        )


@dataclass(frozen=True, slots=True)
class Envelope:
    """The signed metadata that travelled with the payload (CloudEvents-shaped).

    ``sender`` is the sending organisation's address, proven by its signature (the HTTP API's
    ``source``; ``sender_system`` its ``source_system``: the sender's local system).
    ``policy_version`` is the policy set version under which the sender allowed it.
    """

    id: str
    sender: str
    to: str
    type: str
    time: datetime
    purpose: str
    classification: str = "OFFICIAL"
    datacontenttype: str = "application/json"
    policy_version: int = 0
    subject: str | None = None
    correlation_id: str | None = None
    workflow_id: str | None = None
    local_id: str | None = None
    expires: datetime | None = None
    sender_system: str | None = None
    topic: str | None = None  # the feed topic, when the message is a delivery of a published event

    @property
    def source(self) -> str:
        """Deprecated: use :attr:`sender` (the SDK calls the sender ``sender`` everywhere)."""
        warnings.warn("Envelope.source is deprecated: use Envelope.sender", DeprecationWarning, stacklevel=2)
        return self.sender

    @property
    def source_system(self) -> str | None:
        """Deprecated: use :attr:`sender_system`."""
        warnings.warn("Envelope.source_system is deprecated: use Envelope.sender_system", DeprecationWarning,
                      stacklevel=2)
        return self.sender_system

    @classmethod
    def from_json(cls, data: Any) -> Envelope:
        d = _obj(data, "envelope")
        return cls(
            id=_str(d, "id"),
            sender=_str(d, "source"),
            to=_str(d, "to"),
            type=_str(d, "type"),
            time=_time(d.get("time")),
            purpose=_str(d, "purpose"),
            classification=_opt_str(d, "classification") or "OFFICIAL",
            datacontenttype=_opt_str(d, "datacontenttype") or "application/json",
            policy_version=_int(d, "policy_version", 0),
            subject=_opt_str(d, "subject"),
            correlation_id=_opt_str(d, "correlation_id"),
            workflow_id=_opt_str(d, "workflow_id"),
            local_id=_opt_str(d, "local_id"),
            expires=_opt_time(d.get("expires")),
            sender_system=_opt_str(d, "source_system"),
            topic=_opt_str(d, "topic"),
        )


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A message downloaded from the inbox: verified envelope, payload, and its status here.

    ``payload`` is the decoded JSON value, or a ``str`` for text standards (HL7 v2 ER7).
    """

    envelope: Envelope
    payload: Any
    status: str

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def type(self) -> str:
        return self.envelope.type

    @property
    def sender(self) -> str:
        return self.envelope.sender

    @classmethod
    def from_json(cls, data: Any) -> ReceivedMessage:
        d = _obj(data, "message")
        if "payload" not in d:
            raise _bad("'payload'", d)
        return cls(
            envelope=Envelope.from_json(d.get("envelope")),
            payload=d["payload"],
            status=_str(d, "status"),
        )


@dataclass(frozen=True, slots=True)
class InboundMessage(ReceivedMessage):
    """A message a receive loop (:meth:`~psvn_client.Client.receive`) hands you. Call
    :meth:`ack` once you have taken it (stored, passed on...): only then does the sender see
    ``acknowledged``. Without ``ack`` (an exception, ``continue``) it stays unacknowledged at
    the gateway: this loop does not offer it again, the next loop does."""

    mailbox: str | None = None
    _ack: Callable[[str], Ack] | None = field(default=None, repr=False, compare=False)

    def ack(self) -> Ack:
        """Acknowledge this message (safe to repeat)."""
        assert self._ack is not None
        return self._ack(self.id)


@dataclass(frozen=True, slots=True)
class AsyncInboundMessage(ReceivedMessage):
    """What :meth:`psvn_client.AsyncClient.receive` yields: as :class:`InboundMessage`, with
    ``await msg.ack()``."""

    mailbox: str | None = None
    _ack: Callable[[str], Awaitable[Ack]] | None = field(default=None, repr=False, compare=False)

    async def ack(self) -> Ack:
        """Acknowledge this message (safe to repeat)."""
        assert self._ack is not None
        return await self._ack(self.id)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list: its ``items``, and ``next``, the opaque cursor to continue after
    them (pass it back as ``cursor``; ``None`` when the list was empty from the start).
    ``more`` is true when the page was full, so more may follow at once; either way later
    items (new mail) appear after the same cursor. Iterating a page iterates its items."""

    items: tuple[T, ...]
    next: str | None = None
    more: bool = False

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class MessageType:
    """A catalogue entry: a message type and the open standard its payload must meet.

    ``extra`` keeps any further members the gateway sends (schema links, examples...).
    """

    type: str
    standard: str
    version: str | None = None
    validator: str | None = None
    description: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> MessageType:
        d = _obj(data, "catalogue entry")
        known = ("type", "standard", "version", "validator", "description")
        return cls(
            type=_str(d, "type"),
            standard=_opt_str(d, "standard") or "",
            version=_opt_str(d, "version"),
            validator=_opt_str(d, "validator"),
            description=_opt_str(d, "description"),
            extra={k: v for k, v in d.items() if k not in known},
        )


@dataclass(frozen=True, slots=True)
class Health:
    """The gateway's own view: ``ok`` is false when it is up but degraded (e.g. no backbone)."""

    status: str
    org: str
    policy_version: int
    backbone: str
    problems: tuple[str, ...] = ()  # what is wrong when not ready (e.g. "backbone: not connected ...")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_json(cls, data: Any) -> Health:
        d = _obj(data, "health")
        if isinstance(d.get("status"), int):  # 503: an RFC 9457 problem document, status is the HTTP code
            problems = d.get("problems")
            return cls(
                status=_opt_str(d, "health") or "degraded",
                org=_opt_str(d, "org") or "",
                policy_version=_int(d, "policy_version", 0),
                backbone=_opt_str(d, "backbone") or "unknown",
                problems=tuple(str(p) for p in problems) if isinstance(problems, list) else (),
            )
        return cls(
            status=_str(d, "status"),
            org=_str(d, "org"),
            policy_version=_int(d, "policy_version", 0),
            backbone=_opt_str(d, "backbone") or "unknown",
        )


@dataclass(frozen=True, slots=True)
class Subscription:
    """This member's subscription to a feed topic, for one purpose (optionally into a mailbox)."""

    subscriber: str
    topic: str
    purpose: str
    mailbox: str | None = None
    created: datetime | None = None

    @classmethod
    def from_json(cls, data: Any) -> Subscription:
        d = _obj(data, "subscription")
        return cls(subscriber=_str(d, "subscriber"), topic=_str(d, "topic"), purpose=_str(d, "purpose"),
                   mailbox=_opt_str(d, "mailbox"), created=_opt_time(d.get("created") or None))


@dataclass(frozen=True, slots=True)
class Delivery:
    """One subscriber's copy of a published event: an ordinary message, with its own id and status."""

    to: str
    id: str
    status: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """A subscriber the event was not sent to, and why (the problem code and the rules)."""

    to: str
    code: str
    rule: str | None
    rule_ids: tuple[str, ...]
    message_id: str | None


@dataclass(frozen=True, slots=True)
class Publication:
    """What publishing one event did: a delivery per allowed subscriber, a refusal per other."""

    event: str
    topic: str
    deliveries: tuple[Delivery, ...]
    refused: tuple[Refusal, ...]

    @classmethod
    def from_json(cls, data: Any) -> Publication:
        d = _obj(data, "publication")
        return cls(
            event=_str(d, "event"), topic=_str(d, "topic"),
            deliveries=tuple(Delivery(to=_str(x, "to"), id=_str(x, "id"), status=_str(x, "status"))
                             for x in (_obj(v, "delivery") for v in d.get("deliveries") or [])),
            refused=tuple(Refusal(to=_str(x, "to"), code=_str(x, "code"), rule=_opt_str(x, "rule"),
                                  rule_ids=tuple(str(r) for r in x.get("rule_ids") or []),
                                  message_id=_opt_str(x, "message_id"))
                          for x in (_obj(v, "refusal") for v in d.get("refused") or [])),
        )
