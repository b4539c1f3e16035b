"""Webhook push to the local system: signed, metadata only, retried, never at the cost of the message."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from psvn.core.errors import PsvnError
from psvn.devnet import MemberSpec
from psvn.gateway import webhook
from psvn.gateway.config import GatewayConfig, WebhookSection
from tests.conftest import Network, start_network, stop_network
from tests.gateway.test_service import call, referral, wait_status

SECRET = os.urandom(32).hex().encode()


class Receiver:
    """The trust's local system: a real HTTP server that fails the first push."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.calls = 0
        self.bad_signatures = 0
        self.verifier = webhook.Verifier(SECRET)
        self.ids: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        body = await request.read()
        self.ids.append(request.headers.get("webhook-id", ""))
        if not self.verifier(body, request.headers):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.calls == 1:
            return web.Response(status=503)  # a restart on the local system: the gateway retries
        self.events.append(msgspec.json.decode(body))
        return web.Response(status=204)


@pytest.fixture
async def receiver_and_net(tmp_path: Path) -> AsyncIterator[tuple[Receiver, Network]]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/psvn", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]  # the port the system chose
    secret_file = tmp_path / "webhook.secret"
    secret_file.write_bytes(SECRET)
    secret_file.chmod(0o600)

    def configure(m: MemberSpec, cfg: GatewayConfig) -> GatewayConfig:
        if m.org != "ods:RYR":
            return cfg
        return msgspec.structs.replace(cfg, webhook=WebhookSection(url=f"http://127.0.0.1:{port}/psvn",
                                                                   secret_file=str(secret_file)))

    net = await start_network(tmp_path / "net", configure=configure)
    try:
        yield receiver, net
    finally:
        await stop_network(net)
        await runner.cleanup()


async def test_delivery_is_pushed_signed_and_retried(receiver_and_net: tuple[Receiver, Network]) -> None:
    receiver, net = receiver_and_net
    status, body = await call(net, net.COUNCIL, "POST", "/v1/messages", referral())
    assert status == 202
    await wait_status(net, net.COUNCIL, body["id"], "delivered")
    for _ in range(200):
        if receiver.events:
            break
        await asyncio.sleep(0.025)
    assert receiver.calls == 2 and receiver.bad_signatures == 0
    assert len(set(receiver.ids)) == 2  # a fresh webhook-id per attempt: the retry is no replay
    [event] = receiver.events
    assert event["event"] == "message.delivered" and event["id"] == body["id"]
    assert event["from"] == net.COUNCIL and event["href"] == f"/v1/inbox/{body['id']}"
    assert "payload" not in event and "9434765919" not in repr(event)  # metadata only
    status, item = await call(net, net.TRUST, "GET", event["href"])
    assert status == 200 and item["envelope"]["id"] == body["id"]


def test_signature_rules() -> None:
    body = b'{"id":"m-1"}'
    headers = webhook.sign(SECRET, body, timestamp=1_700_000_000)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,")
    assert webhook.verify(SECRET, body, headers, now=1_700_000_100)
    assert not webhook.verify(SECRET, body + b" ", headers, now=1_700_000_100)  # body changed
    assert not webhook.verify(b"x" * 32, body, headers, now=1_700_000_100)  # wrong secret
    assert not webhook.verify(SECRET, body, headers, now=1_700_001_000)  # stale
    assert not webhook.verify(SECRET, body, {**headers, "webhook-id": "msg_other"}, now=1_700_000_100)
    assert webhook.sign(SECRET, body)["webhook-id"] != webhook.sign(SECRET, body)["webhook-id"]


def test_signatures_interoperate_with_the_standard_webhooks_library() -> None:
    from standardwebhooks.webhooks import Webhook

    body = b'{"id":"m-2"}'
    assert Webhook(SECRET).verify(body, webhook.sign(SECRET, body), json_parse=False) is None
    wid, now = "msg_lib", datetime.now(UTC)
    by_library = {"webhook-id": wid, "webhook-timestamp": str(int(now.timestamp())),
                  "webhook-signature": Webhook(SECRET).sign(wid, now, body)}
    assert webhook.verify(SECRET, body, by_library)


@pytest.mark.parametrize("bad", [
    {},
    {"webhook-signature": "v1,é"},
    {"webhook-signature": "v1,\udcff"},
    {"webhook-id": "msg_é"},
    {"webhook-id": "msg\n"},
    {"webhook-timestamp": "1e9"},
    {"webhook-timestamp": "١٧٠٠٠٠٠٠٠٠"},  # Arabic-Indic digits: int() would take them
    {"webhook-timestamp": "9" * 40},
    {"webhook-timestamp": "-1"},
    {"webhook-timestamp": "nan"},
    {"webhook-signature": ""},
    {"webhook-id": ""},
    {"webhook-signature": "garbage"},
])
def test_verify_never_raises_on_malformed_headers(bad: dict[str, str]) -> None:
    body = b'{"id":"m-3"}'
    headers = {**webhook.sign(SECRET, body, timestamp=1_700_000_000), **bad} if bad else {}
    assert webhook.verify(SECRET, body, headers, now=1_700_000_000) is False
    assert webhook.Verifier(SECRET)(body, headers, now=1_700_000_000) is False


def test_verifier_refuses_a_replayed_webhook_id_within_the_window() -> None:
    body = b'{"id":"m-4"}'
    verifier = webhook.Verifier(SECRET, max_ids=2)
    first = webhook.sign(SECRET, body, timestamp=1_700_000_000)
    assert verifier(body, first, now=1_700_000_001)
    assert not verifier(body, first, now=1_700_000_002)  # the same request again: a replay
    assert not verifier(body, first, now=1_700_000_299)
    assert not verifier(body, first, now=1_700_000_301)  # and after the window it is stale anyway
    # bounded: full of ids still inside their window, it refuses rather than forget one early
    assert verifier(body, webhook.sign(SECRET, body, timestamp=1_700_000_100), now=1_700_000_100)
    third = webhook.sign(SECRET, body, timestamp=1_700_000_200)
    assert not verifier(body, third, now=1_700_000_200)
    # once the first id's window is over it is forgotten and there is room again
    assert verifier(body, third, now=1_700_000_301)
    assert len(verifier._seen) == 2


