"""``psvn bench``: end-to-end throughput and latency through a running devnet, against the raw
nats-py JetStream baseline on the same server, plus local (one-core) figures.

What is measured, and why this way:

* **psvn end to end**: the council's local system sends a ~1 KiB FHIR R4 ServiceRequest to the NHS
  trust through the SDK (``concurrency`` requests in flight, each through its own ``AsyncClient``
  and reused TLS connection) -> council gateway (validate, decide, sign, seal, publish) ->
  JetStream -> trust gateway (open, verify, re-decide, file in the mailbox) -> signed receipt ->
  council status ``delivered``. Delivery is observed on the backbone, not by polling the gateways:
  the bench subscribes (as the broker) to the two gateways' state-bucket updates, so every message
  gets an exact "in the trust's mailbox" and "sender sees delivered" time and the gateways serve
  no extra requests while being measured. Afterwards every message's status is read back through
  the SDK, so the delivered count is also what a local system would see.
* **Baseline**: the same payload size published with plain nats-py to a throwaway JetStream
  stream (same storage, dedupe header, durable pull consumer with ``fetch(256)`` + ack, like the
  gateway's) on the same nats-server, same count. ``ratio = psvn / raw``.
* Each side is measured twice: a throughput run (everything in flight, so its latencies include
  queueing) and a latency run (one message at a time: the pipeline's own delay).
* The batch path: the same count again through ``send_many`` (``POST /v1/messages:batch``).
* What it cost the processes (``process``, from Linux ``/proc``): CPU ms per message per process
  for each run; each gateway's RSS after the warm-up and after the runs; then, last, the sender's
  gateway stopped and started again as the devnet starts it, timed until ``/readyz`` answers 200
  (the devnet is left running, its state naming the new PID).
* Issue 9's targets beside the figures (``report.assess``): information, never pass/fail.
* Local figures (one core, no network): seal+sign and unseal+verify of 1 KiB, and, when those
  modules exist, ``policies.validation_bench`` and ``policies.engine_bench``.

Bounded in count and time: a time limit stops the send phase, and each wait has a deadline.
The parts: ``report`` (the report's structs, the targets and the human table), ``process``
(CPU, memory, restart); this module runs the measurements and re-exports both.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from psvn.bench.process import CpuMeter, MemoryMeter, cpu_seconds, machine_busy_seconds, memory_mib, restart_gateway
from psvn.bench.report import (
    CLASSIFICATION,
    COUNCIL,
    MESSAGE_TYPE,
    NHS_NUMBER,
    PURPOSE,
    TRUST,
    CpuUse,
    Latency,
    LocalFigure,
    Memory,
    Percentiles,
    Ratios,
    RawThroughput,
    Report,
    Restart,
    Target,
    Throughput,
    _rate,
    _ratio,
    assess,
    format_report,
    percentiles,
    to_json,
)
from psvn.core import procs
from psvn.core.errors import Code, PsvnError

__all__ = [
    "CLASSIFICATION",
    "COUNCIL",
    "MESSAGE_TYPE",
    "NHS_NUMBER",
    "PURPOSE",
    "TRUST",
    "CpuMeter",
    "CpuUse",
    "DeliveryObserver",
    "Latency",
    "LocalFigure",
    "Memory",
    "MemoryMeter",
    "Options",
    "Percentiles",
    "Ratios",
    "RawThroughput",
    "Report",
    "Restart",
    "Target",
    "Throughput",
    "assess",
    "cpu_seconds",
    "format_report",
    "free_port_range",
    "machine_busy_seconds",
    "memory_mib",
    "payload_size",
    "percentiles",
    "port_span",
    "progress_to_stderr",
    "restart_gateway",
    "run",
    "run_async",
    "run_with_temporary_devnet",
    "service_request",
    "to_json",
]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    count: int = 2000
    concurrency: int = 8  # the README's figures; more in flight share more backbone writes (16: ~20% more msg/s)
    latency_samples: int = 100
    time_limit: float = 20.0  # seconds for each send phase; then wait for what was accepted
    delivery_timeout: float = 20.0
    local_seconds: float = 1.0  # per local figure; 0 skips them
    cleanup: bool = True  # acknowledge the bench's messages in the trust's inbox afterwards
    batch_size: int = 500  # messages per POST /v1/messages:batch in the batch run (the gateway's maximum)
    restart: bool = True  # restart the sender's gateway after the runs, timed to /readyz 200
    restart_timeout: float = 60.0

    def check(self) -> None:
        for name, value, low in (("count", self.count, 1), ("concurrency", self.concurrency, 1),
                                 ("latency-samples", self.latency_samples, 0), ("batch-size", self.batch_size, 1)):
            if value < low:
                raise PsvnError(Code.BAD_REQUEST, f"--{name} must be at least {low}", field=f"--{name}",
                                rule="range")
        if self.time_limit <= 0 or self.delivery_timeout <= 0 or self.local_seconds < 0:
            raise PsvnError(Code.BAD_REQUEST, "time limits must be positive", field="--time-limit", rule="range")


def service_request(seq: int, run: str = "bench") -> dict[str, Any]:
    """A realistic council -> trust referral (FHIR R4 ServiceRequest, UK Core profile), ~1 KiB as
    compact JSON; ``seq`` makes each one distinct, as real traffic is."""
    return {
        "resourceType": "ServiceRequest",
        "id": f"asc-referral-{seq:06d}",
        "meta": {"profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-ServiceRequest"]},
        "identifier": [{"system": "https://www.brighton-hove.gov.uk/Id/asc-referral",
                        "value": f"ASC-{run}-{seq:06d}"}],
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "306206005",
                                  "display": "Referral to service"}]}],
        "priority": "urgent",
        "code": {"text": "Falls and mobility assessment"},
        "subject": {"reference": f"Patient/{NHS_NUMBER}",
                    "identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS_NUMBER},
                    "display": "John SMITH"},
        "authoredOn": "2024-05-13T10:15:00+01:00",
        "requester": {"type": "Organization", "display": "Brighton and Hove City Council - Adult Social Care"},
        "performer": [{"type": "Organization",
                       "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RYR"},
                       "display": "University Hospitals Sussex NHS Foundation Trust"}],
        "reasonCode": [{"text": "Two falls at home in the last month"}],
        "note": [{"text": "Lives alone, first-floor flat. Carers twice daily."}],
    }


def payload_size(payload: dict[str, Any]) -> int:
    return len(msgspec.json.encode(payload))


def port_span(cluster: int = 1) -> int:
    """How many consecutive ports ``devnet.up`` uses (nats, monitoring, console, gateways, and
    the other nodes of a clustered backbone)."""
    from psvn import devnet

    return devnet.port_span(len(devnet.DEVNET_MEMBERS), cluster)


def free_port_range(span: int | None = None, *, low: int = 20000, high: int = 30000, tries: int = 200,
                    cluster: int = 1) -> int:
    """A base port with ``span`` (default: a devnet's of this shape) consecutive free loopback ports."""
    return procs.free_port_range(span or port_span(cluster), low=low, high=high, tries=tries)


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
        self.changed = asyncio.Event()
        self._subs: list[Any] = []

    async def start(self, recipient_nc: Any, sender_nc: Any) -> None:
        """``recipient_nc``/``sender_nc``: connections as each member's own backbone user (its
        state bucket lives in its own account, out of the broker's sight)."""
        self._subs = [await recipient_nc.subscribe(self.in_prefix + ">", cb=self._on_in),
                      await sender_nc.subscribe(self.out_prefix + ">", cb=self._on_out)]
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

    async def _on_in(self, msg: Any) -> None:
        now = time.perf_counter()
        mid = msg.subject[len(self.in_prefix):]
        st = self._status(msg.data)
        if st in _DELIVERED:
            self.mailbox.setdefault(mid, now)
        elif st in _FAILED:
            self.failed.setdefault(mid, f"trust: {st}")
        self.changed.set()

    async def _on_out(self, msg: Any) -> None:
        now = time.perf_counter()
        mid = msg.subject[len(self.out_prefix):]
        st = self._status(msg.data)
        if st in _DELIVERED:
            self.sender_delivered.setdefault(mid, now)
        elif st in _FAILED:
            self.failed.setdefault(mid, f"sender: {st}")
        self.changed.set()

    def done(self, mid: str) -> bool:
        return mid in self.failed or (mid in self.mailbox and mid in self.sender_delivered)

    async def wait_all(self, ids: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        pending = [m for m in ids if not self.done(m)]
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.05))
            pending = [m for m in pending if not self.done(m)]
        return True


