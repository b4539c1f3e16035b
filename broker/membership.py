"""Membership changes the operator makes on a running network: suspend, revoke, reinstate.

Two things change together: the registry entry (every gateway stops sending to the member and
quarantines what it sends) and the backbone's user list (nats-server is reloaded without the
member, so its certificate no longer authenticates and its live connection is closed). NATS has
no CRL support: removing the user shuts out a member, and pinning the keys of the non-revoked
certificates (``certs.revocation.backbone_pins``) shuts out one revoked certificate.
"""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext

from broker import registry
from broker.server import NatsServer
from psvn.errors import Code, PsvnError


async def set_status(js: JetStreamContext, org: str, status: registry.Status) -> registry.Member:
    kv = await registry.ensure_bucket(js)
    try:
        entry = await kv.get(registry.key_for(org))
    except Exception as exc:
        raise PsvnError(Code.UNKNOWN_RECIPIENT, f"{org!r} is not in the registry", field="org",
                        rule="registry-member") from exc
    member = msgspec.json.decode(entry.value or b"", type=registry.Member)
    updated = msgspec.structs.replace(member, status=status)
    await registry.put_member(kv, updated)
    return updated


async def revoke(js: JetStreamContext, server: NatsServer, org: str, *, status: registry.Status = "revoked") -> None:
    """Registry first (gateways refuse the member), then the backbone (its connection is closed)."""
    await set_status(js, org, status)
    server.reload([m for m in server.config.members if m != org])


async def reinstate(js: JetStreamContext, server: NatsServer, org: str) -> None:
    members = list(server.config.members)
    if org not in members:
        server.reload([*members, org])
    await set_status(js, org, "active")
