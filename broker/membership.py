"""Membership changes the operator makes on a running network: suspend, revoke, reinstate.

Two things change together: the registry entry (every gateway stops sending to the member and
quarantines what it sends) and the member's backbone account: its users are revoked in its account
JWT, pushed to the resolver, so nats-server closes the member's live connections at once (no
reload, no restart); reinstating pushes the account without the revocation.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from psvn.broker import accounts, registry


async def set_status(js: JetStreamContext, org: str, status: registry.Status,
                     signer: Ed25519PrivateKey) -> registry.Member:
    """A signed registry write, like every other: a status the registry authority did not sign
    is refused by every gateway."""
    kv = await registry.ensure_bucket(js)
    return await registry.set_status(kv, org, status, signer)


async def revoke(js: JetStreamContext, system: NATS, backbone: accounts.BackboneAccounts, org: str, *,
                 signer: Ed25519PrivateKey, status: registry.Status = "revoked") -> None:
    """Registry first (gateways refuse the member), then the backbone (its connections closed)."""
    await set_status(js, org, status, signer)
    backbone.revoke_users(org)
    await accounts.push(system, backbone.member_jwt(org))


async def reinstate(js: JetStreamContext, system: NATS, backbone: accounts.BackboneAccounts, org: str, *,
                    signer: Ed25519PrivateKey) -> None:
    backbone.reinstate_users(org)
    await accounts.push(system, backbone.member_jwt(org))
    await set_status(js, org, "active", signer)
