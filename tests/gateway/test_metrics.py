"""The gateway's counters: what ``Metrics.count`` adds is what Prometheus exposes."""

from __future__ import annotations

from gateway.metrics import Metrics


def test_count_adds_to_the_labelled_series_it_names() -> None:
    m = Metrics()
    for _ in range(3):
        m.count(m.decisions, "egress", "allow")
    m.count(m.decisions, "egress", "deny")
    m.count(m.received, "delivered")
    other = Metrics()  # a second gateway in the process: its own registry, its own children
    other.count(other.decisions, "egress", "allow")
    sample = m.registry.get_sample_value
    assert sample("psvn_policy_decisions_total", {"direction": "egress", "effect": "allow"}) == 3
    assert sample("psvn_policy_decisions_total", {"direction": "egress", "effect": "deny"}) == 1
    assert sample("psvn_policy_decisions_total", {"direction": "ingress", "effect": "allow"}) is None
    assert sample("psvn_messages_received_total", {"outcome": "delivered"}) == 1
    assert other.registry.get_sample_value("psvn_policy_decisions_total",
                                           {"direction": "egress", "effect": "allow"}) == 1
