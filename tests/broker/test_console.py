"""The console's HTTP API over real sockets, against a real nats-server and real gateways."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from psvn import devnet
from psvn.broker import console
from psvn.broker.auth import TokenAuthority, key_path
from psvn.cli import console_cmd, policy_admin_cmd
from psvn.core.errors import Code, PsvnError
from tests.broker.test_policy_admin import DENY_RULE_ID, edited_rules, wait_versions
from tests.conftest import Network
from tests.gateway.test_service import call, referral


@dataclass
class Console:
    server: console.ConsoleServer
    tokens: TokenAuthority
    net: Network

    @property
    def url(self) -> str:
        return self.server.url

    def token(self, user: str, role: str) -> str:
        return self.tokens.issue(user, role)

    async def request(self, method: str, path: str, *, token: str | None = None, body: Any = None,
                      headers: dict[str, str] | None = None, raw: bytes | None = None,
                      ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        async with aiohttp.ClientSession() as s, s.request(method, self.url + path, data=data, headers=h) as r:
            text = await r.text()
            try:
                payload = json.loads(text)
            except ValueError:
                payload = text
            return r.status, payload, r.headers


async def start_console(net: Network) -> Console:
    server = await console.start(net.layout, nats_url=net.nats.url, port=0)
    return Console(server=server, tokens=TokenAuthority.for_pki(net.layout.pki), net=net)


@pytest.fixture
async def con(network: Network) -> AsyncIterator[Console]:
    c = await start_console(network)
    try:
        yield c
    finally:
        await c.server.stop()


async def test_auth_required_and_roles_enforced(con: Console, capsys: pytest.CaptureFixture[str]) -> None:
    officer, approver, operator = con.token("alice", "compliance-officer"), con.token("bob", "approver"), \
        con.token("olive", "operator")

    code, body, headers = await con.request("GET", "/api/overview")
    assert code == 401 and body["code"] == Code.UNAUTHENTICATED.value and body["rule"] == "token-required"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert headers["Content-Type"].startswith("application/problem+json")

    forged = TokenAuthority(Ed25519PrivateKey.generate()).issue("alice", "approver")
    expired = con.tokens.issue("alice", "approver", ttl=60, now=time.time() - 3600)
    import jwt

    hs256 = jwt.encode({"sub": "alice", "role": "approver", "iss": "psvn-broker", "aud": "psvn-console",
                        "iat": int(time.time()), "exp": int(time.time()) + 60, "jti": "x"},
                       "a-shared-secret-that-is-long-enough-for-hs256", algorithm="HS256")
    for bad, rule in ((forged, "token-invalid"), (expired, "token-expired"), (hs256, "token-invalid"),
                      ("not-a-jwt", "token-invalid")):
        code, body, _ = await con.request("GET", "/api/overview", token=bad)
        assert (code, body["rule"]) == (401, rule), body
    code, body, _ = await con.request("GET", "/api/overview", headers={"Authorization": f"Basic {officer}"})
    assert (code, body["rule"]) == (401, "token-required")

    rules = {"rules_text": edited_rules()}
    for token, method, path, payload in (
            (operator, "POST", "/api/policy/lint", rules),
            (operator, "POST", "/api/proposals", rules),
            (approver, "POST", "/api/proposals", rules),
            (officer, "POST", "/api/proposals/p00000000/approve", None),
            (officer, "POST", "/api/proposals/p00000000/publish", None),
            (operator, "POST", "/api/proposals/p00000000/approve", None)):
        code, body, _ = await con.request(method, path, token=token, body=payload)
        assert (code, body["code"], body["rule"]) == (403, "forbidden", "console-role"), (path, body)

    for token in (officer, approver, operator):  # everyone may read
        code, body, _ = await con.request("GET", "/api/whoami", token=token)
        assert code == 200 and body["role"] in ("compliance-officer", "approver", "operator")
        code, _, _ = await con.request("GET", "/api/history", token=token)
        assert code == 200

    code, body, _ = await con.request("POST", "/api/policy/lint", token=officer, raw=b"rules_text=x",
                                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (code, body["rule"]) == (400, "json-body")  # no form posts: JSON with a bearer token only
    code, body, _ = await con.request("POST", "/api/policy/lint", token=officer, raw=b"{",
                                      headers={"Content-Type": "application/json"})
    assert (code, body["code"]) == (400, "malformed-json")
    code, body, _ = await con.request("GET", "/api/overview", token=officer,
                                      headers={"Host": f"evil.example:{con.server.port}"})
    assert (code, body["rule"]) == (403, "host")

    code, page, headers = await con.request("GET", "/")
    assert code == 200 and "<textarea id=\"rules\"" in page
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    code, _, _ = await con.request("GET", "/static/../auth.py")
    assert code in (403, 404)

    out = capsys.readouterr()
    for token in (officer, approver, operator, forged, expired):
        assert token not in out.out and token not in out.err  # tokens are never logged


async def test_lint_tests_and_simulation(con: Console) -> None:
    officer = con.token("alice", "compliance-officer")
    # real traffic first, so the simulation has recent audit metadata to replay
    code, sent = await call(con.net, con.net.COUNCIL, "POST", "/v1/messages", referral("ods:RYR"))
    assert code == 202, sent
    code, _ = await call(con.net, con.net.TRUST, "POST", "/v1/messages",
                            referral("gss:E06000043/adult-social-care"))
    assert code == 202

    code, cur, _ = await con.request("GET", "/api/policy/current", token=officer)
    assert code == 200 and cur["version"] == 1 and cur["source"] == "folder default"
    assert cur["rules_text"].startswith("# The psvn network's rules")  # the written text, comments kept
    assert "[[case]]" in cur["tests_text"]

    code, lint, _ = await con.request("POST", "/api/policy/lint", token=officer, body={"rules_text": cur["rules_text"]})
    assert code == 200 and lint["ok"] and lint["counts"]["error"] == 0 and lint["version"] == 2

    typo = edited_rules().replace('types = ["fhir.r4.ServiceRequest"]\noverrides',
                                  'types = ["fhir.r4.Referal"]\noverrides')
    line = next(i for i, t in enumerate(typo.splitlines(), 1) if "fhir.r4.Referal" in t)
    code, lint, _ = await con.request("POST", "/api/policy/lint", token=officer, body={"rules_text": typo})
    assert code == 200 and not lint["ok"]
    errors = [f for f in lint["findings"] if f["severity"] == "error"]
    assert any(f["line"] == line and "fhir.r4.Referal" in f["message"] for f in errors), errors

    broken = cur["rules_text"].replace("[[rule]]\nid = \"care-referrals\"", "[[rule]\nid = \"care-referrals\"", 1)
    code, lint, _ = await con.request("POST", "/api/policy/lint", token=officer, body={"rules_text": broken})
    assert code == 200 and lint["counts"]["error"] == 1
    assert lint["findings"][0]["kind"] == "syntax" and lint["findings"][0]["line"] == \
        broken.splitlines().index("[[rule]") + 1

    code, tests, _ = await con.request("POST", "/api/policy/test", token=officer,
                                       body={"rules_text": edited_rules(), "tests_text": cur["tests_text"]})
    assert code == 200 and tests["ok"] and tests["failed"] == 0 and tests["passed"] == len(tests["results"]) > 30
    code, body, _ = await con.request("POST", "/api/policy/test", token=officer, body={"rules_text": typo})
    assert (code, body["rule"]) == (400, "policy-lint")
    too_strict = edited_rules().replace('types = ["fhir.r4.ServiceRequest"]\noverrides',
                                        'types = ["fhir.r4.ServiceRequest", "fhir.r4.Bundle"]\noverrides')
    code, tests, _ = await con.request("POST", "/api/policy/test", token=officer, body={"rules_text": too_strict})
    assert code == 200 and not tests["ok"] and tests["failed"] == 1
    assert [r["name"] for r in tests["results"] if not r["passed"]] == [
        "Council -> NHS trust, referral bundle, safeguarding: allow"]

    code, sim, _ = await con.request("POST", "/api/policy/simulate", token=con.token("bob", "approver"),
                                     body={"rules_text": edited_rules()})
    assert code == 200, sim
    assert (sim["old_version"], sim["new_version"]) == (1, 2)
    assert sim["diff"]["counts"]["now-denied"] > 0 and sim["diff"]["counts"]["now-allowed"] == 0
    assert all(g["new_rule_ids"] == [DENY_RULE_ID] for g in sim["diff"]["groups"] if g["kind"] == "now-denied")
    traffic = sim["traffic"]
    assert traffic["replayed"] == 2 and traffic["skipped"] == 0
    assert [(c["message_id"], c["kind"], c["new"]["rule_ids"]) for c in traffic["changes"]] == [
        (sent["id"], "now-denied", [DENY_RULE_ID])]


async def test_propose_approve_publish_through_the_api(con: Console) -> None:
    alice = con.token("alice", "compliance-officer")
    alice_as_approver = con.token("alice", "approver")  # one person, two roles: still one person
    bob = con.token("bob", "approver")

    code, p, _ = await con.request("POST", "/api/proposals", token=alice,
                                   body={"rules_text": edited_rules(), "note": "pause council referrals"})
    assert code == 201, p
    assert (p["status"], p["proposer"], p["version"], p["base_version"]) == ("proposed", "alice", 2, 1)
    pid = p["id"]

    code, body, _ = await con.request("POST", f"/api/proposals/{pid}/approve", token=alice_as_approver)
    assert (code, body["code"], body["rule"]) == (403, "forbidden", "two-person-rule")
    code, body, _ = await con.request("POST", f"/api/proposals/{pid}/publish", token=bob)
    assert (code, body["rule"]) == (409, "proposal-status")

    code, detail, _ = await con.request("GET", f"/api/proposals/{pid}", token=bob)
    assert code == 200 and f'+id = "{DENY_RULE_ID}"' in detail["rules_diff"]
    assert detail["rules_text"] == edited_rules()

    code, body, _ = await con.request("POST", f"/api/proposals/{pid}/approve", token=bob)
    assert (code, body["status"], body["approver"]) == (200, "approved", "bob")
    code, body, _ = await con.request("POST", f"/api/proposals/{pid}/publish", token=bob)
    assert (code, body["status"], body["proposer"], body["approver"]) == (200, "published", "alice", "bob")
    assert await wait_versions(con.net, 2) == {org: 2 for org in con.net.gateways}

    code, hist, _ = await con.request("GET", "/api/history", token=con.token("olive", "operator"))
    assert [(h["version"], h["proposer"], h["approver"], h["proposal"]) for h in hist["history"]] == [
        (2, "alice", "bob", pid), (1, "devnet", "devnet", "")]

    code, cur, _ = await con.request("GET", "/api/policy/current", token=alice)
    assert (cur["version"], cur["proposer"], cur["approver"], cur["source"]) == (2, "alice", "bob", f"proposal {pid}")
    assert cur["rules_text"] == edited_rules()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:  # the overview reads each gateway's position on the policy bucket from the backbone
        code, ov, _ = await con.request("GET", "/api/overview", token=con.token("olive", "operator"))
        assert code == 200
        if all(m["policy_version"] == 2 for m in ov["members"]) or loop.time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert ov["published_version"] == 2
    assert {m["address"]: (m["watching_policy"], m["policy_version"], m["in_step"]) for m in ov["members"]} == \
        {org: (True, 2, True) for org in con.net.gateways}

    code, body = await call(con.net, con.net.COUNCIL, "POST", "/v1/messages", referral("ods:RYR"))
    assert (code, body["rule"]) == (403, DENY_RULE_ID)
    deadline = loop.time() + 10
    while True:  # the refusal's audit record is written by the gateway's batcher, a moment later
        code, ov, _ = await con.request("GET", "/api/overview", token=alice)
        council = next(m for m in ov["members"] if m["address"] == con.net.COUNCIL)
        if council["audit_counts"].get("rejected") or loop.time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert council["audit_counts"].get("rejected") == 1 and council["last_audit_policy_version"] == 2
    assert ov["audit"]["by_org"]["broker"] == {"policy-proposed": 1, "policy-approved": 1, "policy-published": 1}

    # a compliance officer withdraws only their own proposal
    code, q, _ = await con.request("POST", "/api/proposals", token=con.token("carol", "compliance-officer"),
                                   body={"rules_text": edited_rules("\n# tidy\n")})
    assert code == 201 and q["version"] == 3
    code, body, _ = await con.request("POST", f"/api/proposals/{q['id']}/reject", token=alice, body={})
    assert (code, body["rule"]) == (403, "console-role")
    code, body, _ = await con.request("POST", f"/api/proposals/{q['id']}/reject",
                                      token=con.token("carol", "compliance-officer"), body={"reason": "not yet"})
    assert (code, body["status"], body["rejected_by"]) == (200, "rejected", "carol")


async def test_lint_errors_block_a_proposal_through_the_api(con: Console) -> None:
    alice = con.token("alice", "compliance-officer")
    typo = edited_rules().replace('from = ["council"]\nto = ["nhs-trust"]', 'from = ["counsil"]\nto = ["nhs-trust"]')
    code, body, _ = await con.request("POST", "/api/proposals", token=alice, body={"rules_text": typo})
    assert (code, body["rule"]) == (400, "policy-lint")
    assert any("counsil" in v["message"] for v in body["violations"])
    code, body, _ = await con.request("POST", "/api/proposals", token=alice, body={"rules_text": "[[rule]\n"})
    assert (code, body["rule"]) == (400, "policy-lint")
    code, listed, _ = await con.request("GET", "/api/proposals", token=alice)
    assert listed == {"proposals": []}


async def test_console_refuses_non_loopback_and_key_readable_by_others(network: Network) -> None:
    with pytest.raises(PsvnError) as exc:
        console.ConsoleServer(None, None, host="0.0.0.0")  # type: ignore[arg-type]
    assert exc.value.rule == "console-loopback"

    path = key_path(network.layout.pki)
    TokenAuthority.for_pki(network.layout.pki)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o644)
    with pytest.raises(PsvnError) as exc:
        TokenAuthority.for_pki(network.layout.pki)
    assert exc.value.rule == "key-file-mode"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="psvn")
    sub = parser.add_subparsers()
    console_cmd.register(sub)
    policy = sub.add_parser("policy")
    policy_admin_cmd.add_commands(policy.add_subparsers())
    return parser


def _write_state(net: Network) -> None:
    """Make the test network look like a running devnet to the CLI (real server, real PID)."""
    assert net.nats.pid is not None
    state = devnet.DevnetState(root=str(net.layout.root), nats_url=net.nats.url, nats_pid=net.nats.pid,
                               monitor_port=net.nats.config.monitor_port, gateways={})
    devnet.state_path(net.layout).write_bytes(msgspec.json.encode(state))


@pytest.fixture
def keep_log_config() -> Iterator[None]:
    """The CLI configures structlog for its process (stderr): undo that for the tests that follow,
    whose loggers would otherwise write to this test's closed capture stream."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


