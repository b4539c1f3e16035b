"""Council -> NHS trust end to end through real gateways, real TLS and a real nats-server."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from psvn import devnet
from tests.conftest import Network, read_mostly

ADT_A01 = (Path(__file__).resolve().parents[2] / "examples" / "adt_a01.hl7").read_text().replace("\n", "\r")
REFERRAL: dict[str, Any] = {
    "resourceType": "ServiceRequest",
    "status": "active",
    "intent": "order",
    "subject": {"reference": "Patient/9434765919",
                "identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}},
    "code": {"text": "Assessment for care and support on discharge"},
}


def https(net: Network, org: str) -> aiohttp.ClientSession:
    """A new HTTPS client as ``org``'s system (its own connections: a new TLS handshake)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=net.client_ssl(org)))


async def call(net: Network, org: str, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
               session: aiohttp.ClientSession | None = None, fresh: bool = False) -> tuple[int, dict[str, Any]]:
    """One request as ``org``'s system: on ``session`` if given, else on the test's keep-alive
    client (one TLS handshake for the test); ``fresh`` opens a new connection, for a test of what
    a handshake decides (a revoked certificate)."""
    if fresh:
        async with https(net, org) as new:
            return await call(net, org, method, path, body, raw=raw, session=new)
    session = session or net.https(org)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    async with session.request(method, net.url(org) + path, data=data,
                               headers={"Content-Type": "application/json"}) as r:
        return r.status, await r.json(content_type=None)


def referral(to: str = "ods:RYR", **over: Any) -> dict[str, Any]:
    msg = {"to": to, "type": "fhir.r4.ServiceRequest", "purpose": "direct-care",
           "classification": "OFFICIAL-SENSITIVE", "subject": "nhs:9434765919", "payload": REFERRAL}
    msg.update(over)
    return msg


async def wait_status(net: Network, org: str, mid: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:  # every poll on the test's keep-alive client
        code, body = await call(net, org, "GET", f"/v1/messages/{mid}")
        assert code == 200, body
        if body["status"] == status:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"status stayed {body['status']}, wanted {status}: {body}")
        await asyncio.sleep(0.05)


async def test_council_to_trust_reaches_acknowledged(network: Network) -> None:
    code, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    assert code == 202, body
    mid = body["id"]
    assert body["policy"]["rule_ids"] == ["care-referrals"]
    await wait_status(network, network.COUNCIL, mid, "delivered")

    code, inbox = await call(network, network.TRUST, "GET", "/v1/inbox")
    assert code == 200
    assert [m["id"] for m in inbox["messages"]] == [mid]
    assert inbox["messages"][0]["from"] == network.COUNCIL

    code, item = await call(network, network.TRUST, "GET", f"/v1/inbox/{mid}")
    assert code == 200
    assert item["payload"] == REFERRAL
    assert item["envelope"]["source"] == network.COUNCIL
    assert item["envelope"]["source_system"] == "adult-social-care"

    code, acked = await call(network, network.TRUST, "POST", f"/v1/inbox/{mid}/ack")
    assert (code, acked["status"]) == (200, "acknowledged")
    final = await wait_status(network, network.COUNCIL, mid, "acknowledged")
    assert [h["status"] for h in final["history"]] == ["accepted", "sent", "delivered", "acknowledged"]
    code, inbox = await call(network, network.TRUST, "GET", "/v1/inbox")
    assert inbox["messages"] == []


async def test_council_does_not_see_the_trusts_mail(network: Network) -> None:
    code, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    mid = body["id"]
    await wait_status(network, network.COUNCIL, mid, "delivered")
    code, problem = await call(network, network.COUNCIL, "GET", f"/v1/inbox/{mid}")
    assert code == 404 and problem["code"] == "not-found"
    code, problem = await call(network, network.GP, "GET", f"/v1/messages/{mid}")
    assert code == 404


async def test_idempotency_key_returns_same_message(network: Network) -> None:
    first = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(idempotency_key="case-42"))
    again = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(idempotency_key="case-42"))
    assert first[0] == 202 and again[0] == 200
    assert first[1]["id"] == again[1]["id"]
    other = await call(network, network.COUNCIL, "POST", "/v1/messages",
                       referral(idempotency_key="case-42", purpose="safeguarding"))
    assert other[0] == 409 and other[1]["code"] == "conflict" and other[1]["field"] == "idempotency_key"


