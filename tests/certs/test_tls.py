"""certs.tls over real TLS on loopback: an asyncio server with ``server_context`` and real clients.

A refused handshake is proved three ways: the server's handler never runs, the client gets no
data, and the server's own OpenSSL error (asyncio logs it in debug mode) names the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from psvn.certs import revocation, tls
from psvn.certs.ca import CA, init_ca, issue_gateway, issue_server, issue_system, load_ca, load_cert, write_crl

ORG = "gss:E06000043"
SYSTEM_URI = "urn:psvn:system:gss:E06000043/case-mgmt"


@dataclass(frozen=True)
class Pki:
    ca: CA
    server: tuple[Path, Path]
    system: tuple[Path, Path]
    revoked: tuple[Path, Path]
    foreign: tuple[Path, Path]
    other_ca: CA


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("tls")
    ca = init_ca(root / "ca")
    other_ca = init_ca(root / "other-ca", common_name="not the network")
    revoked = issue_system(ca, ORG, "old-laptop", root / "systems")
    revocation.revoke(ca, load_cert(revoked[0]))
    gateway = issue_gateway(ca, ORG, root / "gw")
    return Pki(
        ca=ca,
        server=(gateway.https_cert, gateway.https_key),
        system=issue_system(ca, ORG, "case-mgmt", root / "systems"),
        revoked=revoked,
        foreign=issue_system(other_ca, ORG, "case-mgmt", root / "foreign"),
        other_ca=other_ca,
    )


@dataclass
class Outcome:
    reply: dict[str, object] | None = None
    client_error: BaseException | None = None
    server_errors: list[str] = field(default_factory=list)
    handled: int = 0

    @property
    def accepted(self) -> bool:
        return self.reply is not None


class _ServerErrors(logging.Handler):
    """asyncio (debug mode) logs a failed server handshake with the OpenSSL error attached."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and isinstance(record.exc_info[1], ssl.SSLError):
            self.errors.append(str(record.exc_info[1]))


async def exchange(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, *, server_hostname: str = "localhost"
) -> Outcome:
    """One connection to a real asyncio TLS server on 127.0.0.1; the handler replies with what
    it saw of the peer."""
    outcome = Outcome()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        outcome.handled += 1
        sslobj = writer.get_extra_info("ssl_object")
        reply = {
            "uris": tls.peer_uris(writer.get_extra_info("peercert")),
            "version": sslobj.version(),
            "cipher": sslobj.cipher()[0],
        }
        writer.write(json.dumps(reply).encode())
        await writer.drain()
        writer.close()

    loop = asyncio.get_running_loop()
    was_debug = loop.get_debug()
    loop.set_debug(True)
    capture = _ServerErrors()
    log = logging.getLogger("asyncio")
    old_level = log.level
    log.addHandler(capture)
    log.setLevel(logging.DEBUG)
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname=server_hostname
            ),
            10,
        )
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        if data:
            outcome.reply = json.loads(data)
    except (ssl.SSLError, ConnectionError) as exc:
        outcome.client_error = exc
    finally:
        server.close()
        await server.wait_closed()
        log.removeHandler(capture)
        log.setLevel(old_level)
        loop.set_debug(was_debug)
    outcome.server_errors = capture.errors
    return outcome


def assert_refused(outcome: Outcome, server_reason: str) -> None:
    assert not outcome.accepted
    assert outcome.handled == 0, "the application must never see a refused connection"
    assert any(server_reason in e for e in outcome.server_errors), outcome.server_errors


def server(net: Pki, **kw: object) -> ssl.SSLContext:
    return tls.server_context(*net.server, net.ca.cert_path, **kw)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------- mutual TLS


async def test_mutual_tls_shows_the_system_uri(net: Pki) -> None:
    out = await exchange(server(net), tls.client_context(net.ca.cert_path, *net.system))
    assert out.accepted and out.handled == 1
    assert out.reply is not None
    assert out.reply["uris"] == [SYSTEM_URI]
    assert out.reply["version"] == "TLSv1.3"
    assert out.server_errors == []


async def test_mutual_tls_with_crl_accepts_a_valid_cert(net: Pki) -> None:
    out = await exchange(
        server(net, crl=net.ca.crl_path), tls.client_context(net.ca.cert_path, *net.system)
    )
    assert out.reply is not None and out.reply["uris"] == [SYSTEM_URI]


async def test_tls12_negotiates_only_ecdhe_aead(net: Pki) -> None:
    client = tls.client_context(net.ca.cert_path, *net.system)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    out = await exchange(server(net), client)
    assert out.reply is not None
    assert out.reply["version"] == "TLSv1.2"
    cipher = str(out.reply["cipher"])
    assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher), cipher
    assert out.reply["uris"] == [SYSTEM_URI]


# ----------------------------------------------------------------------------------- refusals


