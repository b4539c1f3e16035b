"""Two instances of one member's gateway (behind one load balancer) share its inbox and state:
every message is filed once, statuses never go backwards, either instance can serve any call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from psvn.gateway.server import GatewayServer
from tests.conftest import Network
from tests.gateway.test_service import referral


@pytest.fixture
async def twins(network: Network) -> AsyncIterator[dict[str, list[GatewayServer]]]:
    extra = {org: await GatewayServer(network.gateways[org].config).start() for org in (network.COUNCIL,
                                                                                        network.TRUST)}
    try:
        yield {org: [network.gateways[org], extra[org]] for org in extra}
    finally:
        for gw in extra.values():
            await gw.stop()


async def call(net: Network, org: str, gw: GatewayServer, method: str, path: str,
               body: Any = None) -> tuple[int, dict[str, Any]]:
    conn = aiohttp.TCPConnector(ssl=net.client_ssl(org))
    async with aiohttp.ClientSession(connector=conn) as s:
        data = json.dumps(body).encode() if body is not None else None
        async with s.request(method, gw.url + path, data=data, headers={"Content-Type": "application/json"}) as r:
            return r.status, await r.json(content_type=None)


async def until(check: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_two_instances_of_each_gateway(network: Network, twins: dict[str, list[GatewayServer]]) -> None:
    council, trust = twins[network.COUNCIL], twins[network.TRUST]
    # 40 referrals through alternating council instances; every fourth key is sent through both
    sends = []
    for i in range(40):
        key = f"case-{i // 2 if i % 4 == 0 else i}"
        sends.append(call(network, network.COUNCIL, council[i % 2], "POST", "/v1/messages",
                          referral(idempotency_key=key)))
    results = await asyncio.gather(*sends)
    assert all(status in (200, 202) for status, _ in results), results
    ids = {body["id"] for _, body in results}
    assert len(ids) == len({f"case-{i // 2 if i % 4 == 0 else i}" for i in range(40)})

    async def all_delivered() -> bool:
        for i, mid in enumerate(sorted(ids)):
            _, st = await call(network, network.COUNCIL, council[i % 2], "GET", f"/v1/messages/{mid}")
            if st.get("status") != "delivered":
                return False
        return True

    await until(all_delivered)
    for gw in trust:  # each instance sees the whole mailbox, each message once
        _, inbox = await call(network, network.TRUST, gw, "GET", "/v1/inbox?limit=1000")
        assert sorted(m["id"] for m in inbox["messages"]) == sorted(ids)

    for i, mid in enumerate(sorted(ids)):  # acknowledge through either instance
        status, body = await call(network, network.TRUST, trust[i % 2], "POST", f"/v1/inbox/{mid}/ack")
        assert (status, body["status"]) == (200, "acknowledged")

    async def all_acknowledged() -> bool:
        for mid in ids:
            _, st = await call(network, network.COUNCIL, council[0], "GET", f"/v1/messages/{mid}")
            if st.get("status") != "acknowledged":
                return False
            if [h["status"] for h in st["history"]] != ["accepted", "sent", "delivered", "acknowledged"]:
                raise AssertionError(st["history"])
        return True

    await until(all_acknowledged)


async def test_an_instance_reads_what_the_other_just_wrote(network: Network,
                                                           twins: dict[str, list[GatewayServer]]) -> None:
    """Read-your-writes across instances: the second instance of each member has stopped following
    its state bucket, so whatever it answers about the first instance's writes it read where the
    state lives (no 404 window while a watch catches up)."""
    council_a, council_b = twins[network.COUNCIL]
    trust_a, trust_b = twins[network.TRUST]
    await council_b.gateway.store._follower.stop()
    await trust_b.gateway.store._follower.stop()
    status, sent = await call(network, network.COUNCIL, council_a, "POST", "/v1/messages", referral())
    assert status == 202, sent
    status, seen = await call(network, network.COUNCIL, council_b, "GET", f"/v1/messages/{sent['id']}")
    assert status == 200 and seen["id"] == sent["id"], seen

    async def filed() -> bool:
        return sent["id"] in trust_a.gateway.store.open or sent["id"] in trust_b.gateway.store.open

    await until(filed)
    status, got = await call(network, network.TRUST, trust_b, "GET", f"/v1/inbox/{sent['id']}")
    assert status == 200 and got["envelope"]["id"] == sent["id"], got
    status, acked = await call(network, network.TRUST, trust_b, "POST", f"/v1/inbox/{sent['id']}/ack")
    assert status == 200 and acked["status"] == "acknowledged", acked
    # an id that is a wildcard on the backbone reads nothing
    for bad in ("%3E", "*", "out.%3E"):
        status, problem = await call(network, network.COUNCIL, council_b, "GET", f"/v1/messages/{bad}")
        assert status in (400, 404, 422), (bad, status, problem)
