"""semel.cluster.tooling.ports: distinct free ports outside the kernel's ephemeral range."""

from __future__ import annotations

from semel.cluster.tooling.ports import (
    PICK_SPAN_PORTS,
    ephemeral_low,
    free_port,
    free_ports,
)


def test_free_ports_are_distinct_and_below_the_ephemeral_range():
    low = ephemeral_low()
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(max(1024, low - PICK_SPAN_PORTS) <= p < low for p in ports)
    assert max(1024, low - PICK_SPAN_PORTS) <= free_port() < low
