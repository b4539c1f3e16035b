"""Reads from JetStream that a member's headers cannot fool.

A member's publish through a service import reaches the network's streams with whatever headers
it chose, and nats-py takes a *stored* message carrying a ``Status`` header for a server status:
``fetch`` drops one with ``Status: 100`` as a heartbeat (redelivered for ever, never seen: enough
of them wedge a consumer), and a direct get of one with ``Status: 503`` raises "no responders".

Here the line is drawn as the server draws it: a message JetStream delivers from a stream has a
reply subject ``$JS.ACK.…`` (consumer deliveries) or a ``Nats-Sequence`` header (direct gets);
only a reply with neither is the server speaking. Each read listens on an inbox of its own (the
answers to a pull arrive under the stream's subjects, not the inbox's, so they cannot be routed by
a token of the inbox the way nats-py's ``request`` routes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import APIError, NotFoundError
from nats.js.errors import ServiceUnavailableError as JSServiceUnavailableError

from psvn.backbone.connect import subscribe_handler

ACK_PREFIX = "$JS.ACK."
# A pull request stays open on the server PULL_EXPIRES seconds; within PULL_RENEW_BEFORE of its
# end it no longer counts and the next is sent; past its end by PULL_GRACE with no status seen
# (the server forgot it: a consumer leader lost, a reconnect) it is taken as gone. So a lost
# request stalls an inbox at most 1.5 s, and a quiet inbox costs one request per 1.5 s.
PULL_EXPIRES = 2.0
PULL_RENEW_BEFORE = 0.5
PULL_GRACE = 0.5


def is_stored(msg: Msg) -> bool:
    """Delivered from a stream (whatever headers its publisher set), not a server status."""
    return bool(msg.reply and msg.reply.startswith(ACK_PREFIX)) or "Nats-Sequence" in (msg.headers or {})


class RawReads:
    """Direct gets and consumer pulls on one connection, judged by :func:`is_stored`."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc

    async def close(self) -> None:
        """Nothing held between reads (each read's inbox is its own)."""

    async def _listen(self) -> tuple[str, Any, asyncio.Queue[Msg]]:
        inbox = self._nc.new_inbox()
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def put(msg: Msg) -> None:
            queue.put_nowait(msg)

        return inbox, await self._nc.subscribe(inbox, cb=put), queue

    async def direct_get(self, js: JetStreamContext, stream: str, *, seq: int | None = None,
                         subject: str | None = None, timeout: float = 5.0) -> RawStreamMsg:
        """The last message on ``subject`` (or the one at ``seq``), as stored."""
        api = js._prefix  # the JetStream API prefix this context speaks to
        if subject is not None and seq is None:
            req_subject, body = f"{api}.DIRECT.GET.{stream}.{subject}", b""
        else:
            req_subject, body = f"{api}.DIRECT.GET.{stream}", json.dumps({"seq": seq}).encode()
        inbox, sub, queue = await self._listen()
        try:
            await self._nc.publish(req_subject, body, reply=inbox)
            msg = await asyncio.wait_for(queue.get(), timeout)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        headers = msg.headers or {}
        if "Nats-Sequence" not in headers:  # the server speaking: not found, or an error
            if headers.get("Status") == "404":
                raise NotFoundError
            raise APIError(code=int(headers.get("Status") or 0) or None, description=headers.get("Description"))
        raw = RawStreamMsg()
        raw.subject = headers.get("Nats-Subject")
        raw.seq = int(headers["Nats-Sequence"])
        raw.data = msg.data or None
        raw.headers = dict(headers)
        if stamp := headers.get("Nats-Time-Stamp"):
            raw.time = RawStreamMsg._parse_utc_iso(stamp)
        return raw

    async def puller(self, js: JetStreamContext, stream: str, consumer: str) -> Puller:
        """A pull consumer read in batches through one inbox of its own (kept between fetches, so
        what a request delivers after a fetch returned waits for the next one, never lost)."""
        puller = Puller(self._nc, f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}", self._nc.new_inbox())
        await puller.start()
        return puller


