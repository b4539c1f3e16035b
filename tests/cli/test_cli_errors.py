"""A newcomer's mistakes, each answered by one line that names the file, port, organisation or
flag, and a non-zero exit: never a Python traceback.

The CLI runs as a real process against a real devnet (nats-server, gateways, console) started
once for the module; the mistakes that need no network run without one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from psvn.core import config, procs
from psvn.gateway import config as gwconfig

ROOT = Path(__file__).resolve().parents[2]
PSVN = [sys.executable, "-m", "psvn.cli.main"]


def psvn(*args: str, timeout: float = 90, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("PSVN_DEBUG", "PSVN_BASE_PORT")}
    return subprocess.run([*PSVN, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**base, "PYTHONPATH": str(ROOT), **(env or {})})


@dataclass
class Net:
    dir: Path
    base: int

    @property
    def d(self) -> list[str]:
        return ["--devnet", str(self.dir)]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    from psvn.bench import free_port_range

    d = tmp_path_factory.mktemp("errors") / "devnet"
    for _attempt in range(3):
        base = free_port_range()
        up = psvn("devnet", "--dir", str(d), "up", "--detach", "--base-port", str(base))
        if up.returncode == 0:
            break
    assert up.returncode == 0, up.stderr
    try:
        yield Net(d, base)
    finally:
        psvn("devnet", "--dir", str(d), "down")


def assert_one_line_error(res: subprocess.CompletedProcess[str], *names: str) -> str:
    """Exit status not 0, no traceback, and one line on stderr that names every one of ``names``."""
    err = res.stderr.strip()
    assert res.returncode != 0, f"exit 0 for a mistake:\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("starting psvn devnet")]
    assert len(lines) == 1, f"not one line:\n{err}"
    assert lines[0].startswith("error "), lines[0]
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    return lines[0]


def gateway_config(net: Net, tmp_path: Path, **changes: str) -> Path:
    """The trust's devnet gateway config with some lines changed (a copy a newcomer edited)."""
    text = (net.dir / "gateways" / "ods_RYR.toml").read_text()
    port = procs.free_port()
    lines = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if key == "listen_port":
            line = f"listen_port = {port}"
        for k, v in changes.items():
            if key == k:
                line = f"{k} = {v}"
        lines.append(line)
    out = tmp_path / "gateway.toml"
    out.write_text("\n".join(lines) + "\n")
    return out


SEND = ["send", "--as", "gss:E06000043", "--to", "ods:RYR", "--type", "fhir.r4.ServiceRequest"]


# --- psvn send ------------------------------------------------------------------------------


def test_send_misspelt_file_names_it_and_the_near_name(net: Net) -> None:
    line = assert_one_line_error(psvn(*SEND, *net.d, "--purpose", "direct-care", "examples/referal.json"),
                                 "examples/referal.json", "no such file")
    assert "did you mean examples/referral.json" in line


def test_send_misspelt_ndjson_file(net: Net) -> None:
    assert_one_line_error(psvn("send", *net.d, "--as", "gss:E06000043", "--ndjson", "msgs.ndjsn"),
                          "--ndjson", "msgs.ndjsn")


def test_send_a_folder(net: Net) -> None:
    assert_one_line_error(psvn(*SEND, *net.d, "--purpose", "direct-care", "examples"), "examples", "folder")


def test_send_without_purpose_is_refused_not_defaulted(net: Net) -> None:
    """One purpose rule everywhere: feeds and the SDK require it, so does send (no silent direct-care)."""
    assert_one_line_error(psvn(*SEND, *net.d, "examples/referral.json"), "--purpose", "required")


def test_send_as_a_member_the_devnet_does_not_have(net: Net) -> None:
    assert_one_line_error(psvn("send", *net.d, "--as", "ods:RXX", "--to", "ods:RYR", "--type",
                               "fhir.r4.ServiceRequest", "--purpose", "direct-care", "examples/referral.json"),
                          "--as", "ods:RXX")


def test_send_with_no_devnet_there(tmp_path: Path) -> None:
    assert_one_line_error(psvn(*SEND, "--devnet", str(tmp_path / "nowhere"), "--purpose", "direct-care",
                               "examples/referral.json"), "--devnet", "nowhere")


