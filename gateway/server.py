"""Run a gateway: the service plus its mutual-TLS HTTPS server (``psvn gateway run``)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

from aiohttp import web

from certs import tls
from gateway.config import GatewayConfig
from gateway.http import make_app
from gateway.service import Gateway


class GatewayServer:
    """A started gateway and its HTTPS listener; ``port`` is known after ``start``."""

    def __init__(self, config: GatewayConfig, *, gateway: Gateway | None = None) -> None:
        self.config = config
        self.gateway = gateway or Gateway(config)
        self.runner: web.AppRunner | None = None
        self.port: int = config.gateway.listen_port

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    async def start(self) -> GatewayServer:
        await self.gateway.start()
        t = self.config.tls
        # Client certificates are verified at the handshake when presented; one that is missing
        # gets a 401 problem document from the views instead of a bare disconnect.
        ctx = tls.server_context(Path(t.cert), Path(t.key), Path(t.ca), require_client_cert=False,
                                 crl=Path(t.crl) if t.crl else None)
        self.runner = web.AppRunner(make_app(self.gateway), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.gateway.listen_host, self.config.gateway.listen_port,
                           ssl_context=ctx, reuse_address=True)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        await self.gateway.stop()


async def run_forever(config: GatewayConfig) -> None:
    server = await GatewayServer(config).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
