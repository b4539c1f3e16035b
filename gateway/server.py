"""Run a gateway: the service plus its mutual-TLS HTTPS server (``psvn gateway run``)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from pathlib import Path

import structlog
from aiohttp import web
from cryptography import x509

from psvn.certs import tls
from psvn.core import heap
from psvn.gateway.config import GatewayConfig
from psvn.gateway.http import make_app
from psvn.gateway.metrics import Metrics
from psvn.gateway.service import Gateway

log = structlog.get_logger("psvn.gateway.server")


class GatewayServer:
    """A started gateway and its HTTPS listener; ``port`` is known after ``start``."""

    def __init__(self, config: GatewayConfig, *, gateway: Gateway | None = None) -> None:
        self.config = config
        self.gateway = gateway or Gateway(config)
        self.runner: web.AppRunner | None = None
        self.port: int = config.gateway.listen_port
        self._current: ssl.SSLContext | None = None
        self._crl_mtime = 0.0
        self._crl_task: asyncio.Task[None] | None = None
        # serials on the CRL now: the handshake checks new connections, and every request on an
        # open (keep-alive) connection is checked against this set, so a revocation applies to
        # connections made before it as soon as the CRL is reloaded
        self.revoked: frozenset[int] = frozenset()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def _tls_context(self) -> ssl.SSLContext:
        t = self.config.tls
        # Client certificates are verified at the handshake when presented; one that is missing
        # gets a 401 problem document from the views instead of a bare disconnect.
        return tls.server_context(Path(t.cert), Path(t.key), Path(t.ca), require_client_cert=False,
                                  crl=Path(t.crl) if t.crl else None)

    def _select_context(self, sslobj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        """Every handshake uses the newest context, so a reloaded CRL applies at once."""
        if self._current is not None:
            sslobj.context = self._current

    def reload_tls(self) -> None:
        """Rebuild the TLS context (new CRL, renewed certificate) and the revoked serials that
        requests on already open connections are checked against."""
        stamp = self._crl_stamp()
        revoked = self._revoked_serials()
        fresh = self._tls_context()
        fresh.sni_callback = self._select_context
        self._current = fresh
        self.revoked = revoked
        self._crl_mtime = stamp

    def _revoked_serials(self) -> frozenset[int]:
        """The serials on the configured CRL, once its signature by the CA is checked (a CRL
        that fails the check raises, and the caller keeps the previous set: fail loudly)."""
        t = self.config.tls
        if not t.crl:
            return frozenset()
        crl = x509.load_pem_x509_crl(Path(t.crl).read_bytes())
        cas = x509.load_pem_x509_certificates(Path(t.ca).read_bytes())
        if not any(crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
                   for ca in cas):
            raise ValueError(f"{t.crl} is not signed by a CA in {t.ca}")
        return frozenset(entry.serial_number for entry in crl)

    def is_revoked(self, serial: int) -> bool:
        return serial in self.revoked

    def _crl_stamp(self) -> float:
        crl = self.config.tls.crl
        try:
            return Path(crl).stat().st_mtime if crl else 0.0
        except FileNotFoundError:
            return 0.0

    async def _watch_crl(self) -> None:
        while True:
            await asyncio.sleep(self.config.tls.crl_reload_seconds)
            if self._crl_stamp() != self._crl_mtime:
                try:
                    self.reload_tls()
                    log.info("TLS context reloaded: CRL changed", org=self.gateway.org)
                except Exception as exc:  # keep the old context; fail loudly, not open
                    log.error("CRL reload failed; keeping the previous one", error=repr(exc))

    async def start(self) -> GatewayServer:
        await self.gateway.start()
        self.reload_tls()
        self.runner = web.AppRunner(make_app(self.gateway, is_revoked=self.is_revoked), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.gateway.listen_host, self.config.gateway.listen_port,
                           ssl_context=self._current, reuse_address=True)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        if self.config.tls.crl:
            self._crl_task = asyncio.create_task(self._watch_crl(), name="crl-reload")
        return self

    async def stop(self) -> None:
        if self._crl_task is not None:
            self._crl_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._crl_task
        if self.runner is not None:
            await self.runner.cleanup()
        await self.gateway.stop()


async def run_forever(config: GatewayConfig) -> None:
    server = await GatewayServer(config).start()
    # once started, in the gateway's own process only (tests run several gateways in one)
    settled = heap.settle(config.gateway.gc_threshold)
    server.gateway.metrics.heap_settled(settled.thresholds, settled.frozen)
    log.info("garbage collector set", thresholds=list(settled.thresholds), frozen=settled.frozen)
    trimming = trim_heap(config.gateway.heap_trim_seconds, server.gateway.metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        if trimming is not None:
            trimming.cancel()
        await server.stop()


def trim_heap(every: float, metrics: Metrics) -> asyncio.Task[None] | None:
    """Hand the C allocator's free pages back every ``every`` seconds (psvn.core.heap), in the
    gateway's own process only, like the collector's settings; the task, or None if never."""
    trim = heap.malloc_trim() if every else None
    metrics.heap_trim_interval.set(every if trim is not None else 0)
    log.info("heap trimming", every_seconds=every if trim is not None else 0,
             **({"unavailable": "the C library has no malloc_trim"} if every and trim is None else {}))
    if trim is None:
        return None
    return asyncio.create_task(heap.trim_every(every, trim, observe=metrics.heap_trimmed))