# --- ports ----------------------------------------------------------------------------------


def test_devnet_up_on_ports_in_use_names_the_port_and_starts_nothing(net: Net, tmp_path: Path) -> None:
    other = tmp_path / "other"
    t0 = time.monotonic()
    res = psvn("devnet", "--dir", str(other), "up", "--detach", "--base-port", str(net.base))
    assert time.monotonic() - t0 < 30  # it used to hang on the other devnet's TLS, then a traceback
    assert_one_line_error(res, f"port {net.base}", "--base-port", "in use")
    state = other / "state.json"
    assert not state.exists() or not any(
        procs.alive(p) for p in [json.loads(state.read_text()).get("nats_pid") or 0] if p)
    assert psvn("devnet", "--dir", str(net.dir), "status").returncode == 0  # the first devnet is untouched


def test_devnet_up_base_port_out_of_range(tmp_path: Path) -> None:
    assert_one_line_error(psvn("devnet", "--dir", str(tmp_path / "d"), "up", "--detach", "--base-port", "65530"),
                          "--base-port", "65530")


def test_devnet_base_port_from_the_environment_that_is_not_a_number(tmp_path: Path) -> None:
    assert_one_line_error(psvn("devnet", "--dir", str(tmp_path / "d"), "up", "--detach",
                               env={"PSVN_BASE_PORT": "fourteen"}), "--base-port", "fourteen")


def test_console_run_defaults_to_the_devnets_console_port_and_names_it(net: Net) -> None:
    """By default `console run` takes the devnet's own console port (base + 8), which its
    running console holds: the error names the port and where the console already is."""
    console = net.base + 8
    line = assert_one_line_error(psvn("console", "run", *net.d, timeout=30), f"port {console}", "--port")
    assert f"http://127.0.0.1:{console}/" in line


def test_console_run_on_a_port_in_use(net: Net) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_one_line_error(psvn("console", "run", *net.d, "--port", str(port), timeout=30),
                              f"port {port}", "--port")


def test_gateway_listen_port_in_use(net: Net) -> None:
    assert_one_line_error(psvn("gateway", "run", "--config", str(net.dir / "gateways" / "ods_RYR.toml")),
                          "gateway.listen_port", str(net.base + 11))


# --- gateways: files and membership ---------------------------------------------------------


@pytest.mark.parametrize("setting", ["tls.cert", "tls.key", "nats.cert", "nats.creds", "keys.signing",
                                     "keys.policy_authority"])
def test_gateway_missing_certificate_or_key_file_is_named(net: Net, tmp_path: Path, setting: str) -> None:
    section, key = setting.split(".")
    cfg = gateway_config(net, tmp_path)
    loaded = gwconfig.load(cfg)
    sect = getattr(loaded, section)
    missing = str(Path(getattr(sect, key)).with_name("typo-" + Path(getattr(sect, key)).name))
    cfg.write_text(config.dump(msgspec.structs.replace(loaded, **{section: msgspec.structs.replace(
        sect, **{key: missing})})))
    assert_one_line_error(psvn("gateway", "run", "--config", str(cfg)), setting, missing)


def test_gateway_config_file_misspelt(tmp_path: Path) -> None:
    assert_one_line_error(psvn("gateway", "run", "--config", str(tmp_path / "gateway.tml")), "gateway.tml")


def test_gateway_for_an_organisation_not_registered(net: Net, tmp_path: Path) -> None:
    """Started with a member's keys but an organisation the registry does not know: it says so
    (the organisation and the setting), promptly, instead of `nats: timeout`."""
    cfg = gateway_config(net, tmp_path, org='"ods:RXH"')
    t0 = time.monotonic()
    res = psvn("gateway", "run", "--config", str(cfg), timeout=60)
    assert time.monotonic() - t0 < 45
    err = res.stderr
    assert res.returncode != 0 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error ")]  # JSON log lines may precede it
    assert len(errors) == 1, err
    assert "ods:RXH" in errors[0] and "gateway.org" in errors[0], errors[0]
    assert "timeout" not in errors[0].lower()


