"""policies/review.py: the example suite, explain, and diff (exactly the decisions a change alters)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from psvn.core.errors import Code, PsvnError
from psvn.policies.bundle import DEFAULT_DIR, load_dir
from psvn.policies.consent import ConsentChange, ConsentRegistry
from psvn.policies.engine import DecisionRequest, Engine
from psvn.policies.review import (
    OPTED_OUT_SUBJECT,
    Case,
    DecisionSpace,
    anonymous,
    decide_all,
    describe_request,
    diff,
    diff_requests,
    explain,
    group_changes,
    load_suite,
    opted_out_registry,
    parse_suite,
    run_suite,
)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return load_dir()


def bump(doc: dict[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(doc)
    new["version"] = doc["version"] + 1
    return new


def rule(doc: dict[str, Any], rid: str) -> dict[str, Any]:
    return next(r for r in doc["rules"]["rule"] if r["id"] == rid)


# --- the suite --------------------------------------------------------------------------------

def test_default_suite_passes_on_the_default_policy(doc: dict[str, Any]) -> None:
    report = run_suite(doc, load_suite(DEFAULT_DIR))
    assert report.ok, [(r.name, r.problems) for r in report.results if not r.passed]
    assert report.passed >= 30
    names = [r.name for r in report.results]
    assert "NHS trust -> council adult social care, referral, direct care: allow" in names
    # every routing and feed rule is exercised by some example
    routing = {r["id"] for r in doc["rules"]["rule"]} | {f["id"] for f in doc["rules"]["feed"]}
    assert not routing & set(report.uncovered)


def test_suite_reports_each_kind_of_failure(doc: dict[str, Any]) -> None:
    base = {"from": "ods:RYR", "from_type": "nhs-trust", "to": "gss:E06000043/adult-social-care",
            "to_type": "council", "type": "fhir.r4.ServiceRequest", "purpose": "direct-care"}
    cases = parse_suite({"case": [
        {**base, "name": "wrong outcome", "expect": "deny"},
        {**base, "name": "wrong rule", "expect": "allow", "rule": "tell-us-once"},
        {**base, "name": "no such rule", "expect": "allow", "rule": "care-referals"},
        {**base, "name": "wrong stage", "expect": "allow", "stage": "feed"},
        {**base, "name": "right", "expect": "allow", "rule": "care-referrals", "stage": "routing"},
    ]})
    report = run_suite(doc, cases)
    assert (report.passed, report.failed) == (1, 4)
    problems = {r.name: r.problems for r in report.results}
    assert problems["wrong outcome"][0].startswith("expected deny, got allow: NHS bodies")
    assert problems["wrong rule"] == ["expected rule tell-us-once to decide, got care-referrals"]
    assert "no rule 'care-referals' in the policy" in problems["no such rule"][0]
    assert problems["wrong stage"] == ["expected stage feed, got routing"]
    assert problems["right"] == []


def test_suite_case_with_opt_out_uses_a_registry(doc: dict[str, Any]) -> None:
    case = Case(name="x", from_="ods:RYR", from_type="nhs-trust", to="gss:E06000043",
                to_type="council", type="fhir.r4.ServiceRequest", purpose="direct-care",
                subject="nhs:9434765919", opted_out=["direct-care"], expect="deny",
                rule="consent-honour-opt-out")
    assert run_suite(doc, [case]).ok
    with pytest.raises(PsvnError) as exc:
        Case(name="y", from_="ods:RYR", from_type="nhs-trust", type="t", purpose="p",
             opted_out=["direct-care"], expect="deny").registry()
    assert "opted_out needs a subject" in exc.value.detail


def test_bad_suites_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PsvnError) as exc:
        load_suite(tmp_path)
    assert exc.value.code is Code.NOT_FOUND
    (tmp_path / "tests.toml").write_text("[[case]]\nname = 'x'\nfrom = \n")
    with pytest.raises(PsvnError) as exc:
        load_suite(tmp_path)
    assert exc.value.rule == "toml-syntax"
    with pytest.raises(PsvnError) as exc:
        parse_suite({"case": [{"name": "x", "expect": "maybe"}]})
    assert "case[0] (x)" in exc.value.detail
    with pytest.raises(PsvnError) as exc:
        parse_suite({"cases": []})
    assert "unknown section" in exc.value.detail


# --- explain ----------------------------------------------------------------------------------

def test_explain_names_matched_and_unmatched_rules(doc: dict[str, Any]) -> None:
    req = DecisionRequest(sender="ods:G81001", sender_type="gp", recipient="pol:sussex",
                          recipient_type="police", type="fhir.r4.Patient", purpose="safeguarding")
    e = explain(doc, req)
    assert not e.decision.allow and e.decision.rule_ids == ["no-demographics-to-police"]
    steps = {s.rule_id: s for s in e.steps}
    assert steps["safeguarding-to-police"].matched  # matched, but the deny wins
    assert steps["no-demographics-to-police"].matched
    assert not steps["care-referrals"].matched
    assert "to [nhs-trust, gp, council] does not include police pol:sussex" in steps["care-referrals"].why
    assert [s.rule_id for s in e.deciding()] == ["no-demographics-to-police"]
    stages = [s.stage for s in e.steps]
    assert stages.index("legal-basis") < stages.index("classification") < stages.index("routing")


def test_explain_and_decide_agree_over_the_decision_space(doc: dict[str, Any]) -> None:
    """Explain runs every rule (no memo, no prefilter); decide takes the fast path."""
    engine = Engine.from_document(doc)
    registry = opted_out_registry()
    checked = 0
    for i, (req, _case, decision) in enumerate(decide_all(engine, DecisionSpace(doc))):
        if i % 7:
            continue
        explained, _ = engine.explain(req, consent=registry)
        assert explained == decision, req
        checked += 1
    assert checked > 1000


# --- the decision space -----------------------------------------------------------------------

def test_space_has_every_member_type_and_every_named_member_mailbox_and_type(doc: dict[str, Any]) -> None:
    space = DecisionSpace(doc)
    orgs = {o for o, _ in space.parties}
    assert {anonymous("council"), "gss:E06000043", "oda:brighton"} <= orgs
    assert ("(any charity)", "charity", None) in space.recipients
    assert ("(any council)", "council", "adult-social-care") in space.recipients
    assert ("(any business)", "business", "care-provider") in space.recipients
    assert set(doc["catalogue"]) <= set(space.types)
    assert {"direct-care", "safeguarding", "aggregate-statistics"} <= set(space.purposes)
    assert space.levels == ["OFFICIAL", "OFFICIAL-SENSITIVE"]
    assert "aggregates.example" in space.topics
    assert len(space) == sum(1 for _ in space.points())


# --- diff -------------------------------------------------------------------------------------

def test_identical_versions_change_nothing(doc: dict[str, Any]) -> None:
    report = diff(doc, bump(doc))
    assert report.changes == [] and report.compared == len(DecisionSpace(doc))
    assert (report.old_version, report.new_version) == (1, 2)


def test_widening_a_rule_reports_exactly_the_new_allows(doc: dict[str, Any]) -> None:
    new = bump(doc)
    rule(new, "social-prescribing")["types"] = ["fhir.r4.ServiceRequest", "fhir.r4.Patient"]
    report = diff(doc, new, rule_changes=False)
    space = DecisionSpace(doc, new)
    gps_and_councils = [p for p in space.parties if p[1] in ("gp", "council")]
    charities = [r for r in space.recipients if r[1] == "charity"]
    # OFFICIAL only; a subject that opted out stays denied (by consent now, not by routing)
    expected = {(s[0], s[1], c[0], "fhir.r4.Patient", "direct-care", "OFFICIAL", case)
                for s in gps_and_councils for c in charities for case in ("no-subject", "subject")}
    got = {(c.request["from"], c.request["from_type"], c.request["to"], c.request["type"],
            c.request["purpose"], c.request["classification"], c.consent) for c in report.changes}
    assert got == expected
    assert report.counts == {"now-allowed": len(expected), "now-denied": 0, "rules-changed": 0}
    assert all(c.old.rule_ids == ["default-deny"] and c.new.rule_ids == ["social-prescribing"]
               for c in report.changes)


def test_narrowing_a_rule_reports_exactly_the_lost_allows(doc: dict[str, Any]) -> None:
    """Oracle: under the old policy, the allows that care-referrals decided for safeguarding;
    nothing else in the new policy allows them."""
    new = bump(doc)
    rule(new, "care-referrals")["purposes"] = ["direct-care"]
    old_engine = Engine.from_document(doc)
    expected = {(tuple(sorted(describe_request(req).items())), case)
                for req, case, d in decide_all(old_engine, DecisionSpace(doc, new), prune=False)
                if d.allow and "care-referrals" in d.rule_ids and req.purpose == "safeguarding"}
    report = diff(doc, new)
    got = {(tuple(sorted(c.request.items())), c.consent) for c in report.changes}
    assert got == expected and expected
    assert {c.kind for c in report.changes} == {"now-denied"}
    # the safeguarding override no longer matters for them either
    assert any(c.consent == "opted-out" and "consent-safeguarding-override" in c.old.rule_ids
               for c in report.changes)


def test_renaming_a_rule_changes_rules_not_outcomes(doc: dict[str, Any]) -> None:
    new = bump(doc)
    rule(new, "tell-us-once")["id"] = "tell-us-once-v2"
    report = diff(doc, new)
    assert report.counts["now-allowed"] == report.counts["now-denied"] == 0
    assert report.counts["rules-changed"] > 0
    assert all(c.old.rule_ids == ["tell-us-once"] and c.new.rule_ids == ["tell-us-once-v2"]
               for c in report.changes)
    assert diff(doc, new, rule_changes=False).changes == []


def test_retention_change_is_a_rules_change(doc: dict[str, Any]) -> None:
    new = bump(doc)
    next(r for r in new["rules"]["retention"] if r["id"] == "retention-address-change")[
        "retention_days"] = 3
    report = diff(doc, new)
    assert report.changes and {c.kind for c in report.changes} == {"rules-changed"}
    assert {(c.old.retention_days, c.new.retention_days) for c in report.changes} == {(7, 3)}


def test_diff_groups_and_traffic_replay(doc: dict[str, Any]) -> None:
    new = bump(doc)
    rule(new, "social-prescribing")["types"] = ["fhir.r4.ServiceRequest", "fhir.r4.Patient"]
    groups = group_changes(diff(doc, new, rule_changes=False).changes)
    assert {(g.from_type, g.to, g.type) for g in groups} == {("gp", "charity", "fhir.r4.Patient"),
                                                            ("council", "charity", "fhir.r4.Patient")}
    traffic = [
        DecisionRequest(sender="ods:G81001", sender_type="gp", recipient="ccn:1123456",
                        recipient_type="charity", type="fhir.r4.Patient", purpose="direct-care"),
        DecisionRequest(sender="ods:G81001", sender_type="gp", recipient="ccn:1123456",
                        recipient_type="charity", type="fhir.r4.Patient", purpose="direct-care",
                        subject=OPTED_OUT_SUBJECT),
        DecisionRequest(sender="ods:RYR", sender_type="nhs-trust", recipient="gss:E06000043",
                        recipient_type="council", type="fhir.r4.ServiceRequest",
                        purpose="direct-care"),
    ]
    reg = ConsentRegistry()
    reg.apply(ConsentChange(subject=OPTED_OUT_SUBJECT, seq=1, opt_outs=["*"],
                            effective="2025-01-01T00:00:00Z"))
    report = diff_requests(doc, new, traffic, consent=reg, rule_changes=False)
    assert report.compared == 3
    assert [c.request["from"] for c in report.changes] == ["ods:G81001"]
    assert report.changes[0].kind == "now-allowed" and report.changes[0].consent == "no-subject"


def test_diff_refuses_a_malformed_version(doc: dict[str, Any]) -> None:
    new = bump(doc)
    new["rules"]["rule"].append({"id": "broken", "effect": "perhaps"})
    with pytest.raises(PsvnError) as exc:
        diff(doc, new)
    assert exc.value.code is Code.CONFIG_INVALID and "broken" in exc.value.detail
