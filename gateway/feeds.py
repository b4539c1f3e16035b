"""Pub/sub feeds: who subscribed to which topic, network-wide (the ``psvn_feeds`` KV bucket).

A subscriber's gateway writes its own subscriptions (backbone permissions let it write only
under its own token); every gateway follows the bucket. A publisher's gateway fans an event out
as one sealed message per subscriber the feed rules allow, on the point-to-point path, so each
delivery is validated, decided at egress and ingress, receipted and audited like any message,
and the backbone still sees only tokens, ids, sizes and times.
"""

from __future__ import annotations

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from psvn.backbone.kvwatch import KV_OPERATION, SharedFollower
from psvn.backbone.natsraw import RawReads
from psvn.core.addresses import token
from psvn.protocol.subjects import FEEDS_BUCKET

log = structlog.get_logger("psvn.gateway.feeds")


class Subscription(msgspec.Struct, kw_only=True, frozen=True):
    subscriber: str  # organisation address
    topic: str
    purpose: str
    mailbox: str | None = None
    created: str = ""

    @property
    def to(self) -> str:
        return f"{self.subscriber}/{self.mailbox}" if self.mailbox else self.subscriber


def key_for(subscriber: str, topic: str) -> str:
    return f"s.{token(subscriber)}.{topic}"


class FeedView:
    """A gateway's live copy of every subscription: topic -> subscriber -> subscription."""

    def __init__(self) -> None:
        self.topics: dict[str, dict[str, Subscription]] = {}
        self._keys: dict[str, tuple[str, str]] = {}  # bucket key -> (topic, subscriber)
        self._follower = SharedFollower()
        self._js: JetStreamContext | None = None
        self._raw: RawReads | None = None

    def apply(self, key: str, value: bytes | None, revision: int = 0) -> None:
        old = self._keys.pop(key, None)
        if old is not None:
            self.topics.get(old[0], {}).pop(old[1], None)
        if not value:
            return
        try:
            sub = msgspec.json.decode(value, type=Subscription)
        except msgspec.DecodeError as exc:
            log.error("subscription ignored: malformed", key=key, error=str(exc))
            return
        if key != key_for(sub.subscriber, sub.topic):  # the key (which permissions bind) is the truth
            log.error("subscription ignored: key and content disagree", key=key)
            return
        self.topics.setdefault(sub.topic, {})[sub.subscriber] = sub
        self._keys[key] = (sub.topic, sub.subscriber)

    def subscribers(self, topic: str) -> list[Subscription]:
        return sorted(self.topics.get(topic, {}).values(), key=lambda s: s.subscriber)

    def of(self, subscriber: str) -> list[Subscription]:
        return sorted((s for subs in self.topics.values() for s in subs.values() if s.subscriber == subscriber),
                      key=lambda s: s.topic)

    def get(self, subscriber: str, topic: str) -> Subscription | None:
        return self.topics.get(topic, {}).get(subscriber)

    async def refresh(self, topic: str) -> list[Subscription]:
        """The topic's subscriptions as the bucket holds them now, read where they live.

        A publisher reads them at publish time: a subscription another member wrote a moment ago
        reached the bucket through that member's import, and such writes raise no change
        notification in other accounts (only the periodic resync would bring them)."""
        assert self._js is not None
        stream, prefix = f"KV_{FEEDS_BUCKET}", f"$KV.{FEEDS_BUCKET}."
        info = await self._js.stream_info(stream, subjects_filter=f"{prefix}s.*.{topic}")
        live = set((info.state.subjects or {}) if info.state else {})
        for key in [k for k, (t, _) in self._keys.items() if t == topic and prefix + k not in live]:
            self.apply(key, None)
        assert self._raw is not None
        for subject in sorted(live):
            try:
                msg = await self._raw.direct_get(self._js, stream, subject=subject)
            except NotFoundError:
                continue
            except Exception as exc:  # one unreadable subscription must not stop the others
                log.error("subscription unreadable", key=subject[len(prefix):], error=repr(exc))
                continue
            deleted = (msg.headers or {}).get(KV_OPERATION) in ("DEL", "PURGE")
            self.apply(subject[len(prefix):], None if deleted else msg.data)
        return self.subscribers(topic)

    async def start(self, js: JetStreamContext, *, timeout: float = 10.0) -> None:
        self._js = js
        self._raw = RawReads(js._nc)
        await self._follower.follow(js, FEEDS_BUCKET, self.apply, timeout=timeout)

    async def stop(self) -> None:
        await self._follower.stop()
        if self._raw is not None:
            await self._raw.close()

    async def put(self, sub: Subscription) -> None:
        assert self._js is not None
        kv = await self._js.key_value(FEEDS_BUCKET)
        key = key_for(sub.subscriber, sub.topic)
        self.apply(key, msgspec.json.encode(sub), await kv.put(key, msgspec.json.encode(sub)))

    async def delete(self, subscriber: str, topic: str) -> bool:
        if self.get(subscriber, topic) is None:
            return False
        assert self._js is not None
        kv = await self._js.key_value(FEEDS_BUCKET)
        key = key_for(subscriber, topic)
        await kv.delete(key)
        self.apply(key, None)
        return True
