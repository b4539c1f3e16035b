"""psvn_client: the Python SDK for a psvn gateway (sync :class:`Client`, asyncio
:class:`AsyncClient`). It speaks only the gateway's HTTPS API and depends only on httpx.

    from psvn_client import Client

    with Client("https://127.0.0.1:8443", ca="ca.pem", cert="system.pem", key="system.key") as c:
        sent = c.send("ods:RYR", "fhir.r4.ServiceRequest", request, purpose="direct-care")
        c.wait_for_status(sent.id, "delivered", timeout=30)
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
    ServerError,
    TimeoutError,
    Unauthenticated,
    ValidationError,
    Violation,
)
from psvn_client.models import (
    Ack,
    BatchResult,
    Delivery,
    Envelope,
    Health,
    InboxItem,
    Message,
    MessageStatus,
    MessageType,
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
    "InboxItem",
    "InvalidPayload",
    "Message",
    "MessageStatus",
    "MessageType",
    "NotFound",
    "PayloadTooLarge",
    "PolicyDecision",
    "PolicyDenied",
    "ProtocolError",
    "PsvnError",
    "Publication",
    "ReceivedMessage",
    "Refusal",
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
