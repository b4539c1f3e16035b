"""Membership changes the operator makes on a running network: suspend, revoke, reinstate.

Two things change together: the registry entry (every gateway stops sending to the member and
quarantines what it sends) and the member's backbone account: its users are revoked in its account
JWT, pushed to the resolver, so nats-server closes the member's live connections at once (no
reload, no restart); reinstating pushes the account without the revocation.
"""

from __future__ import annotations

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from broker import accounts, registry
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


async def revoke(js: JetStreamContext, system: NATS, backbone: accounts.BackboneAccounts, org: str, *,
                 status: registry.Status = "revoked") -> None:
    """Registry first (gateways refuse the member), then the backbone (its connections closed)."""
    await set_status(js, org, status)
    backbone.revoke_users(org)
    await accounts.push(system, backbone.member_jwt(org))


async def reinstate(js: JetStreamContext, system: NATS, backbone: accounts.BackboneAccounts, org: str) -> None:
    backbone.reinstate_users(org)
    await accounts.push(system, backbone.member_jwt(org))
    await set_status(js, org, "active")
