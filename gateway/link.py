"""The gateway's handles on the backbone, shared by every part that touches it.

A gateway's connection is replaced whenever it rejoins the backbone (nats-py gives up for good
on an authorisation error, and the service connects again). The parts that send, receive and
sweep therefore hold the :class:`BackboneLink`, never a handle taken from it, so one rejoin
reaches them all; a handle is ``None`` until the first join.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import APIError, ServiceUnavailableError

from psvn.backbone.jsfast import JetStreamOps
from psvn.backbone.natsraw import RawReads
from psvn.core.errors import Code, PsvnError
from psvn.core.retry import retrying

log = structlog.get_logger("psvn.gateway")

PUBLISH_PATIENCE = 8.0  # seconds a publish may wait out a leader election (measured 4-8.6 s)

FIRST_WAIT = 0.2  # seconds before a publish's second try; doubling to 2 s after

# (subject, data, dedupe id) -> True if the backbone had stored that id already (a duplicate
# within its dedupe window), else False or None (a test's stand-in may say nothing)
Publish = Callable[[str, bytes, str], Awaitable[bool | None]]


# JetStream's "maximum messages per subject exceeded" / "maximum bytes exceeded" (a 503 on the
# wire, so nats-py calls it ServiceUnavailableError): the recipient's inbox is full for this sender
INBOX_FULL = 10077


def _inbox_full(exc: Exception) -> bool:
    return isinstance(exc, APIError) and getattr(exc, "err_code", None) == INBOX_FULL


def _transient(exc: Exception) -> bool:
    """A refusal the stream states (the recipient's quota) will not change in a second; "no
    responders", a timeout or a lost connection is a leader election or a rejoin: ride it out."""
    if _inbox_full(exc):
        return False
    return not isinstance(exc, APIError) or isinstance(exc, ServiceUnavailableError)


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

    async def _publish_deduped(self, subject: str, data: bytes, msg_id: str) -> bool:
        """Publish with the dedupe id; retry with the same id so a retry can never duplicate.
        After a transient failure the tries ride out a leader election, waits doubling from
        0.2 s to 2 s, within ``PUBLISH_PATIENCE`` in all (the first try is a plain await).
        True if the backbone had stored the id before this call (the first try's ack says
        ``duplicate``; a later try's duplicate may be this call's own first try, its ack lost)."""
        tries = 0

        async def once() -> bool:
            nonlocal tries
            tries += 1
            try:
                if self.ops is None:
                    raise ConnectionError("not connected to the backbone")
                ack = await self.ops.publish(subject, data, headers={"Nats-Msg-Id": msg_id}, timeout=3)
                return ack.duplicate and tries == 1  # a later try's duplicate may be our own first try
            except Exception as exc:
                log.warning("publish failed", message_id=msg_id, attempt=tries, error=repr(exc))
                raise

        try:
            return await retrying(once, on=_transient, first_delay=FIRST_WAIT, max_delay=2.0,
                                  patience=PUBLISH_PATIENCE)
        except Exception as exc:
            if _inbox_full(exc):
                raise PsvnError(Code.BACKBONE_UNAVAILABLE,
                                "the recipient's inbox holds as much unacknowledged mail from this member as it "
                                "accepts (its per-sender quota): nothing was sent; retry later with the same "
                                "idempotency_key, once the recipient has acknowledged some",
                                rule="recipient-inbox-full", message_id=msg_id) from exc
            raise PsvnError(Code.BACKBONE_UNAVAILABLE,
                            "the backbone did not confirm the message; retry with the same idempotency_key",
                            rule="publish-ack", message_id=msg_id) from exc

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