def test_secret_file_must_be_private_and_long(tmp_path: Path) -> None:
    f = tmp_path / "s"
    f.write_bytes(SECRET)
    f.chmod(0o644)
    with pytest.raises(PsvnError) as err:
        webhook.load_secret(str(f))
    assert err.value.rule == "key-file-mode"
    f.chmod(0o600)
    f.write_bytes(b"short")
    with pytest.raises(PsvnError) as err:
        webhook.load_secret(str(f))
    assert err.value.rule == "secret-length"


def test_plain_http_only_to_loopback(tmp_path: Path) -> None:
    from psvn.gateway.service import _webhook
    from tests.core.test_config import GOOD

    f = tmp_path / "s"
    f.write_bytes(SECRET)
    f.chmod(0o600)
    cfg_path = tmp_path / "gw.toml"
    cfg_path.write_text(GOOD + f'[webhook]\nurl = "http://records.example.org/psvn"\nsecret_file = "{f}"\n')
    from psvn.gateway.config import load

    with pytest.raises(PsvnError) as err:
        _webhook(load(cfg_path))
    assert (err.value.field, err.value.rule) == ("webhook.url", "webhook-https")
    cfg_path.write_text(GOOD + f'[webhook]\nurl = "https://records.example.org/psvn"\nsecret_file = "{f}"\n')
    assert _webhook(load(cfg_path)) is not None


@pytest.mark.parametrize(("url", "rule"), [
    ("http://localhost@evil.example/psvn", "url-userinfo"),  # passed the old prefix check
    ("http://127.0.0.1@evil.example/psvn", "url-userinfo"),
    ("https://user:pass@records.example.org/", "url-userinfo"),
    ("http://127.0.0.1.evil.example/psvn", "webhook-https"),
    ("http://localhost.evil.example/psvn", "webhook-https"),
    ("http://[::1].evil.example/psvn", "url-syntax"),
    ("http://evil.example/http://127.0.0.1", "webhook-https"),
    ("ftp://127.0.0.1/psvn", "webhook-https"),
    ("//records.example.org/psvn", "webhook-https"),
    ("https:///psvn", "url-host"),
    ("https://records.example.org:99999/", "url-syntax"),
    ("https://records.example.org/#frag", "url-syntax"),
    ("http://127.0.0.1\\@evil.example/", "url-characters"),
    ("https://records.example.org/ psvn", "url-characters"),
    ("https://records.example.org/psvn\n", "url-characters"),
    ("https://récords.example.org/", "url-characters"),
    ("", "url-characters"),
])
def test_webhook_urls_are_parsed_strictly(url: str, rule: str) -> None:
    with pytest.raises(PsvnError) as err:
        webhook.check_url(url)
    assert (err.value.field, err.value.rule) == ("webhook.url", rule), err.value.detail
    assert "webhook.url" in err.value.detail


@pytest.mark.parametrize("url", ["https://records.example.org/psvn", "https://records.example.org:8443/a?b=c",
                                 "http://127.0.0.1:9000/psvn", "http://localhost/psvn", "http://[::1]:9000/"])
def test_good_webhook_urls_pass(url: str) -> None:
    assert webhook.check_url(url) == url


class Counter:
    """A real HTTP endpoint that answers each POST with ``answer`` and counts them."""

    def __init__(self, answer: Callable[[], web.StreamResponse]) -> None:
        self.answer = answer
        self.calls = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.calls += 1
        return self.answer()


async def serve(handler: Counter, ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    return runner, runner.addresses[0][1]


async def test_redirects_are_never_followed_https_to_http_included(tmp_path: Path) -> None:
    """The local system's https endpoint answers 307 to a plain-http one: the signed body must
    not go there; the 307 is a failed attempt, retried, then recorded as given up."""
    from psvn.certs import tls
    from psvn.certs.ca import init_ca, issue_server

    ca = init_ca(tmp_path / "ca")
    cert, key = issue_server(ca, "records", tmp_path / "srv", hosts=["localhost", "127.0.0.1"])
    thief = Counter(lambda: web.Response(status=204))
    thief_runner, thief_port = await serve(thief)
    for status in (301, 302, 303, 307, 308):
        redirector = Counter(lambda status=status: web.Response(  # type: ignore[misc]
            status=status, headers={"Location": f"http://127.0.0.1:{thief_port}/steal"}))
        runner, port = await serve(redirector, tls.server_context(cert, key, tmp_path / "ca" / "ca.crt",
                                                                  require_client_cert=False))
        pusher = webhook.WebhookPusher(f"https://localhost:{port}/psvn", SECRET, ca=str(tmp_path / "ca" / "ca.crt"),
                                       attempts=2, first_delay=0.01)
        try:
            pusher.notify({"event": "message.delivered", "id": "m-5"})
            deadline = asyncio.get_running_loop().time() + 10
            while pusher.failed == 0:
                assert asyncio.get_running_loop().time() < deadline, "the pusher never gave up"
                await asyncio.sleep(0.01)
        finally:
            await pusher.close()
            await runner.cleanup()
        assert (redirector.calls, pusher.delivered, pusher.failed) == (2, 0, 1)
        assert pusher.last_failure is not None and f"HTTP {status}" in pusher.last_failure
    await thief_runner.cleanup()
    assert thief.calls == 0