async def test_a_keyed_messages_id_cannot_be_worked_out_by_another_member(network: Network) -> None:
    """Idempotency keys are often guessable (a case number). The id of a keyed message is an HMAC
    of the key under the member's own secret, kept in its own state bucket (no other member can
    read it) and never aged out: not a public function of the key another member could compute
    and use first in the recipient's inbox. The same key names the same message on every
    instance and across a restart."""
    from psvn.gateway.server import GatewayServer
    from psvn.gateway.store import ID_SECRET_KEY, message_id_for

    council, gp = network.gateways[network.COUNCIL].gateway, network.gateways[network.GP].gateway
    status, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(idempotency_key="case-7"))
    assert status == 202
    _, st = await call(network, network.COUNCIL, "GET", f"/v1/messages/{body['id']}")
    what_anyone_could_work_out = str(uuid.uuid5(uuid.UUID("0b7e5d2a-4c1f-5e8a-9d3b-6f2a1c0e9b47"),
                                                f"{network.COUNCIL}\x00{st['system']}\x00case-7"))
    assert body["id"] != what_anyone_could_work_out
    assert council.store.id_secret is not None and gp.store.id_secret is not None
    assert len(council.store.id_secret) == 32 and council.store.id_secret != gp.store.id_secret
    assert message_id_for(council.store.id_secret, network.COUNCIL, st["system"], "case-7") == body["id"]
    assert council.store.kv is not None
    kept = await council.store.kv.get(ID_SECRET_KEY)
    assert kept is not None and (kept.headers or {}).get("Nats-TTL") == "never"  # the bucket's TTL never takes it
    old = network.gateways.pop(network.COUNCIL)
    await old.stop()
    network.gateways[network.COUNCIL] = restarted = await GatewayServer(old.config).start()
    assert restarted.gateway.store.id_secret == council.store.id_secret
    again = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(idempotency_key="case-7"))
    assert again[0] == 200 and again[1]["id"] == body["id"]


async def test_bad_inputs_name_field_and_rule(network: Network) -> None:
    council = network.COUNCIL
    cases: list[tuple[dict[str, Any] | bytes, int, str, str | None]] = [
        (referral(to="ods:XXX"), 422, "unknown-recipient", "to"),
        (referral(to="not an address"), 422, "invalid-envelope", "to"),
        (referral(type="fhir.r4.Banana"), 422, "unknown-type", "type"),
        (referral(payload={**REFERRAL, "status": None}), 422, "invalid-payload", None),
        (referral(purpose="marketing"), 403, "policy-denied", None),
        (b"{not json", 400, "malformed-json", "body"),
        ({"to": "ods:RYR"}, 422, "invalid-envelope", "type"),
        (referral(surprise=1), 422, "invalid-envelope", None),
    ]
    for body, status, code, field in cases:
        raw = body if isinstance(body, bytes) else None
        got_status, problem = await call(network, council, "POST", "/v1/messages",
                                         None if raw else body, raw=raw)
        assert (got_status, problem["code"]) == (status, code), (body, problem)
        assert problem["type"] == f"urn:psvn:problem:{code}"
        assert problem["detail"]
        if field:
            assert problem["field"] == field, problem
        assert problem["message_id"], problem  # every refusal names the message id it was audited under
    status, problem = await call(network, council, "POST", "/v1/messages",
                                 referral(payload={**REFERRAL, "status": None}))
    assert problem["violations"] and problem["violations"][0]["path"] == "/status"
    status, problem = await call(network, council, "POST", "/v1/messages", referral(purpose="marketing"))
    assert problem["rule_ids"] and problem["rule"] == ",".join(problem["rule_ids"])
    assert problem["detail"].startswith("egress: ") and problem["policy_version"] == 1
    # nothing rejected reached the trust
    _, inbox = await call(network, network.TRUST, "GET", "/v1/inbox")
    assert inbox["messages"] == []


@read_mostly
async def test_oversized_body_is_413(shared_network: Network) -> None:
    big = referral(payload={**REFERRAL, "note": [{"text": "x" * 1024}] * 3000})
    status, problem = await call(shared_network, shared_network.COUNCIL, "POST", "/v1/messages", big)
    assert status == 413 and problem["code"] == "payload-too-large" and problem["field"] == "body"


@read_mostly
async def test_no_client_certificate_is_refused(shared_network: Network) -> None:
    import ssl

    ctx = ssl.create_default_context(cafile=str(shared_network.ca))
    conn = aiohttp.TCPConnector(ssl=ctx)
    async with aiohttp.ClientSession(connector=conn) as s:
        for method, path in (("POST", "/v1/messages"), ("GET", "/v1/inbox"), ("GET", "/metrics")):
            async with s.request(method, shared_network.url(shared_network.COUNCIL) + path, json=referral()) as r:
                problem = await r.json(content_type=None)
                assert r.status == 401 and problem["code"] == "unauthenticated", (path, problem)
                assert problem["rule"] == "mutual-tls"


