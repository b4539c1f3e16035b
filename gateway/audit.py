"""The gateway's audit writer: one task, records written in acknowledged batches.

Every event a gateway audits (sent, delivered, rejected, quarantined, ...) must be stored and
never lost, but must not hold up the message it describes. Records are queued at once and one
task writes them to the member's audit stream, as many as are waiting per stream message
(:mod:`broker.auditlog`'s JSON Lines): at volume, hundreds of records cost one write and one
acknowledgement. The writer lingers a moment (``linger``, 10 ms in a gateway) after the first
record of a batch arrives, so that at a steady trickle (a few hundred messages a second, one at
a time) records still share writes instead of each paying a publish, a stored message and an
acknowledgement of its own; nothing waits for the audit, so the linger holds up no message.

A batch is retried with the same ``Nats-Msg-Id`` through a disconnect or an election (stored
once); a batch never acknowledged is logged in full and counted as lost, as are records beyond
``max_pending`` during a long outage: bounded, never silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime

import msgspec
import structlog

from psvn.backbone import auditlog
from psvn.core.retry import retrying
from psvn.core.tasks import halt
from psvn.gateway.link import BackboneLink
from psvn.protocol.envelope import now_rfc3339
from psvn.protocol.subjects import audit_subject

log = structlog.get_logger("psvn.gateway.audit")

Publish = Callable[[bytes, dict[str, str]], Awaitable[object]]
ATTEMPTS = 6  # an audit record is retried for ~8 s (a leader election, a reconnect)
ACK_SECONDS = 5.0
MAX_IN_FLIGHT = 10_000


class AuditWriter:
    def __init__(self, publish: Publish, *, on_lost: Callable[[int], None], max_pending: int = 10_000,
                 max_batch_bytes: int = 60 * 1024, attempts: int = 6, linger: float = 0.0) -> None:
        self._publish = publish
        self.linger = linger  # seconds a batch waits for more records (never when closing or full)
        self._on_lost = on_lost
        self.max_pending = max_pending
        self.max_batch_bytes = max_batch_bytes
        self.attempts = attempts
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._full = asyncio.Event()  # a batch's worth is queued: the linger ends
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Records queued or being written, not yet acknowledged by the stream."""
        return len(self._queue) + self._in_flight

    def add(self, record: dict[str, object]) -> None:
        data = msgspec.json.encode(record)
        if self.pending >= self.max_pending:  # a long outage: bounded, never silent
            self._on_lost(1)
            log.error("audit record not stored: too many awaiting the backbone", record=record)
            return
        self._queue.append(data)
        self._queued_bytes += len(data) + 1
        if self._queued_bytes >= self.max_batch_bytes:
            self._full.set()
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="audit writer")

    def _take(self) -> list[bytes]:
        batch, size = [self._queue.popleft()], 0
        size = len(batch[0])
        while self._queue and size + 1 + len(self._queue[0]) <= self.max_batch_bytes:
            size += 1 + len(self._queue[0])
            batch.append(self._queue.popleft())
        self._queued_bytes = max(0, self._queued_bytes - size - 1) if self._queue else 0
        if self._queued_bytes < self.max_batch_bytes:
            self._full.clear()
        return batch

    async def _linger(self) -> None:
        """Let more records join the batch: until ``linger`` has passed, a batch's worth is
        queued, or the writer is closing (close() then waits for no timer)."""
        if self.linger <= 0 or self._closing or self._full.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), self.linger)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._linger()
            while self._queue:
                batch = self._take()
                self._in_flight = len(batch)
                try:
                    await self._write(batch)
                finally:
                    self._in_flight = 0
            if not self._queue:
                self._idle.set()

    async def _write(self, batch: list[bytes]) -> None:
        data, headers = auditlog.join(batch), {"Nats-Msg-Id": uuid.uuid4().hex}
        try:
            # waits of 0.25 s doubling to 5 s; closing, only one more try
            await retrying(lambda: self._publish(data, headers), on=Exception, attempts=self.attempts,
                           first_delay=0.25, max_delay=5.0, stop_when=lambda tries: self._closing and tries >= 2)
            return
        except Exception as exc:
            last = exc
        if not (self._closing and self.attempts >= 2):
            # one more wait, as long as the last, before the batch is given up: through a long
            # outage the writer gives up a batch no more often than that (~13 s with 6 attempts)
            await asyncio.sleep(min(0.25 * 2 ** (self.attempts - 1), 5.0))
        self._on_lost(len(batch))
        log.error("audit records not stored", count=len(batch), records=[r.decode() for r in batch],
                  error=str(last))

    async def close(self, timeout: float) -> int:
        """Write what is queued (bounded by ``timeout``); returns how many records were lost."""
        self._closing = True
        self._full.set()  # a lingering batch goes now
        if self._task is None:
            return 0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        lost = self.pending
        await halt(self._task)
        self._task = None
        if lost:
            self._on_lost(lost)
            log.error("audit records not stored at shutdown", count=lost)
        self._queue.clear()
        self._queued_bytes = 0
        return lost


class Audit:
    """What the gateway's parts call to audit an event (metadata only: never payloads): the
    record is stamped with the member and the time and queued on the :class:`AuditWriter`, so
    the message it describes is never held up by the audit stream. The writer publishes through
    the gateway's :class:`BackboneLink`, so it follows the connection across a rejoin."""

    def __init__(self, *, org: str, clock: Callable[[], datetime], link: BackboneLink,
                 on_lost: Callable[[int], None], linger: float = 0.0) -> None:
        self.org = org
        self.clock = clock
        self.link = link
        self.writer = AuditWriter(self._write, on_lost=on_lost, max_pending=MAX_IN_FLIGHT, attempts=ATTEMPTS,
                                  linger=linger)

    async def __call__(self, event: str, **fields: object) -> None:
        self.writer.add({"event": event, "org": self.org, "time": now_rfc3339(self.clock()), **fields})

    async def _write(self, data: bytes, headers: dict[str, str]) -> None:
        if self.link.ops is None:
            raise ConnectionError("not connected to the backbone")
        await self.link.ops.publish(audit_subject(self.org), data, timeout=ACK_SECONDS, headers=headers)

    async def close(self) -> int:
        """Write what is queued, bounded; what is left is logged and counted as lost."""
        return await self.writer.close(ACK_SECONDS)
