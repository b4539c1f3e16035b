"""Getting onto the backbone: one way to connect, one way to ride out its elections.

Both ends use it: the broker provisioning the network and every gateway connecting as its member.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from psvn.core.errors import Code, PsvnError
from psvn.core.retry import retrying

T = TypeVar("T")


async def connect(url: str | list[str], tls: ssl.SSLContext, *, name: str, inbox_prefix: str | None = None,
                  user_credentials: str | None = None, **kwargs: object) -> NATS:
    """A backbone connection: mutual TLS, and the backbone user's ``.creds`` (the JWT of an
    account's user and its nkey seed): both are needed to get in."""
    opts: dict[str, object] = {"servers": url if isinstance(url, list) else [url], "tls": tls, "name": name,
                               "connect_timeout": 5, "max_reconnect_attempts": -1, "reconnect_time_wait": 0.5}
    if inbox_prefix:
        opts["inbox_prefix"] = inbox_prefix.encode()
    if user_credentials:
        opts["user_credentials"] = user_credentials
    opts.update(kwargs)
    nc = CoalescingClient()
    await nc.connect(**opts)  # type: ignore[arg-type]
    return nc


async def subscribe_handler(nc: NATS, subject: str, handler: Callable[[Msg], None]) -> Subscription:
    """``handler`` (synchronous and quick) on each message of ``subject``: straight from the
    reading loop on psvn's own client (:meth:`CoalescingClient.subscribe_direct`), through
    nats-py's queue and a callback on any other."""
    if isinstance(nc, CoalescingClient):
        return await nc.subscribe_direct(subject, handler)

    async def cb(msg: Msg) -> None:
        handler(msg)

    return await nc.subscribe(subject, cb=cb)


class CoalescingClient(NATS):
    """nats-py's client, with a flusher that lets one turn of the event loop pass before it
    writes, so the commands of every task that turn woke (a batch's publishes, state writes,
    acks) leave in one system call instead of one each, joined first into one buffer: uvloop's
    TLS transport makes each buffer it is given a TLS record of its own (an ``SSL_write`` each,
    and a record for nats-server to open), and a batch's turn holds thousands of commands.
    (perf puts the gateway's whole TLS at ~2-3% of its CPU, so the join is a small saving.)

    nats-py's own flusher writes as soon as the first command of a turn kicks it. Measured on a
    sending gateway's batch path with py-spy, ``StreamWriter.writelines`` (TLS and the system
    call) fell from 27% of its CPU to 8%. With it, strace counted 388 ``write`` calls for 3,000
    messages. The wait adds one loop turn to a lone command's latency; one-at-a-time latency did
    not change measurably. Everything else (the pending buffer, errors, reconnects, ``flush()``) is
    nats-py's: only the loop that drains its flush queue differs, and every future it takes is
    resolved, as nats-py's is."""

    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[int, Callable[[Msg], None]] = {}

    async def subscribe_direct(self, subject: str, handler: Callable[[Msg], None]) -> Subscription:
        """Subscribe with ``handler`` (synchronous and quick: resolving a future, say) called on
        each message as the reading loop parses it, instead of through nats-py's per-subscription
        queue and task. Meant for a reply subscription, where every message only wakes whoever
        waits for it: measured, the queue, the task's wake-up and the callback's coroutine cost
        about as much again as parsing the reply. Resubscribed on reconnect like any other."""

        async def through_the_queue(msg: Msg) -> None:  # what nats-py would call: never, but kept right
            handler(msg)

        sub = await self.subscribe(subject, cb=through_the_queue)
        self._direct[sub._id] = handler
        return sub

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        handler = self._direct.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        sub = self._subs.get(sid)
        if sub is None:  # unsubscribed, a message was on its way
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        sub._received += 1
        if sub._max_msgs > 0 and sub._received >= sub._max_msgs:  # its limit reached, as nats-py does
            self._remove_sub(sid)
        msg = self._build_message(sid, subject, reply, data, await self._process_headers(headers))
        if msg is None:
            return
        try:
            handler(msg)
        except Exception as exc:  # the reading loop must go on: nats-py stops reading on an error
            await self._error_cb(exc)

    def _remove_sub(self, sid: int, max_msgs: int = 0) -> None:
        super()._remove_sub(sid, max_msgs)
        self._direct.pop(sid, None)

    async def _flusher(self) -> None:
        assert self._transport, "Client.connect must be called first"
        assert self._flush_queue, "Client.connect must be called first"
        queue = self._flush_queue
        while True:
            if not self.is_connected or self.is_connecting:
                break
            waiting = [await queue.get()]
            try:
                await asyncio.sleep(0)  # the tasks this turn woke add their commands first
                while not queue.empty():
                    waiting.append(queue.get_nowait())
                if self._pending_data_size > 0:
                    self._transport.writelines([b"".join(self._pending)])
                    self._pending = []
                    self._pending_data_size = 0
                    await self._transport.drain()
            except OSError as e:
                await self._error_cb(e)
                await self._process_op_err(e)
                break
            except (asyncio.CancelledError, RuntimeError, AttributeError):
                break  # RuntimeError: the event loop is closed (as nats-py's flusher)
            finally:
                for future in waiting:
                    if not future.done():  # a flush() waiting on it may have been cancelled
                        future.set_result(None)


# what a backbone says while it elects a stream's leader: requests time out or find no responder
ELECTION_ERRORS = (TimeoutError, NatsTimeoutError, NoRespondersError, NoStreamResponseError, ServiceUnavailableError)


# JetStream's "no suitable peers for placement" (e.g. "peer offline"): a replicated stream asked
# for while the meta leader still counts a peer as offline, as a cluster forms or a node rejoins
NO_PEERS_FOR_PLACEMENT = 10005


def provisioning_may_retry(exc: Exception) -> bool:
    """What a clustered backbone answers for a while and then no more: an election (a timeout,
    no responder) or a placement while a peer is still counted offline."""
    return isinstance(exc, ELECTION_ERRORS) or getattr(exc, "err_code", None) == NO_PEERS_FOR_PLACEMENT


async def patiently(step: Callable[[], Awaitable[T]], *, what: str, patience: float = 30.0) -> T:
    """Run one provisioning step, riding out the moments a clustered backbone spends electing the
    leader of a stream it has just created (requests then time out or find no responder) or
    still counts a peer as offline (a replicated stream cannot be placed). Every step is
    idempotent, so repeating one is safe."""
    try:
        return await retrying(step, on=provisioning_may_retry, patience=patience, first_delay=0.25, max_delay=2.0)
    except ELECTION_ERRORS as exc:
        raise PsvnError(Code.BACKBONE_UNAVAILABLE, f"provisioning {what}: the backbone did not answer",
                        rule="provision") from exc
