"""The clustered backbone survives losing a node: 3 real nats-servers, R3 streams and buckets.

Referrals go council -> trust through the real gateways' HTTPS API (one keep-alive session,
bounded concurrency, an idempotency key each) while a node is killed with SIGKILL. A send refused
with 503 backbone-unavailable is retried with the same key (the SDK contract); anything else is a
failure. Afterwards every accepted referral must be in the trust's mailbox exactly once, nothing
else may be there, and every sender status must read ``delivered``.

Which node leads which raft group, and which node each gateway is connected to, are otherwise
chance; each scenario pins the leaders (stepdown to a preferred server) and picks its victim by
the gateways' connections, so that it tests one failure, the same way every run. One test kills
the node the council's own gateway is connected to (and that leads the council's groups); the
last covers the sender's own state bucket losing its leader between a send's publish and its
status write (answered 202, never 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec
import pytest
from nats.aio.client import Client as NATS

from psvn import devnet
from psvn.broker import cluster as bc
from psvn.broker.accounts import BackboneAccounts
from psvn.devnet import EXAMPLE_MEMBERS, Layout
from psvn.gateway.server import GatewayServer
from psvn.protocol.subjects import CONSUMER, audit_stream, inbox_stream, msg_subject, rcpt_subject, state_bucket
from tests.conftest import Network
from tests.gateway.test_service import REFERRAL, referral

CONCURRENCY = 16
RETRY_DELAY = 0.25
SEND_DEADLINE = 40.0  # one referral's retries give up after this (the test then fails)
COUNCIL, TRUST = Network.COUNCIL, Network.TRUST

NETWORK = "network"  # the network account (the broker's user); a member's own account by its address
# The raft groups a council -> trust referral touches: (account, stream, consumer or None).
GROUPS: dict[str, tuple[str, str, str | None]] = {
    "trust inbox": (NETWORK, inbox_stream(TRUST), None),  # referrals land here
    "trust consumer": (NETWORK, inbox_stream(TRUST), CONSUMER),  # the trust gateway pulls them from here
    "trust state": (TRUST, f"KV_{state_bucket(TRUST)}", None),  # the trust's mailbox index (its own account)
    "council inbox": (NETWORK, inbox_stream(COUNCIL), None),  # receipts land here
    "council consumer": (NETWORK, inbox_stream(COUNCIL), CONSUMER),
    "council state": (COUNCIL, f"KV_{state_bucket(COUNCIL)}", None),  # sender statuses, idempotency keys
}

T = TypeVar("T")


@dataclass
class ClusterNetwork:
    net: Network  # the usual helpers (urls, client certificates); net.nats is node 1
    cluster: bc.Cluster


@pytest.fixture
async def cluster_network(tmp_path: Path) -> AsyncIterator[ClusterNetwork]:
    members = list(EXAMPLE_MEMBERS)
    layout = Layout(tmp_path)
    devnet.make_pki(layout, members)
    cluster = bc.start_cluster(tmp_path / "nats", cert=layout.pki / "nats" / "nats.crt",
                               key=layout.pki / "nats" / "nats.key", ca=layout.ca,
                               backbone=BackboneAccounts(layout.pki),
                               members=[m.org for m in members])
    gateways: dict[str, GatewayServer] = {}
    try:
        await devnet.provision_backbone(layout, cluster.urls[0], members, replicas=3)
        for m in members:
            cfg = devnet.gateway_config(layout, m, nats_url=cluster.urls[0], port=0)
            cfg = msgspec.structs.replace(cfg, nats=msgspec.structs.replace(cfg.nats, servers=cluster.urls, replicas=3))
            gateways[m.org] = await GatewayServer(cfg).start()
        yield ClusterNetwork(Network(layout=layout, nats=cluster.nodes[0], gateways=gateways, members=members),
                             cluster)
    finally:
        for gw in gateways.values():
            with contextlib.suppress(Exception):
                await gw.stop()
        cluster.stop()


# -- backbone helpers ------------------------------------------------------------------------
async def broker_conn(cn: ClusterNetwork) -> NATS:
    return await devnet.broker_connect(cn.net.layout, cn.cluster.urls, name="cluster test")


async def account_conns(cn: ClusterNetwork) -> dict[str, NATS]:
    """A connection per account the groups live in: the network's (broker) and each member's own."""
    return {NETWORK: await broker_conn(cn),
            **{org: await devnet.member_connect(cn.net.layout, cn.cluster.urls, org, name="cluster test")
               for org in (TRUST, COUNCIL)}}


async def leader_of(nc: NATS, stream: str, consumer: str | None = None) -> str | None:
    """The group's leader, or None while it has none (the API then does not answer)."""
    js = nc.jetstream(timeout=1)
    try:
        info = await (js.consumer_info(stream, consumer) if consumer else js.stream_info(stream))
    except Exception:
        return None
    return info.cluster.leader if info.cluster else None


