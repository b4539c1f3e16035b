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
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from psvn.broker.accounts import BackboneAccounts
from psvn.broker.natsconf import ClusterConfig, ServerConfig
from psvn.broker.server import NatsServer
from psvn.core import procs
from psvn.core.procs import free_port_range

DEFAULT_SIZE = 3
PORTS_PER_NODE = 3  # client, monitoring, routes
PORT_ATTEMPTS = 3
T = TypeVar("T")


def on_free_ports(start: Callable[[int], T], span: int, *, attempts: int = PORT_ATTEMPTS) -> T:
    """``start(base)`` with ``span`` consecutive loopback ports free a moment ago, below the
    ephemeral range (so an outgoing connection will not take one). Another process can still
    bind one first; nats-server then exits and ``NatsServer.start`` raises RuntimeError: try
    again on a fresh run of ports. ``start`` must clean up after itself when it raises."""
    for attempt in range(1, attempts + 1):
        try:
            return start(free_port_range(span))
        except RuntimeError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


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

    def meta(self, i: int) -> dict[str, object]:
        """Node ``i``'s view of the JetStream meta group ({} if it does not answer)."""
        jsz = _monitor_json(self.nodes[i].config.monitor_port, "/jsz")
        meta = jsz.get("meta_cluster") if jsz else None
        return meta if isinstance(meta, dict) else {}

    def meta_leader(self, i: int) -> str | None:
        """The JetStream meta leader as node ``i`` sees it (None while there is none)."""
        leader = self.meta(i).get("leader")
        return leader if isinstance(leader, str) and leader else None

    def _ready(self) -> str | None:
        """The meta leader, once every running node agrees on it, the leader sees every other
        running node as a current peer, and every running node answers its full /healthz."""
        up = [i for i in range(len(self.nodes)) if self.running(i)]
        leaders = {self.meta_leader(i) for i in up}
        if not up or len(leaders) != 1 or None in leaders:
            return None
        leader = leaders.pop()
        assert leader is not None
        if leader not in self.names or not self.running(self.index(leader)):
            return None
        replicas = self.meta(self.index(leader)).get("replicas")
        current = {r.get("name") for r in replicas if isinstance(r, dict) and r.get("current")
                   and not r.get("offline")} if isinstance(replicas, list) else set()
        if not {self.names[i] for i in up if self.names[i] != leader} <= current:
            return None
        for i in up:
            if _monitor_json(self.nodes[i].config.monitor_port, "/healthz") is None:
                return None
        return leader

    def wait_meta_leader(self, *, timeout: float = 30.0) -> str:
        """Wait until the running nodes agree on a JetStream meta leader that sees the others as
        current peers; return its server name.

        Before this, JetStream API calls fail ("no suitable peers for placement, peer offline"
        when an R3 stream is created while the leader still counts a peer as offline) or time out.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self._ready()
            if leader is not None:
                return leader
            time.sleep(0.1)
        views = {self.names[i]: self.meta(i) for i in range(len(self.nodes)) if self.running(i)}
        raise TimeoutError(f"cluster {self.name}: JetStream not ready after {timeout}s: {views}")

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
        self.wait_meta_leader(timeout=timeout)

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


def cluster_nodes(root: Path, *, cert: Path, key: Path, ca: Path, backbone: BackboneAccounts, members: Sequence[str],
                  base_port: int = 0, size: int = DEFAULT_SIZE, name: str = "psvn",
                  ports: Sequence[tuple[int, int, int]] | None = None,
                  log_dir: Path | None = None) -> list[NatsServer]:
    """One config per node (ports from ``base_port`` on, own store dir, account resolver dir and
    log), routes to all the others; every node trusts the same operator and preloads the same
    accounts (the full resolvers then keep each other up to date).

    ``ports`` gives each node's (client, monitoring, route) ports instead, for a caller with a
    documented port layout of its own (the devnet); ``log_dir`` puts the logs, named by node,
    where the caller keeps its other logs rather than beside each store."""
    preload = backbone.preload(list(members))
    if ports is None:
        ports = [(base_port + PORTS_PER_NODE * i, base_port + PORTS_PER_NODE * i + 1,
                  base_port + PORTS_PER_NODE * i + 2) for i in range(size)]
    if len(ports) != size:
        raise ValueError(f"{size} nodes need {size} port triples, not {len(ports)}")
    route_password = secrets.token_urlsafe(32)
    nodes: list[NatsServer] = []
    for i, (client, monitor, route) in enumerate(ports):
        node_name = f"{name}-n{i + 1}"
        d = root / node_name
        cfg = ServerConfig(name=node_name, port=client, monitor_port=monitor, store_dir=d / "store",
                           cert=cert, key=key, ca=ca, operator_jwt=backbone.operator_jwt(),
                           system_account=backbone.system_account, resolver_dir=d / "accounts", preload=preload,
                           cluster=ClusterConfig(name=name, listen_port=route,
                                                 routes=[p[2] for j, p in enumerate(ports) if j != i],
                                                 route_password=route_password))
        log = log_dir / f"{node_name}.log" if log_dir is not None else d / "nats.log"
        nodes.append(NatsServer(cfg, conf_path=d / "nats.conf", log_path=log))
    return nodes


def start_cluster(root: Path, *, cert: Path, key: Path, ca: Path, backbone: BackboneAccounts, members: Sequence[str],
                  size: int = DEFAULT_SIZE, name: str = "psvn", timeout: float = 30.0) -> Cluster:
    """Start ``size`` nodes together on free ports and wait for a JetStream meta leader
    (``start_nodes``); a failed attempt's stores are removed and it tries again on fresh ports."""

    def start(base_port: int) -> Cluster:
        cluster = Cluster(name=name, nodes=cluster_nodes(root, cert=cert, key=key, ca=ca, backbone=backbone,
                                                         members=members, base_port=base_port, size=size,
                                                         name=name))
        try:
            start_nodes(cluster, timeout=timeout)
        except BaseException:
            for n in cluster.nodes:  # a retry starts from empty stores, not this attempt's half-formed one
                shutil.rmtree(n.config.store_dir, ignore_errors=True)
            raise
        return cluster

    return on_free_ports(start, PORTS_PER_NODE * size)


def start_nodes(cluster: Cluster, *, timeout: float = 30.0) -> Cluster:
    """Start every node of ``cluster`` at once and wait for a JetStream meta leader; on failure
    stop the nodes it started (their stores are left alone: they may hold a devnet's mail).

    In parallel because each node waits for its own JetStream, and a clustered JetStream needs
    its peers: started one after another the waits would only add up."""
    try:
        with ThreadPoolExecutor(max_workers=len(cluster.nodes)) as pool:
            for fut in [pool.submit(n.start, timeout=timeout) for n in cluster.nodes]:
                fut.result()
        cluster.wait_meta_leader(timeout=timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster
