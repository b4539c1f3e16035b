"""The broker's console: a policy editor for compliance officers, approval and publication for
approvers, and an overview for operators (members, the policy version each gateway enforces,
recent audit counts).

Layers: ``static/`` (views: plain HTML + JS + CSS, no build) -> ``handlers`` (JSON API, roles)
-> ``storage`` (the backbone: policy workflow, registry, audit). Start it with :func:`start`
(in an event loop) or :func:`run` (blocking, as ``psvn console run`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Protocol

from psvn.broker.accounts import BackboneAccounts
from psvn.broker.auth import TokenAuthority
from psvn.broker.console.app import ConsoleServer
from psvn.broker.console.storage import ConsoleStore
from psvn.broker.policy_admin import load_public_key
from psvn.certs import keys, tls
from psvn.policies import bundle


class ConsoleFiles(Protocol):
    """Where the console finds the network's keys and certificates (a devnet's ``Layout`` is one):
    the broker names what it reads, never the wiring that put the files there."""

    @property
    def pki(self) -> Path: ...
    @property
    def ca(self) -> Path: ...
    @property
    def authority_key(self) -> Path: ...
    @property
    def authority_pub(self) -> Path: ...
    @property
    def registry_pub(self) -> Path: ...
    @property
    def broker_cert(self) -> tuple[Path, Path]: ...


DEFAULT_PORT = 14230  # devnet: nats 14222, monitor 14223, gateways 14232..

__all__ = ["DEFAULT_PORT", "ConsoleFiles", "ConsoleServer", "ConsoleStore", "run", "start"]


async def start(layout: ConsoleFiles, *, nats_url: str | list[str], port: int = 0, host: str = "127.0.0.1",
                policy_dir: Path = bundle.DEFAULT_DIR) -> ConsoleServer:
    """Connect to the backbone as the broker and serve the console; ``.url`` says where."""
    tokens = TokenAuthority.for_pki(layout.pki)
    signing = keys.load_signing_key(layout.authority_key) if layout.authority_key.exists() else None
    cert, key = layout.broker_cert
    store = await ConsoleStore.open(nats_url=nats_url, tls=tls.client_context(layout.ca, cert, key),
                                    creds=str(BackboneAccounts(layout.pki).broker_creds),
                                    authority_pub=load_public_key(layout.authority_pub), signing_key=signing,
                                    registry_pub=load_public_key(layout.registry_pub), policy_dir=policy_dir)
    try:
        return await ConsoleServer(store, tokens, host=host, port=port).start()
    except BaseException:
        await store.close()
        raise


async def serve_forever(layout: ConsoleFiles, *, port: int = DEFAULT_PORT, host: str = "127.0.0.1",
                        nats_url: str | list[str], on_ready: object = None) -> None:
    server = await start(layout, nats_url=nats_url, port=port, host=host)
    if callable(on_ready):
        on_ready(server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def run(layout: ConsoleFiles, port: int = DEFAULT_PORT, *, host: str = "127.0.0.1",
        nats_url: str | list[str]) -> None:
    """Run the console for a devnet until SIGINT/SIGTERM (``psvn console run`` calls this)."""
    asyncio.run(serve_forever(layout, port=port, host=host, nats_url=nats_url))
