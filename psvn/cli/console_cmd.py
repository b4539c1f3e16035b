"""``psvn console run | token``: the broker's web console for a devnet, and its sign-in tokens."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    run.add_argument("--port", type=int, default=None, help="port (default 14230; 0 picks a free one)")
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
        from psvn.errors import Code, PsvnError

        raise PsvnError(Code.NOT_FOUND, f"no devnet PKI under {layout.root}: run `psvn devnet up --detach`",
                        field="--devnet", rule="devnet-pki")
    return layout


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from broker import console
    from psvn import log

    log.configure(json=True)
    layout = _layout(args.devnet)
    port = console.DEFAULT_PORT if args.port is None else args.port

    def ready(server: console.ConsoleServer) -> None:
        print(f"psvn console: {server.url}/  (sign in with a token from `psvn console token "
              f"--devnet {args.devnet} --user NAME --role ROLE`)", flush=True)

    asyncio.run(console.serve_forever(layout, port=port, host=args.host, on_ready=ready))
    return 0


def _token(args: argparse.Namespace) -> int:
    from broker.auth import TokenAuthority

    tokens = TokenAuthority.for_pki(_layout(args.devnet).pki)
    sys.stdout.write(tokens.issue(args.user, args.role, ttl=args.ttl) + "\n")
    return 0
