"""Follow a JetStream KV bucket: every current value, then live updates, into a callback.

Two ways, one interface (``follow``, ``synced``, ``entry_time``, ``stop``):

- :class:`KVFollower` watches a bucket of the caller's own account (an ordered consumer).
- :class:`SharedFollower` follows a bucket of the network account from a member account, where a
  member may not create consumers (a consumer's delivery subject is a way to make JetStream
  publish anywhere in the network account): it listens to the bucket's change notifications
  (the network exports ``$KV.<bucket>.>`` as a stream) and reads each changed key where it lives
  (a direct get), so what it applies is always what is stored, with its revision. A periodic
  look at the stream's last sequence resyncs whatever a disconnect made it miss.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError

from psvn.backbone.natsraw import RawReads
from psvn.core.tasks import halt

log = structlog.get_logger("psvn.kvwatch")

KV_OPERATION = "KV-Operation"

Apply = Callable[[str, bytes | None, int], None]  # (key, value or None when deleted, revision)


async def _halt(unsubscribe: Callable[[], Awaitable[object]] | None, task: asyncio.Task[None] | None) -> None:
    """Stop a follower: its server-side interest first, then its task (neither may raise)."""
    if unsubscribe is not None:
        with contextlib.suppress(Exception):
            await unsubscribe()
    await halt(task)


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
        """Start following ``bucket`` (or one ``key``, or the keys a wildcard ``key`` such as
        ``in.>`` matches); wait for ``ready`` (default: synced)."""
        kv = await js.key_value(bucket)
        pattern = key is not None and (key.endswith(">") or "*" in key.split("."))
        # "Synced" means: applied everything up to the bucket's last revision when we began.
        # (nats-py's own end-of-initial-values marker can arrive before values still in flight.)
        # For a wildcard, the last revision may be another key's: synced is then the watch's own
        # count of what is left to deliver (num_pending of its ordered consumer) reaching zero.
        if pattern:
            target = -1
        elif key:
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
                if entry is None:  # the end of the initial values (none at all, for a wildcard)
                    if pattern:
                        self.synced.set()
                    continue
                deleted = entry.operation in ("DEL", "PURGE")
                self.entry_time = entry.created
                try:
                    apply(entry.key, None if deleted else entry.value or b"", entry.revision or 0)
                except Exception as exc:  # one bad entry must not stop the watch
                    log.error("kv entry ignored", bucket=bucket, key=entry.key, error=repr(exc))
                if (target >= 0 and (entry.revision or 0) >= target) or (pattern and not entry.delta):
                    self.synced.set()

        self._task = asyncio.create_task(run(), name=f"watch {bucket}")
        await asyncio.wait_for((ready or self.synced).wait(), timeout)

    async def stop(self) -> None:
        await _halt(self._watcher.stop if self._watcher is not None else None, self._task)


class SharedFollower:
    """Follows a bucket by change notifications and direct reads (see the module docstring)."""

    def __init__(self, *, resync_seconds: float = 5.0) -> None:
        self.synced = asyncio.Event()
        self.entry_time: datetime | None = None
        self.resync_seconds = resync_seconds
        self._revs: dict[str, int] = {}
        self._high = 0  # the highest stream sequence applied or known to be behind us
        self._task: asyncio.Task[None] | None = None
        self._sub: Any = None
        self._raw: RawReads | None = None

    async def follow(self, js: JetStreamContext, bucket: str, apply: Apply, *, key: str | None = None,
                     ready: asyncio.Event | None = None, timeout: float = 10.0) -> None:
        stream, prefix = f"KV_{bucket}", f"$KV.{bucket}."
        changed: asyncio.Queue[str] = asyncio.Queue(maxsize=10_000)

        async def notified(msg: Any) -> None:
            with contextlib.suppress(asyncio.QueueFull):  # a flood: the resync catches up
                changed.put_nowait(msg.subject[len(prefix):])

        self._sub = await js._nc.subscribe(prefix + (key or ">"), cb=notified)
        self._raw = raw = RawReads(js._nc)

        async def fetch(k: str) -> None:
            try:
                msg = await raw.direct_get(js, stream, subject=prefix + k)
            except NotFoundError:
                return
            seq = msg.seq or 0
            if seq <= self._revs.get(k, 0):
                return
            self._revs[k] = seq
            self._high = max(self._high, seq)
            self.entry_time = msg.time
            deleted = (msg.headers or {}).get(KV_OPERATION) in ("DEL", "PURGE")
            try:  # an empty value arrives as data None: pass it as b"", not as a deletion
                apply(k, None if deleted else msg.data or b"", seq)
            except Exception as exc:  # one bad entry must not stop the follower
                log.error("kv entry ignored", bucket=bucket, key=k, error=repr(exc))

        async def resync() -> None:
            last = (await js.stream_info(stream)).state.last_seq
            if last <= self._high and self.synced.is_set():
                return
            for k in [key] if key else await read_keys(js, bucket, deleted=True):
                try:
                    await fetch(k)
                except Exception as exc:  # one key that cannot be read must not stop the others
                    log.error("kv entry unreadable", bucket=bucket, key=k, error=repr(exc))
            self._high = max(self._high, last)
            self.synced.set()

        async def run() -> None:
            loop = asyncio.get_running_loop()
            next_resync = loop.time() + self.resync_seconds
            while True:
                try:
                    k = await asyncio.wait_for(changed.get(), max(0.0, next_resync - loop.time()))
                    await fetch(k)
                except TimeoutError:
                    next_resync = loop.time() + self.resync_seconds
                    try:
                        await resync()
                    except Exception as exc:  # backbone away: try again at the next tick
                        log.warning("kv resync failed", bucket=bucket, error=repr(exc))
                except Exception as exc:
                    log.warning("kv read failed", bucket=bucket, error=repr(exc))

        await resync()
        self._task = asyncio.create_task(run(), name=f"follow {bucket}")
        await asyncio.wait_for((ready or self.synced).wait(), timeout)

    async def stop(self) -> None:
        await _halt(self._sub.unsubscribe if self._sub is not None else None, self._task)
        if self._raw is not None:
            await self._raw.close()


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
        op = (msg.headers or {}).get(KV_OPERATION)
        # an empty value arrives as data None: keep it b"" so it is not mistaken for a deletion
        out.append(StoredEntry(key, None if op in ("DEL", "PURGE") else msg.data or b"", msg.seq or seq, op))
        seq = (msg.seq or seq) + 1
    return out


async def read_keys(js: JetStreamContext, bucket: str, *, deleted: bool = False) -> list[str]:
    """The keys with a live (not deleted) value, from the stream's subject index (no watcher race);
    ``deleted``: every key the stream still holds, deleted ones too (without reading them)."""
    stream, prefix = f"KV_{bucket}", f"$KV.{bucket}."
    info = await js.stream_info(stream, subjects_filter=f"{prefix}>")
    keys: list[str] = []
    for subject in sorted((info.state.subjects or {}) if info.state else {}):
        if deleted:
            keys.append(subject[len(prefix):])
            continue
        try:
            msg = await js.get_msg(stream, subject=subject)
        except NotFoundError:
            continue
        if (msg.headers or {}).get(KV_OPERATION) not in ("DEL", "PURGE"):
            keys.append(subject[len(prefix):])
    return keys
