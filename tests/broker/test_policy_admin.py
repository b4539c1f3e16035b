"""The policy workflow against a real nats-server and real gateways: propose, approve, publish."""

from __future__ import annotations

import asyncio
import copy
import tomllib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from psvn import devnet
from psvn.broker import policy_admin, provision
from psvn.broker.policy_admin import PolicyAdmin
from psvn.certs.keys import load_signing_key
from psvn.core.errors import Code, PsvnError
from psvn.policies import bundle
from psvn.policies.review import load_suite
from tests.conftest import Network

DEFAULT_RULES = (bundle.DEFAULT_DIR / "rules.toml").read_text()
DENY_RULE_ID = "no-council-referrals-to-trusts"
DENY_RULE = f"""

[[rule]]
id = "{DENY_RULE_ID}"
effect = "deny"
description = "While the trust's referral service is rebuilt, councils send it no referrals"
from = ["council"]
to = ["nhs-trust"]
types = ["fhir.r4.ServiceRequest"]
overrides = ["care-referrals"]
"""


def edited_rules(extra: str = DENY_RULE) -> str:
    """The default rules.toml with a rule added (councils may no longer refer to trusts)."""
    return DEFAULT_RULES + extra


def next_doc(version: int, rules_text: str | None = None) -> dict[str, Any]:
    base = bundle.load_dir(bundle.DEFAULT_DIR)
    doc, report = policy_admin.lint_text(base, rules_text or edited_rules(), version=version)
    assert doc is not None, report
    return doc


def member_types(net: Network) -> dict[str, str]:
    return {m.org: m.type for m in net.members}


async def open_admin(net: Network, *, signing: bool = True) -> tuple[NATS, PolicyAdmin]:
    nc = await devnet.broker_connect(net.layout, net.nats.url, name="test policy admin")
    admin = await PolicyAdmin.open(
        nc.jetstream(), authority_pub=policy_admin.load_public_key(net.layout.authority_pub),
        signing_key=load_signing_key(net.layout.authority_key) if signing else None,
        members=lambda: member_types(net), suite=load_suite(bundle.DEFAULT_DIR))
    return nc, admin


