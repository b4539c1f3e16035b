"""Backbone names: subjects, streams, buckets. One place, so permissions and code agree.

A gateway publishes only on subjects that carry its own token as the *sender* token, so the
subject itself proves who sent a message (NATS does not stamp the authenticated user).
"""

from __future__ import annotations

from psvn.core.addresses import token

REGISTRY_BUCKET = "psvn_registry"
POLICY_BUCKET = "psvn_policy"
POLICY_KEY = "current"
CONSENT_BUCKET = "psvn_consent"
FEEDS_BUCKET = "psvn_feeds"  # feed subscriptions: each gateway writes only its own
BROKER_AUDIT = "broker"  # the broker's own audit stream: psvn.audit.broker
OPERATOR = "psvn:operator"  # the network operator's own gateway (records consent network-wide)
CONSUMER = "gw"
BROKER_URI = "urn:psvn:broker"
# Where a member account sees the network account's JetStream API (its own ``$JS.API`` is its own)
OPERATOR_JS_PREFIX = "psvn.backbone.API"
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


def audit_stream(org: str) -> str:
    """One audit stream per member: its byte limit is its own, and the stream names who wrote it."""
    return f"AUDIT_{token(org)}"


def quarantine_stream(org: str) -> str:
    """What a member's gateway refused, moved out of its inbox (so junk never fills the inbox)."""
    return f"QUARANTINE_{token(org)}"


def quarantine_subject(org: str) -> str:
    return f"psvn.quarantine.{token(org)}"


def inbox_prefix(org: str) -> str:
    return f"_INBOX_{token(org)}"
