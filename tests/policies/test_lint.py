"""Lint finds each kind of problem, says where it is, and leaves the default policy clean."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest

from psvn.policies.bundle import DEFAULT_DIR, load_dir
from psvn.policies.lint import Finding, LintReport, lint_dir, lint_document

RULE_ANOMALIES = {"conflict", "redundant", "unreachable", "stale-override", "bad-override"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return load_dir()


def variant(doc: dict[str, Any], **sections: Any) -> dict[str, Any]:
    new = copy.deepcopy(doc)
    for key, value in sections.items():
        new["rules"][key] = value
    return new


def add_rules(doc: dict[str, Any], *rules: dict[str, Any]) -> dict[str, Any]:
    return variant(doc, rule=[*copy.deepcopy(doc["rules"]["rule"]), *rules])


def only(report: LintReport, kind: str, rule_id: str | None = None) -> list[Finding]:
    return [f for f in report.findings if f.kind == kind and (rule_id is None or f.rule_id == rule_id)]


def test_default_policy_has_no_errors_and_no_rule_anomalies() -> None:
    report = lint_dir(DEFAULT_DIR)
    assert report.ok, report.errors
    anomalies = [f for f in report.findings if f.kind in RULE_ANOMALIES and f.severity != "info"]
    assert anomalies == []
    # the one note: the named-only audience rule is a guard that no wildcard allow trips today
    guard = only(report, "unreachable", "third-sector-named-only")
    assert guard and guard[0].severity == "info" and guard[0].line is not None


# --- syntax -----------------------------------------------------------------------------------

@pytest.fixture
def folder(tmp_path: Path) -> Path:
    dest = tmp_path / "policy"
    shutil.copytree(DEFAULT_DIR, dest)
    return dest


def test_toml_syntax_error_names_file_and_line(folder: Path) -> None:
    text = (folder / "rules.toml").read_text().splitlines()
    text[20] = "this is not toml"
    (folder / "rules.toml").write_text("\n".join(text))
    report = lint_dir(folder)
    assert not report.ok
    [f] = report.findings
    assert (f.kind, f.file, f.line) == ("syntax", "rules.toml", 21)


def test_bad_json_schema_is_a_syntax_error(folder: Path) -> None:
    (folder / "schemas" / "broken.json").write_text("{\n  \"type\": \n}")
    report = lint_dir(folder)
    [f] = report.findings
    assert f.kind == "syntax" and f.file == "schemas/broken.json" and f.line == 3


def test_structure_errors_point_at_the_rule(folder: Path) -> None:
    text = (folder / "rules.toml").read_text()
    text += '\n[[rule]]\nid = "care-referrals"\neffect = "allow"\n'
    text += '\n[[rule]]\nid = "typo"\neffect = "allow"\nform = ["gp"]\n'
    text += '\n[[rules]]\nid = "wrong-section"\neffect = "deny"\n'
    (folder / "rules.toml").write_text(text)
    report = lint_dir(folder)
    lines = text.splitlines()
    dup = only(report, "syntax", "care-referrals")
    assert dup and "duplicate rule id" in dup[0].message
    assert lines[dup[0].line - 1] == "[[rule]]" and lines[dup[0].line] == 'id = "care-referrals"'
    typo = only(report, "syntax", "typo")
    assert typo and "unknown field `form`" in typo[0].message and lines[typo[0].line] == 'id = "typo"'
    assert any("unknown section 'rules'" in f.message for f in only(report, "syntax"))


# --- names ------------------------------------------------------------------------------------

def test_unknown_types_purposes_classifications(doc: dict[str, Any]) -> None:
    report = lint_document(add_rules(doc, {
        "id": "typos", "effect": "allow", "from": ["gp"], "to": ["council"],
        "types": ["fhir.r4.Patiant", "hl7v3.*"], "purposes": ["direct-kare"],
        "classifications": ["SECRET"]}))
    t = only(report, "unknown-type", "typos")
    assert {f.severity for f in t} == {"error", "warning"}
    assert any("'fhir.r4.Patiant' is not in the message catalogue (did you mean 'fhir.r4.Patient'?)"
               in f.message for f in t)
    assert any("'hl7v3.*' matches no type" in f.message for f in t)
    [p] = only(report, "unknown-purpose", "typos")
    assert p.severity == "error" and "did you mean 'direct-care'" in p.message
    [c] = only(report, "unknown-classification", "typos")
    assert "'SECRET'" in c.message


def test_unknown_members_member_types_regions_and_mailbox_senders(doc: dict[str, Any]) -> None:
    bad = add_rules(doc, {
        "id": "bad-parties", "effect": "allow", "from": ["hospital", "council/housing", "xx:1"],
        "to": ["region:atlantis", "gss:E06000043/Adult Care", "gss:E09999999"],
        "types": ["fhir.r4.ServiceRequest"], "purposes": ["direct-care"]})
    report = lint_document(bad, members={"gss:E06000043": "council"})
    kinds = {f.kind for f in report.findings if f.rule_id == "bad-parties"}
    assert {"unknown-member-type", "mailbox-on-sender", "unknown-member", "unknown-region",
            "bad-mailbox"} <= kinds
    [mt] = only(report, "unknown-member-type", "bad-parties")
    assert "'hospital' is neither a member type" in mt.message
    unknown = only(report, "unknown-member", "bad-parties")
    assert any("not a psvn address" in f.message and f.severity == "error" for f in unknown)
    assert any("'gss:E09999999' is not a member in the registry" in f.message
               and f.severity == "warning" for f in unknown)
    # without a registry, a well-formed address is fine
    assert not any("registry" in f.message for f in only(lint_document(bad), "unknown-member"))


def test_unknown_member_types_in_audience_and_region_members(doc: dict[str, Any]) -> None:
    d = variant(doc, audience=[{"id": "aud", "member_types": ["charity", "charities"]}],
                regions={"sussex": ["gss:E06000043", "not an address"]})
    report = lint_document(d)
    assert only(report, "unknown-member-type", "aud")
    assert any("'not an address'" in f.message for f in only(report, "unknown-member"))


# --- reachability -----------------------------------------------------------------------------

def test_allow_shadowed_by_broader_deny_is_unreachable(doc: dict[str, Any]) -> None:
    d = add_rules(doc,
                  {"id": "no-gp-anything", "effect": "deny", "from": ["gp"]},
                  {"id": "gp-to-council-referrals", "effect": "allow", "from": ["gp"],
                   "to": ["council"], "types": ["fhir.r4.ServiceRequest"], "purposes": ["direct-care"]})
    report = lint_document(d)
    [f] = only(report, "unreachable", "gp-to-council-referrals")
    assert f.severity == "error"
    assert "never allows" in f.message and "no-gp-anything" in f.message
    assert not report.ok


def test_allow_blocked_by_an_earlier_stage_is_unreachable(doc: dict[str, Any]) -> None:
    d = add_rules(doc, {"id": "sensitive-to-charity", "effect": "allow", "from": ["council"],
                        "to": ["charity"], "types": ["fhir.r4.ServiceRequest"],
                        "purposes": ["direct-care"], "classifications": ["OFFICIAL-SENSITIVE"]})
    [f] = only(lint_document(d), "unreachable", "sensitive-to-charity")
    assert f.severity == "error" and "sensitive-statutory-bodies" in f.message


def test_rule_matching_nothing_and_redundant_deny(doc: dict[str, Any]) -> None:
    d = add_rules(doc,
                  {"id": "impossible", "effect": "allow", "from": ["gp"], "to": ["council"],
                   "types": ["fhir.r4.MeasureReport"], "purposes": ["direct-care"]},
                  {"id": "pointless-deny", "effect": "deny", "to": ["charity"],
                   "classifications": ["OFFICIAL-SENSITIVE"]})
    report = lint_document(d)
    [f] = only(report, "unreachable", "impossible")
    assert f.severity == "error" and "lb-aggregates" in f.message
    [g] = only(report, "unreachable", "pointless-deny")
    assert g.severity == "warning" and "sensitive-statutory-bodies" in g.message


def test_type_or_level_without_rules_is_reported(doc: dict[str, Any]) -> None:
    d = copy.deepcopy(doc)
    d["catalogue"]["fhir.r4.Observation"] = {"standard": "FHIR R4", "validator": "fhir-r4",
                                             "description": "x", "owner": "y"}
    d["rules"]["classification"] = [c for c in d["rules"]["classification"]
                                    if c["level"] != "OFFICIAL-SENSITIVE"]
    report = lint_document(d)
    [lb] = only(report, "no-legal-basis")
    assert "fhir.r4.Observation" in lb.message and "fhir.r4.Patient" not in lb.message
    [cl] = only(report, "no-classification")
    assert "OFFICIAL-SENSITIVE" in cl.message


# --- anomalies --------------------------------------------------------------------------------

def test_partial_overlap_of_allow_and_deny_is_a_conflict_until_acknowledged(doc: dict[str, Any]) -> None:
    deny = {"id": "no-trust-patients", "effect": "deny", "from": ["nhs-trust"],
            "types": ["fhir.r4.Patient"], "purposes": ["direct-care"]}
    report = lint_document(add_rules(doc, deny))
    [f] = only(report, "conflict", "no-trust-patients")
    assert f.severity == "warning"
    assert "allow care-referrals and deny no-trust-patients both match" in f.message
    assert 'overrides = ["care-referrals"]' in f.message
    ok = lint_document(add_rules(doc, {**deny, "overrides": ["care-referrals"]}))
    assert only(ok, "conflict", "no-trust-patients") == []


def test_bad_and_stale_overrides(doc: dict[str, Any]) -> None:
    d = add_rules(doc,
                  {"id": "guard", "effect": "deny", "from": ["pds"], "types": ["fhir.r4.Patient"],
                   "overrides": ["care-referrals", "no-such-rule"]})
    report = lint_document(d)
    [bad] = only(report, "bad-override", "guard")
    assert "'no-such-rule'" in bad.message and bad.severity == "error"
    [stale] = only(report, "stale-override", "guard")
    assert "'care-referrals'" in stale.message


def test_allow_covered_by_another_allow_is_redundant(doc: dict[str, Any]) -> None:
    d = add_rules(doc, {"id": "trust-to-council", "effect": "allow", "from": ["nhs-trust"],
                        "to": ["council"], "types": ["fhir.r4.ServiceRequest"],
                        "purposes": ["direct-care"]})
    [f] = only(lint_document(d), "redundant", "trust-to-council")
    assert "care-referrals already matches every request" in f.message


def test_redundant_feed_ignores_region_narrowing(doc: dict[str, Any]) -> None:
    feeds = [*copy.deepcopy(doc["rules"]["feed"]),
             {"id": "any-oda-aggregates", "effect": "allow", "topics": ["aggregates.*"],
              "publishers": ["council"], "subscribers": ["oda"], "types": ["fhir.r4.MeasureReport"],
              "purposes": ["aggregate-statistics"], "classifications": ["OFFICIAL"]}]
    [f] = only(lint_document(variant(doc, feed=feeds)), "redundant")
    assert f.rule_id == "oda-regional-aggregates" and "in any region" in f.message


def test_retention_conflicts_and_mismatch_with_catalogue(doc: dict[str, Any]) -> None:
    retention = [*copy.deepcopy(doc["rules"]["retention"]),
                 {"id": "short-patients", "types": ["fhir.r4.Patient"], "retention_days": 3}]
    report = lint_document(variant(doc, retention=retention))
    [c] = only(report, "conflict", "short-patients")
    assert "retention-care-records, short-patients disagree for fhir.r4.Patient" in c.message
    [m] = only(report, "retention-mismatch")
    assert "keep 3 days but the catalogue says 30" in m.message


def test_consent_override_of_everything_is_flagged(doc: dict[str, Any]) -> None:
    consent = [{"id": "ignore-opt-outs", "effect": "override"}]
    [f] = only(lint_document(variant(doc, consent=consent)), "consent-overridden")
    assert f.rule_id == "ignore-opt-outs"


def test_stage_without_rules_is_a_warning(doc: dict[str, Any]) -> None:
    report = lint_document(variant(doc, legal_basis=[], classification=[]))
    assert len(only(report, "stage-off")) == 2
    assert all(f.severity == "warning" for f in only(report, "stage-off"))


def test_suite_naming_an_unknown_rule_is_an_error(folder: Path) -> None:
    text = (folder / "tests.toml").read_text().replace('rule = "tell-us-once"',
                                                        'rule = "tell-us-twice"')
    (folder / "tests.toml").write_text(text)
    report = lint_dir(folder)
    [f] = only(report, "unknown-rule")
    assert f.file == "tests.toml" and f.line is not None
    assert text.splitlines()[f.line - 1] == 'rule = "tell-us-twice"'
