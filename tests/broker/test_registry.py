"""The registry in KV reaches every gateway live: a revoked member can neither receive nor send."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from psvn import devnet
from psvn.broker import registry
from tests.conftest import Network
from tests.gateway.test_service import REFERRAL, call, referral, wait_status


async def set_status(net: Network, org: str, status: str) -> None:
    nc = await devnet.broker_connect(net.layout, net.nats.url)
    try:
        kv = await registry.ensure_bucket(nc.jetstream())
        await registry.set_status(kv, org, status, devnet.registry_signer(net.layout))  # type: ignore[arg-type]
    finally:
        await nc.close()


async def wait_member_status(net: Network, viewer: str, org: str, status: str) -> None:
    view = net.gateways[viewer].gateway.registry
    for _ in range(200):
        if view.members[org].status == status:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{viewer} never saw {org} as {status}")


async def test_every_gateway_sees_the_registry(network: Network) -> None:
    for gw in network.gateways.values():
        members = gw.gateway.registry.members
        assert set(members) == {network.COUNCIL, network.TRUST, network.GP}
        trust = members[network.TRUST]
        assert trust.type == "nhs-trust" and len(trust.sign_key) == 32 and len(trust.hpke_key) == 32
        assert len(trust.cert_fingerprint) == 64 and trust.status == "active"


async def test_revoked_recipient_is_refused_at_egress(network: Network) -> None:
    await set_status(network, network.TRUST, "revoked")
    await wait_member_status(network, network.COUNCIL, network.TRUST, "revoked")
    status, problem = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    assert (status, problem["code"], problem["field"]) == (403, "member-revoked", "to")
    await set_status(network, network.TRUST, "active")
    await wait_member_status(network, network.COUNCIL, network.TRUST, "active")
    status, _ = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    assert status == 202


async def test_the_authority_says_which_wire_version_a_members_gateway_opens(network: Network) -> None:
    """`registry.set_wire` (``psvn registry wire``): a signed write every gateway sees, kept by the
    entry's later writes (a suspension, say); the council then seals to the trust in that form,
    and the trust's mail is delivered either way. A version no gateway opens is refused."""
    from psvn.core.errors import Code, PsvnError
    from psvn.protocol import seal
    from psvn.protocol.subjects import inbox_stream, msg_subject

    signer = devnet.registry_signer(network.layout)
    nc = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        kv = await registry.ensure_bucket(nc.jetstream())
        before = await registry.get_member(kv, signer.public_key(), network.TRUST)
        lowered = await registry.set_wire(kv, network.TRUST, 1, signer)
        assert lowered == msgspec.structs.replace(before, wire=1)  # nothing else changed
        with pytest.raises(PsvnError) as err:
            await registry.set_wire(kv, network.TRUST, 3, signer)
        assert (err.value.code, err.value.field, err.value.rule) == (Code.BAD_REQUEST, "wire", "wire-version")
        await registry.set_status(kv, network.TRUST, "suspended", signer)
        assert (await registry.get_member(kv, signer.public_key(), network.TRUST)).wire == 1
        await registry.set_status(kv, network.TRUST, "active", signer)
        view = network.gateways[network.COUNCIL].gateway.registry
        last = msgspec.structs.replace(lowered, status="active")  # what the bucket now says
        for _ in range(200):  # the council's view follows the bucket, until it has the last write
            if view.members[network.TRUST] == last:
                break
            await asyncio.sleep(0.025)
        assert view.members[network.TRUST] == last
        status, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
        assert status == 202
        stored = await nc.jetstream().get_last_msg(inbox_stream(network.TRUST),
                                                   msg_subject(network.TRUST, network.COUNCIL))
        assert msgspec.msgpack.decode(stored.data or b"", type=seal.Wire).v == 1
        assert (await registry.set_wire(kv, network.TRUST, 2, signer)).wire == 2
    finally:
        await nc.close()
    await wait_status(network, network.COUNCIL, body["id"], "delivered")  # opened, filed, receipted
    _, item = await call(network, network.TRUST, "GET", f"/v1/inbox/{body['id']}")
    assert item["payload"] == REFERRAL


async def test_message_from_a_suspended_member_is_quarantined(network: Network) -> None:
    # The trust learns of the suspension; the council gateway does not know yet and sends.
    await set_status(network, network.COUNCIL, "suspended")
    await wait_member_status(network, network.TRUST, network.COUNCIL, "suspended")
    council = network.gateways[network.COUNCIL].gateway
    council.registry.members[network.COUNCIL] = msgspec.structs.replace(
        council.registry.members[network.COUNCIL], status="active")
    status, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    assert status == 202
    for _ in range(200):
        _, q = await call(network, network.TRUST, "GET", "/v1/inbox?status=quarantined")
        if q["messages"]:
            break
        await asyncio.sleep(0.025)
    assert [m["id"] for m in q["messages"]] == [body["id"]]
    assert q["messages"][0]["reason"].startswith("member-revoked")


