"""What the sync and async clients share, with no I/O: TLS set-up, the API calls as data,
reading responses, and when and how long to wait before a retry.

Keeping this sans-IO means :class:`~psvn_client.Client` and :class:`~psvn_client.AsyncClient`
differ only in ``sleep`` and ``await``, and behave identically.
"""

from __future__ import annotations

import json
import os
import random
import ssl
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from psvn_client.errors import (
    Code,
    ConnectionError,
    DeliveryFailed,
    ProtocolError,
    PsvnError,
    RequestTimeout,
    error_from_problem,
)
from psvn_client.models import (
    PROGRESS,
    Ack,
    BatchResult,
    Health,
    InboxItem,
    Message,
    MessageStatus,
    MessageType,
    Page,
    Publication,
    ReceivedMessage,
    SendResult,
    Status,
    Subscription,
)

T = TypeVar("T")
StrPath = str | os.PathLike[str]

#: Statuses that mean "try again shortly" when the request is safe to repeat.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Longest pause between two attempts, even if the gateway's Retry-After asks for more.
MAX_RETRY_DELAY = 5.0


def ssl_context(
    *,
    ca: StrPath | None,
    cert: StrPath | None,
    key: StrPath | None,
    key_password: str | None = None,
) -> ssl.SSLContext:
    """A client TLS context: verify the gateway against ``ca`` (the network CA), present the
    system's certificate, TLS 1.2 or newer. Bad files fail here, not at the first request."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.fspath(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key) if key is not None else None, key_password)
    elif key is not None:
        raise ValueError("key given without cert")
    return ctx


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One API request. ``safe`` means repeating it cannot do anything twice (GETs, ack, and a
    send with an idempotency key), so transient failures may be retried."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, str | int] | None = None
    json: Any = None
    #: The body already encoded (a batch, whose items were encoded once to measure them); else ``json``'s.
    content: bytes | None = None
    safe: bool = True
    #: Non-2xx statuses whose body is still the answer (``/healthz`` is 503 when degraded).
    answers: frozenset[int] = frozenset()

    def is_answer(self, response: httpx.Response) -> bool:
        return response.is_success or response.status_code in self.answers

    def body(self) -> bytes | None:
        """The request body as both clients send it (compact UTF-8 JSON; NaN is refused)."""
        return self.content if self.content is not None or self.json is None else encode_json(self.json)


JSON_HEADERS = {"content-type": "application/json"}  # with every request that has a body


def encode_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ProtocolError(
            Code.BAD_RESPONSE,
            f"gateway answered HTTP {response.status_code} with a body that is not JSON: {response.text[:200]!r}",
            status=response.status_code,
        ) from None


def _segment(value: str, what: str) -> str:
    """One URL path segment (a message id, a topic), checked and quoted."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    return quote(value, safe="")


def _id(message_id: str) -> str:
    return _segment(message_id, "message id")


def _set(body: dict[str, Any], **optional: Any) -> dict[str, Any]:
    """Add the optional fields that were given (None means: leave it to the gateway)."""
    body.update((name, value) for name, value in optional.items() if value is not None)
    return body


def send_call(
    to: str,
    type: str,
    payload: Any,
    *,
    purpose: str,
    classification: str,
    subject: str | None,
    correlation_id: str | None,
    workflow_id: str | None,
    local_id: str | None,
    idempotency_key: str | None,
    ttl_seconds: int | None,
    datacontenttype: str | None = None,
) -> Call[SendResult]:
    key = idempotency_key or str(uuid.uuid4())
    body: dict[str, Any] = {
        "to": to,
        "type": type,
        "payload": payload,
        "purpose": purpose,
        "classification": classification,
        "idempotency_key": key,
    }
    _set(body, subject=subject, correlation_id=correlation_id, workflow_id=workflow_id, local_id=local_id,
         ttl_seconds=ttl_seconds, datacontenttype=datacontenttype)

    def parse(r: httpx.Response) -> SendResult:
        return SendResult.from_json(
            _json(r),
            idempotency_key=key,
            location=r.headers.get("location"),
            duplicate=r.status_code == 200,
        )

    return Call("POST", "/v1/messages", parse, json=body, safe=True)


