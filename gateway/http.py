"""HTTP views: parse and authenticate, call the Gateway, render JSON or RFC 9457 problems.

Local systems authenticate with their client certificate (mutual TLS); the certificate's SAN
URI ``urn:psvn:system:<org>/<system>`` must name this gateway's organisation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar, cast

import msgspec
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from psvn.certs.tls import peer_uris
from psvn.core import addresses
from psvn.core.errors import Code, PsvnError
from psvn.gateway import openapi
from psvn.gateway.openapi import (
    Accepted,
    AckResult,
    BatchAccepted,
    BatchRequest,
    CatalogueView,
    Health,
    InboxItem,
    InboxPage,
    Liveness,
    MessageStatus,
    PolicyRef,
    Publication,
    ReceivedMessage,
    StatusPage,
    SubscriptionPage,
    cursor_error,
    decode_cursor,
    encode_cursor,
)
from psvn.gateway.service import Gateway
from psvn.gateway.store import InRecord, OutRecord
from psvn.protocol.envelope import (
    FeedRequest,
    RawFeedRequest,
    RawSendRequest,
    SendRequest,
    SubscribeRequest,
    check_free_id,
    new_message_id,
)

log = structlog.get_logger("psvn.gateway.http")

GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
PROBLEM = "application/problem+json"
# payloads stay the bytes as sent (a Raw*Request is the request with its payload undecoded)
_send_decoder = cast("msgspec.json.Decoder[SendRequest]", msgspec.json.Decoder(RawSendRequest))
_feed_decoder = cast("msgspec.json.Decoder[FeedRequest]", msgspec.json.Decoder(RawFeedRequest))
_subscribe_decoder = msgspec.json.Decoder(SubscribeRequest)
T = TypeVar("T")


def problem_response(exc: PsvnError, request: web.Request) -> web.Response:
    """Every refusal is logged (ids and rules, never bodies) and answered as RFC 9457."""
    log.info("request refused", method=request.method, path=request.path, status=exc.status, code=exc.code.value,
             field=exc.field, rule=exc.rule, message_id=exc.message_id)
    return web.Response(status=exc.status, content_type=PROBLEM,
                        body=msgspec.json.encode(exc.to_problem(instance=request.path)))


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, content_type="application/json", body=msgspec.json.encode(data),
                        headers=headers)


@web.middleware
async def problems(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except PsvnError as exc:
        return problem_response(exc, request)
    except web.HTTPRequestEntityTooLarge:
        gw = request.app[GATEWAY_KEY]
        too_large = PsvnError(Code.PAYLOAD_TOO_LARGE, f"request body is larger than "
                              f"{gw.config.gateway.max_body_bytes} bytes", field="body", rule="max-body-bytes")
        if request.method == "POST" and request.path in ("/v1/messages", BATCH_PATH):
            try:  # audited only for a caller that is one of this gateway's systems
                system = system_of(request)
            except PsvnError:
                return problem_response(too_large, request)
            await gw.reject_request(too_large, system=system)
        return problem_response(too_large, request)
    except web.HTTPNotFound:
        return problem_response(PsvnError(Code.NOT_FOUND, f"no such endpoint {request.path}", rule="route"), request)
    except web.HTTPMethodNotAllowed as exc:
        return problem_response(PsvnError(Code.BAD_REQUEST, f"method {exc.method} not allowed here",
                                          rule="method"), request)
    except Exception:
        return await internal_error(request)


SENDS = ("/v1/messages", "/v1/feeds/")


async def internal_error(request: web.Request) -> web.Response:
    """An unhandled exception: log its traceback under a fresh id and answer 500 carrying that id,
    so the caller's problem document leads to the one log line. A send that failed this way is
    refused like any other (metric, audit record), since a message id was promised to it.
    Called from inside the ``except`` block (``log.exception`` reads the current exception)."""
    gw = request.app[GATEWAY_KEY]
    request_id = new_message_id()
    log.exception("unhandled error; answered 500", request_id=request_id, message_id=request_id,
                  method=request.method, path=request.path)
    error = PsvnError(Code.INTERNAL, f"internal error; see the gateway log for request {request_id}",
                      rule="internal", message_id=request_id, extra={"request_id": request_id})
    if request.method == "POST" and request.path.startswith(SENDS):
        with contextlib.suppress(Exception):  # the answer must not depend on the audit
            await gw.reject_request(error, system=system_of(request))
    return problem_response(error, request)


def system_of(request: web.Request) -> str:
    """The calling local system's name, from its verified client certificate."""
    gw = request.app[GATEWAY_KEY]
    peercert = request.transport.get_extra_info("peercert") if request.transport else None
    if not peercert:
        raise PsvnError(Code.UNAUTHENTICATED, "a client certificate issued by the network CA is required",
                        rule="mutual-tls")
    for uri in peer_uris(peercert):
        parsed = addresses.parse_system_uri(uri)
        if parsed is None:
            continue
        org, system = parsed
        if org != gw.org:
            raise PsvnError(Code.FORBIDDEN, f"certificate names a system of {org}, this gateway serves {gw.org}",
                            rule="system-org")
        return system
    raise PsvnError(Code.FORBIDDEN, "client certificate does not name a local system (urn:psvn:system:...)",
                    rule="system-certificate")


