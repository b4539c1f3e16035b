"""Pub/sub feeds through real gateways: subscribe if the feed rules allow, publish once, and
every allowed subscriber gets the event as a sealed, receipted message; nobody else does."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from psvn import devnet
from psvn.gateway import feeds
from psvn.protocol.envelope import SendRequest
from psvn.protocol.subjects import FEEDS_BUCKET
from tests.broker.test_backbone import settled, stream_count
from tests.conftest import Network
from tests.gateway.test_service import call, wait_status

ROOT = Path(__file__).resolve().parents[2]
READING = json.loads((ROOT / "examples" / "air-quality.json").read_text())
TOPIC = "sensors.brighton.air"
PURPOSE = "environmental-monitoring"


def event(**over: Any) -> dict[str, Any]:
    return {"type": "cloudevents.air-quality.reading", "purpose": PURPOSE, "payload": READING, **over}


async def wait_subscribers(net: Network, viewer: str, want: set[str]) -> None:
    for _ in range(200):
        if {s.subscriber for s in net.gateways[viewer].gateway.feeds.subscribers(TOPIC)} == want:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{viewer} never saw subscribers {want}")


async def test_publish_reaches_every_allowed_subscriber_and_nobody_else(network: Network) -> None:
    net = network
    code, sub = await call(net, net.TRUST, "PUT", f"/v1/subscriptions/{TOPIC}", {"purpose": PURPOSE})
    assert code == 200 and sub["subscriber"] == net.TRUST and sub["topic"] == TOPIC, sub
    code, listed = await call(net, net.TRUST, "GET", "/v1/subscriptions")
    assert [s["topic"] for s in listed["subscriptions"]] == [TOPIC]
    # a GP practice is not among the feed's subscribers: refused with the rule that decided
    code, problem = await call(net, net.GP, "PUT", f"/v1/subscriptions/{TOPIC}", {"purpose": PURPOSE})
    assert (code, problem["code"]) == (403, "policy-denied") and problem["rule_ids"], problem
    await wait_subscribers(net, net.COUNCIL, {net.TRUST})

    code, published = await call(net, net.COUNCIL, "POST", f"/v1/feeds/{TOPIC}", event())
    assert code == 202, published
    assert published["refused"] == [] and [d["to"] for d in published["deliveries"]] == [net.TRUST]
    mid = published["deliveries"][0]["id"]
    await wait_status(net, net.COUNCIL, mid, "delivered")
    code, got = await call(net, net.TRUST, "GET", f"/v1/inbox/{mid}")
    assert code == 200 and got["envelope"]["topic"] == TOPIC and got["payload"] == READING
    assert got["envelope"]["correlation_id"] == published["event"]  # every delivery names its event
    code, inbox = await call(net, net.GP, "GET", "/v1/inbox")
    assert inbox["messages"] == []  # nothing for a member that did not (could not) subscribe

    # only a publisher the rules name may publish, and only what the catalogue accepts
    code, problem = await call(net, net.TRUST, "POST", f"/v1/feeds/{TOPIC}", event())
    assert (code, problem["code"]) == (403, "policy-denied") and problem["message_id"], problem
    code, problem = await call(net, net.COUNCIL, "POST", f"/v1/feeds/{TOPIC}",
                               event(payload={**READING, "specversion": None}))
    assert (code, problem["code"]) == (422, "invalid-payload"), problem
    code, problem = await call(net, net.COUNCIL, "POST", "/v1/feeds/Sensors..X", event())
    assert (code, problem["field"], problem["rule"]) == (422, "topic", "topic-format")

    # unsubscribed: the next event goes to nobody
    code, _ = await call(net, net.TRUST, "DELETE", f"/v1/subscriptions/{TOPIC}")
    assert code == 204
    await wait_subscribers(net, net.COUNCIL, set())
    code, published = await call(net, net.COUNCIL, "POST", f"/v1/feeds/{TOPIC}", event())
    assert code == 202 and published["deliveries"] == []
    code, problem = await call(net, net.TRUST, "DELETE", f"/v1/subscriptions/{TOPIC}")
    assert (code, problem["rule"]) == (404, "subscription-exists")


async def test_a_feed_delivery_nobody_subscribed_to_is_quarantined(network: Network) -> None:
    """A publisher's gateway that fans out to a member that never subscribed is stopped at ingress."""
    net = network
    council = net.gateways[net.COUNCIL].gateway
    req = SendRequest(to=net.TRUST, type="cloudevents.air-quality.reading", payload=READING, purpose=PURPOSE)
    rec, _ = await council.send(req, system="adult-social-care", topic="sensors.elsewhere")
    final = await wait_status(net, net.COUNCIL, rec.id, "rejected")
    assert "not-subscribed" in str(final["rule_ids"]), final


