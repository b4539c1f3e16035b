"""Ports for a devnet the bench starts itself: a free range wide enough for every process."""

from __future__ import annotations

from psvn.core import procs


def port_span(cluster: int = 1) -> int:
    """How many consecutive ports ``devnet.up`` uses (nats, monitoring, console, gateways, and
    the other nodes of a clustered backbone)."""
    from psvn import devnet

    return devnet.port_span(len(devnet.DEVNET_MEMBERS), cluster)


def free_port_range(span: int | None = None, *, low: int = 20000, high: int = 30000, tries: int = 200,
                    cluster: int = 1) -> int:
    """A base port with ``span`` (default: a devnet's of this shape) consecutive free loopback ports."""
    return procs.free_port_range(span or port_span(cluster), low=low, high=high, tries=tries)
