"""One bench run: start or find the devnet, run every measurement in order, assemble the report."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from psvn.bench.baseline import raw_baseline
from psvn.bench.local import local_figures
from psvn.bench.observe import DeliveryObserver
from psvn.bench.paths import _ack_all, _send_many, memory_run, psvn_latency, psvn_throughput
from psvn.bench.ports import free_port_range, port_span
from psvn.bench.process import CpuMeter, MemoryMeter, restart_gateway
from psvn.bench.report import (
    COUNCIL,
    T_RESTART,
    T_RSS,
    TRUST,
    Latency,
    Ratios,
    Report,
    _ratio,
    assess,
    delivered,
    over_runs,
)
from psvn.bench.workload import Options, payload_size, service_request
from psvn.core import heap
from psvn.core.errors import Code, PsvnError
from psvn.gateway.config import GatewaySection

Progress = Callable[[str], None]
LAST_RUN_ONLY = (T_RSS, T_RESTART)  # targets read on the last of several runs alone
# this process's young-generation threshold while it measures: the gateways' own default
# (``gateway.gc_threshold``), so the client times psvn, not its own collector
GC_YOUNG_THRESHOLD: int = next(f.default for f in msgspec.structs.fields(GatewaySection) if f.name == "gc_threshold")


def _settle_heap() -> None:
    """Before each measure: what this process built so far (the payloads, earlier runs' ids
    and results) is frozen, so its collector does not walk it while a message is timed. Seen
    with ``gc.callbacks`` in a full bench: three full collections of 54-90 ms each and middle
    ones up to 2.8 ms, each landing in whatever message was in flight (a one-at-a-time p99 is
    the third-worst of 300). The gateways settle their heaps the same way (:mod:`psvn.core.heap`);
    the raw baseline runs in this process, so it is measured with the same settings."""
    heap.settle(GC_YOUNG_THRESHOLD)


@contextlib.contextmanager
def _collector_restored() -> Iterator[None]:
    """The collector as it was once a run is over: the bench may run inside another program
    (the test suite does), whose later work must not inherit its thresholds or its frozen
    objects (what was frozen stays uncollected). Objects frozen before the run stay frozen."""
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    try:
        yield
    finally:
        if not frozen:
            gc.unfreeze()
        gc.set_threshold(*thresholds)


# -- the whole run ------------------------------------------------------------------------------
def _server_version(nc: Any) -> str | None:
    try:
        v = nc.connected_server_version
        return f"{v.major}.{v.minor}.{v.patch}"
    except Exception:
        return None


def _environment(nats_version: str | None, nats_url: str, devnet_root: str, started: bool,
                 loop: str) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "event_loop": loop, "nats_server": nats_version, "nats_url": nats_url,
            "nats_py": ver("nats-py"), "httpx": ver("httpx"),
            "devnet": devnet_root, "temporary_devnet": started, "load_1m_before": _load()}


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


async def run_async(layout: Any, opts: Options, *, progress: Progress | None = None,
                    started: bool = False, loop_name: str = "asyncio") -> Report:
    """Run every measurement against the devnet at ``layout`` (it must be running)."""
    with _collector_restored():
        return await _run_async(layout, opts, progress=progress, started=started, loop_name=loop_name)


async def _run_async(layout: Any, opts: Options, *, progress: Progress | None,
                     started: bool, loop_name: str) -> Report:
    from psvn_client import AsyncClient

    from psvn import devnet

    say = progress or (lambda _msg: None)
    state = devnet.read_state(layout)
    if not devnet.running(state):
        raise PsvnError(Code.BAD_REQUEST, f"no devnet running in {layout.root}", field="--devnet",
                        rule="devnet-running")
    assert state is not None
    missing = [o for o in (COUNCIL, TRUST) if o not in state.gateways]
    if missing:
        raise PsvnError(Code.BAD_REQUEST, f"the devnet has no gateway for {', '.join(missing)}", field="--devnet",
                        rule="devnet-member")
    t_run = time.perf_counter()
    tag = f"bench-{secrets.token_hex(3)}"
    report = Report(concurrency=opts.concurrency)
    payloads = [service_request(i, tag) for i in range(opts.count)]
    report.payload_bytes = max(payload_size(p) for p in payloads)
    lat = Latency(samples=min(opts.latency_samples, opts.count))

    async def clients(stack: contextlib.AsyncExitStack, org: str) -> list[AsyncClient]:
        """One SDK client with one connection per worker: httpx checks every pooled connection on
        each request, so one client sharing a pool of 8 costs ~25% more client CPU per send."""
        g = state.gateways[org]
        cert, key = layout.system_cert(org, g.system)
        return [await stack.enter_async_context(AsyncClient(g.url, ca=str(layout.ca), cert=str(cert), key=str(key),
                                                            max_connections=1, timeout=30.0))
                for _ in range(opts.concurrency)]

    urls, nodes = devnet.nats_urls(state), devnet.nats_nodes(state)
    # every nats-server's CPU counts: on a clustered backbone each node stores every message
    servers = {("nats-server" if len(nodes) == 1 else f"nats-server {n.name.rsplit('-', 1)[-1]}"): n.pid
               for n in nodes}
    nc = await devnet.broker_connect(layout, urls, name="psvn-bench")
    if started:  # nothing is acknowledged on a temporary devnet: room for this run beside what earlier runs left
        await _room_for(nc, opts.concurrency + lat.samples + 2 * opts.count)
    watch_in = await devnet.member_connect(layout, urls, TRUST, name="psvn-bench observer")
    watch_out = await devnet.member_connect(layout, urls, COUNCIL, name="psvn-bench observer")
    obs = DeliveryObserver(COUNCIL, TRUST)
    all_ids: list[str] = []
    try:
        await obs.start(watch_in, watch_out)
        report.environment = _environment(_server_version(nc), state.nats_url, str(layout.root), started,
                                          loop_name)
        report.environment["gateways"] = len(state.gateways)
        report.environment["gateway_orgs"] = sorted(state.gateways)
        report.environment["nats_nodes"] = len(nodes)
        report.environment["replicas"] = state.replicas
        async with contextlib.AsyncExitStack() as stack:
            sender = await clients(stack, COUNCIL)
            warm = [service_request(900000 + i, tag) for i in range(min(opts.concurrency, opts.count))]
            say(f"warm-up: {len(warm)} messages (opens {len(warm)} TLS connections) ...")
            w = await _send_many(sender, warm, concurrency=opts.concurrency, time_limit=opts.time_limit,
                                 tag=f"{tag}-w")
            if not w.times:
                raise PsvnError(Code.INTERNAL, f"the council gateway accepted none of the warm-up messages: "
                                f"{w.first_error}", rule="bench-warmup")
            all_ids += [m for m, _, _ in w.times]
            await obs.wait_all(all_ids, opts.delivery_timeout)
            report.warmup = len(w.times)
            gateways = {f"gateway {org}": g.pid for org, g in state.gateways.items()}
            pids = {"client": os.getpid(), **servers, **gateways}
            memory = MemoryMeter(gateways)
            memory.start()  # after the warm-up: its TLS connections and first-use caches are not growth
            through = 0  # messages the runs sent through the sender's and the recipient's gateways
            if lat.samples:
                say(f"latency: {lat.samples} messages one at a time ...")
                lat_payloads = [service_request(500000 + i, tag) for i in range(lat.samples)]
                _settle_heap()
                ids = await psvn_latency(sender, obs, lat_payloads, lat, opts, f"{tag}-l", CpuMeter(pids))
                all_ids += ids
                through += len(ids)
            say(f"throughput: {opts.count} messages, {opts.concurrency} in flight ...")
            _settle_heap()
            report.throughput, ids = await psvn_throughput(sender, obs, payloads, opts, f"{tag}-t", CpuMeter(pids))
            all_ids += ids
            through += len(ids)
            memory.midway(through)
            say(f"batch: {opts.count} messages through send_many, {opts.batch_size} per request ...")
            report.batch_size = opts.batch_size
            batch_payloads = [service_request(1_000_000 + i, tag) for i in range(opts.count)]
            _settle_heap()
            report.batch, ids = await psvn_throughput(sender, obs, batch_payloads, opts, f"{tag}-b", CpuMeter(pids),
                                                      batch=True)
            all_ids += ids
            through += len(ids)
            # the trust holds every letter of the runs unacknowledged (its open work) until the clean-up
            report.memory = memory.stop({f"gateway {COUNCIL}": through, f"gateway {TRUST}": through},
                                        open_letters={f"gateway {TRUST}": through})
        say(f"baseline: raw nats-py JetStream, {opts.count} messages of {report.payload_bytes} bytes ...")
        _settle_heap()
        report.raw = await raw_baseline(nc, os.urandom(report.payload_bytes), opts.count, lat, opts,
                                        CpuMeter({"client": os.getpid(), **servers}), replicas=state.replicas)
        report.latency = lat
        if opts.local_seconds > 0:  # while the devnet is idle: before the clean-up's receipts
            say("local figures (one core) ...")
            report.local = local_figures(opts.local_seconds)
        if opts.cleanup:
            say(f"clean-up: acknowledging {len(all_ids)} bench messages in the trust's inbox ...")
            async with contextlib.AsyncExitStack() as stack:
                receiver = await clients(stack, TRUST)
                report.cleanup_acknowledged = await _ack_all(receiver, all_ids, opts.concurrency,
                                                             opts.delivery_timeout)
        if opts.memory_messages:  # after the clean-up: the trust starts it with no open work
            if started:
                await _room_for(nc, opts.memory_messages)
            say(f"memory run: {opts.memory_messages} messages through send_many, acknowledged round by round ...")
            async with contextlib.AsyncExitStack() as stack:
                sender, receiver = await clients(stack, COUNCIL), await clients(stack, TRUST)
                report.memory_run = await memory_run(
                    sender[0], receiver, obs, opts, f"{tag}-m",
                    {f"gateway {org}": state.gateways[org].pid for org in (COUNCIL, TRUST)})
    finally:
        await obs.stop()
        for conn in (nc, watch_in, watch_out):
            with contextlib.suppress(Exception):
                await conn.close()  # not drain(): nothing of ours is left to flush, and drain waits on idle subs
    if opts.restart:  # last: everything the runs wrote is the history it starts on
        say(f"restart: stopping the sender's gateway ({COUNCIL}) and starting it again, timed to /readyz ...")
        report.restart = await asyncio.to_thread(restart_gateway, layout, COUNCIL, timeout=opts.restart_timeout)
    tp, raw, bt = report.throughput, report.raw, report.batch
    assert tp is not None and raw is not None and bt is not None
    report.ratios = Ratios(
        accept_vs_publish=_ratio(tp.accept_per_s, raw.publish_per_s),
        delivery_vs_consume=_ratio(tp.deliver_per_s, raw.consume_per_s),
        batch_accept_vs_publish=_ratio(bt.accept_per_s, raw.publish_per_s),
        batch_delivery_vs_consume=_ratio(bt.deliver_per_s, raw.consume_per_s),
        batch_vs_single_delivery=_ratio(bt.deliver_per_s, tp.deliver_per_s),
        latency_p50=_ratio(lat.psvn_to_mailbox.p50_ms, lat.raw_to_consumer.p50_ms),
        latency_p99=_ratio(lat.psvn_to_mailbox.p99_ms, lat.raw_to_consumer.p99_ms))
    report.targets = assess(report)
    report.notes += _notes(report)
    report.seconds = round(time.perf_counter() - t_run, 2)
    return report


async def _room_for(nc: Any, messages: int) -> None:
    """A temporary devnet only: make room in the trust's inbox for ``messages`` more from the
    council. The inbox keeps every letter for its retention period, acknowledged or not, and
    each sender may keep PER_SENDER_MAX_MSGS there (a flood limit), so the runs before the
    memory run would otherwise leave it short of 100,000 (with ``--runs``, the more so)."""
    from psvn.broker.provision import PER_SENDER_MAX_MSGS
    from psvn.protocol.subjects import inbox_stream, msg_subject

    js = nc.jetstream()
    subject = msg_subject(TRUST, COUNCIL)
    info = await js.stream_info(inbox_stream(TRUST), subjects_filter=subject)
    cfg, kept = info.config, (info.state.subjects or {}).get(subject, 0)  # the council's letters there now
    # what is kept, this run (its first round too) and a margin, within the usual limit at least
    wanted = max(PER_SENDER_MAX_MSGS, kept + messages + messages // 10 + 1_000)
    if (cfg.max_msgs_per_subject or 0) < wanted:
        cfg.max_msgs_per_subject = wanted
        await js.update_stream(cfg)


def _notes(r: Report) -> list[str]:
    nodes = r.environment.get("nats_nodes") or 1
    servers = "nats-server" if nodes == 1 else f"{nodes} nats-servers"
    notes = [f"all processes ({servers}, {r.environment.get('gateways', '?')} gateways, this client) share "
             f"{os.cpu_count()} CPU(s); "
             "the raw baseline has no TLS client, HTTP, validation, policy, crypto or state writes"]
    tp = r.throughput
    busy = [c.other_busy for c in (tp.cpu if tp else None, r.batch.cpu if r.batch else None,
                                   r.raw.cpu if r.raw else None)
            if c is not None and c.other_busy is not None]
    if busy and max(busy) >= 0.1:
        notes.append(f"other processes kept up to {max(busy):.0%} of the cores busy during the runs: "
                     "the figures are lower than this machine can do; run again when it is idle")
    for label, run in (("single", tp), ("batch", r.batch)):
        if run is None:
            continue
        if run.time_limited:
            notes.append(f"{label}: the time limit stopped the send phase after {run.attempted} of {run.requested}")
        if run.errors:
            notes.append(f"{label}: {run.errors} send(s) failed: {run.error_codes}; first: {run.first_error}")
        if run.undelivered:
            notes.append(f"{label}: {run.undelivered} accepted message(s) not delivered before the deadline")
        if run.failed:
            notes.append(f"{label}: {run.failed} message(s) failed after acceptance (quarantined, rejected or "
                         "expired)")
    if r.restart is not None and not r.restart.ready:
        notes.append(f"the sender's gateway ({r.restart.gateway}) did not come back after the runs: the devnet "
                     f"is not as it was; see its log ({r.restart.error})")
    lat = r.latency
    if lat is not None and (lat.psvn_delivered < lat.samples or lat.raw_consumed < lat.samples):
        notes.append(f"latency run incomplete: psvn {lat.psvn_delivered}/{lat.samples}, "
                     f"raw {lat.raw_consumed}/{lat.samples} (send failures or the time limit)")
    return notes


async def runs_async(layout: Any, opts: Options, *, progress: Progress | None = None, started: bool = False,
                     loop_name: str = "asyncio") -> Report:
    """:func:`run_async` ``opts.runs`` times against the same devnet; the last run's report, with
    each target over all of them (``over_runs``) and the runs that lost messages. The restart,
    the memory run and the local figures come once, in the last run (the restart and the memory
    run change the devnet; the local figures only take time), so the memory and restart targets
    are read on the last run alone."""
    opts.check()
    if opts.runs == 1:
        report = await run_async(layout, opts, progress=progress, started=started, loop_name=loop_name)
        report.incomplete_runs = [] if delivered(report) else [1]
        return report
    say = progress or (lambda _msg: None)
    reports: list[Report] = []
    for k in range(1, opts.runs + 1):
        last = k == opts.runs
        say(f"run {k} of {opts.runs} ...")
        once = dataclasses.replace(opts, runs=1, restart=opts.restart and last,
                                   memory_messages=opts.memory_messages if last else 0,
                                   local_seconds=opts.local_seconds if last else 0.0)
        reports.append(await run_async(layout, once, progress=progress, started=started, loop_name=loop_name))
    report = reports[-1]
    for earlier in reports[:-1]:  # RSS over the memory run and the restart: the last run's measures only
        for t in earlier.targets:
            if t.name in LAST_RUN_ONLY:
                t.measured, t.meets = None, None
    report.runs, report.over_runs = opts.runs, over_runs(reports)
    report.incomplete_runs = [k for k, r in enumerate(reports, 1) if not delivered(r)]
    report.seconds = round(sum(r.seconds for r in reports), 2)
    seen, notes = set(report.notes), []
    for k, r in enumerate(reports[:-1], 1):
        for note in r.notes:
            if note not in seen:
                seen.add(note)
                notes.append(f"run {k} of {opts.runs}: {note}")
    report.notes = notes + report.notes
    return report


def run(layout: Any, opts: Options, *, progress: Progress | None = None, started: bool = False) -> Report:
    """Synchronous entry point (uvloop when installed, like the gateways)."""
    opts.check()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(runs_async(layout, opts, progress=progress, started=started))
    return uvloop.run(runs_async(layout, opts, progress=progress, started=started, loop_name="uvloop"))


def run_with_temporary_devnet(opts: Options, *, progress: Progress | None = None, keep_dir: bool = False,
                              cluster: int = 1) -> Report:
    """Bring up a devnet in a temporary folder on free ports (``cluster`` nats-servers: 1, or 3
    with every stream and bucket R3), bench it, tear it down."""
    from psvn import devnet

    devnet.check_cluster(cluster)
    say = progress or (lambda _msg: None)
    root = Path(tempfile.mkdtemp(prefix="psvn-bench-"))
    layout = devnet.Layout(root)
    base = free_port_range(cluster=cluster)
    shape = "" if cluster == 1 else f", {cluster} nats-servers, R3"
    say(f"starting a temporary devnet in {root} (ports {base}..{base + port_span(cluster) - 1}{shape}) ...")
    try:
        devnet.up(layout, base_port=base, cluster=cluster)
        try:
            return run(layout, dataclasses.replace(opts, cleanup=False), progress=progress, started=True)
        finally:
            say("stopping the temporary devnet ...")
            devnet.down(layout)
    finally:
        if not keep_dir:
            shutil.rmtree(root, ignore_errors=True)


def progress_to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
