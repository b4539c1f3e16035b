"""The SDK's pure parts: reading gateway JSON into models, problem documents into errors, and
the retry/wait decisions. No network here; tests/clients/test_client.py runs a real gateway."""

from __future__ import annotations

import pickle
import ssl
import uuid
from datetime import UTC, datetime

import httpx
import psvn_client
import pytest
from psvn_client import _core
from psvn_client.errors import error_from_problem
from psvn_client.models import (
    Envelope,
    Health,
    InboxItem,
    MessageStatus,
    MessageType,
    ReceivedMessage,
    SendResult,
)

PROBLEM = {
    "type": "urn:psvn:problem:invalid-payload",
    "title": "Payload does not conform to its standard",
    "status": 422,
    "detail": "payload is not a valid FHIR R4 ServiceRequest",
    "code": "invalid-payload",
    "field": "payload",
    "rule": "fhir-r4",
    "message_id": "m-1",
    "violations": [
        {"path": "/status", "rule": "cardinality", "message": "missing", "expected": "1..1"},
        {"path": "/intent", "rule": "binding", "message": "'whenever' not allowed"},
    ],
}


@pytest.mark.parametrize(
    ("code", "status", "family"),
    [
        ("bad-request", 400, psvn_client.ValidationError),
        ("malformed-json", 400, psvn_client.ValidationError),
        ("invalid-envelope", 422, psvn_client.ValidationError),
        ("unknown-recipient", 422, psvn_client.ValidationError),
        ("unknown-type", 422, psvn_client.ValidationError),
        ("invalid-payload", 422, psvn_client.InvalidPayload),
        ("policy-denied", 403, psvn_client.PolicyDenied),
        ("payload-too-large", 413, psvn_client.PayloadTooLarge),
        ("unauthenticated", 401, psvn_client.Unauthenticated),
        ("forbidden", 403, psvn_client.Forbidden),
        ("member-revoked", 403, psvn_client.Forbidden),
        ("not-found", 404, psvn_client.NotFound),
        ("conflict", 409, psvn_client.Conflict),
        ("backbone-unavailable", 503, psvn_client.BackboneUnavailable),
        ("internal", 500, psvn_client.ServerError),
        ("signature-invalid", 422, psvn_client.PsvnError),
    ],
)
def test_each_code_maps_to_its_family(code: str, status: int, family: type[psvn_client.PsvnError]) -> None:
    err = error_from_problem(status, {"code": code, "detail": "d", "status": status})
    assert type(err) is family
    assert err.code == code and err.status == status and err.detail == "d"


def test_problem_fields_and_violations_are_kept() -> None:
    err = error_from_problem(422, PROBLEM)
    assert isinstance(err, psvn_client.InvalidPayload)
    assert isinstance(err, psvn_client.ValidationError)
    assert err.code == psvn_client.Code.INVALID_PAYLOAD
    assert (err.field, err.rule, err.message_id) == ("payload", "fhir-r4", "m-1")
    assert err.title == PROBLEM["title"]
    assert err.violations == [
        psvn_client.Violation("/status", "cardinality", "missing", "1..1"),
        psvn_client.Violation("/intent", "binding", "'whenever' not allowed"),
    ]
    assert err.problem == PROBLEM


def test_str_shows_code_field_rule_and_every_violation() -> None:
    text = str(error_from_problem(422, PROBLEM))
    lines = text.splitlines()
    assert lines[0].startswith("[invalid-payload] HTTP 422: payload is not a valid")
    assert "field=payload" in lines[0] and "rule=fhir-r4" in lines[0] and "message_id=m-1" in lines[0]
    assert lines[1] == "  - /status: missing [rule=cardinality] (expected 1..1)"
    assert lines[2] == "  - /intent: 'whenever' not allowed [rule=binding]"
    assert len(lines) == 3


def test_unknown_code_is_kept_and_family_follows_status() -> None:
    later = error_from_problem(404, {"code": "mailbox-gone", "detail": "x"})
    assert type(later) is psvn_client.NotFound and later.code == "mailbox-gone"
    teapot = error_from_problem(418, {"code": "teapot"})
    assert type(teapot) is psvn_client.PsvnError and teapot.code == "teapot"
    assert type(error_from_problem(507, {"code": "disk-full"})) is psvn_client.ServerError