#: The gateway's defaults for ``POST /v1/messages:batch`` (``gateway.max_batch_items`` and
#: ``gateway.max_body_bytes``): ``send_many`` splits what it is given into requests within both.
MAX_BATCH_ITEMS = 500
MAX_BATCH_BYTES = 2 * 1024 * 1024
_BATCH_OPEN, _BATCH_CLOSE = b'{"messages":[', b"]}"
_EMPTY_BATCH = len(_BATCH_OPEN) + len(_BATCH_CLOSE)  # the request's bytes around its items


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One message of a ``send_many`` on its way: where it was in the input, its request body
    (always with an idempotency key, so every retry is safe), that key, and the body encoded
    (once: its size splits the batches, and its bytes are the request's)."""

    index: int
    body: dict[str, Any]
    key: str
    encoded: bytes


def batch_item(index: int, message: Message | Mapping[str, Any]) -> BatchItem:
    """A message as a batch item, with a fresh idempotency key if it has none."""
    if isinstance(message, Message):
        body = message.to_json()
    elif isinstance(message, Mapping):
        body = dict(message)
    else:
        raise TypeError(f"send_many takes Message objects or mappings, item {index} is a {type(message).__name__}")
    key = body.get("idempotency_key")
    if not isinstance(key, str) or not key:  # a malformed key is the gateway's to refuse, naming it
        if key is None:
            key = str(uuid.uuid4())
            body["idempotency_key"] = key
        else:
            key = str(key)
    try:
        encoded = encode_json(body)
    except (TypeError, ValueError) as exc:  # NaN, or a value JSON has no form for
        raise ValueError(f"send_many: item {index} cannot be sent as JSON: {exc}") from exc
    return BatchItem(index, body, key, encoded)


def batches(
    messages: Iterable[Message | Mapping[str, Any]], *, batch_size: int, max_bytes: int
) -> Iterator[list[BatchItem]]:
    """Split messages (read lazily: a generator of millions is fine) into requests of at most
    ``batch_size`` items and ``max_bytes`` of JSON, counted exactly from each item's encoding
    (the request is those bytes joined); one message larger than the limit goes alone and gets
    its own 413."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("batch_size must be a positive int")
    if max_bytes < 1:
        raise ValueError("max_batch_bytes must be positive")
    chunk: list[BatchItem] = []
    size = _EMPTY_BATCH
    for index, message in enumerate(messages):
        item = batch_item(index, message)
        item_size = len(item.encoded) + (1 if chunk else 0)  # and a comma after the first
        if chunk and (len(chunk) >= batch_size or size + item_size > max_bytes):
            yield chunk
            chunk, size = [], _EMPTY_BATCH
            item_size = len(item.encoded)
        chunk.append(item)
        size += item_size
    if chunk:
        yield chunk


def _is_problem(data: Any) -> bool:
    return isinstance(data, Mapping) and isinstance(data.get("status"), int) and "code" in data


def batch_result(item: BatchItem, data: Any) -> BatchResult:
    """One element of the gateway's ``results``: the accepted message or its problem document."""
    if _is_problem(data):
        return BatchResult(item.index, item.key, error=error_from_problem(int(data["status"]), data))
    location = f"/v1/messages/{quote(data['id'], safe='')}" if isinstance(data.get("id"), str) else None
    result = SendResult.from_json(data, idempotency_key=item.key, location=location,
                                  duplicate=bool(data.get("duplicate")))
    return BatchResult(item.index, item.key, result=result)


def batch_call(items: list[BatchItem]) -> Call[list[BatchResult]]:
    """``POST /v1/messages:batch``. Safe to repeat: every item carries an idempotency key."""

    def parse(r: httpx.Response) -> list[BatchResult]:
        data = _json(r)
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list) or len(results) != len(items):
            raise ProtocolError(Code.BAD_RESPONSE, f"batch answer has no 'results' list of {len(items)}: "
                                f"{str(data)[:200]}")
        return [batch_result(item, x) for item, x in zip(items, results, strict=True)]

    return Call("POST", "/v1/messages:batch", parse, safe=True,
                content=_BATCH_OPEN + b",".join(i.encoded for i in items) + _BATCH_CLOSE)


def chunk_failed(items: list[BatchItem], error: PsvnError) -> list[BatchResult]:
    """A request that failed as a whole (after its retries): the error is each item's result."""
    return [BatchResult(i.index, i.key, error=error) for i in items]


