"""Revoking a member on a running network: registry and backbone both shut it out."""

from __future__ import annotations

import asyncio

import nats

from broker import membership
from certs import tls
from tests.conftest import Network
from tests.gateway.test_service import call, referral


async def test_revoked_member_is_cut_off_the_backbone_and_refused_everywhere(network: Network) -> None:
    gp = network.gateways[network.GP].gateway
    nc = await nats.connect(network.nats.url, tls=tls.client_context(network.ca, *network.layout.broker_cert))
    try:
        await membership.revoke(nc.jetstream(), network.nats, network.GP)
        for _ in range(200):  # the GP's live backbone connection is closed by the reload
            if not gp.connected and network.gateways[network.COUNCIL].gateway.registry.members[
                    network.GP].status == "revoked":
                break
            await asyncio.sleep(0.05)
        assert not gp.connected
        status, problem = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(to=network.GP))
        assert (status, problem["code"]) == (403, "member-revoked")
        status, problem = await call(network, network.GP, "POST", "/v1/messages", referral())
        assert status == 503 and problem["code"] == "backbone-unavailable"

        await membership.reinstate(nc.jetstream(), network.nats, network.GP)
        for _ in range(300):  # the GP gateway reconnects by itself
            if gp.connected and gp.registry.members[network.GP].status == "active":
                break
            await asyncio.sleep(0.05)
        assert gp.connected
        status, _ = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(to=network.GP))
        assert status == 202
    finally:
        await nc.close()
