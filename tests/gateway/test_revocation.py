"""Revoking a system certificate refuses it on connections that are already open.

The handshake checks the CRL only when a connection opens; a keep-alive connection made before
the revocation must be refused (and closed) at its next request once the gateway has reloaded
the CRL. One real TLS connection to a real gateway, before and after ``revocation.revoke``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec

from psvn.certs import revocation
from psvn.certs.ca import load_ca, load_cert
from psvn.devnet import MemberSpec
from psvn.gateway.config import GatewayConfig
from tests.conftest import Network, start_network, stop_network


async def request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  path: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One HTTP/1.1 keep-alive request on an open connection; (status, headers, JSON body)."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n".encode())
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    status_line, *lines = head.strip().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split(" ", 2)[1]), headers, json.loads(body)


async def test_a_keep_alive_connection_is_refused_once_its_certificate_is_revoked(tmp_path: Path) -> None:
    def fast_crl_reload(m: MemberSpec, cfg: GatewayConfig) -> GatewayConfig:
        return msgspec.structs.replace(cfg, tls=msgspec.structs.replace(cfg.tls, crl_reload_seconds=0.05))

    net: Network = await start_network(tmp_path, configure=fast_crl_reload)
    try:
        org = net.COUNCIL
        port = net.gateways[org].port
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=net.client_ssl(org),
                                                       server_hostname="localhost")
        try:
            status, headers, _ = await request(reader, writer, "/v1/catalogue")
            assert status == 200 and headers.get("connection", "").lower() != "close"

            cert_path, _ = net.system_cert(org)
            revocation.revoke(load_ca(net.layout.pki), load_cert(cert_path))

            deadline = asyncio.get_running_loop().time() + 20
            while True:  # the same connection, until the gateway has reloaded the CRL
                status, headers, body = await request(reader, writer, "/v1/catalogue")
                if status != 200:
                    break
                assert asyncio.get_running_loop().time() < deadline, "still served after the revocation"
                await asyncio.sleep(0.02)
            assert status == 401 and body["rule"] == "certificate-revoked" and body["code"] == "certificate-invalid"
            assert headers.get("connection", "").lower() == "close"
            assert await asyncio.wait_for(reader.read(), timeout=10) == b""  # and the gateway closed it
        finally:
            writer.close()

        # the trust's systems, not revoked, are still served
        reader, writer = await asyncio.open_connection("127.0.0.1", net.gateways[net.TRUST].port,
                                                       ssl=net.client_ssl(net.TRUST), server_hostname="localhost")
        try:
            assert (await request(reader, writer, "/v1/catalogue"))[0] == 200
        finally:
            writer.close()
    finally:
        await stop_network(net)