async def move_leader(nc: NATS, stream: str, consumer: str | None, node: str) -> None:
    """Make ``node`` lead the group (stepdown with a preferred server; elections take a moment)."""
    api = f"CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}" if consumer else f"STREAM.LEADER.STEPDOWN.{stream}"
    request = json.dumps({"placement": {"preferred": node}}).encode()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        current = await leader_of(nc, stream, consumer)
        if current == node:
            return
        if current is not None:
            with contextlib.suppress(Exception):
                await nc.request(f"$JS.API.{api}", request, timeout=2)
        await asyncio.sleep(0.2)
    raise AssertionError(f"{stream}/{consumer or '-'} would not move its leader to {node}")


def gateway_node(cn: ClusterNetwork, org: str) -> int:
    nc = cn.net.gateways[org].gateway.nc
    assert nc is not None and nc.connected_url is not None
    return [n.config.port for n in cn.cluster.nodes].index(nc.connected_url.port)


async def arrange(cn: ClusterNetwork, conns: dict[str, NATS], victim_leads: set[str], *,
                  host_of: str | None = None) -> int:
    """Pick the victim node and make it lead exactly the groups named in ``victim_leads``; every
    other group is led by a node that survives.

    The victim is the council's gateway's node when ``host_of`` is the council (the sender loses
    its own connection); the trust's gateway's node when ``host_of`` is the trust and that node
    is not also the council's; else a node neither gateway is connected to.
    """
    assert victim_leads <= set(GROUPS) and host_of in (None, TRUST, COUNCIL)
    council, trust = gateway_node(cn, COUNCIL), gateway_node(cn, TRUST)
    if host_of == COUNCIL:
        victim = council
    elif host_of == TRUST and trust != council:
        victim = trust
    else:
        victim = next(i for i in range(len(cn.cluster.nodes)) if i not in (council, trust))
    survivor = cn.cluster.names[(victim + 1) % len(cn.cluster.nodes)]
    for name, (account, stream, consumer) in GROUPS.items():
        await move_leader(conns[account], stream, consumer,
                          cn.cluster.names[victim] if name in victim_leads else survivor)
    return victim