# -- psvn end to end -----------------------------------------------------------------------
@dataclass
class _Sent:
    times: list[tuple[str, float, float]] = field(default_factory=list)  # (id, start, end)
    errors: Counter[str] = field(default_factory=Counter)
    first_error: str | None = None
    attempted: int = 0
    time_limited: bool = False


def _clients(client: Any) -> list[Any]:
    """One SDK client per worker (a list), or one shared by all of them."""
    return list(client) if isinstance(client, list | tuple) else [client]


async def _send_many(client: Any, payloads: list[dict[str, Any]], *, concurrency: int, time_limit: float,
                     tag: str) -> _Sent:
    """``concurrency`` workers; worker k sends through ``client[k]`` when given one client each."""
    import psvn_client

    clients = _clients(client)
    out = _Sent()
    counter: Iterator[int] = iter(range(len(payloads)))
    deadline = time.perf_counter() + time_limit

    async def worker(c: Any) -> None:
        for i in counter:
            if time.perf_counter() > deadline:
                out.time_limited = True
                return
            if out.errors.total() >= 10 and not out.times:
                return  # everything is failing: the report says why
            out.attempted += 1
            t0 = time.perf_counter()
            try:
                res = await c.send(TRUST, MESSAGE_TYPE, payloads[i], purpose=PURPOSE,
                                        classification=CLASSIFICATION, subject=f"nhs:{NHS_NUMBER}",
                                        correlation_id=f"{tag}-{i}")
            except psvn_client.PsvnError as exc:
                out.errors[str(exc.code)] += 1
                out.first_error = out.first_error or f"{exc.code}: {exc}"
                continue
            out.times.append((res.id, t0, time.perf_counter()))

    await asyncio.gather(*(worker(clients[k % len(clients)]) for k in range(min(concurrency, len(payloads)))))
    return out


