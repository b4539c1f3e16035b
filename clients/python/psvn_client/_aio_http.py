"""The asyncio client's HTTP: aiohttp underneath, httpx's response and error types on top.

Why aiohttp here when the sync client uses httpx: measured against a devnet gateway, one
``send`` through ``httpx.AsyncClient`` cost the calling process 2.0-2.9 ms of CPU (its anyio TLS
stream, cancel scopes, connection-pool locks), and through aiohttp 0.8-0.9 ms. In an
integration engine sending one message at a time, that is a millisecond or two of latency per
message, and a core's worth of CPU at a few hundred messages a second.

Why httpx's types on top: everything that turns an answer into a result or an error
(:mod:`psvn_client._core`) is shared with the sync client, and it reads ``httpx.Response`` and
raises from ``httpx.TransportError``. This module hands it exactly those: a response built from
the bytes aiohttp read, and each aiohttp failure as the httpx error that means the same
(cannot connect, timed out before or after sending, connection lost), with the original kept
as its cause (a TLS failure is found by walking that chain).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import aiohttp
import httpx
from yarl import URL

from psvn_client._core import JSON_HEADERS, Call

ResponseHook = Callable[[httpx.Response], Awaitable[None]]


class AioHttp:
    """One pooled aiohttp session (made on first use, inside the caller's event loop)."""

    library = f"aiohttp/{aiohttp.__version__}"  # for the User-Agent

    def __init__(self, url: str, *, ssl_context: ssl.SSLContext, timeout: float, max_connections: int,
                 headers: dict[str, str]) -> None:
        self.url = url
        self._ssl = ssl_context
        # ``timeout`` bounds connecting and each wait for data, as httpx's did; the exchange as a
        # whole (pool wait, connect, upload, answer) gets twice that
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
        self._exchange_timeout = 2 * timeout
        self._limit = max_connections
        self._headers = headers
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        #: awaited with each response before it is parsed (tests check the traffic against the
        #: API document); a request is attached to the response only when there is one
        self.on_response: list[ResponseHook] = []
        self.trace_configs: list[aiohttp.TraceConfig] = []  # for tests: e.g. count connections

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the client has been closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._limit),
                timeout=self._timeout, headers=self._headers, cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,  # httpx.Response decodes per Content-Encoding: once, there
                trace_configs=self.trace_configs or None)
        return self._session

    async def request(self, call: Call[Any]) -> httpx.Response:
        """Send ``call``; its answer (whatever the status), or an ``httpx.TransportError``."""
        session = self._open()
        body = call.body()
        url = URL(self.url + call.path, encoded=True)  # the path is quoted already (ids, cursors)
        if call.params:
            url = url.update_query({k: str(v) for k, v in call.params.items()})
        started = time.perf_counter()
        try:
            # aiohttp bounds the connect and each wait for data, not the writing of the request
            # (nor the read of an answer that came before the upload was taken): the whole
            # exchange gets one bound too, so a peer that stops reading never holds the caller
            async with asyncio.timeout(self._exchange_timeout):
                async with session.request(call.method, url, data=body, allow_redirects=False,
                                           headers=JSON_HEADERS if body is not None else None) as resp:
                    content = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise as_httpx_error(exc) from exc
        status, raw_headers = resp.status, resp.raw_headers
        response = httpx.Response(status, headers=list(raw_headers), content=content)
        response.elapsed = timedelta(seconds=time.perf_counter() - started)
        if self.on_response:
            response.request = httpx.Request(call.method, str(url), content=body or b"",
                                             headers=JSON_HEADERS if body is not None else None)
            for hook in self.on_response:
                await hook(response)
        return response


def as_httpx_error(exc: BaseException) -> httpx.TransportError:
    """The httpx error that means what ``exc`` (from aiohttp) means; ``exc`` becomes its cause."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # before the request went out
        return httpx.ConnectTimeout(text)
    if isinstance(exc, TimeoutError):  # ServerTimeoutError, SocketTimeoutError: after it
        return httpx.ReadTimeout(text)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, unreachable, TLS handshake failed
        return httpx.ConnectError(text)
    if isinstance(exc, aiohttp.ClientConnectionResetError):  # the connection closed while writing
        return httpx.WriteError(text)
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):  # lost while reading
        return httpx.ReadError(text)  # (ServerDisconnectedError, ClientOSError, "Connection closed", ...)
    if isinstance(exc, aiohttp.ClientResponseError):  # a malformed answer
        return httpx.RemoteProtocolError(text)
    return httpx.TransportError(text)
