"""Provision the backbone: streams, consumers and buckets for the network and each member.

Idempotent: running it again on a provisioned backbone changes nothing.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    KeyNotFoundError,
    NotFoundError,
)

from psvn.backbone.buckets import DAY, ensure_kv
from psvn.backbone.connect import patiently
from psvn.core.addresses import token
from psvn.core.errors import Code, PsvnError
from psvn.policies import bundle
from psvn.protocol.subjects import (
    BROKER_AUDIT,
    CONSENT_BUCKET,
    CONSUMER,
    FEEDS_BUCKET,
    MAILBOX_MAX_AGE_DAYS,
    POLICY_BUCKET,
    POLICY_KEY,
    REGISTRY_BUCKET,
    audit_stream,
    audit_subject,
    inbox_stream,
    quarantine_stream,
    quarantine_subject,
)

MIB = 1024 * 1024
# Every stream and bucket has a byte limit, so their sum (reserved by JetStream) bounds the store:
# nothing a member writes can fill the backbone for everyone.
BUCKET_MAX_BYTES = {REGISTRY_BUCKET: 64 * MIB, POLICY_BUCKET: 64 * MIB, CONSENT_BUCKET: 256 * MIB,
                    FEEDS_BUCKET: 64 * MIB}
BUCKET_MAX_VALUE = 1 * MIB  # a policy set is the largest value (hundreds of KiB)
AUDIT_MAX_BYTES = 256 * MIB  # per member
AUDIT_MAX_RECORD = 64 * 1024
# per member: what its gateway refused, kept as evidence; bounded, the oldest goes first (it is
# junk by definition: the sender was told, and the audit stream keeps the record of it)
QUARANTINE_MAX_BYTES = 64 * MIB


async def provision_network(js: JetStreamContext, *, replicas: int = 1) -> None:
    """The shared buckets in the network account, each with a byte limit. History is kept (the
    registry 5 deep, the policy set 64) so a bad value can be recovered from."""
    for bucket, history in ((REGISTRY_BUCKET, 5), (POLICY_BUCKET, 64), (CONSENT_BUCKET, 5), (FEEDS_BUCKET, 1)):
        await ensure_kv(js, bucket, history=history, replicas=replicas, max_bytes=BUCKET_MAX_BYTES[bucket],
                  max_value_size=BUCKET_MAX_VALUE)
        await refuse_rollups(js, f"KV_{bucket}")
    await provision_audit(js, BROKER_AUDIT, replicas=replicas)


async def refuse_rollups(js: JetStreamContext, stream: str) -> None:
    """KV streams are made with rollup headers allowed (for ``kv.purge``): a member that may write
    one key of a shared bucket could then send ``Nats-Rollup: all`` and wipe every key. Nothing of
    ours purges a shared bucket, so they refuse rollups."""
    async def step() -> None:
        cfg = (await js.stream_info(stream)).config
        if cfg.allow_rollup_hdrs:
            cfg.allow_rollup_hdrs = False
            await js.update_stream(cfg)

    await patiently(step, what=f"stream {stream} without rollups")


async def _ensure_stream(js: JetStreamContext, cfg: StreamConfig) -> None:
    assert cfg.name is not None

    async def step() -> None:
        try:
            await js.stream_info(cfg.name)  # type: ignore[arg-type]
        except NotFoundError:
            await js.add_stream(cfg)

    await patiently(step, what=f"stream {cfg.name}")


INBOX_MAX_BYTES = 512 * 1024 * 1024
PER_SENDER_MAX_MSGS = 100_000


async def provision_member(js: JetStreamContext, org: str, *, replicas: int = 1,
                           retention_days: float = MAILBOX_MAX_AGE_DAYS, max_bytes: int = INBOX_MAX_BYTES,
                           per_sender_max_msgs: int = PER_SENDER_MAX_MSGS) -> None:
    """The member's inbox stream (the mailbox *is* the stream), its consumer and state bucket.

    Quotas: the inbox has a byte limit, and each sender (one subject per sender token) a message
    limit; when full, *new* messages are refused (the sending gateway answers 503) rather than
    old ones discarded, so one member cannot flood another's mailbox or push out its mail.
    """
    t = token(org)
    stream = inbox_stream(org)
    await _ensure_stream(js, StreamConfig(
        name=stream, subjects=[f"psvn.msg.{t}.*", f"psvn.rcpt.{t}.*"], retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE, num_replicas=replicas, max_age=retention_days * DAY,
        duplicate_window=120.0, allow_direct=True, max_msg_size=4 * 1024 * 1024, max_bytes=max_bytes,
        max_msgs_per_subject=per_sender_max_msgs, discard=DiscardPolicy.NEW, discard_new_per_subject=True))
    async def consumer() -> None:
        try:
            await js.consumer_info(stream, CONSUMER)
        except NotFoundError:
            await js.add_consumer(stream, ConsumerConfig(
                durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                ack_wait=10.0, max_deliver=-1, max_ack_pending=10000))  # redelivery is idempotent: fail over fast

    await patiently(consumer, what=f"consumer {stream}/{CONSUMER}")
    await provision_audit(js, org, replicas=replicas)
    await _ensure_stream(js, StreamConfig(
        name=quarantine_stream(org), subjects=[quarantine_subject(org)], retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE, num_replicas=replicas, max_age=retention_days * DAY,
        max_bytes=QUARANTINE_MAX_BYTES, max_msg_size=4 * 1024 * 1024 + 4096, discard=DiscardPolicy.OLD,
        duplicate_window=120.0))


async def provision_audit(js: JetStreamContext, writer: str, *, replicas: int = 1) -> None:
    """An audit stream of the writer's own (a member, or the broker): its byte limit is its own, so
    a member flooding its audit fills only that, and the stream (not a field inside the record)
    says who wrote it. Full: new records are refused (and counted lost by the writer), old kept."""
    await _ensure_stream(js, StreamConfig(
        name=audit_stream(writer), subjects=[audit_subject(writer)], retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE, num_replicas=replicas, max_age=365 * DAY, max_bytes=AUDIT_MAX_BYTES,
        max_msg_size=AUDIT_MAX_RECORD, discard=DiscardPolicy.NEW, duplicate_window=120.0))


async def publish_policy(js: JetStreamContext, signed: bundle.SignedPolicySet) -> int:
    """Put a signed policy set in the bucket; refuse a version that does not increase."""
    kv = await js.key_value(POLICY_BUCKET)
    try:
        entry = await kv.get(POLICY_KEY)
    except KeyNotFoundError:
        return await kv.create(POLICY_KEY, bundle.encode(signed))
    current = bundle.decode(entry.value or b"")
    if signed.version <= current.version:
        raise PsvnError(Code.POLICY_VERSION_REGRESSION,
                        f"policy set version {signed.version} is not newer than the published {current.version}",
                        rule="policy-version-increase")
    assert entry.revision is not None
    return await kv.update(POLICY_KEY, bundle.encode(signed), last=entry.revision)