def test_code_comes_from_type_urn_when_code_member_missing() -> None:
    err = error_from_problem(403, {"type": "urn:psvn:problem:policy-denied", "rule": "r7"})
    assert isinstance(err, psvn_client.PolicyDenied) and err.rule == "r7"


def test_response_without_problem_document_uses_status_and_body() -> None:
    resp = httpx.Response(502, text="<html>Bad gateway</html>", headers={"content-type": "text/html"})
    err, retry = _core.failure(_core.health_call(), resp)
    assert isinstance(err, psvn_client.BackboneUnavailable)
    assert err.code == "backbone-unavailable" and err.status == 502
    assert "Bad gateway" in err.detail
    assert retry is True


def test_only_transient_statuses_are_retried() -> None:
    problem = {"content-type": "application/problem+json"}
    for status, retry in (
        (503, True),
        (504, True),
        (429, True),
        (500, False),
        (404, False),
        (422, False),
    ):
        resp = httpx.Response(status, json={"code": "x"}, headers=problem)
        assert _core.failure(_core.status_call("m"), resp)[1] is retry, status


def test_errors_survive_pickling() -> None:
    err = error_from_problem(422, PROBLEM)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is psvn_client.InvalidPayload
    assert (back.code, back.field, back.violations, str(back)) == (
        err.code,
        err.field,
        err.violations,
        str(err),
    )


def test_send_result_and_status_models() -> None:
    sent = SendResult.from_json(
        {
            "id": "m1",
            "status": "accepted",
            "policy": {"version": 4, "rule_ids": ["a", "b"]},
            "new": 1,
        },
        idempotency_key="k",
        location="/v1/messages/m1",
    )
    assert (sent.id, sent.policy.version, sent.policy.rule_ids) == ("m1", 4, ("a", "b"))
    assert sent.idempotency_key == "k" and not sent.duplicate

    st = MessageStatus.from_json(
        {
            "id": "m1",
            "to": "ods:RYR",
            "type": "fhir.r4.ServiceRequest",
            "status": "rejected",
            "reason": "policy-denied at ingress",
            "history": [
                {"status": "accepted", "time": "2026-05-01T10:00:00.000Z"},
                {"status": "rejected", "time": "2026-05-01T10:00:00.250Z", "reason": "denied"},
            ],
        }
    )
    assert st.final and st.reason == "policy-denied at ingress"
    assert st.history[1].time == datetime(2026, 5, 1, 10, 0, 0, 250000, tzinfo=UTC)
    assert st.history[1].reason == "denied" and st.history[0].reason is None
    with pytest.raises(AttributeError):
        st.status = "sent"  # type: ignore[misc]


def test_inbox_item_received_message_catalogue_health() -> None:
    item = InboxItem.from_json(
        {
            "id": "m2",
            "from": "gss:E06000043",
            "to": "ods:RYR/referrals",
            "type": "fhir.r4.ServiceRequest",
            "time": "2026-05-01T10:00:00Z",
            "status": "delivered",
            "size": 1345,
            "classification": "OFFICIAL-SENSITIVE",
            "purpose": "direct-care",
            "mailbox": "referrals",
        }
    )
    assert item.sender == "gss:E06000043" and item.size == 1345 and item.correlation_id is None
    env = {
        "id": "m2",
        "source": "gss:E06000043",
        "to": "ods:RYR",
        "type": "hl7v2.ADT_A01",
        "time": "2026-05-01T10:00:00Z",
        "purpose": "direct-care",
        "classification": "OFFICIAL",
        "datacontenttype": "text/x-hl7v2",
        "policy_version": 3,
        "expires": "2026-05-02T10:00:00Z",
        "specversion": "1.0",
    }
    msg = ReceivedMessage.from_json({"envelope": env, "payload": "MSH|^~\\&|...", "status": "delivered"})
    assert (msg.id, msg.type, msg.sender) == ("m2", "hl7v2.ADT_A01", "gss:E06000043")
    assert isinstance(msg.envelope, Envelope) and msg.envelope.expires is not None
    assert msg.payload.startswith("MSH|")
    # A null JSON payload is a payload, not a missing one.
    assert ReceivedMessage.from_json({"envelope": env, "payload": None, "status": "delivered"}).payload is None

    mt = MessageType.from_json(
        {
            "type": "fhir.r4.Patient",
            "standard": "FHIR R4",
            "version": "4.0.1",
            "validator": "fhir",
            "schema": "x",
        }
    )
    assert mt.extra == {"schema": "x"} and mt.description is None
    health = Health.from_json({"status": "degraded", "org": "ods:RYR", "policy_version": 2, "backbone": "disconnected"})
    assert not health.ok and health.backbone == "disconnected"


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"status": "accepted"},
        {"id": "m", "status": "accepted", "history": [{"status": "sent", "time": "yesterday"}]},
        {"id": "m", "status": "accepted", "history": "none"},
        {"id": 7, "status": "accepted"},
    ],
)
def test_unreadable_status_raises_protocol_error(bad: object) -> None:
    with pytest.raises(psvn_client.ProtocolError) as info:
        MessageStatus.from_json(bad)
    assert info.value.code == "bad-response"