def settle(
    items: list[BatchItem], outcomes: list[BatchResult], done: dict[int, BatchResult], *, last: bool
) -> list[BatchItem]:
    """Record final outcomes in ``done``; return the items to send again: those the gateway
    refused for a passing reason (503 backbone-unavailable...), as :meth:`send` retries them,
    unless this was the ``last`` attempt."""
    again: list[BatchItem] = []
    for item, outcome in zip(items, outcomes, strict=True):
        error = outcome.error
        if not last and error is not None and error.status in RETRY_STATUSES:
            again.append(item)
        else:
            done[item.index] = outcome
    return again


def status_call(message_id: str) -> Call[MessageStatus]:
    return Call("GET", f"/v1/messages/{_id(message_id)}", lambda r: MessageStatus.from_json(_json(r)))


def statuses_call(status: str | None, limit: int, cursor: str | None = None) -> Call[Page[MessageStatus]]:
    """``GET /v1/messages``: one page of sent messages in the order of their last change."""
    params: dict[str, str | int] = {"limit": _limit(limit)}
    if status is not None:
        params["status"] = str(status)
    if cursor is not None:
        params["cursor"] = cursor
    return _page_call("/v1/messages", "messages", "statuses", MessageStatus.from_json, limit, params=params)


def _limit(limit: int, name: str = "limit") -> int:
    """A page size: a positive int (the gateway says how many it allows, 1,000 by default)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"{name} must be a positive int")
    return limit


def inbox_call(mailbox: str | None, status: str | None, limit: int, cursor: str | None = None
               ) -> Call[Page[InboxItem]]:
    """``GET /v1/inbox``: one page, in arrival order, and the cursor to continue after it."""
    params: dict[str, str | int] = {"limit": _limit(limit)}
    if mailbox is not None:
        params["mailbox"] = mailbox
    if status is not None:
        params["status"] = str(status)
    if cursor is not None:
        params["cursor"] = cursor
    return _page_call("/v1/inbox", "messages", "inbox", InboxItem.from_json, limit, params=params)


def _page_call(path: str, key: str, what: str, item: Callable[[Any], T], limit: int,
               params: dict[str, str | int]) -> Call[Page[T]]:
    """A GET whose answer is ``{key: [...], "next": cursor}``: each element read by ``item``."""

    def parse(r: httpx.Response) -> Page[T]:
        data = _json(r)
        items = data.get(key) if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise ProtocolError(Code.BAD_RESPONSE, f"{what} answer has no {key!r} list: {str(data)[:200]}")
        nxt = data.get("next")
        return Page(items=tuple(item(x) for x in items), next=nxt if isinstance(nxt, str) else None,
                    more=len(items) >= limit)

    return Call("GET", path, parse, params=params)


def _list_call(path: str, key: str, what: str, item: Callable[[Any], T],
               params: dict[str, str | int] | None = None) -> Call[list[T]]:
    """A GET whose answer is ``{key: [...]}``: each element read by ``item``."""

    def parse(r: httpx.Response) -> list[T]:
        data = _json(r)
        items = data.get(key) if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise ProtocolError(Code.BAD_RESPONSE, f"{what} answer has no {key!r} list: {str(data)[:200]}")
        return [item(x) for x in items]

    return Call("GET", path, parse, params=params)


def get_call(message_id: str) -> Call[ReceivedMessage]:
    return Call("GET", f"/v1/inbox/{_id(message_id)}", lambda r: ReceivedMessage.from_json(_json(r)))


def ack_call(message_id: str) -> Call[Ack]:
    # Acknowledging twice leaves the message acknowledged: safe to repeat.
    return Call("POST", f"/v1/inbox/{_id(message_id)}/ack", lambda r: Ack.from_json(_json(r)))


def _topic(topic: str) -> str:
    return _segment(topic, "topic (e.g. sensors.brighton.air)")


def publish_call(
    topic: str,
    type: str,
    payload: Any,
    *,
    purpose: str,
    classification: str,
    subject: str | None,
    correlation_id: str | None,
    idempotency_key: str | None,
    ttl_seconds: int | None,
) -> Call[Publication]:
    # with a key, a retry after a lost answer sends no subscriber a second copy
    body: dict[str, Any] = {"type": type, "payload": payload, "purpose": purpose, "classification": classification,
                            "idempotency_key": idempotency_key or str(uuid.uuid4())}
    _set(body, subject=subject, correlation_id=correlation_id, ttl_seconds=ttl_seconds)
    return Call("POST", f"/v1/feeds/{_topic(topic)}", lambda r: Publication.from_json(_json(r)), json=body)


def subscribe_call(topic: str, *, purpose: str, mailbox: str | None) -> Call[Subscription]:
    body = _set({"purpose": purpose}, mailbox=mailbox)
    return Call("PUT", f"/v1/subscriptions/{_topic(topic)}", lambda r: Subscription.from_json(_json(r)), json=body)


def unsubscribe_call(topic: str) -> Call[None]:
    return Call("DELETE", f"/v1/subscriptions/{_topic(topic)}", lambda r: None)


def subscriptions_call(limit: int = 100, cursor: str | None = None) -> Call[Page[Subscription]]:
    params: dict[str, str | int] = {"limit": _limit(limit)}
    if cursor is not None:
        params["cursor"] = cursor
    return _page_call("/v1/subscriptions", "subscriptions", "subscriptions", Subscription.from_json, limit, params)


class Receiver:
    """The bookkeeping of one receive loop, without I/O (the sync and async loops share it).

    Every pass lists the unacknowledged mail (``status=delivered``) from the start, a page at a
    time, and offers what this loop has not offered before. A message the caller did not accept
    stays unacknowledged at the gateway and is not offered again by this loop (so one it cannot
    handle does not come back every poll); a new loop (a restart) offers it again. Listing from
    the start, not only after the newest seen, also finds mail filed late out of arrival order
    (e.g. redelivered after a passing failure). ``offered`` only holds ids still unacknowledged."""

    def __init__(self, *, mailbox: str | None, page_size: int, max_messages: int | None,
                 idle_timeout: float | None, poll_interval: float) -> None:
        if max_messages is not None and (isinstance(max_messages, bool) or max_messages < 1):
            raise ValueError("max_messages must be a positive int or None")
        if idle_timeout is not None and idle_timeout < 0:
            raise ValueError("idle_timeout must be >= 0 or None")
        if poll_interval <= 0:
            raise ValueError("poll_interval must be > 0")
        self.mailbox = mailbox
        self.page_size = _limit(page_size, "page_size")
        self.max_messages = max_messages
        self.idle_timeout = idle_timeout
        self.poll_interval = poll_interval
        self.offered: set[str] = set()
        self.seen: set[str] = set()
        self.given = 0

    def page(self, cursor: str | None) -> Call[Page[InboxItem]]:
        return inbox_call(self.mailbox, "delivered", self.page_size, cursor)

    def fresh(self, page: Page[InboxItem]) -> list[InboxItem]:
        """The items of a page this loop has not offered yet."""
        self.seen.update(i.id for i in page.items)
        return [i for i in page.items if i.id not in self.offered]

    def offer(self, item_id: str) -> None:
        self.offered.add(item_id)
        self.given += 1

    @property
    def done(self) -> bool:
        return self.max_messages is not None and self.given >= self.max_messages

    def pass_over(self) -> None:
        """A pass ended: forget what is no longer waiting (acknowledged, or gone)."""
        self.offered &= self.seen
        self.seen = set()


def catalogue_call() -> Call[list[MessageType]]:
    return _list_call("/v1/catalogue", "types", "catalogue", MessageType.from_json)


def health_call() -> Call[Health]:
    # A degraded gateway answers 503 with its health: that is the answer, not an error to retry.
    return Call("GET", "/healthz", lambda r: Health.from_json(_json(r)), answers=frozenset({503}))


def error_for(response: httpx.Response) -> PsvnError:
    """The error for a non-2xx response (its body read already)."""
    problem: dict[str, Any] | None = None
    ctype = response.headers.get("content-type", "")
    if "json" in ctype:
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict):
            problem = data
    fallback = "" if problem else (response.text[:200].strip() or response.reason_phrase)
    return error_from_problem(response.status_code, problem, fallback=fallback)


def failure(call: Call[Any], response: httpx.Response) -> tuple[PsvnError, bool]:
    """(error, retry?) for a non-2xx response."""
    return error_for(response), call.safe and response.status_code in RETRY_STATUSES


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _describe(exc: BaseException) -> str:
    """The most telling text in an exception chain (httpx often wraps an empty message
    around e.g. ``ConnectionResetError: Connection reset by peer``)."""
    texts: list[str] = []
    cur: BaseException | None = exc
    while cur is not None and len(texts) < 8:
        text = str(cur).strip()
        if text and text not in texts:
            texts.append(text)
        cur = cur.__cause__ or cur.__context__
    return texts[-1] if texts else type(exc).__name__


_NO_CERT = (
    "this client presents no client certificate and psvn gateways require one "
    "(pass cert= and key=, issued by the network CA)"
)
_DROPPED_HINT = (
    "; a gateway also drops connections whose client certificate it does not accept: "
    "check that cert/key were issued by this network's CA and name a system of this gateway's "
    "organisation"
)


def transport_failure(
    call: Call[Any], url: str, exc: httpx.TransportError, *, client_cert: bool | None = None
) -> tuple[PsvnError, bool]:
    """(error, retry?) for a request that got no answer.

    ``client_cert`` says whether this client presents a certificate (``None``: unknown, a
    caller-made SSL context). A gateway refusing a certificate just drops the connection (no
    TLS alert reaches the client), so without a certificate a drop is reported as ``tls-failed``.
    """
    where = f"{call.method} {url}{call.path}"
    tls = _tls_cause(exc)
    if tls is not None:
        reason = getattr(tls, "verify_message", None) or getattr(tls, "reason", None) or str(tls)
        # TLS problems (wrong CA, missing/unknown client cert) do not fix themselves: no retry.
        return ConnectionError(Code.TLS_FAILED, f"{where}: TLS failed: {reason}"), False
    if isinstance(exc, httpx.TimeoutException):
        not_sent = isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
        return (
            RequestTimeout(Code.TIMEOUT, f"{where}: no answer in time ({type(exc).__name__})"),
            not_sent or call.safe,
        )
    detail = _describe(exc)
    if isinstance(exc, httpx.ConnectError):
        # The request was never sent: always safe to try again.
        return ConnectionError(Code.CONNECTION_FAILED, f"{where}: cannot connect: {detail}"), True
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError):
        if client_cert is False and url.startswith("https:"):
            return ConnectionError(Code.TLS_FAILED, f"{where}: connection dropped ({detail}): {_NO_CERT}"), False
        return ConnectionError(Code.CONNECTION_FAILED, f"{where}: connection lost ({detail}){_DROPPED_HINT}"), call.safe
    return ConnectionError(Code.CONNECTION_FAILED, f"{where}: {detail}"), False


def retry_delay(attempt: int, backoff: float, response: httpx.Response | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential with jitter, or the
    gateway's Retry-After, never more than :data:`MAX_RETRY_DELAY`."""
    if response is not None:
        after = response.headers.get("retry-after")
        if after is not None:
            try:
                return min(max(float(after), 0.0), MAX_RETRY_DELAY)
            except ValueError:
                pass
    ceiling = min(backoff * (2.0**attempt), MAX_RETRY_DELAY)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


