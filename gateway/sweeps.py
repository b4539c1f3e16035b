"""What happens to a message when nothing happens to it: expiry and retention.

A sent message nobody delivers by its expiry becomes ``expired`` for its sender; received mail
whose retention (the policy's, for its type) is over is deleted from the inbox stream. Both are
found by one periodic sweep, so neither needs a timer per message, and both are also applied
when the record is next read (:meth:`Sweeper.expire_if_due`), so a restart that forgot what it
was watching changes nothing a caller can see.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime

import msgspec
import structlog
from nats.js.errors import APIError

from psvn.backbone.jsfast import already_gone
from psvn.gateway.audit import Audit
from psvn.gateway.config import GatewaySection
from psvn.gateway.link import BackboneLink
from psvn.gateway.metrics import Metrics
from psvn.gateway.sent_step import SentSteps
from psvn.gateway.store import InRecord, OutRecord, StateStore
from psvn.protocol.envelope import now_rfc3339, parse_time
from psvn.protocol.lifecycle import State
from psvn.protocol.subjects import inbox_stream

log = structlog.get_logger("psvn.gateway")

UNSETTLED = (State.ACCEPTED.value, State.SENT.value)  # a sent message no receipt has settled yet


class Sweeper:
    def __init__(self, *, org: str, settings: GatewaySection, store: StateStore, link: BackboneLink,
                 clock: Callable[[], datetime], metrics: Metrics, audit: Audit, sent_steps: SentSteps,
                 stopping: Callable[[], bool]) -> None:
        self.org = org
        self.sent_steps = sent_steps  # an expiry of a message still accepted writes its sent step
        self.settings = settings  # read at each sweep: the intervals may be changed while running
        self.store = store
        self.link = link
        self.clock = clock
        self.metrics = metrics
        self.audit = audit
        self.stopping = stopping
        self.expiring: dict[str, str] = {}  # message id -> expiry, of this instance's unsettled sends
        self.begun = 0  # sweeps begun (tests wait on it: "several sweeps ran", not a sleep)

    # -- expiry of what this member sent -----------------------------------------------------
    def track(self, rec: OutRecord) -> None:
        """Watch a sent message's expiry until a receipt settles it (bounded: past the bound, and
        after a restart, expiry still applies when the status is read and at the recipient)."""
        if rec.expires and len(self.expiring) < self.settings.max_tracked_expiries:
            self.expiring[rec.id] = rec.expires
            self.metrics.tracked_expiries.set(len(self.expiring))

    def settled(self, message_id: str) -> None:
        if self.expiring.pop(message_id, None) is not None:
            self.metrics.tracked_expiries.set(len(self.expiring))

    async def expire_if_due(self, rec: OutRecord) -> OutRecord:
        """``expired`` for a message not delivered by its expiry (the sender is told by the
        status and the audit record)."""
        if not rec.expires or rec.status not in UNSETTLED or parse_time(rec.expires) > self.clock():
            return rec
        moved = await self.store.move_out(rec.id, State.EXPIRED, reason=f"not delivered by {rec.expires}",
                                          only_from=UNSETTLED, sent_at=self.sent_steps.peek(rec.id))
        self.sent_steps.overtaken(rec.id)
        self.settled(rec.id)
        if moved is not None and moved.status == State.EXPIRED.value and moved.status != rec.status:
            await self.audit("expired", message_id=rec.id, to=rec.to, type=rec.type)
        return moved or rec

    # -- the sweep ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Sent messages not delivered by their expiry become ``expired``; received mail whose
        retention (the policy's, for its type) is over is deleted: open mail from memory at
        every sweep, closed mail by a streamed walk every ``retention_scan_seconds``."""
        loop = asyncio.get_running_loop()
        last_scan = loop.time()
        while not self.stopping():
            self.begun += 1
            await asyncio.sleep(self.settings.expiry_sweep_seconds)
            now = self.clock()
            for mid, expires in list(self.expiring.items()):
                if parse_time(expires) <= now:
                    try:
                        rec = await self.store.out_record(mid)
                        if rec is None:
                            self.settled(mid)
                        else:
                            await self.expire_if_due(rec)
                    except Exception as exc:  # the next sweep tries again
                        log.warning("expiry sweep failed", message_id=mid, error=repr(exc))
            due = now_rfc3339(now)  # one format throughout (UTC, milliseconds, Z): compared as text
            for got in list(self.store.open.values()):
                if got.retain_until and got.retain_until <= due:
                    try:
                        await self.retention_over(got)
                    except Exception as exc:  # the next sweep tries again
                        log.warning("retention sweep failed", message_id=got.id, error=repr(exc))
            if loop.time() - last_scan >= self.settings.retention_scan_seconds:
                last_scan = loop.time()
                if self.store.policy_floor:  # keep the rollback floor alive past the bucket's TTL
                    with contextlib.suppress(Exception):
                        await self.store.set_policy_floor(self.store.policy_floor)
                try:
                    async for got in self.store.closed_mail():
                        if got.retain_until and not got.deleted and parse_time(got.retain_until) <= now:
                            await self.retention_over(got)
                except Exception as exc:  # the next scan tries again
                    log.warning("retention scan failed", error=repr(exc))

    # -- retention of what this member received ----------------------------------------------
    async def retention_over(self, rec: InRecord) -> None:
        """Delete the mail from the inbox stream, then mark its entry deleted (each step
        idempotent: another instance, or the stream's own max age, may have deleted it first).
        The entry stays, closed, until the state bucket's TTL, so a replay of the message is
        recognised; after that the arrival age check refuses it."""
        assert self.link.net_ops is not None
        try:  # what the policy's retention deletes is erased: its bytes overwritten on disk
            await self.link.net_ops.delete_msg(inbox_stream(self.org), rec.seq, erase=True)
        except APIError as exc:
            if not already_gone(exc):
                raise
        deleted = now_rfc3339(self.clock())
        if rec.status == State.DELIVERED.value:  # open mail: closed as deleted
            await self.store.close(msgspec.structs.replace(rec, deleted=deleted))
        elif await self.store.update_done(rec.id, lambda r: None if r.deleted else msgspec.structs.replace(
                r, deleted=deleted)) is None:
            return
        await self.audit("retention-deleted", message_id=rec.id, source=rec.source, type=rec.type,
                         status=rec.status, retain_until=rec.retain_until, direction="ingress")
        log.info("message deleted: retention over", message_id=rec.id, type=rec.type)
