"""Port choice for ``--port N|auto``."""

from __future__ import annotations

from llmdock.errors import Conflict, PortTaken
from llmdock.planning.inventory import Inventory


def choose_port(requested: int | None, inv: Inventory, port_range: tuple[int, int], *, owner: str) -> int:
    """Return ``requested`` if free, else refuse; for ``auto`` (None) the lowest free port in range.

    Free means: no process listens on it, no other llmdock deployment holds it, and (for auto) it lies
    outside the kernel's ephemeral range, where outgoing connections could grab it at any moment.
    """
    held = {h.port: h.name for h in inv.holdings if h.port is not None and h.name != owner}
    if requested is not None:
        if requested in held:
            raise PortTaken(requested, f"deployment {held[requested]!r}")
        if requested in inv.listening_ports:
            raise PortTaken(requested, "another process on this host")
        return requested
    low, high = port_range
    eph_low, eph_high = inv.ephemeral_ports
    for port in range(low, high + 1):
        if eph_low <= port <= eph_high or port in held or port in inv.listening_ports:
            continue
        return port
    raise Conflict(
        f"no free port in {low}-{high} (outside the ephemeral range {eph_low}-{eph_high})",
        "widen it with `llmdock config set port_range 8001-9999` or give --port N",
    )
