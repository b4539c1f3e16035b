"""The gateway's state on the backbone: sent-message records and the mailbox.

The source of truth is the member's KV bucket in its own account, so gateways stay stateless
and several can run behind one load balancer. A gateway reads an entry where it lives, by key,
when it needs it; it does not mirror the bucket. What it holds in memory is bounded by *open
work*, never by history:

- ``in.<id>`` is **open mail**: filed, delivered, not yet acknowledged. One watch over ``in.>``
  keeps every instance's index of it (the inbox listing, each sender's share of the inbox, the
  retention sweep). When mail is closed (acknowledged, quarantined, deleted by retention) its
  entry moves to ``done.<id>`` and ``in.<id>`` is purged with a short-lived marker, so a restart
  reads only what is open now.
- ``done.<id>`` is closed mail, read by key (a replay is recognised until the bucket's TTL).
- ``out.<id>`` is a sent message's record. Its creation is the idempotency claim: the id of a
  message sent with an idempotency key is derived from (organisation, system, key), so one
  create-once write decides a race between two requests (:func:`message_id_for`).
- ``policy.floor`` is the highest policy version this member has enforced (rollback guard).

Reads go to the stream's leader (not a direct get, which a replica may answer a moment behind),
so one instance reads another's write at once. Payloads never go here: the mailbox *is* the
inbox stream, and an entry points at its sealed message by stream sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import secrets
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, TypeVar

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError

from psvn.backbone import jsfast
from psvn.backbone.connect import ELECTION_ERRORS
from psvn.backbone.kvwatch import KVFollower
from psvn.core.errors import Code, PsvnError
from psvn.core.retry import retrying
from psvn.protocol.envelope import now_rfc3339
from psvn.protocol.lifecycle import InvalidTransition, State, advance
from psvn.protocol.subjects import state_bucket

log = structlog.get_logger("psvn.gateway.store")
T = TypeVar("T")
CAS_ATTEMPTS = 8
POLICY_FLOOR_KEY = "policy.floor"
# How long the marker of closed mail's purged ``in.<id>`` stays: long enough for every running
# instance's watch to see the purge, short enough that a restart reads few of them.
CLOSED_MARKER_TTL = 600.0
READ_PATIENCE = 8.0  # seconds a state read may wait out a leader election (as a publish does)
# what may follow "out." / "in." in a key read on a caller's behalf: never a wildcard (a KV read
# of ``out.>`` would answer with whichever entry matches last)
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
# InRecord fields whose values repeat across letters; at most SHARED_STRINGS distinct values are
# shared (senders and types are bounded by the registry and the catalogue, but a bound costs nothing)
_REPEATED = ("source", "to", "type", "status", "classification", "purpose", "mailbox")
SHARED_STRINGS = 4_096
# the member's secret for deriving message ids from idempotency keys (message_id_for): written
# once, by whichever instance starts first, and never aged out (Nats-TTL: never)
ID_SECRET_KEY = "secret.message-ids"


class HistoryEntry(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    status: str
    time: str
    reason: str | None = None
    # a step a recipient's signed receipt reported: the SHA-256 of the sealed message as it arrived there
    sha256: str | None = None


class MessageStatus(msgspec.Struct, kw_only=True):
    """A sent message: where it is now and every step with its time."""

    id: str
    to: str
    type: str
    status: str
    history: list[HistoryEntry]
    created: str
    reason: str | None = None
    rule_ids: list[str] = msgspec.field(default_factory=list)
    expires: str | None = None
    system: str = ""  # the local system that sent it


class OutRecord(MessageStatus, kw_only=True):
    """The sender's record of a message: its status (what the API shows) and what only the
    gateway needs (the request's hash, to tell a retry from a different request)."""

    request_hash: str = ""


class InRecord(msgspec.Struct, kw_only=True):
    id: str
    source: str
    to: str
    type: str
    time: str
    status: str
    size: int
    seq: int
    classification: str = "OFFICIAL"
    purpose: str = ""
    correlation_id: str | None = None
    mailbox: str | None = None
    reason: str | None = None
    rule: str | None = None
    received: str = ""
    retain_until: str | None = None  # the policy's retention for its type: deleted from the mailbox then
    deleted: str | None = None  # when retention deleted the mail; the entry stays so a replay is known


def message_id_for(secret: bytes, org: str, system: str, idempotency_key: str) -> str:
    """The message id of a send with an idempotency key: the same (organisation, system, key)
    always names the same message, so the sender's record of it is also the claim on the key.

    Keyed with the member's own secret (:meth:`StateStore.start`): keys are often guessable
    (a case number, a local record id), and a member that could work out the id of a message
    another member is about to send could use it first, in the recipient's inbox, whose dedupe
    window and create-once filing would then drop the real message. An HMAC of the key under a
    secret no other member can read leaves it nothing to work out."""
    digest = hmac.new(secret, f"{org}\x00{system}\x00{idempotency_key}".encode(), hashlib.sha256).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


class Gone(msgspec.Struct, frozen=True):
    """Mail that was filed once and whose entry has since aged out of the bucket."""

    id: str


class KeyTurn:
    """``async with``: a turn on one key's lock, the lock dropped once nobody holds or waits for
    it. A class rather than an ``asynccontextmanager``: a send and its receipt's move each take a
    turn, and the generator's machinery cost 2.4 us a turn against 1.0."""

    __slots__ = ("_key", "_lock", "_locks")

    def __init__(self, locks: dict[str, asyncio.Lock], key: str) -> None:
        self._locks, self._key = locks, key
        self._lock: asyncio.Lock | None = None

    async def __aenter__(self) -> None:
        lock = self._locks.get(self._key)
        if lock is None:
            lock = self._locks[self._key] = asyncio.Lock()
        self._lock = lock
        try:
            await lock.acquire()
        except BaseException:  # cancelled while waiting: the turn is not taken
            self._drop_if_idle(lock)
            raise

    async def __aexit__(self, *exc: object) -> None:
        lock = self._lock
        assert lock is not None
        lock.release()
        self._drop_if_idle(lock)

    def _drop_if_idle(self, lock: asyncio.Lock) -> None:
        if not lock.locked() and not lock._waiters and self._locks.get(self._key) is lock:  # type: ignore[attr-defined]
            del self._locks[self._key]


class StateStore:
    """The member's state bucket, read where it lives; the open-mail index in memory.

    Every update is a compare-and-set on the entry's revision, so several gateway instances of
    one member never overwrite each other: a loser re-reads and re-applies its change, or learns
    the work was already done.
    """

    def __init__(self, org: str, *, cache_size: int = 2_000) -> None:
        self.org = org
        # the records (and revisions) this instance wrote last, so the next move of an unsettled
        # send (its receipt) needs no read; a stale one only costs the compare-and-set a retry
        self.cache_size = cache_size
        self._recent: OrderedDict[str, tuple[OutRecord, int]] = OrderedDict()
        self.open: dict[str, InRecord] = {}  # open mail (in.<id>), from the watch
        self._shared: dict[str, str] = {}  # one copy of each value that repeats across open mail
        self._open_revs: dict[str, int] = {}
        self.kv: jsfast.KV | None = None  # writes and leader reads, through one reply subscription
        self.js: JetStreamContext | None = None  # the watch of open mail
        self.policy_floor = 0
        self.id_secret: bytes | None = None  # read (or made) at start: see message_id_for
        # sender organisation -> bytes of its mail delivered here and not yet acknowledged (its
        # share of our inbox in use; see Gateway's sender-share check)
        self.held: dict[str, int] = {}
        self.loaded = 0  # entries read while starting: what was open, never the history
        self._follower = KVFollower()
        self._locks: dict[str, asyncio.Lock] = {}
        self._stream = ""
        self._prefix = ""

    # -- the open-mail index ------------------------------------------------------------------
    def _hold(self, rec: InRecord | None, sign: int) -> None:
        if rec is not None and rec.status == State.DELIVERED.value and not rec.deleted:
            sender = rec.source.split("/", 1)[0]
            held = self.held.get(sender, 0) + sign * rec.size
            if held > 0:
                self.held[sender] = held
            else:
                self.held.pop(sender, None)

    def _compact(self, rec: InRecord, ident: str) -> str:
        """Share the strings that repeat from letter to letter (a handful of senders, types,
        mailboxes) and key the index by the record's own id: an open letter then costs ~610
        bytes with its revision, not ~1,090 (tracemalloc, 10,000 letters). Returns the key."""
        shared = self._shared
        if len(shared) >= SHARED_STRINGS:  # flooded with values that do not repeat (a sender's
            shared.clear()                 # made-up system names): start again; nothing else is lost
        for name in _REPEATED:
            value = getattr(rec, name)
            if value is not None:
                setattr(rec, name, shared.setdefault(value, value))
        return rec.id if rec.id == ident else ident

    def _apply_open(self, key: str, value: bytes | None, revision: int = 0) -> None:
        """One ``in.<id>`` entry: filed (open) or purged (closed, or aged out). An older revision
        never replaces a newer one; our own writes are applied before the watch echoes them."""
        if not self._follower.synced.is_set():
            self.loaded += 1
        ident = key.partition(".")[2]
        if revision and revision <= self._open_revs.get(ident, 0):
            return
        if value is None:
            self._hold(self.open.pop(ident, None), -1)
            self._open_revs.pop(ident, None)
            return
        rec = msgspec.json.decode(value, type=InRecord)
        ident = self._compact(rec, ident)
        self._hold(self.open.get(ident), -1)
        if revision:
            self._open_revs[ident] = revision
        if rec.status == State.DELIVERED.value and not rec.deleted:
            self.open[ident] = rec
            self._hold(rec, +1)
        else:  # left open by a failure between closing steps: not mail to list
            self.open.pop(ident, None)

    async def start(self, js: JetStreamContext, ops: jsfast.JetStreamOps, *, timeout: float = 10.0) -> None:
        """``js`` and ``ops``: the member's own account (where its state bucket lives)."""
        bucket = state_bucket(self.org)
        self.js = js
        self.kv = ops.kv(bucket)
        # (re)joining: the index is rebuilt from what is open now (mail closed while we were away
        # may have left no marker by the time we are back)
        self.open, self._open_revs, self.held, self.loaded = {}, {}, {}, 0
        self._follower = KVFollower()
        self._stream, self._prefix = f"KV_{bucket}", f"$KV.{bucket}."
        floor = await self._read(POLICY_FLOOR_KEY)
        if floor is not None:
            self.policy_floor = int(floor[0])
        self.id_secret = await self._id_secret()
        await self._follower.follow(js, bucket, self._apply_open, key="in.>", timeout=timeout)

    async def stop(self) -> None:
        await self._follower.stop()

    async def _id_secret(self) -> bytes:
        """The member's secret for message ids: 32 random bytes, made by the first instance that
        finds none (create-once: a race leaves one), kept past the bucket's TTL (``never``), so
        a key's id is the same on every instance and across restarts. It lives in the member's
        own bucket, which no other member's credentials can read."""
        assert self.kv is not None
        got = await self._read(ID_SECRET_KEY)
        if got is None:
            with contextlib.suppress(KeyWrongLastSequenceError):  # another instance made it first
                await self.kv.update(ID_SECRET_KEY, secrets.token_hex(32).encode(), last=0, msg_ttl="never")
            got = await self._read(ID_SECRET_KEY)
        try:
            if got is None or len(got[0]) != 64:
                raise ValueError("missing or not 32 bytes")
            return bytes.fromhex(got[0].decode())
        except ValueError as exc:
            raise PsvnError(Code.BACKBONE_UNAVAILABLE, f"the state bucket's {ID_SECRET_KEY} is unusable ({exc})",
                            rule="state-read") from exc

    # -- reading and writing entries ----------------------------------------------------------
    async def _get(self, key: str) -> jsfast.Stored | None:
        """The stored message of ``key``, from the stream's leader (a replica may be a moment
        behind), riding out a leader election like a publish does; None if there is none."""
        kv = self.kv
        assert kv is not None
        try:
            return await retrying(lambda: kv.get(key), on=ELECTION_ERRORS, patience=READ_PATIENCE,
                                  first_delay=0.1, max_delay=1.0)
        except ELECTION_ERRORS as exc:
            raise PsvnError(Code.BACKBONE_UNAVAILABLE, "the state bucket did not answer; retry",
                            rule="state-read") from exc

    async def _read(self, key: str) -> tuple[bytes, int] | None:
        """(value, revision) of a live entry, from the stream's leader; None if none/deleted."""
        msg = await self._get(key)
        if msg is None:
            return None
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE") or \
                (msg.headers or {}).get("Nats-Marker-Reason"):
            return None
        return msg.data or b"", msg.seq or 0

    async def _create(self, key: str, value: bytes, *, alone_under: str | None = None, last: int = 0) -> int | None:
        """Write a new entry only if the key holds nothing (a purge marker counts: unlike
        nats-py's ``create``, a purged key is not created again); its revision, or None. With
        ``alone_under`` (an id): only if the last revision of any key ``*.<id>`` is ``last`` (0:
        none holds anything)."""
        assert self.kv is not None
        try:
            return await self.kv.update(key, value, last=last, of=None if alone_under is None else f"*.{alone_under}")
        except KeyWrongLastSequenceError:
            return None

    async def _cas(self, key: str, decode: Callable[[bytes], T], change: Callable[[T], T | None],
                   encode: Callable[[T], bytes], known: tuple[T, int] | None = None,
                   give_way: bool = False) -> tuple[T, int] | None:
        """Read-modify-write with compare-and-set; ``change`` returns None for "nothing to do".
        Returns the entry as it now is (with its revision), or None if there is no such entry.
        ``give_way``: if the compare fails, another writer changed the entry since: leave it
        to that one (None), neither reading it again nor retrying."""
        assert self.kv is not None
        current = known
        for _ in range(CAS_ATTEMPTS):
            if current is None:
                got = await self._read(key)
                if got is None:
                    return None
                current = decode(got[0]), got[1]
            rec, rev = current
            new = change(rec)
            if new is None:
                return current
            value = encode(new)
            try:
                return new, await self.kv.update(key, value, last=rev)
            except KeyWrongLastSequenceError:
                if give_way:
                    return None
                current = None
        raise PsvnError(Code.BACKBONE_UNAVAILABLE, f"state entry {key} kept changing under us; retry",
                        rule="state-contention")

    async def set_policy_floor(self, version: int) -> None:
        assert self.kv is not None
        await self.kv.put(POLICY_FLOOR_KEY, str(version).encode())
        self.policy_floor = max(self.policy_floor, version)

    def lock(self, message_id: str) -> KeyTurn:
        """One writer per message id in this process; the lock is dropped once nobody waits on it."""
        return KeyTurn(self._locks, message_id)

    # -- sent messages ------------------------------------------------------------------------
    async def out_record(self, message_id: str) -> OutRecord | None:
        """A sent message's record, read where it lives (so another instance's write is seen)."""
        got = await self.out_entry(message_id)
        return None if got is None else got[0]

    def _remember(self, rec: OutRecord, revision: int) -> None:
        if rec.status in (State.ACCEPTED.value, State.SENT.value, State.DELIVERED.value):
            self._recent[rec.id] = (rec, revision)
            self._recent.move_to_end(rec.id)
            while self._recent and len(self._recent) > self.cache_size:
                self._recent.popitem(last=False)
        else:  # settled: no move follows
            self._recent.pop(rec.id, None)

    async def put_out(self, rec: OutRecord) -> int | None:
        """Record a new sent message (the idempotency claim); its revision, or None if the id is
        taken already (a concurrent or earlier request with the same key). An id whose record
        was withdrawn is free (a purge or an aged-out entry's marker is not: that key is spent)."""
        key, value = f"out.{rec.id}", msgspec.json.encode(rec)
        revision = await self._create(key, value)
        if revision is None:  # taken, unless its record was withdrawn (withdraw_out): then free again
            got = await self._get(key)
            if got is not None and (got.headers or {}).get("KV-Operation") == "DEL" and got.seq:
                revision = await self._create(key, value, last=got.seq)
        if revision is not None:
            self._remember(rec, revision)
        return revision

    async def withdraw_out(self, message_id: str, revision: int) -> None:
        """Take back a record :meth:`put_out` wrote at ``revision`` before its message was
        decided, now decided against (:class:`gateway.egress.Claim`: the record is written while
        the consent the decision needs is read). A delete marker replaces it, only if it is
        still that revision, and :meth:`put_out` may write over the marker: a retry is decided
        afresh, as if the request had been refused before anything was written."""
        assert self.kv is not None
        self._recent.pop(message_id, None)
        with contextlib.suppress(KeyWrongLastSequenceError):  # moved on since: left as it is
            await self.kv.delete(f"out.{message_id}", last=revision)

    async def rewrite_out(self, rec: OutRecord, revision: int) -> int | None:
        """Write ``rec`` over the record :meth:`put_out` wrote at ``revision`` (a claim whose
        decision came out otherwise: :class:`gateway.egress.Claim`), only if it is still that
        revision; the new revision, or None if the record has moved on since."""
        assert self.kv is not None
        try:
            new = await self.kv.update(f"out.{rec.id}", msgspec.json.encode(rec), last=revision)
        except KeyWrongLastSequenceError:
            self._recent.pop(rec.id, None)
            return None
        self._remember(rec, new)
        return new

    async def out_entry(self, message_id: str) -> tuple[OutRecord, int] | None:
        """A sent message's record and its revision, read where it lives."""
        got = await self._read(f"out.{message_id}") if KEY_ID.fullmatch(message_id) else None
        return None if got is None else (msgspec.json.decode(got[0], type=OutRecord), got[1])

    async def move_out(self, message_id: str, new: State, *, reason: str | None = None,
                       rule_ids: list[str] | None = None, sha256: str | None = None,
                       known: tuple[OutRecord, int] | None = None,
                       check: Callable[[OutRecord], None] | None = None,
                       only_from: tuple[str, ...] | None = None, at: str | None = None,
                       sent_at: str | None = None, reached: bool = False,
                       give_way: bool = False) -> OutRecord | None:
        """Advance a sent message's status per the lifecycle table; stale moves are ignored.
        ``known``: the record and revision the caller just wrote (saves the read); ``check``
        may raise to refuse the move after seeing the record; ``only_from``: the statuses the
        move applies to (any other is left as it is); ``at``: the step's time (default now).
        ``sent_at``: when the backbone stored the message, as its recipient's receipt says: a
        record still ``accepted`` gets its ``sent`` step, at that time, in this same write
        (:mod:`gateway.sent_step`). ``reached``: the move is a receipt's, so the message reached
        its recipient and was sent: a record still ``accepted`` gets its ``sent`` step even with
        no ``sent_at`` (a receipt from a gateway from before ``stored``, an acknowledgement), at
        this step's time: sent by then. ``give_way``: a write that finds the record changed
        since this instance last wrote it is given up (None), not retried."""

        def change(rec: OutRecord) -> OutRecord | None:
            if check is not None:
                check(rec)
            if only_from is not None and rec.status not in only_from:
                return None
            try:
                state = advance(State(rec.status), new)
            except InvalidTransition:
                return None
            if state.value == rec.status:
                return None
            when = at or now_rfc3339()
            steps = [HistoryEntry(status=state.value, time=when, reason=reason, sha256=sha256)]
            if (sent_at is not None or reached) and rec.status == State.ACCEPTED.value and state is not State.SENT:
                # between the steps around it, whatever the recipient's clock says (one form: compared as text)
                stored = min(max(sent_at or when, rec.history[-1].time if rec.history else when), when)
                steps.insert(0, HistoryEntry(status=State.SENT.value, time=stored))
            return msgspec.structs.replace(rec, status=state.value, reason=reason or rec.reason,
                                           rule_ids=rule_ids or rec.rule_ids, history=[*rec.history, *steps])

        if not KEY_ID.fullmatch(message_id):
            return None
        async with self.lock(message_id):
            done = await self._cas(f"out.{message_id}", lambda b: msgspec.json.decode(b, type=OutRecord), change,
                                   msgspec.json.encode, known or self._recent.get(message_id), give_way)
            if done is not None:
                self._remember(*done)
            elif give_way:  # what we remember of it is stale: the next move reads it afresh
                self._recent.pop(message_id, None)
        return None if done is None else done[0]

    # -- received messages --------------------------------------------------------------------
    async def in_record(self, message_id: str) -> InRecord | None:
        """A received message's entry, open or closed, read where it lives."""
        if not KEY_ID.fullmatch(message_id):
            return None
        for key in (f"in.{message_id}", f"done.{message_id}"):
            got = await self._read(key)
            if got is not None:
                rec = msgspec.json.decode(got[0], type=InRecord)
                if key.startswith("in.") and rec.status != State.DELIVERED.value:
                    continue  # a closing step failed half-way: done.<id> says what it became
                return rec
        return None

    async def closed_entry(self, message_id: str) -> tuple[bytes, int] | None:
        """The ``done.<id>`` entry of mail closed (acknowledged, quarantined, deleted), if any.
        (Any id a message was filed under: a dotted one too, such as a receipt's.)"""
        return await self._read(f"done.{message_id}")

    async def file(self, rec: InRecord) -> InRecord | Gone | None:
        """File a received message exactly once: None if it is newly filed now, else what is on
        file for it already (by us or another instance), or :class:`Gone` if its entry aged out.

        Delivered mail is filed open (``in.<id>``); quarantined mail is filed and closed at once.
        Every write of ``in.<id>`` is conditional on the last revision of any key ``*.<id>`` of the
        bucket (``Nats-Expected-Last-Subject-Sequence-Subject``): one check, the same for every
        instance, so one write wins, on a clustered bucket too (its leader keeps one write per
        check in flight; a plain create-once of ``in.<id>`` beside it would be another check, and
        both could pass). The first write expects nothing under the id: new mail is filed by one
        write, nothing read. Refused, it reads what holds the id. Open or closed mail (``in.<id>``,
        its purge marker, ``done.<id>``, which outlives the marker, so a replay long after the
        close is known) is what is on file. Another key alone (this member's own sent message
        ``out.<id>``) is stepped over: the next write expects that key's revision instead."""
        value = msgspec.json.encode(rec)
        expected = 0
        for _ in range(CAS_ATTEMPTS):
            rev = await self._create(f"in.{rec.id}", value, alone_under=rec.id, last=expected)
            if rev is not None:
                break
            holder = await self._get(f"*.{rec.id}")  # the newest write under the id
            if holder is None:  # it aged out meanwhile
                expected = 0
                continue
            ours = (f"{self._prefix}in.{rec.id}", f"{self._prefix}done.{rec.id}")
            if holder.subject in ours or await self._get(f"in.{rec.id}") is not None \
                    or await self._get(f"done.{rec.id}") is not None:  # (read after the holder: see above)
                closed_now = await self.closed_entry(rec.id)
                if closed_now is not None:
                    return msgspec.json.decode(closed_now[0], type=InRecord)
                opened = await self._read(f"in.{rec.id}")
                if opened is None:  # a purge marker alone: closed, and its done.<id> aged out
                    return Gone(id=rec.id)
                on_file = msgspec.json.decode(opened[0], type=InRecord)
                if on_file.status != State.DELIVERED.value:  # filed closed, but closing failed half-way
                    await self.close(on_file)
                return on_file
            expected = holder.seq  # written since, under the id, and this write is refused again
        else:
            raise PsvnError(Code.BACKBONE_UNAVAILABLE, f"state entries under {rec.id} kept changing; retry",
                            rule="state-contention", message_id=rec.id)
        if rec.status != State.DELIVERED.value:
            await self.close(rec)
        # Delivered mail joins the open-mail index through the watch, never from here: the
        # watch brings entries in revision order, so the index only ever grows at its end and a
        # listing's cursor (the revision) never has mail filed later land behind it.
        return None

    async def close(self, rec: InRecord) -> None:
        """Mail no longer open: its entry moves to ``done.<id>``, then ``in.<id>`` is purged
        (in that order: a failure between leaves it readable, and the next attempt finishes)."""
        assert self.kv is not None
        await self.kv.put(f"done.{rec.id}", msgspec.json.encode(rec))
        await self.kv.purge(f"in.{rec.id}", msg_ttl=CLOSED_MARKER_TTL)
        self._apply_open(f"in.{rec.id}", None)

    def filed_at(self, message_id: str) -> int:
        """The revision that filed open mail: its place in filing order (0 if unknown)."""
        return self._open_revs.get(message_id, 0)

    async def update_done(self, message_id: str, change: Callable[[InRecord], InRecord | None]) -> InRecord | None:
        """Change a closed mail entry (compare-and-set); None if there is none or nothing changed."""
        before = await self._read(f"done.{message_id}")
        if before is None:
            return None
        old = msgspec.json.decode(before[0], type=InRecord)
        done = await self._cas(f"done.{message_id}", lambda b: msgspec.json.decode(b, type=InRecord), change,
                               msgspec.json.encode, (old, before[1]))
        return None if done is None or done[0] is old else done[0]

    async def closed_mail(self, *, batch: int = 256) -> AsyncIterator[InRecord]:
        """Every closed mail entry still in the bucket, streamed (the retention sweep's slow walk
        and the listing of acknowledged or quarantined mail; never held in memory at once)."""
        async for _seq, _subject, value in self._scan(self._prefix + "done.>", batch=batch):
            with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
                yield msgspec.json.decode(value, type=InRecord)

    async def sent(self, *, after: int, limit: int,
                   keep: Callable[[OutRecord], bool] = lambda _: True) -> list[tuple[int, OutRecord]]:
        """Up to ``limit`` sent messages' records that ``keep`` accepts, in the order of their last
        change, each with its position (the stream sequence of that change), after ``after``.

        The bucket keeps one value per key, so a record appears once, at its newest status; one
        that changes after a caller's cursor appears again further on, with its new status (a
        poller with the cursor sees every change). Read where it lives: nothing held in memory."""
        found: list[tuple[int, OutRecord]] = []
        rows = self._scan(self._prefix + "out.>", batch=min(max(limit, 16), 256), start=after + 1)
        async with contextlib.aclosing(rows):  # stopping early unsubscribes at once
            async for seq, _subject, value in rows:
                try:
                    rec = msgspec.json.decode(value, type=OutRecord)
                except (msgspec.ValidationError, msgspec.DecodeError):
                    continue
                if keep(rec):
                    found.append((seq, rec))
                    if len(found) >= limit:
                        break
        return found

    async def _scan(self, subject: str, *, batch: int, start: int = 1) -> AsyncGenerator[tuple[int, str, bytes], None]:
        """(sequence, subject, value) of every live message on ``subject`` (a wildcard) from
        sequence ``start``, in stream order, by batched direct gets (ADR-31): no consumer is made
        (a member's account has few), one request per ``batch`` messages."""
        assert self.js is not None
        nc = self.js._nc
        got: asyncio.Queue[Any] = asyncio.Queue()

        async def arrived(msg: Any) -> None:
            got.put_nowait(msg)

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=arrived)
        try:
            seq = max(start, 1)
            while True:
                request = msgspec.json.encode({"seq": seq, "next_by_subj": subject, "batch": batch})
                await nc.publish(f"$JS.API.DIRECT.GET.{self._stream}", request, reply=inbox)
                while True:
                    msg = await asyncio.wait_for(got.get(), READ_PATIENCE)
                    headers = msg.headers or {}
                    status = headers.get("Status")
                    if status is not None:
                        if status == "404" or headers.get("Nats-Num-Pending") == "0":
                            return  # nothing (more) on the subject
                        if status != "204":
                            raise PsvnError(Code.BACKBONE_UNAVAILABLE, f"reading the state bucket: status {status}",
                                            rule="state-read")
                        break  # the end of this batch: ask for the next
                    at = int(headers.get("Nats-Sequence", seq))
                    seq = at + 1
                    if not headers.get("KV-Operation") and not headers.get("Nats-Marker-Reason"):
                        yield at, headers.get("Nats-Subject", ""), msg.data or b""
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def stats(self) -> dict[str, Any]:
        return {"open_mail": len(self.open), "senders_holding": len(self.held), "loaded_at_start": self.loaded}
