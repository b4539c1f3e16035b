"""A published policy reaches every real gateway; a forged or older one reaches none."""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from psvn.broker.policy_admin import PolicyAdmin
from psvn.certs.keys import load_signing_key
from psvn.core.errors import Code, PsvnError
from psvn.policies import bundle
from psvn.protocol.subjects import POLICY_BUCKET, POLICY_KEY
from tests.broker.test_policy_admin import DENY_RULE_ID, next_doc, open_admin, wait_versions
from tests.conftest import Network
from tests.gateway.test_service import call, referral


async def publish(admin: PolicyAdmin, version: int) -> None:
    p = await admin.propose(next_doc(version), "alice")
    await admin.approve(p.id, "bob")
    await admin.publish(p.id, "bob")


async def wait_refused(net: Network, version: int, timeout: float = 10.0) -> dict[str, list[tuple[int, str]]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        refused = {org: list(gw.gateway.policy.rejected) for org, gw in net.gateways.items()}
        if all(any(v == version for v, _ in r) for r in refused.values()) or loop.time() > deadline:
            return refused
        await asyncio.sleep(0.05)


async def test_every_gateway_enforces_a_published_version(network: Network) -> None:
    council_to_trust = referral("ods:RYR")
    code, body = await call(network, network.COUNCIL, "POST", "/v1/messages", council_to_trust)
    assert code == 202, body  # allowed under version 1

    nc, admin = await open_admin(network)
    try:
        await publish(admin, 2)
    finally:
        await nc.close()
    assert await wait_versions(network, 2) == {org: 2 for org in network.gateways}

    code, body = await call(network, network.COUNCIL, "POST", "/v1/messages", council_to_trust)
    assert code == 403, body
    assert body["code"] == Code.POLICY_DENIED.value
    assert body["rule"] == DENY_RULE_ID and body["rule_ids"] == [DENY_RULE_ID]
    assert body["policy_version"] == 2

    # what the new rule does not touch still flows: trust -> council adult social care
    code, body = await call(network, network.TRUST, "POST", "/v1/messages",
                            referral("gss:E06000043/adult-social-care"))
    assert code == 202, body
    assert body["policy"] == {"version": 2, "rule_ids": ["care-referrals"]}


async def test_older_or_forged_versions_are_refused_by_every_gateway(network: Network) -> None:
    nc, admin = await open_admin(network)
    try:
        await publish(admin, 2)
        assert await wait_versions(network, 2) == {org: 2 for org in network.gateways}
        kv = await admin.js.key_value(POLICY_BUCKET)
        authority = load_signing_key(network.layout.authority_key)

        # a genuine but older version, put straight into the bucket (bypassing publish_policy)
        await kv.put(POLICY_KEY, bundle.encode(bundle.sign(next_doc(1), authority, proposer="mallory")))
        refused = await wait_refused(network, 1)
        for org, rejected in refused.items():
            reasons = [r for v, r in rejected if v == 1]
            assert reasons and "not newer than the enforced version 2" in reasons[0], (org, rejected)

        # a newer version signed by some other key
        forger = Ed25519PrivateKey.generate()
        await kv.put(POLICY_KEY, bundle.encode(bundle.sign(next_doc(3), forger, proposer="mallory",
                                                           approver="mallory")))
        refused = await wait_refused(network, 3)
        for org, rejected in refused.items():
            reasons = [r for v, r in rejected if v == 3]
            assert reasons and "signature does not verify" in reasons[0], (org, rejected)
        assert {org: gw.gateway.policy.version for org, gw in network.gateways.items()} == \
            {org: 2 for org in network.gateways}

        # the forged message rules are not enforced: councils still may not refer to trusts (v2)
        code, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral("ods:RYR"))
        assert (code, body["rule"]) == (403, DENY_RULE_ID)

        # the broker's history lists both as refused, and the current version is still 2
        history = await admin.history()
        assert [(h.version, h.accepted) for h in history] == [(3, False), (1, False), (2, True), (1, True)]
        assert "signature" in history[0].reason and "not newer" in history[1].reason
        assert await admin.current_version() == 2

        # publish_policy compares with the bucket's last entry (the forged 3): the workflow's
        # next genuine version must be above it, and gateways accept it
        with_forgery_in_place = next_doc(4)
        p = await admin.propose(with_forgery_in_place, "alice")
        await admin.approve(p.id, "bob")
        await admin.publish(p.id, "bob")
        assert await wait_versions(network, 4) == {org: 4 for org in network.gateways}
    finally:
        await nc.close()


async def test_workflow_refuses_to_publish_below_a_forged_entry(network: Network) -> None:
    """A forged high version in the bucket blocks publication loudly rather than being skipped."""
    nc, admin = await open_admin(network)
    try:
        kv = await admin.js.key_value(POLICY_BUCKET)
        forger = Ed25519PrivateKey.generate()
        await kv.put(POLICY_KEY, bundle.encode(bundle.sign(next_doc(9), forger)))
        await wait_refused(network, 9)
        p = await admin.propose(next_doc(2), "alice")  # 2 > the newest genuine version, 1
        await admin.approve(p.id, "bob")
        with pytest.raises(PsvnError) as exc:
            await admin.publish(p.id, "bob")
        assert (exc.value.code, exc.value.rule) == (Code.POLICY_VERSION_REGRESSION, "policy-bucket-refused-entry")
        assert exc.value.extra["refused_version"] == 9
        assert (await admin.get(p.id)).status == "approved"
        assert {org: gw.gateway.policy.version for org, gw in network.gateways.items()} == \
            {org: 1 for org in network.gateways}
    finally:
        await nc.close()