def test_gateway_for_an_organisation_issued_certificates_but_never_provisioned(net: Net, tmp_path: Path) -> None:
    """A newcomer issues a gateway's certificates for a new organisation and starts it: its
    backbone credentials do not exist, because it was never registered and provisioned."""
    pki = net.dir / "pki"
    issued = psvn("certs", "issue", "gateway", "--org", "ods:RXJ", "--dir", str(pki))
    assert issued.returncode == 0, issued.stderr
    text = gateway_config(net, tmp_path, org='"ods:RXJ"').read_text().replace("ods_RYR", "ods_RXJ")
    cfg = tmp_path / "rxj.toml"
    cfg.write_text(text)
    line = assert_one_line_error(psvn("gateway", "run", "--config", str(cfg)), "nats.creds", "ods:RXJ")
    assert "registered" in line


# --- offline commands -----------------------------------------------------------------------


def test_validate_misspelt_file() -> None:
    assert_one_line_error(psvn("validate", "--type", "hl7v2.ADT_A01", "examples/adt_a1.hl7"), "examples/adt_a1.hl7")


def test_policy_lint_misspelt_folder() -> None:
    assert_one_line_error(psvn("policy", "lint", "polices/default"), "polices/default")


def test_policy_explain_on_a_devnet_that_is_not_there(tmp_path: Path) -> None:
    assert_one_line_error(psvn("policy", "explain", "--devnet", str(tmp_path / "nowhere"), "--from", "ods:RYR",
                               "--to", "gss:E06000043", "--type", "fhir.r4.ServiceRequest", "--purpose",
                               "direct-care"), "--devnet", "nowhere")


def test_policy_explain_offline_without_member_types_points_at_devnet() -> None:
    assert_one_line_error(psvn("policy", "explain", "--from", "gss:E06000043", "--to", "ods:RYR", "--type",
                               "fhir.r4.ServiceRequest", "--purpose", "direct-care"), "--from-type", "--devnet")


def test_console_token_without_a_devnet(tmp_path: Path) -> None:
    assert_one_line_error(psvn("console", "token", "--devnet", str(tmp_path / "nowhere"), "--user", "alice",
                               "--role", "approver"), "--devnet", "nowhere")


def test_a_misspelt_flag_is_one_line_naming_it() -> None:
    """Named by the command it was given to, pointing at that command's help (which lists it)."""
    assert_one_line_error(psvn("send", "--as", "gss:E06000043", "--too", "ods:RYR", "examples/referral.json"),
                          "--too", "`psvn send --help`")
    assert_one_line_error(psvn("inbox", "list", "--as", "ods:RYR", "--state", "x"), "--state",
                          "`psvn inbox list --help`")


def test_an_invalid_choice_names_the_flag() -> None:
    assert_one_line_error(psvn("send", "--as", "gss:E06000043", "--classification", "SECRET", "x.json"),
                          "--classification", "SECRET")


def test_send_when_the_members_gateway_is_not_running(net: Net) -> None:
    """Last in this module: it stops the GP practice's gateway (a process the devnet fixture started)."""
    gp = json.loads((net.dir / "state.json").read_text())["gateways"]["ods:G81001"]
    procs.stop(gp["pid"])
    line = assert_one_line_error(psvn("send", *net.d, "--as", "ods:G81001", "--to", "ods:RYR", "--type",
                                      "fhir.r4.ServiceRequest", "--purpose", "direct-care", "examples/referral.json"),
                                 "ods:G81001", gp["url"].split("//")[1], "devnet status")
    assert "internal" not in line


def test_a_damaged_devnet_state_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    assert_one_line_error(psvn(*SEND, "--devnet", str(tmp_path), "--purpose", "direct-care",
                               "examples/referral.json"), str(tmp_path / "state.json"), "devnet-state")


def test_make_devnet_port_passes_the_base_port() -> None:
    import shutil

    assert shutil.which("make") is not None, "make is one of the README's two set-up commands"
    dry = subprocess.run(["make", "-n", "devnet", "PORT=23456"], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert "psvn devnet up --detach --base-port 23456" in dry.stdout, dry.stdout + dry.stderr