def out_view(rec: OutRecord) -> MessageStatus:
    """A sent message's record as the API shows it (the request hash and anything else the
    store keeps for itself stay inside)."""
    return msgspec.convert(msgspec.to_builtins(rec), MessageStatus)


def in_view(rec: InRecord) -> InboxItem:
    """A mailbox entry as the API shows it: ``from`` the sender, no stream sequence."""
    view = msgspec.to_builtins(rec)
    view["from"] = view.pop("source")
    return msgspec.convert(view, InboxItem)


async def decode_body(request: web.Request, decoder: msgspec.json.Decoder[T], system: str) -> T:
    """A JSON request body as a typed request; every refusal is a problem with a message id and
    an audit record (``Gateway.reject_request``), never a 500."""
    return await decode_json(request.app[GATEWAY_KEY], await request.read(), decoder, system)


async def decode_json(gw: Gateway, body: bytes, decoder: msgspec.json.Decoder[T], system: str) -> T:
    """JSON bytes (a request body, or one item of a batch) as a typed request, refused the same
    way wherever they came from: a batch item gets the very problem its single send would."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        field = msg.split("`$.", 1)[1].rstrip("`") if "`$." in msg else None
        missing = msg.split("`")[1] if "missing required field" in msg else None
        raise await gw.reject_request(PsvnError(Code.INVALID_ENVELOPE, msg, field=missing or field,
                                                rule="request-schema"), system=system) from None
    except msgspec.DecodeError as exc:
        raise await gw.reject_request(PsvnError(Code.MALFORMED_JSON, f"request body is not JSON: {exc}",
                                                field="body", rule="json-syntax"), system=system) from None
    except RecursionError:  # nesting deeper than the decoder (or the validators after it) can walk
        raise await gw.reject_request(PsvnError(
            Code.INVALID_PAYLOAD, "request body nests too deeply", field="body", rule="max-depth"),
            system=system) from None


K = TypeVar("K", SendRequest, FeedRequest)


async def with_header_key(request: web.Request, req: K, system: str) -> K:
    """An ``Idempotency-Key`` header stands in for the body's ``idempotency_key`` if it has none.

    The header is checked first, by the same rule as the body's key, and a bad one is refused
    naming the header (with a message id and an audit record, like every refused send): aiohttp
    hands on bytes that are not UTF-8 as surrogates, which must never reach hashing or state."""
    header_key = request.headers.get("Idempotency-Key")
    if header_key is not None:
        try:
            check_free_id(header_key, "Idempotency-Key")
        except PsvnError as exc:
            raise await request.app[GATEWAY_KEY].reject_request(exc, system=system) from None
    if header_key and not req.idempotency_key:
        return msgspec.structs.replace(req, idempotency_key=header_key)
    return req


async def post_message(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    system = system_of(request)
    req = await with_header_key(request, await decode_body(request, _send_decoder, system), system)
    rec, created = await gw.send(req, system=system)
    return json_response(accepted_view(gw, rec), status=202 if created else 200,
                         headers={"Location": f"/v1/messages/{rec.id}"})


_batch_decoder = msgspec.json.Decoder(BatchRequest)
BATCH_PATH = "/v1/messages:batch"


def accepted_view(gw: Gateway, rec: OutRecord) -> Accepted:
    """What an accepted send answers (the 202 body)."""
    return Accepted(id=rec.id, status=rec.status, policy=PolicyRef(version=gw.policy.version, rule_ids=rec.rule_ids))


async def post_batch(request: web.Request) -> web.Response:
    """Many sends in one request: 200 with one result per item, in order, each the accepted
    message or the RFC 9457 problem its single send would have answered (207-style). Only what
    concerns the whole request (not JSON, no ``messages`` list, too many items, too large, not
    a system of ours) is one problem for the request; every such refusal is audited too."""
    gw = request.app[GATEWAY_KEY]
    system = system_of(request)
    if request.headers.get("Idempotency-Key") is not None:
        raise await gw.reject_request(PsvnError(
            Code.BAD_REQUEST, "a batch has no Idempotency-Key header: give each message its own idempotency_key",
            field="Idempotency-Key", rule="batch-idempotency"), system=system)
    batch = await decode_body(request, _batch_decoder, system)
    limit = gw.config.gateway.max_batch_items
    if len(batch.messages) > limit:
        raise await gw.reject_request(PsvnError(
            Code.PAYLOAD_TOO_LARGE, f"a batch holds at most {limit} messages, this one {len(batch.messages)}: "
            "split it", field="messages", rule="max-batch-items",
            extra={"max_items": limit, "items": len(batch.messages)}), system=system)
    items: list[SendRequest | PsvnError] = []
    for raw in batch.messages:
        item: SendRequest | PsvnError
        try:
            item = await decode_json(gw, bytes(raw), _send_decoder, system)
        except PsvnError as exc:  # refused and audited by decode_json
            item = exc
        items.append(item)
    results: list[dict[str, Any] | BatchAccepted] = []
    for i, outcome in enumerate(await gw.send_batch(items, system=system)):
        if isinstance(outcome, PsvnError):
            results.append(outcome.to_problem(instance=f"{request.path}#/messages/{i}"))
        else:
            rec, created = outcome
            results.append(BatchAccepted(id=rec.id, status=rec.status, duplicate=not created,
                                         policy=PolicyRef(version=gw.policy.version, rule_ids=rec.rule_ids)))
    return json_response({"results": results})


async def get_message(request: web.Request) -> web.Response:
    system = system_of(request)
    return json_response(out_view(await request.app[GATEWAY_KEY].status(request.match_info["id"], system=system)))


MAX_PAGE = 1000


def page_limit(request: web.Request) -> int:
    """The ``limit`` query parameter: 1..1000, 100 if absent."""
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise PsvnError(Code.BAD_REQUEST, "limit must be a whole number", field="limit", rule="integer") from None
    if not 1 <= limit <= MAX_PAGE:
        raise PsvnError(Code.BAD_REQUEST, f"limit must be between 1 and {MAX_PAGE}", field="limit", rule="range")
    return limit


def next_link(request: web.Request, cursor: str | None, full: bool) -> dict[str, str]:
    """A ``Link: <...>; rel="next"`` header when the page was full (more may follow)."""
    if cursor is None or not full:
        return {}
    url = request.rel_url.update_query({"cursor": cursor})
    return {"Link": f'<{url}>; rel="next"'}


INBOX_CURSOR = "inbox"
MESSAGES_CURSOR = "messages"


def cursor_position(kind: str, cursor: str | None) -> int:
    """Where a list's cursor says to continue after (0: from the start); a 400 naming ``cursor``
    for anything that is not this list's cursor."""
    if cursor is None:
        return 0
    position = decode_cursor(kind, cursor)
    if not position.isdigit():
        raise cursor_error(kind)
    return int(position)


