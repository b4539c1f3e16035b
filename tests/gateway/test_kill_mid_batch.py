"""kill -9 of a gateway process in the middle of its work, on a real devnet (nats-server and
gateway processes as ``psvn devnet up`` starts them): nothing accepted is lost, nothing is filed
twice.

* The sending gateway dies in the middle of ``POST /v1/messages:batch`` (the SDK's ``send_many``);
  started again, the same batch is sent again with the same idempotency keys: every message is
  in the recipient's mailbox exactly once (one message id per idempotency key, that id the one
  the retried batch answered with) and every sender status reaches ``delivered``.
* The receiving gateway dies while it fetches a backlog of a few hundred messages; started
  again, every message is filed exactly once and every sender status reaches ``delivered``.

Behaviour is read only through the HTTP API (the SDK): the recipient's inbox, counted by message
id and by the correlation id each message carries, and the sender's status of each message.
Every wait polls a condition with a deadline.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from psvn_client import BatchResult, Client, InboxItem, Message

from psvn import devnet
from psvn.bench import CLASSIFICATION, MESSAGE_TYPE, PURPOSE, free_port_range, service_request
from psvn.bench.workload import subject_of
from psvn.core import procs

COUNCIL = "gss:E06000043"
TRUST = "ods:RYR"
MEMBERS = tuple(m for m in devnet.EXAMPLE_MEMBERS if m.org in (COUNCIL, TRUST))
T = TypeVar("T")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devnet.Layout]:
    lay = devnet.Layout(tmp_path_factory.mktemp("devnet"))
    devnet.up(lay, MEMBERS, base_port=free_port_range())
    try:
        yield lay
    finally:
        devnet.down(lay)


def client(layout: devnet.Layout, org: str, *, retries: int = 3) -> Client:
    state = devnet.read_state(layout)
    assert state is not None
    g = state.gateways[org]
    cert, key = layout.system_cert(org, g.system)
    return Client(g.url, ca=str(layout.ca), cert=str(cert), key=str(key), retries=retries, timeout=30.0)


def referrals(tag: str, n: int) -> list[Message]:
    """``n`` distinct referrals, each with its own idempotency key and a correlation id that the
    recipient's inbox shows (so a message filed under two ids would show as two items)."""
    payloads = [service_request(i, tag) for i in range(n)]
    return [Message(to=TRUST, type=MESSAGE_TYPE, payload=p, purpose=PURPOSE, classification=CLASSIFICATION,
                    subject=subject_of(p), correlation_id=f"{tag}-{i}", idempotency_key=f"{tag}-key-{i}")
            for i, p in enumerate(payloads)]


def ours(trust: Client, tag: str, status: str | None = None) -> list[InboxItem]:
    """This test's messages in the recipient's inbox, in the order listed (one page: the tests
    keep the inbox under the gateway's page limit by acknowledging what they sent)."""
    return [i for i in trust.inbox(limit=1000, status=status)
            if i.correlation_id is not None and i.correlation_id.startswith(f"{tag}-")]


def ensure_running(layout: devnet.Layout, org: str) -> None:
    """Start ``org``'s gateway again (as the devnet does, waiting for /readyz) unless it runs."""
    state = devnet.read_state(layout)
    if state is not None and not procs.alive(state.gateways[org].pid):
        devnet.start_gateway(layout, org, timeout=60)


