"""The bench's report: what ``psvn bench`` measured (a msgspec struct, also its JSON), the
targets issue 9 sets beside the figures (information, never pass/fail), and the human table."""

from __future__ import annotations

import statistics
from typing import Any, Final

import msgspec

from psvn import __version__

COUNCIL = "gss:E06000043"
TRUST = "ods:RYR"
MESSAGE_TYPE = "fhir.r4.ServiceRequest"
PURPOSE = "direct-care"
CLASSIFICATION: Final = "OFFICIAL-SENSITIVE"
NHS_NUMBER = "9434765919"  # a valid (check digit) NHS number used throughout the examples


# -- report ----------------------------------------------------------------------------------
class Percentiles(msgspec.Struct, kw_only=True):
    n: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None


class CpuUse(msgspec.Struct, kw_only=True):
    """Where the CPU went during a throughput run: per process, milliseconds per message, and
    how busy all cores were (1.0 = every core all the time: the machine was the limit)."""

    ms_per_msg: dict[str, float]
    busy: float
    other_busy: float | None = None  # share of all cores used by processes outside the devnet and bench


class Throughput(msgspec.Struct, kw_only=True):
    """psvn through the devnet, everything in flight (``concurrency`` sends at a time)."""

    requested: int
    attempted: int = 0
    accepted: int = 0  # 202 from the council gateway
    errors: int = 0  # sends that failed (after the SDK's own retries)
    error_codes: dict[str, int] = msgspec.field(default_factory=dict)
    first_error: str | None = None
    in_mailbox: int = 0  # filed in the trust's mailbox (status delivered)
    sender_delivered: int = 0  # the council's status moved to delivered
    failed: int = 0  # quarantined, or sender status rejected/expired
    undelivered: int = 0  # accepted but not delivered before the deadline
    verified_delivered: int = 0  # status read back through the SDK: delivered or acknowledged
    time_limited: bool = False  # the time limit stopped the send phase before `requested`
    seconds: float = 0.0
    accept_per_s: float = 0.0
    deliver_per_s: float = 0.0  # into the trust's mailbox
    sender_delivered_per_s: float = 0.0
    send_call: Percentiles = msgspec.field(default_factory=Percentiles)
    to_mailbox: Percentiles = msgspec.field(default_factory=Percentiles)
    to_sender_delivered: Percentiles = msgspec.field(default_factory=Percentiles)
    cpu: CpuUse | None = None  # send phase until everything is delivered (Linux /proc)


class RawThroughput(msgspec.Struct, kw_only=True):
    """Plain nats-py JetStream on the same server: publish_async + durable pull consumer."""

    requested: int
    published: int = 0
    acked: int = 0
    consumed: int = 0
    errors: int = 0
    first_error: str | None = None
    time_limited: bool = False
    seconds: float = 0.0
    publish_per_s: float = 0.0  # publish acknowledged by JetStream
    consume_per_s: float = 0.0
    publish_ack: Percentiles = msgspec.field(default_factory=Percentiles)
    to_consumer: Percentiles = msgspec.field(default_factory=Percentiles)
    cpu: CpuUse | None = None


class Latency(msgspec.Struct, kw_only=True):
    """One message at a time: the pipeline's own delay, no queueing."""

    samples: int
    psvn_delivered: int = 0
    raw_consumed: int = 0
    psvn_send_call: Percentiles = msgspec.field(default_factory=Percentiles)
    psvn_to_mailbox: Percentiles = msgspec.field(default_factory=Percentiles)
    psvn_to_sender_delivered: Percentiles = msgspec.field(default_factory=Percentiles)
    raw_publish_ack: Percentiles = msgspec.field(default_factory=Percentiles)
    raw_to_consumer: Percentiles = msgspec.field(default_factory=Percentiles)
    psvn_cpu: CpuUse | None = None  # one message at a time: nothing shares a write or a request


class Ratios(msgspec.Struct, kw_only=True, omit_defaults=False):
    """psvn / raw: below 1 for rates (a fraction of the backbone's speed), above 1 for latencies."""

    accept_vs_publish: float | None = None
    delivery_vs_consume: float | None = None
    batch_accept_vs_publish: float | None = None
    batch_delivery_vs_consume: float | None = None
    batch_vs_single_delivery: float | None = None  # above 1: the batch path delivers faster
    latency_p50: float | None = None
    latency_p99: float | None = None