async def list_messages(request: web.Request) -> web.Response:
    """What this system sent, in the order of each message's last status change, a page at a
    time: a message that changes after the cursor comes again with its new status, so a caller
    polling with the last ``next`` sees every change."""
    system = system_of(request)
    limit = page_limit(request)
    cursor = request.query.get("cursor")
    found = await request.app[GATEWAY_KEY].sent(system=system, status=request.query.get("status"),
                                                after=cursor_position(MESSAGES_CURSOR, cursor), limit=limit)
    nxt = encode_cursor(MESSAGES_CURSOR, found[-1][0]) if found else cursor
    return json_response(StatusPage(messages=[out_view(rec) for _seq, rec in found], next=nxt),
                         headers=next_link(request, nxt, len(found) == limit))


async def list_inbox(request: web.Request) -> web.Response:
    """Mail in the order it was filed, a page at a time: ``next`` continues after the last item
    (its position, opaque to callers), whatever the filters; mail filed later, even mail that
    arrived earlier and was redelivered, always comes after the cursor."""
    system = system_of(request)
    q = request.query
    limit = page_limit(request)
    cursor = q.get("cursor")
    after = cursor_position(INBOX_CURSOR, cursor)
    items = await request.app[GATEWAY_KEY].inbox(mailbox=q.get("mailbox"), status=q.get("status"), limit=limit,
                                                 system=system, after=after)
    gw = request.app[GATEWAY_KEY]
    nxt = encode_cursor(INBOX_CURSOR, gw.inbox_position(items[-1])) if items else cursor
    return json_response(InboxPage(messages=[in_view(r) for r in items], next=nxt),
                         headers=next_link(request, nxt, len(items) == limit))


