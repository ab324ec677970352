"""The dev stack's defaults."""

from __future__ import annotations

import dataclasses

from taskstream.devstack import DevPorts


def test_dev_ports_lie_below_the_ephemeral_range() -> None:
    """An outgoing connection may take any port in 32768-60999 and hold it in TIME_WAIT."""
    ports = dataclasses.astuple(DevPorts())
    assert all(0 < port < 32768 for port in ports) and len(set(ports)) == len(ports)
