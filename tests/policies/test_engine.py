"""The policy engine: every rule kind, on the default policy set and on small crafted ones."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from psvn.core.errors import Code, PsvnError
from psvn.policies.bundle import load_dir
from psvn.policies.consent import ConsentChange, ConsentRegistry
from psvn.policies.engine import DecisionRequest, Engine, Rule

TRUST, GP, COUNCIL = "ods:RYR", "ods:G81001", "gss:E06000043"
CHARITY, BUSINESS, POLICE = "ccn:1123456", "ch:01234567", "pol:sussex"
SUBJECT = "nhs:9434765919"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return load_dir()


@pytest.fixture(scope="module")
def engine(doc: dict[str, Any]) -> Engine:
    return Engine.from_document(doc)


def send(frm: str, frm_type: str, to: str, to_type: str, type_: str = "fhir.r4.ServiceRequest",
         purpose: str = "direct-care", **kw: Any) -> DecisionRequest:
    return DecisionRequest(sender=frm, sender_type=frm_type, recipient=to, recipient_type=to_type,
                           type=type_, purpose=purpose, **kw)


def with_rules(doc: dict[str, Any], **sections: Any) -> dict[str, Any]:
    new = copy.deepcopy(doc)
    new["rules"].update(sections)
    return new


# --- routing: member type, member, mailbox, deny, default deny ----------------------------------

def test_trust_to_council_adult_social_care_referral_is_allowed(engine: Engine) -> None:
    d = engine.decide(send(TRUST, "nhs-trust", COUNCIL, "council", mailbox="adult-social-care",
                           classification="OFFICIAL-SENSITIVE"))
    assert d.allow and d.stage == "routing"
    assert d.rule_ids == ["care-referrals"]
    assert d.supporting_rule_ids == ["lb-care-records", "sensitive-statutory-bodies",
                                     "retention-care-records"]
    assert "direct care" in d.reason and "legal basis" in d.reason
    assert d.policy_version == 1


def test_default_deny_says_no_rule_permits(engine: Engine) -> None:
    d = engine.decide(send(TRUST, "nhs-trust", "oda:brighton", "oda"))
    assert not d.allow
    assert d.rule_ids == ["default-deny"]
    assert d.reason.startswith("no rule permits an nhs-trust (ods:RYR) to send fhir.r4.ServiceRequest")


def test_mailbox_rule_by_member_type_mailbox(engine: Engine) -> None:
    ok = engine.decide(send(POLICE, "police", COUNCIL, "council", mailbox="childrens-services",
                            purpose="safeguarding"))
    assert ok.allow and ok.rule_ids[0] == "police-safeguarding"
    other_mailbox = engine.decide(send(POLICE, "police", COUNCIL, "council", mailbox="housing",
                                       purpose="safeguarding"))
    no_mailbox = engine.decide(send(POLICE, "police", COUNCIL, "council", purpose="safeguarding"))
    assert not other_mailbox.allow and not no_mailbox.allow
    assert other_mailbox.rule_ids == ["default-deny"]
    # the address form org/mailbox in the recipient works the same as a separate mailbox
    inline = engine.decide(send(POLICE, "police", f"{COUNCIL}/childrens-services", "council",
                                purpose="safeguarding"))
    assert inline.allow


def test_specific_member_and_member_mailbox_rules(doc: dict[str, Any]) -> None:
    rules = [*copy.deepcopy(doc["rules"]["rule"]),
        {"id": "brighton-only", "effect": "allow", "from": [TRUST], "to": [f"{COUNCIL}/housing"],
         "types": ["fhir.r4.ServiceRequest"], "purposes": ["direct-care"]},
        {"id": "one-trust-barred", "effect": "deny", "from": ["ods:RXH"], "to": ["*"]},
    ]
    e = Engine.from_document(with_rules(doc, rule=rules))
    assert e.decide(send(TRUST, "nhs-trust", COUNCIL, "council", mailbox="housing")).rule_ids == [
        "care-referrals", "brighton-only"]
    d = e.decide(send("ods:RXH", "nhs-trust", COUNCIL, "council"))
    assert not d.allow and d.rule_ids == ["one-trust-barred"]
    # the same member type, another member: the deny does not apply
    assert e.decide(send("ods:RXQ", "nhs-trust", COUNCIL, "council")).allow


def test_deny_wins_over_allow_and_names_itself(engine: Engine) -> None:
    ok = engine.decide(send(GP, "gp", POLICE, "police", purpose="safeguarding"))
    assert ok.allow and ok.rule_ids[0] == "safeguarding-to-police"
    d = engine.decide(send(GP, "gp", POLICE, "police", "fhir.r4.Patient", purpose="safeguarding"))
    assert not d.allow and d.stage == "routing"
    assert d.rule_ids == ["no-demographics-to-police"]
    assert "whole demographic records" in d.reason


# --- legal basis ------------------------------------------------------------------------------

def test_purpose_not_lawful_for_type_is_denied_by_legal_basis(engine: Engine) -> None:
    d = engine.decide(send(TRUST, "nhs-trust", COUNCIL, "council", purpose="statutory-duty"))
    assert not d.allow and d.stage == "legal-basis"
    assert d.rule_ids == ["lb-care-records", "lb-research"]
    assert "may be shared only for direct-care, research-consented, safeguarding" in d.reason


def test_unknown_purpose_and_undeclared_type(engine: Engine) -> None:
    d = engine.decide(send(TRUST, "nhs-trust", COUNCIL, "council", purpose="marketing"))
    assert not d.allow and d.rule_ids == ["purpose-unknown"] and "'marketing'" in d.reason
    d = engine.decide(send(TRUST, "nhs-trust", COUNCIL, "council", "fhir.r4.Observation"))
    assert not d.allow and d.rule_ids == ["legal-basis-undeclared"]
    assert "fhir.r4.Observation" in d.reason


# --- classification and audience --------------------------------------------------------------

def test_sensitive_never_reaches_charity_even_when_routed_to_it(engine: Engine) -> None:
    official = engine.decide(send(GP, "gp", CHARITY, "charity"))
    assert official.allow and official.rule_ids[0] == "social-prescribing"
    d = engine.decide(send(GP, "gp", CHARITY, "charity", classification="OFFICIAL-SENSITIVE"))
    assert not d.allow and d.stage == "classification"
    assert d.rule_ids == ["sensitive-statutory-bodies"]
    assert "charity ccn:1123456 may not receive OFFICIAL-SENSITIVE" in d.reason


def test_classification_levels_per_member_type(engine: Engine) -> None:
    for to, to_type, allowed in ((COUNCIL, "council", True), (POLICE, "police", True),
                                 ("oda:brighton", "oda", False), (BUSINESS, "business", False)):
        d = engine.decide(send(GP, "gp", to, to_type, classification="OFFICIAL-SENSITIVE",
                               purpose="safeguarding"))
        if allowed:
            assert d.stage != "classification", (to_type, d)
        else:
            assert d.stage == "classification" and not d.allow, (to_type, d)


def test_undeclared_classification_is_denied(engine: Engine) -> None:
    d = engine.decide(send(TRUST, "nhs-trust", COUNCIL, "council", classification="SECRET"))
    assert not d.allow and d.rule_ids == ["classification-undeclared"]


def test_charity_gets_only_what_names_it(doc: dict[str, Any]) -> None:
    rules = [*copy.deepcopy(doc["rules"]["rule"]),
        {"id": "broadcast", "effect": "allow", "from": ["council"], "to": ["*"],
         "types": ["fhir.r4.Patient"], "purposes": ["direct-care"]},
    ]
    e = Engine.from_document(with_rules(doc, rule=rules))
    assert e.decide(send(COUNCIL, "council", TRUST, "nhs-trust", "fhir.r4.Patient")).allow
    d = e.decide(send(COUNCIL, "council", CHARITY, "charity", "fhir.r4.Patient"))
    assert not d.allow and d.rule_ids == ["third-sector-named-only"]
    assert "broadcast match only through a wildcard" in d.reason
    # a business mailbox named by a rule is reached; the business's other mailboxes are not
    assert e.decide(send(COUNCIL, "council", BUSINESS, "business", mailbox="care-provider")).allow
    assert not e.decide(send(COUNCIL, "council", BUSINESS, "business", mailbox="sales")).allow


# --- consent ----------------------------------------------------------------------------------

def registry(*opt_outs: str, seq: int = 1) -> ConsentRegistry:
    reg = ConsentRegistry()
    reg.apply(ConsentChange(subject=SUBJECT, seq=seq, opt_outs=list(opt_outs),
                            effective="2025-03-01T09:00:00Z", issuer="pds:mydex"))
    return reg


def test_opt_out_blocks_the_purposes_it_covers(engine: Engine) -> None:
    req = send(TRUST, "nhs-trust", COUNCIL, "council", subject=SUBJECT)
    reg = registry("direct-care")
    d = engine.decide(req, consent=reg)
    assert not d.allow and d.stage == "consent"
    assert d.rule_ids == ["consent-honour-opt-out"]
    assert "nhs:******5919 has opted out of sharing for direct-care" in d.reason and "pds:mydex" in d.reason
    assert "honoured by consent-honour-opt-out" in d.reason  # the reason names the rule
    assert "9434765919" not in d.reason  # reasons are stored: never the full NHS number
    # another subject, or no registry, or no subject: not blocked
    assert engine.decide(send(TRUST, "nhs-trust", COUNCIL, "council", subject="nhs:9000000009"),
                         consent=reg).allow
    assert engine.decide(req).allow
    assert engine.decide(send(TRUST, "nhs-trust", COUNCIL, "council"), consent=reg).allow
    # a purpose the opt-out does not cover
    assert not engine.decide(send(TRUST, "nhs-trust", COUNCIL, "council", purpose="safeguarding",
                                  subject=SUBJECT), consent=registry("direct-care")).stage == "consent"


def test_opt_out_of_everything_and_safeguarding_override(engine: Engine) -> None:
    reg = registry("*")
    d = engine.decide(send(TRUST, "nhs-trust", COUNCIL, "council", subject=SUBJECT), consent=reg)
    assert not d.allow and d.stage == "consent"
    s = engine.decide(send(TRUST, "nhs-trust", COUNCIL, "council", purpose="safeguarding",
                           subject=SUBJECT), consent=reg)
    assert s.allow and s.rule_ids == ["care-referrals", "consent-safeguarding-override"]
    assert "opt-out of safeguarding is overridden" in s.reason


def test_research_needs_a_subject_and_consent(engine: Engine) -> None:
    base = dict(type_="fhir.r4.Patient", purpose="research-consented", mailbox="research")
    d = engine.decide(send(GP, "gp", TRUST, "nhs-trust", **base))
    assert not d.allow and d.rule_ids == ["consent-research-names-subject"]
    assert engine.decide(send(GP, "gp", TRUST, "nhs-trust", subject=SUBJECT, **base),
                         consent=registry()).allow
    d = engine.decide(send(GP, "gp", TRUST, "nhs-trust", subject=SUBJECT, **base),
                      consent=registry("research-consented"))
    assert not d.allow
    assert d.rule_ids == ["consent-honour-opt-out", "consent-research-names-subject"]


def test_consent_without_consent_rules_is_honoured_by_default(doc: dict[str, Any]) -> None:
    e = Engine.from_document(with_rules(doc, consent=[]))
    d = e.decide(send(TRUST, "nhs-trust", COUNCIL, "council", purpose="safeguarding",
                      subject=SUBJECT), consent=registry("safeguarding"))
    assert not d.allow and d.rule_ids == ["consent-default-honour"]


def test_restored_consent_allows_again(engine: Engine) -> None:
    reg = registry("direct-care", seq=1)
    req = send(TRUST, "nhs-trust", COUNCIL, "council", subject=SUBJECT)
    assert not engine.decide(req, consent=reg).allow
    reg.apply(ConsentChange(subject=SUBJECT, seq=2, opt_outs=[], effective="2025-03-02T09:00:00Z"))
    assert engine.decide(req, consent=reg).allow


# --- pub/sub feeds ----------------------------------------------------------------------------

def feed(action: str, sender: str, sender_type: str, recipient: str = "", recipient_type: str = "",
         topic: str = "aggregates.adult-social-care", **kw: Any) -> DecisionRequest:
    return DecisionRequest(action=action, sender=sender, sender_type=sender_type,  # type: ignore[arg-type]
                           recipient=recipient, recipient_type=recipient_type, topic=topic,
                           type=kw.pop("type", "fhir.r4.MeasureReport"),
                           purpose=kw.pop("purpose", "aggregate-statistics"), **kw)


def test_council_publishes_aggregates(engine: Engine) -> None:
    d = engine.decide(feed("publish", COUNCIL, "council"))
    assert d.allow and d.stage == "feed" and d.rule_ids[0] == "oda-regional-aggregates"
    d = engine.decide(feed("publish", TRUST, "nhs-trust"))
    assert not d.allow and d.rule_ids == ["default-deny"]
    assert d.reason.startswith("no feed rule permits an nhs-trust (ods:RYR) to publish")
    d = engine.decide(feed("publish", COUNCIL, "council", topic="gossip.weekly"))
    assert not d.allow
    d = engine.decide(feed("publish", COUNCIL, "council", type="fhir.r4.Patient", purpose="direct-care"))
    assert not d.allow and d.stage == "feed" and d.rule_ids == ["default-deny"]
    assert "closest" not in d.reason  # two things differ: no single-step hint


def test_oda_subscribes_to_councils_of_its_own_region_only(engine: Engine) -> None:
    ok = engine.decide(feed("subscribe", COUNCIL, "council", "oda:brighton", "oda"))
    assert ok.allow and ok.rule_ids[0] == "oda-regional-aggregates"
    other = engine.decide(feed("subscribe", "gss:E08000003", "council", "oda:brighton", "oda"))
    assert not other.allow and other.rule_ids == ["default-deny"]
    assert "not in the same region" in other.reason
    # regions given by the caller (from the registry) take precedence over the policy's table
    assert engine.decide(feed("subscribe", "gss:E08000003", "council", "oda:brighton", "oda",
                              sender_region="sussex")).allow
    anyone = engine.decide(feed("subscribe", "", "council", "oda:brighton", "oda"))
    assert not anyone.allow and "per publisher" in anyone.reason
    council = engine.decide(feed("subscribe", COUNCIL, "council", "gss:E10000011", "council"))
    assert not council.allow


def test_feed_needs_a_topic_and_sensitive_subscribers_need_clearance(engine: Engine) -> None:
    d = engine.decide(feed("publish", COUNCIL, "council", topic=""))
    assert not d.allow and "needs a topic" in d.reason
    d = engine.decide(feed("subscribe", COUNCIL, "council", "oda:brighton", "oda",
                           classification="OFFICIAL-SENSITIVE"))
    assert not d.allow and d.stage == "classification"


def test_named_only_audience_applies_to_subscribers(doc: dict[str, Any]) -> None:
    feeds = [{"id": "open-data", "effect": "allow", "topics": ["open.*"], "publishers": ["council"],
              "subscribers": ["*"], "purposes": ["aggregate-statistics"]}]
    e = Engine.from_document(with_rules(doc, feed=feeds))
    assert e.decide(feed("subscribe", COUNCIL, "council", TRUST, "nhs-trust", topic="open.x")).allow
    d = e.decide(feed("subscribe", COUNCIL, "council", CHARITY, "charity", topic="open.x"))
    assert not d.allow and d.rule_ids == ["third-sector-named-only"]


# --- retention --------------------------------------------------------------------------------

def test_retention_bounds_time_to_live(engine: Engine) -> None:
    req = send(TRUST, "nhs-trust", COUNCIL, "council", ttl_seconds=86400)
    d = engine.decide(req)
    assert d.allow and d.retention_days == 30 and d.max_ttl_seconds == 30 * 86400
    d = engine.decide(send(TRUST, "nhs-trust", COUNCIL, "council", ttl_seconds=31 * 86400))
    assert not d.allow and d.stage == "retention" and d.rule_ids == ["retention-care-records"]
    assert "at most 2592000 s" in d.reason


def test_overlapping_retention_rules_strictest_wins(doc: dict[str, Any]) -> None:
    retention = [*copy.deepcopy(doc["rules"]["retention"]),
        {"id": "short-patients", "types": ["fhir.r4.Patient"], "retention_days": 3,
         "max_ttl_seconds": 3600}]
    e = Engine.from_document(with_rules(doc, retention=retention))
    d = e.decide(send(TRUST, "nhs-trust", COUNCIL, "council", "fhir.r4.Patient"))
    assert d.retention_days == 3 and d.max_ttl_seconds == 3600
    assert {"retention-care-records", "short-patients"} <= set(d.supporting_rule_ids)
    d = e.decide(send(TRUST, "nhs-trust", COUNCIL, "council", "fhir.r4.Patient", ttl_seconds=7200))
    assert not d.allow and d.rule_ids == ["short-patients"]


# --- documents the engine refuses ---------------------------------------------------------------

@pytest.mark.parametrize(("rules", "needle"), [
    ({"rules": [{"id": "x", "effect": "allow"}]}, "unknown section 'rules'"),
    ({"rule": [{"id": "x", "effect": "permit"}]}, "rules.rule[0] (x)"),
    ({"rule": [{"id": "x", "effect": "allow", "form": ["gp"]}]}, "unknown field `form`"),
    ({"rule": [{"id": "x", "effect": "allow", "to": []}]}, "to must not be empty"),
    ({"rule": [{"id": "x", "effect": "allow"}, {"id": "x", "effect": "deny"}]}, "duplicate rule id 'x'"),
    ({"rule": [{"id": "default-deny", "effect": "deny"}]}, "reserved"),
    ({"rule": [{"id": "Bad Id", "effect": "deny"}]}, "must be lower-case"),
    ({"retention": [{"id": "r", "types": ["*"], "retention_days": -1}]}, "retention_days"),
])
def test_malformed_documents_are_refused(rules: dict[str, Any], needle: str) -> None:
    with pytest.raises(PsvnError) as exc:
        Engine.from_document({"version": 3, "rules": rules})
    assert exc.value.code is Code.CONFIG_INVALID
    assert needle in exc.value.detail


# --- compatibility and the fast path ------------------------------------------------------------

def test_engine_from_routing_rules_alone_keeps_the_first_interface() -> None:
    e = Engine([Rule(id="a", effect="allow", from_=["council"], to=["nhs-trust"])], version=7)
    d = e.decide(send(COUNCIL, "council", TRUST, "nhs-trust"))
    assert d.allow and d.rule_ids == ["a"] and d.policy_version == 7
    assert e.matches(e.rules[0], send(COUNCIL, "council", TRUST, "nhs-trust"))
    assert not e.matches(e.rules[0], send(TRUST, "nhs-trust", COUNCIL, "council"))
    assert e.decide(send(TRUST, "nhs-trust", COUNCIL, "council")).rule_ids == ["default-deny"]


def test_memoised_decisions_do_not_leak_between_subjects_or_ttls(engine: Engine) -> None:
    reg = registry("direct-care")
    blocked = send(TRUST, "nhs-trust", COUNCIL, "council", subject=SUBJECT)
    free = send(TRUST, "nhs-trust", COUNCIL, "council", subject="nhs:9000000009")
    for _ in range(3):
        assert not engine.decide(blocked, consent=reg).allow
        assert engine.decide(free, consent=reg).allow
        assert not engine.decide(send(TRUST, "nhs-trust", COUNCIL, "council",
                                      ttl_seconds=10**8)).allow
        assert engine.decide(send(TRUST, "nhs-trust", COUNCIL, "council", ttl_seconds=60)).allow


def test_explain_agrees_with_decide_and_says_why_not(engine: Engine) -> None:
    req = send(TRUST, "nhs-trust", CHARITY, "charity")
    decision, steps = engine.explain(req)
    assert decision == engine.decide(req)
    by_id = {s.rule_id: s for s in steps}
    assert by_id["social-prescribing"].matched is False
    assert "from [gp, council] does not include nhs-trust ods:RYR" in by_id["social-prescribing"].why
    assert by_id["lb-care-records"].matched is True
    assert by_id["official-any-member"].matched is True
    assert "closest: care-referrals, but to [nhs-trust, gp, council]" in decision.reason
    reg = registry("direct-care")
    req = send(TRUST, "nhs-trust", COUNCIL, "council", subject=SUBJECT)
    decision, steps = engine.explain(req, consent=reg)
    assert decision == engine.decide(req, consent=reg) and not decision.allow
    honour = next(s for s in steps if s.rule_id == "consent-honour-opt-out")
    assert honour.matched and "seq 1" in honour.why
    assert "nhs:******5919" in honour.why and not any("9434765919" in s.why for s in steps)
    override = engine.decide(send(TRUST, "nhs-trust", COUNCIL, "council", purpose="safeguarding",
                                  subject=SUBJECT), consent=registry("*"))
    assert override.allow and "nhs:******5919's opt-out" in override.reason and "9434765919" not in override.reason


def test_bench_reports_rates_for_the_default_policy() -> None:
    from psvn.policies.engine_bench import bench_engine

    result = bench_engine(seconds=0.05)
    for key in ("decisions_per_s", "cold_decisions_per_s", "explain_per_s"):
        assert result[key] > 0
    assert result["rules"] >= 30 and result["mix_requests"] == 2000
    assert 0.5 < result["mix_allowed_share"] < 1 and result["consent_records"] == 10_000
