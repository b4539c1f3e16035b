"""Delivery seen on the backbone, not by polling the gateways: the bench follows the two gateways'
state-bucket updates as the broker, so every message gets exact filed and delivered times."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec

from psvn.backbone.connect import subscribe_handler


# -- observing delivery on the backbone ------------------------------------------------------
class _Status(msgspec.Struct):
    status: str = ""


_status_dec = msgspec.json.Decoder(_Status)
_DELIVERED = frozenset({"delivered", "acknowledged"})
_FAILED = frozenset({"rejected", "expired", "quarantined"})


class DeliveryObserver:
    """First time each message reached the trust's mailbox and the sender's 'delivered', taken
    from the gateways' own state-bucket updates (``$KV.<bucket>.in.<id>`` / ``out.<id>``), which
    each member's own user may read in its own account. Costs the gateways nothing."""

    def __init__(self, sender: str, recipient: str) -> None:
        from psvn.protocol.subjects import state_bucket

        self.in_prefix = f"$KV.{state_bucket(recipient)}.in."
        self.out_prefix = f"$KV.{state_bucket(sender)}.out."
        self.mailbox: dict[str, float] = {}
        self.sender_delivered: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self._waiters: list[tuple[set[str], asyncio.Event]] = []  # (ids not yet done, set when none are)
        self._subs: list[Any] = []

    async def start(self, recipient_nc: Any, sender_nc: Any) -> None:
        """``recipient_nc``/``sender_nc``: connections as each member's own backbone user (its
        state bucket lives in its own account, out of the broker's sight)."""
        # handled as the reading loop parses each update: about four a message, and through
        # nats-py's queue, task and callback coroutine they cost this process ~0.013 CPU ms a
        # message more (its "client" CPU on the batch path: 0.090-0.097 against 0.080-0.083,
        # three pairs), counted as the client's though no SDK user pays it
        self._subs = [await subscribe_handler(recipient_nc, self.in_prefix + ">", self._on_in),
                      await subscribe_handler(sender_nc, self.out_prefix + ">", self._on_out)]
        await recipient_nc.flush()
        await sender_nc.flush()

    async def stop(self) -> None:
        for s in self._subs:
            with contextlib.suppress(Exception):
                await s.unsubscribe()

    def _status(self, data: bytes) -> str:
        try:
            return _status_dec.decode(data).status if data else ""
        except msgspec.DecodeError:
            return ""

    def _on_in(self, msg: Any) -> None:
        now = time.perf_counter()
        mid = msg.subject[len(self.in_prefix):]
        st = self._status(msg.data)
        if st in _DELIVERED:
            self.mailbox.setdefault(mid, now)
        elif st in _FAILED:
            self.failed.setdefault(mid, f"trust: {st}")
        self._settled(mid)

    def _on_out(self, msg: Any) -> None:
        now = time.perf_counter()
        mid = msg.subject[len(self.out_prefix):]
        st = self._status(msg.data)
        if st in _DELIVERED:
            self.sender_delivered.setdefault(mid, now)
        elif st in _FAILED:
            self.failed.setdefault(mid, f"sender: {st}")
        self._settled(mid)

    def _settled(self, mid: str) -> None:
        """Wake a waiter only when the last message it waits for is done: one wake-up a wait,
        not one per state update (about three a message), which in the one-at-a-time run cost
        this process CPU the gateways then waited for."""
        for pending, all_done in self._waiters:
            if mid in pending and self.done(mid):
                pending.discard(mid)
                if not pending:
                    all_done.set()

    def done(self, mid: str) -> bool:
        return mid in self.failed or (mid in self.mailbox and mid in self.sender_delivered)

    async def wait_all(self, ids: list[str], timeout: float) -> bool:
        """True once every one of ``ids`` is done (delivered at both ends, or failed); False if
        ``timeout`` seconds pass first."""
        pending = {m for m in ids if not self.done(m)}
        if not pending:
            return True
        waiter = (pending, asyncio.Event())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter[1].wait(), timeout)
            return True
        except TimeoutError:  # (3.11's wait_for may say so in the turn the last one is done)
            return not pending
        finally:
            self._waiters.remove(waiter)
