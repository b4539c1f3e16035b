"""Backbone names: subjects, streams, buckets. One place, so permissions and code agree.

A gateway publishes only on subjects that carry its own token as the *sender* token, so the
subject itself proves who sent a message (NATS does not stamp the authenticated user).
"""

from __future__ import annotations

from psvn.addresses import token

REGISTRY_BUCKET = "psvn_registry"
POLICY_BUCKET = "psvn_policy"
POLICY_KEY = "current"
CONSENT_BUCKET = "psvn_consent"
FEEDS_BUCKET = "psvn_feeds"  # feed subscriptions: each gateway writes only its own
OPERATOR = "psvn:operator"  # the network operator's own gateway (records consent network-wide)
AUDIT_STREAM = "AUDIT"
AUDIT_SUBJECTS = "psvn.audit.>"
CONSUMER = "gw"
BROKER_URI = "urn:psvn:broker"
# How long an inbox stream keeps mail (its max age) and a state bucket its entries (TTL). A
# gateway deletes mail earlier when the policy's retention for its type is shorter, and refuses a
# message older than this at arrival (it could be a replay of mail already deleted).
MAILBOX_MAX_AGE_DAYS = 30


def inbox_stream(org: str) -> str:
    return f"INBOX_{token(org)}"


def state_bucket(org: str) -> str:
    return f"psvn_state_{token(org)}"


def msg_subject(recipient: str, sender: str) -> str:
    return f"psvn.msg.{token(recipient)}.{token(sender)}"


def rcpt_subject(recipient: str, sender: str) -> str:
    return f"psvn.rcpt.{token(recipient)}.{token(sender)}"


def audit_subject(org: str) -> str:
    return f"psvn.audit.{token(org)}"


def inbox_prefix(org: str) -> str:
    return f"_INBOX_{token(org)}"


def gateway_permissions(org: str) -> dict[str, dict[str, list[str]]]:
    """The minimum a gateway needs (FIELD-NOTES): never ``$JS.API.>``."""
    t = token(org)
    stream = inbox_stream(org)
    state = state_bucket(org)
    publish = [
        f"psvn.msg.*.{t}",
        f"psvn.rcpt.*.{t}",
        f"psvn.audit.{t}",
        # its own durable consumer on its own inbox
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{CONSUMER}",
        f"$JS.ACK.{stream}.{CONSUMER}.>",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.DELETE.{stream}",  # the policy's retention: mail deleted when it is over
        # its own state bucket (outbox statuses, mailbox index)
        f"$KV.{state}.>",
        f"$JS.API.STREAM.INFO.KV_{state}",
        f"$JS.API.DIRECT.GET.KV_{state}.>",
        f"$JS.API.CONSUMER.CREATE.KV_{state}",
        f"$JS.API.CONSUMER.CREATE.KV_{state}.>",
        f"$JS.API.CONSUMER.DELETE.KV_{state}.>",
        f"$JS.API.CONSUMER.INFO.KV_{state}.>",
    ]
    if org == OPERATOR:
        publish.append(f"$KV.{CONSENT_BUCKET}.>")
    publish.append(f"$KV.{FEEDS_BUCKET}.s.{t}.>")  # its own subscriptions, under its own token
    for bucket in (REGISTRY_BUCKET, POLICY_BUCKET, CONSENT_BUCKET, FEEDS_BUCKET):  # read and watch
        publish += [
            f"$JS.API.STREAM.INFO.KV_{bucket}",
            f"$JS.API.DIRECT.GET.KV_{bucket}.>",
            f"$JS.API.CONSUMER.CREATE.KV_{bucket}",
            f"$JS.API.CONSUMER.CREATE.KV_{bucket}.>",
            f"$JS.API.CONSUMER.DELETE.KV_{bucket}.>",
            f"$JS.API.CONSUMER.INFO.KV_{bucket}.>",
        ]
    subscribe = [f"{inbox_prefix(org)}.>"]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}
