"""``psvn policy lint/test/explain/diff`` through the real CLI entry point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from psvn.cli.main import main
from psvn.policies import bundle

DEFAULT = str(bundle.DEFAULT_DIR)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["policy", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    dest = tmp_path / "policy"
    shutil.copytree(bundle.DEFAULT_DIR, dest)
    return dest


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_policy_without_a_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 2 and "lint" in out and "explain" in out and "diff" in out


# --- lint -------------------------------------------------------------------------------------

def test_lint_default_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "lint")
    assert code == 0
    assert out.strip().endswith("0 error(s), 0 warning(s), 1 note(s)")


def test_lint_errors_fail_with_file_line_and_rule(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit(folder / "rules.toml", 'to = ["charity"]', 'to = ["charities"]')
    code, out, _ = run(capsys, "lint", str(folder))
    assert code == 1
    line = next(ln for ln in out.splitlines() if "unknown-member-type" in ln)
    n = int(line.split(":")[1])
    assert (folder / "rules.toml").read_text().splitlines()[n - 1] == 'to = ["charities"]'
    assert "[social-prescribing]" in line and "did you mean 'charity'" in line
    code, out, _ = run(capsys, "lint", str(folder), "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and report["counts"]["error"] >= 1
    assert any(f["kind"] == "unknown-member-type" and f["rule_id"] == "social-prescribing"
               for f in report["findings"])


def test_lint_strict_fails_on_warnings(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit(folder / "rules.toml", 'types = ["psvn.address-change"]\nretention_days = 7',
         'types = ["psvn.address-change"]\nretention_days = 5')
    code, out, _ = run(capsys, "lint", str(folder))
    assert code == 0 and "warning retention-mismatch [retention-address-change]" in out
    code, _, _ = run(capsys, "lint", str(folder), "--strict")
    assert code == 1


def test_lint_with_a_registry_flags_unknown_members(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    members = tmp_path / "members.json"
    members.write_text(json.dumps({"gss:E06000043": "council", "oda:brighton": "oda"}))
    code, out, _ = run(capsys, "lint", "--members", str(members))
    assert code == 0 and "'gss:E10000011' is not a member in the registry" in out
    members.write_text("[1, 2]")
    code, _, err = run(capsys, "lint", "--members", str(members))
    assert code == 1 and "expected a JSON object" in err


def test_not_a_policy_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "test", str(tmp_path))
    assert code == 1 and "not a policy folder" in err


# --- test -------------------------------------------------------------------------------------

def test_test_passes_on_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "test")
    assert code == 0 and "passed, 0 failed (policy version 1)" in out and "FAIL" not in out
    code, out, _ = run(capsys, "test", "-v")
    assert "PASS  NHS trust -> council adult social care, referral, direct care: allow" in out


def test_test_fails_when_a_rule_change_breaks_an_example(folder: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    edit(folder / "rules.toml", 'to = ["charity"]', 'to = ["ccn:9999999"]')
    code, out, _ = run(capsys, "test", str(folder))
    assert code == 1
    assert "FAIL  GP -> charity, social prescribing referral, OFFICIAL: allow" in out
    assert "expected allow, got deny" in out
    code, out, _ = run(capsys, "test", str(folder), "--json")
    report = json.loads(out)
    assert report["failed"] >= 1
    failed = [r for r in report["results"] if not r["passed"]]
    assert failed[0]["decision"]["rule_ids"] == ["default-deny"]


# --- explain ----------------------------------------------------------------------------------

EXPLAIN = ["explain", "--from", "ods:RYR", "--from-type", "nhs-trust",
           "--to", "gss:E06000043/adult-social-care", "--to-type", "council",
           "--type", "fhir.r4.ServiceRequest", "--purpose", "direct-care"]


def test_explain_allow_lists_every_rule(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *EXPLAIN, "--classification", "OFFICIAL-SENSITIVE")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "ALLOW by care-referrals (stage routing, policy version 1)"
    marks = {ln.split()[1]: ln.split()[0] for ln in lines if ln.startswith("    ")}
    assert marks["care-referrals"] == "=>" and marks["sensitive-statutory-bodies"] == "=>"
    assert marks["lb-care-records"] == "=>" and marks["retention-care-records"] == "=>"
    assert marks["social-prescribing"] == "-" and marks["official-any-member"] == "-"
    assert any("social-prescribing" in ln and "from [gp, council]" in ln for ln in lines)


def test_explain_consent_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *EXPLAIN, "--subject", "nhs:9434765919", "--opted-out", "direct-care")
    assert code == 0 and out.startswith("DENY by consent-honour-opt-out (stage consent")
    code, out, _ = run(capsys, *EXPLAIN, "--subject", "nhs:9434765919", "--opted-out",
                       "direct-care", "--json")
    data = json.loads(out)
    assert data["decision"]["allow"] is False
    assert data["decision"]["rule_ids"] == ["consent-honour-opt-out"]
    assert any(s["rule_id"] == "consent-honour-opt-out" and s["matched"] for s in data["steps"])
    code, _, err = run(capsys, *EXPLAIN, "--opted-out", "direct-care")
    assert code == 1 and "--opted-out needs --subject" in err


def test_explain_feed_subscription(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", "--action", "subscribe", "--from", "gss:E08000003",
                       "--from-type", "council", "--to", "oda:brighton", "--to-type", "oda",
                       "--topic", "aggregates.asc", "--type", "fhir.r4.MeasureReport",
                       "--purpose", "aggregate-statistics")
    assert code == 0 and out.startswith("DENY by default-deny (stage feed")
    assert "not in the same region" in out


# --- diff -------------------------------------------------------------------------------------

def test_diff_lists_changed_decisions(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit(folder / "policyset.toml", "version = 1", "version = 2")
    edit(folder / "rules.toml", 'to = ["charity"]\ntypes = ["fhir.r4.ServiceRequest"]',
         'to = ["charity"]\ntypes = ["fhir.r4.ServiceRequest", "fhir.r4.Patient"]')
    code, out, _ = run(capsys, "diff", DEFAULT, str(folder))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("policy version 1 -> 2:") and "14 now allowed" in lines[0]
    assert "NOW ALLOWED send council -> charity, fhir.r4.Patient, direct-care, OFFICIAL  x12" in lines
    assert "NOW ALLOWED send gp -> charity, fhir.r4.Patient, direct-care, OFFICIAL  x2" in lines
    code, out, _ = run(capsys, "diff", DEFAULT, str(folder), "--json", "--exit-code")
    data = json.loads(out)
    assert code == 1
    assert data["counts"]["now-allowed"] == 14 and len(data["changes"]) == 14


def test_diff_reads_signed_bundles_and_json_documents(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    doc = bundle.load_dir()
    signed = tmp_path / "v1.psvnpol"
    signed.write_bytes(bundle.encode(bundle.sign(doc, Ed25519PrivateKey.generate())))
    plain = tmp_path / "v1.json"
    plain.write_bytes(msgspec.json.encode(doc))
    code, out, _ = run(capsys, "diff", str(signed), str(plain), "--exit-code")
    assert code == 0 and "no decision changes" in out
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01not a policy")
    code, _, err = run(capsys, "diff", str(junk), DEFAULT)
    assert code == 1 and "neither a JSON policy document nor a signed policy bundle" in err
    code, _, err = run(capsys, "diff", str(tmp_path / "missing"), DEFAULT)
    assert code == 1 and "no such policy folder or file" in err
