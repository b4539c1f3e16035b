"""The async client's HTTP (aiohttp under httpx's types): each way a request can fail on a real
socket comes out as the same SDK error the sync client raises, retried only when that is safe."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import httpx
import psvn_client
import pytest
from psvn_client import AsyncClient
from psvn_client._aio_http import as_httpx_error


@contextlib.asynccontextmanager
async def loopback(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]) -> AsyncIterator[
        tuple[str, list[bytes]]]:
    """A plain-HTTP listener on 127.0.0.1 that records each request's first line and then does
    what ``handle`` does (never answer, hang up, ...)."""
    seen: list[bytes] = []
    held: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head.split(b"\r\n", 1)[0])
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            if await handle(reader, writer):  # type: ignore[misc]
                return

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


def answering(status: bytes, headers: bytes, body: bytes) -> Callable[
        [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]:
    """A ``loopback`` handler that answers every request with one fixed response."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 " + status + b"\r\n" + headers + b"\r\ncontent-length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        return False
    return answer


async def test_an_answer_that_never_comes_is_a_timeout_and_a_safe_call_is_tried_again() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.Event().wait()  # never answers (the test's teardown closes it)
        return True

    async with loopback(silent) as (url, seen), AsyncClient(url, timeout=1.0, retries=1, backoff=0.01) as c:
        with pytest.raises(psvn_client.RequestTimeout) as info:
            await c.health()  # a GET: safe to repeat
        assert info.value.code == "timeout" and "no answer in time" in info.value.detail
        assert seen == [b"GET /healthz HTTP/1.1"] * 2


async def test_a_connection_dropped_mid_request_is_connection_lost() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.close()
        return True

    async with loopback(hang_up) as (url, seen), AsyncClient(url, retries=2, backoff=0.01) as c:
        with pytest.raises(psvn_client.ConnectionError) as info:
            await c.ack("m-1")
    assert info.value.code == "connection-failed" and "connection lost" in info.value.detail
    # an ack is safe to repeat: tried three times (a GET would be tried twice as often: aiohttp
    # repeats an idempotent method once by itself when the server closes the connection under it)
    assert info.value.status is None and seen == [b"POST /v1/inbox/m-1/ack HTTP/1.1"] * 3


async def test_the_answer_read_is_the_answer_parsed() -> None:
    """Status, headers and body as sent, through the same parsing as the sync client: a
    problem document becomes its error; ids are quoted on the wire as the sync client quotes them."""
    problem = (b'{"type":"about:blank","title":"Not Found","status":404,"code":"not-found",'
               b'"detail":"no message m-1","message_id":"m-1"}')

    not_found = answering(b"404 Not Found", b"content-type: application/problem+json", problem)
    async with loopback(not_found) as (url, seen), AsyncClient(url) as c:
        with pytest.raises(psvn_client.NotFound) as info:
            await c.status("m-1")
        with pytest.raises(psvn_client.NotFound):
            await c.status("a/b c")
    assert info.value.message_id == "m-1" and info.value.status == 404
    assert seen == [b"GET /v1/messages/m-1 HTTP/1.1", b"GET /v1/messages/a%2Fb%20c HTTP/1.1"]


async def test_a_compressed_answer_is_decoded_once() -> None:
    """A proxy in front of the gateway may compress what it passes on."""
    body = gzip.compress(json.dumps({"status": "ok", "org": "ods:RYR", "backbone": "connected",
                                     "policy_version": 3}).encode())

    gzipped = answering(b"200 OK", b"content-type: application/json\r\ncontent-encoding: gzip", body)
    async with loopback(gzipped) as (url, _), AsyncClient(url) as c:
        health = await c.health()
    assert (health.ok, health.org, health.policy_version) == (True, "ods:RYR", 3)


async def test_a_gateway_that_stops_reading_a_large_request_is_a_timeout() -> None:
    """aiohttp bounds waits for data, not writes: the client bounds the write itself."""
    held: list[asyncio.StreamWriter] = []

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # reads nothing: the request's bytes fill the socket buffers

    server = await asyncio.start_server(deaf, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:  # 32 MB: more than loopback's send and receive buffers hold together
        async with AsyncClient(f"http://127.0.0.1:{port}", timeout=0.5, retries=0) as c:
            with pytest.raises(psvn_client.RequestTimeout) as info:
                await asyncio.wait_for(c.send("ods:RYR", "t", {"note": "x" * 32_000_000}, purpose="p"), 30)
        assert info.value.code == "timeout"
    finally:
        for w in held:
            w.close()
        server.close()


def test_each_aiohttp_failure_maps_to_the_httpx_error_that_means_the_same() -> None:
    key = aiohttp.client_reqrep.ConnectionKey("h", 1, True, True, None, None, None)
    refused = aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused"))
    cases: list[tuple[BaseException, type[httpx.TransportError]]] = [
        (aiohttp.ConnectionTimeoutError("connect"), httpx.ConnectTimeout),
        (aiohttp.SocketTimeoutError("read"), httpx.ReadTimeout),
        (TimeoutError(), httpx.ReadTimeout),
        (refused, httpx.ConnectError),
        (aiohttp.ClientConnectorCertificateError(key, ssl.SSLCertVerificationError("bad")), httpx.ConnectError),
        (aiohttp.ServerDisconnectedError(), httpx.ReadError),
        (aiohttp.ClientOSError(104, "reset"), httpx.ReadError),
        (aiohttp.ClientPayloadError("short"), httpx.ReadError),
        (aiohttp.ClientConnectionResetError("Cannot write to closing transport"), httpx.WriteError),
        (aiohttp.ClientConnectionError("Connection closed"), httpx.ReadError),
        (aiohttp.InvalidURL("x"), httpx.TransportError),
    ]
    for exc, wanted in cases:
        got = as_httpx_error(exc)
        assert type(got) is wanted, (exc, got)
