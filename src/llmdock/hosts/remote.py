"""The Runtime of one remote host: llmdock's DockerRuntime, over that host's SSH tunnel.

Everything a deployment is (labels, state, logs) is read from that host's Docker, exactly as on this
host; deployments come back with ``host`` and ``address`` set so ``ps`` shows where each runs and the
gateway knows where to send requests. The tunnel is opened on first use and again after it died (the
host went away and came back), at most every :data:`RETRY_S`.

Example::

    rt = RemoteRuntime(registry.get("gpu1"), registry.known_hosts("gpu1"))
    rt.deployments()  # [Deployment(name="qwen", host="gpu1", address="10.0.0.7", ...)]
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from llmdock.errors import RuntimeUnavailable
from llmdock.hosts import Host
from llmdock.hosts.facts import HostFacts, probe
from llmdock.hosts.ssh import Tunnel, reach_hint
from llmdock.planning.container import ContainerConfig
from llmdock.runtimes.base import Deployment
from llmdock.runtimes.docker import DockerRuntime, _errors, _reason, translate

API_TIMEOUT_S = 30  # one Docker API call over the tunnel
RETRY_S = 5.0


class RemoteRuntime:
    def __init__(self, host: Host, known_hosts: Path, *, first: bool = False) -> None:
        self.host = host
        self.known_hosts = known_hosts
        self.first = first  # `hosts add`: trust the host key met now
        self._tunnel: Tunnel | None = None
        self._docker: DockerRuntime | None = None
        self._failed: tuple[float, RuntimeUnavailable] | None = None
        self._retrying = False
        self._lock = threading.Lock()
        atexit.register(self.close)

    # ---- connection ----------------------------------------------------------------------------
    def docker(self) -> DockerRuntime:
        """The host's DockerRuntime. The first connection is waited for; once the host has failed
        (or its tunnel closed), callers get that failure at once while a reconnection is tried in
        the background every :data:`RETRY_S`, so a long-lived caller (the gateway's listing) is never
        held up by a host that went away."""
        with self._lock:
            if self._docker is not None and self._tunnel is not None and self._tunnel.alive:
                return self._docker
            if self._docker is not None:  # the tunnel closed under us: the host went away
                self._close()
                self._failed = (
                    time.monotonic() - RETRY_S,
                    RuntimeUnavailable(
                        f"host {self.host.name}: the SSH connection closed", reach_hint(self.host)
                    ),
                )
            if self._failed is not None:
                if time.monotonic() - self._failed[0] >= RETRY_S and not self._retrying:
                    self._retrying = True
                    threading.Thread(target=self._retry, daemon=True, name="llmdock-reconnect").start()
                raise self._failed[1]
            try:
                self._tunnel, self._docker = self._connect()
            except RuntimeUnavailable as e:
                self._failed = (time.monotonic(), e)
                raise
            return self._docker

    def _retry(self) -> None:
        try:
            tunnel, rt = self._connect()
        except RuntimeUnavailable as e:
            with self._lock:
                self._failed, self._retrying = (time.monotonic(), e), False
            return
        with self._lock:
            self._tunnel, self._docker, self._failed, self._retrying = tunnel, rt, None, False

    def _connect(self) -> tuple[Tunnel, DockerRuntime]:
        import docker

        tunnel = Tunnel(self.host, self.known_hosts, first=self.first).open()
        try:
            try:
                client = docker.DockerClient(base_url=tunnel.url, timeout=API_TIMEOUT_S)
            except _errors():  # once more: a forward's first connection can be reset on a loaded host
                time.sleep(0.5)
                client = docker.DockerClient(base_url=tunnel.url, timeout=API_TIMEOUT_S)
            client.ping()
        except _errors() as e:
            tunnel.close()
            raise RuntimeUnavailable(
                f"host {self.host.name}: SSH works but Docker at {self.host.docker_socket} does not answer: "
                f"{_reason(e)}",
                f"check `docker info` on {self.host.address} and that {self.host.user} may use "
                f"{self.host.docker_socket}; " + reach_hint(self.host),
            ) from e
        return tunnel, DockerRuntime(client)

    def _close(self) -> None:
        if self._docker is not None:
            self._docker.client.close()
            self._docker = None
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None

    def close(self) -> None:
        with self._lock:
            self._close()

    def _here(self, d: Deployment) -> Deployment:
        return replace(d, host=self.host.name, address=self.host.address)

    # ---- the Runtime protocol ------------------------------------------------------------------
    def deployments(self) -> list[Deployment]:
        return [self._here(d) for d in self.docker().deployments()]

    def get(self, name: str) -> Deployment | None:
        dep = self.docker().get(name)
        return None if dep is None else self._here(dep)

    def create(self, cfg: ContainerConfig) -> Deployment:
        return self._here(self.docker().create(cfg))

    def start(self, name: str) -> None:
        self.docker().start(name)

    def stop(self, name: str, timeout: float = 30) -> None:
        self.docker().stop(name, timeout=timeout)

    def remove(self, name: str, force: bool = False) -> None:
        self.docker().remove(name, force=force)

    def logs(self, name: str, *, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        return self.docker().logs(name, tail=tail, follow=follow)

    def image_id(self, image: str) -> str | None:
        return self.docker().image_id(image)

    def has_gpu_runtime(self) -> bool:
        return self.docker().has_gpu_runtime()

    def run_probe(self, image: str, argv: list[str]) -> str:
        return self.docker().run_probe(image, argv)

    # ---- facts ---------------------------------------------------------------------------------
    def version(self) -> str:
        try:
            return str(self.docker().client.version().get("Version", ""))
        except _errors() as e:
            raise translate(e) from e

    def facts(self, image: str, models_dir: str) -> HostFacts:
        """GPUs, ports, RAM and disk of this host through a probe container of ``image``."""
        rt = self.docker()
        gpu_runtime = rt.has_gpu_runtime()
        version = self.version()
        if rt.image_id(image) is None:
            from llmdock.errors import ImageMissing

            missing = ImageMissing(image)
            raise RuntimeUnavailable(
                f"host {self.host.name}: the probe image {image!r} is not there, so its GPUs and disk "
                "cannot be read",
                f"load it there (`docker save {image} | ssh {self.host.user}@{self.host.address} docker load`), "
                f"or name one it has: `llmdock hosts rm {self.host.name}` and add it with --probe-image IMAGE"
                f" ({missing.hint.split(',')[0]})",
            )
        try:
            return probe(rt.client, image, models_dir, gpu_runtime, version)
        except _errors() as e:
            raise translate(e) from e

    def ensure_weights(
        self,
        image: str,
        local: Path,
        remote: str,
        models_dir: str,
        free_bytes: int | None,
        on_phase: Callable[[str], None] | None = None,
    ) -> bool:
        """:func:`llmdock.hosts.weights.ensure_weights` on this host; True when they were copied."""
        from llmdock.hosts.weights import ensure_weights

        client = self.docker().client
        try:
            return ensure_weights(
                client,
                image,
                local,
                remote,
                models_dir,
                host=self.host.name,
                free_bytes=free_bytes,
                on_phase=on_phase,
            )
        except _errors() as e:
            raise translate(e) from e

    def __repr__(self) -> str:
        return f"RemoteRuntime({self.host.name!r})"


def remote_members(hosts: list[Host], dir: Path) -> dict[str, Any]:
    """One ``docker@NAME`` member per host, each connecting on first use."""
    from llmdock.hosts import member_key

    return {member_key("docker", h.name): RemoteRuntime(h, dir / h.name / "known_hosts") for h in hosts}
