"""Run one gateway from its config file: check what it names before connecting anywhere, then serve
until SIGINT/SIGTERM. ``psvn gateway run`` and ``python -m psvn.gateway`` both come here."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from psvn.core import log
from psvn.core.errors import PsvnError

if TYPE_CHECKING:
    from psvn.gateway.config import GatewayConfig


def run(config_path: str) -> None:
    """Load, check and run the gateway ``config_path`` describes (blocks until it stops)."""
    from psvn.gateway import config
    from psvn.gateway.server import run_forever

    log.configure(json=True)
    cfg = config.load(config_path)
    check_files(cfg, config_path)
    check_listen(cfg, config_path)
    try:
        import uvloop

        uvloop.run(run_forever(cfg))
    except ImportError:
        asyncio.run(run_forever(cfg))


def main(argv: list[str]) -> int:
    """``python -m psvn.gateway --config FILE``: one line on stderr for a mistake, never a traceback."""
    parser = argparse.ArgumentParser(prog="python -m psvn.gateway", description="Run an organisation's gateway.")
    parser.add_argument("--config", required=True, help="gateway TOML file (sections gateway, tls, nats, keys)")
    args = parser.parse_args(argv)
    try:
        run(args.config)
    except PsvnError as exc:
        print(f"psvn gateway: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


# the settings that name a file the gateway must read at start-up
FILE_SETTINGS = {
    "tls": ("cert", "key", "ca", "crl"),
    "nats": ("cert", "key", "ca", "creds"),
    "keys": ("signing", "hpke", "policy_authority", "registry_authority", "hpke_hybrid"),
    "webhook": ("secret_file", "ca"),
}


def check_files(cfg: GatewayConfig, path: str) -> None:
    """Before connecting anywhere: every file the config names exists and is readable, or one
    error naming the setting and the file (``ssl`` would say only "No such file or directory")."""
    import os

    from psvn.core.errors import Code, PsvnError

    for section, names in FILE_SETTINGS.items():
        sect = getattr(cfg, section, None)
        if sect is None:
            continue
        for name in names:
            value = getattr(sect, name, None)
            if not value:
                continue
            f = Path(value)  # as the gateway reads it: relative to where it runs
            if not f.is_file():
                hint = ""
                if (section, name) == ("nats", "creds"):  # written only when the member is provisioned
                    hint = (f" (a member's backbone credentials exist once {cfg.gateway.org} is registered and "
                            "provisioned on the backbone: is it a member of this network? a devnet provisions "
                            "its members at `psvn devnet up`)")
                raise PsvnError(Code.CONFIG_INVALID, f"{path}: {section}.{name} = {value!r}: no such file{hint}",
                                field=f"{section}.{name}", rule="file-exists")
            if not os.access(f, os.R_OK):
                raise PsvnError(Code.CONFIG_INVALID, f"{path}: {section}.{name} = {value!r}: not readable",
                                field=f"{section}.{name}", rule="file-readable")


def check_listen(cfg: GatewayConfig, path: str) -> None:
    """A port someone else holds is named before the gateway connects to the backbone."""
    from psvn.core.errors import Code, PsvnError
    from psvn.core.procs import port_taken

    g = cfg.gateway
    if g.listen_port and port_taken(g.listen_port, g.listen_host):
        raise PsvnError(Code.CONFIG_INVALID, f"{path}: gateway.listen_port {g.listen_port} on {g.listen_host} is "
                        "already in use: stop what holds it or choose another port", field="gateway.listen_port",
                        rule="port-free")
