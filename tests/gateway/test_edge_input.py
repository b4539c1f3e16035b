"""Hostile input at the gateway's HTTP edge: every refusal is a 4xx problem naming field and rule.

Covers the adversarial review's findings: a non-ASCII ``Idempotency-Key`` header, a feed topic
ending in a newline (``%0A``) and an address with a trailing newline (``$`` in a pattern matches
before a final ``\\n``; every identifier pattern must match the whole string)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Network, read_mostly
from tests.gateway.test_service import audit_records, call, referral

AIR = json.loads((Path(__file__).resolve().parents[2] / "examples" / "air-quality.json").read_text())
EVENT = {"type": "cloudevents.air-quality.reading", "purpose": "environmental-monitoring", "payload": AIR}


async def post_raw(net: Network, org: str, path: str, body: bytes,
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    conn = aiohttp.TCPConnector(ssl=net.client_ssl(org))
    async with aiohttp.ClientSession(connector=conn) as s:
        async with s.post(net.url(org) + path, data=body, headers={"Content-Type": "application/json",
                                                                    **(headers or {})}) as r:
            return r.status, await r.json(content_type=None)


async def send_with_raw_header(net: Network, org: str, path: str, body: bytes, name: bytes,
                               value: bytes) -> tuple[int, dict[str, Any]]:
    """One request with a header value as raw bytes (UTF-8 here), which aiohttp's client will
    not send itself, over a real mutual-TLS connection."""
    import asyncio
    from urllib.parse import urlsplit

    port = urlsplit(net.url(org)).port
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=net.client_ssl(org),
                                                   server_hostname="localhost")
    try:
        writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/json\r\nConnection: close\r\n"
                     + name + b": " + value + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(payload)


@read_mostly
async def test_non_ascii_idempotency_key_header_is_a_problem_with_an_id_and_an_audit(shared_network: Network) -> None:
    code, problem = await send_with_raw_header(shared_network, shared_network.COUNCIL, "/v1/messages",
                                               json.dumps(referral()).encode(), b"Idempotency-Key",
                                               "clé-1".encode("latin-1"))
    assert code in (400, 422), problem
    assert problem["field"] == "Idempotency-Key" and problem["rule"] == "id-format"
    assert problem["message_id"]
    [record] = await audit_records(shared_network, {problem["message_id"]}, at_least=1)
    assert record["event"] == "rejected" and record["field"] == "Idempotency-Key"


@read_mostly
async def test_feed_idempotency_key_header_is_checked_too(shared_network: Network) -> None:
    body = EVENT
    code, problem = await send_with_raw_header(shared_network, shared_network.COUNCIL, "/v1/feeds/sensors.brighton.air",
                                               json.dumps(body).encode(), b"Idempotency-Key", b"key-\xff\xfe")
    assert code in (400, 422) and problem["field"] == "Idempotency-Key" and problem["message_id"], problem


@read_mostly
async def test_feed_topic_ending_in_a_newline_is_refused(shared_network: Network) -> None:
    body, net = EVENT, shared_network
    code, problem = await call(net, net.COUNCIL, "POST", "/v1/feeds/sensors.brighton.air%0A", body)
    assert code == 422 and (problem["field"], problem["rule"]) == ("topic", "topic-format"), problem
    code, problem = await call(net, net.COUNCIL, "PUT", "/v1/subscriptions/sensors.brighton.air%0A",
                               {"purpose": "environmental-monitoring"})
    assert code == 422 and (problem["field"], problem["rule"]) == ("topic", "topic-format"), problem


async def test_address_with_a_trailing_newline_is_refused_not_delivered(network: Network) -> None:
    code, problem = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(to="ods:RYR\n"))
    assert code == 422 and (problem["field"], problem["rule"]) == ("to", "address-format"), problem
    assert problem["message_id"]
    code, inbox = await call(network, network.TRUST, "GET", "/v1/inbox")
    assert code == 200 and inbox["messages"] == []