def test_non_json_success_body_is_a_protocol_error() -> None:
    resp = httpx.Response(200, text="hello")
    with pytest.raises(psvn_client.ProtocolError):
        _core.health_call().parse(resp)


def test_send_always_carries_an_idempotency_key() -> None:
    call = _core.send_call(
        "ods:RYR",
        "fhir.r4.Patient",
        {"resourceType": "Patient"},
        purpose="direct-care",
        classification="OFFICIAL",
        subject=None,
        correlation_id="c-1",
        workflow_id=None,
        local_id=None,
        idempotency_key=None,
        ttl_seconds=60,
    )
    body = call.json
    uuid.UUID(body["idempotency_key"])  # generated
    assert call.safe and call.method == "POST" and call.path == "/v1/messages"
    assert body["correlation_id"] == "c-1" and body["ttl_seconds"] == 60
    assert "subject" not in body and "workflow_id" not in body and "local_id" not in body
    again = _core.send_call(
        "ods:RYR",
        "t.x",
        "text",
        purpose="p",
        classification="OFFICIAL",
        subject=None,
        correlation_id=None,
        workflow_id=None,
        local_id=None,
        idempotency_key=None,
        ttl_seconds=None,
    )
    assert again.json["idempotency_key"] != body["idempotency_key"]
    resp = httpx.Response(200, json={"id": "m", "status": "accepted", "policy": {"version": 1}})
    result = call.parse(resp)
    assert result.duplicate and result.idempotency_key == body["idempotency_key"]


def test_message_ids_cannot_escape_their_path() -> None:
    assert _core.status_call("../../healthz").path == "/v1/messages/..%2F..%2Fhealthz"
    assert _core.ack_call("a/b").path == "/v1/inbox/a%2Fb/ack"
    with pytest.raises(ValueError):
        _core.get_call("")


def test_inbox_params() -> None:
    call = _core.inbox_call("referrals", "delivered", 5)
    assert call.params == {"limit": 5, "mailbox": "referrals", "status": "delivered"}
    for bad in (0, -1, True):
        with pytest.raises(ValueError):
            _core.inbox_call(None, None, bad)


def _st(status: str, reason: str | None = None) -> MessageStatus:
    return MessageStatus(id="m", status=status, reason=reason)


def test_wait_reached_counts_later_steps_and_fails_fast_on_dead_ends() -> None:
    assert _core.reached(_st("delivered"), "delivered")
    assert _core.reached(_st("acknowledged"), "delivered")
    assert _core.reached(_st("delivered"), "sent")
    assert not _core.reached(_st("sent"), "delivered")
    assert not _core.reached(_st("accepted"), "rejected")
    assert _core.reached(_st("rejected", "policy"), "rejected")
    with pytest.raises(psvn_client.DeliveryFailed) as info:
        _core.reached(_st("rejected", "denied by rule r4"), "delivered")
    assert info.value.message_status == _st("rejected", "denied by rule r4")
    assert info.value.code == "delivery-failed" and info.value.message_id == "m"
    assert "denied by rule r4" in str(info.value)
    with pytest.raises(psvn_client.DeliveryFailed):
        _core.reached(_st("acknowledged"), "rejected")
    with pytest.raises(ValueError):
        _core.check_target("deliverd")


def test_retry_delay_grows_is_jittered_and_capped() -> None:
    for attempt in range(8):
        d = _core.retry_delay(attempt, 0.1)
        ceiling = min(0.1 * 2**attempt, _core.MAX_RETRY_DELAY)
        assert ceiling / 2 <= d <= ceiling
    assert _core.retry_delay(0, 0.1, httpx.Response(503, headers={"retry-after": "2"})) == 2.0
    assert _core.retry_delay(0, 0.1, httpx.Response(503, headers={"retry-after": "3600"})) == 5.0
    assert _core.retry_delay(0, 0.1, httpx.Response(503, headers={"retry-after": "soon"})) <= 0.1