def poll(what: str, probe: Callable[[], T | None], *, timeout: float, interval: float = 0.05) -> T:
    """``probe()`` until it returns something not None, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(interval)


def filed_at_least(trust: Client, tag: str, n: int) -> int | None:
    """How many of ours the recipient lists now, if at least ``n``; None while fewer, or while its
    gateway does not answer (``trust`` has no retries: one quick look per call)."""
    try:
        got = len(ours(trust, tag))
    except Exception:
        return None
    return got if got >= n else None


def assert_filed_exactly_once(layout: devnet.Layout, tag: str, expected: dict[str, str], *,
                              timeout: float = 60.0) -> None:
    """``expected``: correlation id -> the message id the sender gave it. The recipient lists
    every one exactly once, under that id, and nothing else of ours (not under another id, not
    quarantined); the sender sees every one ``delivered``."""
    with client(layout, TRUST) as trust:
        items = poll(f"all {len(expected)} filed", lambda: (lambda got: got if len(got) >= len(expected) else None)(
            ours(trust, tag)), timeout=timeout, interval=0.2)
        by_id = Counter(i.id for i in items)
        by_corr = Counter(i.correlation_id for i in items)
        assert [m for m, n in by_id.items() if n > 1] == [], "a message id listed twice"
        assert [c for c, n in by_corr.items() if n > 1] == [], "one message filed under two ids"
        assert {i.correlation_id: i.id for i in items} == expected
        assert all(i.status == "delivered" and i.sender.startswith(COUNCIL) for i in items)
        assert ours(trust, tag, status="quarantined") == []
    with client(layout, COUNCIL) as council:
        deadline = time.monotonic() + timeout
        for mid in expected.values():
            status = council.wait_for_status(mid, "delivered", timeout=max(1.0, deadline - time.monotonic()))
            assert status.status in ("delivered", "acknowledged"), status
    with client(layout, TRUST) as trust:  # keep the inbox small for the next test
        for mid in expected.values():
            trust.ack(mid)


def acknowledge_ours(layout: devnet.Layout, tag: str) -> None:
    """Acknowledge this test's mail in the recipient's inbox (its listing shows one page only)."""
    with client(layout, TRUST) as trust:
        for item in ours(trust, tag):
            trust.ack(item.id)


def test_kill_9_of_the_sender_mid_batch_then_a_retry_delivers_each_message_once(layout: devnet.Layout) -> None:
    tag = f"kill-send-{secrets.token_hex(3)}"
    # eight requests of 100 one after another: the kill, sent as soon as the recipient has filed
    # the first messages, lands while several are still to go, however fast the machine is
    messages = referrals(tag, 800)
    outcome: list[BatchResult] = []
    failure: list[BaseException] = []

    def send() -> None:
        try:
            with client(layout, COUNCIL, retries=0) as council:  # no retries: the kill ends the request
                outcome.extend(council.send_many(messages, batch_size=100))
        except BaseException as exc:  # reported by the test, not lost in the thread
            failure.append(exc)

    sender = threading.Thread(target=send, name="send_many", daemon=True)
    sender.start()
    # the gateway is part-way through the batch once the recipient has filed some of it
    with client(layout, TRUST, retries=0) as trust:
        seen = poll("the recipient files the first messages of the batch", lambda: filed_at_least(trust, tag, 1),
                    timeout=60, interval=0.02)
    try:
        state = devnet.running_state(layout)
        killed = state.gateways[COUNCIL].pid
        assert devnet.stop_gateway(layout, COUNCIL, kill=True) >= 0
        assert not procs.alive(killed)
        sender.join(timeout=60)
        assert not sender.is_alive() and failure == []
        assert len(outcome) == len(messages)
        lost = [r for r in outcome if not r.ok]
        if not lost:  # nothing to test: leave an inbox the next test can list whole
            ensure_running(layout, COUNCIL)
            acknowledge_ours(layout, tag)
        assert lost, f"the batch finished before the kill ({seen} filed when it came): nothing was interrupted"
        accepted_before = {r.idempotency_key: r.id for r in outcome if r.ok}
        print(f"\nsender killed with {seen} filed; {len(accepted_before)} answered before, {len(lost)} not")
    finally:  # whatever failed above, the next test finds the sender's gateway running
        ensure_running(layout, COUNCIL)
    with client(layout, COUNCIL) as council:
        again = council.send_many(messages, batch_size=500)  # the same idempotency keys
    assert [r.error for r in again if not r.ok] == []
    ids = {m.correlation_id: r.id for m, r in zip(messages, again, strict=True)}
    assert len(set(ids.values())) == len(messages)
    # what the gateway had answered before the kill is answered again, with the same id
    for r in again:
        if r.idempotency_key in accepted_before:
            assert r.id == accepted_before[r.idempotency_key]
            assert r.result is not None and r.result.duplicate
    # some of the first request had been accepted by the gateway before it died: the retry
    # found them (a duplicate answer), it did not send them again
    assert any(r.result is not None and r.result.duplicate for r in again)
    expected = {c: mid for c, mid in ids.items() if c is not None and mid is not None}
    assert_filed_exactly_once(layout, tag, expected)


def test_kill_9_of_the_recipient_mid_fetch_files_each_message_once(layout: devnet.Layout) -> None:
    tag = f"kill-recv-{secrets.token_hex(3)}"
    messages = referrals(tag, 400)
    devnet.stop_gateway(layout, TRUST)
    try:
        with client(layout, COUNCIL) as council:  # the backlog waits on the backbone
            sent = council.send_many(messages)
        assert [r.error for r in sent if not r.ok] == []
        expected = {m.correlation_id: r.id for m, r in zip(messages, sent, strict=True)
                    if m.correlation_id is not None and r.id is not None}
        assert len(set(expected.values())) == len(messages)
        with client(layout, COUNCIL) as council:  # no receipt comes: each sent step is written alone
            poll("the backlog's records say sent", lambda: True if all(
                council.status(mid).status == "sent" for mid in list(expected.values())[:5]) else None, timeout=30)

        with client(layout, TRUST, retries=0) as trust:
            proc, _ = devnet.start_gateway(layout, TRUST, wait=False)
            filed = poll("the restarted recipient files part of its backlog", lambda: filed_at_least(trust, tag, 1),
                         timeout=60, interval=0.02)
        devnet.stop_gateway(layout, TRUST, kill=True)
        assert not procs.alive(proc.pid)
        print(f"\nrecipient killed with {filed} of {len(messages)} filed")
        assert filed < len(messages), "the whole backlog was filed before the kill: nothing was interrupted"
    finally:
        ensure_running(layout, TRUST)
    assert_filed_exactly_once(layout, tag, expected)
