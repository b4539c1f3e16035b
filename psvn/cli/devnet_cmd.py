"""``psvn devnet up|status|down``: a whole psvn network on this machine, state under .devnet/."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from psvn.cli.output import print_json

NEXT_STEPS = """\
psvn devnet is up: {backbone}, policy set v{policy}, gateways:
{gateways}

Try (with .venv/bin on your PATH, e.g. `source .venv/bin/activate`):
  psvn send --as gss:E06000043 --to ods:RYR --type fhir.r4.ServiceRequest \\
      --purpose direct-care --classification OFFICIAL-SENSITIVE --subject nhs:9434765919 examples/referral.json
  psvn inbox list --as ods:RYR
  psvn inbox get --as ods:RYR ID
  psvn inbox ack --as ods:RYR ID
  psvn status --as gss:E06000043 ID          (accepted -> sent -> delivered -> acknowledged)
  psvn bench                                 (end-to-end throughput vs raw nats-py)
Console (policy editor, approvals, history, overview): {console}
  sign in with a token:  psvn console token --user alice --role compliance-officer
                         psvn console token --user bob --role approver
  psvn devnet status | psvn devnet down
Logs (JSON lines): {root}/logs/   certificates: {root}/pki/   config: {root}/gateways/
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("devnet", help="run a whole local network (CA, nats-server, registry, policy, gateways)",
                       description="A complete psvn network on this machine for integrators: a network CA and "
                       "certificates, nats-server with JetStream, inbox streams, the registry, the signed "
                       "policy set, the console, and gateways for Brighton & Hove City Council (gss:E06000043), "
                       "University Hospitals Sussex NHS FT (ods:RYR), a GP practice (ods:G81001), the network "
                       "operator (psvn:operator, records consent) and a citizens' personal data store "
                       "(pds:brighton-citizens).")
    p.add_argument("--dir", default=".devnet", help="state folder (default .devnet)")
    s = p.add_subparsers(title="devnet commands", metavar="ACTION")
    up = s.add_parser("up", help="bring the network up (Ctrl-C stops it, unless --detach)")
    up.add_argument("--detach", action="store_true", help="return once everything is ready")
    up.add_argument("--base-port", type=int, default=os.environ.get("PSVN_BASE_PORT") or 14222,
                    help="nats on BASE, monitoring BASE+1, console BASE+8, gateways BASE+10..BASE+14 "
                    "(default: $PSVN_BASE_PORT, else 14222; `make devnet PORT=BASE` passes it); "
                    "with --cluster 3, node 1 keeps BASE and BASE+1 (routes on BASE+2) and "
                    "nodes 2 and 3 take BASE+20..BASE+22 and BASE+23..BASE+25 (client, monitoring, routes)")
    up.add_argument("--cluster", type=int, default=1, metavar="{1,3}",
                    help="nats-servers in the backbone (default 1). 3 runs it as production does: three "
                    "clustered nodes, every inbox, audit stream and KV bucket stored on all three (R3), each "
                    "gateway listing all three, so the network keeps working when any one node dies "
                    "(`kill -9` one by the PID `psvn devnet status` shows, and send again). Needs more "
                    "memory and CPU than one node; `make devnet` stays single-node")
    up.add_argument("--listen-host", default="127.0.0.1",
                    help="address the gateways' HTTPS listens on (0.0.0.0 only inside a container)")
    up.set_defaults(func=_up)
    st = s.add_parser("status", help="what is running")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)
    rv = s.add_parser("revoke", help="revoke (or --suspend) a member: registry and backbone shut it out")
    rv.add_argument("org", help="member address, e.g. ods:G81001")
    rv.add_argument("--suspend", action="store_true", help="mark it suspended rather than revoked")
    rv.set_defaults(func=_revoke)
    ri = s.add_parser("reinstate", help="let a revoked or suspended member back in")
    ri.add_argument("org")
    ri.set_defaults(func=_reinstate)
    ro = s.add_parser("rotate", help="new message keys (signing, HPKE) for a member, losing no mail",
                      description="Retire a member's signing and HPKE keys and issue fresh ones: its gateway "
                      "restarts holding both, then the registry lists the new keys. Mail sealed to the old "
                      "key still opens; the old signing key verifies what the backbone stamped before it "
                      "retired (10 minutes after the rotation). Retired keys stay in "
                      "<pki>/orgs/<member>/retired/.")
    ro.add_argument("org", help="member address, e.g. ods:RYR")
    ro.set_defaults(func=_rotate)
    dn = s.add_parser("down", help="stop everything devnet started")
    dn.set_defaults(func=_down)