def _chained(outer: type[httpx.TransportError], inner: BaseException) -> httpx.TransportError:
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer("boom") from e
    except httpx.TransportError as exc:
        return exc


def test_transport_failures_are_classified() -> None:
    get, send = (
        _core.health_call(),
        _core.send_call(
            "ods:RYR",
            "t.x",
            {},
            purpose="p",
            classification="OFFICIAL",
            subject=None,
            correlation_id=None,
            workflow_id=None,
            local_id=None,
            idempotency_key="k",
            ttl_seconds=None,
        ),
    )
    tls = _chained(httpx.ConnectError, ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED]"))
    err, retry = _core.transport_failure(get, "https://h", tls)
    assert isinstance(err, psvn_client.ConnectionError) and err.code == "tls-failed" and not retry
    assert err.status is None

    err, retry = _core.transport_failure(get, "https://h", httpx.ConnectError("refused"))
    assert err.code == "connection-failed" and retry
    err, retry = _core.transport_failure(send, "https://h", httpx.ReadTimeout("slow"))
    assert err.code == "timeout" and retry  # send has a key: safe
    unsafe = _core.Call("POST", "/x", lambda r: None, safe=False)
    assert _core.transport_failure(unsafe, "https://h", httpx.ReadTimeout("slow"))[1] is False
    assert _core.transport_failure(unsafe, "https://h", httpx.RemoteProtocolError("eof"))[1] is False
    assert _core.transport_failure(unsafe, "https://h", httpx.ConnectError("refused"))[1] is True


def test_a_dropped_connection_without_client_certificate_is_a_tls_failure() -> None:
    dropped = _chained(httpx.ReadError, ConnectionResetError(104, "Connection reset by peer"))
    call = _core.health_call()
    err, retry = _core.transport_failure(call, "https://h", dropped, client_cert=False)
    assert err.code == "tls-failed" and not retry
    assert "no client certificate" in err.detail and "Connection reset by peer" in err.detail
    err, retry = _core.transport_failure(call, "https://h", dropped, client_cert=True)
    assert err.code == "connection-failed" and retry
    assert "Connection reset by peer" in err.detail and "client certificate" in err.detail


def test_ssl_context_is_tls12_plus_and_checks_arguments(tmp_path: object) -> None:
    ctx = _core.ssl_context(ca=None, cert=None, key=None)
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    with pytest.raises(ValueError):
        _core.ssl_context(ca=None, cert=None, key="k.pem")
    with pytest.raises(FileNotFoundError):
        _core.ssl_context(ca="/nonexistent/ca.pem", cert=None, key=None)


def test_clients_reject_negative_retries_and_close() -> None:
    with pytest.raises(ValueError):
        psvn_client.Client("https://127.0.0.1:1", retries=-1)
    with psvn_client.Client("https://127.0.0.1:1/") as c:
        assert c.url == "https://127.0.0.1:1" and not c.closed
    assert c.closed


def test_degraded_health_503_is_an_answer_not_an_error() -> None:
    call = _core.health_call()
    body = {"status": "degraded", "org": "ods:RYR", "policy_version": 1, "backbone": "disconnected"}
    resp = httpx.Response(503, json=body)
    assert call.is_answer(resp)
    assert call.parse(resp) == Health("degraded", "ods:RYR", 1, "disconnected")
    assert not _core.status_call("m").is_answer(resp)


def test_members_the_gateway_omits_when_default_get_their_default() -> None:
    item = InboxItem.from_json(
        {
            "id": "m",
            "from": "ods:RYR",
            "to": "gss:E06000043",
            "type": "t.x",
            "time": "2026-05-01T10:00:00Z",
            "status": "quarantined",
            "size": 3,
            "reason": "signature-invalid",
        }
    )
    assert (item.classification, item.purpose, item.reason) == ("OFFICIAL", "", "signature-invalid")
    env = Envelope.from_json(
        {
            "id": "m",
            "source": "ods:RYR",
            "to": "gss:E06000043",
            "type": "t.x",
            "time": "2026-05-01T10:00:00Z",
            "purpose": "direct-care",
        }
    )
    assert (env.classification, env.datacontenttype, env.policy_version) == (
        "OFFICIAL",
        "application/json",
        0,
    )
