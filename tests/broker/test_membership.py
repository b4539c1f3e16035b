"""Revoking a member on a running network: registry and backbone both shut it out."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats

from broker import membership
from certs import pki, revocation, tls
from psvn import devnet
from tests.conftest import Network
from tests.gateway.test_service import call, referral


async def test_revoked_member_is_cut_off_the_backbone_and_refused_everywhere(network: Network) -> None:
    gp = network.gateways[network.GP].gateway
    nc = await devnet.broker_connect(network.layout, network.nats.url)
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


async def refused(net: Network, cert: object, key: object) -> bool:
    """True if the backbone refuses a TLS client with this certificate (pinning closes it)."""
    try:
        nc = await nats.connect(net.nats.url, tls=tls.client_context(net.ca, cert, key),  # type: ignore[arg-type]
                                allow_reconnect=False, connect_timeout=3, max_reconnect_attempts=0)
    except Exception:
        return True
    try:  # a connection that got through must also work
        await nc.flush(timeout=3)
        return False
    except Exception:
        return True
    finally:
        await nc.close()


async def test_a_revoked_certificate_is_locked_out_of_the_backbone(network: Network, tmp_path: Path) -> None:
    layout = network.layout
    ca = pki.load_ca(layout.pki)
    gp_cert, gp_key = layout.org_dir(network.GP) / "nats.crt", layout.org_dir(network.GP) / "nats.key"
    conf = json.loads(network.nats.conf_path.read_text().split("\n", 1)[1])
    assert len(conf["tls"]["pinned_certs"]) == 4  # the broker and the three members
    assert not await refused(network, gp_cert, gp_key)

    # a second certificate the CA issued for the same member (same SAN, new key) is not pinned
    other = pki.issue_gateway(ca, network.GP, tmp_path / "second")
    assert await refused(network, other.nats_cert, other.nats_key)

    # revoking the GP's certificate on the CRL and reloading the backbone cuts its live connection,
    # though the registry still lists the GP as active: certificate revocation is enforced on its own
    gp = network.gateways[network.GP].gateway
    assert gp.connected
    revocation.revoke(ca, pki.load_cert(gp_cert))
    network.nats.reload()
    for _ in range(200):
        if not gp.connected:
            break
        await asyncio.sleep(0.05)
    assert not gp.connected
    assert await refused(network, gp_cert, gp_key)
    assert not await refused(network, *layout.broker_cert)  # everyone else still gets in
    conf = json.loads(network.nats.conf_path.read_text().split("\n", 1)[1])
    assert len(conf["tls"]["pinned_certs"]) == 3
    assert revocation.spki_pin(pki.load_cert(gp_cert)) not in conf["tls"]["pinned_certs"]