@read_mostly
async def test_system_of_another_org_is_forbidden(shared_network: Network) -> None:
    import ssl

    ctx = ssl.create_default_context(cafile=str(shared_network.ca))
    cert, key = shared_network.system_cert(shared_network.TRUST)
    ctx.load_cert_chain(str(cert), str(key))
    conn = aiohttp.TCPConnector(ssl=ctx)
    async with aiohttp.ClientSession(connector=conn) as s:
        async with s.post(shared_network.url(shared_network.COUNCIL) + "/v1/messages", json=referral()) as r:
            problem = await r.json(content_type=None)
            assert r.status == 403 and problem["code"] == "forbidden" and problem["rule"] == "system-org"


async def test_healthz_and_metrics(network: Network) -> None:
    code, body = await call(network, network.TRUST, "GET", "/healthz")
    assert code == 200 and body == {"status": "ok", "org": "ods:RYR", "policy_version": 1,
                                    "backbone": "connected", "refused_backbone_values": []}
    conn = aiohttp.TCPConnector(ssl=network.client_ssl(network.TRUST))
    async with aiohttp.ClientSession(connector=conn) as s:
        async with s.get(network.url(network.TRUST) + "/metrics") as r:
            text = await r.text()
    assert "psvn_policy_version 1.0" in text


def _unused(_: Path) -> None:  # keep Path import honest for type checkers
    return None


async def test_undelivered_message_expires_for_the_sender(network: Network) -> None:
    network.gateways[network.COUNCIL].gateway.config.gateway.expiry_sweep_seconds = 0.2
    gp = network.gateways.pop(network.GP)
    await gp.stop()  # the GP's gateway is down: nothing will take the message off the backbone
    status, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral(to=network.GP, ttl_seconds=1))
    assert status == 202
    final = await wait_status(network, network.COUNCIL, body["id"], "expired", timeout=15)
    assert [h["status"] for h in final["history"]] == ["accepted", "sent", "expired"]
    assert final["reason"].startswith("not delivered by")


async def test_policy_caps_time_to_live(network: Network) -> None:
    """The retention rule for hospital events allows at most 7 days' wait; a longer ttl is capped."""
    from psvn.gateway import core
    from psvn.protocol.envelope import SendRequest, parse_time

    gw = network.gateways[network.TRUST].gateway
    adt = ADT_A01
    req = SendRequest(to="gss:E06000043/adult-social-care", type="hl7v2.ADT_A01", purpose="direct-care",
                      payload=adt, ttl_seconds=30 * 86400)
    out = core.prepare_send(req, me=gw.identity, system="pas", snap=gw.snapshot, registry=gw.registry,
                            message_id="m-ttl")
    assert out.decision.max_ttl_seconds == 7 * 86400
    assert out.envelope.expires is not None
    waited = parse_time(out.envelope.expires) - parse_time(out.envelope.time)
    assert waited.total_seconds() == 7 * 86400


async def test_refusals_are_logged_without_payloads(network: Network) -> None:
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        await call(network, network.COUNCIL, "POST", "/v1/messages", referral(purpose="marketing"))
        await call(network, network.COUNCIL, "POST", "/v1/messages", raw=b"{oops")
    refused = [e for e in logs if e["event"] == "request refused"]
    assert [e["code"] for e in refused] == ["policy-denied", "malformed-json"]
    assert refused[0]["message_id"] and refused[1]["field"] == "body"
    assert "9434765919" not in repr(logs)  # the payload's NHS number never reaches the log


async def test_revoked_system_certificate_is_refused_without_a_restart(network: Network) -> None:
    """psvn certs revoke -> the gateway picks up the new CRL and refuses the certificate."""
    from psvn.certs import revocation
    from psvn.certs.ca import load_ca, load_cert

    gw = network.gateways[network.COUNCIL]
    status, _ = await call(network, network.COUNCIL, "GET", "/v1/inbox")
    assert status == 200
    cert, _key = network.system_cert(network.COUNCIL)
    revocation.revoke(load_ca(network.layout.pki), load_cert(cert))
    gw.reload_tls()  # what the CRL watch does when the file changes (every tls.crl_reload_seconds)
    refused = False
    try:
        status, _ = await call(network, network.COUNCIL, "GET", "/v1/inbox", fresh=True)
    except (aiohttp.ClientError, OSError):
        refused = True
    assert refused, f"a revoked certificate still got HTTP {status}"
    status, _ = await call(network, network.TRUST, "GET", "/v1/inbox")  # other systems are unaffected
    assert status == 200