async def _verify(client: Any, ids: list[str], concurrency: int, timeout: float) -> int:
    """Read each status back through the SDK, the way a local system would. ``wait_for_status``,
    not one ``status``: the backbone shows the gateway's state write a moment before the gateway
    has applied it to the view it answers from."""
    import psvn_client

    clients = _clients(client)
    ok = 0
    it = iter(ids)
    deadline = time.monotonic() + timeout

    async def worker(c: Any) -> None:
        nonlocal ok
        for mid in it:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(psvn_client.PsvnError):
                await c.wait_for_status(mid, "delivered", timeout=min(left, 5.0))
                ok += 1

    await asyncio.gather(*(worker(clients[k % len(clients)]) for k in range(min(concurrency, max(1, len(ids))))))
    return ok


async def _ack_all(client: Any, ids: list[str], concurrency: int, timeout: float) -> int:
    import psvn_client

    clients = _clients(client)
    done = 0
    it = iter(ids)
    deadline = time.monotonic() + timeout

    async def worker(c: Any) -> None:
        nonlocal done
        for mid in it:
            if time.monotonic() > deadline:
                return
            with contextlib.suppress(psvn_client.PsvnError):
                await c.ack(mid)
                done += 1

    await asyncio.gather(*(worker(clients[k % len(clients)]) for k in range(min(concurrency, max(1, len(ids))))))
    return done


async def psvn_throughput(sender: Any, obs: DeliveryObserver, payloads: list[dict[str, Any]], opts: Options,
                          tag: str, cpu: CpuMeter, *, batch: bool = False) -> tuple[Throughput, list[str]]:
    """Send everything (``concurrency`` single sends in flight, or with ``batch`` through
    ``send_many`` in requests of ``batch_size``); wait for delivery; read statuses back."""
    res = Throughput(requested=len(payloads))
    cpu.start()
    t_start = time.perf_counter()
    if batch:
        sent = await _send_batches(_clients(sender)[0], payloads, batch_size=opts.batch_size,
                                   time_limit=opts.time_limit, tag=tag)
    else:
        sent = await _send_many(sender, payloads, concurrency=opts.concurrency, time_limit=opts.time_limit,
                                tag=tag)
    ids = [mid for mid, _, _ in sent.times]
    await obs.wait_all(ids, opts.delivery_timeout)
    res.cpu = cpu.stop(len(ids))
    res.attempted, res.accepted, res.time_limited = sent.attempted, len(ids), sent.time_limited
    res.errors, res.error_codes, res.first_error = sent.errors.total(), dict(sent.errors), sent.first_error
    in_box = [obs.mailbox[m] for m in ids if m in obs.mailbox]
    at_sender = [obs.sender_delivered[m] for m in ids if m in obs.sender_delivered]
    res.in_mailbox, res.sender_delivered = len(in_box), len(at_sender)
    res.failed = sum(1 for m in ids if m in obs.failed)
    res.undelivered = sum(1 for m in ids if not obs.done(m))
    if sent.times:
        last_accept = max(t1 for _, _, t1 in sent.times)
        res.accept_per_s = _rate(len(ids), last_accept - t_start)
        res.seconds = round(max([last_accept, *in_box, *at_sender]) - t_start, 3)
    if in_box:
        res.deliver_per_s = _rate(len(in_box), max(in_box) - t_start)
    if at_sender:
        res.sender_delivered_per_s = _rate(len(at_sender), max(at_sender) - t_start)
    res.send_call = percentiles([t1 - t0 for _, t0, t1 in sent.times])
    res.to_mailbox = percentiles([obs.mailbox[m] - t0 for m, t0, _ in sent.times if m in obs.mailbox])
    res.to_sender_delivered = percentiles(
        [obs.sender_delivered[m] - t0 for m, t0, _ in sent.times if m in obs.sender_delivered])
    res.verified_delivered = await _verify(sender, ids, opts.concurrency, opts.delivery_timeout)
    return res, ids


