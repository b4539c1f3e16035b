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
