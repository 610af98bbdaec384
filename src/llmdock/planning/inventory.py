"""What a host has, as plain data the planner decides over (gathered by adapters elsewhere)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Gpu:
    """One GPU as NVML (or ``--assume-gpus``) reports it. Memory in bytes."""

    index: int
    uuid: str = ""
    name: str = ""
    total_bytes: int = 0
    free_bytes: int = 0
    processes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Holding:
    """What one existing deployment holds on this host."""

    name: str
    port: int | None
    gpus: tuple[int, ...]


@dataclass(frozen=True)
class Inventory:
    gpus: tuple[Gpu, ...] = ()
    listening_ports: frozenset[int] = frozenset()
    ephemeral_ports: tuple[int, int] = (32768, 60999)
    holdings: tuple[Holding, ...] = ()
    gpu_runtime: bool = False
    memory_total_bytes: int = 0  # host RAM, for engines on the CPU (0: unknown)
    memory_available_bytes: int = 0
    cpus: tuple[int, ...] = ()  # CPUs this process may run on (empty: unknown)
    notes: tuple[str, ...] = field(default=())
