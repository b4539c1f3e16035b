"""`psvn devnet up --cluster 3`: the devnet on three real nats-servers (R3), driven through the
CLI as real processes, losing a node to ``kill -9`` and still delivering.

One test on purpose: a clustered devnet takes ~15 s to come up on two cores, and every step
below needs it running. Waits poll a condition with a deadline; no sleep proves anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from psvn import devnet
from psvn.core import procs
from psvn.protocol.subjects import inbox_stream, state_bucket
from tests.devnet.test_devnet_cli import run

COUNCIL, TRUST = "gss:E06000043", "ods:RYR"
SEND = ["--as", COUNCIL, "--to", TRUST, "--type", "fhir.r4.ServiceRequest", "--purpose", "direct-care",
        "--classification", "OFFICIAL-SENSITIVE", "--subject", "nhs:9434765919", "examples/referral.json"]
T = TypeVar("T")


def wait_for(check: Callable[[], T], *, timeout: float, what: str, every: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached after {timeout}s (last: {result!r})")
        time.sleep(every)


def in_inbox(d: list[str], mid: str) -> Callable[[], bool]:
    return lambda: mid in {m["id"] for m in json.loads(run("inbox", "list", *d, "--as", TRUST, "--json").stdout)}


async def replication(layout: devnet.Layout, urls: list[str]) -> dict[str, tuple[int, str | None, list[bool]]]:
    """(configured replicas, leader, peers' current flags) of the trust's inbox stream (network
    account, as the broker) and of the trust's own state bucket (its account, as the member)."""
    out: dict[str, tuple[int, str | None, list[bool]]] = {}
    broker = await devnet.broker_connect(layout, urls, name="cluster test")
    member = await devnet.member_connect(layout, urls, TRUST, name="cluster test")
    try:
        for nc, stream in ((broker, inbox_stream(TRUST)), (member, f"KV_{state_bucket(TRUST)}")):
            info = await nc.jetstream(timeout=2).stream_info(stream)
            c = info.cluster
            out[stream] = (info.config.num_replicas or 0, c.leader if c else None,
                           [bool(p.current) for p in (c.replicas or [])] if c else [])
    finally:
        await broker.close()
        await member.close()
    return out


def connections(monitor_port: int) -> list[str]:
    """Client connection names on one node (its monitoring endpoint)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/connz?limit=1024", timeout=2) as resp:
        return [c.get("name", "") for c in json.loads(resp.read()).get("connections", [])]


@pytest.mark.timeout(300)
def test_clustered_devnet_round_trip_and_kill_9_of_a_node(tmp_path: Path) -> None:
    from psvn.bench import free_port_range

    d_dir = tmp_path / "cluster"
    for _attempt in range(3):  # another process may take a port of the range between check and use
        up = run("devnet", "--dir", str(d_dir), "up", "--detach", "--cluster", "3",
                 "--base-port", str(free_port_range(cluster=3)), check=False)
        if up.returncode == 0:
            break
    state: dict[str, Any] = json.loads((d_dir / "state.json").read_text()) if up.returncode == 0 else {}
    pids = [*(n["pid"] for n in state.get("nodes", [])), state.get("console_pid"),
            *(g["pid"] for g in state.get("gateways", {}).values())]
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "3 nats-servers, R3" in up.stdout, up.stdout
        nodes = state["nodes"]
        assert len(nodes) == 3 and state["replicas"] == 3 and len({n["pid"] for n in nodes}) == 3
        assert all(procs.alive(p) for p in pids)
        for cfg in (d_dir / "gateways").iterdir():  # every gateway lists all three nodes, R3 state
            text = cfg.read_text()
            assert all(n["url"] in text for n in nodes) and "replicas = 3" in text, cfg

        lines = run("devnet", "--dir", str(d_dir), "status").stdout.splitlines()
        assert [line.split()[0] for line in lines[:3]] == [n["name"] for n in nodes]
        assert [line.split()[4] for line in lines] == ["up"] * (3 + 5 + 1), lines

        # send -> inbox -> ack -> status, through the CLI
        d = ["--devnet", str(d_dir)]
        mid = run("send", *d, *SEND).stdout.strip()
        wait_for(in_inbox(d, mid), timeout=30, what="the referral in the trust's inbox")
        assert "acknowledged" in run("inbox", "ack", *d, "--as", TRUST, mid).stdout

        def history() -> list[str]:
            st = json.loads(run("status", *d, "--as", COUNCIL, mid, "--json").stdout)
            return [h["status"] for h in st["history"]] if st["status"] == "acknowledged" else []

        assert wait_for(history, timeout=30, what="status acknowledged") \
            == ["accepted", "sent", "delivered", "acknowledged"]

        # the trust's inbox stream and its state bucket: R3, a leader, two current replicas
        layout, urls, names = devnet.Layout(d_dir), [n["url"] for n in nodes], {n["name"] for n in nodes}

        def replicated() -> dict[str, tuple[int, str | None, list[bool]]] | None:
            groups = asyncio.run(replication(layout, urls))
            return groups if all(r == 3 and leader in names and peers == [True, True]
                                 for r, leader, peers in groups.values()) else None

        groups = wait_for(replicated, timeout=30, what="R3 with a leader and two current replicas", every=0.5)

        # kill -9 one node by its recorded PID: the trust inbox's leader unless the council's
        # gateway is on it (a send caught mid-write on the sender's own node is
        # tests/broker/test_cluster.py's subject), else another node the council is not on
        council_node = next(n["name"] for n in nodes if f"psvn-gateway {COUNCIL}" in connections(n["monitor_port"]))
        leader = groups[inbox_stream(TRUST)][1]
        victim = next(n for n in sorted(nodes, key=lambda n: n["name"] != leader) if n["name"] != council_node)
        os.kill(victim["pid"], signal.SIGKILL)
        wait_for(lambda: not procs.alive(victim["pid"]), timeout=10, what="the killed node gone")
        down_status = run("devnet", "--dir", str(d_dir), "status", check=False)
        assert down_status.returncode == 1
        assert [line.split()[4] for line in down_status.stdout.splitlines()[:3]] \
            == ["DOWN" if n is victim else "up" for n in nodes]

        # another send is still delivered: a 503 backbone-unavailable during the election is
        # retried with the same idempotency key (as the SDK does), anything else fails the test
        def send_after_kill() -> str | None:
            res = run("send", *d, *SEND, "--idempotency-key", "after-kill", "--json", check=False)
            if res.returncode == 0:
                return str(json.loads(res.stdout)["id"])
            assert json.loads(res.stdout)["code"] == "backbone-unavailable", res.stdout + res.stderr
            return None

        after = wait_for(send_after_kill, timeout=60, what="a send accepted after the kill", every=0.5)
        wait_for(in_inbox(d, after), timeout=60, what="the send after the kill in the trust's inbox")
        print(f"\ncluster devnet: killed {victim['name']} (trust inbox leader {leader}, council on "
              f"{council_node}); a send after it delivered")
    finally:
        run("devnet", "--dir", str(d_dir), "down", check=False)
    assert pids and not [p for p in pids if p and procs.alive(p)], "a devnet process outlived `devnet down`"
    assert not (d_dir / "state.json").exists()


def test_cluster_size_other_than_1_or_3_is_refused_naming_the_option(tmp_path: Path) -> None:
    """Refused before anything starts: no state folder, nothing running."""
    for args in (["devnet", "--dir", str(tmp_path / "d"), "up", "--detach", "--cluster", "2"],
                 ["bench", "--start", "--cluster", "5"]):
        res = run(*args, check=False)
        assert res.returncode == 1 and "--cluster" in res.stderr and "1" in res.stderr and "3" in res.stderr, res
    assert not (tmp_path / "d").exists()


def test_a_state_file_from_before_clusters_reads_as_one_node(tmp_path: Path) -> None:
    layout = devnet.Layout(tmp_path)
    devnet.state_path(layout).write_text(json.dumps({
        "root": str(tmp_path), "nats_url": "tls://127.0.0.1:14222", "nats_pid": 2 ** 22 + 1, "monitor_port": 14223,
        "gateways": {}}))
    state = devnet.read_state(layout)
    assert state is not None and state.replicas == 1
    assert devnet.nats_urls(state) == ["tls://127.0.0.1:14222"]
    assert [n.pid for n in devnet.nats_nodes(state)] == [2 ** 22 + 1] and not devnet.running(state)