class LocalFigure(msgspec.Struct, kw_only=True):
    """One local measurement; ``result`` is what the measuring function returned."""

    name: str
    available: bool
    result: Any = None
    note: str | None = None


class Memory(msgspec.Struct, kw_only=True):
    """One gateway's resident memory (``/proc/<pid>/status``, MiB): VmRSS before the measured runs
    (after the warm-up) and after them, and VmHWM, the most it ever held. ``messages``: how many
    the runs sent through it meanwhile (0 for a gateway that only watched); ``open_letters``: how
    many of them it still holds unacknowledged at the end (the recipient's open work: the bench
    acknowledges only after its runs, if at all), which its memory is bounded by, not history."""

    pid: int
    messages: int = 0
    open_letters: int = 0
    before_mib: float | None = None
    after_mib: float | None = None
    growth_mib: float | None = None
    peak_mib: float | None = None
    midway_mib: float | None = None  # between the single-send and the batch runs
    midway_messages: int = 0  # how many had gone through it by then


class MemoryRun(msgspec.Struct, kw_only=True):
    """``--memory-messages N``: after the other runs and their clean-up, a first round that fills
    the gateways' bounded caches, then N more messages through ``send_many`` in rounds, the
    recipient's systems acknowledging each round before the next, so the gateways' memory is
    read over N messages of history with almost no open work. ``start``: each gateway's VmRSS
    (MiB) before it; ``after``: after each round, the first round's included."""

    messages: int = 0  # sent and acknowledged after the first round
    round_size: int = 0
    start: dict[str, float | None] = msgspec.field(default_factory=dict)
    after: list[dict[str, float | None]] = msgspec.field(default_factory=list)
    errors: int = 0  # sends that failed or letters left unacknowledged
    first_error: str | None = None  # the first failed send's code and text

    def settled_growth(self, name: str) -> float | None:
        """Growth from the end of the first round (which fills the gateway's bounded caches) to
        the end: over ``messages``."""
        if len(self.after) < 2:
            return None
        first, last = self.after[0].get(name), self.after[-1].get(name)
        return None if first is None or last is None else round(last - first, 1)


class Restart(msgspec.Struct, kw_only=True):
    """The sender's gateway after the runs: stopped (SIGTERM) by its PID, started again with its
    own command line as the devnet does, timed until its ``/readyz`` answered 200."""

    gateway: str
    ready: bool = False
    stop_seconds: float | None = None  # SIGTERM until the old process was gone
    ready_seconds: float | None = None  # the new process started until /readyz answered 200
    rss_mib: float | None = None  # the restarted gateway's VmRSS once ready
    old_pid: int | None = None
    pid: int | None = None
    error: str | None = None  # why it did not come back (the devnet then lacks this gateway)


class Target(msgspec.Struct, kw_only=True):
    """One of issue 9's targets beside what this run measured: information, never pass/fail
    (``meets`` is None when the run cannot say, e.g. memory over fewer than 100,000 messages)."""

    name: str
    target: str
    measured: float | None = None
    unit: str = ""
    meets: bool | None = None


class TargetOverRuns(msgspec.Struct, kw_only=True):
    """One target over several runs against the same devnet (``psvn bench --runs N``): the
    machine's speed swings from one minute to the next, so one run's figure may fall either side
    of a threshold that the median does not."""

    name: str
    target: str
    unit: str = ""
    measured: list[float | None] = msgspec.field(default_factory=list)  # each run's figure, in order
    median: float | None = None  # of the runs that measured it
    meets: bool | None = None  # in more than half of the runs that could say; None if none could


