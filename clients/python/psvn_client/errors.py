"""Errors that carry data: every failure is a :class:`PsvnError` with a stable ``code``.

The gateway answers a rejection with an RFC 9457 problem document; the SDK turns it into the
subclass for its *family* (what a caller does about it differs per family: fix the request,
ask the policy owner, retry later...) and keeps every field, so code can switch on ``code``,
``field`` and ``rule`` instead of parsing text. Failures that never reached the gateway
(refused connection, TLS handshake, timeout) are :class:`ConnectionError` with a client-side
code; they are not problem documents, so ``status`` is ``None``.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from psvn_client.models import MessageStatus

__all__ = [
    "BackboneUnavailable",
    "Code",
    "Conflict",
    "ConnectionError",
    "DeliveryFailed",
    "Forbidden",
    "InvalidPayload",
    "NotFound",
    "PayloadTooLarge",
    "PolicyDenied",
    "ProtocolError",
    "PsvnError",
    "RequestTimeout",
    "ServerError",
    "TimeoutError",
    "Unauthenticated",
    "ValidationError",
    "Violation",
    "error_from_problem",
]

PROBLEM_TYPE_PREFIX = "urn:psvn:problem:"


class Code(StrEnum):
    """Known codes. ``PsvnError.code`` is a plain ``str`` (a newer gateway may send codes this
    SDK does not know yet); these members compare equal to it: ``err.code == Code.NOT_FOUND``."""

    # Sent by the gateway (stable; never renamed).
    BAD_REQUEST = "bad-request"
    MALFORMED_JSON = "malformed-json"
    INVALID_ENVELOPE = "invalid-envelope"
    UNKNOWN_RECIPIENT = "unknown-recipient"
    UNKNOWN_TYPE = "unknown-type"
    INVALID_PAYLOAD = "invalid-payload"
    POLICY_DENIED = "policy-denied"
    PAYLOAD_TOO_LARGE = "payload-too-large"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not-found"
    CONFLICT = "conflict"
    BACKBONE_UNAVAILABLE = "backbone-unavailable"
    SIGNATURE_INVALID = "signature-invalid"
    DECRYPT_FAILED = "decrypt-failed"
    SENDER_MISMATCH = "sender-mismatch"
    MEMBER_REVOKED = "member-revoked"
    EXPIRED = "expired"
    CERTIFICATE_INVALID = "certificate-invalid"
    INTERNAL = "internal"
    # Raised by the SDK itself (no HTTP status).
    CONNECTION_FAILED = "connection-failed"
    TLS_FAILED = "tls-failed"
    TIMEOUT = "timeout"
    BAD_RESPONSE = "bad-response"
    DELIVERY_FAILED = "delivery-failed"


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: where (JSON pointer, or SEG-n for HL7 v2), which rule, and why."""

    path: str
    rule: str
    message: str
    expected: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Violation:
        expected = data.get("expected")
        return cls(
            path=str(data.get("path", "")),
            rule=str(data.get("rule", "")),
            message=str(data.get("message", "")),
            expected=None if expected is None else str(expected),
        )

    def __str__(self) -> str:
        text = f"{self.path or '/'}: {self.message} [rule={self.rule}]"
        return f"{text} (expected {self.expected})" if self.expected else text


