"""What a host has, read through its own Docker: one short-lived probe container per reading.

The probe runs in the host's network namespace (``--network host``, as the engines do) with the host's
models dir mounted read-only, and answers with plain tools every engine image carries:

- ``grep -H "" /proc/net/tcp … /proc/meminfo …``: listening ports, RAM, the ephemeral port range and
  online CPUs, one ``file:line`` each (the container sees the host's network and memory);
- ``df -P -B1 /models``: free and total bytes where that host keeps weights;
- ``nvidia-smi --query-gpu=… --format=csv,noheader,nounits`` when Docker there has the NVIDIA
  runtime: the probe then runs under it (``--runtime nvidia``, ``NVIDIA_VISIBLE_DEVICES=all``), which
  puts the driver's nvidia-smi in any image, as on a real GPU server.

The parsers are pure (:func:`parse_proc`, :func:`parse_df`); :func:`probe` is the effectful edge.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from llmdock.gpuinfo import SMI_QUERY, parse_nvidia_smi
from llmdock.hostinfo import parse_meminfo, parse_proc_net_tcp
from llmdock.planning.inventory import Gpu

MODELS_MOUNT = "/llmdock-models"
PROBE_TIMEOUT_S = 30
PROC_FILES = (
    "/proc/net/tcp",
    "/proc/net/tcp6",
    "/proc/meminfo",
    "/proc/sys/net/ipv4/ip_local_port_range",
    "/sys/devices/system/cpu/online",
)


@dataclass(frozen=True)
class HostFacts:
    docker_version: str = ""
    gpu_runtime: bool = False
    gpus: tuple[Gpu, ...] = ()
    listening_ports: frozenset[int] = frozenset()
    ephemeral_ports: tuple[int, int] = (32768, 60999)
    memory_total_bytes: int = 0
    memory_available_bytes: int = 0
    cpus: tuple[int, ...] = ()
    disk_free_bytes: int | None = None  # of the models dir; None: could not be read
    disk_total_bytes: int | None = None
    read_at: float = 0.0
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["listening_ports"] = sorted(self.listening_ports)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostFacts:
        return cls(
            docker_version=str(data.get("docker_version", "")),
            gpu_runtime=bool(data.get("gpu_runtime")),
            gpus=tuple(
                Gpu(**{**g, "processes": tuple(g.get("processes", ()))}) for g in data.get("gpus", ())
            ),
            listening_ports=frozenset(int(p) for p in data.get("listening_ports", ())),
            ephemeral_ports=(int(span[0]), int(span[1]))
            if (span := data.get("ephemeral_ports"))
            else (32768, 60999),
            memory_total_bytes=int(data.get("memory_total_bytes", 0)),
            memory_available_bytes=int(data.get("memory_available_bytes", 0)),
            cpus=tuple(int(c) for c in data.get("cpus", ())),
            disk_free_bytes=data.get("disk_free_bytes"),
            disk_total_bytes=data.get("disk_total_bytes"),
            read_at=float(data.get("read_at", 0.0)),
            notes=tuple(data.get("notes", ())),
        )


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """``0-3,8`` (the kernel's list format) -> (0, 1, 2, 3, 8); () for what is not one."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            return ()
        cpus += range(int(low), int(high or low) + 1)
    return tuple(cpus)


def parse_proc(text: str) -> dict[str, Any]:
    """``grep -H "" FILE…`` output -> ports, RAM, ephemeral range and CPUs (keys as in HostFacts)."""
    files: dict[str, list[str]] = {}
    for line in text.splitlines():
        path, sep, rest = line.partition(":")
        if sep:
            files.setdefault(path, []).append(rest)
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        ports |= parse_proc_net_tcp("\n".join(files.get(name, [])))
    total, available = parse_meminfo("\n".join(files.get("/proc/meminfo", [])))
    out: dict[str, Any] = {
        "listening_ports": frozenset(ports),
        "memory_total_bytes": total,
        "memory_available_bytes": available,
        "cpus": parse_cpu_list("".join(files.get("/sys/devices/system/cpu/online", ["0"]))),
    }
    span = "".join(files.get("/proc/sys/net/ipv4/ip_local_port_range", [])).split()
    if len(span) == 2 and all(s.isdigit() for s in span):
        out["ephemeral_ports"] = (int(span[0]), int(span[1]))
    return out


def parse_df(text: str) -> tuple[int, int] | None:
    """(free, total) bytes from ``df -P -B1 PATH``; None when it is not that."""
    lines = text.strip().splitlines()
    fields = lines[-1].split() if len(lines) >= 2 else []
    if len(fields) >= 4 and fields[1].isdigit() and fields[3].isdigit():
        return int(fields[3]), int(fields[1])
    return None


def probe(client: Any, image: str, models_dir: str, gpu_runtime: bool, docker_version: str) -> HostFacts:
    """Read a host's facts through its Docker ``client`` with one throwaway container of ``image``.

    Raises the SDK's errors (the caller translates them); a tool that fails inside the container
    leaves its facts empty and says so in ``notes``.
    """
    kwargs: dict[str, Any] = dict(
        entrypoint=["sleep"],
        command=[str(PROBE_TIMEOUT_S)],
        network_mode="host",
        labels={"io.llmdock.probe": "true"},
        volumes={models_dir: {"bind": MODELS_MOUNT, "mode": "ro"}},  # created when missing, as `up` would
        detach=True,
    )
    if gpu_runtime:
        kwargs |= dict(
            runtime="nvidia",
            environment={"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "utility"},
        )
    notes: list[str] = []
    container = client.containers.run(image, **kwargs)
    try:

        def run(argv: list[str]) -> str | None:
            code, out = container.exec_run(argv, stdout=True, stderr=False, demux=False)
            text = bytes(out or b"").decode("utf-8", "replace")
            if code not in (0, None):
                notes.append(f"`{' '.join(argv[:2])}` failed on the host (exit {code})")
                return None
            return text

        proc = parse_proc(run(["grep", "-H", "-s", "", *PROC_FILES]) or "")
        disk = parse_df(run(["df", "-P", "-B1", MODELS_MOUNT]) or "")
        gpus: tuple[Gpu, ...] = ()
        if gpu_runtime:
            smi = run(["nvidia-smi", f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"])
            try:
                gpus = parse_nvidia_smi(smi or "")
            except ValueError as e:
                notes.append(f"nvidia-smi: {e}")
    finally:
        container.remove(force=True)
    return HostFacts(
        docker_version=docker_version,
        gpu_runtime=gpu_runtime,
        gpus=gpus,
        disk_free_bytes=disk[0] if disk else None,
        disk_total_bytes=disk[1] if disk else None,
        read_at=time.time(),
        notes=tuple(notes),
        **proc,
    )