async def test_a_restarted_gateway_cannot_be_rolled_back_to_an_older_policy(network: Network) -> None:
    """The backbone serves an older (genuinely signed) policy after a restart: the gateway refuses it."""
    import pytest

    from psvn.broker import provision
    from psvn.certs.keys import load_signing_key
    from psvn.core.errors import Code, PsvnError
    from psvn.gateway.server import GatewayServer
    from psvn.policies import bundle
    from psvn.protocol.subjects import POLICY_BUCKET, POLICY_KEY

    authority = load_signing_key(network.layout.authority_key)
    doc = bundle.load_dir()
    nc = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        js = nc.jetstream()
        await provision.publish_policy(js, bundle.sign({**doc, "version": 2}, authority))
        trust = network.gateways.pop(network.TRUST)
        for _ in range(200):
            if trust.gateway.store.policy_floor == 2:
                break
            await asyncio.sleep(0.025)
        assert trust.gateway.policy.version == 2 and trust.gateway.store.policy_floor == 2
        await trust.stop()
        kv = await js.key_value(POLICY_BUCKET)
        await kv.put(POLICY_KEY, bundle.encode(bundle.sign({**doc, "version": 1}, authority)))
        cfg = msgspec.structs.replace(trust.config, gateway=msgspec.structs.replace(
            trust.config.gateway, policy_wait_seconds=1.5))
        restarted = GatewayServer(cfg)
        with pytest.raises(PsvnError) as err:
            await restarted.start()
        await restarted.gateway.stop()
        assert err.value.code is Code.POLICY_VERSION_REGRESSION and err.value.rule == "policy-ready"
        assert "floor v2" in err.value.detail and "v1:" in err.value.detail
    finally:
        await nc.close()


async def test_reprovisioning_and_rotation_keep_former_signing_keys(network: Network) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from psvn import devnet
    from psvn.certs.keys import raw_public
    from psvn.core.errors import Code, PsvnError

    nc = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        kv = await registry.ensure_bucket(nc.jetstream())
        signer = devnet.registry_signer(network.layout)
        spec = next(m for m in devnet.EXAMPLE_MEMBERS if m.org == network.GP)
        record = devnet.member_record(network.layout, spec)
        before = await kv.get(registry.key_for(network.GP))
        # provisioning again with the same keys changes nothing (not even the join date)
        assert await registry.upsert_member(kv, record, signer) == before.revision

        k1, k2, k3 = (raw_public(Ed25519PrivateKey.generate()) for _ in range(3))
        await registry.upsert_member(kv, msgspec.structs.replace(record, sign_key=k1), signer)
        member = await registry.get_member(kv, signer.public_key(), network.GP)
        assert member.sign_key == k1 and [r.key for r in member.retired_sign_keys] == [record.sign_key]

        rotated = await registry.rotate_member_keys(kv, network.GP, signer=signer, sign_key=k2,
                                                    hpke_key=record.hpke_key, hpke_suite=record.hpke_suite)
        assert rotated.sign_key == k2 and [r.key for r in rotated.retired_sign_keys] == [record.sign_key, k1]
        assert await registry.rotate_member_keys(kv, network.GP, signer=signer, sign_key=k2,
                                                 hpke_key=record.hpke_key,
                                                 hpke_suite=record.hpke_suite) == rotated  # a retry: no-op
        await wait_member_status(network, network.COUNCIL, network.GP, "active")
        for _ in range(200):  # every gateway sees the new key and the retired ones
            seen = network.gateways[network.COUNCIL].gateway.registry.members[network.GP]
            if seen.sign_key == k2:
                break
            await asyncio.sleep(0.025)
        assert seen == rotated

        for _ in range(6):  # every retired key is kept: consent records never expire
            k3 = raw_public(Ed25519PrivateKey.generate())
            last = await registry.rotate_member_keys(kv, network.GP, signer=signer, sign_key=k3,
                                                     hpke_key=record.hpke_key, hpke_suite=record.hpke_suite)
        assert len(last.retired_sign_keys) == 2 + 6
        assert last.retired_sign_keys[:2] == rotated.retired_sign_keys

        with pytest.raises(PsvnError) as err:
            await registry.rotate_member_keys(kv, "ods:XXXXX", signer=signer, sign_key=k1, hpke_key=record.hpke_key,
                                              hpke_suite=record.hpke_suite)
        assert (err.value.code, err.value.field) == (Code.UNKNOWN_RECIPIENT, "org")
    finally:
        await nc.close()
