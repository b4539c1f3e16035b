"""A nats-server cluster on loopback: the production shape (3 nodes, replicas 3) on one machine.

Each node has its own store dir, config and log, listens for clients and routes on free ports,
and knows every member user (so a gateway may connect to any node and fail over to another).
``kill(i)`` is ``kill -9`` by the PID we started, the way a node really dies (no graceful
leadership hand-off); ``restart(i)`` brings it back on the same ports and store, so it catches
up from its peers. Only ever signals processes it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from broker.natsconf import ClusterConfig, ServerConfig
from broker.server import NatsServer
from psvn import procs

DEFAULT_SIZE = 3


def _monitor_json(port: int, path: str) -> dict[str, object] | None:
    """A node's monitoring document, or None if it does not answer (yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as resp:
            data = json.loads(resp.read())
            return data if isinstance(data, dict) else None
    except Exception:
        return None


@dataclass
class Cluster:
    """The running nodes; ``urls`` is what a gateway's ``nats.servers`` should list."""

    name: str
    nodes: list[NatsServer]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def names(self) -> list[str]:
        return [n.config.name for n in self.nodes]

    def index(self, server_name: str) -> int:
        """Which node has this ``server_name`` (as stream_info(...).cluster.leader reports it)."""
        return self.names.index(server_name)

    def running(self, i: int) -> bool:
        pid = self.nodes[i].pid
        return pid is not None and procs.alive(pid)

    def meta_leader(self, i: int) -> str | None:
        """The JetStream meta leader as node ``i`` sees it (None while there is none)."""
        jsz = _monitor_json(self.nodes[i].config.monitor_port, "/jsz")
        meta = jsz.get("meta_cluster") if jsz else None
        leader = meta.get("leader") if isinstance(meta, dict) else None
        return leader if isinstance(leader, str) and leader else None

    def wait_meta_leader(self, *, timeout: float = 30.0) -> str:
        """Wait until every running node agrees on one meta leader; return its server name.

        Before this, JetStream API calls (add_stream...) fail with "no suitable peers" or time out.
        """
        deadline = time.monotonic() + timeout
        seen: list[str | None] = []
        while time.monotonic() < deadline:
            seen = [self.meta_leader(i) for i in range(len(self.nodes)) if self.running(i)]
            if seen and seen[0] is not None and all(s == seen[0] for s in seen):
                return seen[0]
            time.sleep(0.1)
        raise TimeoutError(f"cluster {self.name}: no agreed JetStream meta leader after {timeout}s (saw {seen})")

    def wait_healthy(self, i: int, *, timeout: float = 30.0) -> None:
        """Wait until node ``i``'s full /healthz is 200: meta group and its streams are current."""
        node = self.nodes[i]
        procs.wait_http_ok(f"http://127.0.0.1:{node.config.monitor_port}/healthz", timeout=timeout,
                           process=node.process)

    def kill(self, i: int) -> int:
        """``kill -9`` node ``i`` (no shutdown, no leadership hand-off); return the PID killed."""
        node = self.nodes[i]
        pid = node.pid
        if pid is None:
            raise RuntimeError(f"node {node.config.name} is not running")
        os.kill(pid, signal.SIGKILL)
        if node.process is not None:
            node.process.wait(timeout=10)  # reap it: the PID is ours and must not linger as a zombie
        node.pid = None
        return pid

    def restart(self, i: int, *, timeout: float = 30.0) -> None:
        """Start node ``i`` again on its ports and store dir, then wait until it has caught up."""
        if self.running(i):
            raise RuntimeError(f"node {self.nodes[i].config.name} is still running")
        self.nodes[i].start(timeout=timeout)
        self.wait_healthy(i, timeout=timeout)

    def stop(self) -> None:
        """SIGTERM every running node at once (then SIGKILL after a grace period)."""
        pids = [n.pid for n in self.nodes if n.pid is not None]
        procs.stop_all(pids)
        for n in self.nodes:
            if n.process is not None:
                try:
                    n.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            n.pid = None


def cluster_nodes(root: Path, *, cert: Path, key: Path, ca: Path, members: Sequence[str],
                  size: int = DEFAULT_SIZE, name: str = "psvn") -> list[NatsServer]:
    """One config per node (free loopback ports, own store dir and log), routes to all the others."""
    ports = [(procs.free_port(), procs.free_port(), procs.free_port()) for _ in range(size)]
    nodes: list[NatsServer] = []
    for i, (client, monitor, route) in enumerate(ports):
        node_name = f"{name}-n{i + 1}"
        d = root / node_name
        cfg = ServerConfig(name=node_name, port=client, monitor_port=monitor, store_dir=d / "store",
                           cert=cert, key=key, ca=ca, members=tuple(members),
                           cluster=ClusterConfig(name=name, listen_port=route,
                                                 routes=[p[2] for j, p in enumerate(ports) if j != i]))
        nodes.append(NatsServer(cfg, conf_path=d / "nats.conf", log_path=d / "nats.log"))
    return nodes


def start_cluster(root: Path, *, cert: Path, key: Path, ca: Path, members: Sequence[str],
                  size: int = DEFAULT_SIZE, name: str = "psvn", timeout: float = 30.0) -> Cluster:
    """Start ``size`` nodes together and wait for a JetStream meta leader.

    The nodes start in parallel: each waits for its own JetStream, and a clustered JetStream
    needs its peers, so starting them one after another would only add up the waits.
    """
    cluster = Cluster(name=name, nodes=cluster_nodes(root, cert=cert, key=key, ca=ca, members=members,
                                                     size=size, name=name))
    try:
        with ThreadPoolExecutor(max_workers=size) as pool:
            for fut in [pool.submit(n.start, timeout=timeout) for n in cluster.nodes]:
                fut.result()
        cluster.wait_meta_leader(timeout=timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster

