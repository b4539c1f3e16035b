"""Shared fixtures: a real network (nats-server on ports it chooses, real TLS, real gateways)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from psvn import devnet
from psvn.broker.server import NatsServer
from psvn.devnet import EXAMPLE_MEMBERS, Layout, MemberSpec
from psvn.gateway.config import GatewayConfig
from psvn.gateway.server import GatewayServer


@dataclass
class Network:
    """A running network: one nats-server and a gateway per member, all on loopback."""

    layout: Layout
    nats: NatsServer
    gateways: dict[str, GatewayServer]
    members: list[MemberSpec]
    # keep-alive HTTPS clients, one per (system's organisation, event loop): a test's requests
    # share one TLS handshake (closed by stop_network)
    clients: dict[tuple[str, int], aiohttp.ClientSession] = field(default_factory=dict, repr=False)

    COUNCIL = "gss:E06000043"
    TRUST = "ods:RYR"
    GP = "ods:G81001"

    def member(self, org: str) -> MemberSpec:
        return next(m for m in self.members if m.org == org)

    def url(self, org: str) -> str:
        return self.gateways[org].url

    def system_cert(self, org: str) -> tuple[Path, Path]:
        return self.layout.system_cert(org, self.member(org).system)

    @property
    def ca(self) -> Path:
        return self.layout.ca

    def https(self, org: str) -> aiohttp.ClientSession:
        """This event loop's keep-alive HTTPS client as ``org``'s system."""
        key = (org, id(asyncio.get_running_loop()))
        session = self.clients.get(key)
        if session is None or session.closed:
            session = self.clients[key] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.client_ssl(org)))
        return session

    async def close_clients(self) -> None:
        for session in self.clients.values():
            if not session.closed:
                await session.close()
        self.clients.clear()

    def client_ssl(self, org: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        cert, key = self.system_cert(org)
        ctx.load_cert_chain(str(cert), str(key))
        return ctx


async def start_network(root: Path, members: list[MemberSpec] | None = None, *,
                        configure: Callable[[MemberSpec, GatewayConfig], GatewayConfig] | None = None) -> Network:
    members = list(members or EXAMPLE_MEMBERS)
    layout = Layout(root)
    devnet.make_pki(layout, members)
    server = devnet.nats_server(layout, [m.org for m in members], port=0, monitor_port=0).start()  # its own ports
    gateways: dict[str, GatewayServer] = {}
    try:
        await devnet.provision_backbone(layout, server.url, members)
        for m in members:
            cfg = devnet.gateway_config(layout, m, nats_url=server.url, port=0)
            if configure is not None:
                cfg = configure(m, cfg)
            gateways[m.org] = await GatewayServer(cfg).start()
    except BaseException:
        for gw in gateways.values():
            await gw.stop()
        server.stop()
        raise
    return Network(layout=layout, nats=server, gateways=gateways, members=members)


async def stop_network(net: Network) -> None:
    await net.close_clients()
    for gw in net.gateways.values():
        await gw.stop()
    net.nats.stop()


@contextlib.asynccontextmanager
async def network_where(root: Path, org: str, **spec: Any) -> AsyncIterator[Network]:
    """The example network with one member provisioned otherwise (``spec``: MemberSpec fields,
    e.g. ``post_quantum=True`` or ``wire=1``)."""
    members = [replace(m, **spec) if m.org == org else m for m in EXAMPLE_MEMBERS]
    net = await start_network(root, members)
    try:
        yield net
    finally:
        await stop_network(net)


@pytest.fixture
async def network(tmp_path: Path) -> AsyncIterator[Network]:
    net = await start_network(tmp_path)
    try:
        yield net
    finally:
        await stop_network(net)


# Read-mostly tests (error paths, one message each under its own id) share one network per module
# instead of starting their own (~0.7 s each, more with a policy publish): ask for ``shared_network``
# and mark the test ``@read_mostly`` so it runs in the module's event loop, where the network lives.
# A test that restarts a gateway, revokes a member or counts a whole mailbox keeps ``network``.
read_mostly = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_network(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Network]:
    net = await start_network(tmp_path_factory.mktemp("shared-network"))
    try:
        yield net
    finally:
        await stop_network(net)
