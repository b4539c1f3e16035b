"""A whole psvn network on one machine: PKI, nats-server, backbone, registry, policy, gateways.

The same building blocks serve ``psvn devnet up`` (gateways as processes, state under
``.devnet/``) and the integration tests (gateways in the test's event loop, on free ports).
"""

from __future__ import annotations

import functools
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NATS

from psvn.backbone.connect import connect, patiently
from psvn.broker import accounts, provision, registry
from psvn.broker.natsconf import ServerConfig
from psvn.broker.server import NatsServer
from psvn.certs import keys, revocation, tls
from psvn.certs.ca import (
    CA,
    fingerprint,
    init_ca,
    issue_client,
    issue_gateway,
    issue_server,
    issue_system,
    load_ca,
    load_cert,
)
from psvn.core import config, procs
from psvn.core.addresses import token
from psvn.gateway import consent
from psvn.gateway.config import GatewayConfig, GatewaySection, KeysSection, NatsSection, TLSSection
from psvn.policies import bundle
from psvn.protocol import seal
from psvn.protocol.envelope import now_rfc3339
from psvn.protocol.subjects import BROKER_URI


@dataclass(frozen=True)
class MemberSpec:
    org: str
    name: str
    type: str
    system: str = "integration"  # the example local system that talks to this gateway
    post_quantum: bool = False  # publish a hybrid ML-KEM-768 + X25519 key: senders seal post-quantum
    # the newest seal wire version its gateway opens, as its registry entry will say (senders
    # seal to it so): 1 for a gateway still running code from before data keys, raised to 2
    # once it runs this code (and lowered again before rolling it back)
    wire: int = seal.WIRE_VERSION


EXAMPLE_MEMBERS: tuple[MemberSpec, ...] = (
    MemberSpec("gss:E06000043", "Brighton & Hove City Council", "council", "adult-social-care"),
    MemberSpec("ods:RYR", "University Hospitals Sussex NHS Foundation Trust", "nhs-trust", "pas"),
    MemberSpec("ods:G81001", "The Lawns Surgery (GP practice)", "gp", "clinical-system"),
)
# The network operator's own gateway (records consent network-wide) and an example personal
# data store acting for citizens: with these the devnet shows consent end to end.
OPERATOR_MEMBER = MemberSpec("psvn:operator", "psvn network operator", "operator", "console")
PDS_MEMBER = MemberSpec("pds:brighton-citizens", "Brighton citizens' personal data store (example)", "pds",
                        "consent-app")
DEVNET_MEMBERS: tuple[MemberSpec, ...] = (*EXAMPLE_MEMBERS, OPERATOR_MEMBER, PDS_MEMBER)


@dataclass
class Layout:
    """Where everything lives under one root folder."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    def org_dir(self, org: str) -> Path:
        return self.pki / "orgs" / token(org)

    def system_cert(self, org: str, system: str) -> tuple[Path, Path]:
        d = self.org_dir(org) / "systems"
        return d / f"{system}.crt", d / f"{system}.key"

    @property
    def ca(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def authority_key(self) -> Path:
        return self.pki / "policy-authority.key"

    @property
    def authority_pub(self) -> Path:
        return self.pki / "policy-authority.pub"

    @property
    def registry_key(self) -> Path:
        """The network operator's registry authority: signs every registry entry (0600)."""
        return self.pki / "registry-authority.key"

    @property
    def registry_pub(self) -> Path:
        """Its public key: every gateway's trust anchor for the registry."""
        return self.pki / "registry-authority.pub"

    @property
    def broker_cert(self) -> tuple[Path, Path]:
        return self.pki / "broker" / "broker.crt", self.pki / "broker" / "broker.key"

    def nats_creds(self, org: str) -> Path:
        """The member gateway's backbone user (its account's JWT and nkey seed), 0600."""
        return self.org_dir(org) / "nats.creds"

    def gateway_config_path(self, org: str) -> Path:
        return self.root / "gateways" / f"{token(org)}.toml"