async def test_crl_watch_reloads_when_the_file_changes(network: Network) -> None:
    from psvn.certs import revocation
    from psvn.certs.ca import load_ca

    gw = network.gateways[network.COUNCIL]
    gw.config.tls.crl_reload_seconds = 0.1
    assert gw._crl_task is not None
    gw._crl_task.cancel()
    gw._crl_task = asyncio.create_task(gw._watch_crl())
    before = gw._current
    revocation.refresh_crl(load_ca(network.layout.pki))
    import os
    import time

    crl = Path(gw.config.tls.crl or "")
    os.utime(crl, (time.time() + 5, time.time() + 5))
    for _ in range(100):
        if gw._current is not before:
            break
        await asyncio.sleep(0.05)
    assert gw._current is not before


async def test_state_lives_as_long_as_the_mail_and_closed_mail_leaves_memory(network: Network) -> None:
    """The state bucket keeps entries as long as the inbox keeps mail; acknowledged mail leaves the
    recipient's memory at once, its open entry purged with a marker that expires by itself."""

    from psvn.gateway.store import CLOSED_MARKER_TTL
    from psvn.protocol.subjects import state_bucket

    # the state bucket lives in the member's own account: only its own user sees it
    nc = await devnet.member_connect(network.layout, network.nats.url, network.TRUST, name="test")
    try:
        js = nc.jetstream()
        kv = await js.key_value(state_bucket(network.TRUST))
        status = await kv.status()
        assert status.ttl == 30 * 86400
        _code, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
        await wait_status(network, network.COUNCIL, body["id"], "delivered")
        store = network.gateways[network.TRUST].gateway.store
        assert body["id"] in store.open and store.held.get(network.COUNCIL, 0) > 0
        code, _ = await call(network, network.TRUST, "POST", f"/v1/inbox/{body['id']}/ack")
        assert code == 200
        assert body["id"] not in store.open and network.COUNCIL not in store.held and not store._locks
        stream, prefix = f"KV_{state_bucket(network.TRUST)}", f"$KV.{state_bucket(network.TRUST)}."
        marker = await js.get_msg(stream, subject=prefix + f"in.{body['id']}")
        assert (marker.headers or {}).get("KV-Operation") == "PURGE" and not marker.data
        assert (marker.headers or {}).get("Nats-TTL") in (f"{int(CLOSED_MARKER_TTL)}s", str(int(CLOSED_MARKER_TTL)))
        done = await kv.get(f"done.{body['id']}")
        assert msgspec.json.decode(done.value or b"")["status"] == "acknowledged"
        # still readable by key, and a second acknowledgement is answered from the closed entry
        code, again = await call(network, network.TRUST, "POST", f"/v1/inbox/{body['id']}/ack")
        assert code == 200 and again["status"] == "acknowledged"
    finally:
        await nc.close()


async def marker_gone(network: Network, message_id: str) -> None:
    """Wait until the server has removed the purge marker of the trust's closed ``in.<id>`` at
    its TTL (a condition, polled; the marker is checked to be one while it stands)."""
    from nats.js.errors import NotFoundError

    from psvn.protocol.subjects import state_bucket

    nc = await devnet.member_connect(network.layout, network.nats.url, network.TRUST, name="test")
    try:
        js = nc.jetstream()
        stream = f"KV_{state_bucket(network.TRUST)}"
        subject = f"$KV.{state_bucket(network.TRUST)}.in.{message_id}"
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            try:
                marker = await js.get_msg(stream, subject=subject)
            except NotFoundError:
                return
            assert (marker.headers or {}).get("KV-Operation") == "PURGE"
            assert asyncio.get_running_loop().time() < deadline, f"{subject}: the marker did not expire"
            await asyncio.sleep(0.1)
    finally:
        await nc.close()


