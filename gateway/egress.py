"""The way out: a local system's request becomes a sealed, signed message on the backbone, and
mail this gateway received is answered with receipts.

A send is checked and decided here (:mod:`gateway.core` holds the rules), recorded in the
member's state bucket before it is published (the record is the idempotency claim, and what the
status reads), published with a dedupe id, and audited. Everything this gateway puts on the
backbone for a message, the message itself and the receipts it returns to senders, goes through
:attr:`BackboneLink.publish`, so a publish is retried and deduplicated the same way for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import msgspec
import structlog

from psvn.core.errors import Code, PsvnError
from psvn.gateway import core
from psvn.gateway.consent import Consulted
from psvn.gateway.parts import Part, Shared
from psvn.gateway.sent_step import SentSteps
from psvn.gateway.store import HistoryEntry, OutRecord, message_id_for
from psvn.gateway.sweeps import Sweeper
from psvn.policies.consent import ConsentRegistry
from psvn.protocol.envelope import SendRequest, check_free_id, new_message_id, parse_time
from psvn.protocol.lifecycle import State

log = structlog.get_logger("psvn.gateway")

Consult = Callable[[frozenset[str], str], Awaitable[Consulted]]


class Claim:
    """A sender's record written while the consent its decision needs is read, so that the two
    round trips overlap instead of following one another (the send then waits for two before
    its answer: these, then the publish).

    The record is written as the decision would be with no consent on file (what nearly every
    decision finds) and is only a claim until the decision is made: :meth:`settle` keeps it if
    the decision made with the consent read says the same (the same rule ids and expiry),
    otherwise rewrites it, and :meth:`withdraw` takes it back if the message is refused. Nothing
    is published before the real decision, so the guess decides nothing; a refused request
    leaves no record, as before, and its retry is decided afresh.

    A repeat of the key on the same instance waits for this decision (:meth:`Egress.send`
    takes turns per key). On another instance a repeat that finds the claim cannot tell it
    from a record whose publish failed, and resumes it (publishes the message, decided by its
    own checks); if this request is then refused, or its consent read fails, the record is
    taken back under that publish. The message is still delivered once (its id is the key's),
    but the sender's record is missing until the next retry with the key writes it again, and
    ``sent`` is audited twice. A listing read in the few milliseconds a claim exists shows it
    as ``accepted``."""

    def __init__(self, egress: Egress, planned: core.Planned, rec: OutRecord) -> None:
        self.egress, self.planned, self.rec = egress, planned, rec
        self.written = asyncio.ensure_future(egress._write_record(rec))
        # (settle or withdraw awaits it; this only marks a failure seen, so that asyncio does
        # not also log it as never retrieved)
        self.written.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def settle(self, rec: OutRecord) -> int | None:
        """The record as decided: the claim's revision (None: the id was taken), or the revision
        of the same record rewritten in place (compare-and-set on the claim's revision) if the
        decision changed what it says."""
        revision = await self.written
        if revision is not None and rec != self.rec:  # the consent read changed the decision's rules
            # (None: another instance resumed the claim and it moved on: answered as a repeat)
            return await self.egress._write_record(rec, over=revision)
        return revision

    async def withdraw(self) -> bool:
        """The message is refused (or was never decided): take the record back, so the key
        stays free. True if the record was this claim's own (whether or not taking it back
        worked: a record left by a failed withdrawal says ``accepted`` for a message never
        sent, as a crash between the record and the publish leaves it)."""
        try:
            revision: int | None = await self.written
        except PsvnError:  # not acknowledged: written or not? Ours if it says what this claim wrote
            try:
                found = await self.egress.store.out_entry(self.rec.id)  # (created and request hash: this request's)
            except Exception as exc:  # unknown: answered as if it were not ours (a retry learns more)
                log.warning("a refused message's record could not be read back", message_id=self.rec.id,
                            error=repr(exc))
                return False
            revision = found[1] if found is not None and found[0] == self.rec else None
        if revision is None:
            return False  # nothing of ours: the record, if any, is an earlier request's
        try:
            await self.egress.store.withdraw_out(self.rec.id, revision)
        except Exception as exc:
            log.warning("a refused message's record was not taken back", message_id=self.rec.id, error=repr(exc))
        return True


class Egress(Part):
    def __init__(self, shared: Shared, *, consult: Consult, sweeper: Sweeper, sent_steps: SentSteps) -> None:
        super().__init__(shared)
        self.consult = consult
        self.sweeper = sweeper  # watches each sent message's expiry
        self.sent_steps = sent_steps  # the sent step of what is published, unless a receipt writes it
        # why the last write of a sent message's record failed (None: it succeeded); readiness
        # reports it, since a gateway that cannot record what it sends cannot accept mail
        self.state_write_error: str | None = None
        self._tasks: set[asyncio.Task[object]] = set()  # held: the loop keeps only weak references

    async def _withdraw(self, claim: Claim) -> bool:
        """:meth:`Claim.withdraw`, finished before this request's turn on its key ends even if
        the request is cancelled meanwhile (a repeat let in early could publish from the claim
        and then lose its record to the withdrawal)."""
        task = asyncio.ensure_future(claim.withdraw())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):  # cancelled again: the task still finishes
                await asyncio.wait([task])
            raise

    async def drain(self, timeout: float) -> None:
        """Let withdrawals under way finish (bounded), before the gateway leaves the backbone."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def reject_request(self, exc: PsvnError, *, system: str | None) -> PsvnError:
        """A send refused before it became a message (malformed JSON, bad envelope, not
        connected): it still gets a message id, a metric, a log line and an audit record."""
        await self._refused(exc, system=system)
        return exc

    async def send(self, req: SendRequest, *, system: str, topic: str | None = None) -> tuple[OutRecord, bool]:
        """Accept a message from a local system (with ``topic``: one delivery of a feed event).
        Returns (record, created).

        Backbone writes on the way: the sender's record (create-once: with an idempotency key
        the message id is derived from it, so this write is also the claim on the key) and the
        sealed message; the audit record goes to the batcher. Awaited round trips: two, the
        record (written while the consent a decision needs is read: :class:`Claim`) and then
        the publish, which waits for the decision made with that consent. The record says
        ``accepted`` when this returns, the message being on the backbone: its receipt's move
        writes the ``sent`` step, or :mod:`gateway.sent_step` does if no receipt comes soon."""
        started = time.perf_counter()
        org = self.member.org
        key = req.idempotency_key
        if key is not None:
            try:
                check_free_id(key, "idempotency_key")
            except PsvnError:  # refused below by the envelope rules, under a message id of its own
                key = None
        secret = self.store.id_secret  # (None before the first start: refused below, not connected)
        message_id = message_id_for(secret, org, system, key) if key and secret else new_message_id()
        request_hash = hashlib.sha256(msgspec.json.encode(req)).hexdigest()
        if not self.link.connected:
            raise await self.reject_request(PsvnError(
                Code.BACKBONE_UNAVAILABLE, "the gateway is not connected to the backbone; retry later",
                rule="backbone-connected", message_id=message_id), system=system)
        if key is None:
            return await self._send(req, system=system, topic=topic, key=None, message_id=message_id,
                                    request_hash=request_hash, started=started)
        # Requests with one key take turns on this instance: a repeat never sees the first one's
        # record while that is still a claim its decision may take back (Claim).
        async with self.store.lock(f"send.{message_id}"):
            return await self._send(req, system=system, topic=topic, key=key, message_id=message_id,
                                    request_hash=request_hash, started=started)

    async def _send(self, req: SendRequest, *, system: str, topic: str | None, key: str | None, message_id: str,
                    request_hash: str, started: float) -> tuple[OutRecord, bool]:
        """:meth:`send`, once the message id is known (and, with a key, this instance's turn taken)."""
        # A retry (same key) is recognised when its record is written: the create-once write
        # fails, and the request is answered with what the first one became (or resumes it).
        started_at = self.clock()  # the envelope's time and the record's creation: one instant
        claim: Claim | None = None  # the record written while the consent was read
        try:
            snap = self.member.snapshot
            checked = core.check_send(req, snap=snap, registry=self.registry, message_id=message_id)

            def plan(consent: ConsentRegistry, at: datetime) -> core.Planned:  # decided, not sealed
                return core.plan_send(req, me=self.member.identity, system=system, snap=snap,
                                      registry=self.registry, message_id=message_id, now=at, consent=consent,
                                      topic=topic, checked=checked)

            if checked.consent_subjects:
                claim = self._claim_early(lambda: plan(ConsentRegistry(), started_at), request_hash, system)
            consulted = await self.consult(checked.consent_subjects, message_id)
            # nothing on file: the decision is the one the early record was written with
            planned = claim.planned if claim is not None and not consulted.consent else plan(consulted.consent,
                                                                                              started_at)
        except PsvnError as exc:
            # decided against (or not decided): the record written meanwhile goes, and a record
            # this request wrote is no earlier request's
            mine = claim is not None and await self._withdraw(claim)
            if key and not mine:  # a retry of a message accepted before (e.g. under another policy version)?
                prior = await self._prior(message_id, request_hash)
                on_backbone = prior is not None and message_id in self.sent_steps.pending  # we published it
                if prior is not None and (prior.status != State.ACCEPTED.value or on_backbone):
                    return prior, False  # what it became
                if prior is not None:  # accepted: on its way unless its publish failed. Not sent again
                    pending = PsvnError(   # (the checks refuse it now), nor refused as if never sent
                        Code.BACKBONE_UNAVAILABLE,
                        f"a request with this idempotency_key was accepted and may be on its way; it is not sent "
                        f"again now ({exc.code.value}: {exc.detail}); retry shortly with the same key to learn "
                        f"what became of it", rule="outcome-pending", message_id=message_id)
                    await self._refused(pending, req, message_id=message_id, system=system, outcome="unknown")
                    raise pending from exc
            if exc.code is Code.POLICY_DENIED:
                self.metrics.count(self.metrics.decisions, "egress", "deny")
            await self._refused(exc, req, message_id=message_id, system=system)
            raise
        except BaseException:  # a bug, a lost connection, a cancelled request: nothing was decided
            if claim is not None:
                with contextlib.suppress(Exception):
                    await self._withdraw(claim)
            raise
        self.metrics.count(self.metrics.decisions, "egress", "allow")
        rec = self._record(planned, request_hash, system)
        revision = await claim.settle(rec) if claim is not None else await self._write_record(rec)
        if revision is None:  # the key was used before (a retry), or by a concurrent request
            prior = await self._prior(message_id, request_hash)
            if prior is None:  # its record aged out (the bucket's TTL): the key is spent
                raise PsvnError(Code.CONFLICT, "idempotency_key was used for a message whose record has expired",
                                field="idempotency_key", rule="idempotency", message_id=message_id)
            if prior.status != State.ACCEPTED.value or message_id in self.sent_steps.pending:
                return prior, False  # moved on, or published by this instance: nothing to publish again
            if prior.created != rec.created:  # sealed again as first written: the same time and expiry, so
                # the recipient's age and expiry checks (and the sender's expiry) judge one message
                planned = plan(consulted.consent, parse_time(prior.created))
            rec = prior  # accepted, its publish unconfirmed or in flight: sealing again is safe (below)
        out = core.seal_send(planned, me=self.member.identity)
        # Publishing a message already published (a retry, or the concurrent request above) is
        # safe: JetStream's dedupe window and the recipient's create-once filing keep it single.
        try:
            stored_before = await self.link.publish(out.subject, out.data, message_id)
        except PsvnError as exc:
            if not key:  # nobody can retry this message: say it failed. With a key it stays
                with contextlib.suppress(Exception):  # accepted, for the retry to resume
                    await self.store.move_out(message_id, State.REJECTED, reason="backbone unavailable")
            # The request is refused, but whether the backbone stored the message is unknown (an
            # ack can be lost): with a key the audit says so, and the retry's "sent" follows.
            await self._refused(exc, req, message_id=message_id, system=system,
                                **({"outcome": "unknown"} if key else {}))
            raise
        # The publish is confirmed: the message is sent. Its record says ``accepted`` (still true,
        # and what any instance reads) until the receipt's move writes ``sent`` with it.
        found = revision is None and bool(stored_before)  # a repeat whose first publish got there
        if not (found and message_id in self.sent_steps.pending):  # (then audited here already)
            # found by an instance that did not publish it: the first request's ack may have been
            # lost (audited "rejected", outcome unknown), so the audit learns it got there
            # (what counts sends, e.g. the policy what-if, counts each message id once)
            await self.audit("sent", message_id=message_id, to=req.to, type=req.type, purpose=req.purpose,
                             classification=req.classification, size=out.size, rule_ids=out.decision.rule_ids,
                             policy_version=out.decision.policy_version, direction="egress",
                             **({"found_on_backbone": True} if found else {}))
        self.sent_steps.published(message_id)
        if rec.expires and rec.status in (State.ACCEPTED.value, State.SENT.value):
            self.sweeper.track(rec)
        if not found:
            self.metrics.count(self.metrics.sent, req.type)
        self.metrics.send_seconds.observe(time.perf_counter() - started)
        log.debug("message sent", message_id=message_id, to=req.to, type=req.type, system=system, found=found)
        # a repeat of a key (the record was there) is answered as one, whoever's publish stored it
        return rec, revision is not None

    def _record(self, planned: core.Planned, request_hash: str, system: str) -> OutRecord:
        """The sender's record of a message as decided: ``accepted``, at the envelope's time."""
        env, now = planned.envelope, planned.envelope.time
        return OutRecord(id=env.id, to=planned.req.to, type=planned.req.type, status=State.ACCEPTED.value,
                         created=now, system=system, history=[HistoryEntry(status=State.ACCEPTED.value, time=now)],
                         rule_ids=planned.decision.rule_ids, request_hash=request_hash, expires=env.expires)

    async def _write_record(self, rec: OutRecord, *, over: int | None = None) -> int | None:
        """Write a new sent message's record (the claim on its id); its revision, or None if the
        id was taken (a retry, or a concurrent request with the same key). ``over``: rewrite
        instead the claim written at that revision (None if it has moved on since). A failed
        write is the request's 503, and readiness reports it until a write succeeds."""
        try:
            revision = await (self.store.put_out(rec) if over is None else self.store.rewrite_out(rec, over))
        except Exception as exc:
            self.state_write_error = type(exc).__name__
            raise PsvnError(Code.BACKBONE_UNAVAILABLE, "the backbone did not store the message; nothing was sent",
                            rule="state-write", message_id=rec.id) from exc
        self.state_write_error = None
        return revision

    def _claim_early(self, guess: Callable[[], core.Planned], request_hash: str, system: str) -> Claim | None:
        """Start writing the record while the consent is read, if the decision with no consent
        on file allows the message (``guess`` raises if not: then the record waits for the
        decision, as without consent)."""
        try:
            planned = guess()
        except PsvnError:
            return None
        return Claim(self, planned, self._record(planned, request_hash, system))

    async def send_batch(self, items: Sequence[SendRequest | PsvnError], *,
                         system: str) -> list[tuple[OutRecord, bool] | PsvnError]:
        """Send many messages from one request, each exactly as :meth:`send` sends one alone
        (validated, decided, sealed, signed, published and receipted on its own, with its own
        idempotency key): a batch saves HTTP round trips, never a check.

        ``items`` holds the decoded requests in order, or the refusal an item already got while
        decoding (audited by the caller). Returns one outcome per item, in order: (record,
        created) or the refusal. Items run concurrently, at most ``gateway.batch_concurrency``
        at a time, because each waits mostly on backbone round trips (consent lookup, state
        write, publish ack) that overlap well and share socket writes; the bound keeps one
        large batch from monopolising the gateway. One item's failure, even an unexpected one,
        is that item's result only."""
        self.metrics.batch_items.observe(len(items))
        # refused while decoding already, or None until its send's outcome is in
        results: list[tuple[OutRecord, bool] | PsvnError | None] = [
            item if isinstance(item, PsvnError) else None for item in items]
        todo = iter([(n, item) for n, item in enumerate(items) if not isinstance(item, PsvnError)])

        async def one(item: SendRequest) -> tuple[OutRecord, bool] | PsvnError:
            try:
                return await self.send(item, system=system)
            except PsvnError as exc:
                return exc
            except Exception:  # a bug or an unforeseen failure: this item's 500, not the batch's
                request_id = new_message_id()
                log.exception("unhandled error in a batch item; answered as internal", request_id=request_id,
                              message_id=request_id, system=system)
                error = PsvnError(Code.INTERNAL, f"internal error; see the gateway log for request {request_id}",
                                  rule="internal", message_id=request_id, extra={"request_id": request_id})
                with contextlib.suppress(Exception):  # the answer must not depend on the audit
                    await self.reject_request(error, system=system)
                return error

        async def worker() -> None:
            """Takes the next item until none is left: ``batch_concurrency`` of these, rather than
            a task per item queueing on a semaphore (a task, a future and a wake-up each)."""
            for n, item in todo:
                results[n] = await one(item)

        await asyncio.gather(*(worker() for _ in range(max(1, min(self.settings.batch_concurrency, len(items))))))
        outcomes = [r for r in results if r is not None]
        if len(outcomes) != len(items):  # never: each worker runs until no item is left
            raise RuntimeError("a batch item was left without an outcome")
        return outcomes

    async def _refused(self, exc: PsvnError, req: SendRequest | None = None, *, system: str | None,
                       message_id: str | None = None, **extra: object) -> None:
        """Any refused send: its message id (a new one if it has none yet), the metric, the log
        line and the audit record, with what the message was when it got that far (recipient,
        type, purpose, classification)."""
        exc.message_id = exc.message_id or message_id or new_message_id()
        mid = message_id or exc.message_id
        about = {} if req is None else {"to": req.to if isinstance(req.to, str) else None, "type": req.type,
                                        "purpose": req.purpose, "classification": req.classification}
        self.metrics.count(self.metrics.rejected, exc.code.value)
        log.info("message rejected", message_id=mid, code=exc.code.value, field=exc.field, rule=exc.rule,
                 system=system)
        await self.audit("rejected", message_id=mid, **about, code=exc.code.value, field=exc.field, rule=exc.rule,
                         system=system, policy_version=self.member.policy.version, direction="egress", **extra)

    async def _prior(self, message_id: str, request_hash: str) -> OutRecord | None:
        """The record a message id derived from an idempotency key names, if any; the same key
        with a different request is a conflict."""
        rec = await self.store.out_record(message_id)
        if rec is not None and rec.request_hash != request_hash:
            raise PsvnError(Code.CONFLICT, "idempotency_key was used before with a different request",
                            field="idempotency_key", rule="idempotency", message_id=rec.id)
        return rec

    async def receipt(self, message_id: str, status: str, to_org: str, *, reason: str | None = None,
                      rule_ids: list[str] | None = None) -> None:
        """Tell a sender what became of one message (acknowledged, expired, ...): a receipt of one item."""
        await self.receipts(to_org, [core.ReceiptItem(message_id=message_id, status=status, reason=reason,
                                                      rule_ids=rule_ids or [])])

    async def receipts(self, to_org: str, items: Sequence[core.ReceiptItem]) -> None:
        """Tell a sender what became of its messages, in as few receipt messages as fit (each
        signed and sealed once, :data:`core.MAX_RECEIPT_ITEMS` items at most). Each one's dedupe
        id is fixed by what it says, so sending it again never makes two."""
        to = self.registry.members.get(to_org)
        if to is None:
            log.warning("receipts not sent: sender unknown", message_ids=[i.message_id for i in items][:10],
                        to=to_org)
            return
        for start in range(0, len(items), core.MAX_RECEIPT_ITEMS):
            subject, rid, data = core.make_receipts(items[start:start + core.MAX_RECEIPT_ITEMS],
                                                    me=self.member.identity, to=to, now=self.clock())
            await self.link.publish(subject, data, rid)
