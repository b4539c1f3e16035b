"""``psvn registry history|recover|wire ORG``: see, repair and amend a member's registry entry on the devnet.

Every registry value is signed by the registry authority; gateways refuse anything else and keep
the entry they had. ``history`` shows what the bucket keeps for a member and what a gateway makes
of each value; ``recover`` puts back the newest verified one (no signing key is needed: the stored
bytes carry their signature), which clears the gateways' refusal. ``wire`` says which seal wire
version the member's gateway opens, so a network upgrades (or rolls back) one gateway at a time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from psvn.cli.output import print_json


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("registry", help="a member's signed registry entries: history, recover, wire")
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
    w = s.add_parser("wire", help="the seal wire version a member's gateway opens (senders seal to it so)",
                     description="Sign into ORG's registry entry the newest seal wire version its gateway "
                                 "opens: 1 (HPKE over each message) for a gateway on code from before data "
                                 "keys, 2 (a data key sealed with HPKE) once it is upgraded. Lower it before "
                                 "rolling a gateway back.")
    w.add_argument("org")
    w.add_argument("version", type=int, choices=[1, 2])
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=_wire)


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


def _wire(args: argparse.Namespace) -> int:
    from psvn import devnet

    member = devnet.set_registry_wire(devnet.Layout(Path(args.devnet)), args.org, args.version)
    if args.json:
        print_json({"org": member.address, "wire": member.wire, "status": member.status})
        return 0
    print(f"{member.address}: senders now seal to it in wire version {member.wire}")
    return 0