async def test_closed_mail_that_comes_again_is_recognised_with_its_marker_and_after_it(
        network: Network, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closed mail that comes again (a redelivery, or a sender publishing an old id anew) is never
    filed twice: the one conditional write is refused while anything is kept under the id (the
    purge marker, then ``done.<id>``), and what is on file is read only then. Every write of
    ``in.<id>`` carries the one check ``*.<id>``, so instances on a clustered bucket cannot both
    pass two different checks."""
    from psvn.gateway import store as store_module
    from psvn.gateway.store import InRecord

    store = network.gateways[network.TRUST].gateway.store
    assert store.kv is not None
    reads: list[str] = []
    writes: list[tuple[str, int, str | None]] = []
    real_get, real_update = store._get, store.kv.update

    async def counted_get(key: str) -> Any:
        reads.append(key)
        return await real_get(key)

    async def counted_update(key: str, value: bytes, *, last: int, of: str | None = None,
                             timeout: float | None = None) -> int:
        writes.append((key, last, of))
        return await real_update(key, value, last=last, of=of, timeout=timeout)

    monkeypatch.setattr(store, "_get", counted_get)
    monkeypatch.setattr(store.kv, "update", counted_update)

    async def delivered_then_acknowledged() -> InRecord:
        _code, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
        await wait_status(network, network.COUNCIL, body["id"], "delivered")
        code, _ = await call(network, network.TRUST, "POST", f"/v1/inbox/{body['id']}/ack")
        assert code == 200
        return InRecord(id=body["id"], source=network.COUNCIL, to=network.TRUST, type="fhir.r4.ServiceRequest",
                        time="t", status="delivered", size=10, seq=1)

    again = await delivered_then_acknowledged()
    reads.clear()
    on_file = await store.file(again)  # recognised: the write refused, then what holds the id read
    assert isinstance(on_file, InRecord) and on_file.status == "acknowledged"
    assert reads == [f"*.{again.id}", f"done.{again.id}"]
    fresh = msgspec.structs.replace(again, id=str(uuid.uuid4()))
    reads.clear()
    assert await store.file(fresh) is None  # new mail: filed by the one write, nothing read
    assert reads == []
    await store.close(msgspec.structs.replace(fresh, status="acknowledged"))  # (not left open)

    monkeypatch.setattr(store_module, "CLOSED_MARKER_TTL", 1.0)  # these letters' markers live 1 s
    again = await delivered_then_acknowledged()
    await marker_gone(network, again.id)
    on_file = await store.file(again)  # the marker gone: done.<id> refuses the write and answers
    assert isinstance(on_file, InRecord) and on_file.status == "acknowledged"
    assert again.id not in store.open

    # an id with dots (a receipt's, quarantined) is recognised the same way
    dotted = InRecord(id=f"rcpt.{again.id}.acknowledged", source=network.COUNCIL, to=network.TRUST,
                      type="unknown", time="t", status="quarantined", size=1, seq=1)
    assert await store.file(dotted) is None  # filed, and closed at once
    await marker_gone(network, dotted.id)
    on_file = await store.file(dotted)
    assert isinstance(on_file, InRecord) and on_file.status == "quarantined"

    # another key under the id (the trust's own sent message out.<id>) refuses the first write,
    # never the mail: the next write expects that key's revision, under the same check
    mine = msgspec.structs.replace(again, id=str(uuid.uuid4()), status="delivered")
    revision = await real_update(f"out.{mine.id}", b"{}", last=0)
    reads.clear()
    writes.clear()
    assert await store.file(mine) is None
    assert reads == [f"*.{mine.id}", f"in.{mine.id}", f"done.{mine.id}"]
    assert writes == [(f"in.{mine.id}", 0, f"*.{mine.id}"), (f"in.{mine.id}", revision, f"*.{mine.id}")]
    on_file = await store.in_record(mine.id)
    assert on_file is not None and on_file.status == "delivered"
    writes.clear()
    assert await store.file(mine) == on_file  # and once only
    assert writes == [(f"in.{mine.id}", 0, f"*.{mine.id}")]
    await store.close(msgspec.structs.replace(mine, status="acknowledged"))

    # quarantined mail is filed closed: if the close fails half-way (an election), the
    # redelivery finds the entry filed and finishes the close, rather than taking it for gone
    junk = InRecord(id=str(uuid.uuid4()), source=network.COUNCIL, to=network.TRUST, type="unknown", time="t",
                    status="quarantined", size=1, seq=1, reason="invalid-envelope: x")
    real_close, failed = store.close, []

    async def close_fails_once(rec: InRecord) -> None:
        if not failed:
            failed.append(rec.id)
            raise RuntimeError("the state bucket's leader did not answer")
        await real_close(rec)

    monkeypatch.setattr(store, "close", close_fails_once)
    with pytest.raises(RuntimeError):
        await store.file(junk)  # (the ingress naks it: it comes again)
    on_file = await store.file(junk)
    assert isinstance(on_file, InRecord) and on_file.status == "quarantined"
    assert await store.closed_entry(junk.id) is not None and failed == [junk.id]


async def test_systems_see_only_their_mailboxes(network: Network) -> None:
    """The trust's PAS may read the research mailbox only (config gateway.system_mailboxes)."""
    trust = network.gateways[network.TRUST].gateway
    trust.config.gateway.system_mailboxes["pas"] = ["research"]
    _, main = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    await wait_status(network, network.COUNCIL, main["id"], "delivered")
    _, listed = await call(network, network.TRUST, "GET", "/v1/inbox")
    assert listed["messages"] == []
    for method, path in (("GET", f"/v1/inbox/{main['id']}"), ("POST", f"/v1/inbox/{main['id']}/ack")):
        status, problem = await call(network, network.TRUST, method, path)
        assert (status, problem["code"], problem["rule"]) == (403, "forbidden", "mailbox-access")
    trust.config.gateway.system_mailboxes["pas"] = ["research", ""]
    _, listed = await call(network, network.TRUST, "GET", "/v1/inbox")
    assert [m["id"] for m in listed["messages"]] == [main["id"]]


async def audit_records(network: Network, message_ids: set[str], *, at_least: int) -> list[dict[str, Any]]:
    """The AUDIT stream's records about ``message_ids`` (polled until ``at_least`` are stored)."""
    from nats.js.errors import NotFoundError

    from psvn.backbone import auditlog
    from psvn.protocol.subjects import audit_stream

    nc = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        js = nc.jetstream()
        records: list[dict[str, Any]] = []
        for _ in range(100):
            records = []
            for org in network.gateways:  # each member's audit stream
                try:
                    info = await js.stream_info(audit_stream(org))
                except NotFoundError:
                    continue
                for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1):
                    try:
                        raw = await js.get_msg(audit_stream(org), seq)
                    except NotFoundError:
                        continue
                    records += [rec for rec in auditlog.records(raw.data) if rec.get("message_id") in message_ids]
            if len(records) >= at_least:
                break
            await asyncio.sleep(0.05)
        return records
    finally:
        await nc.close()


