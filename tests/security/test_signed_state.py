"""Nothing on the backbone is trusted because of where it lies (issue 8).

A compromised backbone is simulated with the broker's own credentials (which may write the shared
buckets): it blanks, deletes, purges, forges and replays registry entries and the policy set. Every
gateway must refuse each such value loudly (logged, counted in
``psvn_backbone_values_refused_total``, listed by /healthz) and keep working on the previous good
value: a message to the member whose entry was attacked is still accepted (202) and delivered.
Only a signed tombstone removes a member.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.js.kv import KeyValue

from psvn import devnet
from psvn.broker import registry
from psvn.certs.keys import raw_public
from psvn.core.errors import Code, PsvnError
from psvn.gateway.config import GatewayConfig
from psvn.gateway.service import Gateway, trust_anchor
from psvn.policies import bundle
from psvn.protocol.subjects import POLICY_BUCKET, POLICY_KEY, REGISTRY_BUCKET
from tests.conftest import Network
from tests.gateway.test_service import call, referral, wait_status


# -- helpers ------------------------------------------------------------------------------------
@asynccontextmanager
async def backbone_bucket(net: Network, bucket: str) -> AsyncIterator[KeyValue]:
    """The bucket as a compromised backbone sees it: the broker's user may write anything."""
    nc = await devnet.broker_connect(net.layout, net.nats.url, name="hostile backbone")
    try:
        yield await nc.jetstream().key_value(bucket)
    finally:
        await nc.close()


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds or the deadline passes (no sleep is a proof)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


def refusals(gw: Gateway, bucket: str) -> float:
    value = gw.metrics.registry.get_sample_value("psvn_backbone_values_refused_total", {"bucket": bucket})
    return value or 0.0


def gateways(net: Network) -> list[Gateway]:
    return [s.gateway for s in net.gateways.values()]


async def still_delivered(net: Network, to: str) -> None:
    """The council sends the member a referral: accepted and delivered, so every gateway on its way
    (the council's registry view, the recipient's policy) still works on the good values."""
    status, body = await call(net, net.COUNCIL, "POST", "/v1/messages", referral(to=to))
    assert status == 202, body
    await wait_status(net, net.COUNCIL, body["id"], "delivered")


async def healthz(net: Network, org: str) -> dict[str, object]:
    status, body = await call(net, org, "GET", "/healthz")
    assert status == 200, body
    return body


def forged_member(net: Network, org: str) -> registry.Member:
    """The member's genuine record with the attacker's sealing key: mail would be sealed to them."""
    record = devnet.member_record(net.layout, net.member(org))
    return msgspec.structs.replace(record, hpke_key=raw_public(Ed25519PrivateKey.generate()))


# -- the registry -------------------------------------------------------------------------------
async def blank(net: Network, kv: KeyValue, key: str) -> None:
    await kv.put(key, b"")


async def delete(net: Network, kv: KeyValue, key: str) -> None:
    await kv.delete(key)


async def purge(net: Network, kv: KeyValue, key: str) -> None:
    """A purge marker, as ``kv.purge`` writes it but without its rollup header: the shared buckets
    refuse rollups (a member could wipe a bucket with one), so this is what a writer can still do."""
    await kv._js.publish(f"$KV.{kv._name}.{key}", b"", headers={"KV-Operation": "PURGE"})


async def forge_unsigned(net: Network, kv: KeyValue, key: str) -> None:
    """A valid JSON Member, as the registry stored them before entries were signed."""
    await kv.put(key, msgspec.json.encode(forged_member(net, net.TRUST)))


async def forge_signed_by_made_up_key(net: Network, kv: KeyValue, key: str) -> None:
    await kv.put(key, registry.sign_entry(Ed25519PrivateKey.generate(), key, forged_member(net, net.TRUST),
                                          serial=2**62))


async def replay_under_another_key(net: Network, kv: KeyValue, key: str) -> None:
    """The council's genuine, correctly signed entry, put under the trust's key."""
    council = await kv.get(registry.key_for(net.COUNCIL))
    await kv.put(key, council.value or b"")


