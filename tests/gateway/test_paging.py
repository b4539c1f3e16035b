"""Cursor paging on the gateway's lists (``GET /v1/inbox``, ``GET /v1/subscriptions``), over
real HTTPS with a system certificate, against a real network."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import Network, read_mostly

REFERRAL: dict[str, Any] = {
    "resourceType": "ServiceRequest", "status": "active", "intent": "order",
    "subject": {"reference": "Patient/9434765919",
                "identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}},
    "code": {"text": "Assessment"},
}


def http(net: Network, org: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=net.url(org), verify=net.client_ssl(org), timeout=30)


async def deliver(net: Network, n: int) -> list[str]:
    """n referrals council -> trust, all delivered; their ids in the order sent."""
    async with http(net, net.COUNCIL) as council:
        r = await council.post("/v1/messages:batch", json={"messages": [
            {"to": net.TRUST, "type": "fhir.r4.ServiceRequest", "payload": REFERRAL, "purpose": "direct-care",
             "local_id": f"r{i}"} for i in range(n)]})
        ids = [x["id"] for x in r.json()["results"]]
        gw = net.gateways[net.TRUST].gateway
        for _ in range(400):
            if set(ids) <= {r.id for r in await gw.inbox(limit=1000)}:
                break
            await asyncio.sleep(0.025)
        else:
            raise AssertionError("not all delivered")
    return ids


async def test_inbox_pages_through_everything_in_arrival_order(network: Network) -> None:
    await deliver(network, 7)
    arrived = [r.id for r in await network.gateways[network.TRUST].gateway.inbox(limit=1000)]
    assert len(arrived) == 7
    async with http(network, network.TRUST) as trust:
        seen: list[str] = []
        pages: list[int] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            r = await trust.get("/v1/inbox", params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            seen += [m["id"] for m in body["messages"]]
            pages.append(len(body["messages"]))
            if len(body["messages"]) == 3:
                assert 'rel="next"' in r.headers["link"] and body["next"] in r.headers["link"]
            else:
                assert "link" not in r.headers
            if len(body["messages"]) < 3:
                break
            cursor = body["next"]
        assert seen == arrived and pages == [3, 3, 1]
        # the last page's cursor is where new mail will appear: nothing yet
        r = await trust.get("/v1/inbox", params={"cursor": body["next"]})
        assert r.json() == {"messages": [], "next": body["next"]}
        later = await deliver(network, 1)
        r = await trust.get("/v1/inbox", params={"cursor": body["next"]})
        assert [m["id"] for m in r.json()["messages"]] == later
        # the Link header is a usable URL: following it gives the second page
        first = await trust.get("/v1/inbox", params={"limit": 3})
        link = first.headers["link"].split(";")[0].strip("<>")
        second = await trust.get(link)
        assert [m["id"] for m in second.json()["messages"]] == arrived[3:6]


async def test_acknowledging_does_not_disturb_a_cursor(network: Network) -> None:
    """A cursor is a position in arrival order, not an offset: acknowledging what was read
    (which drops it from the default 'delivered' list) skips nothing."""
    await deliver(network, 4)
    async with http(network, network.TRUST) as trust:
        page = (await trust.get("/v1/inbox", params={"limit": 2})).json()
        for m in page["messages"]:
            assert (await trust.post(f"/v1/inbox/{m['id']}/ack")).status_code == 200
        rest = (await trust.get("/v1/inbox", params={"limit": 2, "cursor": page["next"]})).json()
        assert len(rest["messages"]) == 2
        assert not {m["id"] for m in rest["messages"]} & {m["id"] for m in page["messages"]}


@read_mostly
@pytest.mark.parametrize("cursor", ["garbage!", "aW5ib3g6", "c3Vic2NyaXB0aW9uczp4", "aW5ib3g6LTE", "", "%%%"])
async def test_a_bad_inbox_cursor_is_a_400_naming_the_field(shared_network: Network, cursor: str) -> None:
    """Not base64, an empty position, another list's cursor, a negative seq: each a 400
    problem naming ``cursor``, never a 500 or a silently restarted listing."""
    async with http(shared_network, shared_network.TRUST) as trust:
        r = await trust.get("/v1/inbox", params={"cursor": cursor})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert (problem["code"], problem["field"], problem["rule"]) == ("bad-request", "cursor", "cursor")
    assert "next" in problem["detail"]


@read_mostly
@pytest.mark.parametrize(("limit", "rule"), [("0", "range"), ("1001", "range"), ("ten", "integer")])
async def test_a_bad_limit_is_a_400_naming_the_field(shared_network: Network, limit: str, rule: str) -> None:
    async with http(shared_network, shared_network.TRUST) as trust:
        for path in ("/v1/inbox", "/v1/subscriptions"):
            r = await trust.get(path, params={"limit": limit})
            assert r.status_code == 400 and (r.json()["field"], r.json()["rule"]) == ("limit", rule)


async def test_subscriptions_page_by_topic(network: Network) -> None:
    topics = ["sensors.brighton.air", "sensors.brighton.noise", "sensors.hove.air"]
    async with http(network, network.TRUST) as trust:
        for t in topics:
            r = await trust.put(f"/v1/subscriptions/{t}", json={"purpose": "environmental-monitoring"})
            if r.status_code != 200:  # the feed rules may not allow every topic: keep the ones they do
                topics.remove(t)
        assert len(topics) >= 1
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(10):
            r = await trust.get("/v1/subscriptions", params={"limit": 1, **({"cursor": cursor} if cursor else {})})
            body = r.json()
            if not body["subscriptions"]:
                assert body["next"] == cursor
                break
            seen += [s["topic"] for s in body["subscriptions"]]
            cursor = body["next"]
        assert seen == sorted(topics)
        inbox_cursor = (await trust.get("/v1/inbox")).json()["next"] or "aW5ib3g6MQ"
        r = await trust.get("/v1/subscriptions", params={"cursor": inbox_cursor})
        assert r.status_code == 400 and r.json()["field"] == "cursor"


async def settled(net: Network, ids: list[str], status: str) -> None:
    """Wait until the council reads ``status`` for every one of ``ids`` (read by id, not listed)."""
    gw = net.gateways[net.COUNCIL].gateway
    for _ in range(400):
        if all(rec.status == status for rec in [await gw.status(i) for i in ids]):
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"not all {status}")


async def list_all(client: httpx.AsyncClient, *, limit: int, cursor: str | None = None,
                   **params: Any) -> tuple[list[dict[str, Any]], str | None, list[int]]:
    """Every page of ``GET /v1/messages`` from ``cursor``: the items, the last ``next``, page sizes."""
    items: list[dict[str, Any]] = []
    sizes: list[int] = []
    for _ in range(100):  # bounded: a listing that never ends is a failure, not a hang
        query = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/v1/messages", params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["messages"]
        sizes.append(len(body["messages"]))
        if len(body["messages"]) == limit:
            assert 'rel="next"' in r.headers["link"]
        else:
            assert "link" not in r.headers
        cursor = body["next"]
        if len(body["messages"]) < limit:
            return items, cursor, sizes
    raise AssertionError(f"GET /v1/messages still full after 100 pages of {limit}: {len(items)} items")


async def test_sent_statuses_page_through_everything_then_follow_each_change(network: Network) -> None:
    """``GET /v1/messages`` lists what was sent, a page at a time, each message once at its newest
    status; from the last ``next``, only what changed since: here the one the trust acknowledged."""
    ids = await deliver(network, 7)
    await settled(network, ids, "delivered")
    async with http(network, network.COUNCIL) as council, http(network, network.TRUST) as trust:
        items, cursor, sizes = await list_all(council, limit=3)
        assert sorted(m["id"] for m in items) == sorted(ids) and sizes == [3, 3, 1]
        assert {m["status"] for m in items} == {"delivered"}
        assert all(m["to"] == network.TRUST and m["history"] for m in items)
        again, cursor_again, _ = await list_all(council, limit=3, cursor=cursor)
        assert again == [] and cursor_again == cursor  # nothing changed: the cursor stays put

        r = await trust.post(f"/v1/inbox/{ids[4]}/ack")
        assert r.status_code == 200, r.text
        await settled(network, [ids[4]], "acknowledged")
        changed, cursor, _ = await list_all(council, limit=3, cursor=cursor)
        assert [(m["id"], m["status"]) for m in changed] == [(ids[4], "acknowledged")]

        only, _, _ = await list_all(council, limit=100, status="acknowledged")
        assert [m["id"] for m in only] == [ids[4]]
        delivered, _, _ = await list_all(council, limit=100, status="delivered")
        assert sorted(m["id"] for m in delivered) == sorted(set(ids) - {ids[4]})
        # the trust sent nothing: its list is empty, and it cannot see the council's
        mine, _, _ = await list_all(trust, limit=10)
        assert mine == []


async def test_sent_statuses_are_read_where_they_live_after_a_restart(network: Network) -> None:
    """Nothing of the listing is held in memory: a restarted gateway lists the same messages."""
    ids = await deliver(network, 5)
    await settled(network, ids, "delivered")
    async with http(network, network.COUNCIL) as council:
        before, _, _ = await list_all(council, limit=2)
    server = network.gateways[network.COUNCIL]
    await server.stop()
    network.gateways[network.COUNCIL] = server = await type(server)(server.config).start()
    assert not server.gateway.store._recent  # no record of a send is held after the restart
    async with http(network, network.COUNCIL) as council:
        after, _, _ = await list_all(council, limit=2)
    assert [(m["id"], m["status"]) for m in after] == [(m["id"], m["status"]) for m in before]
    assert sorted(m["id"] for m in after) == sorted(ids)


@read_mostly
@pytest.mark.parametrize("cursor", ["garbage!", "aW5ib3g6Mw", "bWVzc2FnZXM6LTE", ""])
async def test_a_bad_messages_cursor_is_a_400_naming_the_field(shared_network: Network, cursor: str) -> None:
    """Not base64, an inbox cursor, a negative position, empty: a 400 naming ``cursor``."""
    async with http(shared_network, shared_network.COUNCIL) as council:
        r = await council.get("/v1/messages", params={"cursor": cursor})
    assert r.status_code == 400, r.text
    problem = r.json()
    assert (problem["code"], problem["field"], problem["rule"]) == ("bad-request", "cursor", "cursor")


@read_mostly
async def test_another_members_system_cannot_list_what_a_member_sent(shared_network: Network) -> None:
    """The trust's system certificate is valid on the network, but at the council's gateway its
    list of sent messages is a 403 naming the rule, never the council's statuses."""
    net = shared_network
    async with httpx.AsyncClient(base_url=net.url(net.COUNCIL), verify=net.client_ssl(net.TRUST), timeout=30) as c:
        r = await c.get("/v1/messages")
    assert r.status_code == 403, r.text
    assert (r.json()["code"], r.json()["rule"]) == ("forbidden", "system-org")
    assert "messages" not in r.json()