async def test_sent_and_delivered_are_audited_once_each_on_the_audit_stream(network: Network) -> None:
    """Audit records go out sharing the next backbone write, acknowledged in the background; the
    AUDIT stream stores each one once (metadata only, never the payload)."""
    _, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    mid = body["id"]
    await wait_status(network, network.COUNCIL, mid, "delivered")
    records = await audit_records(network, {mid}, at_least=2)
    assert sorted((r["event"], r["org"]) for r in records) == [("delivered", network.TRUST),
                                                                ("sent", network.COUNCIL)]
    assert all("payload" not in r for r in records)


async def test_audit_records_ride_out_an_audit_stream_outage(network: Network) -> None:
    """While the AUDIT stream is gone, audit publishes find no stream; they are retried (one
    Nats-Msg-Id each) and stored exactly once when it is back. Nothing is counted as lost."""

    from psvn.broker import provision
    from psvn.protocol.subjects import audit_stream

    nc = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        js = nc.jetstream()
        await js.delete_stream(audit_stream(network.COUNCIL))
        _, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
        assert body["id"]
        await wait_status(network, network.COUNCIL, body["id"], "delivered")  # the message is not held up
        council = network.gateways[network.COUNCIL].gateway
        assert council.audit_log.pending  # the "sent" record is still waiting for a stream to store it
        await provision.provision_member(js, network.COUNCIL)  # the council's audit stream is back
    finally:
        await nc.close()
    await audit_records(network, {body["id"]}, at_least=2)
    for _ in range(100):  # let every retry finish, then count
        if not any(gw.gateway.audit_log.pending for gw in network.gateways.values()):
            break
        await asyncio.sleep(0.1)
    records = await audit_records(network, {body["id"]}, at_least=2)
    assert sorted(r["event"] for r in records) == ["delivered", "sent"]  # once each
    lost = sum(gw.gateway.metrics.registry.get_sample_value("psvn_audit_records_lost_total") or 0
               for gw in network.gateways.values())
    assert lost == 0


