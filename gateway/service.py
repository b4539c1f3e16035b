"""The gateway service: the one wiring point, and the lifecycle of the member's connection.

``Gateway(config)`` builds every part (keys, registry view, policy holder, state store, metrics)
and the components a message travels through, each given only what it needs; tests may inject
a clock. ``start()`` connects to the backbone and begins consuming the member's inbox; ``stop()``
undoes it. What each way does lives in its own module:

- :mod:`gateway.egress`: a local system's send, sealed and published; receipts back to senders
- :mod:`gateway.ingress`: what arrives in the inbox, filed or quarantined; receipts that arrive
- :mod:`gateway.mailbox`: reading, acknowledging, and the status of what was sent
- :mod:`gateway.sweeps`: expiry of unsettled sends, retention of received mail
- :mod:`gateway.sent_step`: the `sent` step a receipt did not write in time
- :mod:`gateway.feed_actions`: subscribing and publishing (fanned out as sends)

The methods here are the surface the HTTP views, the devnet and the tests call; they hand the
request to the component that holds it. Protocol decisions live in gateway.core (pure).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from psvn.backbone.buckets import provision_state_bucket
from psvn.backbone.connect import connect
from psvn.backbone.jsfast import JetStreamOps
from psvn.backbone.natsraw import RawReads
from psvn.backbone.registry_view import RegistryView
from psvn.certs import tls
from psvn.core.errors import PsvnError
from psvn.core.tasks import halt
from psvn.gateway import core
from psvn.gateway.audit import Audit
from psvn.gateway.config import GatewayConfig
from psvn.gateway.consent import ConsentLookup, Consulted
from psvn.gateway.egress import Egress
from psvn.gateway.feed_actions import FeedActions
from psvn.gateway.feeds import FeedView, Subscription
from psvn.gateway.ingress import MSG_ID, Ingress
from psvn.gateway.link import BackboneLink, Publish
from psvn.gateway.mailbox import Mailbox, Opened
from psvn.gateway.member import Keys, Member, trust_anchor
from psvn.gateway.metrics import Metrics
from psvn.gateway.parts import Shared
from psvn.gateway.policy import PolicyHolder
from psvn.gateway.sent_step import SentSteps
from psvn.gateway.store import InRecord, OutRecord, StateStore
from psvn.gateway.sweeps import Sweeper
from psvn.gateway.webhook import WebhookPusher, check_url, load_secret
from psvn.policies.consent import ConsentRegistry
from psvn.policies.snapshot import PolicySnapshot
from psvn.protocol import seal
from psvn.protocol.envelope import FeedRequest, SendRequest, SubscribeRequest
from psvn.protocol.subjects import (
    CONSENT_BUCKET,
    OPERATOR_JS_PREFIX,
    POLICY_BUCKET,
    REGISTRY_BUCKET,
    inbox_prefix,
)

log = structlog.get_logger("psvn.gateway")

_MSG_ID = MSG_ID  # the name older callers import from here
SENT_STEPS_AT_STOP = 2.0  # seconds a stopping gateway gives the sent steps still waiting


def _webhook(config: GatewayConfig) -> WebhookPusher | None:
    w = config.webhook
    if w is None:
        return None
    check_url(w.url)  # before the secret is read: a bad URL is the error to report
    return WebhookPusher(w.url, load_secret(w.secret_file), ca=w.ca, attempts=w.attempts,
                         timeout=w.timeout_seconds)


class Gateway:
    def __init__(self, config: GatewayConfig, *, clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.org = config.gateway.org
        self.clock = clock or (lambda: datetime.now(UTC))
        keys = Keys.load(config.keys)
        authority = trust_anchor(config.keys.policy_authority, "keys.policy_authority")
        registry_authority = trust_anchor(config.keys.registry_authority, "keys.registry_authority")
        self.metrics = Metrics()
        self.registry = RegistryView(registry_authority, on_refused=self._backbone_value_refused)
        self.policy = PolicyHolder(authority, on_change=self._policy_changed, on_refused=self._backbone_value_refused)
        g = config.gateway
        self.member = Member(self.org, keys, self.registry, self.policy,
                             data_keys=seal.DataKeys(uses=g.seal_data_key_uses, seconds=g.seal_data_key_seconds,
                                                     size=g.seal_data_keys),
                             opened_keys=seal.OpenedKeys(size=g.seal_opened_keys))
        self.metrics.seal_data_keys.set_function(lambda: len(self.member.data_keys))
        self.metrics.seal_opened_keys.set_function(lambda: len(self.member.opened_keys))
        self.store = StateStore(self.org, cache_size=config.gateway.record_cache_size)
        self.metrics.open_mail.set_function(lambda: len(self.store.open))
        self.metrics.record_cache.set_function(lambda: len(self.store._recent))
        self.consent = ConsentLookup(
            self.registry, on_refused=lambda _s, _e: self.metrics.count(self.metrics.values_refused, CONSENT_BUCKET))
        self.feeds = FeedView()
        self.webhook = _webhook(config)
        self.link = BackboneLink()
        self._consumer: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._sent_steps: asyncio.Task[None] | None = None
        self._rejoin: asyncio.Task[None] | None = None  # rejoining the backbone after nats-py gave up
        self._started = False
        self._stopping = False
        self._background: set[asyncio.Task[None]] = set()
        audit = self._audit = Audit(org=self.org, clock=self.clock, link=self.link, on_lost=self.metrics.audit_lost.inc,
                                    linger=config.gateway.audit_linger_seconds)
        self.audit_log = audit.writer

        def stopping() -> bool:
            return self._stopping

        # the components a message travels through, each given what it touches and no more
        settings, member, registry, store, link, clock = (config.gateway, self.member, self.registry, self.store,
                                                          self.link, self.clock)
        self.sent_steps = SentSteps(store=store, settings=settings, clock=clock, metrics=self.metrics,
                                    stopping=stopping)
        self.sweeper = Sweeper(org=self.org, settings=settings, store=store, link=link, clock=clock,
                               metrics=self.metrics, audit=audit, sent_steps=self.sent_steps, stopping=stopping)
        shared = Shared(member=member, settings=settings, registry=registry, store=store, link=link, clock=clock,
                        metrics=self.metrics, audit=audit)
        self.egress = Egress(shared, consult=self.consult, sweeper=self.sweeper, sent_steps=self.sent_steps)
        self.mailbox = Mailbox(shared, egress=self.egress, sweeper=self.sweeper, consent=self.consent)
        self.ingress = Ingress(shared, consult=self.consult, egress=self.egress, mailbox=self.mailbox,
                               sweeper=self.sweeper, feeds=self.feeds, webhook=self.webhook, stopping=stopping)
        self.feed_actions = FeedActions(member=member, feeds=self.feeds, egress=self.egress, clock=clock, audit=audit)

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
        self.metrics.count(self.metrics.values_refused, bucket)

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
    async def start(self) -> None:
        await self._join_backbone()
        self._started = True
        self._sweeper = asyncio.create_task(self.sweeper.run(), name=f"expiry {self.org}")
        self._sent_steps = asyncio.create_task(self.sent_steps.run(), name=f"sent steps {self.org}")
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
        link = self.link
        link.nc = nc
        try:
            self.metrics.backbone_up.set(1)
            link.js = js = nc.jetstream()
            link.net = net = nc.jetstream(prefix=OPERATOR_JS_PREFIX)
            await self.registry.start(net)
            self.registry.lookup(self.org, field="gateway.org", require_active=False)
            await provision_state_bucket(js, self.org, replicas=n.replicas)
            link.ops = ops = await JetStreamOps(nc).start()
            await self.store.start(js, ops)
            self.metrics.state_loaded.set(self.store.loaded)
            self.policy.floor = self.store.policy_floor
            await self.policy.start(net, timeout=self.config.gateway.policy_wait_seconds)
            link.net_ops = net_ops = await JetStreamOps(nc, api_prefix=OPERATOR_JS_PREFIX).start()
            await self.consent.start(net, net_ops)
            await self.feeds.start(net)
            link.raw = RawReads(nc)
        except BaseException:
            await self._leave_backbone()
            raise
        self._consumer = asyncio.create_task(self.ingress.consume(), name=f"consume {self.org}")

    async def _leave_backbone(self) -> None:
        await halt(self._consumer)
        self._consumer = None
        for part in (self.feeds, self.consent, self.store, self.policy, self.registry):
            with contextlib.suppress(Exception):
                await part.stop()
        await self.link.close()
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
        for task in (self._rejoin, self._sweeper, self._consumer, self._sent_steps):
            await halt(task)
        await self.sent_steps.close(SENT_STEPS_AT_STOP)  # bounded: left undone, a record stays accepted
        await self.egress.drain(SENT_STEPS_AT_STOP)  # claims of refused or failed sends being taken back
        if self.webhook is not None:
            await self.webhook.close()
        await self._audit.close()  # bounded; what is left is logged and counted
        await self._leave_backbone()

    @property
    def connected(self) -> bool:
        return self.link.connected

    # -- audit (metadata only: never payloads) ---------------------------------------------
    async def audit(self, event: str, **fields: object) -> None:
        """Record an event on the member's audit stream, acknowledged, without holding up the
        message: queued at once, written by :class:`gateway.audit.AuditWriter` in batches."""
        await self._audit(event, **fields)

    async def consult(self, subjects: frozenset[str], message_id: str) -> Consulted:
        """The consent of exactly the subjects a decision names, read now (no copy is kept, so an
        opt-out recorded a moment ago applies). A backbone that does not answer refuses the
        message (retry later), never decides it as "no opt-out". Shared by both ways: a send is
        decided with it at egress, a received message again at ingress."""
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

    # -- the surface callers use: each call goes to the component that holds it ---------------
    async def reject_request(self, exc: PsvnError, *, system: str | None) -> PsvnError:
        return await self.egress.reject_request(exc, system=system)

    async def send(self, req: SendRequest, *, system: str, topic: str | None = None) -> tuple[OutRecord, bool]:
        return await self.egress.send(req, system=system, topic=topic)

    async def send_batch(self, items: Sequence[SendRequest | PsvnError], *,
                         system: str) -> list[tuple[OutRecord, bool] | PsvnError]:
        return await self.egress.send_batch(items, system=system)

    async def subscribe(self, topic: str, req: SubscribeRequest, *, system: str) -> Subscription:
        return await self.feed_actions.subscribe(topic, req, system=system)

    async def unsubscribe(self, topic: str, *, system: str) -> None:
        await self.feed_actions.unsubscribe(topic, system=system)

    async def publish(self, topic: str, req: FeedRequest, *, system: str) -> dict[str, object]:
        return await self.feed_actions.publish(topic, req, system=system)

    async def status(self, message_id: str, *, system: str | None = None) -> OutRecord:
        return await self.mailbox.status(message_id, system=system)

    async def sent(self, *, system: str | None = None, status: str | None = None, after: int = 0,
                   limit: int = 100) -> list[tuple[int, OutRecord]]:
        return await self.mailbox.sent(system=system, status=status, after=after, limit=limit)

    def may_read(self, system: str | None, rec: InRecord) -> bool:
        return self.mailbox.may_read(system, rec)

    async def inbox(self, *, mailbox: str | None = None, status: str | None = None, limit: int = 100,
                    system: str | None = None, after: int = 0) -> list[InRecord]:
        return await self.mailbox.inbox(mailbox=mailbox, status=status, limit=limit, system=system, after=after)

    def inbox_position(self, rec: InRecord) -> int:
        return self.mailbox.inbox_position(rec)

    async def get(self, message_id: str, *, system: str | None = None) -> Opened:
        return await self.mailbox.get(message_id, system=system)

    async def ack(self, message_id: str, *, system: str | None = None) -> InRecord:
        return await self.mailbox.ack(message_id, system=system)

    # -- state the components hold, where callers and tests have always found it --------------
    @property
    def identity(self) -> core.Identity:
        return self.member.identity

    @property
    def snapshot(self) -> PolicySnapshot:
        return self.member.snapshot

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        return self.member.keys.signing

    @property
    def signing_keys(self) -> list[Ed25519PrivateKey]:
        return self.member.keys.signing_ring

    @property
    def nc(self) -> NATS | None:
        return self.link.nc

    @property
    def js(self) -> JetStreamContext | None:
        return self.link.js

    @property
    def ops(self) -> JetStreamOps | None:
        return self.link.ops

    @property
    def net_ops(self) -> JetStreamOps | None:
        return self.link.net_ops

    @property
    def _publish(self) -> Publish:
        """Every publish of a message or a receipt (tests replace it to fail or delay one)."""
        return self.link.publish

    @_publish.setter
    def _publish(self, publish: Publish) -> None:
        self.link.publish = publish

    @property
    def state_write_error(self) -> str | None:
        """Why the last write of a sent message's record failed (None: it succeeded)."""
        return self.egress.state_write_error

    @state_write_error.setter
    def state_write_error(self, error: str | None) -> None:
        self.egress.state_write_error = error

    @property
    def sweeps(self) -> int:
        """Expiry and retention sweeps begun (tests wait on it: "several sweeps ran", not a sleep)."""
        return self.sweeper.begun

    @property
    def _expiring(self) -> dict[str, str]:
        return self.sweeper.expiring
