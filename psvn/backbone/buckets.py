"""Key-value buckets as psvn makes them: file storage, direct gets, a byte limit, made once.

The broker provisions the network's buckets with :func:`ensure_kv`; a gateway makes its own state
bucket (:func:`provision_state_bucket`) in its member's account.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, ServerError
from nats.js.kv import KeyValue

from psvn.backbone.connect import patiently
from psvn.protocol.subjects import MAILBOX_MAX_AGE_DAYS, state_bucket

DAY = 86400.0
STORE_BEING_CREATED = 10049  # JetStream: "error creating store for stream"


async def ensure_kv(js: JetStreamContext, bucket: str, *, history: int, replicas: int,
                    ttl: float | None = None, max_bytes: int = -1, max_value_size: int = -1,
                    limit_marker_ttl: float | None = None) -> KeyValue:
    async def step() -> KeyValue:
        try:
            return await js.key_value(bucket)
        except BucketNotFoundError:
            pass
        try:
            return await js.create_key_value(KeyValueConfig(bucket=bucket, history=history, replicas=replicas,
                                                            storage=StorageType.FILE, ttl=ttl, direct=True,
                                                            max_bytes=max_bytes, max_value_size=max_value_size,
                                                            limit_marker_ttl=limit_marker_ttl))
        except AttributeError:
            # seen on a 3-node backbone: the create's answer came without the stream's config and
            # nats-py reads ``si.config.allow_direct`` from it; the stream exists, so open it
            return await js.key_value(bucket)
        except ServerError as exc:
            if exc.err_code != STORE_BEING_CREATED:
                raise
            # seen on a 3-node backbone after a create that timed out: its peers were still making
            # the stream's store; ride it out like an election, then open what they made
            raise TimeoutError(f"bucket {bucket}: the stream's store is still being created") from exc

    return await patiently(step, what=f"bucket {bucket}")


STATE_MARKER_TTL = 3600.0  # how long the marker of an entry that aged out stays in the state bucket


async def provision_state_bucket(js: JetStreamContext, org: str, *, replicas: int = 1,
                                 retention_days: float = MAILBOX_MAX_AGE_DAYS) -> KeyValue:
    """A member's state bucket, in its own account (its JetStream limits bound it): statuses,
    mailbox index and idempotency keys live as long as the mail itself. The gateway makes it.

    With limit markers: when an entry ages out (the bucket's TTL), the server leaves a marker that
    watchers see as a purge, so what a gateway holds of it is released too (without markers a
    watcher is never told that MaxAge removed an entry)."""
    return await ensure_kv(js, state_bucket(org), history=1, replicas=replicas, ttl=retention_days * DAY,
                     limit_marker_ttl=STATE_MARKER_TTL)
