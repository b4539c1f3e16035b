"""``psvn console run | token``: the broker's web console for a devnet, and its sign-in tokens."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from psvn.core.errors import Code, PsvnError

ROLES = ("compliance-officer", "approver", "operator")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "console", help="the broker's web console: policy editor, approvals, network overview",
        description="The broker's console on a loopback port: compliance officers edit, lint, test and "
        "simulate the policy set and submit it; approvers (other people) approve and publish it; operators "
        "see members, the policy version each gateway enforces and recent audit counts. Sign-in is a "
        "short-lived token from `psvn console token`.")
    p.set_defaults(func=lambda _a: (p.print_help(), 2)[1])
    s = p.add_subparsers(title="console commands", metavar="ACTION")

    run = s.add_parser("run", help="serve the console until Ctrl-C",
                       description="Connect to the devnet's backbone as the broker and serve the console on "
                       "http://127.0.0.1:PORT (loopback only). Prints the URL once it is ready.")
    run.add_argument("--devnet", default=".devnet", metavar="DIR", help="devnet state folder (default .devnet)")
    run.add_argument("--port", type=int, default=None,
                     help="port (default: the devnet's console port, its --base-port + 8, i.e. 14230 for "
                     "the default base port 14222; 0 picks a free one)")
    run.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")
    run.set_defaults(func=_run)

    tok = s.add_parser("token", help="issue a console sign-in token (printed on stdout)",
                       description="Sign a short-lived token (JWT, EdDSA) with the broker's console key "
                       "(DIR/pki/console/jwt-signing.key, created 0600 on first use). Paste it into the "
                       "console's sign-in form. Anyone holding it acts as USER until it expires: do not "
                       "share or log it.")
    tok.add_argument("--devnet", default=".devnet", metavar="DIR", help="devnet state folder (default .devnet)")
    tok.add_argument("--user", required=True, help="who will use it (a-z 0-9 . _ @ -), e.g. alice")
    tok.add_argument("--role", required=True, choices=ROLES,
                     help="compliance-officer (edit, propose), approver (approve, publish) or operator (read)")
    tok.add_argument("--ttl", type=int, default=3600, metavar="SECONDS",
                     help="lifetime in seconds (default 3600, at most 43200)")
    tok.set_defaults(func=_token)


def _layout(path: str):  # type: ignore[no-untyped-def]
    from psvn.devnet import Layout

    layout = Layout(Path(path))
    if not layout.ca.exists():
        raise PsvnError(Code.NOT_FOUND, f"no devnet PKI under {layout.root}: run `psvn devnet up --detach`",
                        field="--devnet", rule="devnet-pki")
    return layout


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from psvn import devnet
    from psvn.broker import console
    from psvn.core import log

    log.configure(json=True)
    layout = _layout(args.devnet)
    port = console_port(layout) if args.port is None else args.port
    _check_port(layout, port, args.host)

    def ready(server: console.ConsoleServer) -> None:
        print(f"psvn console: {server.url}/  (sign in with a token from `psvn console token "
              f"--devnet {args.devnet} --user NAME --role ROLE`)", flush=True)

    try:
        urls = devnet.nats_urls(devnet.running_state(layout))  # every node: the console fails over between them
        asyncio.run(console.serve_forever(layout, port=port, host=args.host, nats_url=urls, on_ready=ready))
    except OSError as exc:  # lost a race for the port after the check, or a port below 1024
        import errno

        if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
            raise
        raise PsvnError(Code.BAD_REQUEST, f"cannot listen on {args.host}:{port}: {exc.strerror or exc}",
                        field="--port", rule="port-free") from None
    return 0


def console_port(layout) -> int:  # type: ignore[no-untyped-def]
    """The port the devnet in ``layout`` gives its console (base port + CONSOLE_OFFSET), or the
    default one when no devnet state says otherwise."""
    from urllib.parse import urlsplit

    from psvn import devnet
    from psvn.broker import console

    state = devnet.read_state(layout)
    if state is not None and state.console_url:
        port = urlsplit(state.console_url).port
        if port:
            return port
    if state is not None and state.nats_url:  # base port = the (first) nats-server's port
        base = urlsplit(state.nats_url).port
        if base:
            return base + devnet.CONSOLE_OFFSET
    return console.DEFAULT_PORT


def _check_port(layout, port: int, host: str) -> None:  # type: ignore[no-untyped-def]
    from psvn import devnet
    from psvn.core import procs
    if port == 0 or not procs.port_taken(port, host):
        return
    state = devnet.read_state(layout)
    hint = "stop what holds it, or choose another with --port (0 picks a free one)"
    if state is not None and state.console_url.rstrip("/").endswith(f":{port}") and state.console_pid \
            and procs.alive(state.console_pid):
        hint = (f"the devnet under {layout.root} already serves its console there ({state.console_url}, pid "
                f"{state.console_pid}): open that, or choose another --port")
    raise PsvnError(Code.BAD_REQUEST, f"port {port} on {host} is already in use: {hint}", field="--port",
                    rule="port-free")


def _token(args: argparse.Namespace) -> int:
    from psvn.broker.auth import TokenAuthority

    tokens = TokenAuthority.for_pki(_layout(args.devnet).pki)
    sys.stdout.write(tokens.issue(args.user, args.role, ttl=args.ttl) + "\n")
    return 0