class PsvnError(Exception):
    """Base of every SDK error. ``except PsvnError`` catches all of them.

    ``problem`` holds the whole problem document (extension members included) when the error
    came from the gateway, so nothing the gateway said is lost.
    """

    def __init__(
        self,
        code: str,
        detail: str = "",
        *,
        status: int | None = None,
        title: str | None = None,
        field: str | None = None,
        rule: str | None = None,
        message_id: str | None = None,
        violations: Sequence[Violation] = (),
        problem: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or title or code)
        self.code = str(code)
        self.detail = detail
        self.status = status
        self.title = title
        self.field = field
        self.rule = rule
        self.message_id = message_id
        self.violations: list[Violation] = list(violations)
        self.problem: dict[str, Any] = dict(problem or {})

    def __str__(self) -> str:
        head = f"[{self.code}]"
        if self.status is not None:
            head += f" HTTP {self.status}"
        text = f"{head}: {self.detail or self.title or self.code}"
        where = [
            f"{name}={value}"
            for name, value in (
                ("field", self.field),
                ("rule", self.rule),
                ("message_id", self.message_id),
            )
            if value is not None
        ]
        if where:
            text += f" ({', '.join(where)})"
        for v in self.violations:
            text += f"\n  - {v}"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, "
            f"field={self.field!r}, rule={self.rule!r}, detail={self.detail!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only data would be lost by the default Exception pickling (multiprocessing).
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[PsvnError], state: dict[str, Any]) -> PsvnError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("detail") or state.get("code"))
    err.__dict__.update(state)
    return err


class ValidationError(PsvnError):
    """The request itself is wrong (envelope, address, type, JSON): fix it; retrying won't help.
    Codes: bad-request, malformed-json, invalid-envelope, unknown-recipient, unknown-type."""


class InvalidPayload(ValidationError):
    """The payload breaks the open standard the catalogue names for its type (invalid-payload);
    ``violations`` lists every broken rule, not just the first."""


class PolicyDenied(PsvnError):
    """The network policy set refused the message (policy-denied); ``rule`` names the rule."""


class Unauthenticated(PsvnError):
    """The gateway did not accept the client certificate (unauthenticated, certificate-invalid)."""


class Forbidden(PsvnError):
    """Authenticated but not allowed (forbidden, member-revoked): e.g. another system's message."""


class NotFound(PsvnError):
    """No such message, or not visible to this system (not-found)."""


class Conflict(PsvnError):
    """The request conflicts with the current state (conflict), e.g. an idempotency key reused
    with a different body."""


class PayloadTooLarge(PsvnError):
    """The message is over the gateway's size limit (payload-too-large)."""


class BackboneUnavailable(PsvnError):
    """The gateway cannot reach the backbone right now (backbone-unavailable); retry later.
    The client already retried safe requests before raising this."""


class ServerError(PsvnError):
    """The gateway failed (internal, or a 5xx without a problem document)."""


class ConnectionError(PsvnError, builtins.ConnectionError):  # a builtin's name, and a subclass of it
    """The request never got an answer. ``code`` says why: ``connection-failed`` (refused,
    reset, dropped), ``tls-failed`` (wrong CA, missing or unknown client certificate, hostname
    mismatch) or ``timeout`` (:class:`RequestTimeout`: no answer within the client's ``timeout``).

    Also a builtin :class:`ConnectionError` (so an ``OSError``): code written for any network
    library's failures (``except ConnectionError``, ``except OSError``) catches it too.
    ``errno`` and ``strerror`` are ``None``."""


class RequestTimeout(ConnectionError, builtins.TimeoutError):
    """The gateway did not answer one HTTP request within the client's ``timeout`` (code
    ``timeout``). Both a :class:`ConnectionError` and a builtin :class:`TimeoutError`."""


class ProtocolError(PsvnError):
    """The gateway answered something this SDK cannot read (code ``bad-response``)."""


