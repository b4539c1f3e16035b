"""Every Python block of clients/python/README.md, run as written against a fresh network.

The README's blocks are one Python session run from the root of a checkout after ``psvn devnet
up``: certificates under ``.devnet/pki`` and the gateways on the devnet's ports. Here the same
building blocks as ``psvn devnet up`` (``psvn.devnet``) lay out a network under a temporary
``.devnet/`` (so every certificate path is the one the devnet writes), with the README's
gateways listening on free ports instead of the devnet's fixed ones, so that this test never
collides with a devnet someone is running: ``localhost:<devnet port>`` is the only text changed
before a block runs, and each port the README names must be one the devnet gives that member.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest

from psvn import devnet
from psvn.devnet import DEVNET_MEMBERS, EXAMPLE_MEMBERS
from tests.conftest import start_network, stop_network

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "clients" / "python" / "README.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
PORT = re.compile(r"localhost:(\d+)")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of each ```python block, in order."""
    return [(text[: m.start()].count("\n") + 1, m.group(2)) for m in BLOCK.finditer(text) if m.group(1) == "python"]


def devnet_ports() -> dict[int, str]:
    """The port `psvn devnet up` gives each member's gateway (default base port)."""
    return {devnet.BASE_PORT + devnet.GATEWAY_OFFSET + i: m.org for i, m in enumerate(DEVNET_MEMBERS)}


def test_the_readme_has_a_python_block_per_task() -> None:
    text = README.read_text()
    blocks = python_blocks(text)
    assert len(blocks) >= 7
    code = "\n".join(b for _, b in blocks)
    for call in (".send(", ".wait_for_status(", ".receive(", ".ack()", ".subscribe(", ".publish(",
                 "except ConnectionError", "except TimeoutError", "async for"):
        assert call in code, f"no README block shows {call}"
    for _, block in blocks:
        compile(block, str(README), "exec")
    # what the README says the devnet writes is what the devnet writes
    layout = devnet.Layout(Path(".devnet"))
    for org, system in (("gss:E06000043", "adult-social-care"), ("ods:RYR", "pas")):
        cert, key = layout.system_cert(org, system)
        path = cert.as_posix().replace(".devnet/pki", "{PKI}")
        assert f'f"{path}"' in code and f'f"{key.as_posix().replace(".devnet/pki", "{PKI}")}"' in code
    assert 'PKI = ".devnet/pki"' in code and layout.ca.as_posix() == ".devnet/pki/ca.crt"
    named = {int(p) for p in PORT.findall(code)} - {9}
    assert named and named <= set(devnet_ports()), f"ports the devnet does not use: {named - set(devnet_ports())}"


async def test_every_python_block_of_the_sdk_readme_runs_against_a_fresh_network(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    members = list(EXAMPLE_MEMBERS)
    by_org = {org: port for port, org in devnet_ports().items()}
    net = await start_network(tmp_path / ".devnet", members)  # gateways on ports they chose
    ports = {by_org[m.org]: net.gateways[m.org].port for m in members}  # devnet port -> the one used here
    try:
        (tmp_path / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
        monkeypatch.chdir(tmp_path)
        session: dict[str, Any] = {"__name__": "__readme__"}
        out = io.StringIO()

        def run() -> None:
            for line, block in python_blocks(README.read_text()):
                code = PORT.sub(lambda m: f"localhost:{ports.get(int(m.group(1)), int(m.group(1)))}", block)
                try:
                    with contextlib.redirect_stdout(out):
                        exec(compile(code, f"{README}:{line}", "exec"), session)
                except BaseException as exc:
                    raise AssertionError(f"README block at line {line} failed: {exc!r}\n--- output so far:\n"
                                         f"{out.getvalue()[-3000:]}") from exc

        await asyncio.wait_for(asyncio.to_thread(run), timeout=90)
    finally:
        await stop_network(net)
    printed = out.getvalue()
    # the blocks did what they say: delivered, acknowledged, a feed event received, errors caught
    assert "acknowledged" in printed and "sensors.brighton.air" in printed
    assert "connection-failed" in printed and "policy-denied" in printed
    assert session["taken"] and session["sent"].id
    assert all(r.ok for r in session["results"][:2]) and not session["results"][2].ok
