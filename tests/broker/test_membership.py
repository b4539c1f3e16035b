"""Revoking a member on a running network: registry and backbone both shut it out, no reload."""

from __future__ import annotations

import asyncio

from psvn import devnet
from psvn.broker import membership
from psvn.broker.accounts import BackboneAccounts
from tests.conftest import Network
from tests.gateway.test_service import call, referral


async def refused(net: Network, org: str) -> bool:
    """True if the backbone refuses a connection as ``org``'s gateway (certificate + ``.creds``)."""
    try:
        nc = await devnet.member_connect(net.layout, net.nats.url, org, name="probe", allow_reconnect=False,
                                         connect_timeout=3, max_reconnect_attempts=0)
    except Exception:
        return True
    try:  # a connection that got through must also work
        await nc.flush(timeout=3)
        return False
    except Exception:
        return True
    finally:
        await nc.close()


async def test_revoked_member_is_cut_off_the_backbone_and_refused_everywhere(network: Network) -> None:
    gp = network.gateways[network.GP].gateway
    conf = network.nats.conf_path.read_bytes()
    nc = await devnet.broker_connect(network.layout, network.nats.url)
    system = await devnet.system_connect(network.layout, network.nats.url)
    backbone = BackboneAccounts(network.layout.pki)
    try:
        await membership.revoke(nc.jetstream(), system, backbone, network.GP,
                                signer=devnet.registry_signer(network.layout))
        for _ in range(200):  # the GP's live backbone connection is closed by the pushed account JWT
            if not gp.connected and network.gateways[network.COUNCIL].gateway.registry.members[
                    network.GP].status == "revoked":
                break
            await asyncio.sleep(0.05)
        assert not gp.connected
        assert await refused(network, network.GP)
        assert not await refused(network, network.TRUST)  # everyone else still gets in
        status, problem = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(to=network.GP))
        assert (status, problem["code"]) == (403, "member-revoked")
        status, problem = await call(network, network.GP, "POST", "/v1/messages", referral())
        assert status == 503 and problem["code"] == "backbone-unavailable"

        await membership.reinstate(nc.jetstream(), system, backbone, network.GP,
                                   signer=devnet.registry_signer(network.layout))
        for _ in range(300):  # the GP gateway reconnects by itself
            if gp.connected and gp.registry.members[network.GP].status == "active":
                break
            await asyncio.sleep(0.05)
        assert gp.connected
        status, _ = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(to=network.GP))
        assert status == 202
    finally:
        await nc.close()
        await system.close()
    assert network.nats.conf_path.read_bytes() == conf  # neither change rewrote or reloaded the config


async def test_a_member_added_at_run_time_joins_without_a_reload(network: Network, tmp_path: object) -> None:
    """A new member: its account JWT pushed to the running backbone, its inbox provisioned, its
    registry entry written — and its gateway connects and receives, with the config untouched."""
    from psvn.broker import accounts, provision, registry
    from psvn.devnet import MemberSpec, gateway_config, make_pki_member, member_record
    from psvn.gateway.server import GatewayServer

    conf = network.nats.conf_path.read_bytes()
    newcomer = MemberSpec("ods:RXH", "Brighton and Sussex University Hospitals (newcomer)", "nhs-trust", "pas")
    make_pki_member(network.layout, newcomer)
    orgs = [*network.gateways, newcomer.org]
    system = await devnet.system_connect(network.layout, network.nats.url)
    broker = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        backbone = BackboneAccounts(network.layout.pki)
        await accounts.push(system, backbone.network_jwt(orgs))
        await accounts.push(system, backbone.member_jwt(newcomer.org))
        js = broker.jetstream()
        await provision.provision_member(js, newcomer.org)
        await registry.upsert_member(await registry.ensure_bucket(js), member_record(network.layout, newcomer),
                                     devnet.registry_signer(network.layout))
    finally:
        await system.close()
        await broker.close()
    gw = await GatewayServer(gateway_config(network.layout, newcomer, nats_url=network.nats.url, port=0)).start()
    network.gateways[newcomer.org] = gw
    network.members.append(newcomer)
    council = network.gateways[network.COUNCIL].gateway
    for _ in range(200):  # the council's registry view hears of the newcomer
        if newcomer.org in council.registry.members:
            break
        await asyncio.sleep(0.05)
    status, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(to=newcomer.org))
    assert status == 202, body
    from tests.gateway.test_service import wait_status

    # pushing the network account (the newcomer's exports) re-creates every member's imports: a pull
    # in flight at that instant loses its answer, and what it carried comes again after the
    # consumer's ack wait (10 s) — late, never lost
    await wait_status(network, network.COUNCIL, body["id"], "delivered", timeout=30)
    assert network.nats.conf_path.read_bytes() == conf