async def subject_count(nc: NATS, stream: str, subject: str) -> int:
    info = await nc.jetstream().stream_info(stream, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def all_current(nc: NATS, stream: str, names: list[str]) -> bool:
    try:
        info = await nc.jetstream(timeout=1).stream_info(stream)
    except Exception:
        return False
    c = info.cluster
    if c is None or c.leader is None:
        return False
    peers = {p.name: bool(p.current) for p in c.replicas or []}
    return sorted([c.leader, *peers]) == sorted(names) and all(peers.values())


async def wait_until(check: Callable[[], Awaitable[T]], *, timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached after {timeout}s")
        await asyncio.sleep(0.2)


# -- HTTP side ----------------------------------------------------------------------------------
@dataclass
class SendLog:
    ids: dict[int, str] = field(default_factory=dict)  # referral number -> accepted message id
    retries: int = 0  # 503 backbone-unavailable answers, each retried with the same key
    retry_rules: dict[str, int] = field(default_factory=dict)  # 503s by the rule that refused
    refused_ids: dict[int, set[str]] = field(default_factory=dict)  # message ids named by those 503s
    failures: list[tuple[int, int, Any]] = field(default_factory=list)  # (referral, status, body)
    internal: list[int] = field(default_factory=list)  # referrals answered 500 (retried only if asked)
    latencies: list[float] = field(default_factory=list)  # first attempt -> accepted, per referral
    accepted_at: list[float] = field(default_factory=list)

    @property
    def resumed(self) -> int:
        """Referrals whose retry was accepted under the id a 503 had named (the same message)."""
        return sum(1 for i, refused in self.refused_ids.items() if self.ids.get(i) in refused)


async def send_referral(session: aiohttp.ClientSession, url: str, i: int, log: SendLog, *,
                        retry_500: bool = False) -> None:
    """POST referral ``i`` until accepted, retrying a 503 (and, if asked, a 500) with the same key."""
    body = referral(correlation_id=f"referral-{i}",
                    payload={**REFERRAL, "code": {"text": f"Assessment on discharge, referral {i}"}})
    started = time.monotonic()
    while True:
        try:
            async with session.post(url + "/v1/messages", json=body,
                                    headers={"Idempotency-Key": f"referral-{i}"}) as r:
                status, data = r.status, await r.json(content_type=None)
        except aiohttp.ClientError as exc:  # the SDK retries transport failures too
            status, data = 0, repr(exc)
        if status in (200, 202):
            log.ids[i] = data["id"]
            log.latencies.append(time.monotonic() - started)
            log.accepted_at.append(time.monotonic())
            return
        if status == 500:
            log.internal.append(i)
        retryable = (status == 503 and isinstance(data, dict) and data.get("code") == "backbone-unavailable") \
            or (status == 500 and retry_500)
        if not retryable or time.monotonic() - started > SEND_DEADLINE:
            log.failures.append((i, status, data))
            return
        log.retries += 1
        log.retry_rules[data.get("rule", "")] = log.retry_rules.get(data.get("rule", ""), 0) + 1
        if data.get("message_id"):
            log.refused_ids.setdefault(i, set()).add(data["message_id"])
        await asyncio.sleep(RETRY_DELAY)


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as r:
        return r.status, await r.json(content_type=None)


@dataclass
class Scenario:
    """One run: referrals sent while ``victim`` is killed after ``kill_after`` are accepted."""

    cn: ClusterNetwork
    nc: NATS  # the network account's (broker)
    conns: dict[str, NATS]  # by account (see GROUPS)
    victim: int
    council: aiohttp.ClientSession
    trust: aiohttp.ClientSession
    log: SendLog = field(default_factory=SendLog)
    killed_at: float = 0.0
    started: float = 0.0
    sent: float = 0.0

    async def run(self, referrals: int, kill_after: int | None, *, check: bool = True,
                  concurrency: int = CONCURRENCY, retry_500: bool = False) -> None:
        """Send ``referrals``; kill the victim once ``kill_after`` are accepted (None: the test
        kills it itself)."""
        gate = asyncio.Semaphore(concurrency)
        url = self.cn.net.url(COUNCIL)

        async def one(i: int) -> None:
            async with gate:
                await send_referral(self.council, url, i, self.log, retry_500=retry_500)
            if kill_after is not None and len(self.log.ids) >= kill_after and not self.killed_at:
                self.killed_at = time.monotonic()
                await asyncio.to_thread(self.cn.cluster.kill, self.victim)

        self.started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(referrals)))
        self.sent = time.monotonic()
        assert self.killed_at, "the node was never killed"
        if not check:
            return
        assert self.log.failures == [], f"sends failed other than with a retryable 503: {self.log.failures[:5]}"
        assert sorted(self.log.ids) == list(range(referrals))
        assert len(set(self.log.ids.values())) == referrals, "two referrals were given the same message id"

    async def mailbox(self) -> list[dict[str, Any]]:
        code, body = await get_json(self.trust, self.cn.net.url(TRUST) + "/v1/inbox?limit=1000")
        assert code == 200, body
        items: list[dict[str, Any]] = body["messages"]
        return items

    async def statuses(self) -> dict[str, str]:
        url = self.cn.net.url(COUNCIL)
        answers = await asyncio.gather(*(get_json(self.council, f"{url}/v1/messages/{mid}")
                                         for mid in self.log.ids.values()))
        return {body["id"]: body["status"] for code, body in answers if code == 200}

    @property
    def stall(self) -> float:
        """The longest gap between two accepted referrals once the node was killed."""
        times = sorted(t for t in self.log.accepted_at if t >= self.killed_at)
        gaps = [b - a for a, b in zip([self.killed_at, *times], times, strict=False)]
        return max(gaps, default=0.0)


