"""nats-server chooses its own ports when the config says 0, and NatsServer reads them back."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from psvn import devnet
from psvn.broker.natsconf import render
from psvn.devnet import EXAMPLE_MEMBERS, Layout


def test_port_zero_is_rendered_as_any_port(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    devnet.make_pki(layout, list(EXAMPLE_MEMBERS)[:1])
    conf = json.loads(render(devnet.server_config(layout, [], port=0, monitor_port=0)).split("\n", 1)[1])
    assert (conf["listen"], conf["http"]) == ("127.0.0.1:-1", "127.0.0.1:-1")
    conf = json.loads(render(devnet.server_config(layout, [], port=4222, monitor_port=8222)).split("\n", 1)[1])
    assert (conf["listen"], conf["http"]) == ("127.0.0.1:4222", "127.0.0.1:8222")


def test_a_server_on_ports_it_chose_restarts_on_the_same_ones(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    members = list(EXAMPLE_MEMBERS)[:1]
    devnet.make_pki(layout, members)
    server = devnet.nats_server(layout, [m.org for m in members], port=0, monitor_port=0)
    assert server.chooses_ports
    server.start()
    try:
        port, monitor = server.config.port, server.config.monitor_port
        assert port > 0 and monitor > 0 and port != monitor
        assert server.url == f"tls://127.0.0.1:{port}"
        assert f"127.0.0.1:{port}" in server.conf_path.read_text()  # the file says where it runs
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/varz", timeout=5) as resp:
            assert json.loads(resp.read())["port"] == port
        assert not server.chooses_ports
        server.stop()
        assert list(server.ports_dir.glob("*.ports")) == []  # nats-server removes it on a clean stop
        server.start()
        assert (server.config.port, server.config.monitor_port) == (port, monitor)
    finally:
        server.stop()