async def _send_batches(client: Any, payloads: list[dict[str, Any]], *, batch_size: int, time_limit: float,
                        tag: str) -> _Sent:
    """The batch path as a local system would use it: ``send_many`` with one request of
    ``batch_size`` messages at a time (each item's time is its request's)."""
    from psvn_client import Message

    out = _Sent()
    deadline = time.perf_counter() + time_limit
    for start in range(0, len(payloads), batch_size):
        if time.perf_counter() > deadline:
            out.time_limited = True
            break
        chunk = [Message(to=TRUST, type=MESSAGE_TYPE, payload=p, purpose=PURPOSE, classification=CLASSIFICATION,
                         subject=f"nhs:{NHS_NUMBER}", correlation_id=f"{tag}-{start + i}")
                 for i, p in enumerate(payloads[start:start + batch_size])]
        out.attempted += len(chunk)
        t0 = time.perf_counter()
        results = await client.send_many(chunk, batch_size=batch_size)
        t1 = time.perf_counter()
        for r in results:
            if r.result is not None:
                out.times.append((r.result.id, t0, t1))
            else:
                out.errors[str(r.error.code)] += 1
                out.first_error = out.first_error or f"{r.error.code}: {r.error}"
        if out.errors.total() >= 10 and not out.times:
            break  # everything is failing: the report says why
    return out


async def psvn_latency(sender: Any, obs: DeliveryObserver, payloads: list[dict[str, Any]], lat: Latency,
                       opts: Options, tag: str, cpu: CpuMeter | None = None) -> list[str]:
    """One message at a time: send, wait until the sender sees it delivered, next."""
    if cpu is not None:
        cpu.start()
    calls: list[float] = []
    box: list[float] = []
    st: list[float] = []
    ids: list[str] = []
    deadline = time.monotonic() + opts.time_limit
    for i, p in enumerate(payloads):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        sent = await _send_many(sender, [p], concurrency=1, time_limit=opts.time_limit, tag=f"{tag}-{i}")
        if not sent.times:
            continue
        mid, _, t1 = sent.times[0]
        ids.append(mid)
        calls.append(t1 - t0)
        await obs.wait_all([mid], min(opts.delivery_timeout, max(1.0, deadline - time.monotonic())))
        if mid in obs.mailbox:
            box.append(obs.mailbox[mid] - t0)
        if mid in obs.sender_delivered:
            st.append(obs.sender_delivered[mid] - t0)
    lat.psvn_delivered = len(box)
    if cpu is not None:
        lat.psvn_cpu = cpu.stop(len(ids))
    lat.psvn_send_call, lat.psvn_to_mailbox, lat.psvn_to_sender_delivered = (
        percentiles(calls), percentiles(box), percentiles(st))
    return ids


