"""``psvn registry history|recover ORG``: see and repair a member's registry entry on the devnet.

Every registry value is signed by the registry authority; gateways refuse anything else and keep
the entry they had. ``history`` shows what the bucket keeps for a member and what a gateway makes
of each value; ``recover`` puts back the newest verified one (no signing key is needed: the stored
bytes carry their signature), which clears the gateways' refusal.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from psvn.cli.output import print_json


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("registry", help="a member's signed registry entries: history, recover")
    p.add_argument("--devnet", default=".devnet", help="the devnet folder (default .devnet)")
    s = p.add_subparsers(title="registry commands", metavar="COMMAND")
    h = s.add_parser("history", help="every value kept for a member, as a gateway judges it")
    h.add_argument("org")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=_history)
    r = s.add_parser("recover", help="put back the newest verified entry from the bucket's history")
    r.add_argument("org")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_recover)


def _history(args: argparse.Namespace) -> int:
    from psvn import devnet

    rows = devnet.registry_history(devnet.Layout(Path(args.devnet)), args.org)
    if args.json:
        print_json([{"revision": rev, "verdict": verdict, "serial": e.serial if e else None,
                     "signed_at": e.signed_at if e else None,
                     "status": e.member.status if e and e.member else None} for rev, verdict, e in rows])
        return 0
    for rev, verdict, e in rows:
        detail = ""
        if e is not None:
            detail = f" serial {e.serial} signed {e.signed_at}" + (f" status {e.member.status}" if e.member else "")
        print(f"revision {rev}: {verdict}{detail}")
    if not rows:
        print(f"nothing kept for {args.org}")
    return 0


def _recover(args: argparse.Namespace) -> int:
    from psvn import devnet

    entry = devnet.recover_registry(devnet.Layout(Path(args.devnet)), args.org)
    if args.json:
        print_json({"org": args.org, "serial": entry.serial, "signed_at": entry.signed_at,
                    "tombstone": entry.tombstone})
        return 0
    what = "a tombstone: the member stays removed" if entry.member is None else f"status {entry.member.status}"
    print(f"{args.org}: put back the entry signed {entry.signed_at} (serial {entry.serial}, {what})")
    return 0
