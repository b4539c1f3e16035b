"""The psvn paths measured: many in flight through the SDK (throughput), the batch path
(``send_many``), and one message at a time (latency); then every status read back and every
letter acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from psvn.bench.observe import DeliveryObserver
from psvn.bench.process import CpuMeter, memory_mib
from psvn.bench.report import (
    CLASSIFICATION,
    MESSAGE_TYPE,
    PURPOSE,
    TRUST,
    Latency,
    MemoryRun,
    Throughput,
    _rate,
    percentiles,
)
from psvn.bench.workload import Options, service_request, subject_of
from psvn.core.tasks import together


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
                                        classification=CLASSIFICATION, subject=subject_of(payloads[i]),
                                        correlation_id=f"{tag}-{i}")
            except psvn_client.PsvnError as exc:
                out.errors[str(exc.code)] += 1
                out.first_error = out.first_error or f"{exc.code}: {exc}"
                continue
            out.times.append((res.id, t0, time.perf_counter()))

    # one at a time (the latency run): sent from the caller's task, so the measured time holds
    # no task of gather's starting a loop turn later
    await together([worker(clients[k % len(clients)]) for k in range(min(concurrency, len(payloads)))])
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
                         subject=subject_of(p), correlation_id=f"{tag}-{start + i}")
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


async def memory_run(sender: Any, receivers: list[Any], obs: DeliveryObserver, opts: Options, tag: str,
                     pids: dict[str, int]) -> MemoryRun:
    """A first round that fills the gateways' bounded caches, then ``opts.memory_messages``
    through ``send_many`` in ten rounds (each at least one batch); after every round the
    recipient's systems acknowledge what it delivered, then each process in ``pids`` has its
    VmRSS read. Memory over history then, not over open work."""
    size = max(opts.batch_size, -(-opts.memory_messages // 10))
    out = MemoryRun(round_size=size, start={name: memory_mib(pid)[0] for name, pid in pids.items()})
    done, total = 0, size + opts.memory_messages  # the first round is not counted
    while done < total:
        n = min(size, total - done)
        payloads = [service_request(2_000_000 + done + i, tag) for i in range(n)]
        patience = opts.delivery_timeout + n / 100  # a round's sends, delivery and acks may take a while
        sent = await _send_batches(sender, payloads, batch_size=opts.batch_size,
                                   time_limit=max(opts.time_limit, patience), tag=f"{tag}-{done}")
        ids = [m for m, _, _ in sent.times]
        out.first_error = out.first_error or sent.first_error
        await obs.wait_all(ids, patience)
        acked = await _ack_all(receivers, [m for m in ids if m in obs.mailbox], len(receivers), patience)
        if done:
            out.messages += acked
        out.errors += n - acked
        out.after.append({name: memory_mib(pid)[0] for name, pid in pids.items()})
        done += n
        if not ids:
            break  # nothing goes through: the report says so (errors)
    return out