async def get_inbox_item(request: web.Request) -> web.Response:
    opened = await request.app[GATEWAY_KEY].get(request.match_info["id"], system=system_of(request))
    payload: Any
    if opened.envelope.datacontenttype.endswith("json"):
        payload = msgspec.json.decode(opened.payload)
    else:
        payload = opened.payload.decode()
    return json_response(ReceivedMessage(envelope=opened.envelope, payload=payload, status=opened.record.status))


async def ack_inbox_item(request: web.Request) -> web.Response:
    rec = await request.app[GATEWAY_KEY].ack(request.match_info["id"], system=system_of(request))
    return json_response(AckResult(id=rec.id, status=rec.status))


async def catalogue(request: web.Request) -> web.Response:
    system_of(request)
    snap = request.app[GATEWAY_KEY].snapshot
    return json_response(CatalogueView(policy_version=snap.version, types=list(snap.catalogue)))


async def livez(request: web.Request) -> web.Response:
    """Liveness: the process is up and serving HTTP (restart it only if this fails)."""
    return json_response(Liveness(status="alive", org=request.app[GATEWAY_KEY].org))


async def healthz(request: web.Request) -> web.Response:
    """Readiness (``/healthz`` and ``/readyz``): 200 only when the gateway can do its work, else
    503 with a problem document naming each thing that is wrong (``problems``), so a load
    balancer stops sending and an operator sees why."""
    gw = request.app[GATEWAY_KEY]
    backbone = "connected" if gw.connected else "disconnected"
    problems = gw.readiness()
    refused = gw.refused_values
    if not problems:
        # Refused backbone values (registry, policy set) do not make the gateway unready: it serves
        # on the last good values, and a 503 would let whoever can write the backbone take every
        # gateway out of service. They turn the status to "warning" with the refusals listed, so
        # monitoring sees the tampering (and psvn_backbone_values_refused_total counts it).
        return json_response(Health(status="warning" if refused else "ok", org=gw.org,
                                    policy_version=gw.policy.version, backbone=backbone,
                                    refused_backbone_values=refused))
    return problem_response(PsvnError(
        Code.BACKBONE_UNAVAILABLE, "the gateway is not ready: " + "; ".join(problems),
        field=problems[0].split(":", 1)[0], rule="readiness",
        extra={"health": "degraded", "problems": problems, "org": gw.org, "policy_version": gw.policy.version,
               "backbone": backbone, "refused_backbone_values": refused}), request)


async def metrics(request: web.Request) -> web.Response:
    system_of(request)
    gw = request.app[GATEWAY_KEY]
    resp = web.Response(body=generate_latest(gw.metrics.registry))
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp


