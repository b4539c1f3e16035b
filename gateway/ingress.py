"""The way in: what arrives in the member's inbox stream, messages and receipts alike.

A message is opened, checked and decided (:mod:`gateway.core` holds the rules), then filed in
the mailbox (delivered) or moved to the member's quarantine stream; either way the sender gets
a receipt and the event is audited. A receipt for a message this member sent moves that
message's record on. Anything may arrive twice (JetStream redelivers what was not acked), so
every step after filing is repeated safely from what was filed (:meth:`Ingress._redelivered`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol

import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from psvn.backbone.connect import ELECTION_ERRORS
from psvn.backbone.jsfast import already_gone
from psvn.backbone.natsraw import Puller
from psvn.core import addresses
from psvn.core.errors import Code, PsvnError
from psvn.core.retry import retrying
from psvn.core.tasks import together
from psvn.gateway import core
from psvn.gateway.consent import OPERATOR_TYPE, Consulted
from psvn.gateway.egress import Consult, Egress
from psvn.gateway.feeds import FeedView
from psvn.gateway.link import PUBLISH_PATIENCE
from psvn.gateway.mailbox import Mailbox
from psvn.gateway.parts import Part, Shared
from psvn.gateway.store import KEY_ID, Gone, InRecord, OutRecord
from psvn.gateway.sweeps import UNSETTLED, Sweeper
from psvn.gateway.webhook import WebhookPusher
from psvn.policies.consent import TYPE as CONSENT_TYPE
from psvn.policies.consent import ConsentRegistry
from psvn.protocol.envelope import now_rfc3339, parse_time
from psvn.protocol.lifecycle import State
from psvn.protocol.subjects import CONSUMER, MAILBOX_MAX_AGE_DAYS, inbox_stream, quarantine_subject

log = structlog.get_logger("psvn.gateway")

LAG_RETRIES = 5  # deliveries of a message before a refusal our registry view may explain is final
# Refusals a registry view a moment behind explains: a new member, or a member's key rotation
# (signed with a key we do not list yet; sealed to a key another instance of ours holds).
LAG_CODES = frozenset({Code.UNKNOWN_RECIPIENT, Code.SIGNATURE_INVALID, Code.DECRYPT_FAILED})
# past this, a batch's handled messages get their ack timer restarted before the receipts go (the
# inbox consumer's ack_wait is 10 s; a state read or publish may ride out an 8 s election)
SLOW_BATCH_SECONDS = 3.0
RECEIPT_MOVES_AT_ONCE = 32  # status moves one receipt message runs concurrently (each may read its record)
# a sender's message id we may use as a key: dot-separated tokens, none empty (``in.a..b`` is no
# subject, so such mail could never be filed and came back for ever), 128 characters at most
MSG_ID = re.compile(r"(?=[A-Za-z0-9._-]{1,128}\Z)[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")


def _header_safe(text: str) -> str:
    """A header value from our own rule names: printable ASCII, one line, bounded."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:120]


class Owe(Protocol):
    """Owe the sender of the message being handled a receipt (sent with the batch's others)."""

    def __call__(self, message_id: str, status: str, to_org: str, *, reason: str | None = None,
                 rule_ids: list[str] | None = None) -> None: ...


class ReceiptsDue:
    """The receipts one fetched batch owes, by sender: each item names its message, the SHA-256
    of the sealed bytes that arrived and when the backbone stored them (the sender's ``sent``
    step), and remembers which fetched message it answers (that message is acked only once its
    receipt is on the backbone)."""

    def __init__(self) -> None:
        self.by_sender: dict[str, list[tuple[int, core.ReceiptItem]]] = {}

    def for_message(self, index: int, msg: Msg) -> Owe:
        said: list[str] = []  # (sha256, stored), worked out once, when a receipt is first owed

        def owe(message_id: str, status: str, to_org: str, *, reason: str | None = None,
                rule_ids: list[str] | None = None) -> None:
            if not said:
                said.extend((hashlib.sha256(msg.data).hexdigest(), now_rfc3339(msg.metadata.timestamp)))
            self.by_sender.setdefault(to_org, []).append((index, core.ReceiptItem(
                message_id=message_id, status=status, reason=reason, rule_ids=rule_ids or [], sha256=said[0],
                stored=said[1])))

        return owe


