"""`psvn send` with several files or --ndjson, against a real devnet: one line per message in
order (its id or its error), --json the results array, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

from tests.devnet.test_devnet_cli import ROOT, devnet_dir, run

__all__ = ["devnet_dir"]  # the fixture, used by name

REFERRAL = json.loads((ROOT / "examples" / "referral.json").read_text())
COUNCIL = ["--as", "gss:E06000043"]
TO_TRUST = ["--to", "ods:RYR", "--type", "fhir.r4.ServiceRequest", "--purpose", "direct-care",
            "--classification", "OFFICIAL-SENSITIVE",
            "--subject", "nhs:9434765919"]


def _trust_inbox(d: list[str], want: int) -> list[str]:
    """The trust's mailbox, polled (bounded) until it holds ``want`` messages."""
    ids: list[str] = []
    for _ in range(100):
        ids = [m["id"] for m in json.loads(run("inbox", "list", *d, "--as", "ods:RYR", "--json").stdout)]
        if len(ids) >= want:
            break
    return ids


def test_send_several_files_and_ndjson(devnet_dir: Path, tmp_path: Path) -> None:
    d = ["--devnet", str(devnet_dir)]
    good = tmp_path / "good.json"
    good.write_text(json.dumps(REFERRAL))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({k: v for k, v in REFERRAL.items() if k != "status"}))

    files = run("send", *d, *COUNCIL, *TO_TRUST, str(good), str(bad), "examples/referral.json", check=False)
    assert files.returncode == 1 and "Traceback" not in files.stderr, files.stderr
    lines = files.stdout.splitlines()
    assert len(lines) == 3, files.stdout
    assert lines[0].startswith(f"{good}: ") and lines[0].endswith(" accepted")
    assert lines[1].startswith(f"{bad}: error invalid-payload") and "/status" in lines[1]
    assert lines[2].startswith("examples/referral.json: ") and lines[2].endswith(" accepted")
    sent = [lines[0].split()[1], lines[2].split()[1]]

    message = {"to": "ods:RYR", "type": "fhir.r4.ServiceRequest", "purpose": "direct-care",
               "classification": "OFFICIAL-SENSITIVE", "subject": "nhs:9434765919", "payload": REFERRAL}
    ndjson = "\n".join([
        json.dumps({**message, "idempotency_key": "nd-1"}),
        "{not json",
        "",
        json.dumps({**message, "purpose": "marketing"}),
        json.dumps({"payload": REFERRAL, "idempotency_key": "nd-2"}),  # to and type from the flags
        json.dumps(["not", "an", "object"]),
    ]) + "\n"
    nd = tmp_path / "batch.ndjson"
    nd.write_text(ndjson)
    out = run("send", *d, *COUNCIL, *TO_TRUST, "--ndjson", str(nd), "--json", check=False)
    assert out.returncode == 1 and out.stderr == "", out.stderr
    results = json.loads(out.stdout)
    assert [r["source"] for r in results] == ["line 1", "line 2", "line 4", "line 5", "line 6"]
    assert [r.get("code") for r in results] == [None, "malformed-json", "policy-denied", None, "invalid-envelope"]
    assert results[0]["status"] == "accepted" and results[0]["idempotency_key"] == "nd-1"
    assert results[2]["status"] == 403 and results[2]["message_id"] and results[2]["rule_ids"]
    sent += [results[0]["id"], results[3]["id"]]

    # stdin, a retry with the same keys: the same ids, nothing sent twice
    again = run_stdin(d, nd.read_text())
    ids = [line.split()[2] for line in again.splitlines() if "(duplicate)" in line]
    assert ids == [results[0]["id"], results[3]["id"]], again

    assert sorted(_trust_inbox(d, len(sent))) == sorted(sent)

    usage = run("send", *d, *COUNCIL, "--type", "fhir.r4.ServiceRequest", str(good), check=False)
    assert usage.returncode == 1 and "--to" in usage.stderr and "Traceback" not in usage.stderr


def run_stdin(d: list[str], text: str) -> str:
    import os
    import subprocess

    from tests.devnet.test_devnet_cli import PSVN

    res = subprocess.run([*PSVN, "send", *d, *COUNCIL, *TO_TRUST, "--ndjson", "-"], cwd=ROOT, input=text,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr  # lines 2, 4, 6 still refused
    return res.stdout
