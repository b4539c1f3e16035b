"""`psvn devnet up --detach`, then the integrator's CLI commands, against real processes."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from psvn.core import procs

ROOT = Path(__file__).resolve().parents[2]
PSVN = [sys.executable, "-m", "psvn.cli.main"]


def free_range() -> int:
    """A run of free ports for a devnet, below the ephemeral range (shared with psvn bench)."""
    from psvn.bench import free_port_range

    return free_port_range()


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([*PSVN, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    if check and res.returncode != 0:
        raise AssertionError(f"psvn {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture
def devnet_dir(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = tmp_path / "devnet"
    for _attempt in range(3):  # another process may take a port of the range between check and use
        up = run("devnet", "--dir", str(d), "up", "--detach", "--base-port", str(free_range()), check=False)
        if up.returncode == 0:
            break
    assert "psvn devnet is up" in up.stdout and "ods:RYR" in up.stdout, up.stderr
    try:
        yield d
    finally:
        run("devnet", "--dir", str(d), "down", check=False)


def gateway_metrics(devnet_dir: Path, org: str, prefix: str) -> dict[str, float]:
    """The samples named ``prefix...`` of ``org``'s gateway's /metrics, read as one of its
    systems over mutual TLS."""
    import urllib.request

    from psvn import devnet
    from psvn.certs import tls

    layout = devnet.Layout(devnet_dir)
    state = devnet.read_state(layout)
    assert state is not None
    gw = state.gateways[org]
    cert, key = layout.system_cert(org, gw.system)
    ctx = tls.client_context(layout.ca, cert, key)
    with urllib.request.urlopen(gw.url + "/metrics", context=ctx, timeout=30) as r:
        text = r.read().decode()
    return {name: float(value) for name, _, value in
            (line.rpartition(" ") for line in text.splitlines() if line.startswith(prefix))}


def test_devnet_referral_council_to_trust(devnet_dir: Path) -> None:
    d = ["--devnet", str(devnet_dir)]
    state = json.loads((devnet_dir / "state.json").read_text())
    pids = [state["nats_pid"], *(g["pid"] for g in state["gateways"].values())]
    assert all(procs.alive(p) for p in pids)
    assert oct((devnet_dir / "pki" / "ca.key").stat().st_mode & 0o777) == "0o600"
    # each gateway process set its garbage collector once started (gateway.gc_threshold)
    gc_metrics = gateway_metrics(devnet_dir, "ods:RYR", "psvn_gc_")
    assert gc_metrics['psvn_gc_threshold{generation="0"}'] == 100_000
    assert gc_metrics["psvn_gc_frozen_objects"] > 10_000  # start-up's heap: the registry, policy, models
    # and hands the C allocator's free pages back every 10 s (gateway.heap_trim_seconds)
    trims = gateway_metrics(devnet_dir, "ods:RYR", "psvn_heap_trim_interval")["psvn_heap_trim_interval_seconds"]
    assert trims == (10 if platform.libc_ver()[0] == "glibc" else 0)  # 0: the C library cannot trim

    sent = run("send", *d, "--as", "gss:E06000043", "--to", "ods:RYR", "--type", "fhir.r4.ServiceRequest",
               "--purpose", "direct-care", "--classification", "OFFICIAL-SENSITIVE", "--subject", "nhs:9434765919",
               "examples/referral.json")
    mid = sent.stdout.strip()
    assert len(mid) == 36

    for _ in range(100):
        listed = json.loads(run("inbox", "list", *d, "--as", "ods:RYR", "--json").stdout)
        if listed:
            break
    assert [m["id"] for m in listed] == [mid]
    got = json.loads(run("inbox", "get", *d, "--as", "ods:RYR", mid, "--json").stdout)
    assert got["payload"]["resourceType"] == "ServiceRequest"
    assert got["envelope"]["sender"] == "gss:E06000043"
    human = run("inbox", "get", *d, "--as", "ods:RYR", mid).stdout
    assert "sender: gss:E06000043" in human and '"ServiceRequest"' in human
    assert "acknowledged" in run("inbox", "ack", *d, "--as", "ods:RYR", mid).stdout

    for _ in range(100):
        st = json.loads(run("status", *d, "--as", "gss:E06000043", mid, "--json").stdout)
        if st["status"] == "acknowledged":
            break
    assert [h["status"] for h in st["history"]] == ["accepted", "sent", "delivered", "acknowledged"]

    status = run("devnet", "--dir", str(devnet_dir), "status")
    assert [line.split()[4] for line in status.stdout.splitlines()] \
        == ["up"] * 7

    run("devnet", "--dir", str(devnet_dir), "down")
    assert not any(procs.alive(p) for p in pids)
    assert not (devnet_dir / "state.json").exists()


def test_cli_errors_are_readable(devnet_dir: Path, tmp_path: Path) -> None:
    d = ["--devnet", str(devnet_dir)]
    denied = run("send", *d, "--as", "gss:E06000043", "--to", "ods:RYR", "--type", "fhir.r4.Patient",
                 "--purpose", "marketing", "examples/patient.json", check=False)
    assert denied.returncode == 1
    assert denied.stderr.startswith("error policy-denied") and "message " in denied.stderr

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"resourceType": "ServiceRequest", "intent": "order",
                               "subject": {"reference": "Patient/1"}}))
    invalid = run("send", *d, "--as", "gss:E06000043", "--to", "ods:RYR", "--type", "fhir.r4.ServiceRequest",
                  "--purpose", "direct-care", str(bad), check=False)
    assert invalid.returncode == 1
    assert "error invalid-payload" in invalid.stderr and "  - /status" in invalid.stderr
    # with --json the same problem comes as RFC 9457 JSON on stdout, for scripts
    as_json = run("send", *d, "--as", "gss:E06000043", "--to", "ods:RYR", "--type", "fhir.r4.ServiceRequest",
                  "--purpose", "direct-care", str(bad), "--json", check=False)
    problem = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and as_json.stderr == ""
    assert problem["code"] == "invalid-payload" and problem["status"] == 422 and problem["message_id"]
    assert "/status" in [v["path"] for v in problem["violations"]]
    missing = json.loads(run("status", *d, "--as", "gss:E06000043", "no-such-id", "--json", check=False).stdout)
    assert missing["code"] == "not-found" and missing["field"] == "id"

    stranger = run("inbox", "list", *d, "--as", "ods:XXX", check=False)
    assert stranger.returncode == 1 and "--as" in stranger.stderr and "not a devnet member" in stranger.stderr
    again = run("devnet", "--dir", str(devnet_dir), "up", "--detach", check=False)
    assert again.returncode == 1 and "already running" in again.stderr


def test_foreground_devnet_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    import signal
    import time

    d = tmp_path / "fg"
    for _attempt in range(3):  # as in the fixture: a port of the range may be taken meanwhile
        proc = subprocess.Popen([*PSVN, "devnet", "--dir", str(d), "up", "--base-port", str(free_range())],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        seen = ""
        while "Ctrl-C stops all of it" not in seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        if "Ctrl-C stops all of it" in seen:
            break
        proc.wait(timeout=30)
    try:
        assert "Ctrl-C stops all of it" in seen, seen
        state = json.loads((d / "state.json").read_text())
        pids = [state["nats_pid"], state["console_pid"], *(g["pid"] for g in state["gateways"].values())]
        assert all(procs.alive(p) for p in pids)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert not any(procs.alive(p) for p in pids)
        assert not (d / "state.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            run("devnet", "--dir", str(d), "down", check=False)


def test_revoke_and_reinstate_a_member(devnet_dir: Path) -> None:
    import time

    d = ["--devnet", str(devnet_dir)]
    send = ["send", *d, "--as", "gss:E06000043", "--to", "ods:G81001", "--type", "fhir.r4.ServiceRequest",
            "--purpose", "direct-care", "examples/referral.json"]
    assert "revoked" in run("devnet", "--dir", str(devnet_dir), "revoke", "ods:G81001").stdout
    deadline = time.monotonic() + 20
    while True:  # the council's registry view learns of it from the backbone (sub-second; longer on busy cores)
        refused = run(*send, check=False)
        if refused.returncode == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert refused.returncode == 1 and "member-revoked" in refused.stderr
    run("devnet", "--dir", str(devnet_dir), "reinstate", "ods:G81001")
    deadline = time.monotonic() + 20
    while True:  # the GP's gateway reconnects to the backbone by itself
        ok = run(*send, check=False)
        if ok.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert ok.returncode == 0, ok.stderr


def test_rotate_keys_and_revoke_a_certificate(devnet_dir: Path) -> None:
    import time

    d = ["--devnet", str(devnet_dir)]
    send = ["send", *d, "--as", "gss:E06000043", "--to", "ods:RYR", "--type", "fhir.r4.ServiceRequest",
            "--purpose", "direct-care", "examples/referral.json"]
    before = run(*send).stdout.strip()
    rotated = run("devnet", "--dir", str(devnet_dir), "rotate", "ods:RYR")
    assert "ods:RYR: new message keys in the registry" in rotated.stdout
    assert "1 retired signing key(s)" in rotated.stdout
    assert len(list((devnet_dir / "pki" / "orgs" / "ods_RYR" / "retired").iterdir())) == 2
    after = run(*send).stdout.strip()
    for mid in (before, after):  # sealed to the old key and to the new one: both open
        got = json.loads(run("inbox", "get", *d, "--as", "ods:RYR", mid, "--json").stdout)
        assert got["envelope"]["id"] == mid
    stranger = run("devnet", "--dir", str(devnet_dir), "rotate", "ods:XXX", check=False)
    assert stranger.returncode == 1 and "not a devnet member" in stranger.stderr

    # revoking the GP gateway's backbone certificate revokes its backbone users live: it is locked out
    gp_cert = devnet_dir / "pki" / "orgs" / "ods_G81001" / "nats.crt"
    revoked = run("certs", "revoke", "--dir", str(devnet_dir / "pki"), str(gp_cert))
    assert "backbone revoked ods:G81001's users" in revoked.stdout
    deadline = time.monotonic() + 20
    while True:
        status = run("send", *d, "--as", "ods:G81001", "--to", "ods:RYR", "--type", "fhir.r4.ServiceRequest",
                     "--purpose", "direct-care", "examples/referral.json", "--json", check=False)
        if status.returncode == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert status.returncode == 1 and json.loads(status.stdout)["code"] == "backbone-unavailable", status.stdout


def test_validate_against_the_policy_the_network_enforces(devnet_dir: Path, tmp_path: Path) -> None:
    """A custom JSON Schema type published to the network is known to `psvn validate --devnet`
    (the gateway's answer), not to the repository's built-in policy set."""
    import shutil

    folder = tmp_path / "policy"
    shutil.copytree(ROOT / "policies" / "default", folder)
    (folder / "schemas" / "bin-collection.json").write_text(json.dumps({
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "required": ["uprn", "day"], "additionalProperties": False,
        "properties": {"uprn": {"type": "string", "pattern": "^[0-9]{1,12}$"},
                       "day": {"enum": ["Mon", "Tue", "Wed", "Thu", "Fri"]}}}))
    with (folder / "catalogue.toml").open("a") as f:
        f.write('\n[types."local.bin-collection"]\nstandard = "JSON Schema 2020-12"\nversion = "1"\n'
                'profile = "https://example.gov.uk/bins/1.json"\nvalidator = "jsonschema"\n'
                'schema = "bin-collection"\ndescription = "A household bin collection day"\n'
                'owner = "Brighton & Hove City Council"\n')
    net = ["--devnet", str(devnet_dir)]
    proposal = json.loads(run("policy", "propose", str(folder), "--bump", "--as", "alice", *net, "--json").stdout)
    run("policy", "approve", proposal["id"], "--as", "bob", *net)
    run("policy", "publish", proposal["id"], "--as", "bob", *net)

    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"uprn": "22057411", "day": "Tue"}))
    bad.write_text(json.dumps({"uprn": "22057411", "day": "Sun"}))
    ok = json.loads(run("validate", "--type", "local.bin-collection", str(good), *net, "--json").stdout)
    assert ok["valid"] is True and ok["policy_version"] == 2
    refused = run("validate", "--type", "local.bin-collection", str(bad), *net, "--json", check=False)
    problem = json.loads(refused.stdout)
    assert refused.returncode == 1 and problem["code"] == "invalid-payload"
    assert [v["path"] for v in problem["violations"]] == ["/day"]
    listed = json.loads(run("catalogue", "list", *net, "--json").stdout)
    assert "local.bin-collection" in {e["type"] for e in listed}
    # the repository's built-in policy set does not know the type
    local = run("validate", "--type", "local.bin-collection", str(good), "--json", check=False)
    assert local.returncode == 1 and json.loads(local.stdout)["code"] == "unknown-type"


def test_feed_commands(devnet_dir: Path) -> None:
    d = ["--devnet", str(devnet_dir)]
    topic, purpose = "sensors.brighton.air", "environmental-monitoring"
    sub = json.loads(run("feed", "subscribe", *d, "--as", "ods:RYR", topic, "--purpose", purpose, "--json").stdout)
    assert sub["subscriber"] == "ods:RYR" and sub["topic"] == topic
    assert topic in run("feed", "list", *d, "--as", "ods:RYR").stdout
    denied = run("feed", "subscribe", *d, "--as", "ods:G81001", topic, "--purpose", purpose, "--json", check=False)
    assert denied.returncode == 1 and json.loads(denied.stdout)["code"] == "policy-denied"
    pub = json.loads(run("feed", "publish", *d, "--as", "gss:E06000043", topic, "--type",
                         "cloudevents.air-quality.reading", "--purpose", purpose, "examples/air-quality.json",
                         "--json").stdout)
    assert [x["to"] for x in pub["deliveries"]] == ["ods:RYR"] and pub["refused"] == []
    got = json.loads(run("inbox", "get", *d, "--as", "ods:RYR", pub["deliveries"][0]["id"], "--json").stdout)
    assert got["envelope"]["type"] == "cloudevents.air-quality.reading" and got["envelope"]["topic"] == topic
    assert "unsubscribed" in run("feed", "unsubscribe", *d, "--as", "ods:RYR", topic).stdout
    assert "(no subscriptions)" in run("feed", "list", *d, "--as", "ods:RYR").stdout


def test_registry_history_and_recover_after_a_blanked_entry(devnet_dir: Path) -> None:
    """A blanked registry entry: gateways keep the member (sending still works), `psvn registry
    history` shows the blank refused, `psvn registry recover` puts the last verified entry back."""
    import asyncio

    from psvn import devnet
    from psvn.broker import registry

    layout = devnet.Layout(devnet_dir)
    assert oct(layout.registry_key.stat().st_mode & 0o777) == "0o600" and layout.registry_pub.exists()
    state = devnet.read_state(layout)
    assert state is not None

    async def blank() -> None:
        nc = await devnet.broker_connect(layout, state.nats_url)
        try:
            await (await registry.ensure_bucket(nc.jetstream())).put(registry.key_for("ods:RYR"), b"")
        finally:
            await nc.close()

    asyncio.run(blank())
    d = ["--devnet", str(devnet_dir)]
    history = run("registry", *d, "history", "ods:RYR").stdout.splitlines()
    assert "verified" in history[-2] and history[-1].endswith("refused: an empty value"), history
    sent = run("send", *d, "--as", "gss:E06000043", "--to", "ods:RYR", "--type", "fhir.r4.ServiceRequest",
               "--purpose", "direct-care", "examples/referral.json")
    assert len(sent.stdout.strip()) == 36
    recovered = run("registry", *d, "recover", "ods:RYR")
    assert "ods:RYR: put back the entry signed" in recovered.stdout and "status active" in recovered.stdout
    assert "verified" in run("registry", *d, "history", "ods:RYR").stdout.splitlines()[-1]
    # the wire version its gateway opens: lowered before a roll-back, raised after an upgrade
    assert json.loads(run("registry", *d, "wire", "ods:RYR", "1", "--json").stdout) == {
        "org": "ods:RYR", "wire": 1, "status": "active"}
    assert "senders now seal to it in wire version 2" in run("registry", *d, "wire", "ods:RYR", "2").stdout
    bad = run("registry", *d, "wire", "ods:RYR", "3", check=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    assert "verified" in run("registry", *d, "history", "ods:RYR").stdout.splitlines()[-1]
