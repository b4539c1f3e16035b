"""What the devnet's processes cost during a bench, read from Linux ``/proc`` (absent elsewhere:
the figures are then None): CPU per process, memory (RSS) per gateway, and a gateway's restart."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from psvn.bench.report import CpuUse, Memory, Restart


# -- CPU accounting (Linux /proc; absent elsewhere) ---------------------------------------------
def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far, or None if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``), or None if unknown."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    except (OSError, ValueError, IndexError):
        return None


class CpuMeter:
    """CPU used by named processes between ``start()`` and ``stop()``, and by everything else
    on the machine (another job running meanwhile makes the figures low: the report says so)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._t0 = 0.0
        self._c0: dict[str, float | None] = {}
        self._m0: float | None = None

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._m0 = machine_busy_seconds()
        self._c0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self, messages: int) -> CpuUse | None:
        wall = time.perf_counter() - self._t0
        used: dict[str, float] = {}
        for name, pid in self.pids.items():
            before, after = self._c0.get(name), cpu_seconds(pid)
            if before is None or after is None:
                return None
            used[name] = after - before
        if not messages or wall <= 0:
            return None
        cores = wall * (os.cpu_count() or 1)
        per = {name: round(sec * 1000 / messages, 3) for name, sec in used.items()}
        per["total"] = round(sum(used.values()) * 1000 / messages, 3)
        m1 = machine_busy_seconds()
        other = None if self._m0 is None or m1 is None else round(max(0.0, m1 - self._m0 - sum(used.values()))
                                                                    / cores, 3)
        return CpuUse(ms_per_msg=per, busy=round(sum(used.values()) / cores, 3), other_busy=other)


# -- memory (VmRSS / VmHWM) -----------------------------------------------------------------------
def memory_mib(pid: int) -> tuple[float | None, float | None]:
    """A process's resident memory now (VmRSS) and at most (VmHWM), MiB; None if unknown."""
    found: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = round(int(value.split()[0]) / 1024, 1)  # kB
    except (OSError, ValueError, IndexError):
        return None, None
    return found.get("VmRSS"), found.get("VmHWM")


class MemoryMeter:
    """Each named process's RSS at ``start()`` and at ``stop()`` (and its high-water mark then)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._before: dict[str, float | None] = {}
        self._midway: dict[str, float | None] = {}
        self._midway_messages = 0

    def start(self) -> None:
        self._before = {name: memory_mib(pid)[0] for name, pid in self.pids.items()}
        self._midway, self._midway_messages = {}, 0

    def midway(self, messages: int) -> None:
        """A reading between the runs (after ``messages`` of them): growth that stops after the
        first run is bounded caches filling; growth that goes on is history kept."""
        self._midway = {name: memory_mib(pid)[0] for name, pid in self.pids.items()}
        self._midway_messages = messages

    def stop(self, messages: dict[str, int], open_letters: dict[str, int] | None = None) -> dict[str, Memory]:
        """``messages``: how many the runs sent through each process (by name) meanwhile;
        ``open_letters``: how many of them each still holds unacknowledged (its open work)."""
        out: dict[str, Memory] = {}
        for name, pid in self.pids.items():
            before = self._before.get(name)
            after, peak = memory_mib(pid)
            growth = None if before is None or after is None else round(after - before, 1)
            midway = self._midway.get(name)
            out[name] = Memory(pid=pid, messages=messages.get(name, 0), before_mib=before, after_mib=after,
                               growth_mib=growth, peak_mib=peak, open_letters=(open_letters or {}).get(name, 0),
                               midway_mib=midway, midway_messages=self._midway_messages if midway is not None else 0)
        return out


# -- restart ---------------------------------------------------------------------------------------
def restart_gateway(layout: Any, org: str, *, timeout: float = 60.0) -> Restart:
    """Stop ``org``'s devnet gateway and start it again as the devnet does (``devnet.restart_gateway``),
    timed to ``/readyz`` 200. A gateway that does not come back is reported, not raised: the
    bench's other figures stand, and the report says the devnet is not as it was."""
    from psvn import devnet
    from psvn.core.errors import PsvnError

    try:
        done = devnet.restart_gateway(layout, org, timeout=timeout)
    except (RuntimeError, TimeoutError, OSError, PsvnError) as exc:
        state = devnet.read_state(layout)
        g = state.gateways.get(org) if state is not None else None
        return Restart(gateway=org, ready=False, pid=g.pid if g else None, error=str(exc))
    return Restart(gateway=org, ready=True, stop_seconds=done.stop_seconds, ready_seconds=done.ready_seconds,
                   rss_mib=memory_mib(done.pid)[0], old_pid=done.old_pid, pid=done.pid)