async def wait_versions(net: Network, version: int, timeout: float = 10.0) -> dict[str, int]:
    """Poll every gateway until it enforces ``version``; return what each enforces."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        seen = {org: gw.gateway.policy.version for org, gw in net.gateways.items()}
        if all(v == version for v in seen.values()) or loop.time() > deadline:
            return seen
        await asyncio.sleep(0.05)


@pytest.fixture
async def admin(network: Network) -> AsyncIterator[PolicyAdmin]:
    nc, adm = await open_admin(network)
    try:
        yield adm
    finally:
        await nc.close()


async def test_two_person_rule_then_publish_records_both(network: Network, admin: PolicyAdmin) -> None:
    assert await admin.current_version() == 1
    p = await admin.propose(next_doc(2), "Alice", rules_text=edited_rules(), note="pause referrals")
    assert (p.status, p.proposer, p.version, p.base_version) == ("proposed", "alice", 2, 1)
    assert p.suite_failed == 0 and p.suite_passed and p.lint_counts["error"] == 0

    for same_person in ("alice", "Alice", " ALICE "):
        with pytest.raises(PsvnError) as exc:
            await admin.approve(p.id, same_person)
        assert (exc.value.code, exc.value.rule) == (Code.FORBIDDEN, "two-person-rule")
    assert (await admin.get(p.id)).status == "proposed"

    with pytest.raises(PsvnError) as exc:
        await admin.publish(p.id, "bob")  # not approved yet
    assert (exc.value.code, exc.value.rule) == (Code.CONFLICT, "proposal-status")
    assert await admin.current_version() == 1

    approved = await admin.approve(p.id, "bob")
    assert (approved.status, approved.proposer, approved.approver) == ("approved", "alice", "bob")
    with pytest.raises(PsvnError) as exc:
        await admin.approve(p.id, "carol")  # approved once is enough; no second approval record
    assert exc.value.rule == "proposal-status"

    published = await admin.publish(p.id, "bob")
    assert (published.status, published.publisher) == ("published", "bob")
    assert published.published_at and published.published_revision > 0

    cur = await admin.current()
    assert cur is not None and cur.signed.version == 2
    assert (cur.signed.proposer, cur.signed.approver) == ("alice", "bob")
    # the approval record is inside the signed document, not only on the bundle's labels
    assert cur.document["meta"]["approval"] == {"proposal": p.id, "proposer": "alice", "approver": "bob",
                                                "approved_at": approved.approved_at, "digest": p.digest}
    assert any(r["id"] == DENY_RULE_ID for r in cur.document["rules"]["rule"])

    history = await admin.history()
    assert [(h.version, h.proposer, h.approver, h.accepted) for h in history] == [
        (2, "alice", "bob", True), (1, "devnet", "devnet", True)]
    assert history[0].proposal == p.id and history[0].published_at == published.published_at

    assert await wait_versions(network, 2) == {org: 2 for org in network.gateways}
    with pytest.raises(PsvnError) as exc:
        await admin.publish(p.id, "bob")  # already published
    assert exc.value.rule == "proposal-status"


async def test_lint_errors_and_failing_examples_block_a_proposal(admin: PolicyAdmin) -> None:
    typo = edited_rules().replace('types = ["fhir.r4.ServiceRequest"]\noverrides',
                                  'types = ["fhir.r4.ServiceRequst"]\noverrides')
    with pytest.raises(PsvnError) as exc:
        await admin.propose(next_doc(2, typo), "alice", rules_text=typo)
    err = exc.value
    assert (err.code, err.rule) == (Code.BAD_REQUEST, "policy-lint")
    assert any("fhir.r4.ServiceRequst" in v.message for v in err.violations)
    line = next(i for i, text in enumerate(typo.splitlines(), 1) if "ServiceRequst" in text)
    assert any(v.path == f"rules.toml:{line}" for v in err.violations), err.violations

    # lint passes, but the examples kept beside the policy fail: councils may refer to trusts
    no_bundles = edited_rules(DENY_RULE.replace('types = ["fhir.r4.ServiceRequest"]',
                                                'types = ["fhir.r4.ServiceRequest", "fhir.r4.Bundle"]'))
    with pytest.raises(PsvnError) as exc:
        await admin.propose(next_doc(2, no_bundles), "alice", rules_text=no_bundles)
    assert (exc.value.code, exc.value.rule) == (Code.BAD_REQUEST, "policy-tests")
    assert any("Council -> NHS trust, referral bundle" in v.path for v in exc.value.violations)

    # ... unless the same proposal changes the example too
    suite = (bundle.DEFAULT_DIR / "tests.toml").read_text()
    marker = 'name = "Council -> NHS trust, referral bundle, safeguarding: allow"'
    start = suite.index(marker)
    end = suite.index("[[case]]", start)
    changed = suite[:start] + suite[start:end].replace('expect = "allow"', 'expect = "deny"') \
        .replace(": allow", ": deny (paused)").replace('rule = "care-referrals"', "") + suite[end:]
    ok = await admin.propose(next_doc(2, no_bundles), "alice", rules_text=no_bundles, tests_text=changed)
    assert ok.status == "proposed" and ok.suite_failed == 0 and ok.tests_text == changed

    with pytest.raises(PsvnError) as exc:
        await admin.propose(next_doc(2), "alice", rules_text=edited_rules(), tests_text="[[case]\nname=1")
    assert (exc.value.code, exc.value.rule) == (Code.BAD_REQUEST, "toml-syntax")
    assert [p.id for p in await admin.proposals()] == [ok.id]  # nothing else was stored


async def test_version_must_increase(network: Network, admin: PolicyAdmin) -> None:
    with pytest.raises(PsvnError) as exc:
        await admin.propose(next_doc(1), "alice")
    assert (exc.value.code, exc.value.rule) == (Code.POLICY_VERSION_REGRESSION, "policy-version-increase")

    first = await admin.propose(next_doc(2), "alice")
    rival = await admin.propose(next_doc(2, edited_rules("\n# same version, other wording\n")), "carol")
    later = await admin.propose(next_doc(3), "dave")  # drafted on version 1 too
    await admin.approve(first.id, "bob")
    await admin.approve(later.id, "bob")
    await admin.publish(first.id, "bob")

    with pytest.raises(PsvnError) as exc:
        await admin.approve(rival.id, "bob")  # version 2 is no longer newer than the published 2
    assert (exc.value.code, exc.value.rule) == (Code.CONFLICT, "policy-version-increase")
    with pytest.raises(PsvnError) as exc:
        await admin.publish(later.id, "bob")  # would silently drop version 2's change
    assert (exc.value.code, exc.value.rule) == (Code.CONFLICT, "proposal-stale")
    assert exc.value.extra["published_version"] == 2

    # the backbone refuses a non-increasing version whoever signs it
    key = load_signing_key(network.layout.authority_key)
    with pytest.raises(PsvnError) as exc:
        await provision.publish_policy(admin.js, bundle.sign(next_doc(2), key))
    assert exc.value.code is Code.POLICY_VERSION_REGRESSION
    assert [h.version for h in await admin.history()] == [2, 1]
    assert await wait_versions(network, 2) == {org: 2 for org in network.gateways}

    # the bundle's proposer/approver labels are not signed: history shows the signed approval
    doc = next_doc(3)
    doc["meta"] = {**doc.get("meta", {}), "approval": {"proposal": "p00000000", "proposer": "alice",
                                                       "approver": "bob"}}
    await provision.publish_policy(admin.js, bundle.sign(doc, key, proposer="mallory", approver="mallory"))
    newest = (await admin.history())[0]
    assert (newest.version, newest.proposer, newest.approver, newest.accepted) == (3, "alice", "bob", True)


async def test_rejected_proposal_cannot_be_approved_and_no_key_cannot_publish(network: Network,
                                                                              admin: PolicyAdmin) -> None:
    p = await admin.propose(next_doc(2), "alice")
    rejected = await admin.reject(p.id, "bob", "not during the winter pressures")
    assert (rejected.status, rejected.rejected_by, rejected.reason) == ("rejected", "bob",
                                                                        "not during the winter pressures")
    with pytest.raises(PsvnError) as exc:
        await admin.approve(p.id, "bob")
    assert exc.value.rule == "proposal-status"

    with pytest.raises(PsvnError) as exc:
        await admin.get("p00000000")
    assert exc.value.code is Code.NOT_FOUND
    with pytest.raises(PsvnError) as exc:
        await admin.get("../policy")
    assert exc.value.code is Code.NOT_FOUND

    nc, keyless = await open_admin(network, signing=False)
    try:
        q = await keyless.propose(next_doc(2), "alice")
        await keyless.approve(q.id, "bob")
        with pytest.raises(PsvnError) as exc:
            await keyless.publish(q.id, "bob")
        assert (exc.value.code, exc.value.rule) == (Code.CONFIG_INVALID, "policy-authority-key")
        assert (await keyless.get(q.id)).status == "approved"
    finally:
        await nc.close()
    assert await admin.current_version() == 1


async def test_racing_publishers_publish_once(network: Network, admin: PolicyAdmin) -> None:
    p = await admin.propose(next_doc(2), "alice")
    await admin.approve(p.id, "bob")
    nc, other = await open_admin(network)
    try:
        results = await asyncio.gather(admin.publish(p.id, "bob"), other.publish(p.id, "carol"),
                                       return_exceptions=True)
    finally:
        await nc.close()
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and len(lost) == 1, results
    assert isinstance(lost[0], PsvnError) and lost[0].code in (Code.CONFLICT, Code.POLICY_VERSION_REGRESSION)
    assert [h.version for h in await admin.history()] == [2, 1]
    assert (await admin.get(p.id)).status == "published"


def test_rules_to_toml_round_trips_the_default_rules() -> None:
    rules = bundle.load_dir(bundle.DEFAULT_DIR)["rules"]
    before = copy.deepcopy(rules)
    text = policy_admin.rules_to_toml(rules, header="regenerated\nfrom the document")
    assert tomllib.loads(text) == rules == before
    assert text.startswith("# regenerated\n# from the document\n\n[purposes.")
    # laid out as the folder's rules.toml is (arrays on one line): each line is one of its lines
    written = {line.split("  #")[0] for line in (bundle.DEFAULT_DIR / "rules.toml").read_text().splitlines()}
    assert [line for line in text.splitlines()[3:] if line and line not in written] == []


def test_rules_to_toml_round_trips_awkward_keys_and_values() -> None:
    rules = {"version_note": "Ŵ \"quoted\" \\ tab\t", "limits": [1, 2.5],
             "purposes": {"direct care": {"description": "é"}, "x.y": {}},
             "rule": [{"id": "a", "match": {"sender type": "gp", "n": [1]}, "to": ["*"]}, {"id": "b"}],
             "retention": {"default_days": 30, "types": {"fhir.r4.Patient": {"days": 7}}}}
    assert tomllib.loads(policy_admin.rules_to_toml(rules, header="h")) == rules
    assert policy_admin.rules_to_toml({}) == "\n"


def test_replay_reports_recorded_traffic_that_would_change() -> None:
    old = bundle.load_dir(bundle.DEFAULT_DIR)
    new = next_doc(2)
    types = {"gss:E06000043": "council", "ods:RYR": "nhs-trust", "ods:G81001": "gp"}
    events: list[dict[str, Any]] = [
        {"event": "sent", "org": "gss:E06000043", "to": "ods:RYR", "type": "fhir.r4.ServiceRequest",
         "purpose": "direct-care", "classification": "OFFICIAL", "message_id": "m1", "direction": "egress"},
        {"event": "sent", "org": "ods:RYR", "to": "gss:E06000043/adult-social-care",
         "type": "fhir.r4.ServiceRequest", "purpose": "direct-care", "classification": "OFFICIAL-SENSITIVE",
         "message_id": "m2", "direction": "egress"},
        {"event": "delivered", "org": "ods:RYR", "to": "ods:RYR", "type": "fhir.r4.ServiceRequest",
         "purpose": "direct-care", "message_id": "m1", "direction": "ingress"},
        {"event": "rejected", "org": "gss:E06000043", "to": "ods:RYR", "type": "fhir.r4.ServiceRequest",
         "purpose": "direct-care", "code": "invalid-payload", "message_id": "m3", "direction": "egress"},
        {"event": "sent", "org": "oda:nowhere", "to": "ods:RYR", "type": "fhir.r4.ServiceRequest",
         "purpose": "direct-care", "message_id": "m4", "direction": "egress"},
        # a retry that found m1 on the backbone (another instance): the same send, not counted again
        {"event": "sent", "org": "gss:E06000043", "to": "ods:RYR", "type": "fhir.r4.ServiceRequest",
         "purpose": "direct-care", "classification": "OFFICIAL", "message_id": "m1", "direction": "egress",
         "found_on_backbone": True},
        # a first request whose ack was lost (refused, outcome unknown), then its retry found it on
        # the backbone: counted once, as the send it was
        {"event": "rejected", "org": "gss:E06000043", "to": "ods:RYR", "type": "fhir.r4.ServiceRequest",
         "purpose": "direct-care", "code": "backbone-unavailable", "message_id": "m5", "direction": "egress",
         "outcome": "unknown"},
        {"event": "sent", "org": "gss:E06000043", "to": "ods:RYR", "type": "fhir.r4.ServiceRequest",
         "purpose": "direct-care", "classification": "OFFICIAL", "message_id": "m5", "direction": "egress",
         "found_on_backbone": True},
    ]
    report = policy_admin.replay(old, new, events, types)
    assert (report.events, report.replayed, report.skipped) == (8, 4, 1)
    assert [(c.message_id, c.kind, c.old.rule_ids, c.new.rule_ids) for c in report.changes] == [
        ("m1", "now-denied", ["care-referrals"], [DENY_RULE_ID]),
        ("m5", "now-denied", ["care-referrals"], [DENY_RULE_ID])]
    assert report.counts == {"now-denied": 2, "now-allowed": 0, "rules-changed": 0}