async def test_no_client_cert_is_refused(net: Pki) -> None:
    out = await exchange(server(net), tls.client_context(net.ca.cert_path))
    assert_refused(out, "PEER_DID_NOT_RETURN_A_CERTIFICATE")


async def test_no_client_cert_is_refused_under_tls12(net: Pki) -> None:
    client = tls.client_context(net.ca.cert_path)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    assert_refused(await exchange(server(net), client), "PEER_DID_NOT_RETURN_A_CERTIFICATE")


async def test_cert_from_another_ca_is_refused(net: Pki) -> None:
    out = await exchange(server(net), tls.client_context(net.ca.cert_path, *net.foreign))
    assert_refused(out, "unable to get local issuer certificate")


async def test_revoked_cert_is_refused_when_crl_given(net: Pki) -> None:
    client = tls.client_context(net.ca.cert_path, *net.revoked)
    # Control: without the CRL the very same certificate gets in, so the CRL is what refuses it.
    allowed = await exchange(server(net), client)
    assert allowed.reply is not None
    assert allowed.reply["uris"] == ["urn:psvn:system:gss:E06000043/old-laptop"]
    refused = await exchange(server(net, crl=net.ca.crl_path), client)
    assert_refused(refused, "certificate revoked")


async def test_revocation_after_context_creation_needs_a_new_context(
    net: Pki, tmp_path: Path
) -> None:
    """The CRL is read when the context is built: reloading means building a new context."""
    crt, key = issue_system(net.ca, ORG, "temp", tmp_path)
    ca_dir = tmp_path / "ca-copy"
    # A private copy of the CA so revoking here does not change the shared CRL.
    ca_dir.mkdir()
    for name in ("ca.crt", "ca.key", "ca.crl"):
        (ca_dir / name).write_bytes((net.ca.directory / name).read_bytes())
    ca = load_ca(ca_dir)
    before = tls.server_context(*net.server, ca.cert_path, crl=ca.crl_path)
    revocation.revoke(ca, load_cert(crt))
    after = tls.server_context(*net.server, ca.cert_path, crl=ca.crl_path)
    client = tls.client_context(ca.cert_path, crt, key)
    assert (await exchange(before, client)).accepted
    assert_refused(await exchange(after, client), "certificate revoked")


async def test_crl_signed_by_another_ca_fails_closed(net: Pki) -> None:
    """A CRL the CA did not sign cannot vouch for anyone: every client is refused."""
    ctx = tls.server_context(*net.server, net.ca.cert_path, crl=net.other_ca.crl_path)
    out = await exchange(ctx, tls.client_context(net.ca.cert_path, *net.system))
    assert_refused(out, "unable to get certificate CRL")


async def test_expired_crl_fails_closed(net: Pki, tmp_path: Path) -> None:
    """A CRL past its next-update time refuses everyone, which is why it is re-signed weekly."""
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    for name in ("ca.crt", "ca.key"):
        (ca_dir / name).write_bytes((net.ca.directory / name).read_bytes())
    ca = load_ca(ca_dir)
    write_crl(ca, [], days=0)  # next update = now: stale from the next second on
    ctx = tls.server_context(*net.server, ca.cert_path, crl=ca.crl_path)
    client = tls.client_context(ca.cert_path, *net.system)
    assert_refused(await exchange(ctx, client), "CRL has expired")
    revocation.refresh_crl(ca)
    ctx = tls.server_context(*net.server, ca.cert_path, crl=ca.crl_path)
    assert (await exchange(ctx, client)).accepted