_WAITABLE = frozenset(s.value for s in Status)


def check_target(status: str) -> str:
    if status not in _WAITABLE:
        raise ValueError(f"unknown status {status!r}; one of {', '.join(s.value for s in Status)}")
    return str(status)


def reached(current: MessageStatus, target: str) -> bool:
    """Has the message reached ``target`` (or gone past it on the way to acknowledged)?
    Raise :class:`DeliveryFailed` if it has ended somewhere ``target`` cannot follow."""
    if current.status == target:
        return True
    if target in PROGRESS and current.status in PROGRESS:
        if PROGRESS.index(Status(current.status)) >= PROGRESS.index(Status(target)):
            return True
    if current.final:
        reason = f": {current.reason}" if current.reason else ""
        raise DeliveryFailed(
            Code.DELIVERY_FAILED,
            f"message {current.id} ended {current.status}{reason} (waited for {target})",
            message_id=current.id,
            message_status=current,
        )
    return False


def poll_intervals(first: float = 0.05, factor: float = 1.6, cap: float = 1.0) -> Iterator[float]:
    """Waits between status polls: quick at first (most messages arrive in milliseconds),
    then backing off so a slow delivery does not hammer the gateway."""
    delay = first
    while True:
        yield delay
        delay = min(delay * factor, cap)


def user_agent(library: str = f"httpx/{httpx.__version__}") -> str:
    from psvn_client import __version__

    return f"psvn-client/{__version__} {library}"