def make_pki(layout: Layout, members: tuple[MemberSpec, ...] | list[MemberSpec]) -> None:
    ca = init_ca(layout.pki, force=True)
    issue_server(ca, "nats", layout.pki / "nats")
    issue_client(ca, BROKER_URI, "broker", layout.pki / "broker")
    authority = keys.new_signing_key(layout.authority_key)
    layout.authority_pub.write_bytes(authority.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    make_registry_authority(layout)
    for m in members:
        make_pki_member(layout, m, ca=ca)


def make_pki_member(layout: Layout, m: MemberSpec, *, ca: CA | None = None) -> None:
    """One member's certificates, message keys and backbone user (a member joining later too)."""
    ca = ca or load_ca(layout.pki)
    issue_gateway(ca, m.org, layout.org_dir(m.org), post_quantum=m.post_quantum)
    issue_system(ca, m.org, m.system, layout.org_dir(m.org) / "systems")
    accounts.BackboneAccounts(layout.pki).write_member_creds(m.org, layout.nats_creds(m.org))


def make_registry_authority(layout: Layout) -> Ed25519PrivateKey:
    """The registry authority's key pair beside the policy authority's (the key 0600)."""
    key = keys.new_signing_key(layout.registry_key)
    layout.registry_pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def registry_signer(layout: Layout) -> Ed25519PrivateKey:
    return keys.load_signing_key(layout.registry_key)


def server_config(layout: Layout, members: list[str], *, port: int, monitor_port: int) -> ServerConfig:
    backbone = accounts.BackboneAccounts(layout.pki)
    return ServerConfig(name="psvn-devnet", port=port, monitor_port=monitor_port,
                        store_dir=layout.root / "nats" / "store", cert=layout.pki / "nats" / "nats.crt",
                        key=layout.pki / "nats" / "nats.key", ca=layout.ca, operator_jwt=backbone.operator_jwt(),
                        system_account=backbone.system_account, resolver_dir=layout.root / "nats" / "accounts",
                        preload=backbone.preload(members))


def nats_server(layout: Layout, members: list[str], *, port: int, monitor_port: int) -> NatsServer:
    return NatsServer(server_config(layout, members, port=port, monitor_port=monitor_port),
                      conf_path=layout.root / "nats" / "nats.conf", log_path=layout.root / "logs" / "nats.log")


def gateway_config(layout: Layout, m: MemberSpec, *, nats_url: str | list[str], port: int,
                   listen_host: str = "127.0.0.1", replicas: int = 1) -> GatewayConfig:
    """``nats_url``: every node of the backbone (a gateway fails over between them); ``replicas``
    of its state bucket, 3 on a 3-node backbone like the network's own streams."""
    d = layout.org_dir(m.org)
    return GatewayConfig(
        gateway=GatewaySection(org=m.org, name=m.name, listen_host=listen_host, listen_port=port),
        tls=TLSSection(cert=str(d / "https.crt"), key=str(d / "https.key"), ca=str(layout.ca),
                       crl=str(layout.pki / "ca.crl")),
        nats=NatsSection(servers=list(nats_url) if isinstance(nats_url, list) else [nats_url],
                         cert=str(d / "nats.crt"), key=str(d / "nats.key"), ca=str(layout.ca),
                         creds=str(layout.nats_creds(m.org)), replicas=replicas),
        keys=KeysSection(signing=str(d / "sign.key"), hpke=str(d / "hpke.key"),
                         policy_authority=str(layout.authority_pub), registry_authority=str(layout.registry_pub),
                         hpke_hybrid=str(d / "hpke-hybrid.key") if m.post_quantum else None,
                         retired_dir=str(d / keys.RETIRED_DIR)),
    )


def broker_tls(layout: Layout) -> ssl.SSLContext:
    cert, key = layout.broker_cert
    return tls.client_context(layout.ca, cert, key)


async def broker_connect(layout: Layout, url: str | list[str], *, name: str = "psvn-broker",
                         **kwargs: Any) -> NATS:
    """The broker's connection: its certificate and its user in the network account."""
    creds = str(accounts.BackboneAccounts(layout.pki).broker_creds)
    return await connect(url, broker_tls(layout), name=name, user_credentials=creds, **kwargs)


async def member_connect(layout: Layout, url: str | list[str], org: str, *, name: str,
                         **kwargs: Any) -> NATS:
    """A member's own backbone user (its gateway's certificate and ``.creds``): sees only what
    its account holds and imports."""
    d = layout.org_dir(org)
    ctx = tls.client_context(layout.ca, d / "nats.crt", d / "nats.key")
    return await connect(url, ctx, name=name, user_credentials=str(layout.nats_creds(org)), **kwargs)


async def system_connect(layout: Layout, url: str | list[str]) -> NATS:
    """The operator's system user: pushes account JWTs (members added, revoked) to the resolver."""
    return await connect(url, broker_tls(layout), name="psvn-broker accounts",
                                   user_credentials=str(accounts.BackboneAccounts(layout.pki).system_creds))


async def push_accounts(layout: Layout, url: str | list[str], members: list[str]) -> None:
    nc = await system_connect(layout, url)
    try:
        await accounts.push_all(nc, accounts.BackboneAccounts(layout.pki), members)
    finally:
        await nc.close()


def public_message_keys(d: Path) -> tuple[bytes, bytes, str]:
    """(signing key, HPKE key, HPKE suite) in registry form, from a gateway's key folder."""
    hybrid_path = d / "hpke-hybrid.key"
    if hybrid_path.exists():
        hpke_key, suite = keys.hybrid_public_raw(*keys.load_hybrid_hpke_key(hybrid_path)), seal.HYBRID_SUITE
    else:
        hpke_key, suite = keys.raw_public(keys.load_hpke_key(d / "hpke.key")), seal.DEFAULT_SUITE
    return keys.raw_public(keys.load_signing_key(d / "sign.key")), hpke_key, suite


def member_record(layout: Layout, m: MemberSpec, *, gateway_url: str = "") -> registry.Member:
    d = layout.org_dir(m.org)
    sign_key, hpke_key, suite = public_message_keys(d)
    return registry.Member(
        address=m.org, name=m.name, type=m.type, sign_key=sign_key, hpke_key=hpke_key, hpke_suite=suite,
        cert_fingerprint=fingerprint(load_cert(d / "nats.crt")),
        gateway_url=gateway_url, joined=now_rfc3339(), wire=m.wire)


async def provision_backbone(layout: Layout, nats_url: str | list[str], members: list[MemberSpec], *,
                             gateway_urls: dict[str, str] | None = None,
                             policy_dir: Path = bundle.DEFAULT_DIR, replicas: int = 1) -> int:
    """Streams, buckets, registry entries and the signed policy set. Returns the policy version.

    ``replicas`` is 1 on a laptop and 3 on a 3-node cluster (every stream and bucket survives a node).
    """
    await push_accounts(layout, nats_url, [m.org for m in members])
    nc = await broker_connect(layout, nats_url, name="psvn-broker provisioning")
    try:
        js = nc.jetstream()
        await provision.provision_network(js, replicas=replicas)
        await consent.migrate_legacy(js)  # records from before subject-derived keys (idempotent)
        kv = await registry.ensure_bucket(js, replicas=replicas)
        signer = registry_signer(layout)
        for m in members:
            await provision.provision_member(js, m.org, replicas=replicas)
            record = member_record(layout, m, gateway_url=(gateway_urls or {}).get(m.org, ""))
            await patiently(functools.partial(registry.upsert_member, kv, record, signer),
                                      what=f"registry entry {m.org}")
        doc = bundle.load_dir(policy_dir)
        signed = bundle.sign(doc, keys.load_signing_key(layout.authority_key), proposer="devnet", approver="devnet",
                             published_at=now_rfc3339())
        try:
            await patiently(lambda: provision.publish_policy(js, signed), what="policy set")
        except Exception as exc:
            from psvn.core.errors import Code, PsvnError

            if not (isinstance(exc, PsvnError) and exc.code is Code.POLICY_VERSION_REGRESSION):
                raise
            # a newer version was published on this network (e.g. v2 through the console): the
            # gateways enforce that one, and so does the banner
            from psvn.broker.policy_admin import enforced, load_public_key

            cur = await enforced(js, load_public_key(layout.authority_pub))
            if cur is not None:
                return cur.signed.version
        return signed.version
    finally:
        await nc.drain()


# -- the `psvn devnet` processes --------------------------------------------------------------
DEFAULT_ROOT = Path(".devnet")
BASE_PORT = 14222
# The port layout from the base port B: nats-server B (monitoring B+1), console B+8, gateways
# B+10.. (one per member). A 3-node backbone keeps node 1 on B and B+1 (its route port B+2) and
# puts nodes 2 and 3 after the gateways: B+20..B+22 and B+23..B+25 (client, monitoring, route).
CONSOLE_OFFSET = 8
GATEWAY_OFFSET = 10
EXTRA_NODES_OFFSET = 20
CLUSTER_SIZES = (1, 3)  # one node on a laptop, three (R3) as in production: two would survive no loss
CLUSTER_NAME = "psvn-devnet"


def node_ports(base_port: int, cluster: int) -> list[tuple[int, int, int]]:
    """(client, monitoring, route) ports of each nats-server node (``cluster`` of them)."""
    first = (base_port, base_port + 1, base_port + 2)
    return [first, *[(base_port + EXTRA_NODES_OFFSET + 3 * i, base_port + EXTRA_NODES_OFFSET + 3 * i + 1,
                      base_port + EXTRA_NODES_OFFSET + 3 * i + 2) for i in range(cluster - 1)]]


def port_span(members: int = len(DEVNET_MEMBERS), cluster: int = 1) -> int:
    """How many consecutive ports from the base port a devnet of this shape uses."""
    return 1 + max(GATEWAY_OFFSET + members - 1, CONSOLE_OFFSET,
                   *(p for ports in node_ports(0, cluster) for p in ports))


def devnet_ports(base_port: int, members: tuple[MemberSpec, ...] | list[MemberSpec] = DEVNET_MEMBERS,
                 cluster: int = 1) -> list[tuple[int, str]]:
    """Every port a devnet of this shape listens on, with what listens there."""
    ports: list[tuple[int, str]] = []
    for n, (client, monitor, route) in enumerate(node_ports(base_port, cluster), start=1):
        name = "nats-server" if cluster == 1 else f"nats-server node {n}"
        ports += [(client, name), (monitor, f"{name} monitoring")]
        if cluster > 1:
            ports.append((route, f"{name} routes"))
    ports.append((base_port + CONSOLE_OFFSET, "console"))
    ports += [(base_port + GATEWAY_OFFSET + i, f"gateway {m.org}") for i, m in enumerate(members)]
    return ports


def check_ports_free(base_port: int, members: tuple[MemberSpec, ...] | list[MemberSpec] = DEVNET_MEMBERS,
                     cluster: int = 1) -> None:
    """Before anything starts: a clear error naming the first port in use (another devnet, a
    console, anything), instead of a half-started network talking to someone else's server."""
    from psvn.core.errors import Code, PsvnError

    if not 1024 <= base_port <= 65535 - port_span(len(members), cluster):
        raise PsvnError(Code.BAD_REQUEST, f"--base-port {base_port} is out of range: the devnet uses "
                        f"{port_span(len(members), cluster)} ports from it, between 1024 and 65535",
                        field="--base-port", rule="port-range")
    for port, what in devnet_ports(base_port, members, cluster):
        if procs.port_taken(port):
            raise PsvnError(Code.BAD_REQUEST, f"port {port} (the {what}, --base-port {base_port} + "
                            f"{port - base_port}) is already in use: stop what holds it, or choose another "
                            "--base-port (make devnet PORT=...)", field="--base-port", rule="port-free")


def check_cluster(cluster: int, members: int = len(DEVNET_MEMBERS)) -> None:
    """A clear error for a backbone size the devnet does not run (or ports that would collide)."""
    from psvn.core.errors import Code, PsvnError

    if cluster not in CLUSTER_SIZES:
        raise PsvnError(Code.BAD_REQUEST, f"--cluster must be 1 (one nats-server) or 3 (three, every stream "
                        f"and bucket R3), not {cluster}: two nodes would survive no loss", field="--cluster",
                        rule="cluster-size")
    if cluster > 1 and GATEWAY_OFFSET + members > EXTRA_NODES_OFFSET:
        raise PsvnError(Code.BAD_REQUEST, f"a clustered devnet has ports for {EXTRA_NODES_OFFSET - GATEWAY_OFFSET} "
                        f"gateways, not {members}", field="--cluster", rule="cluster-ports")


class NatsNode(msgspec.Struct, kw_only=True):
    """One nats-server the devnet started."""

    name: str
    url: str
    pid: int
    monitor_port: int


class DevnetState(msgspec.Struct, kw_only=True):
    """What `devnet up` started, so `status` and `down` act on exactly those PIDs.

    ``nats_url``/``nats_pid``/``monitor_port`` are node 1's (a state file from before clusters
    has only these); ``nodes`` lists every node. Read both through ``nats_nodes``/``nats_urls``."""

    root: str
    nats_url: str
    nats_pid: int
    monitor_port: int
    gateways: dict[str, GatewayProcess]
    policy_version: int = 0
    console_pid: int | None = None
    console_url: str = ""
    revoked: list[str] = msgspec.field(default_factory=list)
    nodes: list[NatsNode] = msgspec.field(default_factory=list)
    replicas: int = 1  # of every stream and bucket: 3 on a 3-node backbone


class GatewayProcess(msgspec.Struct, kw_only=True):
    org: str
    name: str
    type: str
    system: str
    url: str
    pid: int
    config: str


def state_path(layout: Layout) -> Path:
    return layout.root / "state.json"


def read_state(layout: Layout) -> DevnetState | None:
    p = state_path(layout)
    if not p.exists():
        return None
    try:
        return msgspec.json.decode(p.read_bytes(), type=DevnetState)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        from psvn.core.errors import Code, PsvnError

        raise PsvnError(Code.CONFIG_INVALID, f"{p} is not a devnet state file ({exc}): if no devnet runs there, "
                        f"remove it and run `psvn devnet --dir {layout.root} up --detach`", field=str(p),
                        rule="devnet-state") from None


def nats_nodes(state: DevnetState) -> list[NatsNode]:
    """Every nats-server of the devnet (a state file from before clusters names only one)."""
    return list(state.nodes) or [NatsNode(name=CLUSTER_NAME, url=state.nats_url, pid=state.nats_pid,
                                          monitor_port=state.monitor_port)]


def nats_urls(state: DevnetState) -> list[str]:
    """Where to connect to the devnet's backbone: every node, so a client that finds one node
    down (killed, restarting) connects to another, and fails over later the same way."""
    return [n.url for n in nats_nodes(state)]


def running(state: DevnetState | None) -> bool:
    """Any node still runs: a 3-node backbone that has lost one still serves."""
    return state is not None and any(procs.alive(n.pid) for n in nats_nodes(state))


def write_state(layout: Layout, state: DevnetState) -> None:
    state_path(layout).write_bytes(msgspec.json.format(msgspec.json.encode(state)))


def _wait_gateway(layout: Layout, g: GatewayProcess, process: subprocess.Popen[bytes], timeout: float, *,
                  path: str = "/healthz", interval: float = 0.1) -> None:
    import urllib.request

    cert, key = layout.system_cert(g.org, g.system)
    ctx = tls.client_context(layout.ca, cert, key)
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway {g.org} exited with code {process.returncode}; see "
                               f"{layout.root / 'logs' / (token(g.org) + '.log')}")
        try:
            with urllib.request.urlopen(g.url + path, context=ctx, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise RuntimeError(f"gateway {g.org} not healthy after {timeout}s: {last}")


def spawn_gateway(layout: Layout, g: GatewayProcess) -> subprocess.Popen[bytes]:
    """Start a member's gateway process the way ``up`` does: its own config, its log appended to."""
    import sys

    return procs.spawn([sys.executable, "-m", "psvn.gateway", "--config", g.config],
                       log=layout.root / "logs" / f"{token(g.org)}.log", env=server_env())


def server_env() -> dict[str, str]:
    """The environment of the devnet's own servers: their logs keep the traceback of anything
    unforeseen (``PSVN_DEBUG``), which a person at the command line sees as one line."""
    import os

    return {**os.environ, "PSVN_DEBUG": "1"}


@dataclass(frozen=True)
class Restarted:
    """A gateway stopped and started again by ``restart_gateway``."""

    org: str
    old_pid: int
    pid: int
    stop_seconds: float  # SIGTERM (or SIGKILL) until the old process was gone
    ready_seconds: float  # the new process started until its /readyz answered 200


def _member_gateway(state: DevnetState, org: str) -> GatewayProcess:
    from psvn.core.errors import Code, PsvnError

    g = state.gateways.get(org)
    if g is None:
        raise PsvnError(Code.UNKNOWN_RECIPIENT, f"{org!r} is not a devnet member", field="org", rule="devnet-member")
    return g


def stop_gateway(layout: Layout, org: str, *, kill: bool = False, timeout: float = 10.0) -> float:
    """Stop a devnet member's gateway by its recorded PID: SIGTERM (SIGKILL after ``timeout``), or
    with ``kill`` SIGKILL at once, a crash in which nothing of the gateway's own clean-up runs.
    Returns the seconds until the process was gone."""
    g = _member_gateway(running_state(layout), org)
    t0 = time.monotonic()
    if kill:
        procs.kill(g.pid, timeout=timeout)
    else:
        procs.stop(g.pid, timeout=timeout)
    return round(time.monotonic() - t0, 3)


def start_gateway(layout: Layout, org: str, *, wait: bool = True, timeout: float = 60.0,
                  interval: float = 0.1) -> tuple[subprocess.Popen[bytes], float]:
    """Start a stopped member's gateway again as ``up`` does and record its new PID; with ``wait``,
    until its ``/readyz`` answers 200 (polled every ``interval`` s; RuntimeError if it exits or is
    not ready in ``timeout``). Returns the process and the seconds from its start to ready (0.0
    without ``wait``)."""
    state = running_state(layout)
    g = _member_gateway(state, org)
    if g.pid and procs.alive(g.pid):
        raise RuntimeError(f"gateway {org} still runs (pid {g.pid}): stop it first")
    t0 = time.monotonic()
    proc = spawn_gateway(layout, g)
    g.pid = proc.pid
    write_state(layout, state)
    if wait:
        _wait_gateway(layout, g, proc, timeout, path="/readyz", interval=interval)
    return proc, round(time.monotonic() - t0, 3) if wait else 0.0


def restart_gateway(layout: Layout, org: str, *, kill: bool = False, timeout: float = 60.0,
                    interval: float = 0.02) -> Restarted:
    """Stop a devnet member's gateway (``stop_gateway``: SIGTERM, or SIGKILL with ``kill``), start it
    again as ``up`` does and wait until ``/readyz`` answers 200 (``start_gateway``). Raises
    RuntimeError if it exits or is not ready in ``timeout``; the state then names the new PID,
    so ``down`` still finds it."""
    old = _member_gateway(running_state(layout), org).pid
    stopped = stop_gateway(layout, org, kill=kill, timeout=min(timeout, 10.0))
    proc, ready = start_gateway(layout, org, timeout=timeout, interval=interval)
    return Restarted(org=org, old_pid=old, pid=proc.pid, stop_seconds=stopped, ready_seconds=ready)


def start_backbone(layout: Layout, members: list[str], *, base_port: int, cluster: int = 1,
                   timeout: float = 30.0) -> list[NatsServer]:
    """Start the devnet's nats-server(s) and wait until JetStream serves: one node on the base
    port, or three clustered nodes (``node_ports``) with a JetStream meta leader. On failure the
    nodes started are stopped; their stores (the devnet's mail) are kept."""
    if cluster == 1:
        server = nats_server(layout, members, port=base_port, monitor_port=base_port + 1)
        server.start(timeout=timeout)
        return [server]
    from psvn.broker import cluster as bc

    nodes = bc.cluster_nodes(layout.root / "nats", cert=layout.pki / "nats" / "nats.crt",
                             key=layout.pki / "nats" / "nats.key", ca=layout.ca,
                             backbone=accounts.BackboneAccounts(layout.pki), members=members, size=cluster,
                             name=CLUSTER_NAME, ports=node_ports(base_port, cluster), log_dir=layout.root / "logs")
    return bc.start_nodes(bc.Cluster(name=CLUSTER_NAME, nodes=nodes), timeout=timeout).nodes


def up(layout: Layout, members: tuple[MemberSpec, ...] = DEVNET_MEMBERS, *, base_port: int = BASE_PORT,
       timeout: float = 60.0, listen_host: str = "127.0.0.1", cluster: int = 1) -> DevnetState:
    """Bring up nats-server(s) and one gateway process per member; idempotent PKI and backbone.

    ``cluster=3`` runs the backbone as production does: three nodes, every stream and bucket R3
    (the gateways' own state buckets too), each gateway listing all three nodes."""
    import asyncio
    import sys

    check_cluster(cluster, len(members))
    check_ports_free(base_port, members, cluster)
    layout.root.mkdir(parents=True, exist_ok=True)
    if not (layout.pki / "ca.crt").exists():
        make_pki(layout, members)
    else:
        revocation.refresh_crl(load_ca(layout.pki))
        if not layout.registry_key.exists():  # a devnet made before registry entries were signed
            make_registry_authority(layout)
    servers = start_backbone(layout, [m.org for m in members], base_port=base_port, cluster=cluster,
                             timeout=min(timeout, 30.0))
    nodes = [NatsNode(name=n.config.name, url=n.url, pid=n.pid or 0, monitor_port=n.config.monitor_port)
             for n in servers]
    replicas = 3 if cluster > 1 else 1
    gateways: dict[str, GatewayProcess] = {}
    state = DevnetState(root=str(layout.root), nats_url=nodes[0].url, nats_pid=nodes[0].pid,
                        monitor_port=nodes[0].monitor_port, gateways=gateways, nodes=nodes, replicas=replicas)
    try:
        write_state(layout, state)  # from here on `down` finds every PID, whatever fails next
        node_urls = nats_urls(state)
        urls = {m.org: f"https://localhost:{base_port + GATEWAY_OFFSET + i}" for i, m in enumerate(members)}
        state.policy_version = asyncio.run(provision_backbone(layout, node_urls, list(members), gateway_urls=urls,
                                                              replicas=replicas))
        started: list[tuple[GatewayProcess, subprocess.Popen[bytes]]] = []
        for i, m in enumerate(members):
            cfg = gateway_config(layout, m, nats_url=node_urls, port=base_port + GATEWAY_OFFSET + i,
                                 listen_host=listen_host, replicas=replicas)
            path = layout.gateway_config_path(m.org)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(config.dump(cfg))
            g = GatewayProcess(org=m.org, name=m.name, type=m.type, system=m.system, url=urls[m.org],
                               pid=0, config=str(path))
            proc = spawn_gateway(layout, g)
            g.pid = proc.pid
            gateways[m.org] = g
            started.append((g, proc))
            write_state(layout, state)
        console_port = base_port + CONSOLE_OFFSET
        console = procs.spawn([sys.executable, "-m", "psvn.cli.main", "console", "run", "--devnet", str(layout.root),
                               "--port", str(console_port)], log=layout.root / "logs" / "console.log",
                              env=server_env())
        state.console_pid, state.console_url = console.pid, f"http://127.0.0.1:{console_port}/"
        write_state(layout, state)
        for g, proc in started:
            _wait_gateway(layout, g, proc, timeout)
        procs.wait_http_ok(state.console_url, timeout=timeout, process=console)
    except BaseException:
        down(layout, state)
        raise
    return state


def down(layout: Layout, state: DevnetState | None = None) -> bool:
    """Stop exactly the processes `up` started (by recorded PID): gateways and console first,
    then every nats-server node at once. Returns False if none ran."""
    state = state or read_state(layout)
    if state is None:
        return False
    procs.stop_all([g.pid for g in state.gateways.values()] + ([state.console_pid] if state.console_pid else []))
    procs.stop_all([n.pid for n in nats_nodes(state) if n.pid])
    p = state_path(layout)
    if p.exists():
        p.unlink()
    return True


def revoke_backbone_users(layout: Layout, org: str) -> bool:
    """Revoke every backbone user a member holds now (e.g. its certificate was revoked): pushed to
    the running devnet's resolver, which closes its live connections; False if no devnet runs here.
    The member needs a new certificate and a new ``.creds`` file to come back."""
    import asyncio

    state = read_state(layout)
    if not running(state):
        return False
    assert state is not None
    backbone = accounts.BackboneAccounts(layout.pki)
    backbone.revoke_users(org)

    async def push() -> None:
        nc = await system_connect(layout, nats_urls(state))
        try:
            await accounts.push(nc, backbone.member_jwt(org))
        finally:
            await nc.close()

    asyncio.run(push())
    return True


def enforced_policy(layout: Layout) -> dict[str, Any]:
    """The policy document the running devnet enforces (verified against the authority key)."""
    import asyncio

    from psvn.broker.policy_admin import enforced, load_public_key
    from psvn.core.errors import Code, PsvnError

    state = running_state(layout)

    async def fetch() -> dict[str, Any]:
        nc = await broker_connect(layout, nats_urls(state), name="psvn policy reader")
        try:
            cur = await enforced(nc.jetstream(), load_public_key(layout.authority_pub))
        finally:
            await nc.close()
        if cur is None:
            raise PsvnError(Code.BACKBONE_UNAVAILABLE, "the network has no policy set yet", rule="policy-ready")
        return cur.document

    return asyncio.run(fetch())


def registry_member_types(layout: Layout) -> dict[str, str]:
    """Every member of the running devnet's registry with its type (verified entries), as the
    console's lint sees them."""
    import asyncio

    from psvn.backbone.registry_view import RegistryView
    from psvn.broker.policy_admin import load_public_key

    state = running_state(layout)

    async def read() -> dict[str, str]:
        nc = await broker_connect(layout, nats_urls(state), name="psvn policy lint")
        view = RegistryView(load_public_key(layout.registry_pub))
        try:
            await view.start(nc.jetstream())
            return {a: m.type for a, m in view.members.items()}
        finally:
            await view.stop()
            await nc.close()

    return asyncio.run(read())


def enforced_policy_and_types(layout: Layout, orgs: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """What the running devnet decides with: the policy document it enforces (verified) and the
    member type the registry records for each of ``orgs`` (verified entries; a clear error naming
    an address the registry does not hold)."""
    import asyncio

    from psvn.broker.policy_admin import enforced, load_public_key
    from psvn.core.errors import Code, PsvnError

    state = running_state(layout)

    async def fetch() -> tuple[dict[str, Any], dict[str, str]]:
        nc = await broker_connect(layout, nats_urls(state), name="psvn policy explain")
        try:
            js = nc.jetstream()
            cur = await enforced(js, load_public_key(layout.authority_pub))
            if cur is None:
                raise PsvnError(Code.BACKBONE_UNAVAILABLE, "the network has no policy set yet", rule="policy-ready")
            kv = await js.key_value(registry.REGISTRY_BUCKET)
            authority = load_public_key(layout.registry_pub)
            types: dict[str, str] = {}
            for org in orgs:
                stored = await registry.read_entry(kv, authority, org)
                if stored is None or stored.entry.member is None:
                    raise PsvnError(Code.UNKNOWN_RECIPIENT, f"{org!r} is not a member in the registry of the "
                                    f"devnet under {layout.root}", field=org, rule="registry-member")
                types[org] = stored.entry.member.type
            return cur.document, types
        finally:
            await nc.close()

    return asyncio.run(fetch())


def rotate_keys(layout: Layout, org: str, *, timeout: float = 60.0) -> registry.Member:
    """`psvn devnet rotate ORG`: new message keys for a member, with no message lost or refused.

    1. new keys on disk, the old ones kept in ``retired/``; 2. the gateway restarts holding both
    (it opens mail sealed to either, and signs with whichever key the registry lists); 3. the
    registry lists the new keys: senders seal to the new key, the gateway signs with it, and the
    old signing key still verifies what the backbone stamped before it retired (ROTATION_GRACE)."""

    from psvn.core.errors import Code, PsvnError

    state = running_state(layout)
    g = state.gateways.get(org)
    if g is None:
        raise PsvnError(Code.UNKNOWN_RECIPIENT, f"{org!r} is not a devnet member", field="org", rule="devnet-member")
    keys.rotate_gateway_keys(layout.org_dir(org))
    procs.stop(g.pid)
    proc = spawn_gateway(layout, g)
    g.pid = proc.pid
    write_state(layout, state)
    _wait_gateway(layout, g, proc, timeout)
    sign_key, hpke_key, suite = public_message_keys(layout.org_dir(org))
    return _on_registry(layout, state, "psvn-broker key rotation", lambda kv: registry.rotate_member_keys(
        kv, org, signer=registry_signer(layout), sign_key=sign_key, hpke_key=hpke_key, hpke_suite=suite))


def change_membership(layout: Layout, org: str, *, revoke: bool, status: str = "revoked") -> None:
    """`psvn devnet revoke|reinstate ORG`: registry status and the backbone's user list together."""
    import asyncio

    from psvn.broker import membership
    from psvn.core.errors import Code, PsvnError

    state = running_state(layout)
    if org not in state.gateways:
        raise PsvnError(Code.UNKNOWN_RECIPIENT, f"{org!r} is not a devnet member", field="org", rule="devnet-member")
    revoked = set(state.revoked) | {org} if revoke else set(state.revoked) - {org}
    backbone = accounts.BackboneAccounts(layout.pki)

    async def run() -> None:
        nc = await broker_connect(layout, nats_urls(state), name="psvn-broker membership")
        system = await system_connect(layout, nats_urls(state))
        try:
            js = nc.jetstream()
            if revoke:
                await membership.revoke(js, system, backbone, org, signer=registry_signer(layout),
                                        status=status)  # type: ignore[arg-type]
            else:
                await membership.reinstate(js, system, backbone, org, signer=registry_signer(layout))
        finally:
            await nc.close()
            await system.close()

    asyncio.run(run())
    state.revoked = sorted(revoked)
    write_state(layout, state)


def running_state(layout: Layout) -> DevnetState:
    """The running devnet's state, or a clear error naming ``--devnet`` (never a traceback)."""
    from psvn.core.errors import Code, PsvnError

    state = read_state(layout)
    if not running(state):
        raise PsvnError(Code.BACKBONE_UNAVAILABLE, f"no devnet is running under {layout.root}: run "
                        "`psvn devnet up --detach`", field="--devnet", rule="devnet-running")
    assert state is not None
    return state


def registry_history(layout: Layout, org: str) -> list[tuple[int, str, registry.RegistryEntry | None]]:
    """`psvn registry history ORG`: every value the registry keeps for a member, oldest first, as
    (revision, verdict, entry): what a gateway would do with each."""
    import asyncio

    from psvn.backbone.kvwatch import read_history
    from psvn.certs.keys import load_signing_key
    from psvn.protocol.subjects import REGISTRY_BUCKET

    state = running_state(layout)
    authority = load_signing_key(layout.registry_key).public_key()

    async def read() -> list[tuple[int, str, registry.RegistryEntry | None]]:
        nc = await broker_connect(layout, nats_urls(state), name="psvn registry history")
        try:
            k = registry.key_for(org)
            out: list[tuple[int, str, registry.RegistryEntry | None]] = []
            for stored in await read_history(nc.jetstream(), REGISTRY_BUCKET, k):
                try:
                    entry = registry.verify_entry(authority, k, stored.value)
                except registry.EntryRefused as exc:
                    out.append((stored.revision, f"refused: {exc.reason}", None))
                    continue
                out.append((stored.revision, "tombstone" if entry.tombstone else "verified", entry))
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


_T = TypeVar("_T")


def _on_registry(layout: Layout, state: DevnetState, name: str,
                 act: Callable[[Any], Awaitable[_T]]) -> _T:
    """``act`` on the running devnet's registry bucket, as the broker (one connection, closed after)."""
    import asyncio

    async def run() -> _T:
        nc = await broker_connect(layout, nats_urls(state), name=name)
        try:
            return await act(await registry.ensure_bucket(nc.jetstream()))
        finally:
            await nc.close()

    return asyncio.run(run())


def set_registry_wire(layout: Layout, org: str, wire: int) -> registry.Member:
    """`psvn registry wire ORG VERSION`: the seal wire version ORG's gateway opens, signed into
    its entry (senders seal to it so from their next message on)."""
    return _on_registry(layout, running_state(layout), "psvn registry wire",
                        lambda kv: registry.set_wire(kv, org, wire, registry_signer(layout)))


def recover_registry(layout: Layout, org: str) -> registry.RegistryEntry:
    """`psvn registry recover ORG`: put back the newest verified entry from the key's history."""
    from psvn.certs.keys import load_signing_key

    state = running_state(layout)
    authority = load_signing_key(layout.registry_key).public_key()
    return _on_registry(layout, state, "psvn registry recover",
                        lambda kv: registry.recover_member(kv, org, authority))