class _StatusError(PsvnError):
    """Raised by :meth:`wait_for_status`; ``message_status`` is the last status seen."""

    def __init__(
        self,
        code: str,
        detail: str = "",
        *,
        message_status: MessageStatus | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(code, detail, **kwargs)
        self.message_status = message_status


class DeliveryFailed(_StatusError):
    """The message ended in a status from which the wanted one can no longer follow (rejected,
    expired, quarantined...); ``message_status.reason`` says why."""


class TimeoutError(_StatusError, builtins.TimeoutError):  # a builtin's name, and a subclass of it
    """:meth:`wait_for_status` gave up before the message reached the wanted status.

    Also a builtin :class:`TimeoutError` (which ``asyncio.TimeoutError`` is): ``except
    TimeoutError`` catches it whichever of the two names is in scope."""


_FAMILY: dict[str, type[PsvnError]] = {
    Code.BAD_REQUEST: ValidationError,
    Code.MALFORMED_JSON: ValidationError,
    Code.INVALID_ENVELOPE: ValidationError,
    Code.UNKNOWN_RECIPIENT: ValidationError,
    Code.UNKNOWN_TYPE: ValidationError,
    Code.INVALID_PAYLOAD: InvalidPayload,
    Code.POLICY_DENIED: PolicyDenied,
    Code.PAYLOAD_TOO_LARGE: PayloadTooLarge,
    Code.UNAUTHENTICATED: Unauthenticated,
    Code.CERTIFICATE_INVALID: Unauthenticated,
    Code.FORBIDDEN: Forbidden,
    Code.MEMBER_REVOKED: Forbidden,
    Code.NOT_FOUND: NotFound,
    Code.CONFLICT: Conflict,
    Code.BACKBONE_UNAVAILABLE: BackboneUnavailable,
    Code.INTERNAL: ServerError,
}

# An unknown code (a newer gateway) or no problem document at all: go by the HTTP status.
_FAMILY_FOR_STATUS: dict[int, tuple[str, type[PsvnError]]] = {
    400: (Code.BAD_REQUEST, ValidationError),
    401: (Code.UNAUTHENTICATED, Unauthenticated),
    403: (Code.FORBIDDEN, Forbidden),
    404: (Code.NOT_FOUND, NotFound),
    409: (Code.CONFLICT, Conflict),
    413: (Code.PAYLOAD_TOO_LARGE, PayloadTooLarge),
    422: (Code.BAD_REQUEST, ValidationError),
    502: (Code.BACKBONE_UNAVAILABLE, BackboneUnavailable),
    503: (Code.BACKBONE_UNAVAILABLE, BackboneUnavailable),
    504: (Code.BACKBONE_UNAVAILABLE, BackboneUnavailable),
}


_KNOWN = frozenset(c.value for c in Code)


def _family_for(code: str, status: int) -> type[PsvnError]:
    if code in _FAMILY:
        return _FAMILY[code]
    if code in _KNOWN:  # e.g. signature-invalid: known, but nothing the caller can fix
        return ServerError if status >= 500 else PsvnError
    if status in _FAMILY_FOR_STATUS:
        return _FAMILY_FOR_STATUS[status][1]
    return ServerError if status >= 500 else PsvnError


def _code_for_status(status: int) -> str:
    if status in _FAMILY_FOR_STATUS:
        return _FAMILY_FOR_STATUS[status][0]
    return Code.INTERNAL if status >= 500 else Code.BAD_REQUEST


def error_from_problem(status: int, problem: Mapping[str, Any] | None, *, fallback: str = "") -> PsvnError:
    """Build the right :class:`PsvnError` subclass from a response status and problem document.

    ``problem`` may be ``None`` (body was not a problem document): the code then comes from the
    HTTP status and ``fallback`` (e.g. the start of the body) becomes the detail.
    """
    doc: Mapping[str, Any] = problem or {}
    code = doc.get("code")
    if not isinstance(code, str) or not code:
        ptype = doc.get("type")
        if isinstance(ptype, str) and ptype.startswith(PROBLEM_TYPE_PREFIX):
            code = ptype[len(PROBLEM_TYPE_PREFIX) :]
        else:
            code = _code_for_status(status)
    raw_violations = doc.get("violations")
    violations = (
        [Violation.from_json(v) for v in raw_violations if isinstance(v, Mapping)]
        if isinstance(raw_violations, list)
        else []
    )

    def opt(name: str) -> str | None:
        value = doc.get(name)
        return None if value is None else str(value)

    cls = _family_for(code, status)
    return cls(
        code,
        opt("detail") or fallback,
        status=status,
        title=opt("title"),
        field=opt("field"),
        rule=opt("rule"),
        message_id=opt("message_id"),
        violations=violations,
        problem=doc,
    )
