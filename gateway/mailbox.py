"""The end of the way: local systems read the member's mail, acknowledge it, and ask what became
of what they sent.

Mail lives in two places: its entry (status, mailbox, where it sits) in the member's state
bucket, and its sealed bytes in the inbox stream, opened again on every read, so no payload
is kept anywhere else. ``gateway.system_mailboxes`` limits a system to its own mailboxes, and to
the status of what it sent itself.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import msgspec
from nats.js.errors import APIError

from psvn.backbone.jsfast import already_gone
from psvn.core.errors import Code, PsvnError
from psvn.gateway import core
from psvn.gateway.consent import ConsentLookup
from psvn.gateway.egress import Egress
from psvn.gateway.parts import Part, Shared
from psvn.gateway.store import InRecord, OutRecord
from psvn.gateway.sweeps import Sweeper
from psvn.protocol.envelope import Envelope
from psvn.protocol.lifecycle import State
from psvn.protocol.subjects import MAILBOX_MAX_AGE_DAYS, inbox_stream


@dataclass(frozen=True)
class Opened:
    record: InRecord
    envelope: Envelope
    payload: bytes


class Mailbox(Part):
    def __init__(self, shared: Shared, *, egress: Egress, sweeper: Sweeper, consent: ConsentLookup) -> None:
        super().__init__(shared)
        self.egress = egress  # the acknowledged receipt goes back to the sender
        self.sweeper = sweeper  # a status read applies an expiry that is due
        self.consent = consent

    # -- what this member sent ---------------------------------------------------------------
    async def status(self, message_id: str, *, system: str | None = None) -> OutRecord:
        """A sent message's status. A system limited by ``gateway.system_mailboxes`` sees only
        what it sent itself (as it reads only its own mailboxes); others see every status.
        Read where it lives when this instance has not heard of it yet (another instance of this
        member's gateway behind the same load balancer may have just written it)."""
        rec = await self.store.out_record(message_id)
        if rec is None:
            raise PsvnError(Code.NOT_FOUND, f"no message {message_id!r} was sent through this gateway",
                            field="id", rule="exists", message_id=message_id)
        rec = await self.sweeper.expire_if_due(rec)
        if system is not None and system in self.settings.system_mailboxes and rec.system \
                and rec.system != system:
            raise PsvnError(Code.FORBIDDEN, f"system {system!r} may read the status only of what it sent",
                            field="id", rule="sender-system", message_id=message_id)
        return rec

    async def sent(self, *, system: str | None = None, status: str | None = None, after: int = 0,
                   limit: int = 100) -> list[tuple[int, OutRecord]]:
        """What was sent, in the order of each message's last change, with its position (what a
        cursor continues after): read from the state bucket a page at a time, never held.

        A restricted system sees what it sent itself, as with :meth:`status`; an expiry that is
        due is applied as the record is read (it then comes again later, as ``expired``)."""
        own = system if system is not None and system in self.settings.system_mailboxes else None

        def keep(rec: OutRecord) -> bool:
            return (own is None or rec.system == own) and (status is None or rec.status == status)

        found = await self.store.sent(after=after, limit=limit, keep=keep)
        shown = [(seq, await self.sweeper.expire_if_due(rec)) for seq, rec in found]
        return [(seq, rec) for seq, rec in shown if status is None or rec.status == status]

    # -- what this member received -----------------------------------------------------------
    def may_read(self, system: str | None, rec: InRecord) -> bool:
        allowed = self.settings.system_mailboxes.get(system or "")
        return allowed is None or (rec.mailbox or "") in allowed

    async def inbox(self, *, mailbox: str | None = None, status: str | None = None, limit: int = 100,
                    system: str | None = None, after: int = 0) -> list[InRecord]:
        """Mail in the order it was filed; ``after`` is the paging cursor (an
        :meth:`inbox_position`): only mail filed after it. Delivered mail comes from the
        open-mail index, whose entries arrive in filing order (the state bucket's revisions, one
        ordered watch), so mail filed late never lands behind a cursor already handed out.
        Other statuses (acknowledged, quarantined) come from a streamed walk of the closed
        entries, in arrival order, keeping only the page."""
        wanted = status or State.DELIVERED.value

        def keep(r: InRecord, position: int) -> bool:
            return (position > after and r.status == wanted and not r.deleted
                    and (mailbox is None or r.mailbox == mailbox) and self.may_read(system, r))

        if wanted == State.DELIVERED.value:
            return heapq.nsmallest(limit, (r for r in self.store.open.values() if keep(r, self.inbox_position(r))),
                                   key=self.inbox_position)
        page: list[tuple[int, int, InRecord]] = []  # a max-heap (negated seq) of the lowest `limit`
        async for r in self.store.closed_mail():
            if keep(r, r.seq):
                heapq.heappush(page, (-r.seq, id(r), r))
                if len(page) > limit:
                    heapq.heappop(page)
        return sorted((r for _, _, r in page), key=lambda r: r.seq)

    def inbox_position(self, rec: InRecord) -> int:
        """Where a listed mail stands in its listing: open mail by when it was filed, closed mail
        by when it arrived (the paging cursor of :meth:`inbox`)."""
        if rec.status == State.DELIVERED.value:
            return self.store.filed_at(rec.id)
        return rec.seq

    async def _in_record(self, message_id: str, system: str | None = None) -> InRecord:
        rec = await self.store.in_record(message_id)
        if rec is None:
            raise PsvnError(Code.NOT_FOUND, f"no message {message_id!r} in this gateway's mailbox",
                            field="id", rule="exists", message_id=message_id)
        if rec.deleted:
            raise PsvnError(Code.NOT_FOUND, f"message {message_id} was deleted at {rec.deleted}: the policy's "
                            f"retention for {rec.type} ended", field="id", rule="retention", message_id=message_id)
        if not self.may_read(system, rec):
            raise PsvnError(Code.FORBIDDEN, f"system {system!r} may not read mailbox {rec.mailbox or '(main)'}",
                            field="id", rule="mailbox-access", message_id=message_id)
        return rec

    async def get(self, message_id: str, *, system: str | None = None) -> Opened:
        rec = await self._in_record(message_id, system)
        if rec.status == State.QUARANTINED.value:
            raise PsvnError(Code.FORBIDDEN, f"message {message_id} is quarantined: {rec.reason}",
                            field="id", rule="quarantined", message_id=message_id)
        net_ops = self.link.net_ops
        if net_ops is None:
            raise PsvnError(Code.BACKBONE_UNAVAILABLE, "the gateway is not connected to the backbone; retry later",
                            rule="backbone-connected", message_id=message_id)
        try:
            raw = await net_ops.direct_get(inbox_stream(self.member.org), seq=rec.seq)
        except APIError as exc:
            if not already_gone(exc):
                raise
            raw = None
        if raw is None:
            raise PsvnError(Code.NOT_FOUND, f"message {message_id} is no longer in the inbox stream (older than "
                            f"its {MAILBOX_MAX_AGE_DAYS}-day maximum age)", field="id", rule="mailbox-age",
                            message_id=message_id)
        inc = core.open_incoming(raw.data, subject=raw.subject, message_id=message_id,
                                 me=self.member.identity, registry=self.registry, snap=self.member.snapshot,
                                 now=self.clock(), checks=False, published=raw.time)
        return Opened(record=rec, envelope=inc.envelope, payload=inc.payload)

    async def ack(self, message_id: str, *, system: str | None = None) -> InRecord:
        async with self.store.lock(message_id):
            rec = await self._in_record(message_id, system)
            if rec.status == State.ACKNOWLEDGED.value:
                # a retry after a failed receipt: send it again (same dedupe id, so never twice)
                await self.egress.receipt(message_id, State.ACKNOWLEDGED.value, rec.source)
                return rec
            if rec.status != State.DELIVERED.value:
                raise PsvnError(Code.CONFLICT, f"message {message_id} is {rec.status}, it cannot be acknowledged",
                                field="id", rule="lifecycle", message_id=message_id)
            rec = msgspec.structs.replace(rec, status=State.ACKNOWLEDGED.value)
            await self.store.close(rec)
        await self.egress.receipt(message_id, State.ACKNOWLEDGED.value, rec.source)
        await self.audit("acknowledged", message_id=message_id, source=rec.source, type=rec.type)
        return rec

    # -- the operator's own reader -----------------------------------------------------------
    async def record_consent(self, message_id: str, issuer: str, payload: bytes) -> None:
        """Operator gateway: a consent change from the PDS is read as a local system would read
        it: made to take effect network-wide, then acknowledged."""
        changed = await self.consent.record(payload, issuer=issuer, message_id=message_id, operator=self.member.org,
                                            key=self.member.identity.signing_key)
        await self.audit("consent-recorded", message_id=message_id, source=issuer, changed=changed)
        await self.ack(message_id)