async def test_every_refused_send_has_a_message_id_and_an_audit_record(network: Network) -> None:
    """Even a request that never became a message (malformed, too deep, too big, no envelope)."""
    deep = json.dumps(referral(payload="X")).replace('"X"', "[" * 50_000 + "]" * 50_000).encode()
    big = json.dumps(referral(payload={**REFERRAL, "note": [{"text": "x" * 1024}] * 3000})).encode()
    cases = [(b"{not json", 400, "malformed-json", "json-syntax"),
             (deep, 422, "invalid-payload", "max-depth"),
             (big, 413, "payload-too-large", "max-body-bytes"),
             (json.dumps({"to": "ods:RYR"}).encode(), 422, "invalid-envelope", "request-schema"),
             (json.dumps(referral(purpose="marketing")).encode(), 403, "policy-denied", None)]
    ids: dict[str, str] = {}
    for raw, status, code, rule in cases:
        got, problem = await call(network, network.COUNCIL, "POST", "/v1/messages", raw=raw)
        assert (got, problem["code"]) == (status, code), problem
        assert rule is None or problem["rule"] == rule
        assert problem["message_id"], problem
        ids[problem["message_id"]] = code
    records = await audit_records(network, set(ids), at_least=len(ids))
    assert sorted((r["message_id"], r["code"]) for r in records) == sorted(ids.items())
    assert all(r["event"] == "rejected" and r["org"] == network.COUNCIL for r in records)
    # and the gateway is unharmed
    after, _ = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    assert after == 202


def test_the_open_mail_index_ignores_an_echo_of_the_revision_it_holds() -> None:
    """Our own write is applied at once; the watch's echo of the same revision (same entry) is not
    decoded again, an older one never wins, a newer one does; a purge lets the mail (and the
    sender's held bytes) go, and an entry left open by a half-done close is not listed."""
    import msgspec

    from psvn.gateway.store import InRecord, StateStore

    def rec(status: str, size: int = 10) -> bytes:
        return msgspec.json.encode(InRecord(id="m1", source="ods:RYR", to="gss:E06000043", type="t",
                                            time="c", status=status, size=size, seq=1))

    store = StateStore("gss:E06000043")
    store._apply_open("in.m1", rec("delivered", 10), 7)
    store._apply_open("in.m1", b"not json: an echo is not decoded", 7)
    store._apply_open("in.m1", rec("delivered", 99), 6)
    assert store.open["m1"].size == 10 and store.held == {"ods:RYR": 10}
    store._apply_open("in.m1", rec("delivered", 20), 8)
    assert store.open["m1"].size == 20 and store.held == {"ods:RYR": 20}
    store._apply_open("in.m1", rec("quarantined"), 9)
    assert "m1" not in store.open and store.held == {}
    store._apply_open("in.m1", rec("delivered", 5), 10)
    store._apply_open("in.m1", None, 11)
    assert "m1" not in store.open and store.held == {}


def test_open_mail_shares_the_strings_that_repeat_and_keys_the_index_by_the_records_id() -> None:
    """Open mail is held in memory (it is open work): each letter keeps one copy of the values
    every letter repeats (sender, type, purpose, ...), bounded in how many it shares, and the
    index's key is the record's own id string rather than a second copy."""
    from psvn.gateway import store as store_module
    from psvn.gateway.store import InRecord, StateStore

    def letter(ident: str, source: str = "gss:E06000043/adult-social-care") -> bytes:
        return msgspec.json.encode(InRecord(id=ident, source=source, to="ods:RYR", type="fhir.r4.ServiceRequest",
                                            time="c", status="delivered", size=10, seq=1, purpose="direct-care"))

    store = StateStore("ods:RYR")
    store._apply_open("in.m1", letter("m1"), 1)
    store._apply_open("in.m2", letter("m2"), 2)
    a, b = store.open["m1"], store.open["m2"]
    assert (a.source, a.type, a.purpose) == ("gss:E06000043/adult-social-care", "fhir.r4.ServiceRequest",
                                             "direct-care")
    assert a.source is b.source and a.type is b.type and a.purpose is b.purpose and a.to is b.to
    assert next(k for k in store.open if k == "m2") is b.id  # the key is the record's id, not a copy
    assert store.held == {"gss:E06000043": 20}
    # the shared table is bounded: flooded with values that never repeat (a sender's made-up
    # system names), it starts again, and what repeats is shared again after it
    limit = store_module.SHARED_STRINGS
    for i in range(2 * limit):
        store._apply_open(f"in.x{i}", letter(f"x{i}", source=f"gss:E{i:08d}/sys"), 10 + i)
        assert len(store._shared) <= limit
    assert len(store.open) == 2 * limit + 2
    late_1, late_2 = store.open[f"x{2 * limit - 2}"], store.open[f"x{2 * limit - 1}"]
    assert late_1.source == f"gss:E{2 * limit - 2:08d}/sys" and late_1.type is late_2.type


