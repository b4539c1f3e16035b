"""The blocking client. One instance keeps its TLS connections open between calls (a new
mutual-TLS handshake per request is ~20x slower): create it once and share it; it is
thread-safe, like the ``httpx.Client`` underneath."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from psvn_client import _core
from psvn_client.errors import Code, NotFound, PsvnError, TimeoutError
from psvn_client.models import (
    Ack,
    BatchResult,
    Health,
    InboundMessage,
    InboxItem,
    Message,
    MessageStatus,
    MessageType,
    Page,
    Publication,
    ReceivedMessage,
    SendResult,
    Subscription,
)

T = TypeVar("T")


class Client:
    """A local system's connection to its own psvn gateway.

    ``ca`` is the network CA file (verifies the gateway), ``cert``/``key`` the system's client
    certificate and key issued by it; or pass a ready ``ssl_context``. ``timeout`` bounds each
    HTTP request in seconds. Safe requests (every GET, ack, and send, which always carries an
    idempotency key) are retried up to ``retries`` times on transient failures — connection
    refused or lost, 502/503/504 — waiting ``backoff`` seconds, doubling, with jitter.
    """

    def __init__(
        self,
        url: str,
        *,
        ca: _core.StrPath | None = None,
        cert: _core.StrPath | None = None,
        key: _core.StrPath | None = None,
        key_password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_connections: int = 20,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        # Whether we present a client certificate (unknown for a caller-made context).
        self._client_cert = (cert is not None) if ssl_context is None else None
        ctx = ssl_context or _core.ssl_context(ca=ca, cert=cert, key=key, key_password=key_password)
        self._http = httpx.Client(
            base_url=self.url,
            verify=ctx,
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"user-agent": _core.user_agent(), "accept": "application/json"},
        )

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections. The client cannot be used afterwards."""
        self._http.close()

    @property
    def closed(self) -> bool:
        return self._http.is_closed

    def _run(self, call: _core.Call[T]) -> T:
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                body = call.body()
                response = self._http.request(call.method, call.path, params=call.params, content=body,
                                              headers=_core.JSON_HEADERS if body is not None else None)
            except httpx.TransportError as exc:
                error, retry = _core.transport_failure(call, self.url, exc, client_cert=self._client_cert)
            else:
                if call.is_answer(response):
                    return call.parse(response)
                error, retry = _core.failure(call, response)
            if not retry or attempt >= self.retries:
                raise error
            time.sleep(_core.retry_delay(attempt, self.backoff, response))
            attempt += 1

    def send(
        self,
        to: str,
        type: str,
        payload: Any,
        *,
        purpose: str,
        classification: str = "OFFICIAL",
        subject: str | None = None,
        correlation_id: str | None = None,
        workflow_id: str | None = None,
        local_id: str | None = None,
        idempotency_key: str | None = None,
        ttl_seconds: int | None = None,
        datacontenttype: str | None = None,
    ) -> SendResult:
        """Hand a message to the gateway, which validates it, applies the policy set, seals and
        routes it. ``payload`` is any JSON value, or a ``str`` for text standards (HL7 v2 ER7).

        Without ``idempotency_key`` a fresh one is generated, so a retry after a lost response
        never sends twice; it is returned in :attr:`SendResult.idempotency_key`. Raises
        :class:`ValidationError`/:class:`InvalidPayload` (fix the message),
        :class:`PolicyDenied` (the network does not allow it), :class:`PayloadTooLarge`...
        """
        return self._run(
            _core.send_call(
                to,
                type,
                payload,
                purpose=purpose,
                classification=classification,
                subject=subject,
                correlation_id=correlation_id,
                workflow_id=workflow_id,
                local_id=local_id,
                idempotency_key=idempotency_key,
                ttl_seconds=ttl_seconds,
                datacontenttype=datacontenttype,
            )
        )

    def send_many(
        self,
        messages: Iterable[Message | Mapping[str, Any]],
        *,
        batch_size: int = _core.MAX_BATCH_ITEMS,
        max_batch_bytes: int = _core.MAX_BATCH_BYTES,
    ) -> list[BatchResult]:
        """Send many messages in as few requests as the gateway allows: each is still validated,
        decided, sealed, signed and receipted on its own, so one bad message refuses only itself.

        ``messages`` is any iterable (read lazily) of :class:`Message` or mappings with the HTTP
        API's fields. It is split into requests of at most ``batch_size`` messages and about
        ``max_batch_bytes`` of JSON (the gateway's limits by default). Returns one
        :class:`BatchResult` per message, in order: its :class:`SendResult`, or the error
        :meth:`send` would have raised for it. Every message carries an idempotency key
        (generated if it has none, returned in the result), so requests and messages the gateway
        could not take for a passing reason (503...) are retried like :meth:`send`'s, never sent
        twice; a request that still fails (e.g. the gateway unreachable) gives each of its
        messages that error, and the next request is tried.
        """
        results: list[BatchResult] = []
        for chunk in _core.batches(messages, batch_size=batch_size, max_bytes=max_batch_bytes):
            results.extend(self._send_chunk(chunk))
        return results

    def _send_chunk(self, chunk: list[_core.BatchItem]) -> list[BatchResult]:
        done: dict[int, BatchResult] = {}
        pending = chunk
        for attempt in range(self.retries + 1):
            try:
                outcomes = self._run(_core.batch_call(pending))
            except PsvnError as exc:  # the request as a whole, after its own retries
                outcomes = _core.chunk_failed(pending, exc)
            pending = _core.settle(pending, outcomes, done, last=attempt >= self.retries)
            if not pending:
                break
            time.sleep(_core.retry_delay(attempt, self.backoff))
        return [done[item.index] for item in chunk]

    def status(self, id: str) -> MessageStatus:
        """Where a message this system sent is now, with its history."""
        return self._run(_core.status_call(id))

    def statuses_page(
        self, *, status: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> Page[MessageStatus]:
        """One page of what this system sent, in the order of each message's last status change
        (optionally one ``status`` only); pass the page's ``next`` as ``cursor`` to continue. A
        message that changes after the cursor comes again with its new status, so polling with
        the last ``next`` sees every change."""
        return self._run(_core.statuses_call(status, limit, cursor))

    def iter_statuses(self, *, status: str | None = None, page_size: int = 100) -> Iterator[MessageStatus]:
        """Every message this system sent (as :meth:`statuses_page` filters them), fetched a
        page at a time as you iterate, in the order of their last change."""
        cursor: str | None = None
        while True:
            page = self.statuses_page(status=status, limit=page_size, cursor=cursor)
            yield from page.items
            if not page.more:
                return
            cursor = page.next

    def inbox(
        self, *, mailbox: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[InboxItem]:
        """The first ``limit`` messages delivered to this system (metadata only), oldest first,
        optionally only one mailbox or one status (default ``"delivered"``: not yet
        acknowledged). For more, page with :meth:`inbox_page` or iterate :meth:`iter_inbox`."""
        return list((self.inbox_page(mailbox=mailbox, status=status, limit=limit)).items)

    def inbox_page(
        self,
        *,
        mailbox: str | None = None,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[InboxItem]:
        """One page of the inbox in arrival order: pass the previous page's ``next`` as
        ``cursor`` to continue after it (up to 1,000 items a page)."""
        return self._run(_core.inbox_call(mailbox, status, limit, cursor))

    def iter_inbox(
        self, *, mailbox: str | None = None, status: str | None = None, page_size: int = 100
    ) -> Iterator[InboxItem]:
        """Every message in the inbox (as :meth:`inbox` filters it), oldest first, fetched a
        page at a time as you iterate. Acknowledging as you go skips nothing."""
        cursor: str | None = None
        while True:
            page = self.inbox_page(mailbox=mailbox, status=status, limit=page_size, cursor=cursor)
            yield from page.items
            if not page.more:
                return
            cursor = page.next

    def receive(
        self,
        *,
        mailbox: str | None = None,
        max_messages: int | None = None,
        idle_timeout: float | None = None,
        poll_interval: float = 1.0,
        page_size: int = 100,
    ) -> Iterator[InboundMessage]:
        """A receive loop: every unacknowledged message, downloaded and verified, as it
        arrives, until ``max_messages`` were handed out or nothing new came for
        ``idle_timeout`` seconds (``None``: for ever; break out of the loop to stop).

        Nothing is acknowledged for you: call ``msg.ack()`` once you have taken a message.
        One you do not acknowledge (you ``continue``, or your code raises out of the loop)
        stays unacknowledged at the gateway: this loop does not offer it again, a new loop
        (e.g. after a restart) does. The inbox is polled every ``poll_interval`` seconds while
        there is nothing new."""
        rx = _core.Receiver(mailbox=mailbox, page_size=page_size, max_messages=max_messages,
                            idle_timeout=idle_timeout, poll_interval=poll_interval)
        last_new = time.monotonic()
        while True:
            cursor: str | None = None
            while True:
                page = self._run(rx.page(cursor))
                for item in rx.fresh(page):
                    try:
                        got = self.get(item.id)
                    except NotFound:  # deleted (retention) between the listing and the download
                        continue
                    rx.offer(item.id)
                    yield InboundMessage(envelope=got.envelope, payload=got.payload, status=got.status,
                                    mailbox=item.mailbox, _ack=self.ack)
                    last_new = time.monotonic()  # the caller's time with it is not idle time
                    if rx.done:
                        return
                if not page.more:
                    break
                cursor = page.next
            rx.pass_over()
            if idle_timeout is not None and time.monotonic() - last_new >= idle_timeout:
                return
            pause = poll_interval
            if idle_timeout is not None:
                pause = min(pause, max(0.0, idle_timeout - (time.monotonic() - last_new)))
            time.sleep(pause)

    def get(self, id: str) -> ReceivedMessage:
        """Download one received message: its verified envelope and payload."""
        return self._run(_core.get_call(id))

    def ack(self, id: str) -> Ack:
        """Acknowledge a received message: its sender sees ``acknowledged``. Safe to repeat."""
        return self._run(_core.ack_call(id))

    def publish(
        self,
        topic: str,
        type: str,
        payload: Any,
        *,
        purpose: str,
        classification: str = "OFFICIAL",
        subject: str | None = None,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
        ttl_seconds: int | None = None,
    ) -> Publication:
        """Publish one event on a feed topic: the gateway validates it once, checks the feed
        rules, and sends every subscriber the rules allow its own sealed, receipted message
        (:attr:`Publication.deliveries`; the others in :attr:`Publication.refused`)."""
        return self._run(_core.publish_call(
            topic, type, payload, purpose=purpose, classification=classification, subject=subject,
            correlation_id=correlation_id, idempotency_key=idempotency_key, ttl_seconds=ttl_seconds))

    def subscribe(self, topic: str, *, purpose: str, mailbox: str | None = None) -> Subscription:
        """Subscribe this member to ``topic`` for ``purpose`` (raises :class:`PolicyDenied` when
        the feed rules do not let it); events arrive in the inbox like any message."""
        return self._run(_core.subscribe_call(topic, purpose=purpose, mailbox=mailbox))

    def unsubscribe(self, topic: str) -> None:
        """End this member's subscription to ``topic`` (:class:`NotFound` if there is none)."""
        self._run(_core.unsubscribe_call(topic))

    def subscriptions(self) -> list[Subscription]:
        """This member's feed subscriptions, all of them (fetched a page at a time)."""
        return [s for s in self.iter_subscriptions()]

    def subscriptions_page(self, *, limit: int = 100, cursor: str | None = None) -> Page[Subscription]:
        """One page of this member's subscriptions, by topic (``cursor``: a page's ``next``)."""
        return self._run(_core.subscriptions_call(limit, cursor))

    def iter_subscriptions(self, *, page_size: int = 100) -> Iterator[Subscription]:
        """This member's subscriptions by topic, fetched a page at a time as you iterate."""
        cursor: str | None = None
        while True:
            page = self.subscriptions_page(limit=page_size, cursor=cursor)
            yield from page.items
            if not page.more:
                return
            cursor = page.next

    def catalogue(self) -> list[MessageType]:
        """The message types this network carries and the standard each must meet."""
        return self._run(_core.catalogue_call())

    def health(self) -> Health:
        """The gateway's health (its organisation, policy version and backbone link)."""
        return self._run(_core.health_call())

    def wait_for_status(self, id: str, status: str = "delivered", *, timeout: float = 30.0) -> MessageStatus:
        """Poll until the message reaches ``status`` (or a later step on the way to
        acknowledged: waiting for ``delivered`` returns on ``acknowledged`` too).

        Raises :class:`DeliveryFailed` as soon as the message ends somewhere else (rejected,
        expired...), and :class:`TimeoutError` after ``timeout`` seconds; both carry the last
        :class:`MessageStatus` as ``message_status``.
        """
        target = _core.check_target(status)
        deadline = time.monotonic() + timeout
        for pause in _core.poll_intervals():
            current = self.status(id)
            if _core.reached(current, target):
                return current
            left = deadline - time.monotonic()
            if left <= 0:
                raise _timeout(current, target, timeout)
            time.sleep(min(pause, left))
        raise AssertionError("unreachable")  # pragma: no cover


def _timeout(current: MessageStatus, target: str, timeout: float) -> PsvnError:
    return TimeoutError(
        Code.TIMEOUT,
        f"message {current.id} still {current.status} after {timeout:g}s (waited for {target})",
        message_id=current.id,
        message_status=current,
    )
