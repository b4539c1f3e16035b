"""``psvn gateway run``: run one organisation's gateway from its config file."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    gw = sub.add_parser("gateway", help="run a gateway", description="Run an organisation's gateway.")
    gsub = gw.add_subparsers(title="gateway commands", metavar="ACTION")
    run = gsub.add_parser("run", help="run a gateway until SIGINT/SIGTERM",
                          description="Connect to the backbone, consume the member's inbox and serve the mutual-TLS "
                          "HTTPS API for local systems. Logs are JSON lines on stderr.")
    run.add_argument("--config", required=True, help="gateway TOML file (sections gateway, tls, nats, keys)")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from psvn.gateway.run import run

    run(args.config)
    return 0
