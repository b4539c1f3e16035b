"""Push notifications to the organisation's local system when a message is delivered.

The webhook carries metadata only (id, sender, type, mailbox, size): the system then fetches the
payload over mutual TLS from ``GET /v1/inbox/{id}``, so a misdirected webhook leaks nothing.
Each POST is signed: ``Psvn-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``
(the receiver recomputes it and compares in constant time, and rejects an old ``t``). Failures are
retried with backoff; the message stays in the mailbox whatever happens to the webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import structlog

from psvn.errors import Code, PsvnError

log = structlog.get_logger("psvn.gateway.webhook")
SIGNATURE_HEADER = "Psvn-Signature"


def sign(secret: bytes, body: bytes, *, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, *, tolerance: int = 300, now: int | None = None) -> bool:
    """For receivers (and tests): constant-time check of the signature and its freshness."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((int(time.time()) if now is None else now) - t) > tolerance:
        return False
    expected = sign(secret, body, timestamp=t).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def load_secret(path: str) -> bytes:
    p = Path(path)
    if p.stat().st_mode & 0o077:
        raise PsvnError(Code.CONFIG_INVALID, f"webhook.secret_file: {p} must not be readable by others (chmod 600)",
                        field="webhook.secret_file", rule="key-file-mode")
    secret = p.read_bytes().strip()
    if len(secret) < 32:
        raise PsvnError(Code.CONFIG_INVALID, "webhook.secret_file: the secret must be at least 32 bytes",
                        field="webhook.secret_file", rule="secret-length")
    return secret


class WebhookPusher:
    def __init__(self, url: str, secret: bytes, *, ca: str | None = None, attempts: int = 6,
                 timeout: float = 5.0, first_delay: float = 0.5) -> None:
        self.url = url
        self.secret = secret
        self.attempts = attempts
        self.first_delay = first_delay
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.failed = 0

    def notify(self, event: dict[str, Any]) -> None:
        """Queue a push without holding up the caller (the consumer loop)."""
        task = asyncio.create_task(self._push(msgspec.json.encode(event), str(event.get("id"))))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push(self, body: bytes, message_id: str) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        delay = self.first_delay
        for attempt in range(1, self.attempts + 1):
            headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.secret, body)}
            try:
                async with self._session.post(self.url, data=body, headers=headers, ssl=self._ssl) as resp:
                    if 200 <= resp.status < 300:
                        self.delivered += 1
                        return
                    reason = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = repr(exc)
            log.warning("webhook push failed", message_id=message_id, attempt=attempt, reason=reason)
            if attempt < self.attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60)
        self.failed += 1
        log.error("webhook gave up; the message stays in the mailbox", message_id=message_id)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
