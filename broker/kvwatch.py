"""Follow a JetStream KV bucket: every current value, then live updates, into a callback.

The registry view, the policy holder, the consent view and the gateway's state store all keep a
live in-memory copy of a bucket this way; this is the one loop they share.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError

log = structlog.get_logger("psvn.kvwatch")

KV_OPERATION = "KV-Operation"

Apply = Callable[[str, bytes | None, int], None]  # (key, value or None when deleted, revision)


class KVFollower:
    """Runs one watch in a task; ``synced`` is set once the bucket's current values are applied."""

    def __init__(self) -> None:
        self.synced = asyncio.Event()
        # the backbone's timestamp of the entry being applied (for an ``apply`` that needs it,
        # e.g. to decide which of a signer's keys was current when it was written)
        self.entry_time: datetime | None = None
        self._task: asyncio.Task[None] | None = None
        self._watcher: Any = None

    async def follow(self, js: JetStreamContext, bucket: str, apply: Apply, *, key: str | None = None,
                     ready: asyncio.Event | None = None, timeout: float = 10.0) -> None:
        """Start following ``bucket`` (or one ``key``); wait for ``ready`` (default: synced)."""
        kv = await js.key_value(bucket)
        # "Synced" means: applied everything up to the bucket's last revision when we began.
        # (nats-py's own end-of-initial-values marker can arrive before values still in flight.)
        if key:
            try:
                target = (await kv.get(key)).revision or 0
            except KeyNotFoundError:
                target = 0
        else:
            target = (await js.stream_info(f"KV_{bucket}")).state.last_seq
        if target == 0:
            self.synced.set()
        self._watcher = watcher = await (kv.watch(key) if key else kv.watchall())

        async def run() -> None:
            async for entry in watcher:
                if entry is None:
                    continue
                deleted = entry.operation in ("DEL", "PURGE")
                self.entry_time = entry.created
                try:
                    apply(entry.key, None if deleted else entry.value, entry.revision or 0)
                except Exception as exc:  # one bad entry must not stop the watch
                    log.error("kv entry ignored", bucket=bucket, key=entry.key, error=repr(exc))
                if (entry.revision or 0) >= target:
                    self.synced.set()

        self._task = asyncio.create_task(run(), name=f"watch {bucket}")
        await asyncio.wait_for((ready or self.synced).wait(), timeout)

    async def stop(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One stored KV entry, read by stream sequence."""

    key: str
    value: bytes | None
    revision: int
    operation: str | None

    @property
    def deleted(self) -> bool:
        return self.operation in ("DEL", "PURGE")


async def read_history(js: JetStreamContext, bucket: str, key: str) -> list[StoredEntry]:
    """Every kept entry for ``key``, oldest first.

    Read message by message (next-by-subject) rather than with nats-py's ``kv.history()``: that
    one ends at a watcher's end-of-values marker, which can arrive before values still in flight,
    so it sometimes returns nothing for a key that has history (measured: a flaky CI run).
    """
    stream, subject = f"KV_{bucket}", f"$KV.{bucket}.{key}"
    out: list[StoredEntry] = []
    seq = 1
    for _ in range(1_000_000):  # bounded: a bucket's history per key is small
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            break
        headers = msg.headers or {}
        out.append(StoredEntry(key, msg.data, msg.seq or seq, headers.get(KV_OPERATION)))
        seq = (msg.seq or seq) + 1
    return out


async def read_keys(js: JetStreamContext, bucket: str) -> list[str]:
    """The keys with a live (not deleted) value, from the stream's subject index (no watcher race)."""
    stream, prefix = f"KV_{bucket}", f"$KV.{bucket}."
    info = await js.stream_info(stream, subjects_filter=f"{prefix}>")
    keys: list[str] = []
    for subject in sorted((info.state.subjects or {}) if info.state else {}):
        try:
            msg = await js.get_msg(stream, subject=subject)
        except NotFoundError:
            continue
        if (msg.headers or {}).get(KV_OPERATION) not in ("DEL", "PURGE"):
            keys.append(subject[len(prefix):])
    return keys