@dataclass
class _Request:
    """One pull request still open on the server, as far as we can tell."""

    reply: str
    left: int  # messages it may still deliver
    ends: float  # loop time its ``expires`` runs out


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Puller:
    """Keeps a pull request open on the server at all times, so a message is delivered the
    moment it is stored, and fetches take what has arrived.

    Why not a request per fetch (nats-py's ``fetch``: a ``no_wait`` request, then a waiting
    one): under a trickle each message then cost two requests and two status replies, and the
    waiting requests piled up on the server until each expired; a quiet inbox made the server
    busier than a full one. Here a request asks for ``batch`` messages and lasts
    :data:`PULL_EXPIRES`; a new one is sent when fewer than half a batch are still asked for, or
    the open one is about to end. Each request has its own reply subject, so the status that ends
    a request (408 expired, 409 ...) is told apart; messages are judged by :func:`is_stored`, so
    a publisher's ``Status`` header never hides its message or ends a request."""

    def __init__(self, nc: NATS, api: str, inbox: str) -> None:
        self._nc, self._api, self._inbox = nc, api, inbox
        self._sub: Any = None
        self._arrived: deque[Msg] = deque()  # what the server sent, in order, not yet taken
        self._waiters: list[asyncio.Future[None]] = []  # fetches waiting for an arrival (one, as a rule)
        self._open: deque[_Request] = deque()  # in the server's order of service
        self._sent = 0
        self._ended: Msg | None = None  # a status other than "expired" that ended a request

    async def start(self) -> None:
        def arrive(msg: Msg) -> None:
            self._arrived.append(msg)
            for waiter in self._waiters:
                _wake(waiter)

        # request n answers on <inbox>.<n>; each arrival is only queued here, so it is handled
        # as the reading loop parses it (no per-subscription queue, task and coroutine a message)
        self._sub = await subscribe_handler(self._nc, f"{self._inbox}.*", arrive)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()

    @property
    def requests_sent(self) -> int:
        return self._sent

    def asked(self, now: float) -> int:
        """Messages still asked for by requests not about to end."""
        return sum(r.left for r in self._open if r.ends - now > PULL_RENEW_BEFORE)

    def _due(self, now: float) -> float:
        """Seconds until a request still counted stops counting (when a top-up may be due)."""
        counted = [r.ends - PULL_RENEW_BEFORE - now for r in self._open if r.ends - now > PULL_RENEW_BEFORE]
        return min(counted, default=0.0)

    async def _ask(self, batch: int) -> None:
        """Top the open requests up to at least half a batch (requests the server has quietly
        forgotten, say across a reconnect, count until their time is up)."""
        now = asyncio.get_running_loop().time()
        for r in [r for r in self._open if r.ends + PULL_GRACE < now]:
            self._open.remove(r)
        if self.asked(now) >= max(1, batch // 2):
            return
        reply = f"{self._inbox}.{self._sent + 1}"
        body = json.dumps({"batch": batch, "expires": int(PULL_EXPIRES * 1e9)}).encode()
        await self._nc.publish(self._api, body, reply=reply)
        self._sent += 1
        self._open.append(_Request(reply, batch, now + PULL_EXPIRES))

    def _took(self, msg: Msg) -> bool:
        """Account for one arrival: True for a stored message. The server serves its open
        requests in turn, one message each (a request with slots left goes to the back of its
        queue), so the count does too; a fully served request gets no status. A status ends the
        request it answers (its own reply subject)."""
        if is_stored(msg):
            if self._open:
                head = self._open.popleft()
                head.left -= 1
                if head.left > 0:
                    self._open.append(head)
            return True
        status = (msg.headers or {}).get("Status")
        if status == "100":  # an idle heartbeat: nothing ends
            return False
        for r in self._open:
            if r.reply == msg.subject:
                self._open.remove(r)
                break
        if status != "408":  # 408: the request's time ran out, the normal end of a quiet one
            self._ended = msg
        return False

    def _drain(self, out: list[Msg], batch: int) -> None:
        while len(out) < batch and self._arrived:
            msg = self._arrived.popleft()
            if self._took(msg):
                out.append(msg)

    def _refusal(self) -> Exception | None:
        """What the server said when it ended a request otherwise than by its time running out
        (503 no JetStream, 409 consumer deleted or a limit exceeded, ...): raised by a fetch that
        got nothing, so its caller backs off instead of asking again at once."""
        msg, self._ended = self._ended, None
        if msg is None:
            return None
        headers = msg.headers or {}
        if headers.get("Status") == "503":
            return JSServiceUnavailableError()
        return APIError(code=int(headers.get("Status") or 0) or None, description=headers.get("Description"))

    async def fetch(self, batch: int, *, timeout: float = 1.0) -> list[Msg]:
        """What has arrived (at most ``batch``), else the first message within ``timeout``,
        with whatever came with it; [] if none did."""
        self._ended = None
        out: list[Msg] = []
        self._drain(out, batch)
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while not out:
            if (refused := self._refusal()) is not None:
                raise refused
            await self._ask(batch)
            left = until - loop.time()
            if left <= 0:
                return out
            if not self._arrived:  # woken at the latest when a top-up is due
                await self._arrival(min(left, max(0.01, self._due(loop.time()))))
            self._drain(out, batch)
        with contextlib.suppress(Exception):  # the next messages come while these are handled;
            await self._ask(batch)            # a request not sent now is sent by the next fetch
        return out

    async def _arrival(self, seconds: float) -> None:
        """Until the next arrival, or ``seconds``. A future the arrival resolves, not
        ``wait_for(Event.wait())``: Python 3.11's wraps the wait in a task of its own, which woke
        first, and the fetch turns later (an idle recipient, timed by hand from a message's
        arrival to its handling, alternating runs: medians 0.11-0.17 ms before, 0.05-0.10 ms
        after, of a one-at-a-time message's ~3 ms)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(seconds, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.remove(waiter)

    def waiting(self) -> list[Msg]:
        """The stored messages delivered and not yet fetched (their ack timers are running)."""
        return [m for m in self._arrived if is_stored(m)]