@contextlib.asynccontextmanager
async def scenario(cn: ClusterNetwork, victim_leads: set[str], *,
                   host_of: str | None = None) -> AsyncIterator[Scenario]:
    net = cn.net
    conns = await account_conns(cn)
    council = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=net.client_ssl(COUNCIL), limit=64))
    trust = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=net.client_ssl(TRUST)))
    try:
        victim = await arrange(cn, conns, victim_leads, host_of=host_of)
        yield Scenario(cn=cn, nc=conns[NETWORK], conns=conns, victim=victim, council=council, trust=trust)
    finally:
        await council.close()
        await trust.close()
        for c in conns.values():
            await c.close()


# -- tests ----------------------------------------------------------------------------------
async def test_backbone_is_three_nodes_with_r3_streams_and_buckets(cluster_network: ClusterNetwork) -> None:
    cn = cluster_network
    conns = await account_conns(cn)
    try:
        names = [(NETWORK, inbox_stream(TRUST)), (NETWORK, inbox_stream(COUNCIL)), (NETWORK, "KV_psvn_registry"),
                 (NETWORK, "KV_psvn_policy"), (NETWORK, "KV_psvn_consent"), (NETWORK, audit_stream(TRUST)),
                 (TRUST, f"KV_{state_bucket(TRUST)}"), (COUNCIL, f"KV_{state_bucket(COUNCIL)}")]
        for account, name in names:
            info = await conns[account].jetstream().stream_info(name)
            assert info.config.num_replicas == 3, name
            assert info.cluster is not None and info.cluster.leader in cn.cluster.names, name
            assert sorted([info.cluster.leader, *[p.name for p in info.cluster.replicas or []]]) \
                == sorted(cn.cluster.names), name
        for org, gw in cn.net.gateways.items():
            assert gw.config.nats.servers == cn.cluster.urls, org
        # every node trusts the same operator and runs the full account resolver
        for node in cn.cluster.nodes:
            conf = json.loads(node.conf_path.read_text().split("\n", 1)[1])
            assert conf["resolver"]["type"] == "full" and conf["operator"] == cn.net.nats.config.operator_jwt
        with pytest.raises(RuntimeError, match="still running"):
            cn.cluster.restart(0)
    finally:
        for c in conns.values():
            await c.close()


async def check_exactly_once(sc: Scenario, referrals: int) -> list[dict[str, Any]]:
    """Every accepted referral reaches the trust's mailbox once (and the stream once), nothing
    arrives twice, and every accepted referral's sender status reaches ``delivered``."""
    accepted = set(sc.log.ids.values())

    async def complete() -> list[dict[str, Any]] | None:
        items = await sc.mailbox()
        return items if {m["id"] for m in items} >= accepted else None

    items = await wait_until(complete, timeout=45, what="every accepted referral in the trust's mailbox")
    ids = [m["id"] for m in items]
    correlations = [m["correlation_id"] for m in items]
    assert len(ids) == len(set(ids)), "a message id is twice in the mailbox"
    assert len(correlations) == len(set(correlations)), "a referral arrived twice (under two message ids)"
    assert all(m["from"] == COUNCIL for m in items)
    if len(accepted) == referrals:  # nothing else may have arrived
        assert set(ids) == accepted and len(ids) == referrals
    # ... and exactly once in the stream: no second copy under another message id
    assert await subject_count(sc.nc, inbox_stream(TRUST), msg_subject(TRUST, COUNCIL)) == len(ids)

    async def all_delivered() -> bool:
        statuses = await sc.statuses()
        return len(statuses) == len(accepted) and set(statuses.values()) <= {"delivered"}

    await wait_until(all_delivered, timeout=30, what="status delivered for every accepted referral")
    return items