class Report(msgspec.Struct, kw_only=True):
    version: int = 2
    psvn_version: str = __version__
    environment: dict[str, Any] = msgspec.field(default_factory=dict)
    payload_type: str = MESSAGE_TYPE
    payload_bytes: int = 0
    sender: str = COUNCIL
    recipient: str = TRUST
    concurrency: int = 0
    warmup: int = 0
    throughput: Throughput | None = None
    batch: Throughput | None = None  # the same count through send_many / POST /v1/messages:batch
    batch_size: int = 0
    raw: RawThroughput | None = None
    latency: Latency | None = None
    ratios: Ratios = msgspec.field(default_factory=Ratios)
    local: list[LocalFigure] = msgspec.field(default_factory=list)
    cleanup_acknowledged: int | None = None  # trust messages acknowledged after the run (None: skipped)
    memory: dict[str, Memory] = msgspec.field(default_factory=dict)  # "gateway <org>" -> its RSS
    memory_run: MemoryRun | None = None  # --memory-messages: history acknowledged as it goes
    restart: Restart | None = None  # None: skipped (--no-restart)
    targets: list[Target] = msgspec.field(default_factory=list)
    # --runs N (N > 1): this report is the last run's; each target over all N runs
    runs: int = 1
    over_runs: list[TargetOverRuns] = msgspec.field(default_factory=list)
    incomplete_runs: list[int] = msgspec.field(default_factory=list)  # runs (1, 2, ...) that lost messages
    notes: list[str] = msgspec.field(default_factory=list)
    seconds: float = 0.0


# -- issue 9's targets (single-node devnet): printed beside the figures, never pass/fail --------
T_BATCH = "batch path, delivered to the mailbox"
T_SHARE = "batch path, share of raw consume"
T_CPU = "batch path, CPU ms per message, all processes"
T_SINGLE = "single-send path, delivered to the mailbox"
T_P99 = "one at a time, send -> mailbox p99"
T_RSS = "RSS growth of a gateway, open work apart"
T_RESTART = "sender gateway restart, to /readyz 200"
RSS_MESSAGES = 100_000  # the count issue 9's "flat RSS" is set over
RSS_FEW_MIB = 5.0  # "a few MiB"


def assess(r: Report) -> list[Target]:
    """Each target beside this run's figure (``meets`` None when the figure is missing, or when
    the run is too small to say: RSS over fewer than RSS_MESSAGES messages)."""
    tp, bt, lat, rs = r.throughput, r.batch, r.latency, r.restart
    share = r.ratios.batch_delivery_vs_consume

    def at_least(name: str, low: float, x: float | None, unit: str, text: str) -> Target:
        return Target(name=name, target=text, measured=x, unit=unit, meets=None if x is None else x >= low)

    def at_most(name: str, high: float, x: float | None, unit: str, text: str) -> Target:
        return Target(name=name, target=text, measured=x, unit=unit, meets=None if x is None else x <= high)

    out = [
        at_least(T_BATCH, 2000, bt.deliver_per_s if bt else None, " msg/s", ">= 2,000 msg/s"),
        at_least(T_SHARE, 15.0, None if share is None else round(share * 100, 2), "%", ">= 15%"),
        at_most(T_CPU, 1.0, bt.cpu.ms_per_msg.get("total") if bt and bt.cpu else None, " ms", "<= 1.0 ms"),
        at_least(T_SINGLE, 800, tp.deliver_per_s if tp else None, " msg/s", ">= 800 msg/s"),
        at_most(T_P99, 5.0, lat.psvn_to_mailbox.p99_ms if lat and lat.psvn_to_mailbox.n else None, " ms",
                "<= 5 ms"),
    ]
    rss = Target(name=T_RSS, target=f"a few MiB across {RSS_MESSAGES:,} messages", unit=" MiB")
    mr = r.memory_run
    settled = [mr.settled_growth(n) for n in mr.start] if mr is not None else []
    if mr is not None and settled:
        # the memory run: each gateway's growth once its caches were full, every letter acknowledged
        known = [g for g in settled if g is not None]
        rss.measured = max(known) if known else None
        if mr.messages >= RSS_MESSAGES and not mr.errors and rss.measured is not None and len(known) == len(settled):
            rss.meets = rss.measured <= RSS_FEW_MIB
    else:
        # history, not open work: a gateway still holding the run's letters unacknowledged is not the measure
        moved = [m for m in r.memory.values() if m.messages and m.growth_mib is not None and not m.open_letters]
        rss.measured = max((m.growth_mib for m in moved if m.growth_mib is not None), default=None)
        if rss.measured is not None and min(m.messages for m in moved) >= RSS_MESSAGES:
            rss.meets = rss.measured <= RSS_FEW_MIB
    out.append(rss)
    ready = rs.ready_seconds if rs is not None and rs.ready else None
    restart = at_most(T_RESTART, 3.0, ready, " s", "<= 3 s after the runs")
    if rs is not None and not rs.ready:
        restart.meets = False  # it did not come back at all
    out.append(restart)
    return out


