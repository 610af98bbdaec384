"""Facts read off this host: listening TCP ports and the kernel's ephemeral port range."""

from __future__ import annotations

from pathlib import Path

LISTEN = "0A"  # TCP state code in /proc/net/tcp*


def parse_proc_net_tcp(text: str) -> set[int]:
    """Local ports in LISTEN state from the contents of /proc/net/tcp or tcp6."""
    ports = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == LISTEN:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def listening_ports(proc: Path = Path("/proc/net")) -> frozenset[int]:
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            ports |= parse_proc_net_tcp((proc / name).read_text())
        except OSError:
            continue
    return frozenset(ports)


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    try:
        low, high = path.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
