"""What the devnet's processes cost during a bench, read from Linux ``/proc`` (absent elsewhere:
the figures are then None): CPU per process, memory (RSS) per gateway, and a gateway's restart."""

from __future__ import annotations

import os
import time
from pathlib import Path

from psvn.bench.report import CpuUse


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