async def replay_an_older_entry(net: Network, kv: KeyValue, key: str) -> None:
    """A genuine entry of the trust's own, but older than the one in force (a rollback)."""
    older = await kv.get(key)
    authority = devnet.registry_signer(net.layout).public_key()
    await registry.set_status(kv, net.TRUST, "active", devnet.registry_signer(net.layout))  # a newer genuine one
    newer = registry.verify_entry(authority, key, (await kv.get(key)).value).serial
    assert newer > registry.verify_entry(authority, key, older.value).serial
    await until(lambda: all(gw.registry.serials[key] == newer for gw in gateways(net)), "the newer entry applied")
    await kv.put(key, older.value or b"")


ATTACKS = {  # attack -> what the refusal says
    "blanked": (blank, "an empty value"),
    "delete-marker": (delete, "delete or purge marker"),
    "purge": (purge, "delete or purge marker"),
    "forged-unsigned": (forge_unsigned, "not a signed registry entry"),
    "forged-made-up-key": (forge_signed_by_made_up_key, "signature does not verify"),
    "signed-for-another-key": (replay_under_another_key, "signed for key 'org.gss_E06000043'"),
    "older-entry-replayed": (replay_an_older_entry, "not newer than the entry in force"),
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
async def test_a_tampered_registry_entry_is_refused_and_the_member_kept(network: Network, attack: str) -> None:
    net, key = network, registry.key_for(network.TRUST)
    before = {gw.org: gw.registry.members[net.TRUST] for gw in gateways(net)}
    counted = {gw.org: refusals(gw, REGISTRY_BUCKET) for gw in gateways(net)}
    tamper, reason = ATTACKS[attack]
    async with backbone_bucket(net, REGISTRY_BUCKET) as kv:
        await tamper(net, kv, key)
    await until(lambda: all(key in gw.registry.refused for gw in gateways(net)), "every gateway refuses the value")
    for gw in gateways(net):
        assert reason in gw.registry.refused[key], (gw.org, gw.registry.refused[key])
        assert gw.registry.members[net.TRUST] == before[gw.org], gw.org  # the previous good entry stays
        assert refusals(gw, REGISTRY_BUCKET) >= counted[gw.org] + 1, gw.org
    health = await healthz(net, net.COUNCIL)
    assert health["status"] == "warning"
    assert {"bucket": REGISTRY_BUCKET, "key": key, "reason": net.gateways[net.COUNCIL].gateway.registry.refused[key]} \
        in health["refused_backbone_values"]  # type: ignore[operator]
    await still_delivered(net, net.TRUST)


async def test_recovery_from_history_clears_the_refusal(network: Network) -> None:
    """An operator puts back the newest verified entry from the key's history (no key needed)."""
    net, key = network, registry.key_for(network.TRUST)
    authority = devnet.registry_signer(net.layout).public_key()
    async with backbone_bucket(net, REGISTRY_BUCKET) as kv:
        good = (await kv.get(key)).value
        await kv.put(key, b"")
        await until(lambda: all(key in gw.registry.refused for gw in gateways(net)), "refused")
        restored = await registry.recover_member(kv, net.TRUST, authority)
        assert restored.member is not None and restored.member.address == net.TRUST
        assert (await kv.get(key)).value == good
    await until(lambda: all(not gw.registry.refused for gw in gateways(net)), "every refusal cleared")
    assert (await healthz(net, net.COUNCIL))["status"] == "ok"
    await still_delivered(net, net.TRUST)


async def test_a_signed_tombstone_removes_a_member(network: Network) -> None:
    net = network
    async with backbone_bucket(net, REGISTRY_BUCKET) as kv:
        await registry.remove_member(kv, net.TRUST, devnet.registry_signer(net.layout))
    await until(lambda: all(net.TRUST not in gw.registry.members for gw in gateways(net) if gw.org != net.TRUST),
                "every gateway forgets the member")
    for gw in gateways(net):
        assert not gw.registry.refused and refusals(gw, REGISTRY_BUCKET) == 0
    status, problem = await call(net, net.COUNCIL, "POST", "/v1/messages", referral(to=net.TRUST))
    assert (problem["code"], problem["field"]) == ("unknown-recipient", "to"), (status, problem)


# -- the policy set -----------------------------------------------------------------------------
async def policy_blank(net: Network, kv: KeyValue) -> None:
    await kv.put(POLICY_KEY, b"")


async def policy_delete(net: Network, kv: KeyValue) -> None:
    await kv.delete(POLICY_KEY)


async def policy_forged(net: Network, kv: KeyValue) -> None:
    """A newer version with no rules at all, signed by a key the attacker made up."""
    doc = {**bundle.load_dir(), "version": 99, "rules": {}}
    await kv.put(POLICY_KEY, bundle.encode(bundle.sign(doc, Ed25519PrivateKey.generate())))


async def policy_tampered(net: Network, kv: KeyValue) -> None:
    """The genuine signature on the version in force, over a document that was changed."""
    signed = bundle.decode((await kv.get(POLICY_KEY)).value or b"")
    doc = msgspec.json.decode(signed.document)
    doc["rules"] = {}
    await kv.put(POLICY_KEY, bundle.encode(msgspec.structs.replace(signed, document=bundle.canonical(doc))))


POLICY_ATTACKS: dict[str, tuple[Callable[[Network, KeyValue], Awaitable[None]], str]] = {
    "blanked": (policy_blank, "an empty value"),
    "delete-marker": (policy_delete, "delete or purge marker"),
    "forged-made-up-key": (policy_forged, "signature does not verify"),
    "tampered-same-version": (policy_tampered, "not the signed document in force"),
}


@pytest.mark.parametrize("attack", list(POLICY_ATTACKS), ids=list(POLICY_ATTACKS))
async def test_a_tampered_policy_set_is_refused_and_the_policy_kept(network: Network, attack: str) -> None:
    net = network
    versions = {gw.org: gw.policy.version for gw in gateways(net)}
    snapshots = {gw.org: gw.policy.snapshot for gw in gateways(net)}
    tamper, reason = POLICY_ATTACKS[attack]
    async with backbone_bucket(net, POLICY_BUCKET) as kv:
        await tamper(net, kv)
    await until(lambda: all(POLICY_KEY in gw.policy.refused for gw in gateways(net)),
                "every gateway refuses the policy value")
    for gw in gateways(net):
        assert reason in gw.policy.refused[POLICY_KEY], (gw.org, gw.policy.refused[POLICY_KEY])
        assert gw.policy.version == versions[gw.org] and gw.policy.snapshot is snapshots[gw.org], gw.org
        assert refusals(gw, POLICY_BUCKET) >= 1, gw.org
    health = await healthz(net, net.TRUST)
    assert health["status"] == "warning" and health["policy_version"] == versions[net.TRUST]
    assert [r["bucket"] for r in health["refused_backbone_values"]] == [POLICY_BUCKET]  # type: ignore[attr-defined]
    await still_delivered(net, net.TRUST)


# -- the trust anchor in the gateway's configuration ------------------------------------------
def test_a_missing_or_unusable_registry_authority_is_a_named_config_error(tmp_path: Path) -> None:
    with pytest.raises(PsvnError) as err:
        trust_anchor(str(tmp_path / "absent.pub"), "keys.registry_authority")
    assert (err.value.code, err.value.field, err.value.rule) == (Code.CONFIG_INVALID, "keys.registry_authority",
                                                                 "key-file")
    assert "absent.pub" in err.value.detail
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(PsvnError) as err:
        trust_anchor(str(tmp_path / "junk.pub"), "keys.registry_authority")
    assert (err.value.field, err.value.rule) == ("keys.registry_authority", "key-type")


async def test_a_gateway_will_not_start_without_its_registry_authority(network: Network) -> None:
    trust = network.gateways[network.TRUST]
    cfg: GatewayConfig = msgspec.structs.replace(trust.config, keys=msgspec.structs.replace(
        trust.config.keys, registry_authority=str(network.layout.root / "missing.pub")))
    with pytest.raises(PsvnError) as err:
        Gateway(cfg)
    assert err.value.field == "keys.registry_authority"
