"""Truthful health: liveness (/livez) apart from readiness (/healthz, /readyz), which is 503 with
a problem document naming what is wrong while the gateway cannot work, and 200 again after.

Real gateways, a real nats-server that is stopped and started again under them."""

from __future__ import annotations

import asyncio
from typing import Any

from psvn_client import AsyncClient

from tests.conftest import Network
from tests.gateway.test_service import call


async def until(net: Network, org: str, path: str, status: int, timeout: float = 30.0) -> dict[str, Any]:
    """Poll ``path`` until it answers ``status`` (a condition with a deadline, not a sleep)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        code, body = await call(net, org, "GET", path)
        if code == status:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{path} stayed {code}, wanted {status}: {body}")
        await asyncio.sleep(0.05)


async def test_readiness_follows_the_backbone_and_liveness_does_not(network: Network) -> None:
    org = network.TRUST
    ready = await until(network, org, "/healthz", 200)
    assert ready == {"status": "ok", "org": org, "policy_version": 1, "backbone": "connected",
                     "refused_backbone_values": []}
    assert await until(network, org, "/readyz", 200) == ready
    assert (await until(network, org, "/livez", 200))["status"] == "alive"

    network.nats.stop()
    problem = await until(network, org, "/healthz", 503)
    assert problem["code"] == "backbone-unavailable" and problem["rule"] == "readiness"
    assert problem["field"] == "backbone" and problem["backbone"] == "disconnected"
    assert any(p.startswith("backbone:") for p in problem["problems"]) and "backbone" in problem["detail"]
    assert (await until(network, org, "/readyz", 503))["problems"] == problem["problems"]
    assert (await until(network, org, "/livez", 200))["status"] == "alive"  # alive, not ready
    cert, key = network.system_cert(org)
    async with AsyncClient(network.url(org), ca=network.ca, cert=cert, key=key) as client:
        health = await client.health()
    assert not health.ok and health.backbone == "disconnected" and health.problems

    network.nats.start()
    assert (await until(network, org, "/healthz", 200))["backbone"] == "connected"


async def test_readiness_names_a_missing_policy_set_and_a_failed_state_write(network: Network) -> None:
    gw = network.gateways[network.COUNCIL].gateway
    assert gw.readiness() == []
    gw.state_write_error = "TimeoutError"  # as send() records it when the state bucket refuses a write
    problem = await until(network, network.COUNCIL, "/healthz", 503)
    assert problem["field"] == "state" and "TimeoutError" in problem["detail"]
    gw.state_write_error = None
    snapshot, gw.policy.snapshot = gw.policy.snapshot, None
    try:
        problem = await until(network, network.COUNCIL, "/healthz", 503)
        assert problem["field"] == "policy" and problem["problems"] == [
            "policy: no valid, signed policy set is loaded"]
    finally:
        gw.policy.snapshot = snapshot
    await until(network, network.COUNCIL, "/healthz", 200)
