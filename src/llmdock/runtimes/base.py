"""The runtime Protocol: what lifecycle needs from Docker or from local processes.

A :class:`Deployment` is what a runtime reports about one deployment, read from the runtime alone
(Docker labels), so ``ps`` works even when the database is gone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmdock.planning.container import LABEL, ContainerConfig


@dataclass(frozen=True)
class Deployment:
    name: str
    state: str  # created | running | restarting | exited | dead | paused
    model: str = ""
    model_dir: str = ""
    group: str = ""  # the deployment a replica belongs to (its own name when not a replica)
    engine: str = ""
    port: int | None = None
    gpus: tuple[int, ...] = ()
    spec_hash: str = ""
    served_name: str = ""
    health_path: str = "/health"
    image: str = ""
    id: str = ""
    exit_code: int | None = None
    oom_killed: bool = False
    restart_count: int = 0
    started_at: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    runtime: str = "docker"  # docker | local
    error: str = ""  # why it is not running when llmdock did not stop it (local runtime)
    host: str = "local"  # the Docker host it runs on (`llmdock hosts ls`)
    address: str = "127.0.0.1"  # where its engine is reached from here

    @property
    def member(self) -> str:
        """Its :class:`~llmdock.runtimes.multi.Runtimes` member: ``docker``, ``local``, ``docker@gpu1``."""
        return self.runtime if self.host == "local" else f"{self.runtime}@{self.host}"

    @property
    def running(self) -> bool:
        return self.state == "running"

    @classmethod
    def from_labels(cls, labels: dict[str, str], **fields: Any) -> Deployment:
        def label(key: str) -> str:
            return labels.get(f"{LABEL}.{key}", "")

        gpus = tuple(int(g) for g in label("gpus").split(",") if g.strip().isdigit())
        port = label("port")
        try:
            spec = json.loads(label("spec") or "{}")
        except json.JSONDecodeError:
            spec = {}
        return cls(
            name=label("name"),
            model=label("model"),
            model_dir=label("model-dir"),
            group=label("group") or label("name"),
            engine=label("engine"),
            port=int(port) if port.isdigit() else None,
            gpus=gpus,
            spec_hash=label("spec-hash"),
            served_name=label("served-name"),
            health_path=label("health-path") or "/health",
            spec=spec,
            runtime=label("runtime") or "docker",
            **fields,
        )


class Runtime(Protocol):
    def deployments(self) -> list[Deployment]: ...
    def get(self, name: str) -> Deployment | None: ...
    def create(self, cfg: ContainerConfig) -> Deployment: ...
    def start(self, name: str) -> None: ...
    def stop(self, name: str, timeout: float = 30) -> None: ...
    def remove(self, name: str, force: bool = False) -> None: ...
    def logs(self, name: str, *, tail: int | None = None, follow: bool = False) -> Iterator[str]: ...
    def image_id(self, image: str) -> str | None: ...
    def has_gpu_runtime(self) -> bool: ...
    def run_probe(self, image: str, argv: list[str]) -> str: ...
