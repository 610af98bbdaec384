"""A plain in-memory Runtime for unit tests of lifecycle and readiness (no Docker)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from llmdock.errors import ImageMissing, NotFound
from llmdock.planning.container import ContainerConfig
from llmdock.runtimes.base import Deployment

if TYPE_CHECKING:
    from llmdock.lifecycle import Lifecycle


class MemoryRuntime:
    def __init__(self, images: dict[str, str] | None = None, gpu_runtime: bool = False) -> None:
        self.images = images or {}
        self.gpu_runtime = gpu_runtime
        self.items: dict[str, Deployment] = {}
        self.log_lines: dict[str, list[str]] = {}
        self.probes: list[str] = []
        self.versions: dict[str, str] = {}

    def deployments(self) -> list[Deployment]:
        return sorted(self.items.values(), key=lambda d: d.name)

    def get(self, name: str) -> Deployment | None:
        return self.items.get(name)

    def create(self, cfg: ContainerConfig) -> Deployment:
        if cfg.image not in self.images:
            raise ImageMissing(cfg.image)
        dep = Deployment.from_labels(cfg.labels, state="running", image=cfg.image, id=f"id-{cfg.name}")
        self.items[cfg.name] = dep
        self.log_lines.setdefault(cfg.name, [])
        return dep

    def _set(self, name: str, **fields: object) -> None:
        if name not in self.items:
            raise NotFound(f"no deployment named {name!r}")
        self.items[name] = replace(self.items[name], **fields)  # type: ignore[arg-type]

    def start(self, name: str) -> None:
        self._set(name, state="running", exit_code=None, restart_count=0)

    def stop(self, name: str, timeout: float = 30) -> None:
        self._set(name, state="exited", exit_code=0)

    def remove(self, name: str, force: bool = False) -> None:
        self.items.pop(name)

    def logs(self, name: str, *, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        lines = self.log_lines.get(name, [])
        return iter(lines[-tail:] if tail else lines)

    def image_id(self, image: str) -> str | None:
        return self.images.get(image)

    def has_gpu_runtime(self) -> bool:
        return self.gpu_runtime

    def run_probe(self, image: str, argv: list[str]) -> str:
        self.probes.append(image)
        return self.versions.get(image, "")


def memory_lifecycle(home: Path, image: str, version: str = "5.24.0") -> Lifecycle:
    """A Lifecycle over a fresh MemoryRuntime that has ``image`` (engine ``version``) and a state DB in ``home``."""
    from llmdock import settings
    from llmdock.lifecycle import Lifecycle
    from llmdock.state import Store

    rt = MemoryRuntime(images={image: "sha256:abc"})
    rt.versions[image] = version
    s = settings.load({"LLMDOCK_HOME": str(home)})
    return Lifecycle(s, rt, Store(s.db_path))
