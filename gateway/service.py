"""The gateway service: the one wiring point, plus the operations the HTTP views call.

``Gateway(config)`` builds every component (keys, registry view, policy holder, state store,
metrics); tests may inject a clock. ``start()`` connects to the backbone and begins consuming
the member's inbox; ``stop()`` undoes it. Protocol decisions live in gateway.core (pure).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import structlog
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from psvn.backbone.buckets import provision_state_bucket
from psvn.backbone.connect import connect
from psvn.backbone.jsfast import JetStreamOps
from psvn.backbone.natsraw import Puller, RawReads
from psvn.backbone.registry_view import RegistryView
from psvn.certs import keys, tls
from psvn.core import addresses
from psvn.core.errors import Code, PsvnError
from psvn.core.tasks import halt
from psvn.gateway import core
from psvn.gateway.audit import AuditWriter
from psvn.gateway.config import GatewayConfig
from psvn.gateway.consent import OPERATOR_TYPE, ConsentLookup, Consulted
from psvn.gateway.feeds import FeedView, Subscription
from psvn.gateway.metrics import Metrics
from psvn.gateway.policy import PolicyHolder
from psvn.gateway.store import Gone, HistoryEntry, InRecord, OutRecord, StateStore, message_id_for
from psvn.gateway.webhook import WebhookPusher, check_url, load_secret
from psvn.policies.consent import TYPE as CONSENT_TYPE
from psvn.policies.consent import ConsentRegistry
from psvn.policies.engine import DecisionRequest
from psvn.policies.snapshot import PolicySnapshot
from psvn.protocol import seal
from psvn.protocol.envelope import (
    Envelope,
    FeedRequest,
    SendRequest,
    SubscribeRequest,
    check_free_id,
    check_topic,
    new_message_id,
    now_rfc3339,
    parse_time,
    payload_bytes,
)
from psvn.protocol.lifecycle import State
from psvn.protocol.subjects import (
    CONSENT_BUCKET,
    CONSUMER,
    MAILBOX_MAX_AGE_DAYS,
    OPERATOR_JS_PREFIX,
    POLICY_BUCKET,
    REGISTRY_BUCKET,
    audit_subject,
    inbox_prefix,
    inbox_stream,
    quarantine_subject,
)

log = structlog.get_logger("psvn.gateway")

PUBLISH_PATIENCE = 8.0  # seconds a publish may wait out a leader election (measured 4-8.6 s)
AUDIT_ATTEMPTS = 6  # an audit record is retried for ~8 s (a leader election, a reconnect)
AUDIT_ACK_SECONDS = 5.0
MAX_AUDITS_IN_FLIGHT = 10_000
LAG_RETRIES = 5  # deliveries of a message before a refusal our registry view may explain is final
# Refusals a registry view a moment behind explains: a new member, or a member's key rotation
# (signed with a key we do not list yet; sealed to a key another instance of ours holds).
LAG_CODES = frozenset({Code.UNKNOWN_RECIPIENT, Code.SIGNATURE_INVALID, Code.DECRYPT_FAILED})


def _already_gone(exc: Exception) -> bool:
    """JetStream's 'no message found' (err 10037 / 10057): deleted already, by us or by max age."""
    return isinstance(exc, NotFoundError) or getattr(exc, "err_code", None) in (10037, 10057)


_UNSETTLED = (State.ACCEPTED.value, State.SENT.value)  # a sent message no receipt has settled yet
_MSG_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Opened:
    record: InRecord
    envelope: Envelope
    payload: bytes


def _webhook(config: GatewayConfig) -> WebhookPusher | None:
    w = config.webhook
    if w is None:
        return None
    check_url(w.url)  # before the secret is read: a bad URL is the error to report
    return WebhookPusher(w.url, load_secret(w.secret_file), ca=w.ca, attempts=w.attempts,
                         timeout=w.timeout_seconds)


def _header_safe(text: str) -> str:
    """A header value from our own rule names: printable ASCII, one line, bounded."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:120]


def trust_anchor(path: str, field: str) -> Ed25519PublicKey:
    """An Ed25519 public key named in the configuration; a missing or unusable file is a
    configuration error naming the setting and the file (the gateway must not start trusting
    whatever lies on the backbone)."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise PsvnError(Code.CONFIG_INVALID, f"{field}: cannot read {path}: {exc.strerror or exc}",
                        field=field, rule="key-file") from None
    except ValueError:
        raise PsvnError(Code.CONFIG_INVALID, f"{field}: {path} is not a PEM public key",
                        field=field, rule="key-type") from None
    if not isinstance(key, Ed25519PublicKey):
        raise PsvnError(Code.CONFIG_INVALID, f"{field}: {path} is not an Ed25519 public key",
                        field=field, rule="key-type")
    return key