# -- raw nats-py baseline -------------------------------------------------------------------
async def raw_baseline(nc: Any, payload: bytes, count: int, lat: Latency, opts: Options,
                       cpu: CpuMeter, *, replicas: int = 1) -> RawThroughput:
    """Plain JetStream on the same server: a throwaway file stream on ``bench.raw.<tag>.>`` (a
    subject no gateway uses), dedupe ids like the gateway's, a durable pull consumer that
    fetches 256 and acks each like the gateway's. The stream is deleted afterwards. It has the
    devnet's ``replicas`` (3 on a clustered one): the baseline pays the same replication."""
    from nats.errors import TimeoutError as NatsTimeoutError
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig

    js = nc.jetstream()
    tag = secrets.token_hex(4)
    stream, subject = f"PSVN_BENCH_{tag.upper()}", f"bench.raw.{tag}.m"
    await js.add_stream(StreamConfig(name=stream, subjects=[f"bench.raw.{tag}.>"], retention=RetentionPolicy.LIMITS,
                                     storage=StorageType.FILE, num_replicas=replicas, max_age=600.0,
                                     duplicate_window=120.0))
    res = RawThroughput(requested=count)
    consumed: dict[int, float] = {}
    arrived = asyncio.Event()
    consumer: asyncio.Task[None] | None = None
    try:
        await js.add_consumer(stream, ConsumerConfig(durable_name="bench", ack_policy=AckPolicy.EXPLICIT,
                                                     deliver_policy=DeliverPolicy.ALL, ack_wait=30.0,
                                                     max_ack_pending=10000))
        psub = await js.pull_subscribe_bind("bench", stream=stream)

        async def consume() -> None:
            while True:
                try:
                    msgs = await psub.fetch(256, timeout=1)
                except (TimeoutError, NatsTimeoutError):
                    continue
                for m in msgs:
                    consumed.setdefault(m.metadata.sequence.stream, time.perf_counter())
                    await m.ack()
                arrived.set()

        consumer = asyncio.create_task(consume(), name="bench raw consumer")
        run = secrets.token_hex(4)

        # latency: one at a time
        pubs: list[float] = []
        to_cons: list[float] = []
        phase_end = time.monotonic() + opts.time_limit
        for k in range(lat.samples):
            if time.monotonic() > phase_end:
                break
            t0 = time.perf_counter()
            ack = await js.publish(subject, payload, headers={"Nats-Msg-Id": f"lat-{run}-{k}"}, timeout=5)
            pubs.append(time.perf_counter() - t0)
            deadline = time.monotonic() + min(opts.delivery_timeout, max(1.0, phase_end - time.monotonic()))
            while ack.seq not in consumed and time.monotonic() < deadline:
                arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), 0.05)
            if ack.seq in consumed:
                to_cons.append(consumed[ack.seq] - t0)
        lat.raw_consumed = len(to_cons)
        lat.raw_publish_ack, lat.raw_to_consumer = percentiles(pubs), percentiles(to_cons)

        # throughput: everything in flight (publish_async without wait_stall: see FIELD-NOTES)
        t_pub: list[float] = []
        acked: dict[int, tuple[int, float]] = {}  # index -> (stream seq, ack time)

        def on_ack(i: int, fut: asyncio.Future[Any]) -> None:
            now = time.perf_counter()
            if fut.cancelled() or fut.exception() is not None:
                res.errors += 1
                res.first_error = res.first_error or repr(fut.exception())
                return
            acked[i] = (fut.result().seq, now)

        cpu.start()
        t_start = time.perf_counter()
        deadline_pub = t_start + opts.time_limit
        for i in range(count):
            if i % 256 == 0 and time.perf_counter() > deadline_pub:
                res.time_limited = True
                break
            t_pub.append(time.perf_counter())
            fut = await js.publish_async(subject, payload, headers={"Nats-Msg-Id": f"tp-{run}-{i}"})
            fut.add_done_callback(lambda f, i=i: on_ack(i, f))
        res.published = len(t_pub)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(js.publish_async_completed(), opts.delivery_timeout)
        res.acked = len(acked)
        seqs = {seq for seq, _ in acked.values()}
        deadline = time.monotonic() + opts.delivery_timeout
        while not seqs <= consumed.keys() and time.monotonic() < deadline:
            arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), 0.05)
        got = [(i, consumed[seq]) for i, (seq, _) in acked.items() if seq in consumed]
        res.consumed = len(got)
        res.cpu = cpu.stop(len(got))
        if acked:
            last_ack = max(t for _, t in acked.values())
            res.publish_per_s = _rate(len(acked), last_ack - t_start)
            res.seconds = round(max([last_ack, *(t for _, t in got)]) - t_start, 3)
        if got:
            res.consume_per_s = _rate(len(got), max(t for _, t in got) - t_start)
        res.publish_ack = percentiles([t - t_pub[i] for i, (_, t) in acked.items()])
        res.to_consumer = percentiles([t - t_pub[i] for i, t in got])
        return res
    finally:
        if consumer is not None:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await consumer
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)


