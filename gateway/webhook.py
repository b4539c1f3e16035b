"""Push notifications to the organisation's local system when a message is delivered.

The webhook carries metadata only (id, sender, type, mailbox, size): the system then fetches the
payload over mutual TLS from ``GET /v1/inbox/{id}``, so a misdirected webhook leaks nothing.

Signing follows Standard Webhooks (https://www.standardwebhooks.com/, the ``standardwebhooks``
package): headers ``webhook-id``, ``webhook-timestamp`` (unix seconds) and ``webhook-signature:
v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>``. Every POST, retries included, gets
a fresh ``webhook-id``, so a receiver can refuse any id it has seen (:class:`Verifier` does,
within the ±5 minute tolerance) and a captured request cannot be replayed; it deduplicates
deliveries by the body's ``id`` (the message id). ``verify`` never raises: anything malformed is
simply not verified.

Redirects are never followed (a 3xx is a failed attempt, retried and logged): following one would
re-post the signed body to wherever the redirect points, plain http included. The URL is checked
strictly at start-up (:func:`check_url`). Failures are retried with backoff; the message stays in
the mailbox whatever happens to the webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import hmac
import ssl
import string
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import structlog
import yarl
from standardwebhooks.webhooks import Webhook

from psvn.core.errors import Code, PsvnError
from psvn.core.retry import retrying

log = structlog.get_logger("psvn.gateway.webhook")
ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = "webhook-id", "webhook-timestamp", "webhook-signature"
TOLERANCE = 300  # seconds either side of now (the Standard Webhooks default)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# RFC 3986 characters (unreserved, reserved, percent): anything else (spaces, controls, backslash,
# non-ASCII) makes parsers disagree about what the host is, so it is refused outright.
_URL_CHARS = frozenset(string.ascii_letters + string.digits + "-._~:/?#[]@!$&'()*+,;=%")
_ID_CHARS = frozenset(string.ascii_letters + string.digits + "-_.:")


def _bad_url(url: str, rule: str, why: str) -> PsvnError:
    return PsvnError(Code.CONFIG_INVALID, f"webhook.url: {url!r} {why}", field="webhook.url", rule=rule)


def check_url(url: str) -> str:
    """The webhook URL, parsed strictly: https (plain http only to a loopback host, compared
    exactly), a host, no user info, no fragment, nothing a parser could read two ways."""
    if not url or not set(url) <= _URL_CHARS:
        raise _bad_url(url, "url-characters", "may hold only URL characters (RFC 3986, ASCII, no spaces)")
    try:
        parsed = yarl.URL(url)
        host, port = parsed.raw_host, parsed.explicit_port
    except ValueError as exc:
        raise _bad_url(url, "url-syntax", f"is not a URL: {exc}") from None
    if parsed.scheme not in ("https", "http"):
        raise _bad_url(url, "webhook-https", "must be an absolute https:// URL")
    if parsed.raw_user is not None or parsed.raw_password is not None or "@" in (parsed.raw_authority or ""):
        raise _bad_url(url, "url-userinfo", "must not carry user info (user@host)")
    if not host or not parsed.is_absolute():
        raise _bad_url(url, "url-host", "names no host")
    if port == 0:
        raise _bad_url(url, "url-syntax", "has port 0")
    if parsed.raw_fragment:
        raise _bad_url(url, "url-syntax", "must not have a fragment")
    if parsed.scheme == "http" and host not in LOOPBACK_HOSTS:
        raise _bad_url(url, "webhook-https", "must be https:// (plain http only to 127.0.0.1, localhost or [::1])")
    return url


def sign(secret: bytes, body: bytes, *, msg_id: str | None = None, timestamp: int | None = None) -> dict[str, str]:
    """The Standard Webhooks headers for one POST of ``body`` (a fresh id unless given)."""
    t = int(time.time()) if timestamp is None else timestamp
    wid = msg_id or f"msg_{uuid.uuid4().hex}"
    signature = Webhook(secret).sign(wid, datetime.fromtimestamp(t, tz=UTC), body)
    return {ID_HEADER: wid, TIMESTAMP_HEADER: str(t), SIGNATURE_HEADER: signature}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def verify(secret: bytes, body: bytes, headers: Mapping[str, str], *, tolerance: int = TOLERANCE,
           now: int | None = None) -> bool:
    """For receivers (and tests): the signature is right and fresh. Never raises: a missing,
    non-ASCII or otherwise malformed header is simply False. Does not refuse replays within the
    window by itself; a receiver should use :class:`Verifier`."""
    try:
        wid, ts, sigs = (_header(headers, h) for h in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER))
        if not (wid and ts and sigs) or not (wid.isascii() and ts.isascii() and sigs.isascii()):
            return False
        if len(wid) > 256 or not set(wid) <= _ID_CHARS or not ts.isdigit() or len(ts) > 12:
            return False
        t = int(ts)
        if abs((int(time.time()) if now is None else now) - t) > tolerance:
            return False
        expected = sign(secret, body, msg_id=wid, timestamp=t)[SIGNATURE_HEADER].encode()
        return any(hmac.compare_digest(expected, s.encode()) for s in sigs.split(" ") if s)
    except Exception:  # a verifier must answer, not crash the receiver
        return False


class Verifier:
    """A receiver's check: signature, freshness, and no ``webhook-id`` seen before.

    An id is remembered until its timestamp leaves the tolerance window (after that the
    freshness check refuses a replay anyway), so memory is bounded by the traffic of ten
    minutes; beyond ``max_ids`` it refuses (fails closed) rather than forget an id too early."""

    def __init__(self, secret: bytes, *, tolerance: int = TOLERANCE, max_ids: int = 100_000) -> None:
        self.secret = secret
        self.tolerance = tolerance
        self.max_ids = max_ids
        self._seen: dict[str, int] = {}
        self._expiry: list[tuple[int, str]] = []

    def __call__(self, body: bytes, headers: Mapping[str, str], *, now: int | None = None) -> bool:
        t_now = int(time.time()) if now is None else now
        if not verify(self.secret, body, headers, tolerance=self.tolerance, now=t_now):
            return False
        while self._expiry and self._expiry[0][0] < t_now:
            _, old = heapq.heappop(self._expiry)
            self._seen.pop(old, None)
        wid = _header(headers, ID_HEADER) or ""
        if wid in self._seen or len(self._seen) >= self.max_ids:
            return False
        expires = int(_header(headers, TIMESTAMP_HEADER) or 0) + self.tolerance
        self._seen[wid] = expires
        heapq.heappush(self._expiry, (expires, wid))
        return True


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


class _NotDelivered(Exception):
    """One push that the local system did not take (its reason is in ``last_failure``)."""


class WebhookPusher:
    def __init__(self, url: str, secret: bytes, *, ca: str | None = None, attempts: int = 6,
                 timeout: float = 5.0, first_delay: float = 0.5) -> None:
        self.url = check_url(url)
        self.secret = secret
        self.attempts = attempts
        self.first_delay = first_delay
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.failed = 0
        self.last_failure: str | None = None  # the reason of the last failed attempt (for operators, tests)

    def notify(self, event: dict[str, Any]) -> None:
        """Queue a push without holding up the caller (the consumer loop)."""
        task = asyncio.create_task(self._push(msgspec.json.encode(event), str(event.get("id"))))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push(self, body: bytes, message_id: str) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        session = self._session
        tries = 0

        async def once() -> None:
            nonlocal tries
            tries += 1
            headers = {"Content-Type": "application/json", **sign(self.secret, body)}  # signed afresh each try
            try:
                # never follow a redirect: it would re-post the signed body wherever it points
                async with session.post(self.url, data=body, headers=headers, ssl=self._ssl,
                                        allow_redirects=False) as resp:
                    if 200 <= resp.status < 300:
                        return
                    reason = f"HTTP {resp.status}"
                    if 300 <= resp.status < 400:
                        reason += " (a redirect; webhooks do not follow redirects: fix webhook.url)"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = repr(exc)
            self.last_failure = reason
            log.warning("webhook push failed", message_id=message_id, attempt=tries, reason=reason)
            raise _NotDelivered(reason)

        try:
            await retrying(once, on=_NotDelivered, attempts=self.attempts, first_delay=self.first_delay, max_delay=60)
        except _NotDelivered:
            self.failed += 1
            log.error("webhook gave up; the message stays in the mailbox", message_id=message_id,
                      reason=self.last_failure)
            return
        self.delivered += 1

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
