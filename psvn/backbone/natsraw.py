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
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import APIError, NotFoundError
from nats.js.errors import ServiceUnavailableError as JSServiceUnavailableError

ACK_PREFIX = "$JS.ACK."


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
        inbox, sub, queue = await self._listen()
        return Puller(self._nc, f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}", inbox, sub, queue)


class Puller:
    """Fetches like nats-py's ``PullSubscription.fetch``: what is already there at once (a
    ``no_wait`` request), else waits up to ``timeout`` for the first message; judged by
    :func:`is_stored`, so a publisher's ``Status`` header never hides its message."""

    def __init__(self, nc: NATS, api: str, inbox: str, sub: Any, queue: asyncio.Queue[Msg]) -> None:
        self._nc, self._api, self._inbox, self._sub, self._queue = nc, api, inbox, sub, queue

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()

    def _drain(self, out: list[Msg], batch: int) -> None:
        while len(out) < batch and not self._queue.empty():
            msg = self._queue.get_nowait()
            if is_stored(msg):
                out.append(msg)

    async def _collect(self, out: list[Msg], batch: int, until: float, *, first_only: bool) -> None:
        loop = asyncio.get_running_loop()
        while len(out) < batch:
            left = until - loop.time()
            if left <= 0:
                return
            try:
                msg = await asyncio.wait_for(self._queue.get(), left)
            except TimeoutError:
                return
            if is_stored(msg):
                out.append(msg)
                if first_only:
                    self._drain(out, batch)
                    return
                continue
            status = (msg.headers or {}).get("Status")
            if status == "503":
                raise JSServiceUnavailableError
            if status != "100":  # 404 nothing there, 408 request over, 409: this request is done
                return

    async def fetch(self, batch: int, *, timeout: float = 1.0) -> list[Msg]:
        out: list[Msg] = []
        self._drain(out, batch)  # delivered for an earlier request after it returned
        if out:
            return out
        loop = asyncio.get_running_loop()
        await self._nc.publish(self._api, json.dumps({"batch": batch, "no_wait": True}).encode(), reply=self._inbox)
        await self._collect(out, batch, loop.time() + timeout, first_only=False)
        if out:
            return out
        expires = max(int((timeout - 0.05) * 1e9), 10_000_000)
        await self._nc.publish(self._api, json.dumps({"batch": batch, "expires": expires}).encode(),
                               reply=self._inbox)
        await self._collect(out, batch, loop.time() + timeout, first_only=True)
        return out
