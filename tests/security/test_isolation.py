"""A hostile member on a real network: with its own gateway's backbone credentials (certificate +
``.creds``), it aims every JetStream and KV API it can name at another member's inbox, consumer and
the shared buckets — directly, as a reply subject of a permitted request, and as the reply of a
permitted publish. Each attack must be refused by the server and leave everything as it was.

The asset snapshot is taken through the broker (the network account), after a causal barrier: a
request on the attacker's connection that the server answers only after the attacks it sent
before it on the same connection.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from psvn import devnet
from psvn.broker.accounts import BackboneAccounts
from psvn.core.addresses import token
from psvn.protocol.subjects import (
    CONSENT_BUCKET,
    CONSUMER,
    OPERATOR_JS_PREFIX,
    POLICY_BUCKET,
    REGISTRY_BUCKET,
    audit_stream,
    inbox_stream,
    state_bucket,
)
from tests.broker.test_membership import refused as refused_as
from tests.conftest import Network
from tests.gateway.test_service import call, referral, wait_status


@dataclass(frozen=True)
class Snapshot:
    gp_inbox_msgs: int
    gp_inbox_first: int
    gp_consumer: bool
    registry_gp: bytes
    policy_revision: int
    streams: frozenset[str]


async def snapshot(broker: NATS, net: Network) -> Snapshot:
    js = broker.jetstream()
    info = await js.stream_info(inbox_stream(net.GP))
    try:
        await js.consumer_info(inbox_stream(net.GP), CONSUMER)
        has_consumer = True
    except Exception:
        has_consumer = False
    reg = await (await js.key_value(REGISTRY_BUCKET)).get(f"org.{token(net.GP)}")
    pol = await (await js.key_value(POLICY_BUCKET)).get("current")
    names = frozenset([s.config.name for s in await js.streams_info()])
    return Snapshot(info.state.messages, info.state.first_seq, has_consumer, reg.value or b"", pol.revision or 0,
                    names)


async def barrier(nc: NATS, org: str) -> None:
    """A request through the attacker's own permitted import, answered after what it sent before."""
    await nc.flush()
    await nc.request(f"{OPERATOR_JS_PREFIX}.CONSUMER.MSG.NEXT.{inbox_stream(org)}.{CONSUMER}",
                     json.dumps({"batch": 1, "no_wait": True}).encode(), timeout=5)


async def refused(nc: NATS, subject: str, payload: bytes = b"{}") -> bool:
    """True if nothing in the attacker's reach answers ``subject``."""
    try:
        await nc.request(subject, payload, timeout=1.5)
    except (NoRespondersError, NatsTimeoutError):
        return True
    return False


@pytest.fixture
async def hostile(network: Network) -> NATS:
    """The council as an attacker: its own gateway's backbone user, nothing more."""
    nc = await devnet.member_connect(network.layout, network.nats.url, network.COUNCIL, name="hostile")
    yield nc  # type: ignore[misc]
    await nc.close()


async def mail_for_gp(network: Network) -> None:
    code, body = await call(network, network.TRUST, "POST", "/v1/messages", referral(to=network.GP))
    assert code == 202, body
    await wait_status(network, network.TRUST, body["id"], "delivered")


def targets(net: Network) -> list[str]:
    gp_inbox = inbox_stream(net.GP)
    return [
        f"$JS.API.STREAM.DELETE.{gp_inbox}",
        f"$JS.API.STREAM.PURGE.{gp_inbox}",
        f"$JS.API.CONSUMER.DELETE.{gp_inbox}.{CONSUMER}",
        f"$JS.API.STREAM.DELETE.KV_{REGISTRY_BUCKET}",
        f"$JS.API.STREAM.PURGE.KV_{POLICY_BUCKET}",
        f"$KV.{REGISTRY_BUCKET}.org.{token(net.GP)}",
        f"$KV.{POLICY_BUCKET}.current",
        f"$KV.{CONSENT_BUCKET}.x",
        f"psvn.msg.{token(net.GP)}.{token(net.TRUST)}",
        f"$JS.API.STREAM.DELETE.{audit_stream(net.TRUST)}",
    ]