async def publish_feed(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    system = system_of(request)
    req = await with_header_key(request, await decode_body(request, _feed_decoder, system), system)
    published = await gw.publish(request.match_info["topic"], req, system=system)
    return json_response(msgspec.convert(published, Publication), status=202)


async def put_subscription(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    system = system_of(request)
    req = await decode_body(request, _subscribe_decoder, system)
    sub = await gw.subscribe(request.match_info["topic"], req, system=system)
    return json_response(sub)


async def delete_subscription(request: web.Request) -> web.Response:
    system = system_of(request)
    await request.app[GATEWAY_KEY].unsubscribe(request.match_info["topic"], system=system)
    return web.Response(status=204)


SUBSCRIPTIONS_CURSOR = "subscriptions"


async def list_subscriptions(request: web.Request) -> web.Response:
    """This member's subscriptions by topic, a page at a time (``next`` continues after the
    last topic)."""
    system_of(request)
    gw = request.app[GATEWAY_KEY]
    limit = page_limit(request)
    cursor = request.query.get("cursor")
    after = decode_cursor(SUBSCRIPTIONS_CURSOR, cursor) if cursor is not None else ""
    subs = [s for s in gw.feeds.of(gw.org) if s.topic > after][:limit]
    nxt = encode_cursor(SUBSCRIPTIONS_CURSOR, subs[-1].topic) if subs else cursor
    return json_response(SubscriptionPage(subscriptions=subs, next=nxt),
                         headers=next_link(request, nxt, len(subs) == limit))


_DOCUMENT: bytes | None = None


async def openapi_document(request: web.Request) -> web.Response:
    """This API's OpenAPI 3.1 document (the one committed as docs/openapi.json)."""
    global _DOCUMENT
    if _DOCUMENT is None:
        _DOCUMENT = openapi.render().encode()
    return web.Response(body=_DOCUMENT, content_type="application/json")


def refuse_revoked(is_revoked: Callable[[int], bool]) -> Any:
    """A middleware that refuses every request whose connection's client certificate is on the
    current CRL, and closes that connection. The TLS handshake checks the CRL only when a
    connection opens; without this, a keep-alive connection made before a revocation went on
    being served."""

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        peercert = request.transport.get_extra_info("peercert") if request.transport else None
        serial = peercert.get("serialNumber") if peercert else None
        if serial and is_revoked(int(serial, 16)):
            resp = problem_response(PsvnError(
                Code.CERTIFICATE_INVALID, "the client certificate of this connection has been revoked; "
                "the connection is closed", field="client certificate", rule="certificate-revoked"), request)
            resp.force_close()
            return resp
        return await handler(request)

    return guard


def make_app(gw: Gateway, *, is_revoked: Callable[[int], bool] | None = None) -> web.Application:
    """The HTTP app; ``is_revoked`` (a serial number -> revoked now?) guards open connections."""
    middlewares: list[Any] = [problems]
    if is_revoked is not None:
        middlewares.insert(0, refuse_revoked(is_revoked))
    app = web.Application(middlewares=middlewares, client_max_size=gw.config.gateway.max_body_bytes)
    app[GATEWAY_KEY] = gw
    app.router.add_post("/v1/messages", post_message)
    app.router.add_post(BATCH_PATH, post_batch)
    app.router.add_get("/v1/messages", list_messages)
    app.router.add_get("/v1/messages/{id}", get_message)
    app.router.add_get("/v1/inbox", list_inbox)
    app.router.add_get("/v1/inbox/{id}", get_inbox_item)
    app.router.add_post("/v1/inbox/{id}/ack", ack_inbox_item)
    app.router.add_get("/v1/catalogue", catalogue)
    app.router.add_post("/v1/feeds/{topic}", publish_feed)
    app.router.add_get("/v1/subscriptions", list_subscriptions)
    app.router.add_put("/v1/subscriptions/{topic}", put_subscription)
    app.router.add_delete("/v1/subscriptions/{topic}", delete_subscription)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)
    app.router.add_get("/livez", livez)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/openapi.json", openapi_document)
    return app
