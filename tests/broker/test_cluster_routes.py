"""A certificate from the network CA is not enough to join the backbone cluster as a route."""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from psvn import devnet
from psvn.broker.accounts import BackboneAccounts
from psvn.broker.cluster import start_cluster
from psvn.broker.natsconf import ClusterConfig
from psvn.broker.server import NatsServer
from psvn.devnet import EXAMPLE_MEMBERS, Layout


def routez(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/routez", timeout=2) as r:
        return json.loads(r.read())


def test_a_member_certificate_cannot_join_as_a_route(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    devnet.make_pki(layout, EXAMPLE_MEMBERS)
    members = [m.org for m in EXAMPLE_MEMBERS]
    cluster = start_cluster(tmp_path / "cluster", cert=layout.pki / "nats" / "nats.crt",
                            key=layout.pki / "nats" / "nats.key", ca=layout.ca, backbone=BackboneAccounts(layout.pki),
                            members=members)
    rogue: NatsServer | None = None
    try:
        first = cluster.nodes[0].config
        assert first.cluster is not None
        assert oct(cluster.nodes[0].conf_path.stat().st_mode & 0o777) == "0o600"  # holds the route secret
        council = layout.org_dir("gss:E06000043")
        seed = first.cluster

        # every port its own: nobody routes to the rogue, it routes to the cluster
        cfg = replace(first, name="rogue", port=0, monitor_port=0,
                      store_dir=tmp_path / "rogue" / "store", cert=council / "nats.crt", key=council / "nats.key",
                      cluster=ClusterConfig(name=seed.name, listen_port=0,
                                            routes=[seed.listen_port], route_password="guessed"))
        rogue = NatsServer(cfg, conf_path=tmp_path / "rogue" / "nats.conf", log_path=tmp_path / "rogue" / "log").start()
        cfg = rogue.config
        log = tmp_path / "rogue" / "log"
        deadline = time.monotonic() + 30
        while log.read_text().count("Route Error 'Authorization Violation'") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)  # until the cluster has refused several route attempts
        assert log.read_text().count("Route Error 'Authorization Violation'") >= 3
        assert routez(cfg.monitor_port)["num_routes"] == 0
        assert all(int(routez(n.config.monitor_port)["num_routes"]) > 0 for n in cluster.nodes)  # type: ignore[call-overload]
        names = {r.get("remote_name") for n in cluster.nodes
                 for r in routez(n.config.monitor_port).get("routes", [])}  # type: ignore[union-attr, attr-defined]
        assert "rogue" not in names
    finally:
        if rogue is not None:
            rogue.stop()
        cluster.stop()
