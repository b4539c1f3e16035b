"""The gateway's HTTP API as data: the response models the views encode, and the OpenAPI 3.1
document generated from them and from the request models the views decode.

Every JSON body the gateway reads or writes is one of these msgspec types (requests come from
:mod:`psvn.protocol.envelope`, the catalogue entry from :mod:`policies.catalogue`), so the schemas in the
document are the very types the code uses (``msgspec.json.schema_components``): the document
cannot describe a field the gateway does not have. ``docs/openapi.json`` is the committed copy;
regenerate it with ``python -m psvn.gateway.openapi > docs/openapi.json``.
"""

from __future__ import annotations

import base64
import binascii
import sys
from dataclasses import dataclass, field
from typing import Any

import msgspec

from psvn.core.errors import Code, PsvnError, Violation
from psvn.gateway.feeds import Subscription
from psvn.gateway.store import MessageStatus
from psvn.policies.catalogue import CatalogueEntry
from psvn.protocol.envelope import Envelope, FeedRequest, SendRequest, SubscribeRequest

API_VERSION = "1.0.0"
PROBLEM = "application/problem+json"
REF = "#/components/schemas/{name}"


# -- response models ----------------------------------------------------------------------------
class PolicyRef(msgspec.Struct, kw_only=True):
    """The policy set version that allowed a message, and the rules that decided."""

    version: int
    rule_ids: list[str]


class Accepted(msgspec.Struct, kw_only=True):
    """``POST /v1/messages``: the gateway accepted the message (202, or 200 for a repeat of an
    idempotency key it already accepted: same id). It answers once the backbone has stored the
    message; ``status`` is what its record says then, ``accepted``, and its first receipt moves
    it on (writing the ``sent`` step with it; alone, if no receipt comes within a second)."""

    id: str
    status: str
    policy: PolicyRef


class BatchAccepted(Accepted, kw_only=True):
    """One accepted item of a batch; ``duplicate`` as the 200 of a single send."""

    duplicate: bool


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem document with psvn's extension members (``code`` never changes
    meaning; ``field``, ``rule`` and ``message_id`` say where, which rule and which message).
    Further members may follow (e.g. ``request_id``, ``problems``)."""

    type: str
    title: str
    status: int
    detail: str
    code: Code
    instance: str | None = None
    field: str | None = None
    rule: str | None = None
    message_id: str | None = None
    violations: list[Violation] | None = None


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/messages:batch``. Items stay raw JSON so that each is decoded alone: one
    malformed item is that item's problem, not the batch's (each is a ``SendRequest``)."""

    messages: list[msgspec.Raw]


class BatchResponse(msgspec.Struct, kw_only=True):
    """One result per item, in order: the accepted message or the problem its single send
    would have answered (``BatchAccepted`` or ``Problem``)."""

    results: list[msgspec.Raw]


class InboxItem(msgspec.Struct, kw_only=True):
    """A message delivered to this member (metadata only); ``from`` is the sending
    organisation's address, proven by its signature."""

    id: str
    sender: str = msgspec.field(name="from")
    to: str
    type: str
    time: str
    status: str
    size: int
    classification: str = "OFFICIAL"
    purpose: str = ""
    correlation_id: str | None = None
    mailbox: str | None = None
    reason: str | None = None
    rule: str | None = None
    received: str = ""
    retain_until: str | None = None
    deleted: str | None = None


class InboxPage(msgspec.Struct, kw_only=True):
    """Mail in arrival order. ``next`` is the opaque cursor to continue after the last item
    (pass it as ``cursor``); it is null only when nothing was returned and no cursor was given.
    A page shorter than ``limit`` is the end for now (later mail follows the same cursor)."""

    messages: list[InboxItem]
    next: str | None = None


class StatusPage(msgspec.Struct, kw_only=True):
    """Sent messages in the order of their last status change. ``next`` is the opaque cursor to
    continue after the last item (pass it as ``cursor``); a message that changes after it comes
    again with its new status, so polling with the last ``next`` sees every change."""

    messages: list[MessageStatus]
    next: str | None = None


class ReceivedMessage(msgspec.Struct, kw_only=True):
    """One received message: its verified envelope, the payload (JSON, or text for text
    standards) and its status here."""

    envelope: Envelope
    payload: Any
    status: str


class AckResult(msgspec.Struct, kw_only=True):
    id: str
    status: str


class CatalogueView(msgspec.Struct, kw_only=True):
    policy_version: int
    types: list[CatalogueEntry]


class Delivery(msgspec.Struct, kw_only=True):
    to: str
    id: str
    status: str


class Refusal(msgspec.Struct, kw_only=True):
    to: str
    code: str
    rule: str | None
    rule_ids: list[str]
    message_id: str | None


class Publication(msgspec.Struct, kw_only=True):
    """What publishing one event did: a delivery per allowed subscriber, a refusal per other."""

    event: str
    topic: str
    deliveries: list[Delivery]
    refused: list[Refusal]


class SubscriptionPage(msgspec.Struct, kw_only=True):
    """This member's subscriptions by topic; ``next`` as in ``InboxPage``."""

    subscriptions: list[Subscription]
    next: str | None = None


class Health(msgspec.Struct, kw_only=True):
    status: str
    org: str
    policy_version: int
    backbone: str
    refused_backbone_values: list[dict[str, str]]


class Liveness(msgspec.Struct, kw_only=True):
    status: str
    org: str


# -- cursors ------------------------------------------------------------------------------------
def encode_cursor(kind: str, position: str | int) -> str:
    """An opaque cursor: which list it belongs to and where to continue after."""
    return base64.urlsafe_b64encode(f"{kind}:{position}".encode()).decode().rstrip("=")


def cursor_error(kind: str) -> PsvnError:
    """The 400 for a cursor that is not one of list ``kind``'s (one text for every list)."""
    return PsvnError(Code.BAD_REQUEST, f"cursor is not one of this gateway's {kind} cursors: pass the 'next' "
                     "value of the previous page unchanged", field="cursor", rule="cursor")


def decode_cursor(kind: str, cursor: str) -> str:
    """The position in a cursor of list ``kind``; a clear 400 naming ``cursor`` otherwise."""
    bad = cursor_error(kind)
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError):
        raise bad from None
    got, sep, position = text.partition(":")
    if got != kind or not sep or not position:
        raise bad
    return position


# -- the document -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    responses: dict[int, type | None]  # success statuses -> body model (None: no body)
    errors: tuple[int, ...]
    request: type | None = None
    params: list[dict[str, Any]] = field(default_factory=list)
    tag: str = "messages"
    headers: dict[int, dict[str, Any]] = field(default_factory=dict)
    content_type: str = "application/json"
    authenticated: bool = True


def _param(name: str, where: str, schema: dict[str, Any], description: str, *, required: bool = False
           ) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema,
            "description": description}


ID = _param("id", "path", {"type": "string", "minLength": 1}, "the message id")
TOPIC = _param("topic", "path", {"type": "string", "minLength": 1}, "a feed topic, e.g. sensors.brighton.air")
IDEMPOTENCY = _param("Idempotency-Key", "header", {"type": "string"},
                     "stands in for the body's idempotency_key when it has none")
LIMIT = _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
               "at most this many items")
CURSOR = _param("cursor", "query", {"type": "string"},
                "continue after the previous page: its 'next' value, unchanged")
LINK = {"Link": {"description": 'rel="next": the next page, when this one is full',
                 "schema": {"type": "string"}}}
LOCATION = {"Location": {"description": "where the message's status is", "schema": {"type": "string"}}}
# every authenticated view may answer: no/foreign certificate (401/403), and the backbone gone (503)
AUTH = (401, 403)

OPERATIONS: tuple[Operation, ...] = (
    Operation("post", "/v1/messages", "sendMessage", "Send one message", {202: Accepted, 200: Accepted},
              (400, *AUTH, 404, 409, 413, 422, 503), request=SendRequest, params=[IDEMPOTENCY],
              headers={202: LOCATION, 200: LOCATION}),
    Operation("post", "/v1/messages:batch", "sendBatch", "Send many messages, one result per item",
              {200: BatchResponse}, (400, *AUTH, 413, 422, 503), request=BatchRequest),
    Operation("get", "/v1/messages", "listMessages", "What this system sent, in the order of each last change",
              {200: StatusPage}, (400, *AUTH), headers={200: LINK}, params=[
                  _param("status", "query", {"type": "string"}, "only messages whose status is this"),
                  LIMIT, CURSOR]),
    Operation("get", "/v1/messages/{id}", "getMessageStatus", "A sent message's status and history",
              {200: MessageStatus}, (400, *AUTH, 404), params=[ID]),
    Operation("get", "/v1/inbox", "listInbox", "Received mail in arrival order, a page at a time",
              {200: InboxPage}, (400, *AUTH), tag="inbox", headers={200: LINK}, params=[
                  _param("mailbox", "query", {"type": "string"}, "only this mailbox"),
                  _param("status", "query", {"type": "string"},
                         "only this status (default: delivered, i.e. not yet acknowledged)"),
                  LIMIT, CURSOR]),
    Operation("get", "/v1/inbox/{id}", "getInboxMessage", "Download one received message",
              {200: ReceivedMessage}, (400, *AUTH, 404, 422, 503), params=[ID], tag="inbox"),
    Operation("post", "/v1/inbox/{id}/ack", "ackInboxMessage", "Acknowledge a received message (repeatable)",
              {200: AckResult}, (400, *AUTH, 404, 409, 503), params=[ID], tag="inbox"),
    Operation("get", "/v1/catalogue", "getCatalogue", "The message types this network carries",
              {200: CatalogueView}, AUTH, tag="network"),
    Operation("post", "/v1/feeds/{topic}", "publishEvent", "Publish one event to a feed's subscribers",
              {202: Publication}, (400, *AUTH, 409, 413, 422, 503), request=FeedRequest,
              params=[TOPIC, IDEMPOTENCY], tag="feeds"),
    Operation("get", "/v1/subscriptions", "listSubscriptions", "This member's feed subscriptions, by topic",
              {200: SubscriptionPage}, (400, *AUTH), params=[LIMIT, CURSOR], tag="feeds", headers={200: LINK}),
    Operation("put", "/v1/subscriptions/{topic}", "subscribe", "Subscribe this member to a feed topic",
              {200: Subscription}, (400, *AUTH, 413, 422, 503), request=SubscribeRequest, params=[TOPIC],
              tag="feeds"),
    Operation("delete", "/v1/subscriptions/{topic}", "unsubscribe", "End this member's subscription",
              {204: None}, (400, *AUTH, 404, 422, 503), params=[TOPIC], tag="feeds"),
    Operation("get", "/healthz", "health", "Readiness: 200 when the gateway can work, else 503 naming why",
              {200: Health}, (503,), tag="operations", authenticated=False),
    Operation("get", "/readyz", "ready", "Readiness (same as /healthz)", {200: Health}, (503,), tag="operations",
              authenticated=False),
    Operation("get", "/livez", "live", "Liveness: the process serves HTTP", {200: Liveness}, (), tag="operations",
              authenticated=False),
    Operation("get", "/v1/openapi.json", "openapi", "This document", {200: None}, (), tag="operations",
              authenticated=False),
    Operation("get", "/metrics", "metrics", "Prometheus metrics (text exposition format)", {200: None}, AUTH,
              tag="operations"),
)

