"""broker.jsfast against a real backbone: one nats-server with the network's accounts, streams and
buckets (no gateways), reached as the broker (the network account, ``$JS.API``) and as a member
(its own account and inbox prefix; the network's API imported under ``OPERATOR_JS_PREFIX``).

``python -m tests.backbone.test_jsfast`` runs the micro-benchmark against nats-py instead."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import (
    APIError,
    BadRequestError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)

from psvn import devnet
from psvn.backbone import jsfast
from psvn.backbone.buckets import provision_state_bucket
from psvn.backbone.connect import connect
from psvn.backbone.jsfast import JetStreamOps, NoResponders, already_gone, parse_headers
from psvn.broker import natsjwt
from psvn.broker.accounts import BackboneAccounts
from psvn.broker.server import NatsServer
from psvn.certs import tls
from psvn.core.addresses import token
from psvn.devnet import EXAMPLE_MEMBERS, Layout
from psvn.protocol.subjects import (
    CONSENT_BUCKET,
    OPERATOR_JS_PREFIX,
    inbox_prefix,
    inbox_stream,
    msg_subject,
    state_bucket,
)

COUNCIL, TRUST = "gss:E06000043", "ods:RYR"
STREAM = "JSFAST"  # a test stream in the network account


class Backbone:
    def __init__(self, layout: Layout, server: NatsServer) -> None:
        self.layout, self.server = layout, server

    @property
    def url(self) -> str:
        return self.server.url

    def log(self) -> str:
        return self.server.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backbone]:
    layout = Layout(tmp_path_factory.mktemp("jsfast"))
    members = list(EXAMPLE_MEMBERS)
    devnet.make_pki(layout, members)
    server = devnet.nats_server(layout, [m.org for m in members], port=0, monitor_port=0).start()
    try:
        asyncio.run(devnet.provision_backbone(layout, server.url, members))
        yield Backbone(layout, server)
    finally:
        server.stop()


@pytest.fixture
async def broker(backbone: Backbone) -> AsyncIterator[NATS]:
    nc = await devnet.broker_connect(backbone.layout, backbone.url, name="jsfast-test")
    js = nc.jetstream()
    try:
        await js.stream_info(STREAM)
    except NotFoundError:
        await js.add_stream(name=STREAM, subjects=["jsfast.>"], allow_msg_ttl=True, allow_direct=True)
    yield nc
    await nc.close()


@pytest.fixture
async def ops(broker: NATS) -> AsyncIterator[JetStreamOps]:
    o = await JetStreamOps(broker).start()
    yield o
    await o.close()


async def member(backbone: Backbone, org: str) -> NATS:
    """A member's connection as its gateway makes it (its own inbox prefix), as a user of the
    member's account that may subscribe under that prefix only: a reply subscription anywhere
    else is a permission violation the server logs (and the requests go unanswered)."""
    layout = backbone.layout
    seed = natsjwt.new_seed("user")
    jwt = natsjwt.user_jwt(BackboneAccounts(layout.pki).member_seed(org), seed, name=f"jsfast {org}",
                           sub_allow=[f"{inbox_prefix(org)}.>"])
    creds = layout.root / f"jsfast-{token(org)}.creds"
    natsjwt.write_private(creds, natsjwt.creds(jwt, seed))
    d = layout.org_dir(org)
    return await connect(backbone.url, tls.client_context(layout.ca, d / "nats.crt", d / "nats.key"),
                                   name="jsfast-member", user_credentials=str(creds), inbox_prefix=inbox_prefix(org))


def subj(name: str) -> str:
    return f"jsfast.{name}.{time.monotonic_ns()}"


# -- publish ----------------------------------------------------------------------------------
async def test_publish_acks_with_the_stream_sequence_and_dedupes(ops: JetStreamOps, broker: NATS) -> None:
    s = subj("pub")
    first = await ops.publish(s, b"one", headers={"Nats-Msg-Id": s})
    again = await ops.publish(s, b"one", headers={"Nats-Msg-Id": s})
    assert (first.stream, first.duplicate) == (STREAM, False) and first.seq > 0
    assert (again.seq, again.duplicate) == (first.seq, True)
    got = await broker.jetstream().get_msg(STREAM, subject=s)  # as nats-py reads it
    assert (got.seq, got.data, got.headers) == (first.seq, b"one", {"Nats-Msg-Id": s})


async def test_a_wrong_last_sequence_is_nats_pys_error(ops: JetStreamOps) -> None:
    s = subj("cas")
    ack = await ops.publish(s, b"1", headers={"Nats-Expected-Last-Subject-Sequence": "0"})
    with pytest.raises(KeyWrongLastSequenceError) as err:
        await ops.publish(s, b"2", headers={"Nats-Expected-Last-Subject-Sequence": "0"})
    assert isinstance(err.value, BadRequestError) and err.value.err_code == 10071 and err.value.code == 400
    assert (await ops.publish(s, b"2", headers={"Nats-Expected-Last-Subject-Sequence": str(ack.seq)})).seq > ack.seq


async def test_other_refusals_are_mapped_like_nats_py(ops: JetStreamOps) -> None:
    s = subj("big")
    with pytest.raises(BadRequestError) as err:  # a TTL on a stream that does not allow them: 400
        await ops.publish(s, b"x", headers={"Nats-TTL": "nonsense"})
    assert err.value.err_code is not None and not isinstance(err.value, KeyWrongLastSequenceError)


async def test_no_stream_is_no_responders(ops: JetStreamOps) -> None:
    with pytest.raises(NoResponders) as err:
        await ops.publish("nobody.stores.this", b"x", timeout=2)
    # every except clause written around nats-py catches it
    for cls in (nats.errors.NoRespondersError, NoStreamResponseError, ServiceUnavailableError, APIError):
        assert isinstance(err.value, cls), cls
    assert ops.pending == 0


async def test_an_unanswered_request_times_out_and_is_forgotten(ops: JetStreamOps, broker: NATS) -> None:
    silent = await broker.subscribe("jsfast-silent.x")  # takes the request, never answers
    try:
        t0 = time.monotonic()
        with pytest.raises(nats.errors.TimeoutError):
            await ops.publish("jsfast-silent.x", b"x", timeout=0.2)
        took = time.monotonic() - t0
        assert 0.2 <= took < 0.6, took
        assert ops.pending == 0
        # answered late: ignored, and the next request is still routed to its own future
        req = await silent.next_msg(timeout=1)
        await broker.publish(req.reply, b'{"stream":"LATE","seq":1}')
        assert (await ops.publish(subj("after"), b"y")).stream == STREAM
    finally:
        await silent.unsubscribe()


async def test_deadlines_are_watched_while_any_request_waits_and_not_after(ops: JetStreamOps, broker: NATS) -> None:
    """A short request times out while a long one waits beside it; the long one still gets its
    answer; once nothing waits, nothing is left watching (no timer, no task of the object's)."""
    silent = await broker.subscribe("jsfast-silent.w.>")
    try:
        long = asyncio.create_task(ops.publish("jsfast-silent.w.long", b"x", timeout=30))
        async with asyncio.timeout(5):  # (unwatched, it would wait for ever)
            with pytest.raises(nats.errors.TimeoutError):
                await ops.publish("jsfast-silent.w.short", b"x", timeout=0.2)
        assert ops.pending == 1 and not long.done()
        asked = {m.subject: m for m in [await silent.next_msg(timeout=1), await silent.next_msg(timeout=1)]}
        await broker.publish(asked["jsfast-silent.w.long"].reply, f'{{"stream":"{STREAM}","seq":7}}'.encode())
        assert (await long).seq == 7
        assert ops.pending == 0
        # the watch's last look finds nothing waiting, and it stops
        await _until(lambda: ops._sweep_timer is None, "the deadline watch stopped")
        assert not [t for t in asyncio.all_tasks() if "jsfast" in t.get_name()]
    finally:
        await silent.unsubscribe()


async def test_a_request_made_as_the_object_closes_is_refused_not_left_waiting(
        broker: NATS, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closed while a first request's start is subscribing: the request is refused (connection
    closed), not left waiting with no deadline watched, and no subscription is left behind."""
    real = jsfast.subscribe_handler

    async def subscribing_takes_a_turn(nc: NATS, subject: str, handler: Any) -> Any:
        await asyncio.sleep(0)  # (psvn's client subscribes without yielding; another might not)
        return await real(nc, subject, handler)

    monkeypatch.setattr(jsfast, "subscribe_handler", subscribing_takes_a_turn)
    ops = JetStreamOps(broker, timeout=0.5)
    request = asyncio.ensure_future(ops.publish(subj("closing"), b"x"))
    await asyncio.sleep(0)  # the request's start is subscribing
    await ops.close()
    async with asyncio.timeout(5):
        with pytest.raises(nats.errors.ConnectionClosedError):
            await request
    assert ops.pending == 0 and ops._sub is None


async def test_a_cancelled_caller_leaves_nothing_pending(ops: JetStreamOps, broker: NATS) -> None:
    silent = await broker.subscribe("jsfast-silent.y")
    try:
        task = asyncio.create_task(ops.publish("jsfast-silent.y", b"x", timeout=30))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ops.pending == 0
    finally:
        await silent.unsubscribe()


# -- stream message get (the leader's read) -----------------------------------------------------
async def test_msg_get_reads_the_last_message_with_its_headers(ops: JetStreamOps) -> None:
    s = subj("get")
    await ops.publish(s, b"old")
    headers = {"A": "1", "Url": "https://x.example:8443/a:b", "B-Two": "two  words", "Status": "404"}
    ack = await ops.publish(s, b"new\r\n", headers=headers)
    got = await ops.msg_get(STREAM, subject=s)
    assert got is not None
    assert (got.subject, got.seq, got.data, got.headers) == (s, ack.seq, b"new\r\n", headers)
    assert abs(got.time - datetime.now(UTC)) < timedelta(seconds=10)
    by_seq = await ops.msg_get(STREAM, seq=ack.seq)
    assert by_seq == got
    await ops.publish(s + ".bare", b"")
    bare = await ops.msg_get(STREAM, subject=s + ".bare")
    assert bare is not None and bare.headers is None and bare.data == b""


async def test_msg_get_of_nothing_is_none_and_of_no_stream_not_found(ops: JetStreamOps) -> None:
    assert await ops.msg_get(STREAM, subject=subj("never")) is None
    with pytest.raises(NotFoundError) as err:
        await ops.msg_get("NO_SUCH_STREAM", subject="x")
    assert err.value.err_code == 10059


# -- delete: removed on the hot path, erased on demand -------------------------------------------
def _on_disk(backbone: Backbone, marker: bytes) -> bool:
    """Whether ``marker`` is in any of the test stream's message block files."""
    blocks = [p for p in backbone.layout.root.rglob("*.blk") if f"/{STREAM}/" in str(p)]
    return any(marker in p.read_bytes() for p in blocks)


async def _until(check: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


async def test_delete_removes_without_erasing_unless_asked_and_a_second_delete_is_not_found(
        ops: JetStreamOps, backbone: Backbone) -> None:
    """nats-server erases (overwrites on disk, rewriting the whole block) unless told not to: the
    hot path's deletes must not ask for that, retention's must."""
    kept, erased = f"removed-{time.monotonic_ns()}".encode(), f"erased-{time.monotonic_ns()}".encode()
    a = await ops.publish(subj("del"), kept)
    b = await ops.publish(subj("del"), erased)
    await ops.publish(subj("del"), b"live")  # the block keeps a live message, so it stays
    await _until(lambda: _on_disk(backbone, kept) and _on_disk(backbone, erased), "both written to disk")

    assert await ops.delete_msg(STREAM, a.seq) is True
    assert await ops.direct_get(STREAM, seq=a.seq) is None
    assert _on_disk(backbone, kept)  # removed from the stream, its sealed bytes left to compaction

    assert await ops.delete_msg(STREAM, b.seq, erase=True) is True
    assert await ops.direct_get(STREAM, seq=b.seq) is None
    await _until(lambda: not _on_disk(backbone, erased), "the erased message overwritten on disk")

    for seq in (a.seq, b.seq):  # gone already: the server says so in one of two ways, both known
        with pytest.raises(APIError) as err:
            await ops.delete_msg(STREAM, seq)
        assert err.value.err_code in (10043, 10057) and already_gone(err.value), err.value.description


# -- direct get (any replica), judged by the server's headers -------------------------------------
async def test_direct_get_by_subject_and_by_sequence(ops: JetStreamOps) -> None:
    s = subj("direct")
    ack = await ops.publish(s, b"payload", headers={"X-Colon": "a: b: c"})
    by_subject = await ops.direct_get(STREAM, subject=s)
    by_seq = await ops.direct_get(STREAM, seq=ack.seq)
    for got in (by_subject, by_seq):
        assert got is not None
        assert (got.subject, got.seq, got.data) == (s, ack.seq, b"payload")
        assert got.headers is not None and got.headers["X-Colon"] == "a: b: c"
        assert got.headers["Nats-Stream"] == STREAM
        assert abs(got.time - datetime.now(UTC)) < timedelta(seconds=10)
    assert await ops.direct_get(STREAM, subject=subj("missing")) is None
    assert await ops.direct_get(STREAM, seq=10**9) is None


@pytest.mark.parametrize("status", ["404", "503", "408", "100"])
async def test_a_stored_status_header_is_a_message_not_a_status(ops: JetStreamOps, broker: NATS,
                                                                status: str) -> None:
    """A publisher's ``Status`` header on an empty message: still the message (nats-py's direct
    get would say "not found", or "no responders")."""
    s = subj("forged")
    ack = await ops.publish(s, b"", headers={"Status": status, "Description": "Message Not Found"})
    for got in (await ops.direct_get(STREAM, subject=s), await ops.direct_get(STREAM, seq=ack.seq)):
        assert got is not None and got.seq == ack.seq and got.data == b""
        assert got.headers is not None and got.headers["Status"] == status
    if status == "404":
        with pytest.raises(NotFoundError):  # what the replaced read did with it
            await broker.jetstream().get_msg(STREAM, subject=s, direct=True)


async def test_forged_server_headers_do_not_override_the_servers(ops: JetStreamOps) -> None:
    s = subj("forged-seq")
    ack = await ops.publish(s, b"x", headers={"Nats-Sequence": "1", "Nats-Subject": "elsewhere"})
    got = await ops.direct_get(STREAM, subject=s)
    assert got is not None and (got.seq, got.subject) == (ack.seq, s)


async def test_direct_get_of_no_stream_is_no_responders(ops: JetStreamOps) -> None:
    with pytest.raises(NoResponders):
        await ops.direct_get("NO_SUCH_STREAM", subject="x", timeout=2)


# -- many at once, one subscription -------------------------------------------------------------
async def test_two_thousand_in_flight_each_resolve_to_their_own(ops: JetStreamOps, broker: NATS) -> None:
    s, n = subj("many"), 2000
    before = len(broker._subs)
    acks = await asyncio.gather(*(ops.publish(f"{s}.{i}", str(i).encode()) for i in range(n)))
    assert len({a.seq for a in acks}) == n
    got = await asyncio.gather(*(ops.direct_get(STREAM, seq=a.seq) for a in acks))
    assert [g.data if g else None for g in got] == [str(i).encode() for i in range(n)]
    last = await asyncio.gather(*(ops.msg_get(STREAM, subject=f"{s}.{i}") for i in range(0, n, 7)))
    assert [g.seq if g else None for g in last] == [acks[i].seq for i in range(0, n, 7)]
    assert len(broker._subs) == before and ops.pending == 0


async def test_one_subscription_however_many_calls(broker: NATS) -> None:
    before = len(broker._subs)
    ops = JetStreamOps(broker)
    s = subj("subs")
    for i in range(50):
        await ops.publish(s, str(i).encode())
        await ops.direct_get(STREAM, subject=s)
        await ops.msg_get(STREAM, subject=s)
    assert len(broker._subs) == before + 1
    await ops.close()
    assert len(broker._subs) == before


async def test_replies_skip_nats_pys_queue_on_the_backbone_client_and_not_elsewhere(
        broker: NATS, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the backbone's client (``connect``) the reply subscription hands each reply to its
    future as the reading loop parses it; on any other nats-py client it goes through nats-py's
    queue and task. Both resolve each caller to its own answer, headers and all, and a closed
    one leaves nothing registered."""
    from psvn.backbone import connect as backbone_connect
    from psvn.backbone.connect import CoalescingClient

    assert isinstance(broker, CoalescingClient)
    direct = await JetStreamOps(broker).start()
    monkeypatch.setattr(backbone_connect, "CoalescingClient", type("Other", (), {}))  # as for a plain client
    queued = await JetStreamOps(broker).start()
    queued_up = {direct._sub._id: 0, queued._sub._id: 0}  # messages each put on nats-py's queue
    for sub in (direct._sub, queued._sub):
        def put(msg: object, sub: object = sub, put: object = sub._pending_queue.put_nowait) -> None:
            queued_up[sub._id] += 1  # type: ignore[attr-defined]
            put(msg)  # type: ignore[operator]
        sub._pending_queue.put_nowait = put
    try:
        assert direct._sub._id in broker._direct and queued._sub._id not in broker._direct
        s = subj("dispatch")
        for ops in (direct, queued):
            acks = await asyncio.gather(*(ops.publish(f"{s}.{i}", str(i).encode(), headers={"N": str(i)})
                                          for i in range(200)))
            got = await asyncio.gather(*(ops.direct_get(STREAM, seq=a.seq) for a in acks))
            assert [(g.data, (g.headers or {}).get("N")) for g in got if g] == [(str(i).encode(), str(i))
                                                                               for i in range(200)]
            assert ops.pending == 0
        assert queued_up == {direct._sub._id: 0, queued._sub._id: 400}  # 200 acks and 200 gets each
        assert direct._sub.delivered == 400
    finally:
        sid = direct._sub._id
        await direct.close()
        await queued.close()
    assert sid not in broker._direct and sid not in broker._subs


async def test_a_failing_direct_handler_is_reported_and_reading_goes_on(broker: NATS) -> None:
    """A direct handler runs in the connection's reading loop, which nats-py stops on an error:
    a handler's exception goes to the connection's error callback instead, and what follows is
    read and handled (the next message, and a request's answer on the same connection)."""
    from psvn.backbone.connect import CoalescingClient

    assert isinstance(broker, CoalescingClient)
    errors: list[BaseException] = []
    seen: list[bytes] = []
    kept = broker._error_cb

    async def on_error(exc: BaseException) -> None:
        errors.append(exc)

    def handler(msg: object) -> None:
        data = msg.data  # type: ignore[attr-defined]
        if data == b"boom":
            raise RuntimeError("a handler's bug")
        seen.append(data)

    broker._error_cb = on_error
    s = subj("failing")
    sub = await broker.subscribe_direct(s, handler)
    try:
        for data in (b"boom", b"after"):
            await broker.publish(s, data)
        await broker.flush()
        await _until(lambda: seen == [b"after"], "the message after the failure")
        assert [str(e) for e in errors] == ["a handler's bug"]
        ops = await JetStreamOps(broker).start()
        assert (await ops.publish(subj("still-reading"), b"x")).seq > 0
        await ops.close()
    finally:
        broker._error_cb = kept
        await sub.unsubscribe()


def test_the_nats_py_internals_the_backbone_client_overrides_are_as_it_expects() -> None:
    """``CoalescingClient`` overrides and calls private parts of nats-py (checked on 2.16): an
    upgrade that renames or reshapes one fails here, not as a gateway that stops reading."""
    import inspect

    from nats.aio.subscription import Subscription

    def params(fn: object) -> list[str]:
        return list(inspect.signature(fn).parameters)  # type: ignore[arg-type]

    assert params(NATS._process_msg) == ["self", "sid", "subject", "reply", "data", "headers"]
    assert inspect.iscoroutinefunction(NATS._process_msg) and inspect.iscoroutinefunction(NATS._process_headers)
    assert params(NATS._build_message) == ["self", "sid", "subject", "reply", "data", "headers"]
    assert params(NATS._remove_sub) == ["self", "sid", "max_msgs"]
    assert inspect.iscoroutinefunction(NATS._flusher) and not inspect.iscoroutinefunction(NATS._remove_sub)
    sub = Subscription(conn=NATS(), id=7, subject="x")
    assert (sub._id, sub._received, sub._max_msgs) == (7, 0, 0)
    client = NATS()
    assert (client._pending, client._pending_data_size, client._subs) == ([], 0, {})


# -- a member, as its gateway connects -----------------------------------------------------------
async def test_a_member_reads_and_writes_within_its_permissions(backbone: Backbone, broker: NATS) -> None:
    """Its own state bucket (its ``$JS.API``), the network's inbox stream and consent bucket
    (imported API): the replies arrive under its own inbox prefix, no permission violation."""
    nc = await member(backbone, TRUST)
    council = await member(backbone, COUNCIL)
    own = JetStreamOps(nc)
    net = JetStreamOps(nc, api_prefix=OPERATOR_JS_PREFIX)
    try:
        await provision_state_bucket(nc.jetstream(), TRUST)
        assert bytes(nc._inbox_prefix).decode() == inbox_prefix(TRUST)
        kv = own.kv(state_bucket(TRUST))
        key = f"in.{time.monotonic_ns()}"
        rev = await kv.create(key, b"v1")
        with pytest.raises(KeyWrongLastSequenceError):
            await kv.create(key, b"again")
        with pytest.raises(KeyWrongLastSequenceError):
            await kv.update(key, b"stale", last=rev - 1 if rev > 1 else rev + 5)
        rev2 = await kv.update(key, b"v2", last=rev)
        got = await kv.get(key)
        assert got is not None and (got.data, got.seq) == (b"v2", rev2)
        assert await kv.put(f"done.{key}", b"d") > rev2
        await kv.purge(key, msg_ttl=60)
        marker = await kv.get(key)
        assert marker is not None and marker.headers is not None
        assert marker.headers["KV-Operation"] == "PURGE" and marker.headers["Nats-TTL"] == "60"
        with pytest.raises(KeyWrongLastSequenceError):  # a purged key is not created again
            await kv.create(key, b"v3")
        # created only if no key under the id ever held anything (a member's own bucket)
        mid = f"m{time.monotonic_ns()}"
        assert await kv.update(f"in.{mid}", b"filed", last=0, of=f"*.{mid}") > 0
        other = f"m{time.monotonic_ns()}"
        await kv.put(f"done.{other}", b"closed")
        with pytest.raises(KeyWrongLastSequenceError):  # another key under the id refuses it
            await kv.update(f"in.{other}", b"again", last=0, of=f"*.{other}")
        assert await kv.get(f"in.{other}") is None
        assert await kv.update(f"in.{other}", b"alone", last=0) > 0  # the key alone was free

        # mail to the trust, read by sequence through the imported API (the network's inbox stream)
        sender = JetStreamOps(council)
        ack = await sender.publish(msg_subject(TRUST, COUNCIL), b"mail", headers={"Status": "503"})
        await sender.close()
        assert ack.stream == inbox_stream(TRUST)
        mail = await net.direct_get(inbox_stream(TRUST), seq=ack.seq)
        assert mail is not None and (mail.data, mail.subject) == (b"mail", msg_subject(TRUST, COUNCIL))
        # consent: only the by-subject direct get is exported
        assert await net.direct_get(f"KV_{CONSENT_BUCKET}", subject=f"$KV.{CONSENT_BUCKET}.c.nobody") is None
        key = f"$KV.{CONSENT_BUCKET}.c.jsfast{time.monotonic_ns()}"
        operator = JetStreamOps(broker)
        written = await operator.publish(key, b"", headers={"Status": "404"})  # an empty record, a forged status
        await operator.close()
        record = await net.direct_get(f"KV_{CONSENT_BUCKET}", subject=key)
        assert record is not None and (record.seq, record.data) == (written.seq, b"")
        with pytest.raises(NoResponders):  # the by-sequence form is not exported
            await net.direct_get(f"KV_{CONSENT_BUCKET}", seq=1, timeout=2)
        for o in (own, net):
            assert o._sub is not None and o._sub.subject.startswith(f"{inbox_prefix(TRUST)}.")
    finally:
        await own.close()
        await net.close()
        await nc.close()
        await council.close()
    await broker.flush()
    assert "Permissions Violation" not in backbone.log(), backbone.log()[-3000:]


async def test_the_reply_subscription_survives_a_reconnect(backbone: Backbone, broker: NATS) -> None:
    ops = await JetStreamOps(broker, timeout=3).start()
    try:
        s = subj("reconnect")
        await ops.publish(s, b"before")
        reconnected = asyncio.Event()
        broker._reconnected_cb = reconnected_cb = _setter(reconnected)
        assert reconnected_cb is not None
        silent = await broker.subscribe("jsfast-silent.z")
        lost = asyncio.create_task(ops.publish("jsfast-silent.z", b"x", timeout=1.5))
        await asyncio.sleep(0.1)
        backbone.server.stop()
        t0 = time.monotonic()
        with pytest.raises(nats.errors.TimeoutError):  # its answer went with the connection
            await lost
        assert time.monotonic() - t0 < 2 and ops.pending == 0
        backbone.server.start()
        await asyncio.wait_for(reconnected.wait(), 30)
        await silent.unsubscribe()
        for _ in range(100):  # JetStream may take a moment to be back
            try:
                ack = await ops.publish(s, b"after")
                break
            except (NoResponders, nats.errors.TimeoutError):
                await asyncio.sleep(0.2)
        else:
            raise AssertionError("no publish after the reconnect")
        got = await ops.direct_get(STREAM, subject=s)
        assert got is not None and (got.seq, got.data) == (ack.seq, b"after")
    finally:
        await ops.close()


def _setter(event: asyncio.Event):  # type: ignore[no-untyped-def]
    async def cb() -> None:
        event.set()
    return cb


# -- the header block --------------------------------------------------------------------------
def test_parse_headers() -> None:
    assert parse_headers(b"NATS/1.0\r\nA: 1\r\nUrl: http://h:1/p\r\nA: 2\r\nBad Name: x\r\nnocolon\r\n\r\n") == \
        {"A": "2", "Url": "http://h:1/p"}
    assert parse_headers(b"NATS/1.0 404 Message Not Found\r\n\r\n") == \
        {"Status": "404", "Description": "Message Not Found"}
    assert parse_headers(b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Stream: 4\r\n\r\n") == \
        {"Status": "100", "Description": "Idle Heartbeat", "Nats-Last-Stream": "4"}
    assert parse_headers(b"NATS/1.0\r\n\r\n") is None
    assert parse_headers(b"NATS/1.0\r\nK:v\r\nE:\r\n\r\n") == {"K": "v", "E": ""}


# -- the micro-benchmark (not a test) -----------------------------------------------------------
async def bench(url: str, layout: Layout, *, n: int = 3000, concurrency: int = 1) -> dict[str, tuple[float, float]]:
    """µs per operation, jsfast against nats-py, on one connection to the same server: publish,
    stream message get (the leader's read) and direct get; ``concurrency`` requests in flight."""
    nc = await devnet.broker_connect(layout, url, name="jsfast-bench")
    js = nc.jetstream()
    try:
        await js.add_stream(name="BENCH", subjects=["bench.>"], allow_direct=True)
        ops = await JetStreamOps(nc).start()
        await ops.publish("bench.k", b"x" * 256, headers={"A": "1", "B": "2"})

        async def timed(op) -> tuple[float, float]:  # type: ignore[no-untyped-def]
            """(wall, this process's CPU) µs per operation."""
            async def worker(k: int) -> None:
                for _ in range(k):
                    await op()
            per = n // concurrency
            await worker(50)  # warm
            t0, c0 = time.perf_counter(), time.process_time()
            await asyncio.gather(*(worker(per) for _ in range(concurrency)))
            done = per * concurrency
            return (time.perf_counter() - t0) / done * 1e6, (time.process_time() - c0) / done * 1e6

        hdr = {"Nats-Msg-Id": "", "A": "1"}
        counter = iter(range(10**9))

        def msg_id() -> dict[str, str]:
            return {**hdr, "Nats-Msg-Id": str(next(counter))}

        out = {
            "nats-py js.publish": await timed(lambda: js.publish("bench.k", b"x" * 256, headers=msg_id())),
            "jsfast publish": await timed(lambda: ops.publish("bench.k", b"x" * 256, headers=msg_id())),
            "nats-py js.get_msg (leader)": await timed(lambda: js.get_msg("BENCH", subject="bench.k")),
            "jsfast msg_get": await timed(lambda: ops.msg_get("BENCH", subject="bench.k")),
            "nats-py js.get_msg(direct=True)": await timed(lambda: js.get_msg("BENCH", subject="bench.k",
                                                                                direct=True)),
            "jsfast direct_get": await timed(lambda: ops.direct_get("BENCH", subject="bench.k")),
        }
        await ops.close()
        return out
    finally:
        await js.delete_stream("BENCH")
        await nc.close()


def _bench_main() -> None:
    import argparse
    import tempfile

    p = argparse.ArgumentParser(description=bench.__doc__)
    p.add_argument("-n", type=int, default=3000)
    p.add_argument("--concurrency", type=int, nargs="*", default=[1, 50])
    p.add_argument("--uvloop", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as root:
        layout = Layout(Path(root))
        members = list(EXAMPLE_MEMBERS)[:1]
        devnet.make_pki(layout, members)
        server = devnet.nats_server(layout, [m.org for m in members], port=0, monitor_port=0).start()
        try:
            asyncio.run(devnet.push_accounts(layout, server.url, [m.org for m in members]))
            runner = asyncio.run
            if args.uvloop:
                import uvloop

                runner = uvloop.run
            for c in args.concurrency:
                res = runner(bench(server.url, layout, n=args.n, concurrency=c))
                print(f"-- {c} in flight, {args.n} ops each: wall µs/op, client CPU µs/op")
                for name, (wall, cpu) in res.items():
                    print(f"{name:34s} {wall:8.1f} {cpu:8.1f}")
        finally:
            server.stop()


if __name__ == "__main__":
    _bench_main()
