"""One error type for the whole network, with a stable code enum.

Every rejection in psvn is a :class:`PsvnError`.  Its ``code`` never changes meaning once
published (SDKs and integrators switch on it); the HTTP edge turns it into an RFC 9457 problem
document with :meth:`PsvnError.to_problem`.  A rejection names the field, the rule and the
message id, and may carry every :class:`Violation` found, not just the first.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec


class Code(StrEnum):
    """Stable error codes. Add new ones; never rename or reuse an old one."""

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
    POLICY_SIGNATURE_INVALID = "policy-signature-invalid"
    POLICY_VERSION_REGRESSION = "policy-version-regression"
    CONFIG_INVALID = "config-invalid"
    CERTIFICATE_INVALID = "certificate-invalid"
    INTERNAL = "internal"


HTTP_STATUS: dict[Code, int] = {
    Code.BAD_REQUEST: 400,
    Code.MALFORMED_JSON: 400,
    Code.INVALID_ENVELOPE: 422,
    Code.UNKNOWN_RECIPIENT: 422,
    Code.UNKNOWN_TYPE: 422,
    Code.INVALID_PAYLOAD: 422,
    Code.POLICY_DENIED: 403,
    Code.PAYLOAD_TOO_LARGE: 413,
    Code.UNAUTHENTICATED: 401,
    Code.FORBIDDEN: 403,
    Code.NOT_FOUND: 404,
    Code.CONFLICT: 409,
    Code.BACKBONE_UNAVAILABLE: 503,
    Code.SIGNATURE_INVALID: 422,
    Code.DECRYPT_FAILED: 422,
    Code.SENDER_MISMATCH: 422,
    Code.MEMBER_REVOKED: 403,
    Code.EXPIRED: 422,
    Code.POLICY_SIGNATURE_INVALID: 422,
    Code.POLICY_VERSION_REGRESSION: 409,
    Code.CONFIG_INVALID: 500,
    Code.CERTIFICATE_INVALID: 401,
    Code.INTERNAL: 500,
}

TITLES: dict[Code, str] = {
    Code.BAD_REQUEST: "Bad request",
    Code.MALFORMED_JSON: "Malformed JSON",
    Code.INVALID_ENVELOPE: "Invalid envelope",
    Code.UNKNOWN_RECIPIENT: "Unknown recipient",
    Code.UNKNOWN_TYPE: "Unknown message type",
    Code.INVALID_PAYLOAD: "Payload does not conform to its standard",
    Code.POLICY_DENIED: "Denied by the network policy",
    Code.PAYLOAD_TOO_LARGE: "Payload too large",
    Code.UNAUTHENTICATED: "Client certificate required",
    Code.FORBIDDEN: "Forbidden",
    Code.NOT_FOUND: "Not found",
    Code.CONFLICT: "Conflict",
    Code.BACKBONE_UNAVAILABLE: "Backbone unavailable",
    Code.SIGNATURE_INVALID: "Signature invalid",
    Code.DECRYPT_FAILED: "Message could not be decrypted",
    Code.SENDER_MISMATCH: "Sender does not match the backbone subject",
    Code.MEMBER_REVOKED: "Member revoked or suspended",
    Code.EXPIRED: "Message expired",
    Code.POLICY_SIGNATURE_INVALID: "Policy set signature invalid",
    Code.POLICY_VERSION_REGRESSION: "Policy set version not newer",
    Code.CONFIG_INVALID: "Configuration invalid",
    Code.CERTIFICATE_INVALID: "Certificate invalid",
    Code.INTERNAL: "Internal error",
}

PROBLEM_TYPE_PREFIX = "urn:psvn:problem:"


class Violation(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One broken rule: where (JSON pointer, or SEG-n for HL7 v2), which rule, what was expected."""

    path: str
    rule: str
    message: str
    expected: str | None = None


class PsvnError(Exception):
    """The one error type. Carries data, not just text, so callers can act on it."""

    def __init__(
        self,
        code: Code,
        detail: str,
        *,
        field: str | None = None,
        rule: str | None = None,
        message_id: str | None = None,
        violations: list[Violation] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.field = field
        self.rule = rule
        self.message_id = message_id
        self.violations = list(violations or [])
        self.extra = dict(extra or {})

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]

    def __repr__(self) -> str:
        return f"PsvnError({self.code.value!r}, {self.detail!r}, field={self.field!r})"

    def to_problem(self, *, instance: str | None = None) -> dict[str, Any]:
        """RFC 9457 problem details, with psvn's extension members."""
        problem: dict[str, Any] = {
            "type": PROBLEM_TYPE_PREFIX + self.code.value,
            "title": TITLES[self.code],
            "status": self.status,
            "detail": self.detail,
            "code": self.code.value,
        }
        if instance:
            problem["instance"] = instance
        for key in ("field", "rule", "message_id"):
            value = getattr(self, key)
            if value is not None:
                problem[key] = value
        if self.violations:
            problem["violations"] = [msgspec.to_builtins(v) for v in self.violations]
        problem.update(self.extra)
        return problem

    @classmethod
    def from_problem(cls, problem: dict[str, Any]) -> PsvnError:
        """Rebuild an error from a problem document (the CLI and tests use this)."""
        try:
            code = Code(problem.get("code", "internal"))
        except ValueError:
            code = Code.INTERNAL
        violations = [
            msgspec.convert(v, Violation) for v in problem.get("violations", []) or []
        ]
        return cls(
            code,
            str(problem.get("detail", "")),
            field=problem.get("field"),
            rule=problem.get("rule"),
            message_id=problem.get("message_id"),
            violations=violations,
        )