def test_missing_crl_file_is_an_error(net: Pki, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        server(net, crl=tmp_path / "nope.crl")


async def test_optional_client_cert(net: Pki) -> None:
    ctx = server(net, require_client_cert=False)
    anonymous = await exchange(ctx, tls.client_context(net.ca.cert_path))
    assert anonymous.reply is not None and anonymous.reply["uris"] == []
    named = await exchange(ctx, tls.client_context(net.ca.cert_path, *net.system))
    assert named.reply is not None and named.reply["uris"] == [SYSTEM_URI]
    # a presented certificate must still chain to the network CA
    out = await exchange(ctx, tls.client_context(net.ca.cert_path, *net.foreign))
    assert_refused(out, "unable to get local issuer certificate")


async def test_tls11_client_is_refused(net: Pki) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1/TLSv1_1 enum members
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(net.ca.cert_path)
        old.load_cert_chain(*net.system)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
        permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        permissive.load_cert_chain(*net.server)
        permissive.minimum_version = ssl.TLSVersion.TLSv1
        permissive.set_ciphers("ALL:@SECLEVEL=0")
    # Control: this OpenSSL can really speak TLS 1.1, so the refusal below is our server's doing.
    control = await exchange(permissive, old)
    assert control.reply is not None and control.reply["version"] == "TLSv1.1"
    assert_refused(await exchange(server(net), old), "UNSUPPORTED_PROTOCOL")
    assert server(net).minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls.client_context(net.ca.cert_path).minimum_version == ssl.TLSVersion.TLSv1_2


async def test_tls12_cbc_cipher_is_refused(net: Pki) -> None:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(net.ca.cert_path)
    client.load_cert_chain(*net.system)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("ECDHE-ECDSA-AES128-SHA256")  # forward secret, but CBC + HMAC
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # Python's defaults accept it: the control
    lax.load_cert_chain(*net.server)
    control = await exchange(lax, client)
    assert control.reply is not None and control.reply["cipher"] == "ECDHE-ECDSA-AES128-SHA256"
    assert_refused(await exchange(server(net), client), "NO_SHARED_CIPHER")


# -------------------------------------------------------------------------- the client's side


async def test_client_checks_the_server_host_name(net: Pki) -> None:
    out = await exchange(
        server(net), tls.client_context(net.ca.cert_path, *net.system),
        server_hostname="gateway.example.org",
    )
    assert not out.accepted and out.handled == 0
    assert isinstance(out.client_error, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in str(out.client_error)


async def test_client_refuses_a_server_from_another_ca(net: Pki) -> None:
    out = await exchange(server(net), tls.client_context(net.other_ca.cert_path, *net.system))
    assert not out.accepted and out.handled == 0
    assert isinstance(out.client_error, ssl.SSLCertVerificationError)


def test_client_key_without_cert_is_an_error(net: Pki) -> None:
    with pytest.raises(ValueError):
        tls.client_context(net.ca.cert_path, None, net.system[1])


# ------------------------------------------------------------------------------- peer_uris


def test_peer_uris_from_getpeercert_dict() -> None:
    peercert = {
        "subject": ((("commonName", "gss:E06000043/case-mgmt"),),),
        "subjectAltName": (("DNS", "localhost"), ("URI", SYSTEM_URI), ("URI", "urn:x")),
    }
    assert tls.peer_uris(peercert) == [SYSTEM_URI, "urn:x"]
    assert tls.peer_uris({}) == []
    assert tls.peer_uris(None) == []
    assert tls.peer_uris({"subject": ()}) == []


# ---------------------------------------------------------------- interop with real nats-server


@pytest.fixture(scope="module")
def nats_server(net: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real nats-server (Go TLS) with verify_and_map, one user: the gateway's org URI."""
    root = tmp_path_factory.mktemp("nats")
    crt, key = issue_server(net.ca, "nats-1", root)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = root / "nats.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'tls {{\n  cert_file: "{crt}"\n  key_file: "{key}"\n'
        f'  ca_file: "{net.ca.cert_path}"\n  verify_and_map: true\n  timeout: 5\n}}\n'
        'authorization {\n  users = [ { user: "urn:psvn:org:gss:E06000043" } ]\n}\n'
    )
    binary = Path(sys.executable).with_name("nats-server")
    with (root / "nats.log").open("wb") as log:
        proc = subprocess.Popen([str(binary), "-c", str(conf)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((root / "nats.log").read_text()) from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def nats_connect(port: int, ctx: ssl.SSLContext) -> tuple[NATS | None, list[Exception]]:
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = NATS()
    try:
        await nc.connect(
            f"tls://127.0.0.1:{port}", tls=ctx, tls_hostname="localhost", error_cb=on_error,
            allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5,
        )
    except Exception as exc:  # nats-py raises several unrelated types here
        errors.append(exc)
        return None, errors
    return nc, errors


async def test_nats_server_maps_the_gateway_cert_to_its_org_user(
    net: Pki, nats_server: int, tmp_path: Path
) -> None:
    gw = issue_gateway(net.ca, ORG, tmp_path)
    nc, errors = await nats_connect(
        nats_server, tls.client_context(net.ca.cert_path, gw.nats_cert, gw.nats_key)
    )
    assert nc is not None, errors
    try:
        sub = await nc.subscribe("psvn.test")
        await nc.publish("psvn.test", b"hello")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"hello"
    finally:
        await nc.close()
    assert errors == []


async def test_nats_server_refuses_an_unmapped_identity(net: Pki, nats_server: int) -> None:
    # a valid network certificate, but its URI names a system, not a gateway user
    nc, errors = await nats_connect(
        nats_server, tls.client_context(net.ca.cert_path, *net.system)
    )
    assert nc is None or not nc.is_connected
    assert any("authorization violation" in str(e).lower() for e in errors), errors


async def test_nats_server_refuses_another_ca(net: Pki, nats_server: int) -> None:
    nc, errors = await nats_connect(
        nats_server, tls.client_context(net.ca.cert_path, *net.foreign)
    )
    assert nc is None or not nc.is_connected
    assert errors
