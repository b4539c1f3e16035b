"""What a member does with feeds: subscribe, unsubscribe, and publish an event.

:mod:`gateway.feeds` holds who subscribed to what, network-wide. Here a subscription is decided
by the feed rules before it is written, and a published event is fanned out as one ordinary
send per subscriber (:meth:`Egress.send` with the topic), so each delivery is checked, sealed,
receipted and audited like any message and one subscriber's refusal never stops the others.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import msgspec

from psvn.core import addresses
from psvn.core.errors import Code, PsvnError
from psvn.gateway import core
from psvn.gateway.audit import Audit
from psvn.gateway.egress import Egress
from psvn.gateway.feeds import FeedView, Subscription
from psvn.gateway.member import Member
from psvn.gateway.store import message_id_for
from psvn.policies.engine import DecisionRequest
from psvn.protocol.envelope import (
    FeedRequest,
    SendRequest,
    SubscribeRequest,
    check_topic,
    new_message_id,
    now_rfc3339,
    payload_bytes,
)


class FeedActions:
    def __init__(self, *, member: Member, feeds: FeedView, egress: Egress, clock: Callable[[], datetime],
                 audit: Audit) -> None:
        self.member = member
        self.org = member.org
        self.feeds = feeds
        self.egress = egress
        self.clock = clock
        self.audit = audit

    async def subscribe(self, topic: str, req: SubscribeRequest, *, system: str) -> Subscription:
        """Subscribe this member to ``topic`` for a purpose, if the feed rules let it subscribe."""
        check_topic(topic)
        if req.mailbox is not None:
            addresses.parse(f"{self.org}/{req.mailbox}")  # a well-formed mailbox name, or a clear error
        me = self.member.identity
        decision = self.member.snapshot.engine.decide(DecisionRequest(
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

    async def _receivers(self, topic: str, purpose: str) -> list[Subscription]:
        """Who an event on ``topic`` for ``purpose`` goes to: its subscribers for that purpose,
        this member apart."""
        return [sub for sub in await self.feeds.refresh(topic)
                if sub.subscriber != self.org and sub.purpose == purpose]

    async def _earlier_deliveries(self, topic: str, event_id: str, purpose: str, secret: bytes,
                                  system: str) -> list[dict[str, object]]:
        """The deliveries an event published before made, read where their records live (each
        delivery's id is derived from the event's, as :meth:`publish` sends it)."""
        found: list[dict[str, object]] = []
        for sub in await self._receivers(topic, purpose):
            rec = await self.egress.store.out_record(
                message_id_for(secret, self.org, system, _delivery_key(event_id, sub.subscriber)))
            if rec is not None:
                found.append({"to": sub.to, "id": rec.id, "status": rec.status})
        return found

    async def publish(self, topic: str, req: FeedRequest, *, system: str) -> dict[str, object]:
        """Publish one event: one sealed message per subscriber (for this purpose) the feed rules
        allow, each on the point-to-point path. Returns the deliveries and the refusals. With an
        idempotency key the event's id is derived from it (as a message's is), so a retry is the
        same event: each delivery a repeat of its first send, not a conflict with it."""
        retry_key = req.idempotency_key
        secret = self.egress.store.id_secret
        event_id = (message_id_for(secret, self.org, system, f"feed\x00{topic}\x00{retry_key}")
                    if retry_key and secret else new_message_id())
        check_topic(topic)
        base = SendRequest(to=self.org, type=req.type, payload=req.payload, purpose=req.purpose,
                           classification=req.classification, subject=req.subject,
                           correlation_id=req.correlation_id or event_id, ttl_seconds=req.ttl_seconds,
                           datacontenttype=req.datacontenttype)
        try:
            snap = self.member.snapshot
            entry = snap.catalogue.get(req.type, message_id=event_id)
            core.validate_payload(snap, req.type, payload_bytes(req.payload), event_id,
                                  content_type=req.datacontenttype or entry.datacontenttype)
            core.decide_publish(snap, base, me=self.member.identity, topic=topic, message_id=event_id)
        except PsvnError as exc:
            if retry_key and secret:  # a retry of an event published before the checks changed?
                earlier = await self._earlier_deliveries(topic, event_id, req.purpose, secret, system)
                if earlier:  # it went out then: say what became of it, never refuse it as unsent
                    return {"event": event_id, "topic": topic, "deliveries": earlier, "refused": []}
            raise await self.egress.reject_request(exc, system=system) from None
        deliveries: list[dict[str, object]] = []
        refused: list[dict[str, object]] = []
        for sub in await self._receivers(topic, req.purpose):
            key = _delivery_key(event_id, sub.subscriber) if retry_key else None
            try:
                rec, _ = await self.egress.send(msgspec.structs.replace(base, to=sub.to, idempotency_key=key),
                                                system=system, topic=topic)
                deliveries.append({"to": sub.to, "id": rec.id, "status": rec.status})
            except PsvnError as exc:  # this subscriber only: the others still get the event
                refused.append({"to": sub.to, "code": exc.code.value, "rule": exc.rule,
                                "rule_ids": exc.extra.get("rule_ids") or [], "message_id": exc.message_id})
        await self.audit("published", message_id=event_id, topic=topic, type=req.type, purpose=req.purpose,
                         deliveries=len(deliveries), refused=len(refused), system=system, direction="egress")
        return {"event": event_id, "topic": topic, "deliveries": deliveries, "refused": refused}


def _delivery_key(event_id: str, subscriber: str) -> str:
    """The idempotency key of one delivery of an event with a key: per event (so per topic and
    key), and bounded in length whatever the caller's key was."""
    return f"{event_id}/{subscriber}"
