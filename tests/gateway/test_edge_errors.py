"""An unhandled error at the HTTP edge is diagnosable: its traceback is in the log under an id
that the 500 problem document carries (and the log holds no payload).

The fault is injected in-process (a Gateway method replaced for the test); the request travels
over real mutual TLS to a real gateway on a real nats-server, and the log is the JSON the
gateway writes (``psvn.core.log.configure``), read back from the stream it was given."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from psvn.core import log as psvn_log
from tests.conftest import Network
from tests.gateway.test_service import audit_records, call, referral


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The process's JSON log, captured; the previous structlog set-up restored afterwards."""
    saved = structlog.get_config()
    stream = io.StringIO()
    psvn_log.configure(json=True, stream=stream)
    try:
        yield stream
    finally:
        structlog.configure(**saved)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


class Boom(RuntimeError):
    pass


async def test_a_500_carries_the_id_of_its_logged_traceback(network: Network, json_log: io.StringIO,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object, **__: object) -> None:
        raise Boom("a bug in the status lookup")

    monkeypatch.setattr(network.gateways[network.COUNCIL].gateway, "status", broken)
    code, problem = await call(network, network.COUNCIL, "GET", "/v1/messages/anything")
    assert code == 500 and problem["code"] == "internal" and problem["rule"] == "internal"
    request_id = problem["request_id"]
    assert problem["message_id"] == request_id and request_id in problem["detail"]
    [logged] = [r for r in lines(json_log) if r.get("request_id") == request_id]
    assert logged["level"] == "error" and logged["path"] == "/v1/messages/anything"
    assert "Traceback" in logged["exception"] and "Boom: a bug in the status lookup" in logged["exception"]


async def test_a_send_that_fails_unexpectedly_is_logged_without_its_payload_and_audited(
        network: Network, json_log: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*_: object, **__: object) -> None:
        raise Boom("sealing failed")

    monkeypatch.setattr(network.gateways[network.COUNCIL].gateway, "send", broken)
    code, problem = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    assert code == 500
    message_id = problem["message_id"]
    logged = [r for r in lines(json_log) if r.get("message_id") == message_id]
    assert any("Traceback" in r.get("exception", "") for r in logged)
    assert "Assessment for care" not in json_log.getvalue()  # the payload never reaches the log
    [record] = await audit_records(network, {message_id}, at_least=1)
    assert record["event"] == "rejected" and record["code"] == "internal"
