"""``psvn bench`` against a real devnet (nats-server + gateway processes on free ports).

Asserts what the report says and that its counts add up (every message accounted for), never
how fast anything was: timings depend on the machine.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from psvn_client import AsyncClient, Client

from psvn import bench, devnet
from psvn.cli.main import main
from psvn.errors import PsvnError

COUNT = 12
SAMPLES = 3
CONCURRENCY = 4
BATCH_SIZE = 5  # several requests per batch run


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devnet.Layout]:
    lay = devnet.Layout(tmp_path_factory.mktemp("devnet"))
    devnet.up(lay, base_port=bench.free_port_range())
    try:
        yield lay
    finally:
        devnet.down(lay)


def client(layout: devnet.Layout, org: str) -> Client:
    state = devnet.read_state(layout)
    assert state is not None
    g = state.gateways[org]
    cert, key = layout.system_cert(org, g.system)
    return Client(g.url, ca=str(layout.ca), cert=str(cert), key=str(key))


async def bench_streams(layout: devnet.Layout) -> list[str]:
    state = devnet.read_state(layout)
    assert state is not None
    nc = await devnet.broker_connect(layout, state.nats_url, name="test")
    try:
        names = await nc.jetstream().streams_info()
        return [s.config.name for s in names if (s.config.name or "").startswith("PSVN_BENCH_")]
    finally:
        await nc.close()


def opts(**over: Any) -> bench.Options:
    base = {"count": COUNT, "concurrency": CONCURRENCY, "latency_samples": SAMPLES, "time_limit": 60.0,
            "delivery_timeout": 60.0, "local_seconds": 0.01, "batch_size": BATCH_SIZE}
    base.update(over)
    return bench.Options(**base)


def assert_complete(r: bench.Report, *, count: int = COUNT, samples: int = SAMPLES) -> None:
    """Every message is accounted for, in psvn and in the baseline."""
    tp, raw, lat = r.throughput, r.raw, r.latency
    assert tp is not None and raw is not None and lat is not None
    assert (tp.requested, tp.attempted, tp.accepted, tp.errors) == (count, count, count, 0)
    assert (tp.in_mailbox, tp.sender_delivered, tp.verified_delivered) == (count, count, count)
    assert (tp.failed, tp.undelivered, tp.time_limited) == (0, 0, False)
    assert tp.error_codes == {} and tp.first_error is None
    assert tp.send_call.n == tp.to_mailbox.n == tp.to_sender_delivered.n == count
    assert (raw.requested, raw.published, raw.acked, raw.consumed, raw.errors) == (count, count, count, count, 0)
    assert raw.publish_ack.n == raw.to_consumer.n == count
    assert (lat.samples, lat.psvn_delivered, lat.raw_consumed) == (samples, samples, samples)
    for p in (tp.send_call, tp.to_mailbox, raw.to_consumer, lat.psvn_to_mailbox, lat.raw_to_consumer):
        assert p.p50_ms is not None and p.p99_ms is not None and p.max_ms is not None
        assert 0 <= p.p50_ms <= p.p99_ms <= p.max_ms
    for rate in (tp.accept_per_s, tp.deliver_per_s, raw.publish_per_s, raw.consume_per_s):
        assert rate > 0
    bt = r.batch  # the same count through send_many, every one accounted for too
    assert bt is not None and r.batch_size == BATCH_SIZE
    assert (bt.requested, bt.attempted, bt.accepted, bt.errors) == (count, count, count, 0)
    assert (bt.in_mailbox, bt.sender_delivered, bt.verified_delivered) == (count, count, count)
    assert (bt.failed, bt.undelivered, bt.time_limited) == (0, 0, False)
    assert bt.to_mailbox.n == count and bt.accept_per_s > 0 and bt.deliver_per_s > 0
    ratios = msgspec.to_builtins(r.ratios)
    assert set(ratios) == {"accept_vs_publish", "delivery_vs_consume", "batch_accept_vs_publish",
                           "batch_delivery_vs_consume", "batch_vs_single_delivery", "latency_p50", "latency_p99"}
    assert all(v is not None and v > 0 for v in ratios.values())
    assert r.warmup == min(CONCURRENCY, count)
    assert r.payload_bytes > 900  # ~1 KiB of FHIR, not a toy payload


def test_bench_counts_add_up_and_leaves_nothing_behind(layout: devnet.Layout) -> None:
    seen: list[str] = []
    r = bench.run(layout, opts(), progress=seen.append)
    assert_complete(r)
    # the council -> trust path, with a real FHIR ServiceRequest
    assert (r.sender, r.recipient, r.payload_type) == ("gss:E06000043", "ods:RYR", "fhir.r4.ServiceRequest")
    assert r.environment["devnet"] == str(layout.root) and r.environment["temporary_devnet"] is False
    assert r.environment["nats_server"]
    # where the CPU went: one entry per process, the total their sum
    assert r.throughput is not None and r.throughput.cpu is not None
    per = r.throughput.cpu.ms_per_msg
    assert {"client", "nats-server", "gateway gss:E06000043", "gateway ods:RYR", "total"} <= per.keys()
    assert per["total"] == pytest.approx(sum(v for k, v in per.items() if k != "total"), abs=0.01)
    # local figures: sealing, validation and decisions, every one measured
    names = [f.name for f in r.local]
    assert names == ["gateway.seal", "policies.validation_bench.bench_validation",
                     "policies.engine_bench.bench_engine"]
    crypto = r.local[0]
    assert crypto.available and crypto.result["seal_sign_per_s"] > 0 and crypto.result["unseal_verify_per_s"] > 0
    assert crypto.result["sealed_bytes"] > crypto.result["payload_bytes"] == 1024
    validation, engine = r.local[1].result, r.local[2].result
    measured = {v["type"] for v in validation if v["validations_per_s"] > 0}
    assert {"fhir.r4.Patient", "fhir.r4.ServiceRequest", "hl7v2.ADT_A01"} <= measured
    assert all(v["valid"] for v in validation)  # the timed payloads are the valid ones
    assert engine["decisions_per_s"] > 0 and engine["cold_decisions_per_s"] > 0 and engine["rules"] > 0
    # progress went to the callback, not stdout
    assert any(s.startswith("throughput:") for s in seen) and any(s.startswith("baseline:") for s in seen)
    # clean-up acknowledged every bench message: the trust's inbox is as it was
    assert r.cleanup_acknowledged == r.warmup + SAMPLES + 2 * COUNT  # single and batch runs
    with client(layout, bench.TRUST) as trust:
        assert trust.inbox() == []
    # the throwaway baseline stream is gone
    assert asyncio.run(bench_streams(layout)) == []
    # both renderings carry the figures
    doc = json.loads(bench.to_json(r))
    assert doc["throughput"]["accepted"] == COUNT and doc["raw"]["consumed"] == COUNT
    text = bench.format_report(r)
    assert doc["batch"]["accepted"] == COUNT
    for needle in ("msg/s", "psvn/raw", "batch/raw", "CPU ms/message, batch", "batch / single send",
                   "p50", "p99", "seal + sign (1,024 B)", f"{COUNT}/{COUNT} accepted",
                   f"{COUNT} in the mailbox", f"{COUNT} confirmed through the SDK"):
        assert needle in text


def test_cli_json_and_keep(layout: devnet.Layout, capsys: pytest.CaptureFixture[str]) -> None:
    with client(layout, bench.TRUST) as trust:
        before = {i.id for i in trust.inbox(limit=1000)}
    code = main(["bench", "--devnet", str(layout.root), "--count", "6", "--concurrency", "2", "--latency-samples",
                 "1", "--local-seconds", "0", "--keep", "--json", "--batch-size", "4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)  # stdout is only the JSON; progress is on stderr
    assert "throughput:" in err
    assert doc["throughput"]["accepted"] == doc["throughput"]["in_mailbox"] == 6
    assert doc["raw"]["consumed"] == 6 and doc["local"] == [] and doc["cleanup_acknowledged"] is None
    assert doc["batch"]["accepted"] == doc["batch"]["in_mailbox"] == 6 and doc["batch_size"] == 4
    # --keep: the bench's messages wait in the trust's inbox (warm-up 2 + latency 1 + 6 + 6 batched)
    with client(layout, bench.TRUST) as trust:
        left = [i for i in trust.inbox(limit=1000) if i.id not in before]
        assert len(left) == 15
        for item in left:
            trust.ack(item.id)


def test_cli_without_a_devnet_says_how_to_start_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--devnet", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 1
    assert "no devnet running" in err and "psvn devnet" in err and "--start" in err


@pytest.mark.parametrize("args", [["--count", "0"], ["--concurrency", "0"], ["--time-limit", "0"],
                                  ["--batch-size", "0"]])
def test_cli_rejects_bad_bounds(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--devnet", str(tmp_path), *args]) == 1
    assert "error bad-request" in capsys.readouterr().err


def test_a_devnet_without_the_trust_is_refused(tmp_path: Path) -> None:
    lay = devnet.Layout(tmp_path)
    members = tuple(m for m in devnet.EXAMPLE_MEMBERS if m.org != bench.TRUST)
    devnet.up(lay, members, base_port=bench.free_port_range())
    try:
        with pytest.raises(PsvnError) as err:
            bench.run(lay, opts())
        assert err.value.field == "--devnet" and "ods:RYR" in err.value.detail
    finally:
        devnet.down(lay)


def test_failing_sends_are_counted_and_stop_the_run_early(layout: devnet.Layout) -> None:
    """A payload the gateway rejects (no ServiceRequest.status, 1..1): every send fails, each is
    counted under its problem code, and the phase gives up instead of sending all of them."""
    bad = bench.service_request(0)
    del bad["status"]
    state = devnet.read_state(layout)
    assert state is not None
    g = state.gateways[bench.COUNCIL]
    cert, key = layout.system_cert(bench.COUNCIL, g.system)

    async def go() -> bench._Sent:
        async with AsyncClient(g.url, ca=str(layout.ca), cert=str(cert), key=str(key)) as c:
            return await bench._send_many(c, [bad] * 200, concurrency=2, time_limit=60, tag="bad")

    sent = asyncio.run(go())
    assert sent.times == []
    assert sent.errors == {"invalid-payload": sent.attempted}
    assert 10 <= sent.attempted < 200
    assert sent.first_error is not None and sent.first_error.startswith("invalid-payload")


def test_temporary_devnet_is_torn_down() -> None:
    r = bench.run_with_temporary_devnet(opts(count=4, latency_samples=1, local_seconds=0))
    assert_complete(r, count=4, samples=1)
    assert r.environment["temporary_devnet"] is True and r.cleanup_acknowledged is None
    assert not Path(r.environment["devnet"]).exists()
    port = int(r.environment["nats_url"].rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_percentiles_are_nearest_rank() -> None:
    p = bench.percentiles([i / 1000 for i in range(100, 0, -1)])  # 1..100 ms, unsorted
    assert (p.n, p.p50_ms, p.p99_ms, p.max_ms) == (100, 50.0, 99.0, 100.0)
    assert bench.percentiles([0.002]) == bench.Percentiles(n=1, p50_ms=2.0, p99_ms=2.0, max_ms=2.0)
    assert bench.percentiles([]) == bench.Percentiles()


def test_payloads_are_distinct_and_about_a_kibibyte() -> None:
    a, b = bench.service_request(1, "t"), bench.service_request(2, "t")
    assert a != b and a["resourceType"] == "ServiceRequest" and a["status"] == "active"
    assert 900 < bench.payload_size(a) < 1300


def test_free_port_range_is_free() -> None:
    base = bench.free_port_range()
    assert bench.port_span() >= 13  # nats, monitoring, then gateways from +10
    for p in range(base, base + bench.port_span()):
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_each_worker_sends_through_its_own_client(layout: devnet.Layout) -> None:
    """Given one SDK client per worker, worker k uses client k only (one connection each: httpx
    pays per pooled connection on every request), and every send is accepted."""
    state = devnet.read_state(layout)
    assert state is not None
    g = state.gateways[bench.COUNCIL]
    cert, key = layout.system_cert(bench.COUNCIL, g.system)

    class Counting:
        def __init__(self, real: AsyncClient) -> None:
            self.real, self.sent = real, 0

        async def send(self, *args: Any, **kwargs: Any) -> Any:
            self.sent += 1
            return await self.real.send(*args, **kwargs)

    async def go() -> tuple[bench._Sent, list[int]]:
        clients = [AsyncClient(g.url, ca=str(layout.ca), cert=str(cert), key=str(key), max_connections=1)
                   for _ in range(3)]
        try:
            counting = [Counting(c) for c in clients]
            sent = await bench._send_many(counting, [bench.service_request(i) for i in range(9)], concurrency=3,
                                          time_limit=60, tag="own-client")
            return sent, [c.sent for c in counting]
        finally:
            for c in clients:
                await c.close()

    sent, per_client = asyncio.run(go())
    assert len(sent.times) == 9 and not sent.errors
    assert sum(per_client) == 9 and all(n >= 1 for n in per_client)