async def test_a_gateway_can_write_only_its_own_subscriptions(network: Network) -> None:
    """The backbone binds a subscription to the member that wrote it (its token in the key)."""
    net = network
    nc = await devnet.member_connect(net.layout, net.nats.url, net.GP, name="test as the GP", allow_reconnect=False)
    try:
        forged = feeds.Subscription(subscriber=net.TRUST, topic=TOPIC, purpose=PURPOSE)
        key = feeds.key_for(net.TRUST, TOPIC)
        # the GP's account imports writes under its own token only: nothing answers this one
        # (only its own gateway's change listener hears it, and never answers: a timeout)
        with pytest.raises((nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError)):
            await nc.jetstream().publish(f"$KV.{FEEDS_BUCKET}.{key}", msgspec.json.encode(forged), timeout=2)
        # its own key is writable (so the refusal above is about the key, not the connection)
        own = feeds.Subscription(subscriber=net.GP, topic=TOPIC, purpose=PURPOSE)
        ack = await nc.jetstream().publish(f"$KV.{FEEDS_BUCKET}.{feeds.key_for(net.GP, TOPIC)}",
                                           msgspec.json.encode(own), timeout=2)
        assert ack.stream == f"KV_{FEEDS_BUCKET}"
    finally:
        await nc.close()
    assert net.gateways[net.COUNCIL].gateway.feeds.subscribers(TOPIC) == []
    # and a subscription whose content names another member than its key is ignored
    view = feeds.FeedView()
    view.apply(feeds.key_for(net.GP, TOPIC), msgspec.json.encode(forged))
    assert view.subscribers(TOPIC) == []


async def test_a_feed_event_published_again_with_its_key_is_the_same_event(network: Network) -> None:
    """A publish retried with the same idempotency key (the SDK always sends one) is the same
    event: the same event id, each subscriber's delivery a repeat of its first (same id, 200
    inside), stored once; without a key, each publish is a new event."""
    net = network
    code, _ = await call(net, net.TRUST, "PUT", f"/v1/subscriptions/{TOPIC}", {"purpose": PURPOSE})
    assert code == 200
    await wait_subscribers(net, net.COUNCIL, {net.TRUST})
    first = await call(net, net.COUNCIL, "POST", f"/v1/feeds/{TOPIC}", event(idempotency_key="reading-1"))
    again = await call(net, net.COUNCIL, "POST", f"/v1/feeds/{TOPIC}", event(idempotency_key="reading-1"))
    assert first[0] == again[0] == 202, (first, again)
    assert again[1]["event"] == first[1]["event"] and again[1]["refused"] == [], again
    assert [d["id"] for d in again[1]["deliveries"]] == [d["id"] for d in first[1]["deliveries"]]
    other = await call(net, net.COUNCIL, "POST", f"/v1/feeds/{TOPIC}", event())
    assert other[1]["event"] != first[1]["event"]
    mid = first[1]["deliveries"][0]["id"]
    await wait_status(net, net.COUNCIL, mid, "delivered")
    await wait_status(net, net.COUNCIL, other[1]["deliveries"][0]["id"], "delivered")
    code, inbox = await call(net, net.TRUST, "GET", "/v1/inbox")
    assert sorted(m["id"] for m in inbox["messages"]) == sorted([mid, other[1]["deliveries"][0]["id"]])
    await settled(net, net.TRUST)
    assert await stream_count(net, net.TRUST) == 2  # the repeat stored nothing: two events, two messages


async def test_a_feed_event_retried_after_the_rules_changed_says_what_became_of_it(network: Network) -> None:
    """An event is published with a key; a new policy version then drops the sensor feeds. A
    retry of the same event is not refused as if it had never gone out: its deliveries are
    answered as they stand. A new event is refused by the new rules."""
    from psvn.broker import policy_admin
    from psvn.broker.policy_admin import PolicyAdmin
    from psvn.certs.keys import load_signing_key
    from psvn.policies import bundle
    from psvn.policies.review import load_suite
    from tests.broker.test_policy_admin import DEFAULT_RULES, member_types, next_doc, wait_versions

    net = network
    code, _ = await call(net, net.TRUST, "PUT", f"/v1/subscriptions/{TOPIC}", {"purpose": PURPOSE})
    assert code == 200
    await wait_subscribers(net, net.COUNCIL, {net.TRUST})
    first = await call(net, net.COUNCIL, "POST", f"/v1/feeds/{TOPIC}", event(idempotency_key="reading-9"))
    assert first[0] == 202 and len(first[1]["deliveries"]) == 1, first
    start = DEFAULT_RULES.index('[[feed]]\nid = "sensor-feeds"')
    paused = DEFAULT_RULES[:start] + DEFAULT_RULES[DEFAULT_RULES.index("[[feed]]", start + 1):]  # no sensor feeds
    nc = await devnet.broker_connect(net.layout, net.nats.url, name="test policy admin")
    try:  # the policy's own examples of sensor feeds are dropped with them
        admin = await PolicyAdmin.open(
            nc.jetstream(), authority_pub=policy_admin.load_public_key(net.layout.authority_pub),
            signing_key=load_signing_key(net.layout.authority_key), members=lambda: member_types(net),
            suite=[c for c in load_suite(bundle.DEFAULT_DIR) if "air-quality" not in c.name])
        p = await admin.propose(next_doc(2, paused), "alice")
        await admin.approve(p.id, "bob")
        await admin.publish(p.id, "bob")
    finally:
        await nc.close()
    assert await wait_versions(net, 2) == {org: 2 for org in net.gateways}
    new = await call(net, net.COUNCIL, "POST", f"/v1/feeds/{TOPIC}", event(idempotency_key="reading-10"))
    assert (new[0], new[1]["code"]) == (403, "policy-denied"), new
    again = await call(net, net.COUNCIL, "POST", f"/v1/feeds/{TOPIC}", event(idempotency_key="reading-9"))
    assert again[0] == 202 and again[1]["event"] == first[1]["event"], again
    assert [d["id"] for d in again[1]["deliveries"]] == [d["id"] for d in first[1]["deliveries"]]
