"""The console and the CLI agree: the same text lints the same (one lint, the registry's members
for both), and a bad sign-in token is explained, not shown as a library's exception name.

A real devnet (its console as a real process) and the CLI as a subprocess; the console's JSON API
over real HTTP.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.cli.test_cli_errors import psvn

ROOT = Path(__file__).resolve().parents[2]


def call(url: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_console_and_cli_lint_alike_and_a_bad_token_is_explained(tmp_path: Path) -> None:
    from psvn.bench import free_port_range

    d = tmp_path / "devnet"
    for _attempt in range(3):
        up = psvn("devnet", "--dir", str(d), "up", "--detach", "--base-port", str(free_port_range()))
        if up.returncode == 0:
            break
    assert up.returncode == 0, up.stderr
    try:
        console = json.loads((d / "state.json").read_text())["console_url"].rstrip("/")
        tok = psvn("console", "token", "--devnet", str(d), "--user", "alice", "--role", "compliance-officer")
        assert tok.returncode == 0, tok.stderr
        token = tok.stdout.strip()

        text = (ROOT / "policies" / "default" / "rules.toml").read_text()
        status, web = call(f"{console}/api/policy/lint", token, {"rules_text": text})
        assert status == 200, web
        cli = psvn("policy", "lint", "--devnet", str(d), "--json")
        assert cli.returncode == 0, cli.stderr
        mine = json.loads(cli.stdout)

        def key(f: dict[str, Any]) -> tuple[Any, ...]:
            return f["severity"], f["kind"], f["message"], f.get("line"), f.get("rule_id")

        assert web["counts"] == mine["counts"]
        assert sorted(map(key, web["findings"])) == sorted(map(key, mine["findings"]))
        assert web["counts"]["warning"] > 0  # the registry's view: rules name members it does not hold

        # any accepted version's text by number; a version not there is named, not a 500
        status, v1 = call(f"{console}/api/history/1", token)
        assert status == 200 and v1["version"] == 1 and 'id = "care-referrals"' in v1["rules_text"], v1
        status, same = call(f"{console}/api/history/1/diff?against=1", token)
        assert (status, same["rules_diff"]) == (200, "")
        status, problem = call(f"{console}/api/history/7", token)
        assert status == 404 and "policy version 7" in problem["detail"], problem
        status, problem = call(f"{console}/api/history/1/diff?against=latest", token)
        assert status == 400 and problem["field"] == "against", problem

        for bad, says in (("not-a-token", "not a console token"),
                          (token[:-6] + "AAAAAA", "this console did not issue it")):
            status, problem = call(f"{console}/api/whoami", bad)
            assert status == 401
            assert "DecodeError" not in problem["detail"] and "Error" not in problem["detail"], problem
            assert says in problem["detail"], problem
    finally:
        psvn("devnet", "--dir", str(d), "down")