async def test_cli_token_and_workflow(network: Network, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      keep_log_config: None) -> None:
    _write_state(network)
    parser = _parser()
    root = str(network.layout.root)

    def run(*argv: str) -> tuple[int, str]:
        args = parser.parse_args(list(argv))
        rc = int(args.func(args) or 0)
        return rc, capsys.readouterr().out

    rc, out = await asyncio.to_thread(run, "console", "token", "--devnet", root, "--user", "Alice",
                                      "--role", "approver")
    who = TokenAuthority.for_pki(network.layout.pki).verify(out.strip())
    assert rc == 0 and (who.user, who.role) == ("alice", "approver")
    with pytest.raises(SystemExit):
        parser.parse_args(["console", "token", "--devnet", root, "--user", "a", "--role", "root"])

    folder = tmp_path / "policy"
    folder.mkdir()
    from psvn.policies import bundle

    for name in ("policyset.toml", "catalogue.toml", "tests.toml"):
        (folder / name).write_text((bundle.DEFAULT_DIR / name).read_text())
    (folder / "schemas").symlink_to(bundle.DEFAULT_DIR / "schemas")
    (folder / "rules.toml").write_text(edited_rules())

    with pytest.raises(PsvnError) as exc:  # the folder still says version 1
        await asyncio.to_thread(run, "policy", "propose", str(folder), "--as", "alice", "--devnet", root)
    assert exc.value.code is Code.POLICY_VERSION_REGRESSION
    rc, out = await asyncio.to_thread(run, "policy", "propose", str(folder), "--as", "alice", "--bump",
                                      "--devnet", root, "--json")
    proposal = json.loads(out)
    assert rc == 0 and (proposal["version"], proposal["proposer"]) == (2, "alice")
    with pytest.raises(PsvnError) as exc:
        await asyncio.to_thread(run, "policy", "approve", proposal["id"], "--as", "alice", "--devnet", root)
    assert exc.value.rule == "two-person-rule"
    rc, out = await asyncio.to_thread(run, "policy", "approve", proposal["id"], "--as", "bob", "--devnet", root)
    assert rc == 0 and "approved by bob" in out
    rc, out = await asyncio.to_thread(run, "policy", "publish", proposal["id"], "--devnet", root)
    assert rc == 0 and "published version 2" in out
    rc, out = await asyncio.to_thread(run, "policy", "history", "--devnet", root)
    assert rc == 0 and out.splitlines()[0].startswith("v2") and "alice" in out and "bob" in out
    rc, out = await asyncio.to_thread(run, "policy", "proposals", "--devnet", root)
    assert rc == 0 and proposal["id"] in out and "published" in out
    assert await wait_versions(network, 2) == {org: 2 for org in network.gateways}


async def test_a_console_500_carries_the_id_of_its_logged_traceback(con: Console,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from psvn.core import log as psvn_log
    saved = structlog.get_config()
    stream = io.StringIO()
    psvn_log.configure(json=True, stream=stream)
    try:
        async def broken() -> None:
            raise RuntimeError("the editor source is unreadable")

        monkeypatch.setattr(con.server.store, "editor_source", broken)
        code, problem, _ = await con.request("GET", "/api/policy/current",
                                             token=con.token("alice", "compliance-officer"))
    finally:
        structlog.configure(**saved)
    assert code == 500 and problem["code"] == "internal"
    request_id = problem["request_id"]
    assert request_id in problem["detail"]
    [logged] = [json.loads(line) for line in stream.getvalue().splitlines()
                if line.startswith("{") and request_id in line]
    assert "Traceback" in logged["exception"] and "the editor source is unreadable" in logged["exception"]
