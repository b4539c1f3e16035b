"""Follow a JetStream KV bucket: every current value, then live updates, into a callback.

The registry view, the policy holder, the consent view and the gateway's state store all keep a
live in-memory copy of a bucket this way; this is the one loop they share.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

log = structlog.get_logger("psvn.kvwatch")

Apply = Callable[[str, bytes | None, int], None]  # (key, value or None when deleted, revision)


class KVFollower:
    """Runs one watch in a task; ``synced`` is set once the bucket's current values are applied."""

    def __init__(self) -> None:
        self.synced = asyncio.Event()
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
