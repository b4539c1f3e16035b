"""psvn_client: the Python SDK for a psvn gateway (sync :class:`Client`, asyncio
:class:`AsyncClient`). It speaks only the gateway's HTTPS API and depends only on httpx.

    from psvn_client import Client

    with Client("https://localhost:8443", ca="ca.crt", cert="system.crt", key="system.key") as psvn:
        sent = psvn.send("ods:RYR", "fhir.r4.ServiceRequest", referral, purpose="direct-care")
        psvn.wait_for_status(sent.id, "delivered", timeout=30)

        for msg in psvn.receive(idle_timeout=5):  # as it arrives; acknowledge what you take
            store(msg.sender, msg.type, msg.payload)
            msg.ack()
"""

from __future__ import annotations

from psvn_client.aio import AsyncClient
from psvn_client.client import Client
from psvn_client.errors import (
    BackboneUnavailable,
    Code,
    Conflict,
    ConnectionError,
    DeliveryFailed,
    Forbidden,
    InvalidPayload,
    NotFound,
    PayloadTooLarge,
    PolicyDenied,
    ProtocolError,
    PsvnError,
    RequestTimeout,
    ServerError,
    TimeoutError,
    Unauthenticated,
    ValidationError,
    Violation,
)
from psvn_client.models import (
    Ack,
    AsyncInboundMessage,
    BatchResult,
    Delivery,
    Envelope,
    Health,
    InboundMessage,
    InboxItem,
    Message,
    MessageStatus,
    MessageType,
    Page,
    PolicyDecision,
    Publication,
    ReceivedMessage,
    Refusal,
    SendResult,
    Status,
    StatusEvent,
    Subscription,
)

__version__ = "0.1.0"

__all__ = [
    "Ack",
    "AsyncClient",
    "AsyncInboundMessage",
    "BackboneUnavailable",
    "BatchResult",
    "Client",
    "Code",
    "Conflict",
    "ConnectionError",
    "Delivery",
    "DeliveryFailed",
    "Envelope",
    "Forbidden",
    "Health",
    "InboundMessage",
    "InboxItem",
    "InvalidPayload",
    "Message",
    "MessageStatus",
    "MessageType",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "PolicyDecision",
    "PolicyDenied",
    "ProtocolError",
    "PsvnError",
    "Publication",
    "ReceivedMessage",
    "Refusal",
    "RequestTimeout",
    "SendResult",
    "ServerError",
    "Status",
    "StatusEvent",
    "Subscription",
    "TimeoutError",
    "Unauthenticated",
    "ValidationError",
    "Violation",
    "__version__",
]