@pytest.mark.timeout(150)
async def test_referrals_survive_kill_9_of_the_trusts_stream_leader(cluster_network: ClusterNetwork) -> None:
    """The node leading the trust's inbox stream and its consumer dies mid-load. It is the node
    the trust's gateway is connected to (unless the council's gateway shares it, see the module
    notes), so the recipient fails over as well. The groups holding receipts and sender state
    are led elsewhere (the next tests lose those)."""
    referrals, kill_after, cn = 300, 100, cluster_network
    async with scenario(cn, {"trust inbox", "trust consumer"}, host_of=TRUST) as sc:
        leader = await leader_of(sc.nc, inbox_stream(TRUST))  # the node to kill, as the backbone says
        assert leader is not None and cn.cluster.index(leader) == sc.victim
        on_victim = [org for org in cn.net.gateways if gateway_node(cn, org) == sc.victim]
        healthy: dict[str, bool] = {}
        unhealthy_seen: list[float] = []  # when a gateway was seen unhealthy (times, for the report)

        async def watch_health() -> None:
            while True:
                for org in cn.net.gateways:
                    ok = False
                    with contextlib.suppress(Exception):
                        code, body = await get_json(sc.council, cn.net.url(org) + "/healthz")
                        ok = code == 200 and body["status"] == "ok"
                    healthy[org] = ok
                    if not ok:
                        unhealthy_seen.append(time.monotonic())
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch_health())
        try:
            await sc.run(referrals, kill_after=kill_after)
            new_leader = await wait_until(lambda: leader_of(sc.nc, inbox_stream(TRUST)), timeout=30,
                                          what="a new leader for the trust's inbox")
            assert new_leader != leader
            await check_exactly_once(sc, referrals)
            delivered_at = time.monotonic()

            # the gateways report healthy again after the election, and a fresh send goes through
            async def all_healthy() -> bool:
                return len(healthy) == len(cn.net.gateways) and all(healthy.values())

            await wait_until(all_healthy, timeout=30, what="every gateway healthy")
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        after = SendLog()
        await send_referral(sc.council, cn.net.url(COUNCIL), referrals, after)
        assert after.failures == [] and after.retries == 0

        # the killed node comes back on its store and catches up from its peers
        restart_at = time.monotonic()
        await asyncio.to_thread(cn.cluster.restart, sc.victim)
        await wait_until(lambda: all_current(sc.nc, inbox_stream(TRUST), cn.cluster.names), timeout=30,
                         what="all three replicas of the trust's inbox current")
        caught_up = time.monotonic()
        print(f"\ncluster: kill -9 {leader} (gateways on it: {on_victim}) after {kill_after} of {referrals} "
              f"accepted -> new leader {new_leader}; stall {sc.stall:.2f}s, slowest referral "
              f"{max(sc.log.latencies):.2f}s, {sc.log.retries} retried 503s {sc.log.retry_rules} "
              f"({sc.log.resumed} resumed under the refused id); all accepted {sc.sent - sc.started:.2f}s, "
              f"all delivered {delivered_at - sc.started:.2f}s; a gateway seen unhealthy "
              + (f"{min(unhealthy_seen) - sc.killed_at:.2f}..{max(unhealthy_seen) - sc.killed_at:.2f}s after the kill"
                 if unhealthy_seen else "never (polled every 0.05 s)")
              + f"; restart + catch-up {caught_up - restart_at:.2f}s")


@pytest.mark.timeout(150)
async def test_receipts_survive_kill_9_of_the_senders_inbox_leader(cluster_network: ClusterNetwork) -> None:
    """The node leading the council's inbox stream (where the trust's delivery receipts land)
    dies: receipts that could not be published are sent again when the trust's gateway gets the
    message redelivered. (Its consumer is led elsewhere: losing a consumer leader is the first
    test's part, and costs up to ack_wait for what it had delivered unacknowledged.)"""
    referrals, cn = 150, cluster_network
    async with scenario(cn, {"council inbox"}) as sc:
        await sc.run(referrals, kill_after=50)
        await check_exactly_once(sc, referrals)
        # every status reached delivered (above), and each receipt, once applied, left the
        # council's inbox: none is waiting there unapplied
        async def receipts_applied() -> bool:
            return await subject_count(sc.nc, inbox_stream(COUNCIL), rcpt_subject(COUNCIL, TRUST)) == 0

        await wait_until(receipts_applied, timeout=30, what="every receipt applied and gone from the council's inbox")
        print(f"\ncluster: council inbox leader killed; {sc.log.retries} retried 503s, "
              f"all delivered {time.monotonic() - sc.started:.2f}s after the first send")