# -- local figures (no network) ---------------------------------------------------------------
def _timed(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (at least 50 calls)."""
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(50):
            fn()
        n += 50
        now = time.perf_counter()
        if now >= end:
            return round(n / (now - t0), 1)


def bench_crypto(seconds: float = 1.0, size: int = 1024) -> dict[str, float]:
    """gateway/seal.py on ``size`` bytes with a realistic envelope: what each gateway pays per
    message on send (sign then seal) and on receive (open then verify), on one core."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from psvn.protocol import seal
    from psvn.protocol.envelope import Envelope, new_message_id, now_rfc3339
    signer, recipient = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    verify_key, recipient_pub = signer.public_key(), recipient.public_key()
    env = Envelope(id=new_message_id(), source=f"{COUNCIL}/adult-social-care", to=TRUST, type=MESSAGE_TYPE,
                   time=now_rfc3339(), purpose=PURPOSE, classification=CLASSIFICATION, subject=f"nhs:{NHS_NUMBER}",
                   source_system="adult-social-care", policy_version=1)
    header, payload = msgspec.json.encode(env), os.urandom(size)
    info = seal.info_for(COUNCIL, TRUST, env.id)
    sealed = seal.seal(seal.KIND_MESSAGE, header, payload, signing_key=signer, recipient_key=recipient_pub, info=info)

    def open_verify() -> None:
        seal.verify(seal.unseal(sealed, private_key=recipient, info=info), verify_key)

    open_verify()  # a broken round trip must fail loudly, not be timed
    return {
        "seal_sign_per_s": _timed(lambda: seal.seal(seal.KIND_MESSAGE, header, payload, signing_key=signer,
                                                    recipient_key=recipient_pub, info=info), seconds),
        "unseal_verify_per_s": _timed(open_verify, seconds),
        "payload_bytes": size,
        "sealed_bytes": len(sealed),
    }


def _builtins(value: Any) -> Any:
    try:
        return msgspec.to_builtins(value)
    except TypeError:
        return repr(value)


def local_figures(seconds: float) -> list[LocalFigure]:
    """Sealing, validation and policy decisions on one core. A failure here fails the bench."""
    from psvn.policies.engine_bench import bench_engine
    from psvn.policies.validation_bench import bench_validation

    return [LocalFigure(name="gateway.seal", available=True, result=bench_crypto(seconds)),
            LocalFigure(name="policies.validation_bench.bench_validation", available=True,
                        result=_builtins(bench_validation(seconds=seconds, xml=True))),
            LocalFigure(name="policies.engine_bench.bench_engine", available=True,
                        result=_builtins(bench_engine(seconds=seconds)))]


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
                ids = await psvn_latency(sender, obs, lat_payloads, lat, opts, f"{tag}-l", CpuMeter(pids))
                all_ids += ids
                through += len(ids)
            say(f"throughput: {opts.count} messages, {opts.concurrency} in flight ...")
            report.throughput, ids = await psvn_throughput(sender, obs, payloads, opts, f"{tag}-t", CpuMeter(pids))
            all_ids += ids
            through += len(ids)
            say(f"batch: {opts.count} messages through send_many, {opts.batch_size} per request ...")
            report.batch_size = opts.batch_size
            batch_payloads = [service_request(1_000_000 + i, tag) for i in range(opts.count)]
            report.batch, ids = await psvn_throughput(sender, obs, batch_payloads, opts, f"{tag}-b", CpuMeter(pids),
                                                      batch=True)
            all_ids += ids
            through += len(ids)
            report.memory = memory.stop({f"gateway {COUNCIL}": through, f"gateway {TRUST}": through})
        say(f"baseline: raw nats-py JetStream, {opts.count} messages of {report.payload_bytes} bytes ...")
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


def run(layout: Any, opts: Options, *, progress: Progress | None = None, started: bool = False) -> Report:
    """Synchronous entry point (uvloop when installed, like the gateways)."""
    opts.check()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_async(layout, opts, progress=progress, started=started))
    return uvloop.run(run_async(layout, opts, progress=progress, started=started, loop_name="uvloop"))


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