async def test_reply_subjects_cannot_make_jetstream_act_on_another_members_data(network: Network,
                                                                                   hostile: NATS) -> None:
    await mail_for_gp(network)
    broker = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        before = await snapshot(broker, network)
        assert before.gp_inbox_msgs >= 1 and before.gp_consumer
        council, gp = token(network.COUNCIL), token(network.GP)
        own_next = f"{OPERATOR_JS_PREFIX}.CONSUMER.MSG.NEXT.{inbox_stream(network.COUNCIL)}.{CONSUMER}"
        for target in targets(network):
            # a permitted request (its own consumer) and permitted publishes (mail, audit) whose
            # replies (JetStream's answers) are aimed at another member's data
            await hostile.publish(own_next, json.dumps({"batch": 1, "no_wait": True}).encode(), reply=target)
            await hostile.publish(f"psvn.msg.{gp}.{council}", b"junk", reply=target)
            await hostile.publish(f"psvn.audit.{council}", b"{}", reply=target)
            # and as plain requests, under every name it could try
            await hostile.publish(target, b"", reply=target)
            await hostile.publish(f"{OPERATOR_JS_PREFIX}{target.removeprefix('$JS.API')}", b"")
        await barrier(hostile, network.COUNCIL)
        after = await snapshot(broker, network)
        # the junk mail the council may send lands (its own sender token), nothing else changed
        assert (after.gp_inbox_first, after.gp_consumer, after.registry_gp, after.policy_revision, after.streams) == \
            (before.gp_inbox_first, before.gp_consumer, before.registry_gp, before.policy_revision, before.streams)
        assert after.gp_inbox_msgs >= before.gp_inbox_msgs
    finally:
        await broker.close()


async def test_a_member_reaches_nothing_of_anothers_by_name(network: Network, hostile: NATS) -> None:
    """No responder answers the attacker for another member's inbox, consumer, acks, direct reads,
    deletes, sender token or state bucket, nor for any network JetStream API it was not given."""
    gp, trust = inbox_stream(network.GP), token(network.TRUST)
    p = OPERATOR_JS_PREFIX
    for subject in (
        f"{p}.CONSUMER.MSG.NEXT.{gp}.{CONSUMER}", f"{p}.DIRECT.GET.{gp}", f"{p}.STREAM.MSG.DELETE.{gp}",
        f"{p}.STREAM.INFO.{gp}", f"{p}.STREAM.DELETE.{gp}", f"{p}.STREAM.PURGE.{gp}", f"{p}.STREAM.NAMES",
        f"{p}.CONSUMER.CREATE.{gp}", f"{p}.CONSUMER.CREATE.KV_{REGISTRY_BUCKET}", f"{p}.INFO",
        f"{p}.CONSUMER.DELETE.{gp}.{CONSUMER}", f"{p}.STREAM.CREATE.EVIL", f"{p}.STREAM.MSG.GET.{gp}",
        f"psvn.msg.{token(network.GP)}.{trust}", f"psvn.rcpt.{token(network.GP)}.{trust}", f"psvn.audit.{trust}",
        f"$KV.{REGISTRY_BUCKET}.org.{token(network.GP)}", f"$KV.{POLICY_BUCKET}.current",
        f"$KV.{CONSENT_BUCKET}.anything", f"$KV.psvn_feeds.s.{trust}.topic",
        f"$KV.{state_bucket(network.GP)}.in.x",
    ):
        assert await refused(hostile, subject), subject
    # its own JetStream has none of these: they live in the network account and the GP's account
    js = hostile.jetstream()
    for stream in (gp, f"KV_{state_bucket(network.GP)}", f"KV_{REGISTRY_BUCKET}"):
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.stream_info(stream)