@pytest.mark.timeout(150)
async def test_referrals_survive_kill_9_of_the_senders_own_node(cluster_network: ClusterNetwork) -> None:
    """The node the council's gateway is connected to dies mid-load, and it leads the council's
    own groups (its state bucket, its inbox where receipts land, its consumer): the sender loses
    its connection and its state at once. Its gateway reconnects to a survivor; sends in the gap
    are answered 503 (retried with the same key, as the SDK does), never 500; afterwards every
    accepted referral is delivered exactly once and reads ``delivered``."""
    referrals, cn = 150, cluster_network
    async with scenario(cn, {"council state", "council inbox", "council consumer"}, host_of=COUNCIL) as sc:
        assert gateway_node(cn, COUNCIL) == sc.victim
        await sc.run(referrals, kill_after=50)
        assert sc.log.internal == [], f"referrals answered 500: {sorted(set(sc.log.internal))}"
        await check_exactly_once(sc, referrals)
        assert gateway_node(cn, COUNCIL) != sc.victim  # it failed over to a survivor
        print(f"\ncluster: the council's own node killed; {sc.log.retries} retried 503s {sc.log.retry_rules}, "
              f"stall {sc.stall:.2f}s, all delivered {time.monotonic() - sc.started:.2f}s after the first send")


class AnsweredInternalError(AssertionError):
    """A send that reached the backbone was answered 500 (the SDK does not retry a 500)."""


@pytest.mark.timeout(150)
async def test_a_send_whose_status_write_fails_after_its_publish_is_not_a_500(
        cluster_network: ClusterNetwork) -> None:
    """The node leading the council's state bucket (sender statuses, idempotency keys) is killed
    the moment referral 10's publish is confirmed: the kill is hooked onto the council gateway's
    own publish, so the timing is exact rather than chance (a kill -9 mid-load hits this window
    only sometimes). Retried with the same key, nothing is lost or duplicated; but the answer
    to the caught send must not be a 500."""
    referrals, cn = 20, cluster_network
    async with scenario(cn, {"council state"}) as sc:
        gw = cn.net.gateways[COUNCIL].gateway
        real_publish = gw._publish

        async def publish_then_kill(subject: str, data: bytes, msg_id: str) -> None:
            await real_publish(subject, data, msg_id)
            if subject.startswith("psvn.msg.") and len(sc.log.ids) == 10 and not sc.killed_at:
                sc.killed_at = time.monotonic()
                cn.cluster.kill(sc.victim)

        gw._publish = publish_then_kill  # type: ignore[method-assign]
        await sc.run(referrals, kill_after=None, concurrency=1, retry_500=True)
        await check_exactly_once(sc, referrals)
        if sc.log.internal:
            raise AnsweredInternalError(
                f"referral(s) {sorted(set(sc.log.internal))} answered 500 internal ({len(sc.log.internal)} times) "
                f"after their publish was confirmed; each was delivered once when retried with the same key")


async def test_mail_filed_at_once_by_several_handlers_on_r3_is_filed_once(cluster_network: ClusterNetwork) -> None:
    """On the R3 state bucket, three handlers file the same mail at the same moment (instances
    given one redelivered message), for new ids and for ids another key already holds (the
    member's own out.<id>): one filing wins, and the others are told what is on file. Every
    write of in.<id> is the same check (``*.<id>``): a plain create-once beside it would be a
    second check the bucket's leader tracks apart, and both could pass."""
    from psvn.gateway.store import InRecord

    cn = cluster_network
    store = cn.net.gateways[TRUST].gateway.store
    assert store.kv is not None
    records = [InRecord(id=f"r3-{i}-{time.monotonic_ns()}", source=COUNCIL, to=TRUST, type="fhir.r4.ServiceRequest",
                        time="t", status="delivered", size=10, seq=1) for i in range(40)]
    for rec in records[::2]:  # half of them: an id the trust's own state holds already
        await store.kv.put(f"out.{rec.id}", b"{}")
    for rec in records:
        outcomes = await asyncio.gather(*(store.file(rec) for _ in range(3)))
        assert sum(o is None for o in outcomes) == 1, (rec.id, outcomes)
        assert all(o is None or (isinstance(o, InRecord) and o.id == rec.id) for o in outcomes)
    for rec in records:
        await store.close(msgspec.structs.replace(rec, status="acknowledged"))
