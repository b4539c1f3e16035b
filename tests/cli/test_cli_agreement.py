"""The CLI tells the truth about the network: `policy explain` decides on the version the
gateways enforce (member types from the registry), `feed publish` prints each delivery's real
status, and after a restart the banner names the version the gateways enforce.

Real processes: `psvn devnet up`, then the CLI as a subprocess; v2 is published through the
two-person workflow and the gateways' own refusals are the reference.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from tests.cli.test_cli_errors import psvn

ROOT = Path(__file__).resolve().parents[2]
EXPLAIN = ["policy", "explain", "--from", "gss:E06000043", "--to", "ods:RYR", "--type", "fhir.r4.ServiceRequest",
           "--purpose", "direct-care"]
SEND = ["send", "--as", "gss:E06000043", "--to", "ods:RYR", "--type", "fhir.r4.ServiceRequest",
        "--purpose", "direct-care", "--json", "examples/referral.json"]


def ok(*args: str) -> str:
    res = psvn(*args)
    assert res.returncode == 0, f"psvn {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def v2_folder(tmp_path: Path) -> Path:
    """The default set, but councils may no longer send referrals to NHS bodies."""
    folder = tmp_path / "v2"
    shutil.copytree(ROOT / "policies" / "default", folder)
    (folder / "tests.toml").unlink()  # its examples expect v1's decisions
    rules = (folder / "rules.toml").read_text()
    old = 'id = "care-referrals"\neffect = "allow"\n'
    assert old in rules
    head, tail = rules.split(old, 1)
    tail = tail.replace('from = ["nhs-trust", "gp", "council"]', 'from = ["nhs-trust", "gp"]', 1)
    (folder / "rules.toml").write_text(head + old + tail)
    return folder


def test_explain_feed_and_banner_agree_with_the_network(tmp_path: Path) -> None:
    from psvn.bench import free_port_range

    d = tmp_path / "devnet"
    for _attempt in range(3):
        base = free_port_range()
        up = psvn("devnet", "--dir", str(d), "up", "--detach", "--base-port", str(base))
        if up.returncode == 0:
            break
    assert up.returncode == 0, up.stderr
    dn = ["--devnet", str(d)]
    try:
        assert "policy set v1" in up.stdout

        # explain on the network: no member types typed, the registry knows them
        out = ok(*EXPLAIN, *dn)
        assert out.startswith("ALLOW by care-referrals") and "policy version 1" in out
        assert "gss:E06000043 council, ods:RYR nhs-trust" in out
        wrong = psvn(*EXPLAIN, *dn, "--from-type", "gp")
        assert wrong.returncode == 1 and "--from-type" in wrong.stderr and "council" in wrong.stderr

        # feed publish: the status the gateway answered, not "delivered"
        ok("feed", "subscribe", *dn, "--as", "ods:RYR", "sensors.brighton.air", "--purpose",
           "environmental-monitoring")
        pub_args = ["feed", "publish", *dn, "--as", "gss:E06000043", "sensors.brighton.air", "--type",
                    "cloudevents.air-quality.reading", "--purpose", "environmental-monitoring",
                    "examples/air-quality.json"]
        human = ok(*pub_args)
        first = human.splitlines()[0]
        m = re.search(r": 1 (\w+), 0 refused$", first)
        assert m, human
        line = next(x for x in human.splitlines() if "-> ods:RYR" in x)
        mid, said = line.split()[-2:]
        assert said == m.group(1)
        answered = json.loads(ok(*pub_args, "--json"))["deliveries"][0]["status"]
        assert answered == "accepted"  # what the gateway answers at once: on the backbone, not yet receipted
        assert said == "accepted"  # printed as it was answered
        st = json.loads(ok("status", *dn, "--as", "gss:E06000043", mid, "--json"))
        assert st["id"] == mid

        # v2 through the two-person workflow: councils may no longer refer to NHS bodies
        prop = json.loads(ok("policy", "propose", str(v2_folder(tmp_path)), "--bump", "--as", "alice",
                             "--note", "test", *dn, "--json"))
        pid = prop["id"]
        ok("policy", "approve", pid, "--as", "bob", *dn)
        ok("policy", "publish", pid, *dn)
        deadline = time.monotonic() + 30
        while True:  # the gateways' own answer is the reference
            sent = psvn(*SEND, *dn)
            if sent.returncode != 0:
                break
            assert time.monotonic() < deadline, "the gateways never enforced v2"
            time.sleep(0.5)
        assert "policy-denied" in sent.stdout + sent.stderr

        out = ok(*EXPLAIN, *dn)
        assert out.startswith("DENY") and "policy version 2" in out, out
        offline = ok(*EXPLAIN, "--from-type", "council", "--to-type", "nhs-trust", "policies/default")
        assert offline.startswith("ALLOW") and "offline" in offline  # the folder, and it says so

        # while running, status reports the version published since `up`
        assert json.loads(ok("devnet", "--dir", str(d), "status", "--json"))["policy_version"] == 2

        # restart: the banner names the version the gateways enforce
        ok("devnet", "--dir", str(d), "down")
        again = psvn("devnet", "--dir", str(d), "up", "--detach", "--base-port", str(base))
        assert again.returncode == 0, again.stderr
        assert "policy set v2" in again.stdout, again.stdout
        assert json.loads(ok("devnet", "--dir", str(d), "status", "--json"))["policy_version"] == 2
        assert psvn(*SEND, *dn).returncode != 0  # still v2 at the gateways
    finally:
        psvn("devnet", "--dir", str(d), "down")