_STATUS_TEXT = {200: "OK", 202: "Accepted", 204: "No content", 400: "Bad request", 401: "Client certificate "
                "refused", 403: "Forbidden (or denied by the policy)", 404: "Not found", 409: "Conflict",
                413: "Too large", 422: "Unprocessable (invalid envelope, address, type or payload)",
                503: "Backbone unavailable / not ready"}


def _schema_types() -> list[Any]:
    models: list[Any] = [Problem]
    for op in OPERATIONS:
        if op.request is not None:
            models.append(op.request)
        models.extend(m for m in op.responses.values() if m is not None)
    models.extend([SendRequest, BatchAccepted])
    return list(dict.fromkeys(models))


def build() -> dict[str, Any]:
    """The OpenAPI 3.1 document for this gateway version."""
    types = _schema_types()
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    ref = {t: s for t, s in zip(types, schemas, strict=True)}
    # a batch item is a SendRequest; a batch result the accepted message or its problem
    components["BatchRequest"]["properties"]["messages"]["items"] = ref[SendRequest]
    components["BatchResponse"]["properties"]["results"]["items"] = {"anyOf": [ref[BatchAccepted], ref[Problem]]}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {}
        for status, model in op.responses.items():
            resp: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "OK")}
            if model is not None:
                resp["content"] = {op.content_type: {"schema": ref[model]}}
            elif op.path == "/v1/openapi.json":
                resp["content"] = {"application/json": {"schema": {"type": "object"}}}
            elif op.path == "/metrics":
                resp["content"] = {"text/plain": {"schema": {"type": "string"}}}
            if status in op.headers:
                resp["headers"] = op.headers[status]
            responses[str(status)] = resp
        for status in sorted({*op.errors, 500}):
            responses[str(status)] = {"description": _STATUS_TEXT.get(status, "Internal error"),
                                      "content": {PROBLEM: {"schema": ref[Problem]}}}
        item: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag],
                                "responses": responses}
        if op.params:
            item["parameters"] = op.params
        if op.request is not None:
            item["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref[op.request]}}}
        if not op.authenticated:
            item["security"] = []
        paths.setdefault(op.path, {})[op.method] = item
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "psvn gateway API",
            "version": API_VERSION,
            "summary": "A member organisation's gateway to the Public Services virtual Network",
            "description": "Local systems authenticate with their client certificate (mutual TLS): its SAN URI "
                           "urn:psvn:system:<org>/<system> must name this gateway's organisation. Every refusal "
                           "is an RFC 9457 problem document (application/problem+json) whose `code` never "
                           "changes meaning. Lists are paged with an opaque `cursor` (the previous page's "
                           "`next`).",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "https://localhost:8443", "description": "a gateway (gateway.listen_port)"}],
        "security": [{"mutualTLS": []}],
        "tags": [{"name": t} for t in dict.fromkeys(op.tag for op in OPERATIONS)],
        "paths": paths,
        "components": {"schemas": dict(sorted(components.items())),
                       "securitySchemes": {"mutualTLS": {"type": "mutualTLS", "description":
                                                         "a system certificate issued by the network CA"}}},
    }


def render() -> str:
    """The document as committed in ``docs/openapi.json`` (stable key order, trailing newline)."""
    import json

    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