async def test_a_member_cannot_subscribe_to_anothers_traffic(network: Network, hostile: NATS) -> None:
    """Subscriptions live in the attacker's account: mail, receipts, state changes and replies
    of others never reach it, whatever it subscribes to."""
    got: list[str] = []

    async def cb(msg: object) -> None:
        got.append(getattr(msg, "subject", "?"))

    for subject in (">", "psvn.>", "$JS.>", f"$KV.{state_bucket(network.GP)}.>", "_INBOX.>", "$SYS.>"):
        await hostile.subscribe(subject, cb=cb)
    await hostile.flush()
    await mail_for_gp(network)
    await barrier(hostile, network.COUNCIL)
    others = [s for s in got if token(network.COUNCIL) not in s and not s.startswith("$KV.psvn_")
              and not s.startswith(OPERATOR_JS_PREFIX) and not s.startswith("_INBOX.")]
    assert others == []
    # the shared buckets' change notifications are the one thing exported to everyone (read-only)
    assert not any(token(network.GP) in s and "state" in s for s in got)


async def test_activation_tokens_bind_each_private_import_to_one_member(network: Network) -> None:
    """The network's private exports need a token signed for the importing account: an account
    JWT that imports another member's inbox with a token made for itself is not installed."""
    backbone = BackboneAccounts(network.layout.pki)
    council_jwt = backbone.member_jwt(network.COUNCIL)
    from psvn.broker import natsjwt

    claims = natsjwt.decode_claims(council_jwt)
    gp_imports = [i for i in claims["nats"]["imports"] if inbox_stream(network.GP) in i["subject"]]
    assert gp_imports == []
    tokens = {i["subject"]: natsjwt.decode_claims(i["token"]) for i in claims["nats"]["imports"] if "token" in i}
    assert tokens and all(t["sub"] == backbone.member_account(network.COUNCIL) for t in tokens.values())
    assert all(t["iss"] == backbone.network_account for t in tokens.values())


async def test_revoking_a_member_closes_its_live_connection_without_a_reload(network: Network) -> None:
    from psvn.broker import membership

    gp = network.gateways[network.GP].gateway
    conf_before = network.nats.conf_path.read_bytes()
    broker = await devnet.broker_connect(network.layout, network.nats.url)
    system = await devnet.system_connect(network.layout, network.nats.url)
    backbone = BackboneAccounts(network.layout.pki)
    try:
        assert gp.connected
        await membership.revoke(broker.jetstream(), system, backbone, network.GP,
                                signer=devnet.registry_signer(network.layout))
        assert await refused_as(network, network.GP)
        for _ in range(200):  # the server closes the GP gateway's live connection
            if not gp.connected:
                break
            await asyncio.sleep(0.05)
        assert not gp.connected
        assert network.nats.conf_path.read_bytes() == conf_before  # no reload: the config never changed
    finally:
        await broker.close()
        await system.close()


async def test_a_rollup_header_cannot_wipe_a_shared_bucket(network: Network, hostile: NATS) -> None:
    """A member may write its own feed subscriptions; a ``Nats-Rollup: all`` header on such a
    write would purge every member's subscriptions if the bucket allowed rollups (KV streams are
    made with rollups on). The shared buckets refuse them."""
    from psvn.protocol.subjects import FEEDS_BUCKET

    broker = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        kv = await broker.jetstream().key_value(FEEDS_BUCKET)
        await kv.put(f"s.{token(network.TRUST)}.air", b'{"subscriber":"ods:RYR"}')
        own = f"$KV.{FEEDS_BUCKET}.s.{token(network.COUNCIL)}.air"
        for rollup in ("all", "sub"):
            with pytest.raises(Exception):  # noqa: B017 - refused by the stream (rollups not allowed)
                await hostile.jetstream().publish(own, b"x", headers={"Nats-Rollup": rollup}, timeout=3)
        assert (await kv.get(f"s.{token(network.TRUST)}.air")).value == b'{"subscriber":"ods:RYR"}'
        infos = {i.config.name: i.config for i in await broker.jetstream().streams_info()}
        assert not any(c.allow_rollup_hdrs for n, c in infos.items() if n.startswith("KV_psvn_"))
    finally:
        await broker.close()
