"""``psvn policy propose | approve | publish | reject | proposals | history``: publishing the policy
set with two-person approval, against a running devnet's backbone.

These act as the broker (its NATS credentials and the policy authority key under the devnet
folder). ``--as`` names the person; the console, where each person signs in with their own token,
is where identities are checked. The two-person rule itself (approver != proposer) is enforced by
broker/policy_admin.py whichever way a change arrives.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

DEFAULT_DEVNET = ".devnet"


def add_commands(ps: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the workflow commands to the ``psvn policy`` group's subparsers."""
    from psvn.policies import bundle

    def devnet_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--devnet", default=DEFAULT_DEVNET, metavar="DIR",
                       help="devnet state folder (default .devnet)")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    pr = ps.add_parser("propose", help="propose a policy folder for approval (lint and tests must pass)",
                       description="Fold DIR into one document, lint it (errors block), run its tests.toml "
                       "(failures block) and record it as a proposal on the backbone. Its version "
                       "(policyset.toml) must be newer than the published one; --bump sets it for you.")
    pr.add_argument("dir", nargs="?", default=str(bundle.DEFAULT_DIR), metavar="DIR",
                    help="policy folder (default: the built-in default set)")
    pr.add_argument("--as", dest="as_", required=True, metavar="NAME", help="who proposes it")
    pr.add_argument("--note", default="", help="why, for the approver")
    pr.add_argument("--bump", action="store_true", help="use version = published + 1 instead of the folder's")
    pr.add_argument("-q", "--quiet", action="store_true",
                    help="print only the proposal id (for scripts: ID=$(psvn policy propose ... -q))")
    devnet_arg(pr)
    pr.set_defaults(func=lambda a: _do(a, _propose))

    ap = ps.add_parser("approve", help="approve a proposal (not your own: two-person rule)")
    ap.add_argument("id", metavar="ID", help="proposal id, e.g. p1a2b3c4d")
    ap.add_argument("--as", dest="as_", required=True, metavar="NAME", help="who approves (not the proposer)")
    devnet_arg(ap)
    ap.set_defaults(func=lambda a: _do(a, _approve))

    pu = ps.add_parser("publish", help="sign an approved proposal and publish it to every gateway",
                       description="Sign with the policy authority key and put the bundle in the policy "
                       "bucket; every gateway verifies it and hot-reloads. Refused if the proposal is not "
                       "approved, or was drafted on a version that is no longer the published one.")
    pu.add_argument("id", metavar="ID")
    pu.add_argument("--as", dest="as_", default="", metavar="NAME", help="who publishes (default: the approver)")
    devnet_arg(pu)
    pu.set_defaults(func=lambda a: _do(a, _publish))

    rj = ps.add_parser("reject", help="turn a proposal down (or withdraw your own)")
    rj.add_argument("id", metavar="ID")
    rj.add_argument("--as", dest="as_", required=True, metavar="NAME")
    rj.add_argument("--reason", default="")
    devnet_arg(rj)
    rj.set_defaults(func=lambda a: _do(a, _reject))

    ls = ps.add_parser("proposals", help="list proposals and their status")
    ls.add_argument("--status", choices=("proposed", "approved", "published", "rejected"))
    devnet_arg(ls)
    ls.set_defaults(func=lambda a: _do(a, _proposals))

    hi = ps.add_parser("history", help="published versions with proposer, approver and time",
                       description="Read back every version in the policy bucket, verified as a gateway "
                       "verifies it; versions gateways refuse are marked so.")
    devnet_arg(hi)
    hi.set_defaults(func=lambda a: _do(a, _history))


Action = Callable[[Any, argparse.Namespace], Awaitable[Any]]


def _do(args: argparse.Namespace, action: Action) -> int:
    import logging

    from psvn.core import log
    log.configure(json=False, level=logging.WARNING)  # stdout stays the command's answer (--json)
    return int(asyncio.run(_with_admin(args, action)) or 0)


