"""What every way of a message through the gateway shares, handed over once.

Egress, ingress and the mailbox each work with the member's keys and identity, the gateway's
settings, the registry, the state store, the backbone link, the clock, the metrics and the audit
writer. :class:`Shared` carries them and :class:`Part` puts them on each component, so a
component's constructor names only what is its own (and a test that injects a clock or a store
injects it once, into ``Shared``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from psvn.backbone.registry_view import RegistryView
from psvn.gateway.audit import Audit
from psvn.gateway.config import GatewaySection
from psvn.gateway.link import BackboneLink
from psvn.gateway.member import Member
from psvn.gateway.metrics import Metrics
from psvn.gateway.store import StateStore


@dataclass(frozen=True, kw_only=True)
class Shared:
    member: Member
    settings: GatewaySection
    registry: RegistryView
    store: StateStore
    link: BackboneLink
    clock: Callable[[], datetime]
    metrics: Metrics
    audit: Audit


class Part:
    """A component of the gateway: the shared handles as its own attributes."""

    def __init__(self, shared: Shared) -> None:
        self.member = shared.member
        self.org = shared.member.org
        self.settings = shared.settings
        self.registry = shared.registry
        self.store = shared.store
        self.link = shared.link
        self.clock = shared.clock
        self.metrics = shared.metrics
        self.audit = shared.audit
