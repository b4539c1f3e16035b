"""Webhook push to the local system: signed, metadata only, retried, never at the cost of the message."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from gateway import webhook
from gateway.config import GatewayConfig, WebhookSection
from psvn import procs
from psvn.devnet import MemberSpec
from psvn.errors import PsvnError
from tests.conftest import Network, start_network, stop_network
from tests.gateway.test_service import call, referral, wait_status

SECRET = os.urandom(32).hex().encode()


class Receiver:
    """The trust's local system: a real HTTP server that fails the first push."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.calls = 0
        self.bad_signatures = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        body = await request.read()
        if not webhook.verify(SECRET, body, request.headers.get(webhook.SIGNATURE_HEADER, "")):
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
    port = procs.free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
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
    [event] = receiver.events
    assert event["event"] == "message.delivered" and event["id"] == body["id"]
    assert event["from"] == net.COUNCIL and event["href"] == f"/v1/inbox/{body['id']}"
    assert "payload" not in event and "9434765919" not in repr(event)  # metadata only
    status, item = await call(net, net.TRUST, "GET", event["href"])
    assert status == 200 and item["envelope"]["id"] == body["id"]


def test_signature_rules() -> None:
    body = b'{"id":"m-1"}'
    header = webhook.sign(SECRET, body, timestamp=1_700_000_000)
    assert webhook.verify(SECRET, body, header, now=1_700_000_100)
    assert not webhook.verify(SECRET, body + b" ", header, now=1_700_000_100)  # body changed
    assert not webhook.verify(b"x" * 32, body, header, now=1_700_000_100)  # wrong secret
    assert not webhook.verify(SECRET, body, header, now=1_700_001_000)  # stale (replay)
    assert not webhook.verify(SECRET, body, "garbage")


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
    from gateway.service import _webhook
    from tests.psvn.test_config import GOOD

    f = tmp_path / "s"
    f.write_bytes(SECRET)
    f.chmod(0o600)
    cfg_path = tmp_path / "gw.toml"
    cfg_path.write_text(GOOD + f'[webhook]\nurl = "http://records.example.org/psvn"\nsecret_file = "{f}"\n')
    from gateway.config import load

    with pytest.raises(PsvnError) as err:
        _webhook(load(cfg_path))
    assert (err.value.field, err.value.rule) == ("webhook.url", "webhook-https")
    cfg_path.write_text(GOOD + f'[webhook]\nurl = "https://records.example.org/psvn"\nsecret_file = "{f}"\n')
    assert _webhook(load(cfg_path)) is not None
