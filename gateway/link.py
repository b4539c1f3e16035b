"""The gateway's handles on the backbone, shared by every part that touches it.

A gateway's connection is replaced whenever it rejoins the backbone (nats-py gives up for good
on an authorisation error, and the service connects again). The parts that send, receive and
sweep therefore hold the :class:`BackboneLink`, never a handle taken from it, so one rejoin
reaches them all; a handle is ``None`` until the first join.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from psvn.backbone.jsfast import JetStreamOps
from psvn.backbone.natsraw import RawReads
from psvn.core.errors import Code, PsvnError

log = structlog.get_logger("psvn.gateway")

PUBLISH_PATIENCE = 8.0  # seconds a publish may wait out a leader election (measured 4-8.6 s)

Publish = Callable[[str, bytes, str], Awaitable[None]]


def already_gone(exc: Exception) -> bool:
    """JetStream's 'no message found' (err 10037 / 10057): deleted already, by us or by max age."""
    return isinstance(exc, NotFoundError) or getattr(exc, "err_code", None) in (10037, 10057)


class BackboneLink:
    def __init__(self) -> None:
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None  # its own account's JetStream: its state bucket
        self.net: JetStreamContext | None = None  # the network account's, through its imports
        self.raw: RawReads | None = None  # reads a sender's headers cannot fool (backbone.natsraw)
        self.ops: JetStreamOps | None = None  # the per-message publishes and reads (backbone.jsfast)
        self.net_ops: JetStreamOps | None = None  # the same, of the network account's API
        # Every message and receipt leaves through this one attribute (not a method), so a test
        # can stand a faulty backbone in front of both paths at once.
        self.publish: Publish = self._publish_deduped

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def _publish_deduped(self, subject: str, data: bytes, msg_id: str) -> None:
        """Publish with the dedupe id; retry with the same id so a retry can never duplicate."""
        delay = 0.2
        deadline = time.monotonic() + PUBLISH_PATIENCE
        attempt = 0
        while True:
            attempt += 1
            try:
                if self.ops is None:
                    raise ConnectionError("not connected to the backbone")
                await self.ops.publish(subject, data, headers={"Nats-Msg-Id": msg_id}, timeout=3)
                return
            except Exception as exc:
                log.warning("publish failed", message_id=msg_id, attempt=attempt, error=repr(exc))
                # a refusal the stream states (e.g. the recipient's quota) will not change in a
                # second; "no responders" or a timeout is a leader election: ride it out
                transient = not isinstance(exc, APIError) or isinstance(exc, ServiceUnavailableError)
                if not transient or time.monotonic() + delay > deadline:
                    raise PsvnError(Code.BACKBONE_UNAVAILABLE,
                                    "the backbone did not confirm the message; retry with the same idempotency_key",
                                    rule="publish-ack", message_id=msg_id) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        """Close the readers, the publishers and the connection (the followers that hang off it
        are stopped by the service first)."""
        if self.raw is not None:
            await self.raw.close()
        for ops in (self.ops, self.net_ops):
            if ops is not None:
                await ops.close()
        self.ops = self.net_ops = None
        if self.nc is not None:
            # close, not drain: consumption has stopped, and anything fetched but not acked is
            # redelivered by JetStream to the next gateway; drain would wait on dead watchers.
            with contextlib.suppress(Exception):
                await self.nc.close()