def delivered(r: Report) -> bool:
    """Every message the single-send and batch runs got accepted was delivered, none failed: the
    one thing a bench's exit status depends on."""
    return all(tp is not None and tp.accepted > 0 and tp.undelivered == 0 and tp.failed == 0
               for tp in (r.throughput, r.batch))


def over_runs(reports: list[Report]) -> list[TargetOverRuns]:
    """Each target over several runs, in the order the runs assessed them: every run's figure
    (None where a run has none), their median (of the runs that measured it) and whether it met
    the target in more than half of the runs that could say."""
    out: dict[str, TargetOverRuns] = {}
    verdicts: dict[str, list[bool]] = {}
    for k, r in enumerate(reports):
        for t in r.targets:
            o = out.setdefault(t.name, TargetOverRuns(name=t.name, target=t.target, unit=t.unit,
                                                      measured=[None] * len(reports)))
            o.measured[k] = t.measured
            if t.meets is not None:
                verdicts.setdefault(t.name, []).append(t.meets)
    for name, o in out.items():
        known = [x for x in o.measured if x is not None]
        o.median = statistics.median(known) if known else None
        said = verdicts.get(name, [])
        o.meets = sum(said) * 2 > len(said) if said else None
    return list(out.values())


# -- small pure helpers --------------------------------------------------------------------
def percentiles(values_s: list[float]) -> Percentiles:
    """Nearest-rank p50/p99 in milliseconds (no interpolation: every figure was observed)."""
    if not values_s:
        return Percentiles()
    v = sorted(values_s)

    def rank(p: float) -> float:
        k = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
        return round(v[k] * 1000, 3)

    return Percentiles(n=len(v), p50_ms=rank(50), p99_ms=rank(99), max_ms=round(v[-1] * 1000, 3))


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 and n else 0.0


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a and b else None


