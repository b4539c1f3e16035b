"""The gateway's state on the backbone: sent-message statuses and the mailbox index.

The source of truth is the member's KV bucket (so gateways stay stateless and several can run
behind one load balancer); each gateway keeps an in-memory index fed by a watch, and writes
through it. Payloads never go here: the mailbox *is* the inbox stream, and an entry points at
its sealed message by stream sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker.kvwatch import KVFollower
from broker.subjects import state_bucket
from psvn.envelope import now_rfc3339
from psvn.errors import Code, PsvnError
from psvn.lifecycle import InvalidTransition, State, advance

log = structlog.get_logger("psvn.gateway.store")
T = TypeVar("T")
CAS_ATTEMPTS = 8
POLICY_FLOOR_KEY = "policy.floor"
# what may follow "out." / "in." in a key read on a caller's behalf: never a wildcard (a KV read
# of ``out.>`` would answer with whichever entry matches last)
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


class HistoryEntry(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    status: str
    time: str
    reason: str | None = None


class OutRecord(msgspec.Struct, kw_only=True):
    id: str
    to: str
    type: str
    status: str
    history: list[HistoryEntry]
    created: str
    reason: str | None = None
    rule_ids: list[str] = msgspec.field(default_factory=list)
    expires: str | None = None
    request_hash: str = ""
    system: str = ""  # the local system that sent it


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


def idem_key(system: str, key: str) -> str:
    return "idem." + hashlib.sha256(f"{system}\x00{key}".encode()).hexdigest()


class StateStore:
    """The member's state bucket, mirrored in memory.

    Every write is a compare-and-set on the entry's revision, so several gateway instances of one
    member (behind one load balancer, sharing the inbox consumer) never overwrite each other:
    a loser re-reads and re-applies its change, or learns the work was already done.
    """

    def __init__(self, org: str) -> None:
        self.org = org
        self.out: dict[str, OutRecord] = {}
        self.inbox: dict[str, InRecord] = {}
        self.idem: dict[str, str] = {}
        self.revs: dict[str, int] = {}
        self.kv: KeyValue | None = None
        self.policy_floor = 0
        # sender organisation -> bytes of its mail delivered here and not yet acknowledged (its
        # share of our inbox in use; see Gateway's sender-share check)
        self.held: dict[str, int] = {}
        self._follower = KVFollower()
        self._locks: dict[str, asyncio.Lock] = {}

    def _hold(self, rec: InRecord | None, sign: int) -> None:
        if rec is not None and rec.status == State.DELIVERED.value and not rec.deleted:
            sender = rec.source.split("/", 1)[0]
            held = self.held.get(sender, 0) + sign * rec.size
            if held > 0:
                self.held[sender] = held
            else:
                self.held.pop(sender, None)

    def _apply(self, key: str, value: bytes | None, revision: int = 0) -> None:
        """Mirror one bucket entry; a deletion (value None, e.g. the bucket's TTL) forgets it, so
        memory is bounded by the retention period. An older revision never replaces a newer one,
        and the one already applied is not decoded again: our own writes are applied before the
        watch echoes them (a revision is a stream sequence, so equal means the same entry)."""
        if revision and revision <= self.revs.get(key, 0):
            return
        kind, _, ident = key.partition(".")
        if value is None:
            if kind == "out":
                self.out.pop(ident, None)
            elif kind == "in":
                self._hold(self.inbox.pop(ident, None), -1)
            self.idem.pop(key, None)
            self.revs.pop(key, None)
            return
        if revision:
            self.revs[key] = revision
        if kind == "out":
            self.out[ident] = msgspec.json.decode(value, type=OutRecord)
        elif kind == "in":
            self._hold(self.inbox.get(ident), -1)
            rec = self.inbox[ident] = msgspec.json.decode(value, type=InRecord)
            self._hold(rec, +1)
        elif kind == "idem":
            self.idem[key] = value.decode()
        elif key == POLICY_FLOOR_KEY:
            self.policy_floor = max(self.policy_floor, int(value))

    async def start(self, js: JetStreamContext, *, timeout: float = 10.0) -> None:
        self.kv = await js.key_value(state_bucket(self.org))
        await self._follower.follow(js, state_bucket(self.org), self._apply, timeout=timeout)

    async def stop(self) -> None:
        await self._follower.stop()

    async def _put(self, key: str, value: bytes) -> None:
        assert self.kv is not None
        self._apply(key, value, await self.kv.put(key, value))

    async def _create(self, key: str, value: bytes) -> bool:
        """Write a new entry; False (and the current entry mirrored) if it exists already."""
        assert self.kv is not None
        try:
            self._apply(key, value, await self.kv.create(key, value))
            return True
        except KeyWrongLastSequenceError:
            await self._refresh(key)
            return False

    async def _refresh(self, key: str) -> None:
        assert self.kv is not None
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return
        self._apply(key, entry.value, entry.revision or 0)

    async def _cas(self, key: str, current: Callable[[], T | None], change: Callable[[T], T | None],
                   encode: Callable[[T], bytes]) -> T | None:
        """Read-modify-write with compare-and-set; ``change`` returns None for "nothing to do"."""
        assert self.kv is not None
        for _ in range(CAS_ATTEMPTS):
            rec, rev = current(), self.revs.get(key)
            if rec is None or rev is None:  # not seen yet (another instance wrote it): read it
                await self._refresh(key)
                rec, rev = current(), self.revs.get(key)
                if rec is None or rev is None:
                    return None
            new = change(rec)
            if new is None:
                return rec
            value = encode(new)
            try:
                self._apply(key, value, await self.kv.update(key, value, last=rev))
                return new
            except KeyWrongLastSequenceError:
                await self._refresh(key)
        raise PsvnError(Code.BACKBONE_UNAVAILABLE, f"state entry {key} kept changing under us; retry",
                        rule="state-contention")

    async def set_policy_floor(self, version: int) -> None:
        await self._put(POLICY_FLOOR_KEY, str(version).encode())

    @contextlib.asynccontextmanager
    async def lock(self, message_id: str) -> AsyncIterator[None]:
        """One writer per message id in this process; the lock is dropped once nobody waits on it."""
        lock = self._locks.setdefault(message_id, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and not lock._waiters:  # type: ignore[attr-defined]
                self._locks.pop(message_id, None)

    async def out_record(self, message_id: str) -> OutRecord | None:
        """A sent message's record: this instance's copy, else read where it lives (read-your-
        writes across instances: the watch may not have brought another instance's write yet)."""
        if message_id not in self.out and KEY_ID.fullmatch(message_id):
            await self._refresh(f"out.{message_id}")
        return self.out.get(message_id)

    async def in_record(self, message_id: str) -> InRecord | None:
        """A received message's mailbox entry, read where it lives if this instance lacks it."""
        if message_id not in self.inbox and KEY_ID.fullmatch(message_id):
            await self._refresh(f"in.{message_id}")
        return self.inbox.get(message_id)

    # -- sent messages -------------------------------------------------------------------
    async def put_out(self, rec: OutRecord) -> bool:
        return await self._create(f"out.{rec.id}", msgspec.json.encode(rec))

    async def claim_idempotency(self, key: str, message_id: str) -> str:
        """Atomically bind an idempotency key to a message id; returns the id that owns it."""
        if await self._create(key, message_id.encode()):
            return message_id
        return self.idem.get(key, message_id)

    async def move_out(self, message_id: str, new: State, *, reason: str | None = None,
                       rule_ids: list[str] | None = None) -> OutRecord | None:
        """Advance a sent message's status per the lifecycle table; stale moves are ignored."""

        def change(rec: OutRecord) -> OutRecord | None:
            try:
                state = advance(State(rec.status), new)
            except InvalidTransition:
                return None
            if state.value == rec.status:
                return None
            return msgspec.structs.replace(
                rec, status=state.value, reason=reason or rec.reason, rule_ids=rule_ids or rec.rule_ids,
                history=[*rec.history, HistoryEntry(status=state.value, time=now_rfc3339(), reason=reason)])

        async with self.lock(message_id):
            return await self._cas(f"out.{message_id}", lambda: self.out.get(message_id), change,
                                   msgspec.json.encode)

    # -- received messages ---------------------------------------------------------------
    async def put_in(self, rec: InRecord) -> bool:
        """File a received message; False if it was filed already (by us or another instance)."""
        return await self._create(f"in.{rec.id}", msgspec.json.encode(rec))

    async def update_in(self, message_id: str, change: Callable[[InRecord], InRecord | None]) -> InRecord | None:
        return await self._cas(f"in.{message_id}", lambda: self.inbox.get(message_id), change,
                               msgspec.json.encode)