def _layout(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from psvn.devnet import Layout

    return Layout(Path(args.dir))


def _up(args: argparse.Namespace) -> int:
    from psvn import devnet

    devnet.check_cluster(args.cluster)  # before anything starts or stops
    layout = _layout(args)
    state = devnet.read_state(layout)
    if devnet.running(state):
        pids = ", ".join(str(n.pid) for n in devnet.nats_nodes(state))  # type: ignore[arg-type]
        print(f"devnet already running (nats-server pid {pids}); `psvn devnet down` first", file=sys.stderr)
        return 1
    if state is not None:
        devnet.down(layout, state)
    print("starting psvn devnet ...", file=sys.stderr)
    state = devnet.up(layout, base_port=args.base_port, listen_host=args.listen_host, cluster=args.cluster)
    gws = "\n".join(f"  {g.org:<15} {g.name:<52} {g.url}  (system cert: {g.system})" for g in state.gateways.values())
    print(NEXT_STEPS.format(backbone=backbone(state), policy=state.policy_version, gateways=gws,
                            root=layout.root, console=state.console_url))
    if args.detach:
        return 0
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print("running; Ctrl-C stops all of it", file=sys.stderr)
    while not stop["now"] and devnet.running(state):
        time.sleep(0.2)
    devnet.down(layout, state)
    print("devnet stopped", file=sys.stderr)
    return 0


def backbone(state) -> str:  # type: ignore[no-untyped-def]
    """The banner's one line about the backbone: how many nodes, where, how replicated."""
    from psvn import devnet

    urls = devnet.nats_urls(state)
    if len(urls) == 1:
        return f"nats-server {urls[0]} (JetStream, mutual TLS)"
    return (f"{len(urls)} nats-servers, R{state.replicas} ({', '.join(urls)}; JetStream, mutual TLS; "
            f"streams and buckets survive losing any one node)")


def _status(args: argparse.Namespace) -> int:
    from psvn import devnet
    from psvn.core import procs
    layout = _layout(args)
    state = devnet.read_state(layout)
    if state is None:
        print("devnet is not running (no state file)", file=sys.stderr)
        return 1
    nodes = devnet.nats_nodes(state)
    report = {
        "nats": {"url": state.nats_url, "pid": state.nats_pid, "alive": procs.alive(state.nats_pid)},
        "nodes": [{"name": n.name, "url": n.url, "pid": n.pid, "alive": procs.alive(n.pid)} for n in nodes],
        "replicas": state.replicas,
        "policy_version": _enforced_version(layout, state),
        "console": {"url": state.console_url, "pid": state.console_pid,
                    "alive": bool(state.console_pid) and procs.alive(state.console_pid or 0)},
        "gateways": {g.org: {"name": g.name, "url": g.url, "pid": g.pid, "alive": procs.alive(g.pid)}
                     for g in state.gateways.values()},
    }
    if args.json:
        print_json(report)
    else:  # one line per process: name, url, "pid", pid, up/DOWN
        for n in report["nodes"]:  # type: ignore[attr-defined]
            label = "nats-server" if len(nodes) == 1 else n["name"]
            print(f"{label:<15} {n['url']}  pid {n['pid']}  {'up' if n['alive'] else 'DOWN'}")
        for org, g in report["gateways"].items():  # type: ignore[attr-defined]
            print(f"{org:<15} {g['url']}  pid {g['pid']}  {'up' if g['alive'] else 'DOWN'}  {g['name']}")
        c = report["console"]
        print(f"{'console':<15} {c['url']}  pid {c['pid']}  {'up' if c['alive'] else 'DOWN'}")  # type: ignore[index]
    ok = all([*(procs.alive(n.pid) for n in nodes), *(procs.alive(g.pid) for g in state.gateways.values()),
              bool(state.console_pid) and procs.alive(state.console_pid or 0)])
    return 0 if ok else 1


def _enforced_version(layout, state) -> int:  # type: ignore[no-untyped-def]
    """The version the network enforces now (a version published since `up` included); what
    `up` recorded if the backbone cannot be asked."""
    from psvn import devnet

    if devnet.running(state):
        try:
            return int(devnet.enforced_policy(layout).get("version") or state.policy_version)
        except Exception:  # status must answer whatever state the backbone is in
            pass
    return int(state.policy_version)


def _down(args: argparse.Namespace) -> int:
    from psvn import devnet

    if devnet.down(_layout(args)):
        print("devnet stopped")
        return 0
    print("devnet was not running", file=sys.stderr)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from psvn import devnet

    devnet.change_membership(_layout(args), args.org, revoke=True, status="suspended" if args.suspend else "revoked")
    print(f"{args.org} {'suspended' if args.suspend else 'revoked'}: refused by every gateway, off the backbone")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    import hashlib

    from psvn import devnet

    member = devnet.rotate_keys(_layout(args), args.org)
    print(f"{args.org}: new message keys in the registry (signing key sha256 "
          f"{hashlib.sha256(member.sign_key).hexdigest()[:16]}); "
          f"{len(member.retired_sign_keys)} retired signing key(s) still verify older mail")
    return 0


def _reinstate(args: argparse.Namespace) -> int:
    from psvn import devnet

    devnet.change_membership(_layout(args), args.org, revoke=False)
    print(f"{args.org} reinstated")
    return 0
