"""The ``sent`` step of a sent message's record, written on its own only when no receipt does it.

A send is answered (202) once the backbone has acknowledged the sealed message. The sender's
record then still says ``accepted``: it was written before the publish, as the idempotency
claim. Writing ``sent`` before answering would be a third awaited backbone round trip and a
fifth durable write per message. So the step waits here, ``gateway.sent_step_delay_seconds``
(1 s by default). The recipient's receipt nearly always comes first, and its move (``delivered``,
or ``rejected``/``expired`` from the recipient) writes the ``sent`` step into the history in
that same write, at the time the backbone stored the message, which the signed receipt states
(:meth:`StateStore.move_out` ``sent_at``). Only a message no receipt has answered by then gets
``sent`` written alone: its recipient is away or slow, and a reader still learns it is on the
backbone.

Why this keeps every guarantee:

- **Statuses never go back.** The 202 says ``accepted``, what is stored; every later read says
  ``accepted`` or a step after it, on this instance or any other.
- **Nothing here is needed for delivery or for exactly-once.** The message is on the backbone
  before anything is queued here. A step lost in a crash leaves ``accepted`` until the receipt
  moves the record on; a retry with the same key finds ``accepted`` and publishes again, which
  the backbone's dedupe window and the recipient's create-once filing keep single.
- **Bounded.** At most ``gateway.max_pending_sent_steps`` wait (sends of the last second, at
  most); past that the oldest is written at once. ``psvn_sent_steps_pending`` reports how many wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

import structlog

from psvn.gateway.config import GatewaySection
from psvn.gateway.metrics import Metrics
from psvn.gateway.store import StateStore
from psvn.protocol.envelope import now_rfc3339
from psvn.protocol.lifecycle import State

log = structlog.get_logger("psvn.gateway")

WRITES_AT_ONCE = 32  # steps written concurrently (each one compare-and-set, most with no read)
ONLY_FROM_ACCEPTED = (State.ACCEPTED.value,)
LONGEST_NAP = 1.0  # seconds the loop sleeps at most, so a changed delay applies to what waits


class SentSteps:
    """Sends this instance published whose record still says ``accepted``, oldest first, each
    with when the backbone acknowledged it (the loop's clock, to time the delay, and the wall
    clock, the step's time). An entry leaves only once a move of its record has been written."""

    def __init__(self, *, store: StateStore, settings: GatewaySection, clock: Callable[[], datetime],
                 metrics: Metrics, stopping: Callable[[], bool]) -> None:
        self.store = store
        self.settings = settings  # read each time: the delay may be changed while running
        self.clock = clock
        self.metrics = metrics
        self.stopping = stopping
        self.pending: OrderedDict[str, tuple[float, datetime]] = OrderedDict()  # id -> (acked, acked at)
        self._wake = asyncio.Event()
        self.written = 0  # steps written alone (tests wait on it, not on a sleep)

    def published(self, message_id: str) -> None:
        """The backbone acknowledged the message: its ``sent`` step falls due after the delay.
        (A retry's publish of a message waiting here already keeps the first acknowledgement.)"""
        if message_id in self.pending:
            return
        self.pending[message_id] = (asyncio.get_running_loop().time(), self.clock())  # formatted if written
        self._count()
        if len(self.pending) == 1 or len(self.pending) > self.settings.max_pending_sent_steps:
            self._wake.set()  # the loop sleeps until the oldest is due: woken only when that changes

    def peek(self, message_id: str) -> str | None:
        """Another move of the record is about to be written (a receipt's, the expiry's): the
        time of the step waiting for it, to write in that move (None if none waits here: not
        published by this instance, or written already). Call :meth:`overtaken` once that move
        is written; if it fails, the step still waits here."""
        got = self.pending.get(message_id)
        return None if got is None else now_rfc3339(got[1])

    def overtaken(self, message_id: str) -> None:
        """A move of the record was written (with the step, or past ``accepted`` already): no
        step of its own is needed."""
        if self.pending.pop(message_id, None) is not None:
            self._count()

    def _count(self) -> None:
        self.metrics.sent_steps_pending.set(len(self.pending))

    def _due(self, now: float) -> list[tuple[str, datetime]]:
        """What is due at ``now`` (acknowledged at least the delay ago), and the oldest beyond
        the bound; left in :attr:`pending` until written."""
        delay, bound = self.settings.sent_step_delay_seconds, max(0, self.settings.max_pending_sent_steps)
        over = len(self.pending) - bound
        taken: list[tuple[str, datetime]] = []
        for message_id, (acked, acked_at) in self.pending.items():
            if acked + delay > now and len(taken) >= over:
                break
            taken.append((message_id, acked_at))
        return taken

    async def write_due(self, *, everything: bool = False) -> int:
        """Write the ``sent`` step of every message now due (``everything``: of all that wait).
        A failure is logged and counted, never retried: the record stays ``accepted``, true
        still, until a receipt moves it on."""
        taken = self._due(float("inf") if everything else asyncio.get_running_loop().time())
        gate = asyncio.Semaphore(WRITES_AT_ONCE)

        async def one(message_id: str, acked_at: datetime) -> None:
            async with gate:
                try:  # giving way: a record changed since we wrote it was moved on (by a receipt
                    # another instance took, or the expiry): no second read, no retry
                    moved = await self.store.move_out(message_id, State.SENT, at=now_rfc3339(acked_at),
                                                      only_from=ONLY_FROM_ACCEPTED, give_way=True)
                    outcome = "written" if moved is not None and moved.status == State.SENT.value else "overtaken"
                    self.written += outcome == "written"
                    self.metrics.count(self.metrics.sent_steps, outcome)
                except Exception as exc:
                    self.metrics.count(self.metrics.sent_steps, "failed")
                    log.warning("sent step not written; the record stays accepted until its receipt",
                                message_id=message_id, error=repr(exc))
                # (cancelled, by a stop, it still waits here: close() writes it)
                self.overtaken(message_id)

        await asyncio.gather(*(one(mid, acked_at) for mid, acked_at in taken))
        return len(taken)

    async def run(self) -> None:
        """Sleep until the oldest step falls due (or one is added to an empty queue, or the bound
        is passed), write what is due, and again, until the gateway stops."""
        loop = asyncio.get_running_loop()
        while not self.stopping():
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            due = next(iter(self.pending.values()))[0] + self.settings.sent_step_delay_seconds
            if due > loop.time() and len(self.pending) <= self.settings.max_pending_sent_steps:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(due - loop.time(), LONGEST_NAP))
                continue
            await self.write_due()

    async def close(self, timeout: float) -> None:
        """Stopping: write every step still waiting, bounded by ``timeout`` (the backbone may be
        gone). What is left stays ``accepted``, which is still true, until its receipt."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.write_due(everything=True), timeout)
