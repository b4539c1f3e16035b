"""The heap of a long-running service: the cyclic garbage collector set once it has started,
and the C allocator's free memory handed back to the system now and then.

Why: a gateway's hot path allocates many short-lived objects (futures, tasks, parsed envelopes,
nats-py messages) and its heap holds many long-lived ones (the registry, the policy set, the
FHIR model classes). With Python's default thresholds (700, 10, 10) a young collection runs
every 700 net allocations and every tenth one also walks the older generation, so the
collector kept walking objects that never die. Measured with ``psvn bench`` (alternating runs
on the 2-core machine, 3,000 messages each), raising the first threshold to 100,000 and
freezing what start-up built cut each gateway's CPU per message on the batch path by about a
quarter to a third (sender 0.43-0.50 -> 0.30-0.35 ms, recipient 0.37-0.45 -> 0.28-0.32 ms), with
the gateways' RSS growth over the runs unchanged.

Almost all garbage is freed by reference counting the moment it is dropped; only objects in
reference cycles wait for the collector, and a higher threshold makes them wait longer (up to
100,000 net allocations: e.g. the frames, and so the data, of that many failed receipt batches
held by their exceptions), a bounded delay. What is frozen is never collected: start-up's heap,
and whatever was in flight when :func:`settle` ran (the gateway is serving by then), so cyclic
garbage among those is a one-time leak the size of that heap at most.

**Trimming.** Objects over 512 bytes (sealed messages, payloads, msgspec and TLS buffers) come
from the C library's ``malloc``, which keeps what is freed for reuse. Under a steady load the
free chunks it keeps between live ones grew a recipient's gateway by ~5 MiB over 100,000
messages, though no Python object was kept (tracemalloc showed no growing allocation site).
glibc's ``malloc_trim(0)`` hands every whole free page back to the system: in ``psvn bench
--memory-messages 100000`` runs one after the other on the same machine, trimming every 5 s,
the recipient grew +0.9 MiB instead of +4.6 and the sender +1.1 instead of +2.1 (every 10 s,
the default: +1.0 and +1.1). One call on a ~100 MB heap took ~2 ms
with little to release and ~19 ms after a large release: the event loop waits that long, a
few times a minute at most. Where the C library has no ``malloc_trim`` (musl, macOS) nothing
is trimmed and the metrics say so.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger("psvn.core.heap")

# the older generations' thresholds: a middle collection every 20 young ones, a full one every
# 10 middle ones at most (Python also holds a full one back until the long-lived objects grew
# by a quarter), so the long-lived heap is walked seldom, and never what start-up froze
OLDER = (20, 10)


@dataclass(frozen=True)
class HeapSettings:
    """What :func:`settle` did: the thresholds in force and how many objects it froze."""

    thresholds: tuple[int, int, int]
    frozen: int


def settle(young_threshold: int) -> HeapSettings:
    """Call once start-up is done: collect what start-up left, move every surviving object to
    the permanent generation (``gc.freeze``: the collector never walks them again) and set the
    young generation's threshold. ``young_threshold`` 0 keeps Python's own thresholds and
    freezes nothing."""
    if young_threshold < 0:
        raise ValueError(f"young_threshold must be 0 or more, not {young_threshold}")
    if young_threshold:
        gc.collect()
        gc.freeze()
        gc.set_threshold(young_threshold, *OLDER)
    t0, t1, t2 = gc.get_threshold()
    return HeapSettings(thresholds=(t0, t1, t2), frozen=gc.get_freeze_count())


Trim = Callable[[], bool]


def malloc_trim() -> Trim | None:
    """glibc's ``malloc_trim(0)`` as a function (True when it released memory), or None where
    the C library has none."""
    try:  # the C library already in the process (no search for its file, which may be absent)
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return lambda: bool(fn(0))


async def trim_every(interval: float, trim: Trim, *, observe: Callable[[float, bool], None],
                     sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                     clock: Callable[[], float] = time.perf_counter) -> None:
    """Call ``trim`` every ``interval`` seconds until cancelled; ``observe(seconds, released)``
    after each call (the time the event loop waited on it, and whether memory went back). A
    call that fails is logged and the next one comes as planned: trimming is housekeeping, and
    a task that died quietly would leave the metrics saying it still runs."""
    if interval <= 0:
        raise ValueError(f"interval must be more than 0, not {interval}")
    while True:
        await sleep(interval)
        try:
            started = clock()
            released = trim()
            observe(clock() - started, released)
        except Exception:
            log.exception("heap trim failed; trying again at the next interval")
