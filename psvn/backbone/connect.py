"""Getting onto the backbone: one way to connect, one way to ride out its elections.

Both ends use it: the broker provisioning the network and every gateway connecting as its member.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from psvn.core.errors import Code, PsvnError
from psvn.core.retry import retrying

T = TypeVar("T")


async def connect(url: str | list[str], tls: ssl.SSLContext, *, name: str, inbox_prefix: str | None = None,
                  user_credentials: str | None = None, **kwargs: object) -> NATS:
    """A backbone connection: mutual TLS, and the backbone user's ``.creds`` (the JWT of an
    account's user and its nkey seed): both are needed to get in."""
    opts: dict[str, object] = {"servers": url if isinstance(url, list) else [url], "tls": tls, "name": name,
                               "connect_timeout": 5, "max_reconnect_attempts": -1, "reconnect_time_wait": 0.5}
    if inbox_prefix:
        opts["inbox_prefix"] = inbox_prefix.encode()
    if user_credentials:
        opts["user_credentials"] = user_credentials
    opts.update(kwargs)
    return await nats.connect(**opts)  # type: ignore[arg-type]


# what a backbone says while it elects a stream's leader: requests time out or find no responder
ELECTION_ERRORS = (TimeoutError, NatsTimeoutError, NoRespondersError, NoStreamResponseError, ServiceUnavailableError)


async def patiently(step: Callable[[], Awaitable[T]], *, what: str, patience: float = 30.0) -> T:
    """Run one provisioning step, riding out the moments a clustered backbone spends electing the
    leader of a stream it has just created (requests then time out or find no responder). Every
    step is idempotent, so repeating one is safe."""
    try:
        return await retrying(step, on=ELECTION_ERRORS, patience=patience, first_delay=0.25, max_delay=2.0)
    except ELECTION_ERRORS as exc:
        raise PsvnError(Code.BACKBONE_UNAVAILABLE, f"provisioning {what}: the backbone did not answer",
                        rule="provision") from exc