async def _with_admin(args: argparse.Namespace, action: Action) -> int:
    from psvn import devnet
    from psvn.backbone.registry_view import RegistryView
    from psvn.broker import policy_admin
    from psvn.broker.policy_admin import PolicyAdmin
    from psvn.certs import keys
    from psvn.policies import bundle
    from psvn.policies.review import load_suite

    layout = devnet.Layout(Path(args.devnet))
    state = devnet.running_state(layout)
    nc = await devnet.broker_connect(layout, devnet.nats_urls(state), name="psvn policy cli")
    registry = RegistryView(policy_admin.load_public_key(layout.registry_pub))
    try:
        js = nc.jetstream()
        await registry.start(js)
        folder = Path(getattr(args, "dir", "") or bundle.DEFAULT_DIR)
        admin = await PolicyAdmin.open(
            js, authority_pub=policy_admin.load_public_key(layout.authority_pub),
            signing_key=keys.load_signing_key(layout.authority_key) if layout.authority_key.exists() else None,
            members=lambda: {a: m.type for a, m in registry.members.items()},
            suite=load_suite(folder) if (folder / "tests.toml").exists() else None)
        return int(await action(admin, args) or 0)
    finally:
        await registry.stop()
        await nc.close()


def _print(args: argparse.Namespace, value: Any, text: str) -> None:
    from psvn.cli.output import print_json

    if args.json:
        print_json(value)
    else:
        print(text)


async def _propose(admin: Any, args: argparse.Namespace) -> int:
    from psvn.core.errors import Code, PsvnError
    from psvn.policies import bundle

    folder = Path(args.dir)
    if not (folder / "policyset.toml").is_file():
        raise PsvnError(Code.NOT_FOUND, f"{args.dir}: not a policy folder (no policyset.toml)", field="DIR",
                        rule="policy-folder")
    doc = bundle.load_dir(folder)
    if args.bump:
        version = await admin.current_version() + 1
        doc["version"] = version
        doc["meta"] = {**doc.get("meta", {}), "version": version}
    rules = folder / "rules.toml"
    tests = folder / "tests.toml"
    p = await admin.propose(doc, args.as_, rules_text=rules.read_text() if rules.exists() else None,
                            tests_text=tests.read_text() if tests.exists() else None, note=args.note)
    if args.quiet and not args.json:
        print(p.id)
        return 0
    _print(args, p.summary(), f"proposed {p.id}: version {p.version} by {p.proposer} "
           f"(lint {p.lint_counts.get('warning', 0)} warning(s); examples {p.suite_passed} passed)\n"
           f"next: another person runs  psvn policy approve {p.id} --as NAME")
    return 0


async def _approve(admin: Any, args: argparse.Namespace) -> int:
    p = await admin.approve(args.id, args.as_)
    _print(args, p.summary(), f"approved {p.id}: version {p.version}, proposed by {p.proposer}, approved by "
           f"{p.approver}\nnext: psvn policy publish {p.id}")
    return 0


async def _publish(admin: Any, args: argparse.Namespace) -> int:
    p = await admin.publish(args.id, args.as_)
    _print(args, p.summary(), f"published version {p.version} ({p.id}; proposed by {p.proposer}, approved by "
           f"{p.approver}) at {p.published_at}; gateways reload it now (psvn devnet status)")
    return 0


async def _reject(admin: Any, args: argparse.Namespace) -> int:
    p = await admin.reject(args.id, args.as_, args.reason)
    _print(args, p.summary(), f"{p.id} rejected by {p.rejected_by}")
    return 0


async def _proposals(admin: Any, args: argparse.Namespace) -> int:
    items = await admin.proposals(status=args.status)
    lines = [f"{p.id}  v{p.version:<4} {p.status:<9} by {p.proposer:<16} {p.proposed_at}"
             + (f"  approved by {p.approver}" if p.approver else "") + (f"  {p.note}" if p.note else "")
             for p in items] or ["no proposals"]
    _print(args, [p.summary() for p in items], "\n".join(lines))
    return 0


async def _history(admin: Any, args: argparse.Namespace) -> int:
    items = await admin.history()
    lines = [f"v{h.version:<4} {'published' if h.accepted else 'REFUSED  '} proposer {h.proposer or '-':<14} "
             f"approver {h.approver or '-':<14} {h.published_at or '-'}"
             + (f"  ({h.proposal})" if h.proposal else "") + ("" if h.accepted else f"  {h.reason}")
             for h in items] or ["nothing published"]
    _print(args, items, "\n".join(lines))
    return 0
