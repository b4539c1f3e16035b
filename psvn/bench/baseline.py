"""The baseline: the same payload size through plain nats-py JetStream on the same nats-server
(dedupe header, durable pull consumer, ``fetch`` + ack, like a gateway's), so ratios compare like
with like."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from typing import Any

from psvn.bench.process import CpuMeter
from psvn.bench.report import (
    Latency,
    RawThroughput,
    _rate,
    percentiles,
)
from psvn.bench.workload import Options


# -- raw nats-py baseline -------------------------------------------------------------------
async def raw_baseline(nc: Any, payload: bytes, count: int, lat: Latency, opts: Options,
                       cpu: CpuMeter, *, replicas: int = 1) -> RawThroughput:
    """Plain JetStream on the same server: a throwaway file stream on ``bench.raw.<tag>.>`` (a
    subject no gateway uses), dedupe ids like the gateway's, a durable pull consumer that
    fetches 256 and acks each like the gateway's. The stream is deleted afterwards. It has the
    devnet's ``replicas`` (3 on a clustered one): the baseline pays the same replication."""
    from nats.errors import Error as NatsError
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
                except NatsError:  # a consumer just made on a clustered backbone, its leader still being
                    await asyncio.sleep(0.1)  # elected ("no responders"): the runs are bounded, so try again
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