class Ingress(Part):
    def __init__(self, shared: Shared, *, consult: Consult, egress: Egress, mailbox: Mailbox, sweeper: Sweeper,
                 feeds: FeedView, webhook: WebhookPusher | None, stopping: Callable[[], bool]) -> None:
        super().__init__(shared)
        self.consult = consult
        self.egress = egress  # receipts go back to senders
        self.mailbox = mailbox  # the operator's gateway reads (and acknowledges) consent mail itself
        self.sweeper = sweeper  # a receipt settles a sent message's expiry
        self.feeds = feeds
        self.webhook = webhook
        self.stopping = stopping

    # -- pulling the inbox -------------------------------------------------------------------
    async def consume(self) -> None:
        """Pull the inbox's consumer. Not nats-py's ``fetch``: it takes a stored message whose
        sender set a ``Status`` header for a server status and drops it unseen (``backbone.natsraw``)."""
        batch = self.settings.fetch_batch
        assert self.link.net is not None and self.link.raw is not None
        puller = await self.link.raw.puller(self.link.net, inbox_stream(self.org), CONSUMER)
        try:
            await self._consume_with(puller, batch)
        finally:
            await puller.close()

    async def _consume_with(self, puller: Puller, batch: int) -> None:
        while not self.stopping():
            try:
                msgs = await puller.fetch(batch, timeout=1)
            except (TimeoutError, NatsTimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("fetch failed", error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            await self._handle_batch(msgs, fetched_ahead=puller.waiting)

    async def _handle_batch(self, msgs: list[Msg], *, fetched_ahead: Callable[[], list[Msg]] = list) -> None:
        """Handle a fetched batch concurrently (each message waits on backbone round trips, not
        the CPU, so they overlap well), then send the receipts it owes, one receipt message per
        sender, then settle each message: acked once handled and receipted, else left for
        redelivery (redelivered mail is recognised on file and only its receipt is sent again).
        ``fetched_ahead``: the messages delivered meanwhile for the next fetch, whose ack timers
        a slow batch restarts too."""
        due = ReceiptsDue()
        loop = asyncio.get_running_loop()
        started = loop.time()
        # (one message, what an idle gateway fetches, is handled in this task)
        handled = await together([self._handle_safely(msg, due, i) for i, msg in enumerate(msgs)])
        if loop.time() - started > SLOW_BATCH_SECONDS:  # one slow message (an election): the handled
            held = [msg for msg, ok in zip(msgs, handled, strict=True) if ok] + fetched_ahead()
            await asyncio.gather(*(self._in_progress(msg) for msg in held))
        unreceipted = await self._send_receipts(due)
        # in turn, not a task each: an ack (or nak) is a publish JetStream does not answer, so
        # each only joins the connection's outgoing buffer, and all leave in one write
        for i, (msg, ok) in enumerate(zip(msgs, handled, strict=True)):
            await self._settle(msg, ok and i not in unreceipted)

    async def _handle_safely(self, msg: Msg, due: ReceiptsDue, index: int) -> bool:
        try:
            await self._handle(msg, due.for_message(index, msg))
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never drop: leave it for redelivery
            log.error("message handling failed; will be redelivered", subject=msg.subject, error=repr(exc))
            return False

    async def _send_receipts(self, due: ReceiptsDue) -> set[int]:
        """Publish what ``due`` holds, one receipt message per sender; the indexes of the
        messages whose receipt could not be sent (redelivered, they are receipted again then)."""
        failed: set[int] = set()

        async def one(to_org: str, owed: list[tuple[int, core.ReceiptItem]]) -> None:
            try:
                await self.egress.receipts(to_org, [item for _, item in owed])
            except Exception as exc:
                log.warning("receipts not sent; their messages will be redelivered", to=to_org, count=len(owed),
                            error=repr(exc))
                failed.update(index for index, _ in owed)

        await asyncio.gather(*(one(to_org, owed) for to_org, owed in due.by_sender.items()))
        return failed

    @staticmethod
    async def _in_progress(msg: Msg) -> None:
        """Restart a handled message's ack timer while its receipt is still to be sent, so a slow
        batch is not redelivered whole (to this instance or another) for one slow message."""
        with contextlib.suppress(Exception):
            await msg.in_progress()

    @staticmethod
    async def _settle(msg: Msg, done: bool) -> None:
        with contextlib.suppress(Exception):
            if done:
                await msg.ack()
            else:
                await msg.nak(delay=2)

    async def _handle(self, msg: Msg, owe: Owe) -> None:
        headers = msg.headers or {}
        seq = msg.metadata.sequence.stream
        raw_id = headers.get("Nats-Msg-Id")
        # The id is chosen by the sender: only a well-formed one may become a key of our state.
        # A receipt's id has dots (rcpt.<id>.<status>); a message's may not, since the mailbox
        # reads and acknowledges mail by a dotless id: one with dots is filed under its stream
        # sequence instead, which its envelope then contradicts, so it is quarantined.
        receipt = msg.subject.startswith("psvn.rcpt.")
        pattern = MSG_ID if receipt else KEY_ID
        msg_id = raw_id if raw_id is not None and pattern.fullmatch(raw_id) else f"seq-{seq}"
        if receipt:
            await self._handle_receipt(msg, msg_id, seq, owe)
        else:
            await self._handle_message(msg, msg_id, seq, owe)

    # -- messages ----------------------------------------------------------------------------
    async def _handle_message(self, msg: Msg, msg_id: str, seq: int, owe: Owe) -> None:
        filed = self.store.open.get(msg_id)
        if filed is not None:  # closed mail is recognised by store.file, after the decision
            if not self._same_sender(filed, msg):
                await self._id_taken(msg, msg_id, seq, owe)
                return
            await self._redelivered(filed, owe)
            return
        await self._open_and_file(msg, msg_id, seq, owe)

    @staticmethod
    def _sender_of(msg: Msg) -> str:
        """The organisation a message came from, by the subject it was published on (the
        backbone lets each member publish only on its own token)."""
        return addresses.from_token(msg.subject.split(".")[-1])

    def _same_sender(self, on_file: InRecord | Gone, msg: Msg) -> bool:
        return isinstance(on_file, Gone) or addresses.org_of(on_file.source) == self._sender_of(msg)

    async def _id_taken(self, msg: Msg, msg_id: str, seq: int, owe: Owe) -> None:
        """A message whose id is on file from another sender is no redelivery: refused (filed
        under its sequence), and its sender told ``rejected``, never dropped as a repeat of
        mail that is not its own."""
        await self._quarantine(msg, msg_id, seq, PsvnError(
            Code.CONFLICT, f"message id {msg_id} is already on file here from another sender", field="id",
            rule="message-id-taken", message_id=msg_id), now_rfc3339(self.clock()), owe)

    async def _open_and_file(self, msg: Msg, msg_id: str, seq: int, owe: Owe) -> None:
        received = now_rfc3339(self.clock())
        consulted = Consulted(consent=ConsentRegistry())
        try:
            me, snap = self.member.identity, self.member.snapshot
            opening = core.open_message(msg.data, subject=msg.subject, message_id=msg_id, me=me,
                                        registry=self.registry, snap=snap, now=self.clock(),
                                        published=msg.metadata.timestamp)
            consulted = await self.consult(opening.consent_subjects, msg_id)
            inc = core.decide_incoming(opening, me=me, snap=snap, message_id=msg_id, consent=consulted.consent)
        except PsvnError as exc:
            if exc.code in LAG_CODES and msg.metadata.num_delivered < LAG_RETRIES:
                raise  # our registry view (or this instance's keys) may lag: redelivered shortly (nak)
            if exc.code is Code.BACKBONE_UNAVAILABLE:
                raise  # a consent lookup the backbone did not answer: redelivered, never decided without it
            if exc.code is Code.POLICY_DENIED and consulted.lagging and msg.metadata.num_delivered < LAG_RETRIES:
                raise  # a consent record refused for its signature: our registry view may lag the operator's
            await self._quarantine(msg, msg_id, seq, exc, received, owe)
            return
        except Exception as exc:  # a malformed message must be quarantined, not redelivered for ever
            malformed = PsvnError(Code.INVALID_ENVELOPE, f"malformed message: {exc!r}", rule="malformed",
                                  message_id=msg_id)
            await self._quarantine(msg, msg_id, seq, malformed, received, owe)
            return
        env = inc.envelope
        share = self.settings.sender_share_bytes
        if self.store.held.get(env.sender_org, 0) + len(inc.payload) > share:
            await self._quarantine(msg, msg_id, seq, PsvnError(
                Code.FORBIDDEN, f"{env.sender_org} already holds {self.store.held.get(env.sender_org, 0)} bytes of "
                f"unacknowledged mail in this inbox, its share is {share}: refused until the recipient acknowledges",
                field="source", rule="sender-share", message_id=msg_id), received, owe)
            return
        if env.topic is not None:
            sub = self.feeds.get(self.org, env.topic)
            if sub is None or sub.purpose != env.purpose:
                await self._quarantine(msg, msg_id, seq, PsvnError(
                    Code.POLICY_DENIED, f"a feed event on {env.topic!r} for {env.purpose}, but this member has "
                    "no such subscription", field="topic", rule="not-subscribed", message_id=msg_id), received, owe)
                return
        self.metrics.count(self.metrics.decisions, "ingress", "allow")
        # the policy's retention for the type, within what the inbox stream keeps (a day's margin,
        # so the gateway deletes and audits it before the stream's own max age does)
        days = min(inc.decision.retention_days if inc.decision.retention_days is not None else MAILBOX_MAX_AGE_DAYS,
                   MAILBOX_MAX_AGE_DAYS - 1)
        on_file = await self.store.file(InRecord(
            id=env.id, source=env.source, to=env.to, type=env.type, time=env.time, status=State.DELIVERED.value,
            size=len(inc.payload), seq=seq, classification=env.classification, purpose=env.purpose,
            correlation_id=env.correlation_id, mailbox=env.mailbox, received=received,
            retain_until=now_rfc3339(parse_time(received) + timedelta(days=days))))
        # (env.id is msg_id: open_message refuses any other)
        if on_file is not None:  # filed before (a redelivery, or another instance): finish its steps, once
            if not self._same_sender(on_file, msg):
                await self._id_taken(msg, msg_id, seq, owe)
                return
            await self._redelivered(on_file, owe)
            return
        self.metrics.count(self.metrics.received, "delivered")
        # filed: it is delivered. Audit first, so the record shares the receipt's socket write
        await self.audit("delivered", message_id=env.id, source=env.source, to=env.to, type=env.type,
                         purpose=env.purpose, classification=env.classification, rule_ids=inc.decision.rule_ids,
                         policy_version=inc.decision.policy_version, direction="ingress")
        owe(env.id, State.DELIVERED.value, env.sender_org)
        log.debug("message delivered", message_id=env.id, source=env.source, type=env.type)
        if self.webhook is not None:
            self.webhook.notify({"event": "message.delivered", "id": env.id, "from": env.source, "to": env.to,
                                 "mailbox": env.mailbox, "type": env.type, "time": env.time,
                                 "size": len(inc.payload), "href": f"/v1/inbox/{env.id}"})
        if env.type == CONSENT_TYPE and self.member.identity.member_type == OPERATOR_TYPE and inc.sender.type == "pds":
            await self.mailbox.record_consent(env.id, env.sender_org, inc.payload)

    async def _redelivered(self, rec: InRecord | Gone, owe: Owe) -> None:
        """A message already filed came again (we failed after filing it): repeat what follows
        filing. Every step is idempotent: a receipt saying again what one said before moves
        no status (and an identical receipt message is stored once, by its dedupe id)."""
        if isinstance(rec, Gone):  # filed so long ago that its entry aged out: nothing to repeat
            log.info("message filed long ago came again; ignored", message_id=rec.id)
            return
        if rec.status in (State.DELIVERED.value, State.ACKNOWLEDGED.value):
            owe(rec.id, rec.status, addresses.org_of(rec.source))
            if rec.status == State.DELIVERED.value and rec.type == CONSENT_TYPE \
                    and self.member.identity.member_type == OPERATOR_TYPE:
                opened = await self.mailbox.get(rec.id)
                await self.mailbox.record_consent(rec.id, addresses.org_of(rec.source), opened.payload)
        elif rec.status == State.QUARANTINED.value and rec.source in self.registry.members and rec.reason \
                and not rec.reason.startswith((Code.DECRYPT_FAILED.value, Code.SIGNATURE_INVALID.value)):
            status = State.EXPIRED if rec.reason.startswith(Code.EXPIRED.value) else State.REJECTED
            owe(rec.id, status.value, rec.source, reason=rec.reason, rule_ids=[rec.rule] if rec.rule else [])

    # -- quarantine --------------------------------------------------------------------------
    async def _quarantine(self, msg: Msg, msg_id: str, seq: int, exc: PsvnError, received: str, owe: Owe,
                          *, filed_as: str | None = None) -> None:
        """File a refused message closed (under ``filed_as``, else its id), and move it to quarantine."""
        sender_org = self._sender_of(msg)
        on_file = await self.store.file(InRecord(
            id=filed_as or msg_id, source=sender_org, to=self.org, type="unknown", time=received,
            status=State.QUARANTINED.value, size=len(msg.data), seq=seq,
            reason=core.stored_reason(exc), rule=exc.rule, received=received))
        if on_file is not None:
            if filed_as is None and not self._same_sender(on_file, msg):  # the id is another sender's:
                await self._quarantine(msg, msg_id, seq, exc, received, owe, filed_as=f"seq-{seq}")  # file
                return                                                       # this refusal by sequence
            await self._redelivered(on_file, owe)  # already on file (a redelivery)
            return
        self.metrics.count(self.metrics.received, "quarantined")
        await self._move_to_quarantine(msg, msg_id, seq, exc)
        if exc.code is Code.POLICY_DENIED:
            self.metrics.count(self.metrics.decisions, "ingress", "deny")
        log.warning("message quarantined", message_id=msg_id, code=exc.code.value, rule=exc.rule,
                    source=sender_org)
        await self.audit("quarantined", message_id=msg_id, source=sender_org, code=exc.code.value, rule=exc.rule,
                         policy_version=self.member.policy.version, direction="ingress")
        if sender_org in self.registry.members and exc.code not in (Code.DECRYPT_FAILED, Code.SIGNATURE_INVALID):
            status = State.EXPIRED if exc.code is Code.EXPIRED else State.REJECTED
            owe(msg_id, status.value, sender_org, reason=core.stored_reason(exc),
                rule_ids=exc.extra.get("rule_ids") or ([exc.rule] if exc.rule else []))

    async def _move_to_quarantine(self, msg: Msg, msg_id: str, seq: int, exc: PsvnError) -> None:
        """Out of the inbox, into the member's bounded quarantine stream: junk a sender pushes at
        us then counts against its quota in the inbox only until we have looked at it, and never
        fills the inbox for the other senders. Copied first, deleted after (a failure leaves it in
        the inbox, where the next look finds it on file)."""
        js, net = self.link.js, self.link.net_ops
        assert js is not None and net is not None
        headers = {"Nats-Msg-Id": f"q-{seq}", "Psvn-Subject": msg.subject, "Psvn-Message-Id": msg_id,
                   "Psvn-Rule": _header_safe(exc.rule or exc.code.value)}
        try:
            await js.publish(quarantine_subject(self.org), msg.data, headers=headers, timeout=3)
            await net.delete_msg(inbox_stream(self.org), seq)
        except Exception as err:  # kept in the inbox: nothing is lost, the quota is just held longer
            log.warning("quarantined message left in the inbox", message_id=msg_id, error=repr(err))

    # -- receipts for what this member sent --------------------------------------------------
    async def _handle_receipt(self, msg: Msg, rid: str, seq: int, owe: Owe) -> None:
        now = now_rfc3339(self.clock())
        try:
            receipts = core.open_receipts(msg.data, subject=msg.subject, receipt_msg_id=rid,
                                          me=self.member.identity, registry=self.registry,
                                          published=msg.metadata.timestamp)
        except PsvnError as exc:
            if exc.code in LAG_CODES and msg.metadata.num_delivered < LAG_RETRIES:
                raise  # as for messages: a rotation or a new member may not have reached us yet
            await self._quarantine(msg, rid, seq, exc, now, owe)
            return
        except Exception as exc:
            await self._quarantine(msg, rid, seq, PsvnError(Code.INVALID_ENVELOPE, f"malformed receipt: {exc!r}",
                                                            rule="malformed"), now, owe)
            return
        gate = asyncio.Semaphore(RECEIPT_MOVES_AT_ONCE)

        async def apply(receipt: core.Receipt) -> None:
            async with gate:
                await self._apply_receipt(receipt)

        outcomes = await asyncio.gather(*(apply(receipt) for receipt in receipts), return_exceptions=True)
        refused: PsvnError | None = None
        for outcome in outcomes:
            if isinstance(outcome, PsvnError) and outcome.code is Code.SENDER_MISMATCH:
                refused = refused or outcome
            elif isinstance(outcome, Exception):
                raise outcome  # e.g. the state bucket did not answer: redelivered, every move is repeatable
            elif isinstance(outcome, BaseException):  # a move cancelled while this task was not: a failure
                raise RuntimeError("a receipt's status move was cancelled") from outcome
        if refused is not None:  # items about another member's messages: kept in quarantine, never applied
            await self._quarantine(msg, rid, seq, refused, now, owe)
            return
        await self._forget_receipt(msg, seq)

    async def _forget_receipt(self, msg: Msg, seq: int) -> None:
        """A receipt applied leaves the inbox: what it said is in each record's history (status,
        time, the hash the recipient signed), and the inbox keeps at most PER_SENDER_MAX_MSGS
        messages on each sender's receipt subject, so kept receipts would, after that many, refuse
        the next (and leave the sender's statuses at ``sent``). The delete rides out a leader
        election like a publish; a failure past that raises, so the receipt is redelivered: applied
        again (every move is repeatable) and deleted then: an applied receipt is never acked
        while it is still in the inbox."""
        net = self.link.net_ops
        assert net is not None
        try:  # removed, not erased: see JetStreamOps.delete_msg
            await retrying(lambda: net.delete_msg(inbox_stream(self.org), seq), on=ELECTION_ERRORS,
                           first_delay=0.2, max_delay=2.0, patience=PUBLISH_PATIENCE)
        except Exception as err:
            if already_gone(err):
                return
            log.warning("applied receipt still in the inbox; it will be redelivered", subject=msg.subject, seq=seq,
                        error=repr(err))
            raise

    async def _apply_receipt(self, receipt: core.Receipt) -> None:
        """Move a sent message's record on as one item of a receipt says, if its recipient said it."""
        try:
            state = State(receipt.status)
        except ValueError:
            log.warning("receipt with unknown status ignored", message_id=receipt.message_id, status=receipt.status)
            return

        def from_its_recipient(sent: OutRecord) -> None:
            if addresses.org_of(sent.to) != receipt.by:  # only the member a message went to may say
                raise PsvnError(Code.SENDER_MISMATCH,    # what became of it
                                f"{receipt.by} sent a receipt for a message addressed to {sent.to}",
                                rule="receipt-recipient", message_id=receipt.message_id)

        # a record still accepted gets its sent step in this same write: when the backbone stored
        # the message, as the receipt says, else when it acknowledged our publish (gateway.sent_step)
        steps = self.egress.sent_steps
        moved = await self.store.move_out(receipt.message_id, state, reason=receipt.reason,
                                          rule_ids=receipt.rule_ids or None, sha256=receipt.sha256,
                                          check=from_its_recipient, reached=True,
                                          sent_at=receipt.stored or steps.peek(receipt.message_id))
        steps.overtaken(receipt.message_id)  # (not reached if the move was refused or failed)
        self.metrics.count(self.metrics.receipts, receipt.status)
        if moved is not None and moved.status not in UNSETTLED:
            self.sweeper.settled(receipt.message_id)