async def test_a_restricted_system_sees_only_the_statuses_of_what_it_sent(network: Network) -> None:
    """A system limited by gateway.system_mailboxes reads only its own sends' statuses."""
    import ssl

    from psvn.certs.ca import issue_system, load_ca

    council = network.gateways[network.COUNCIL]
    issue_system(load_ca(network.layout.pki), network.COUNCIL, "case-mgmt",
                     network.layout.org_dir(network.COUNCIL) / "systems")
    cert, key = network.layout.system_cert(network.COUNCIL, "case-mgmt")
    ctx = ssl.create_default_context(cafile=str(network.ca))
    ctx.load_cert_chain(str(cert), str(key))

    async def as_case_mgmt(method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s, s.request(
                method, council.url + path, json=body) as r:
            return r.status, await r.json(content_type=None)

    _, theirs = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())  # adult-social-care
    code, mine = await as_case_mgmt("POST", "/v1/messages", referral())
    assert code == 202, mine
    assert (await as_case_mgmt("GET", f"/v1/messages/{theirs['id']}"))[0] == 200  # not restricted yet
    council.gateway.config.gateway.system_mailboxes["case-mgmt"] = [""]
    try:
        code, problem = await as_case_mgmt("GET", f"/v1/messages/{theirs['id']}")
        assert (code, problem["code"], problem["rule"], problem["message_id"]) == (
            403, "forbidden", "sender-system", theirs["id"])
        code, own = await as_case_mgmt("GET", f"/v1/messages/{mine['id']}")
        assert code == 200 and own["system"] == "case-mgmt"
        code, other = await call(network, network.COUNCIL, "GET", f"/v1/messages/{mine['id']}")
        assert code == 200 and other["system"] == "case-mgmt"  # an unrestricted system sees all
        # and so do the lists: the restricted system lists only what it sent, the other all of it
        code, listed = await as_case_mgmt("GET", "/v1/messages")
        assert code == 200 and [m["id"] for m in listed["messages"]] == [mine["id"]]
        code, listed = await call(network, network.COUNCIL, "GET", "/v1/messages")
        assert code == 200 and {m["id"] for m in listed["messages"]} == {mine["id"], theirs["id"]}
    finally:
        council.gateway.config.gateway.system_mailboxes.pop("case-mgmt", None)


async def test_closed_mail_replayed_to_the_ingress_after_its_marker_is_recognised_not_filed_again(
        network: Network, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same, through the trust's ingress: the stored message itself comes again (as a sender
    publishing an old id anew after the dedupe window would make it) once the mail is closed and
    its marker gone. The closed entry, read as the handling starts, answers: the sender is told
    "acknowledged" again and nothing is filed open."""
    from nats.aio.msg import Msg

    from psvn.gateway import store as store_module
    from psvn.protocol.subjects import inbox_stream

    trust = network.gateways[network.TRUST].gateway
    monkeypatch.setattr(store_module, "CLOSED_MARKER_TTL", 1.0)
    _code, body = await call(network, network.COUNCIL, "POST", "/v1/messages", referral())
    mid = body["id"]
    await wait_status(network, network.COUNCIL, mid, "delivered")
    assert (await call(network, network.TRUST, "POST", f"/v1/inbox/{mid}/ack"))[0] == 200
    closed = await trust.store.in_record(mid)
    assert closed is not None and closed.status == "acknowledged"
    nc = await devnet.broker_connect(network.layout, network.nats.url)
    try:
        stored = await nc.jetstream().get_msg(inbox_stream(network.TRUST), closed.seq)
    finally:
        await nc.close()
    await marker_gone(network, mid)
    replay = Msg(trust.link.nc, subject=stored.subject or "", data=stored.data or b"",  # type: ignore[arg-type]
                 headers={"Nats-Msg-Id": mid},
                 reply=f"$JS.ACK.{inbox_stream(network.TRUST)}.inbox.2.{closed.seq + 1000}.2.{time.time_ns()}.0")
    owed: list[tuple[str, str, str]] = []

    def owe(message_id: str, status: str, to_org: str, *, reason: str | None = None,
            rule_ids: list[str] | None = None) -> None:
        owed.append((message_id, status, to_org))

    await trust.ingress._handle(replay, owe)
    assert owed == [(mid, "acknowledged", network.COUNCIL)]  # recognised: the receipt says it again
    assert await trust.store._get(f"in.{mid}") is None  # nothing filed open again
    assert mid not in trust.store.open
