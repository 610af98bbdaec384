"""Facts read off this host: listening TCP ports, the kernel's ephemeral port range, RAM."""

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


def cpus() -> tuple[int, ...]:
    """The CPUs this process may run on (its affinity mask), in order."""
    import os

    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return tuple(range(os.cpu_count() or 0))


def parse_meminfo(text: str) -> tuple[int, int]:
    """(total, available) bytes from the contents of /proc/meminfo; (0, 0) when they are missing."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return values.get("MemTotal", 0), values.get("MemAvailable", values.get("MemFree", 0))


def memory(path: Path = Path("/proc/meminfo")) -> tuple[int, int]:
    """This host's (total, available) RAM in bytes; (0, 0) where /proc/meminfo cannot be read."""
    try:
        return parse_meminfo(path.read_text())
    except OSError:
        return 0, 0
