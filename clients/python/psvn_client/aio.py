"""The asyncio client: the same API as :class:`psvn_client.Client`, every call awaited.
Create one per event loop and share it between tasks; it keeps its TLS connections open."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from psvn_client import _core
from psvn_client._aio_http import AioHttp
from psvn_client.client import _timeout
from psvn_client.errors import NotFound, PsvnError
from psvn_client.models import (
    Ack,
    AsyncInboundMessage,
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
    Subscription,
)

T = TypeVar("T")


class AsyncClient:
    """A local system's asyncio connection to its own psvn gateway.

    Options as for :class:`psvn_client.Client`. Use ``async with AsyncClient(...) as c`` or
    ``await c.close()``.
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
        self._http = AioHttp(
            self.url,
            ssl_context=ctx,
            timeout=timeout,
            max_connections=max_connections,
            headers={"user-agent": _core.user_agent(AioHttp.library), "accept": "application/json",
                     "accept-encoding": "gzip, deflate"},  # what the shared decoding (httpx's) reads
        )

    def __repr__(self) -> str:
        return f"AsyncClient({self.url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the pooled connections. The client cannot be used afterwards."""
        await self._http.close()

    @property
    def closed(self) -> bool:
        return self._http.closed

    async def _run(self, call: _core.Call[T]) -> T:
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = await self._http.request(call)
            except httpx.TransportError as exc:
                error, retry = _core.transport_failure(call, self.url, exc, client_cert=self._client_cert)
            else:
                if call.is_answer(response):
                    return call.parse(response)
                error, retry = _core.failure(call, response)
            if not retry or attempt >= self.retries:
                raise error
            await asyncio.sleep(_core.retry_delay(attempt, self.backoff, response))
            attempt += 1

    async def send(
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
        """See :meth:`psvn_client.Client.send` (an idempotency key is generated if none given)."""
        return await self._run(
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

    async def send_many(
        self,
        messages: Iterable[Message | Mapping[str, Any]],
        *,
        batch_size: int = _core.MAX_BATCH_ITEMS,
        max_batch_bytes: int = _core.MAX_BATCH_BYTES,
    ) -> list[BatchResult]:
        """See :meth:`psvn_client.Client.send_many`."""
        results: list[BatchResult] = []
        for chunk in _core.batches(messages, batch_size=batch_size, max_bytes=max_batch_bytes):
            results.extend(await self._send_chunk(chunk))
        return results

    async def _send_chunk(self, chunk: list[_core.BatchItem]) -> list[BatchResult]:
        done: dict[int, BatchResult] = {}
        pending = chunk
        for attempt in range(self.retries + 1):
            try:
                outcomes = await self._run(_core.batch_call(pending))
            except PsvnError as exc:  # the request as a whole, after its own retries
                outcomes = _core.chunk_failed(pending, exc)
            pending = _core.settle(pending, outcomes, done, last=attempt >= self.retries)
            if not pending:
                break
            await asyncio.sleep(_core.retry_delay(attempt, self.backoff))
        return [done[item.index] for item in chunk]

    async def status(self, id: str) -> MessageStatus:
        return await self._run(_core.status_call(id))

    async def statuses_page(
        self, *, status: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> Page[MessageStatus]:
        """One page of what this system sent, in the order of each message's last status change
        (optionally one ``status`` only); pass the page's ``next`` as ``cursor`` to continue. A
        message that changes after the cursor comes again with its new status, so polling with
        the last ``next`` sees every change."""
        return await self._run(_core.statuses_call(status, limit, cursor))

    async def iter_statuses(
        self, *, status: str | None = None, page_size: int = 100
    ) -> AsyncIterator[MessageStatus]:
        """Every message this system sent (as :meth:`statuses_page` filters them), fetched a
        page at a time as you iterate, in the order of their last change."""
        cursor: str | None = None
        while True:
            page = await self.statuses_page(status=status, limit=page_size, cursor=cursor)
            for item in page.items:
                yield item
            if not page.more:
                return
            cursor = page.next

    async def inbox(
        self, *, mailbox: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[InboxItem]:
        """The first ``limit`` messages delivered to this system (metadata only), oldest first,
        optionally only one mailbox or one status (default ``"delivered"``: not yet
        acknowledged). For more, page with :meth:`inbox_page` or iterate :meth:`iter_inbox`."""
        return list((await self.inbox_page(mailbox=mailbox, status=status, limit=limit)).items)

    async def inbox_page(
        self,
        *,
        mailbox: str | None = None,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[InboxItem]:
        """One page of the inbox in arrival order: pass the previous page's ``next`` as
        ``cursor`` to continue after it (up to 1,000 items a page)."""
        return await self._run(_core.inbox_call(mailbox, status, limit, cursor))

    async def iter_inbox(
        self, *, mailbox: str | None = None, status: str | None = None, page_size: int = 100
    ) -> AsyncIterator[InboxItem]:
        """Every message in the inbox (as :meth:`inbox` filters it), oldest first, fetched a
        page at a time as you iterate. Acknowledging as you go skips nothing."""
        cursor: str | None = None
        while True:
            page = await self.inbox_page(mailbox=mailbox, status=status, limit=page_size, cursor=cursor)
            for item in page.items:
                yield item
            if not page.more:
                return
            cursor = page.next

    async def receive(
        self,
        *,
        mailbox: str | None = None,
        max_messages: int | None = None,
        idle_timeout: float | None = None,
        poll_interval: float = 1.0,
        page_size: int = 100,
    ) -> AsyncIterator[AsyncInboundMessage]:
        """A receive loop: every unacknowledged message, downloaded and verified, as it
        arrives, until ``max_messages`` were handed out or nothing new came for
        ``idle_timeout`` seconds (``None``: for ever; break out of the loop to stop).

        Nothing is acknowledged for you: call ``await msg.ack()`` once you have taken a message.
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
                page = await self._run(rx.page(cursor))
                for item in rx.fresh(page):
                    try:
                        got = await self.get(item.id)
                    except NotFound:  # deleted (retention) between the listing and the download
                        continue
                    rx.offer(item.id)
                    yield AsyncInboundMessage(envelope=got.envelope, payload=got.payload, status=got.status,
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
            await asyncio.sleep(pause)

    async def get(self, id: str) -> ReceivedMessage:
        return await self._run(_core.get_call(id))

    async def ack(self, id: str) -> Ack:
        return await self._run(_core.ack_call(id))

    async def publish(
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
        return await self._run(_core.publish_call(
            topic, type, payload, purpose=purpose, classification=classification, subject=subject,
            correlation_id=correlation_id, idempotency_key=idempotency_key, ttl_seconds=ttl_seconds))

    async def subscribe(self, topic: str, *, purpose: str, mailbox: str | None = None) -> Subscription:
        """Subscribe this member to ``topic`` for ``purpose`` (raises :class:`PolicyDenied` when
        the feed rules do not let it); events arrive in the inbox like any message."""
        return await self._run(_core.subscribe_call(topic, purpose=purpose, mailbox=mailbox))

    async def unsubscribe(self, topic: str) -> None:
        """End this member's subscription to ``topic`` (:class:`NotFound` if there is none)."""
        await self._run(_core.unsubscribe_call(topic))

    async def subscriptions(self) -> list[Subscription]:
        """This member's feed subscriptions, all of them (fetched a page at a time)."""
        return [s async for s in self.iter_subscriptions()]

    async def subscriptions_page(self, *, limit: int = 100, cursor: str | None = None) -> Page[Subscription]:
        """One page of this member's subscriptions, by topic (``cursor``: a page's ``next``)."""
        return await self._run(_core.subscriptions_call(limit, cursor))

    async def iter_subscriptions(self, *, page_size: int = 100) -> AsyncIterator[Subscription]:
        """This member's subscriptions by topic, fetched a page at a time as you iterate."""
        cursor: str | None = None
        while True:
            page = await self.subscriptions_page(limit=page_size, cursor=cursor)
            for sub in page.items:
                yield sub
            if not page.more:
                return
            cursor = page.next

    async def catalogue(self) -> list[MessageType]:
        return await self._run(_core.catalogue_call())

    async def health(self) -> Health:
        return await self._run(_core.health_call())

    async def wait_for_status(
        self,
        id: str,
        status: str = "delivered",
        *,
        timeout: float = 30.0,
    ) -> MessageStatus:
        """See :meth:`psvn_client.Client.wait_for_status`."""
        target = _core.check_target(status)
        deadline = time.monotonic() + timeout
        for pause in _core.poll_intervals():
            current = await self.status(id)
            if _core.reached(current, target):
                return current
            left = deadline - time.monotonic()
            if left <= 0:
                raise _timeout(current, target, timeout)
            await asyncio.sleep(min(pause, left))
        raise AssertionError("unreachable")  # pragma: no cover
