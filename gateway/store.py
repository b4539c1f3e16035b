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
from collections.abc import AsyncIterator

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker.kvwatch import KVFollower
from broker.subjects import state_bucket
from psvn.envelope import now_rfc3339
from psvn.lifecycle import InvalidTransition, State, advance

log = structlog.get_logger("psvn.gateway.store")
POLICY_FLOOR_KEY = "policy.floor"


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


def idem_key(system: str, key: str) -> str:
    return "idem." + hashlib.sha256(f"{system}\x00{key}".encode()).hexdigest()


class StateStore:
    def __init__(self, org: str) -> None:
        self.org = org
        self.out: dict[str, OutRecord] = {}
        self.inbox: dict[str, InRecord] = {}
        self.idem: dict[str, str] = {}
        self.kv: KeyValue | None = None
        self.policy_floor = 0
        self._follower = KVFollower()
        self._locks: dict[str, asyncio.Lock] = {}

    def _apply(self, key: str, value: bytes | None) -> None:
        """Mirror one bucket entry; a deletion (value None, e.g. the bucket's TTL) forgets it, so
        memory is bounded by the retention period."""
        kind, _, ident = key.partition(".")
        if value is None:
            if kind == "out":
                self.out.pop(ident, None)
            elif kind == "in":
                self.inbox.pop(ident, None)
            self.idem.pop(key, None)
            return
        if kind == "out":
            self.out[ident] = msgspec.json.decode(value, type=OutRecord)
        elif kind == "in":
            self.inbox[ident] = msgspec.json.decode(value, type=InRecord)
        elif kind == "idem":
            self.idem[key] = value.decode()
        elif key == POLICY_FLOOR_KEY and value:
            self.policy_floor = max(self.policy_floor, int(value))

    async def start(self, js: JetStreamContext, *, timeout: float = 10.0) -> None:
        self.kv = await js.key_value(state_bucket(self.org))
        await self._follower.follow(js, state_bucket(self.org), self._apply, timeout=timeout)

    async def stop(self) -> None:
        await self._follower.stop()

    async def _put(self, key: str, value: bytes) -> None:
        assert self.kv is not None
        await self.kv.put(key, value)
        self._apply(key, value)

    async def set_policy_floor(self, version: int) -> None:
        await self._put(POLICY_FLOOR_KEY, str(version).encode())

    @contextlib.asynccontextmanager
    async def lock(self, message_id: str) -> AsyncIterator[None]:
        """One writer per message id; the lock is dropped once nobody waits on it."""
        lock = self._locks.setdefault(message_id, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and not lock._waiters:  # type: ignore[attr-defined]
                self._locks.pop(message_id, None)

    # -- sent messages -------------------------------------------------------------------
    async def put_out(self, rec: OutRecord) -> None:
        await self._put(f"out.{rec.id}", msgspec.json.encode(rec))

    async def claim_idempotency(self, key: str, message_id: str) -> str:
        """Atomically bind an idempotency key to a message id; returns the id that owns it."""
        assert self.kv is not None
        try:
            await self.kv.create(key, message_id.encode())
        except KeyWrongLastSequenceError:
            entry = await self.kv.get(key)
            owner = (entry.value or b"").decode()
            self.idem[key] = owner
            return owner
        self.idem[key] = message_id
        return message_id

    async def move_out(self, message_id: str, new: State, *, reason: str | None = None,
                       rule_ids: list[str] | None = None) -> OutRecord | None:
        """Advance a sent message's status per the lifecycle table; stale moves are ignored."""
        async with self.lock(message_id):
            rec = self.out.get(message_id)
            if rec is None:
                return None
            try:
                state = advance(State(rec.status), new)
            except InvalidTransition:
                return rec
            if state.value == rec.status:
                return rec
            rec = msgspec.structs.replace(
                rec, status=state.value, reason=reason or rec.reason, rule_ids=rule_ids or rec.rule_ids,
                history=[*rec.history, HistoryEntry(status=state.value, time=now_rfc3339(), reason=reason)])
            await self.put_out(rec)
            return rec

    # -- received messages ---------------------------------------------------------------
    async def put_in(self, rec: InRecord) -> None:
        await self._put(f"in.{rec.id}", msgspec.json.encode(rec))