class Gateway:
    def __init__(self, config: GatewayConfig, *, clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.org = config.gateway.org
        self.clock = clock or (lambda: datetime.now(UTC))
        self.signing_key = keys.load_signing_key(Path(config.keys.signing))
        self.hpke_key = keys.load_hpke_key(Path(config.keys.hpke))
        self.hybrid_key = (hpke.MLKEM768X25519PrivateKey(*keys.load_hybrid_hpke_key(Path(config.keys.hpke_hybrid)))
                           if config.keys.hpke_hybrid else None)
        # the key ring after a rotation: sign with whichever key the registry lists, open mail
        # sealed to any key this gateway has held
        retired = keys.load_retired_keys(Path(config.keys.retired_dir) if config.keys.retired_dir else None)
        self.signing_keys = [self.signing_key, *retired.signing]
        self.retired_hpke: tuple[seal.PrivateKey, ...] = (
            *retired.hpke, *(hpke.MLKEM768X25519PrivateKey(*pair) for pair in retired.hybrid))
        authority = trust_anchor(config.keys.policy_authority, "keys.policy_authority")
        registry_authority = trust_anchor(config.keys.registry_authority, "keys.registry_authority")
        self.metrics = Metrics()
        self.registry = RegistryView(registry_authority, on_refused=self._backbone_value_refused)
        self.policy = PolicyHolder(authority, on_change=self._policy_changed, on_refused=self._backbone_value_refused)
        self.store = StateStore(self.org)
        self.metrics.open_mail.set_function(lambda: len(self.store.open))
        self.consent = ConsentLookup(
            self.registry, on_refused=lambda _s, _e: self.metrics.values_refused.labels(CONSENT_BUCKET).inc())
        self.feeds = FeedView()
        self.webhook = _webhook(config)
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None  # its own account's JetStream: its state bucket
        self.net: JetStreamContext | None = None  # the network account's, through its imports
        self.raw: RawReads | None = None  # reads a sender's headers cannot fool (broker.natsraw)
        self.ops: JetStreamOps | None = None  # the per-message publishes and reads (broker.jsfast)
        self.net_ops: JetStreamOps | None = None  # the same, of the network account's API
        self._consumer: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._rejoin: asyncio.Task[None] | None = None  # rejoining the backbone after nats-py gave up
        self._started = False
        self._background: set[asyncio.Task[None]] = set()
        self.audit_log = AuditWriter(self._audit_write, on_lost=self.metrics.audit_lost.inc,
                                     max_pending=MAX_AUDITS_IN_FLIGHT, attempts=AUDIT_ATTEMPTS)
        self._identity: tuple[object, core.Identity] | None = None
        self._expiring: dict[str, str] = {}
        self.sweeps = 0  # message id -> expiry, of this instance's unsettled sends
        self._stopping = False
        # why the last write of a sent message's record failed (None: it succeeded); readiness
        # reports it, since a gateway that cannot record what it sends cannot accept mail
        self.state_write_error: str | None = None

    def readiness(self) -> list[str]:
        """What stops this gateway doing its work now, as ``component: problem`` lines (empty:
        ready). Read by ``/healthz`` and ``/readyz``; ``/livez`` only says the process is up."""
        problems: list[str] = []
        if not self.connected:
            problems.append("backbone: not connected to the NATS backbone")
        if self.policy.snapshot is None:
            problems.append("policy: no valid, signed policy set is loaded")
        if self.state_write_error is not None:
            problems.append(f"state: the last state write failed ({self.state_write_error})")
        return problems

    def _backbone_value_refused(self, bucket: str, key: str, reason: str) -> None:
        """A shared-bucket value that did not verify: counted here; logged and recorded (for
        /healthz) by the view that refused it, which keeps the previous good value."""
        self.metrics.values_refused.labels(bucket=bucket).inc()

    @property
    def refused_values(self) -> list[dict[str, str]]:
        """Values on the backbone this gateway refuses now (bucket, key, reason), for readiness."""
        out = [{"bucket": REGISTRY_BUCKET, "key": k, "reason": r} for k, r in sorted(self.registry.refused.items())]
        out += [{"bucket": POLICY_BUCKET, "key": k, "reason": r} for k, r in sorted(self.policy.refused.items())]
        return out

    def _policy_changed(self, version: int) -> None:
        self.metrics.policy_version.set(version)
        if version > self.store.policy_floor:  # remember it, so a restart cannot be rolled back
            task = asyncio.get_running_loop().create_task(self.store.set_policy_floor(version))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        # the operator's console learns which version each gateway enforces from its audit stream
        loop = asyncio.get_running_loop()
        loop.call_soon(lambda: loop.create_task(self.audit("policy-applied", policy_version=version)))

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def identity(self) -> core.Identity:
        """Who this gateway is now: prepared once per registry entry of ours (it changes with a
        key rotation or a change of member type), not once per message."""
        me = self.registry.lookup(self.org, field="gateway.org", require_active=False)
        cached = self._identity
        if cached is not None and cached[0] is me:
            return cached[1]
        signing = (self.signing_key if len(self.signing_keys) == 1
                   else core.choose_signing_key(self.signing_keys, me.sign_key))
        ident = core.Identity(org=self.org, member_type=me.type, signing_key=signing, hpke_key=self.hpke_key,
                              hybrid_key=self.hybrid_key, retired_hpke=self.retired_hpke)
        self._identity = (me, ident)
        return ident

    @property
    def snapshot(self) -> PolicySnapshot:
        snap = self.policy.snapshot
        if snap is None:
            raise PsvnError(Code.BACKBONE_UNAVAILABLE, "no policy set received yet", rule="policy-ready")
        return snap

    async def start(self) -> None:
        await self._join_backbone()
        self._started = True
        self._sweeper = asyncio.create_task(self._sweep_expired(), name=f"expiry {self.org}")
        log.info("gateway started", org=self.org, policy_version=self.policy.version)

    async def _join_backbone(self) -> None:
        """Connect as the member's backbone user and start everything that hangs off the connection."""
        n = self.config.nats
        ctx = tls.client_context(Path(n.ca), Path(n.cert), Path(n.key))

        async def disconnected() -> None:
            self.metrics.backbone_up.set(0)
            log.warning("backbone disconnected", org=self.org)

        async def reconnected() -> None:
            self.metrics.backbone_up.set(1)
            log.info("backbone reconnected", org=self.org)

        async def error_cb(exc: Exception) -> None:
            log.error("backbone error", org=self.org, error=str(exc))

        async def closed() -> None:
            # nats-py gives up for good on an authorisation error (e.g. our account was revoked,
            # then reinstated): keep trying to rejoin while the gateway runs
            self.metrics.backbone_up.set(0)
            if self._started and not self._stopping and (self._rejoin is None or self._rejoin.done()):
                self._rejoin = asyncio.create_task(self._rejoin_backbone(), name=f"rejoin {self.org}")

        nc = await connect(n.servers, ctx, name=f"psvn-gateway {self.org}", inbox_prefix=inbox_prefix(self.org),
                           user_credentials=n.creds, disconnected_cb=disconnected,
                           reconnected_cb=reconnected, error_cb=error_cb, closed_cb=closed)
        self.nc = nc
        try:
            self.metrics.backbone_up.set(1)
            self.js = nc.jetstream()
            self.net = nc.jetstream(prefix=OPERATOR_JS_PREFIX)
            await self.registry.start(self.net)
            self.registry.lookup(self.org, field="gateway.org", require_active=False)
            await provision_state_bucket(self.js, self.org, replicas=n.replicas)
            self.ops = await JetStreamOps(nc).start()
            await self.store.start(self.js, self.ops)
            self.metrics.state_loaded.set(self.store.loaded)
            self.policy.floor = self.store.policy_floor
            await self.policy.start(self.net, timeout=self.config.gateway.policy_wait_seconds)
            self.net_ops = await JetStreamOps(nc, api_prefix=OPERATOR_JS_PREFIX).start()
            await self.consent.start(self.net, self.net_ops)
            await self.feeds.start(self.net)
            self.raw = RawReads(nc)
        except BaseException:
            await self._leave_backbone()
            raise
        self._consumer = asyncio.create_task(self._consume(), name=f"consume {self.org}")

    async def _leave_backbone(self) -> None:
        await halt(self._consumer)
        self._consumer = None
        for part in (self.feeds, self.consent, self.store, self.policy, self.registry):
            with contextlib.suppress(Exception):
                await part.stop()
        if self.raw is not None:
            await self.raw.close()
        for ops in (self.ops, self.net_ops):
            if ops is not None:
                await ops.close()
        self.ops = self.net_ops = None
        if self.nc is not None:
            # close, not drain: consumption has stopped, and anything fetched but not acked is
            # redelivered by JetStream to the next gateway; drain would wait on dead watchers.
            with contextlib.suppress(Exception):
                await self.nc.close()
        self.metrics.backbone_up.set(0)

    async def _rejoin_backbone(self) -> None:
        delay = 0.5
        while not self._stopping:
            await asyncio.sleep(delay)
            try:
                await self._leave_backbone()
                if self._stopping:
                    return
                await self._join_backbone()
                log.info("backbone rejoined", org=self.org)
                return
            except Exception as exc:
                log.warning("backbone rejoin failed; trying again", org=self.org, error=repr(exc), retry_in=delay)
                delay = min(delay * 2, 10.0)

    async def stop(self) -> None:
        self._stopping = True
        for task in (self._rejoin, self._sweeper, self._consumer):
            await halt(task)
        if self.webhook is not None:
            await self.webhook.close()
        await self.audit_log.close(AUDIT_ACK_SECONDS)  # bounded; what is left is logged and counted
        await self._leave_backbone()

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    # -- audit (metadata only: never payloads) ---------------------------------------------
    async def audit(self, event: str, **fields: object) -> None:
        """Record an event on the member's audit stream, acknowledged, without holding up the
        message: queued at once, written by :class:`gateway.audit.AuditWriter` in batches."""
        self.audit_log.add({"event": event, "org": self.org, "time": now_rfc3339(self.clock()), **fields})

    async def _audit_write(self, data: bytes, headers: dict[str, str]) -> None:
        if self.ops is None:
            raise ConnectionError("not connected to the backbone")
        await self.ops.publish(audit_subject(self.org), data, timeout=AUDIT_ACK_SECONDS, headers=headers)

    async def reject_request(self, exc: PsvnError, *, system: str | None) -> PsvnError:
        """A send refused before it became a message (malformed JSON, bad envelope, not
        connected): it still gets a message id, a metric, a log line and an audit record."""
        if exc.message_id is None:
            exc.message_id = new_message_id()
        self.metrics.rejected.labels(exc.code.value).inc()
        log.info("message rejected", message_id=exc.message_id, code=exc.code.value, field=exc.field,
                 rule=exc.rule, system=system)
        await self.audit("rejected", message_id=exc.message_id, code=exc.code.value, field=exc.field,
                         rule=exc.rule, system=system, policy_version=self.policy.version, direction="egress")
        return exc

    # -- send ---------------------------------------------------------------------------------
    async def send(self, req: SendRequest, *, system: str, topic: str | None = None) -> tuple[OutRecord, bool]:
        """Accept a message from a local system (with ``topic``: one delivery of a feed event).
        Returns (record, created).

        Backbone writes on the way: the sender's record (create-once: with an idempotency key
        the message id is derived from it, so this write is also the claim on the key), the
        sealed message, and the record's move to ``sent``; the audit record goes to the batcher.
        Awaited round trips: the record (and, with a key, one read first), the publish, the move."""
        started = time.perf_counter()
        key = req.idempotency_key
        if key is not None:
            try:
                check_free_id(key, "idempotency_key")
            except PsvnError:  # refused below by the envelope rules, under a message id of its own
                key = None
        message_id = message_id_for(self.org, system, key) if key else new_message_id()
        request_hash = hashlib.sha256(msgspec.json.encode(req)).hexdigest()
        if not self.connected:
            raise await self.reject_request(PsvnError(
                Code.BACKBONE_UNAVAILABLE, "the gateway is not connected to the backbone; retry later",
                rule="backbone-connected", message_id=message_id), system=system)
        # A retry (same key) is recognised when its record is written: the create-once write
        # fails, and the request is answered with what the first one became (or resumes it).
        try:
            snap = self.snapshot
            checked = core.check_send(req, snap=snap, registry=self.registry, message_id=message_id)
            consulted = await self.consult(checked.consent_subjects, message_id)
            out = core.prepare_send(req, me=self.identity, system=system, snap=snap, registry=self.registry,
                                    message_id=message_id, now=self.clock(), consent=consulted.consent,
                                    topic=topic, checked=checked)
        except PsvnError as exc:
            if key:  # a retry of a message accepted before (e.g. under another policy version)?
                prior = await self._prior(message_id, request_hash)
                if prior is not None and prior.status != State.ACCEPTED.value:
                    return prior, False
            self.metrics.rejected.labels(exc.code.value).inc()
            if exc.code is Code.POLICY_DENIED:
                self.metrics.decisions.labels("egress", "deny").inc()
            log.info("message rejected", message_id=message_id, code=exc.code.value, field=exc.field,
                     rule=exc.rule, system=system)
            await self.audit("rejected", message_id=message_id, to=req.to if isinstance(req.to, str) else None,
                             type=req.type, purpose=req.purpose, classification=req.classification,
                             code=exc.code.value, field=exc.field, rule=exc.rule,
                             policy_version=self.policy.version, direction="egress")
            raise
        self.metrics.decisions.labels("egress", "allow").inc()
        now = now_rfc3339(self.clock())
        rec = OutRecord(id=message_id, to=req.to, type=req.type, status=State.ACCEPTED.value, created=now,
                                 system=system,
                                 history=[HistoryEntry(status=State.ACCEPTED.value, time=now)],
                                 rule_ids=out.decision.rule_ids, request_hash=request_hash,
                                 expires=out.envelope.expires)
        written: tuple[OutRecord, int] | None = None
        try:
            revision = await self.store.put_out(rec)
            self.state_write_error = None
        except Exception as exc:
            self.state_write_error = type(exc).__name__
            raise PsvnError(Code.BACKBONE_UNAVAILABLE, "the backbone did not store the message; nothing was sent",
                            rule="state-write", message_id=message_id) from exc
        if revision is None:  # the key was used before (a retry), or by a concurrent request
            prior = await self._prior(message_id, request_hash)
            if prior is None:  # its record aged out (the bucket's TTL): the key is spent
                raise PsvnError(Code.CONFLICT, "idempotency_key was used for a message whose record has expired",
                                field="idempotency_key", rule="idempotency", message_id=message_id)
            if prior.status != State.ACCEPTED.value:
                return prior, False
            rec = prior  # accepted, its publish unconfirmed or in flight: sealing again is safe (below)
        else:
            written = (rec, revision)
        # Publishing a message already published (a retry, or the concurrent request above) is
        # safe: JetStream's dedupe window and the recipient's create-once filing keep it single.
        try:
            await self._publish(out.subject, out.data, message_id)
        except PsvnError:
            if not key:  # nobody can retry this message: say it failed. With a key it stays
                with contextlib.suppress(Exception):  # accepted, for the retry to resume
                    await self.store.move_out(message_id, State.REJECTED, reason="backbone unavailable")
            raise
        # The publish is confirmed: the message is sent. The audit record is queued first so the
        # batcher's write can share a socket write with the status write below.
        await self.audit("sent", message_id=message_id, to=req.to, type=req.type, purpose=req.purpose,
                         classification=req.classification, size=out.size, rule_ids=out.decision.rule_ids,
                         policy_version=out.decision.policy_version, direction="egress")
        try:
            rec = await self.store.move_out(message_id, State.SENT, known=written) or rec
        except Exception as exc:  # the message is on its way: the receipt will move the status on
            log.warning("status write after publish failed; receipt will update it", message_id=message_id,
                        error=repr(exc))
        if rec.expires and rec.status in (State.ACCEPTED.value, State.SENT.value):
            self._track_expiry(rec)
        self.metrics.sent.labels(req.type).inc()
        self.metrics.send_seconds.observe(time.perf_counter() - started)
        log.debug("message sent", message_id=message_id, to=req.to, type=req.type, system=system)
        return rec, True

    async def send_batch(self, items: Sequence[SendRequest | PsvnError], *,
                         system: str) -> list[tuple[OutRecord, bool] | PsvnError]:
        """Send many messages from one request, each exactly as :meth:`send` sends one alone
        (validated, decided, sealed, signed, published and receipted on its own, with its own
        idempotency key): a batch saves HTTP round trips, never a check.

        ``items`` holds the decoded requests in order, or the refusal an item already got while
        decoding (audited by the caller). Returns one outcome per item, in order: (record,
        created) or the refusal. Items run concurrently, at most ``gateway.batch_concurrency``
        at a time, because each waits mostly on backbone round trips (consent lookup, state
        write, publish ack) that overlap well and share socket writes; the bound keeps one
        large batch from monopolising the gateway. One item's failure, even an unexpected one,
        is that item's result only."""
        self.metrics.batch_items.observe(len(items))
        gate = asyncio.Semaphore(max(1, self.config.gateway.batch_concurrency))

        async def one(item: SendRequest | PsvnError) -> tuple[OutRecord, bool] | PsvnError:
            if isinstance(item, PsvnError):
                return item
            async with gate:
                try:
                    return await self.send(item, system=system)
                except PsvnError as exc:
                    return exc
                except Exception:  # a bug or an unforeseen failure: this item's 500, not the batch's
                    request_id = new_message_id()
                    log.exception("unhandled error in a batch item; answered as internal", request_id=request_id,
                                  message_id=request_id, system=system)
                    error = PsvnError(Code.INTERNAL, f"internal error; see the gateway log for request {request_id}",
                                      rule="internal", message_id=request_id, extra={"request_id": request_id})
                    with contextlib.suppress(Exception):  # the answer must not depend on the audit
                        await self.reject_request(error, system=system)
                    return error

        return list(await asyncio.gather(*(one(item) for item in items)))

    async def consult(self, subjects: frozenset[str], message_id: str) -> Consulted:
        """The consent of exactly the subjects a decision names, read now (no copy is kept, so an
        opt-out recorded a moment ago applies). A backbone that does not answer refuses the
        message (retry later), never decides it as "no opt-out"."""
        if not subjects:
            return Consulted(consent=ConsentRegistry())
        started = time.perf_counter()
        try:
            return await self.consent.consult(subjects)
        except PsvnError as exc:
            exc.message_id = exc.message_id or message_id
            raise
        finally:
            self.metrics.consent_lookup_seconds.observe(time.perf_counter() - started)

    async def _prior(self, message_id: str, request_hash: str) -> OutRecord | None:
        """The record a message id derived from an idempotency key names, if any; the same key
        with a different request is a conflict."""
        rec = await self.store.out_record(message_id)
        if rec is not None and rec.request_hash != request_hash:
            raise PsvnError(Code.CONFLICT, "idempotency_key was used before with a different request",
                            field="idempotency_key", rule="idempotency", message_id=rec.id)
        return rec

    async def _publish(self, subject: str, data: bytes, msg_id: str) -> None:
        """Publish with the dedupe id; retry with the same id so a retry can never duplicate."""
        delay = 0.2
        deadline = time.monotonic() + PUBLISH_PATIENCE
        attempt = 0
        while True:
            attempt += 1
            try:
                if self.ops is None:
                    raise ConnectionError("not connected to the backbone")
                await self.ops.publish(subject, data, headers={"Nats-Msg-Id": msg_id}, timeout=3)
                return
            except Exception as exc:
                log.warning("publish failed", message_id=msg_id, attempt=attempt, error=repr(exc))
                # a refusal the stream states (e.g. the recipient's quota) will not change in a
                # second; "no responders" or a timeout is a leader election: ride it out
                transient = not isinstance(exc, APIError) or isinstance(exc, ServiceUnavailableError)
                if not transient or time.monotonic() + delay > deadline:
                    raise PsvnError(Code.BACKBONE_UNAVAILABLE,
                                    "the backbone did not confirm the message; retry with the same idempotency_key",
                                    rule="publish-ack", message_id=msg_id) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _track_expiry(self, rec: OutRecord) -> None:
        """Watch a sent message's expiry until a receipt settles it (bounded: past the bound, and
        after a restart, expiry still applies when the status is read and at the recipient)."""
        if rec.expires and len(self._expiring) < self.config.gateway.max_tracked_expiries:
            self._expiring[rec.id] = rec.expires
            self.metrics.tracked_expiries.set(len(self._expiring))

    def _settled(self, message_id: str) -> None:
        if self._expiring.pop(message_id, None) is not None:
            self.metrics.tracked_expiries.set(len(self._expiring))

    async def _expire_if_due(self, rec: OutRecord) -> OutRecord:
        """``expired`` for a message not delivered by its expiry (the sender is told by the
        status and the audit record)."""
        if not rec.expires or rec.status not in _UNSETTLED or parse_time(rec.expires) > self.clock():
            return rec
        moved = await self.store.move_out(rec.id, State.EXPIRED, reason=f"not delivered by {rec.expires}",
                                          only_from=_UNSETTLED)
        self._settled(rec.id)
        if moved is not None and moved.status == State.EXPIRED.value and moved.status != rec.status:
            await self.audit("expired", message_id=rec.id, to=rec.to, type=rec.type)
        return moved or rec

    async def _sweep_expired(self) -> None:
        """Sent messages not delivered by their expiry become ``expired``; received mail whose
        retention (the policy's, for its type) is over is deleted: open mail from memory at
        every sweep, closed mail by a streamed walk every ``retention_scan_seconds``."""
        loop = asyncio.get_running_loop()
        last_scan = loop.time()
        while not self._stopping:
            self.sweeps += 1  # sweeps begun (tests wait on it: "several sweeps ran", not a sleep)
            await asyncio.sleep(self.config.gateway.expiry_sweep_seconds)
            now = self.clock()
            for mid, expires in list(self._expiring.items()):
                if parse_time(expires) <= now:
                    try:
                        rec = await self.store.out_record(mid)
                        if rec is None:
                            self._settled(mid)
                        else:
                            await self._expire_if_due(rec)
                    except Exception as exc:  # the next sweep tries again
                        log.warning("expiry sweep failed", message_id=mid, error=repr(exc))
            due = now_rfc3339(now)  # one format throughout (UTC, milliseconds, Z): compared as text
            for got in list(self.store.open.values()):
                if got.retain_until and got.retain_until <= due:
                    try:
                        await self._retention_over(got)
                    except Exception as exc:  # the next sweep tries again
                        log.warning("retention sweep failed", message_id=got.id, error=repr(exc))
            if loop.time() - last_scan >= self.config.gateway.retention_scan_seconds:
                last_scan = loop.time()
                if self.store.policy_floor:  # keep the rollback floor alive past the bucket's TTL
                    with contextlib.suppress(Exception):
                        await self.store.set_policy_floor(self.store.policy_floor)
                try:
                    async for got in self.store.closed_mail():
                        if got.retain_until and not got.deleted and parse_time(got.retain_until) <= now:
                            await self._retention_over(got)
                except Exception as exc:  # the next scan tries again
                    log.warning("retention scan failed", error=repr(exc))

    async def _retention_over(self, rec: InRecord) -> None:
        """Delete the mail from the inbox stream, then mark its entry deleted (each step
        idempotent: another instance, or the stream's own max age, may have deleted it first).
        The entry stays, closed, until the state bucket's TTL, so a replay of the message is
        recognised; after that the arrival age check refuses it."""
        assert self.net is not None
        try:
            await self.net.delete_msg(inbox_stream(self.org), rec.seq)
        except APIError as exc:
            if not _already_gone(exc):
                raise
        deleted = now_rfc3339(self.clock())
        if rec.status == State.DELIVERED.value:  # open mail: closed as deleted
            await self.store.close(msgspec.structs.replace(rec, deleted=deleted))
        elif await self.store.update_done(rec.id, lambda r: None if r.deleted else msgspec.structs.replace(
                r, deleted=deleted)) is None:
            return
        await self.audit("retention-deleted", message_id=rec.id, source=rec.source, type=rec.type,
                         status=rec.status, retain_until=rec.retain_until, direction="ingress")
        log.info("message deleted: retention over", message_id=rec.id, type=rec.type)

    # -- feeds --------------------------------------------------------------------------------
    async def subscribe(self, topic: str, req: SubscribeRequest, *, system: str) -> Subscription:
        """Subscribe this member to ``topic`` for a purpose, if the feed rules let it subscribe."""
        check_topic(topic)
        if req.mailbox is not None:
            addresses.parse(f"{self.org}/{req.mailbox}")  # a well-formed mailbox name, or a clear error
        me = self.identity
        decision = self.snapshot.engine.decide(DecisionRequest(
            sender="", sender_type="", recipient=self.org, recipient_type=me.member_type, type="*",
            purpose=req.purpose, action="subscribe", topic=topic, mailbox=req.mailbox))
        if not decision.allow:
            raise core.policy_denied(decision, new_message_id(), "subscribe")
        sub = Subscription(subscriber=self.org, topic=topic, purpose=req.purpose, mailbox=req.mailbox,
                           created=now_rfc3339(self.clock()))
        await self.feeds.put(sub)
        await self.audit("subscribed", topic=topic, purpose=req.purpose, mailbox=req.mailbox, system=system,
                         rule_ids=decision.rule_ids, policy_version=decision.policy_version)
        return sub

    async def unsubscribe(self, topic: str, *, system: str) -> None:
        check_topic(topic)
        if not await self.feeds.delete(self.org, topic):
            raise PsvnError(Code.NOT_FOUND, f"this member has no subscription to {topic!r}", field="topic",
                            rule="subscription-exists")
        await self.audit("unsubscribed", topic=topic, system=system)

    async def publish(self, topic: str, req: FeedRequest, *, system: str) -> dict[str, object]:
        """Publish one event: one sealed message per subscriber (for this purpose) the feed rules
        allow, each on the point-to-point path. Returns the deliveries and the refusals."""
        event_id = new_message_id()
        check_topic(topic)
        base = SendRequest(to=self.org, type=req.type, payload=req.payload, purpose=req.purpose,
                           classification=req.classification, subject=req.subject,
                           correlation_id=req.correlation_id or event_id, ttl_seconds=req.ttl_seconds,
                           datacontenttype=req.datacontenttype)
        try:
            entry = self.snapshot.catalogue.get(req.type, message_id=event_id)
            core.validate_payload(self.snapshot, req.type, payload_bytes(req.payload), event_id,
                                  content_type=req.datacontenttype or entry.datacontenttype)
            core.decide_publish(self.snapshot, base, me=self.identity, topic=topic, message_id=event_id)
        except PsvnError as exc:
            raise await self.reject_request(exc, system=system) from None
        deliveries: list[dict[str, object]] = []
        refused: list[dict[str, object]] = []
        for sub in await self.feeds.refresh(topic):
            if sub.subscriber == self.org or sub.purpose != req.purpose:
                continue
            key = f"{req.idempotency_key}/{sub.subscriber}" if req.idempotency_key else None
            try:
                rec, _ = await self.send(msgspec.structs.replace(base, to=sub.to, idempotency_key=key),
                                         system=system, topic=topic)
                deliveries.append({"to": sub.to, "id": rec.id, "status": rec.status})
            except PsvnError as exc:  # this subscriber only: the others still get the event
                refused.append({"to": sub.to, "code": exc.code.value, "rule": exc.rule,
                                "rule_ids": exc.extra.get("rule_ids") or [], "message_id": exc.message_id})
        await self.audit("published", message_id=event_id, topic=topic, type=req.type, purpose=req.purpose,
                         deliveries=len(deliveries), refused=len(refused), system=system, direction="egress")
        return {"event": event_id, "topic": topic, "deliveries": deliveries, "refused": refused}

    # -- status and mailbox -------------------------------------------------------------------
    async def status(self, message_id: str, *, system: str | None = None) -> OutRecord:
        """A sent message's status. A system limited by ``gateway.system_mailboxes`` sees only
        what it sent itself (as it reads only its own mailboxes); others see every status.
        Read where it lives when this instance has not heard of it yet (another instance of this
        member's gateway behind the same load balancer may have just written it)."""
        rec = await self.store.out_record(message_id)
        if rec is None:
            raise PsvnError(Code.NOT_FOUND, f"no message {message_id!r} was sent through this gateway",
                            field="id", rule="exists", message_id=message_id)
        rec = await self._expire_if_due(rec)
        if system is not None and system in self.config.gateway.system_mailboxes and rec.system \
                and rec.system != system:
            raise PsvnError(Code.FORBIDDEN, f"system {system!r} may read the status only of what it sent",
                            field="id", rule="sender-system", message_id=message_id)
        return rec

    def may_read(self, system: str | None, rec: InRecord) -> bool:
        allowed = self.config.gateway.system_mailboxes.get(system or "")
        return allowed is None or (rec.mailbox or "") in allowed

    async def inbox(self, *, mailbox: str | None = None, status: str | None = None, limit: int = 100,
                    system: str | None = None, after: int = 0) -> list[InRecord]:
        """Mail in the order it was filed; ``after`` is the paging cursor (an
        :meth:`inbox_position`): only mail filed after it. Delivered mail comes from the
        open-mail index, whose entries arrive in filing order (the state bucket's revisions, one
        ordered watch), so mail filed late never lands behind a cursor already handed out.
        Other statuses (acknowledged, quarantined) come from a streamed walk of the closed
        entries, in arrival order, keeping only the page."""
        wanted = status or State.DELIVERED.value

        def keep(r: InRecord, position: int) -> bool:
            return (position > after and r.status == wanted and not r.deleted
                    and (mailbox is None or r.mailbox == mailbox) and self.may_read(system, r))

        if wanted == State.DELIVERED.value:
            return heapq.nsmallest(limit, (r for r in self.store.open.values() if keep(r, self.inbox_position(r))),
                                   key=self.inbox_position)
        page: list[tuple[int, int, InRecord]] = []  # a max-heap (negated seq) of the lowest `limit`
        async for r in self.store.closed_mail():
            if keep(r, r.seq):
                heapq.heappush(page, (-r.seq, id(r), r))
                if len(page) > limit:
                    heapq.heappop(page)
        return sorted((r for _, _, r in page), key=lambda r: r.seq)

    def inbox_position(self, rec: InRecord) -> int:
        """Where a listed mail stands in its listing: open mail by when it was filed, closed mail
        by when it arrived (the paging cursor of :meth:`inbox`)."""
        if rec.status == State.DELIVERED.value:
            return self.store.filed_at(rec.id)
        return rec.seq

    async def _in_record(self, message_id: str, system: str | None = None) -> InRecord:
        rec = await self.store.in_record(message_id)
        if rec is None:
            raise PsvnError(Code.NOT_FOUND, f"no message {message_id!r} in this gateway's mailbox",
                            field="id", rule="exists", message_id=message_id)
        if rec.deleted:
            raise PsvnError(Code.NOT_FOUND, f"message {message_id} was deleted at {rec.deleted}: the policy's "
                            f"retention for {rec.type} ended", field="id", rule="retention", message_id=message_id)
        if not self.may_read(system, rec):
            raise PsvnError(Code.FORBIDDEN, f"system {system!r} may not read mailbox {rec.mailbox or '(main)'}",
                            field="id", rule="mailbox-access", message_id=message_id)
        return rec

    async def get(self, message_id: str, *, system: str | None = None) -> Opened:
        rec = await self._in_record(message_id, system)
        if rec.status == State.QUARANTINED.value:
            raise PsvnError(Code.FORBIDDEN, f"message {message_id} is quarantined: {rec.reason}",
                            field="id", rule="quarantined", message_id=message_id)
        if self.net_ops is None:
            raise PsvnError(Code.BACKBONE_UNAVAILABLE, "the gateway is not connected to the backbone; retry later",
                            rule="backbone-connected", message_id=message_id)
        try:
            raw = await self.net_ops.direct_get(inbox_stream(self.org), seq=rec.seq)
        except APIError as exc:
            if not _already_gone(exc):
                raise
            raw = None
        if raw is None:
            raise PsvnError(Code.NOT_FOUND, f"message {message_id} is no longer in the inbox stream (older than "
                            f"its {MAILBOX_MAX_AGE_DAYS}-day maximum age)", field="id", rule="mailbox-age",
                            message_id=message_id)
        inc = core.open_incoming(raw.data, subject=raw.subject, message_id=message_id,
                                 me=self.identity, registry=self.registry, snap=self.snapshot,
                                 now=self.clock(), checks=False, published=raw.time)
        return Opened(record=rec, envelope=inc.envelope, payload=inc.payload)

    async def ack(self, message_id: str, *, system: str | None = None) -> InRecord:
        async with self.store.lock(message_id):
            rec = await self._in_record(message_id, system)
            if rec.status == State.ACKNOWLEDGED.value:
                # a retry after a failed receipt: send it again (same dedupe id, so never twice)
                await self._receipt(message_id, State.ACKNOWLEDGED.value, rec.source)
                return rec
            if rec.status != State.DELIVERED.value:
                raise PsvnError(Code.CONFLICT, f"message {message_id} is {rec.status}, it cannot be acknowledged",
                                field="id", rule="lifecycle", message_id=message_id)
            rec = msgspec.structs.replace(rec, status=State.ACKNOWLEDGED.value)
            await self.store.close(rec)
        await self._receipt(message_id, State.ACKNOWLEDGED.value, rec.source)
        await self.audit("acknowledged", message_id=message_id, source=rec.source, type=rec.type)
        return rec

    async def _receipt(self, message_id: str, status: str, to_org: str, *, reason: str | None = None,
                       rule_ids: list[str] | None = None) -> None:
        to = self.registry.members.get(to_org)
        if to is None:
            log.warning("receipt not sent: sender unknown", message_id=message_id, to=to_org)
            return
        subject, rid, data = core.make_receipt(message_id=message_id, status=status, me=self.identity, to=to,
                                               reason=reason, rule_ids=rule_ids, now=self.clock())
        await self._publish(subject, data, rid)

    # -- ingress ------------------------------------------------------------------------------
    async def _consume(self) -> None:
        """Pull the inbox's consumer. Not nats-py's ``fetch``: it takes a stored message whose
        sender set a ``Status`` header for a server status and drops it unseen (``broker.natsraw``)."""
        batch = self.config.gateway.fetch_batch
        assert self.net is not None and self.raw is not None
        puller = await self.raw.puller(self.net, inbox_stream(self.org), CONSUMER)
        try:
            await self._consume_with(puller, batch)
        finally:
            await puller.close()

    async def _consume_with(self, puller: Puller, batch: int) -> None:
        while not self._stopping:
            try:
                msgs = await puller.fetch(batch, timeout=1)
            except (TimeoutError, NatsTimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("fetch failed", error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            # a batch is handled concurrently: each message waits on backbone round trips
            # (mailbox write, receipt, ack), not on the CPU, so they overlap well
            await asyncio.gather(*(self._handle_and_ack(msg) for msg in msgs))

    async def _handle_and_ack(self, msg: Msg) -> None:
        try:
            await self._handle(msg)
            await msg.ack()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never drop: leave it for redelivery
            log.error("message handling failed; will be redelivered", subject=msg.subject, error=repr(exc))
            with contextlib.suppress(Exception):
                await msg.nak(delay=2)

    async def _handle(self, msg: Msg) -> None:
        headers = msg.headers or {}
        seq = msg.metadata.sequence.stream
        raw_id = headers.get("Nats-Msg-Id")
        # the id is chosen by the sender: only a well-formed one may become a key of our state
        msg_id = raw_id if raw_id and _MSG_ID.fullmatch(raw_id) else f"seq-{seq}"
        if msg.subject.startswith("psvn.rcpt."):
            await self._handle_receipt(msg, msg_id, seq)
        else:
            await self._handle_message(msg, msg_id, seq)

    async def _handle_message(self, msg: Msg, msg_id: str, seq: int) -> None:
        filed = self.store.open.get(msg_id)
        if filed is not None:  # closed mail is recognised by store.file, after the decision
            await self._redelivered(filed)
            return
        received = now_rfc3339(self.clock())
        consulted = Consulted(consent=ConsentRegistry())
        try:
            me, snap = self.identity, self.snapshot
            opening = core.open_message(msg.data, subject=msg.subject, message_id=msg_id, me=me,
                                        registry=self.registry, snap=snap, now=self.clock(),
                                        published=msg.metadata.timestamp)
            consulted = await self.consult(opening.consent_subjects, msg_id)
            inc = core.decide_incoming(opening, me=me, snap=snap, message_id=msg_id, consent=consulted.consent)
        except PsvnError as exc:
            if exc.code in LAG_CODES and msg.metadata.num_delivered < LAG_RETRIES:
                raise  # our registry view (or this instance's keys) may lag: redelivered shortly (nak)
            if exc.code is Code.BACKBONE_UNAVAILABLE:
                raise  # a consent lookup the backbone did not answer: redelivered, never decided without it
            if exc.code is Code.POLICY_DENIED and consulted.lagging and msg.metadata.num_delivered < LAG_RETRIES:
                raise  # a consent record refused for its signature: our registry view may lag the operator's
            await self._quarantine(msg, msg_id, seq, exc, received)
            return
        except Exception as exc:  # a malformed message must be quarantined, not redelivered for ever
            await self._quarantine(msg, msg_id, seq, PsvnError(
                Code.INVALID_ENVELOPE, f"malformed message: {exc!r}", rule="malformed", message_id=msg_id), received)
            return
        env = inc.envelope
        share = self.config.gateway.sender_share_bytes
        if self.store.held.get(env.sender_org, 0) + len(inc.payload) > share:
            await self._quarantine(msg, msg_id, seq, PsvnError(
                Code.FORBIDDEN, f"{env.sender_org} already holds {self.store.held.get(env.sender_org, 0)} bytes of "
                f"unacknowledged mail in this inbox, its share is {share}: refused until the recipient acknowledges",
                field="source", rule="sender-share", message_id=msg_id), received)
            return
        if env.topic is not None:
            sub = self.feeds.get(self.org, env.topic)
            if sub is None or sub.purpose != env.purpose:
                await self._quarantine(msg, msg_id, seq, PsvnError(
                    Code.POLICY_DENIED, f"a feed event on {env.topic!r} for {env.purpose}, but this member has "
                    "no such subscription", field="topic", rule="not-subscribed", message_id=msg_id), received)
                return
        self.metrics.decisions.labels("ingress", "allow").inc()
        # the policy's retention for the type, within what the inbox stream keeps (a day's margin,
        # so the gateway deletes and audits it before the stream's own max age does)
        days = min(inc.decision.retention_days if inc.decision.retention_days is not None else MAILBOX_MAX_AGE_DAYS,
                   MAILBOX_MAX_AGE_DAYS - 1)
        on_file = await self.store.file(InRecord(
            id=env.id, source=env.source, to=env.to, type=env.type, time=env.time, status=State.DELIVERED.value,
            size=len(inc.payload), seq=seq, classification=env.classification, purpose=env.purpose,
            correlation_id=env.correlation_id, mailbox=env.mailbox, received=received,
            retain_until=now_rfc3339(parse_time(received) + timedelta(days=days))))
        if on_file is not None:  # filed before (a redelivery, or another instance): finish its steps, once
            await self._redelivered(on_file)
            return
        self.metrics.received.labels("delivered").inc()
        # filed: it is delivered. Audit first, so the record shares the receipt's socket write
        await self.audit("delivered", message_id=env.id, source=env.source, to=env.to, type=env.type,
                         purpose=env.purpose, classification=env.classification, rule_ids=inc.decision.rule_ids,
                         policy_version=inc.decision.policy_version, direction="ingress")
        await self._receipt(env.id, State.DELIVERED.value, env.sender_org)
        log.debug("message delivered", message_id=env.id, source=env.source, type=env.type)
        if self.webhook is not None:
            self.webhook.notify({"event": "message.delivered", "id": env.id, "from": env.source, "to": env.to,
                                 "mailbox": env.mailbox, "type": env.type, "time": env.time,
                                 "size": len(inc.payload), "href": f"/v1/inbox/{env.id}"})
        if env.type == CONSENT_TYPE and self.identity.member_type == OPERATOR_TYPE and inc.sender.type == "pds":
            await self._record_consent(env.id, env.sender_org, inc.payload)

    async def _redelivered(self, rec: InRecord | Gone) -> None:
        """A message already filed came again (we failed after filing it): repeat what follows
        filing. Every step is idempotent: receipts carry a fixed dedupe id."""
        if isinstance(rec, Gone):  # filed so long ago that its entry aged out: nothing to repeat
            log.info("message filed long ago came again; ignored", message_id=rec.id)
            return
        if rec.status in (State.DELIVERED.value, State.ACKNOWLEDGED.value):
            await self._receipt(rec.id, rec.status, addresses.org_of(rec.source))
            if rec.status == State.DELIVERED.value and rec.type == CONSENT_TYPE \
                    and self.identity.member_type == OPERATOR_TYPE:
                opened = await self.get(rec.id)
                await self._record_consent(rec.id, addresses.org_of(rec.source), opened.payload)
        elif rec.status == State.QUARANTINED.value and rec.source in self.registry.members and rec.reason \
                and not rec.reason.startswith((Code.DECRYPT_FAILED.value, Code.SIGNATURE_INVALID.value)):
            status = State.EXPIRED if rec.reason.startswith(Code.EXPIRED.value) else State.REJECTED
            await self._receipt(rec.id, status.value, rec.source, reason=rec.reason,
                                rule_ids=[rec.rule] if rec.rule else [])

    async def _record_consent(self, message_id: str, issuer: str, payload: bytes) -> None:
        """Operator gateway: make the change take effect network-wide, then acknowledge it."""
        changed = await self.consent.record(payload, issuer=issuer, message_id=message_id, operator=self.org,
                                            key=self.identity.signing_key)
        await self.audit("consent-recorded", message_id=message_id, source=issuer, changed=changed)
        await self.ack(message_id)

    async def _quarantine(self, msg: Msg, msg_id: str, seq: int, exc: PsvnError, received: str) -> None:
        sender_tok = msg.subject.split(".")[-1]
        sender_org = sender_tok.replace("_", ":", 1)
        on_file = await self.store.file(InRecord(
            id=msg_id, source=sender_org, to=self.org, type="unknown", time=received,
            status=State.QUARANTINED.value, size=len(msg.data), seq=seq,
            reason=core.stored_reason(exc), rule=exc.rule, received=received))
        if on_file is not None:
            await self._redelivered(on_file)  # already on file (a redelivery)
            return
        self.metrics.received.labels("quarantined").inc()
        await self._move_to_quarantine(msg, msg_id, seq, exc)
        if exc.code is Code.POLICY_DENIED:
            self.metrics.decisions.labels("ingress", "deny").inc()
        log.warning("message quarantined", message_id=msg_id, code=exc.code.value, rule=exc.rule,
                    source=sender_org)
        await self.audit("quarantined", message_id=msg_id, source=sender_org, code=exc.code.value, rule=exc.rule,
                         policy_version=self.policy.version, direction="ingress")
        if sender_org in self.registry.members and exc.code not in (Code.DECRYPT_FAILED, Code.SIGNATURE_INVALID):
            status = State.EXPIRED if exc.code is Code.EXPIRED else State.REJECTED
            await self._receipt(msg_id, status.value, sender_org, reason=core.stored_reason(exc),
                                rule_ids=exc.extra.get("rule_ids") or ([exc.rule] if exc.rule else []))

    async def _move_to_quarantine(self, msg: Msg, msg_id: str, seq: int, exc: PsvnError) -> None:
        """Out of the inbox, into the member's bounded quarantine stream: junk a sender pushes at
        us then counts against its quota in the inbox only until we have looked at it, and never
        fills the inbox for the other senders. Copied first, deleted after (a failure leaves it in
        the inbox, where the next look finds it on file)."""
        assert self.js is not None and self.net is not None
        headers = {"Nats-Msg-Id": f"q-{seq}", "Psvn-Subject": msg.subject, "Psvn-Message-Id": msg_id,
                   "Psvn-Rule": _header_safe(exc.rule or exc.code.value)}
        try:
            await self.js.publish(quarantine_subject(self.org), msg.data, headers=headers, timeout=3)
            await self.net.delete_msg(inbox_stream(self.org), seq)
        except Exception as err:  # kept in the inbox: nothing is lost, the quota is just held longer
            log.warning("quarantined message left in the inbox", message_id=msg_id, error=repr(err))

    async def _handle_receipt(self, msg: Msg, rid: str, seq: int) -> None:
        now = now_rfc3339(self.clock())
        try:
            receipt = core.open_receipt(msg.data, subject=msg.subject, receipt_msg_id=rid, me=self.identity,
                                        registry=self.registry, published=msg.metadata.timestamp)
        except PsvnError as exc:
            if exc.code in LAG_CODES and msg.metadata.num_delivered < LAG_RETRIES:
                raise  # as for messages: a rotation or a new member may not have reached us yet
            await self._quarantine(msg, rid, seq, exc, now)
            return
        except Exception as exc:
            await self._quarantine(msg, rid, seq, PsvnError(Code.INVALID_ENVELOPE, f"malformed receipt: {exc!r}",
                                                            rule="malformed"), now)
            return
        try:
            state = State(receipt.status)
        except ValueError:
            log.warning("receipt with unknown status ignored", message_id=receipt.message_id, status=receipt.status)
            return

        def from_its_recipient(sent: OutRecord) -> None:
            if addresses.org_of(sent.to) != receipt.by:  # only the member a message went to may say
                raise PsvnError(Code.SENDER_MISMATCH,    # what became of it
                                f"{receipt.by} sent a receipt for a message addressed to {sent.to}",
                                rule="receipt-recipient", message_id=receipt.message_id)

        try:
            moved = await self.store.move_out(receipt.message_id, state, reason=receipt.reason,
                                              rule_ids=receipt.rule_ids or None, check=from_its_recipient)
        except PsvnError as exc:
            if exc.code is not Code.SENDER_MISMATCH:
                raise
            await self._quarantine(msg, rid, seq, exc, now)
            return
        self.metrics.receipts.labels(receipt.status).inc()
        if moved is not None and moved.status not in _UNSETTLED:
            self._settled(receipt.message_id)
