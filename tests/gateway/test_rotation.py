"""Key rotation on a running network: no message is lost or refused, before, during or after.

The rotating gateway restarts holding its new and retired keys; it signs with the key the
registry lists, so peers can always verify it; once the registry lists the new keys, senders
seal to them, and mail sealed or signed with the old ones (in flight or stored) still opens.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from psvn import devnet
from psvn.broker import registry
from psvn.certs.keys import RETIRED_DIR, rotate_gateway_keys
from psvn.devnet import EXAMPLE_MEMBERS, OPERATOR_MEMBER, PDS_MEMBER
from psvn.gateway.server import GatewayServer
from tests.conftest import Network, start_network, stop_network
from tests.gateway.test_service import call, referral, wait_status


async def restart(net: Network, org: str) -> None:
    old = net.gateways.pop(org)
    await old.stop()
    net.gateways[org] = await GatewayServer(old.config).start()


async def publish_rotation(net: Network, org: str) -> registry.Member:
    sign_key, hpke_key, suite = devnet.public_message_keys(net.layout.org_dir(org))
    nc = await devnet.broker_connect(net.layout, net.nats.url)
    try:
        kv = await registry.ensure_bucket(nc.jetstream())
        member = await registry.rotate_member_keys(kv, org, signer=devnet.registry_signer(net.layout),
                                                     sign_key=sign_key, hpke_key=hpke_key, hpke_suite=suite)
    finally:
        await nc.close()
    for _ in range(200):  # every gateway follows the registry
        if all(gw.gateway.registry.members[org].sign_key == sign_key for gw in net.gateways.values()):
            return member
        await asyncio.sleep(0.025)
    raise AssertionError(f"not every gateway saw {org}'s new keys")


async def send(net: Network, frm: str, body: dict[str, object]) -> str:
    code, sent = await call(net, frm, "POST", "/v1/messages", body)
    assert code == 202, sent
    return str(sent["id"])


async def download(net: Network, org: str, mid: str) -> dict[str, object]:
    code, got = await call(net, org, "GET", f"/v1/inbox/{mid}")
    assert code == 200, got
    return got


async def test_rotating_keys_loses_nothing(network: Network) -> None:
    net, council, trust = network, network.COUNCIL, network.TRUST
    to_council = referral("gss:E06000043/adult-social-care")
    stored = await send(net, council, referral())  # sealed to the trust's old key, signed by the council's
    await wait_status(net, council, stored, "delivered")

    # 1. new keys on disk, the trust restarts holding both; the registry still lists the old ones
    old_trust = net.gateways[trust].gateway.registry.members[trust]
    rotate_gateway_keys(net.layout.org_dir(trust))
    await restart(net, trust)
    assert len(net.gateways[trust].gateway.signing_keys) == 2
    # it still signs with the registered (old) key: the council verifies, the receipt comes back
    before_switch = await send(net, trust, to_council)
    await wait_status(net, trust, before_switch, "delivered")
    in_flight = await send(net, council, referral())  # sealed to the old key, opened with the retired one
    await wait_status(net, council, in_flight, "delivered")

    # 2. the registry lists the new keys: senders seal to them and the trust signs with its new key
    member = await publish_rotation(net, trust)
    assert member.sign_key != old_trust.sign_key and member.hpke_key != old_trust.hpke_key
    assert [r.key for r in member.retired_sign_keys] == [old_trust.sign_key]
    assert net.gateways[trust].gateway.identity.signing_key is not net.gateways[trust].gateway.signing_keys[1]
    after = await send(net, council, referral())
    await wait_status(net, council, after, "delivered")
    from_new_key = await send(net, trust, to_council)
    await wait_status(net, trust, from_new_key, "delivered")

    # 3. everything stored before the rotation still opens, verifies and acknowledges
    for mid in (stored, in_flight, after):
        got = await download(net, trust, mid)
        assert got["payload"]["resourceType"] == "ServiceRequest"  # type: ignore[index]
        code, _ = await call(net, trust, "POST", f"/v1/inbox/{mid}/ack")
        assert code == 200
        await wait_status(net, council, mid, "acknowledged")

    # 4. the council rotates too: what it signed before still verifies at the trust
    rotate_gateway_keys(net.layout.org_dir(council))
    await restart(net, council)
    await publish_rotation(net, council)
    got = await download(net, trust, stored)
    assert got["envelope"]["source"].startswith(council)  # type: ignore[index]
    newest = await send(net, council, referral())
    await wait_status(net, council, newest, "delivered")
    assert (await download(net, trust, newest))["envelope"]["id"] == newest  # type: ignore[index]
    for gw in net.gateways.values():  # nothing was quarantined anywhere along the way
        assert await gw.gateway.inbox(status="quarantined") == []


async def test_without_its_retired_keys_a_gateway_cannot_open_old_mail(network: Network) -> None:
    """The control: the ring is what keeps stored mail readable (and the failure is named)."""
    net, trust = network, network.TRUST
    stored = await send(net, net.COUNCIL, referral())
    await wait_status(net, net.COUNCIL, stored, "delivered")
    rotate_gateway_keys(net.layout.org_dir(trust))
    for key in (net.layout.org_dir(trust) / RETIRED_DIR).iterdir():
        key.unlink()  # an operator who deleted the retired keys too early
    await restart(net, trust)
    code, problem = await call(net, trust, "GET", f"/v1/inbox/{stored}")
    assert code >= 400 and problem["code"] == "decrypt-failed" and problem["message_id"] == stored


async def test_opt_outs_outlive_the_operators_key_rotation(tmp_path: Path) -> None:
    """Consent records signed with the operator's old key still load in a restarted gateway (they
    were written before the key retired); the operator records new ones with its new key."""
    from tests.gateway.test_consent import OPERATOR, SUBJECT, record_opt_out, research

    net = await start_network(tmp_path, [*EXAMPLE_MEMBERS, OPERATOR_MEMBER, PDS_MEMBER])
    try:
        await record_opt_out(net, ["research-consented"])
        rotate_gateway_keys(net.layout.org_dir(OPERATOR))
        await restart(net, OPERATOR)
        await publish_rotation(net, OPERATOR)
        await restart(net, net.GP)  # reads every record again, verifying against the registry
        seen = await net.gateways[net.GP].gateway.consent.consult([SUBJECT])
        assert seen.refused == (), seen.refused
        assert seen.consent.blocks(SUBJECT, "research-consented") is not None
        status, problem = await call(net, net.GP, "POST", "/v1/messages", research())
        assert (status, problem["code"]) == (403, "policy-denied"), problem
        # a change recorded after the rotation is signed with the new key and reaches everyone
        await record_opt_out(net, [], seq=2)
        for gw in net.gateways.values():
            assert (await gw.gateway.consent.consult([SUBJECT])).consent.blocks(SUBJECT, "research-consented") is None
    finally:
        await stop_network(net)


def test_a_consent_record_refused_while_the_registry_lags_is_accepted_once_it_catches_up() -> None:
    """The operator rotated and recorded with its new key before this gateway's registry view
    had that key: the record is refused for a reason a lagging view explains (the gateway then
    redelivers rather than quarantines), and accepted as soon as the registry catches up."""
    import msgspec
    import pytest
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from psvn.certs.keys import raw_public
    from psvn.core.errors import PsvnError
    from psvn.gateway.consent import LAG_CODES, seal_record, verify_value
    from tests.gateway.test_consent import OPERATOR, REGISTRY_KEY, SUBJECT, _members, _record

    view, old_key = _members()
    new_key = Ed25519PrivateKey.generate()
    value = seal_record(SUBJECT, _record(new_key))
    with pytest.raises(PsvnError) as err:
        verify_value(SUBJECT, value, view)
    assert err.value.code in LAG_CODES
    op = view.members[OPERATOR]
    rotated = msgspec.structs.replace(op, sign_key=raw_public(new_key), retired_sign_keys=(registry.RetiredKey(
        key=op.sign_key, retired_at="2099-01-01T00:00:00Z"),))
    view.apply(registry.key_for(OPERATOR), registry.sign_entry(REGISTRY_KEY, registry.key_for(OPERATOR), rotated,
                                                               serial=1), 99)
    assert verify_value(SUBJECT, value, view).opt_outs == ["research-consented"]
    # a forged record stays refused however often the registry changes
    forged = seal_record(SUBJECT, _record(Ed25519PrivateKey.generate()))
    for serial, rev in ((2, 100), (3, 101)):
        view.apply(registry.key_for(OPERATOR), registry.sign_entry(REGISTRY_KEY, registry.key_for(OPERATOR), rotated,
                                                                   serial=serial), rev)
        with pytest.raises(PsvnError):
            verify_value(SUBJECT, forged, view)
    assert raw_public(old_key) == rotated.retired_sign_keys[0].key


async def test_a_peer_whose_registry_lags_the_rotation_redelivers_instead_of_quarantining(
        network: Network) -> None:
    from psvn.protocol.subjects import CONSUMER, inbox_stream

    net, council, trust = network, network.COUNCIL, network.TRUST
    rotate_gateway_keys(net.layout.org_dir(council))
    await restart(net, council)
    trust_view = net.gateways[trust].gateway.registry
    await trust_view.stop()  # the trust's registry view now lags
    sign_key, hpke_key, suite = devnet.public_message_keys(net.layout.org_dir(council))
    nc = await devnet.broker_connect(net.layout, net.nats.url)
    try:
        kv = await registry.ensure_bucket(nc.jetstream())
        await registry.rotate_member_keys(kv, council, signer=devnet.registry_signer(net.layout), sign_key=sign_key,
                                          hpke_key=hpke_key, hpke_suite=suite)
        for _ in range(200):
            if net.gateways[council].gateway.registry.members[council].sign_key == sign_key:
                break
            await asyncio.sleep(0.025)
        mid = await send(net, council, referral())  # signed with the new key the trust does not know
        js = nc.jetstream()
        for _ in range(300):  # refused and redelivered, not quarantined
            info = await js.consumer_info(inbox_stream(trust), CONSUMER)
            if info.num_redelivered >= 1:
                break
            await asyncio.sleep(0.025)
        assert info.num_redelivered >= 1
        assert await net.gateways[trust].gateway.store.in_record(mid) is None
        entry = await kv.get(registry.key_for(council))
        trust_view.apply(entry.key, entry.value, entry.revision or 0)  # the view catches up
        await wait_status(net, council, mid, "delivered", timeout=20)
        assert net.gateways[trust].gateway.store.open[mid].status == "delivered"
    finally:
        await nc.close()