# -- human output -----------------------------------------------------------------------------------
def _n(x: float | int | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and x < 100:
        return f"{x:,.2f}{unit}"
    return f"{x:,.0f}{unit}"


def _x(r: float | None) -> str:
    """Rates as a share of the baseline's, latencies as a multiple of it."""
    return "-" if r is None else (f"{r:.1%}" if r < 1 else f"{r:.1f}x")


def _ratio_text(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _pp(p: Percentiles) -> str:
    return f"{_n(p.p50_ms)} / {_n(p.p99_ms)}"


def format_report(r: Report) -> str:
    """The human table: psvn and the raw baseline side by side, ratios, counts, local figures."""
    tp, raw, lat, bt = r.throughput, r.raw, r.latency, r.batch
    env = r.environment
    tg = {t.name: t for t in r.targets}

    def row(*cols: str) -> str:
        """Label, psvn, raw, ratio and (where issue 9 sets one) the target."""
        return "  {:<42}{:>16}{:>16}{:>10}  {}".format(*cols, *[""] * (5 - len(cols))).rstrip()

    def target(name: str) -> str:
        t = tg.get(name)
        return f"target {t.target}" if t is not None else ""

    lines = [
        f"psvn bench: {MESSAGE_TYPE} ({r.payload_bytes:,} bytes of FHIR R4 JSON), {r.sender} -> {r.recipient}, "
        f"devnet {env.get('devnet')}{' (temporary)' if env.get('temporary_devnet') else ''}"
        + (f", backbone {env.get('nats_nodes')} nats-servers, R{env.get('replicas')}"
           if (env.get("nats_nodes") or 1) > 1 else ""),
        f"  {env.get('cpus')} CPUs, Python {env.get('python')} ({env.get('event_loop')}), nats-server "
        f"{env.get('nats_server')}, nats-py {env.get('nats_py')}, httpx {env.get('httpx')}; warm-up {r.warmup}",
        "",
    ]
    if tp is not None and raw is not None:
        lines += [
            f"throughput: {tp.requested:,} messages, {r.concurrency} SDK sends in flight "
            "(raw: all publishes in flight)",
            row("", "psvn", "raw JetStream", "psvn/raw"),
            row("accepted (202) | publish acked      msg/s", _n(tp.accept_per_s), _n(raw.publish_per_s),
                _x(r.ratios.accept_vs_publish)),
            row("in mailbox | consumed               msg/s", _n(tp.deliver_per_s), _n(raw.consume_per_s),
                _x(r.ratios.delivery_vs_consume), target(T_SINGLE)),
            row("sender sees delivered               msg/s", _n(tp.sender_delivered_per_s), "", ""),
            row("send call | publish->ack     p50/p99 ms", _pp(tp.send_call), _pp(raw.publish_ack), ""),
            row("send->mailbox | ->consumed   p50/p99 ms", _pp(tp.to_mailbox), _pp(raw.to_consumer), ""),
            row("send->sender sees delivered  p50/p99 ms", _pp(tp.to_sender_delivered), "", ""),
        ]
        lines += [line for line in (_format_cpu("psvn", tp.cpu), _format_cpu("raw ", raw.cpu)) if line]
        lines.append("")
    if bt is not None and raw is not None:
        lines += [
            f"batch: the same {bt.requested:,} messages through send_many, {r.batch_size} per request "
            "(POST /v1/messages:batch)",
            row("", "psvn batch", "raw JetStream", "batch/raw"),
            row("accepted | publish acked            msg/s", _n(bt.accept_per_s), _n(raw.publish_per_s),
                _x(r.ratios.batch_accept_vs_publish)),
            row("in mailbox | consumed               msg/s", _n(bt.deliver_per_s), _n(raw.consume_per_s),
                _x(r.ratios.batch_delivery_vs_consume), f"{target(T_BATCH)}, {tg[T_SHARE].target} of raw"
                if T_BATCH in tg and T_SHARE in tg else ""),
            row("sender sees delivered               msg/s", _n(bt.sender_delivered_per_s), "", ""),
            row("request | publish->ack       p50/p99 ms", _pp(bt.send_call), _pp(raw.publish_ack), ""),
            row("send->mailbox | ->consumed   p50/p99 ms", _pp(bt.to_mailbox), _pp(raw.to_consumer), ""),
            f"  batch / single send, delivered to the mailbox: {_ratio_text(r.ratios.batch_vs_single_delivery)}",
        ]
        lines += [line for line in (_format_cpu("batch", bt.cpu, target(T_CPU)),) if line]
        lines.append("")
    if lat is not None and lat.samples:
        lines += [
            f"latency: {lat.samples} messages one at a time (no queueing)",
            row("", "psvn", "raw JetStream", "psvn/raw"),
            row("send call | publish->ack     p50/p99 ms", _pp(lat.psvn_send_call), _pp(lat.raw_publish_ack),
                ""),
            row("send->mailbox | ->consumed       p50 ms", _n(lat.psvn_to_mailbox.p50_ms),
                _n(lat.raw_to_consumer.p50_ms), _x(r.ratios.latency_p50)),
            row("send->mailbox | ->consumed       p99 ms", _n(lat.psvn_to_mailbox.p99_ms),
                _n(lat.raw_to_consumer.p99_ms), _x(r.ratios.latency_p99), target(T_P99)),
            row("send->sender sees delivered  p50/p99 ms", _pp(lat.psvn_to_sender_delivered), "", ""),
        ]
        lines += [line for line in (_format_cpu("one at a time", lat.psvn_cpu),) if line]
        lines.append("")
    if tp is not None and raw is not None:
        lines += [f"counts: psvn {tp.accepted}/{tp.requested} accepted ({tp.errors} failed sends), "
                  f"{tp.in_mailbox} in the mailbox, {tp.sender_delivered} delivered at the sender "
                  f"({tp.verified_delivered} confirmed through the SDK), {tp.failed} failed, "
                  f"{tp.undelivered} undelivered",
                  f"        raw {raw.published} published, {raw.acked} acked, {raw.consumed} consumed, "
                  f"{raw.errors} errors"]
        if bt is not None:
            lines.append(f"        batch {bt.accepted}/{bt.requested} accepted ({bt.errors} failed sends), "
                  f"{bt.in_mailbox} in the mailbox, {bt.sender_delivered} delivered at the sender "
                  f"({bt.verified_delivered} confirmed through the SDK), {bt.failed} failed, "
                  f"{bt.undelivered} undelivered")
        if lat is not None and lat.samples:
            lines.append(f"        latency run: psvn {lat.psvn_delivered}/{lat.samples} delivered, "
                  f"raw {lat.raw_consumed}/{lat.samples} consumed")
        lines.append("")
    lines += _format_memory(r, target(T_RSS))
    lines += _format_memory_run(r.memory_run)
    lines += _format_restart(r.restart, target(T_RESTART))
    lines += _format_targets(r)
    if r.local:
        lines.append("local figures: one core, no network")
        for f in r.local:
            lines += _format_local(f)
        lines.append("")
    if r.cleanup_acknowledged is not None:
        lines.append(f"clean-up: acknowledged {r.cleanup_acknowledged} bench messages in {r.recipient}'s inbox")
    lines += [f"note: {n}" for n in r.notes]
    lines.append(f"took {r.seconds:.1f} s")
    return "\n".join(lines)


def _format_cpu(label: str, cpu: CpuUse | None, target: str = "") -> str | None:
    if cpu is None:
        return None
    parts = " + ".join(f"{k} {v:.2f}" for k, v in cpu.ms_per_msg.items() if k != "total" and v >= 0.005)
    other = f"; other processes {cpu.other_busy:.0%}" if cpu.other_busy is not None else ""
    aim = f"; {target} in all" if target else ""
    return (f"  CPU ms/message, {label}: {parts} = {cpu.ms_per_msg.get('total', 0):.2f} "
            f"(cores {cpu.busy:.0%} busy with it{other}{aim})")


def _mib(x: float | None, sign: bool = False) -> str:
    return "-" if x is None else (f"{x:+.1f}" if sign else f"{x:.1f}")


def _format_memory(r: Report, target: str) -> list[str]:
    if not r.memory:
        return []
    most = max((m.messages for m in r.memory.values()), default=0)
    lines = [f"memory: each gateway's VmRSS before the runs -> after them, MiB ({most:,} messages through the "
             f"sender and the recipient){'; ' + target if target else ''}"]
    for name, m in r.memory.items():
        per = (f", {m.growth_mib * 1024 * 1000 / m.messages:,.0f} KiB per 1,000 messages"
               if m.growth_mib is not None and m.messages else "")
        if m.midway_mib is not None and m.after_mib is not None and m.messages > m.midway_messages:
            later = m.messages - m.midway_messages
            grew = m.after_mib - m.midway_mib
            per += (f"; {_mib(m.midway_mib)} after the first {m.midway_messages:,}, then {_mib(grew, sign=True)} "
                    f"over the last {later:,} ({grew * 1024 * 1000 / later:,.0f} KiB per 1,000)")
        if m.open_letters and m.growth_mib is not None:
            per += (f"; holds {m.open_letters:,} letters unacknowledged, its open work: "
                    f"{m.growth_mib * 1024 * 1024 / m.open_letters:,.0f} bytes each")
        lines.append(f"  {name:<30} {_mib(m.before_mib):>8} -> {_mib(m.after_mib):>8}  "
                     f"({_mib(m.growth_mib, sign=True)}; peak {_mib(m.peak_mib)}{per})")
    lines.append("")
    return lines


def _format_memory_run(mr: MemoryRun | None) -> list[str]:
    if mr is None:
        return []
    lines = [f"memory run: a first round of {mr.round_size:,}, then {mr.messages:,} messages through send_many "
             f"in rounds of {mr.round_size:,}, the recipient acknowledging each round; VmRSS MiB at the start, "
             "then after each round"
             + (f" ({mr.errors} failed or left unacknowledged"
                + (f"; first: {mr.first_error}" if mr.first_error else "") + ")" if mr.errors else "")]
    for name, start in mr.start.items():
        series = " ".join(_mib(a.get(name)) for a in mr.after)
        settled = mr.settled_growth(name)
        tail = ("" if settled is None
                else f"  ({_mib(settled, sign=True)} over the {mr.messages:,} after the first round)")
        lines.append(f"  {name:<30} {_mib(start):>8} | {series}{tail}")
    lines.append("")
    return lines


def _format_restart(rs: Restart | None, target: str) -> list[str]:
    if rs is None:
        return []
    if not rs.ready:
        return [f"restart: gateway {rs.gateway} did NOT come back after the runs: {rs.error}", ""]
    return [f"restart: gateway {rs.gateway} stopped in {_n(rs.stop_seconds)} s; started again, /readyz answered "
            f"200 after {_n(rs.ready_seconds)} s{' (' + target + ')' if target else ''}; VmRSS then "
            f"{_mib(rs.rss_mib)} MiB", ""]


def _format_targets(r: Report) -> list[str]:
    if not r.targets:
        return []
    nodes = r.environment.get("nats_nodes") or 1
    where = "" if nodes == 1 else f" (they are set for the single-node devnet; this backbone has {nodes} nodes)"
    lines = [f"issue 9's targets, for information (not pass/fail){where}:",
             "  {:<52}{:>12}  {:<36}{}".format("", "measured", "target", "meets")]
    for t in r.targets:
        meets = "-" if t.meets is None else ("yes" if t.meets else "no")
        lines.append(f"  {t.name:<52}{_n(t.measured, t.unit):>12}  {t.target:<36}{meets}")
    lines.append("")
    if r.over_runs:
        each = {o.name: " / ".join(_n(x) for x in o.measured) for o in r.over_runs}
        width = max(36, *(len(e) + 2 for e in each.values()))
        lines += [f"issue 9's targets over {r.runs} runs against the same devnet (the report above is the last run's):",
                  "  {:<52}{:>12}  {:<{w}}{}".format("", "median", "each run", "met in most", w=width)]
        for o in r.over_runs:
            meets = "-" if o.meets is None else ("yes" if o.meets else "no")
            lines.append(f"  {o.name:<52}{_n(o.median, o.unit):>12}  {each[o.name]:<{width}}{meets}")
        lines.append("")
    return lines


def _format_local(f: LocalFigure) -> list[str]:
    if not f.available:
        return [f"  {f.name:<44} {f.note}"]
    res = f.result
    if f.name == "protocol.seal" and isinstance(res, dict):
        size = f"({res.get('payload_bytes', 0):,} B)"
        return [f"  {f.name} (sign then seal, as a gateway sends; open then verify, as it receives)",
                f"    {'seal + sign ' + size:<42} {_n(res.get('seal_sign_per_s')):>10} ops/s",
                f"    {'unseal + verify ' + size:<42} {_n(res.get('unseal_verify_per_s')):>10} ops/s",
                f"    {'seal + sign, a new data key':<42} {_n(res.get('seal_sign_new_key_per_s')):>10} ops/s",
                f"    {'unseal + verify, a new data key':<42} {_n(res.get('unseal_verify_new_key_per_s')):>10} ops/s"]
    if isinstance(res, dict):
        return [f"  {f.name}", *(f"    {_label(k):<42} {_n(v) if isinstance(v, int | float) else v!s:>10}"
                                 for k, v in res.items())]
    if isinstance(res, list):
        out = [f"  {f.name}"]
        for item in res:
            out.append("    " + _local_row(item))
        return out
    return [f"  {f.name:<44} {_n(res) if isinstance(res, int | float) else res!s:>16}"]


def _label(key: str) -> str:
    """``decisions_per_s`` -> ``decisions/s``, ``compile_ms`` -> ``compile ms``."""
    if key.endswith("_per_s"):
        return key.removesuffix("_per_s").replace("_", " ") + "/s"
    return key.replace("_", " ")


def _local_row(item: Any) -> str:
    """One case of a local figure: its name, size and the first per-second figure it reports."""
    if not isinstance(item, dict):
        return str(item)
    label = next((str(item[k]) for k in ("case", "name", "type") if k in item), "?")
    if "bytes" in item:
        label += f" ({item['bytes']:,} B)"
    rate = next(((k, v) for k, v in item.items() if k.endswith("_per_s") and isinstance(v, int | float)), None)
    if rate is None:
        rate = next(((k, v) for k, v in item.items() if isinstance(v, int | float) and k != "bytes"), None)
    if rate is None:
        return f"{label:<42} {item}"
    unit = rate[0].removesuffix("_per_s").replace("_", " ")
    if not rate[0].endswith("_per_s"):
        return f"{label:<42} {_n(rate[1]):>10} {rate[0]}"
    row = f"{label:<42} {_n(rate[1]):>10} {unit}/s"
    cpu = item.get("cpu_" + rate[0])  # the same rate by process CPU time: one core's own figure
    if isinstance(cpu, int | float):
        best = f", best of {item['rounds']}" if isinstance(item.get("rounds"), int) else ""
        row += f" wall, {_n(cpu):>10}/s CPU time per core{best}"
    return row


def to_json(r: Report) -> bytes:
    return msgspec.json.format(msgspec.json.encode(r))
