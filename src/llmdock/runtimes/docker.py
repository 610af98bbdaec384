"""Docker runtime through the docker SDK (no shell strings). Foreign errors are translated here."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from llmdock.errors import Conflict, ImageMissing, LlmdockError, NotFound, RuntimeUnavailable
from llmdock.planning.container import MANAGED, ContainerConfig
from llmdock.runtimes.base import Deployment

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
START_HINT = (
    "start the daemon (`sudo systemctl start docker`, or `sudo dockerd &` where systemd is absent), "
    "check that your user may use it (`docker info`), or point llmdock at another with "
    "`llmdock config set docker_host unix:///path/to/docker.sock`"
)
GPU_HINT = (
    "install nvidia-container-toolkit, run `sudo nvidia-ctk runtime configure --runtime=docker`, restart Docker; "
    "or run on the CPU with --gpus none (vLLM's CPU backend)"
)


def connect(base_url: str | None = None) -> Any:
    """A docker client that has answered a ping; RuntimeUnavailable (with how to start it) otherwise."""
    import docker

    _check_reachable(base_url or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET)
    client = None
    try:
        client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
        client.ping()
    except _errors() as e:
        if client is not None:
            client.close()
        raise RuntimeUnavailable(f"the Docker daemon is not reachable: {_reason(e)}", START_HINT) from e
    return client


def _check_reachable(url: str) -> None:
    """Fail fast, before the SDK builds a client (whose failed version probe leaks a connection pool)."""
    parsed = urlsplit(url)
    if parsed.scheme in ("unix", "http+unix"):
        family, address = socket.AF_UNIX, parsed.path
    elif parsed.scheme in ("tcp", "http", "https") and parsed.hostname:
        family, address = socket.AF_INET, (parsed.hostname, parsed.port or 2375)  # type: ignore[assignment]
    else:
        return  # ssh:// and others: let the SDK try
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(address)
    except OSError as e:
        raise RuntimeUnavailable(
            f"the Docker daemon is not reachable at {url}: {e.strerror or e}", START_HINT
        ) from e


def _errors() -> tuple[type[Exception], ...]:
    """What the SDK raises: its own errors, and requests' for timeouts and dropped connections."""
    import docker
    import requests

    return (docker.errors.DockerException, requests.exceptions.RequestException)


def _reason(e: Exception) -> str:
    explanation = getattr(e, "explanation", None)
    return (
        str(explanation or e).strip().splitlines()[0][:300]
        if str(explanation or e).strip()
        else type(e).__name__
    )


def translate(e: Exception, name: str = "") -> LlmdockError:
    """Map a docker SDK exception to ours, keeping the daemon's own explanation."""
    import docker

    reason = _reason(e)
    if isinstance(e, docker.errors.NotFound):
        return NotFound(f"no deployment named {name!r} ({reason})", "list deployments with `llmdock ps`")
    if "could not select device driver" in reason or "nvidia-container-cli" in reason:
        return RuntimeUnavailable(f"Docker cannot give the container GPUs: {reason}", GPU_HINT)
    if isinstance(e, docker.errors.APIError) and e.status_code == 409:
        return Conflict(
            f"Docker refused: {reason}",
            f"a container named {name!r} exists that llmdock does not manage: "
            f"remove it with `docker rm -f {name}` or pick another --name",
        )
    if not isinstance(e, docker.errors.DockerException):
        return RuntimeUnavailable(
            f"Docker did not answer: {reason}", "check `docker info`; is the daemon overloaded?"
        )
    if isinstance(e, (docker.errors.APIError, docker.errors.DockerException)):
        return RuntimeUnavailable(f"Docker failed: {reason}", "see `docker info` and the daemon's log")
    return LlmdockError(str(e))


def to_deployment(container: Any) -> Deployment:
    attrs = container.attrs
    state = attrs.get("State", {})
    return Deployment.from_labels(
        container.labels or {},
        state=state.get("Status", "unknown"),
        image=attrs.get("Config", {}).get("Image", ""),
        id=container.id,
        exit_code=state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")),
        restart_count=int(attrs.get("RestartCount", 0) or 0),
        started_at=state.get("StartedAt", ""),
    )


class DockerRuntime:
    """Deployments as labelled Docker containers."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    def connect(cls, base_url: str | None = None) -> DockerRuntime:
        return cls(connect(base_url))

    def _container(self, name: str) -> Any:
        import docker

        try:
            container = self.client.containers.get(name)
        except docker.errors.NotFound:
            raise NotFound(f"no deployment named {name!r}", "list deployments with `llmdock ps`") from None
        except _errors() as e:
            raise translate(e, name) from e
        if container.labels.get(MANAGED) != "true":
            raise NotFound(
                f"container {name!r} exists but was not created by llmdock",
                "manage it with docker directly, or choose another --name",
            )
        return container

    def deployments(self) -> list[Deployment]:
        """Every llmdock container, from one list call; only stopped ones are inspected (for exit codes).

        A container that vanishes between listing and inspecting is skipped.
        """
        import docker

        found: list[Deployment] = []
        try:
            for summary in self.client.api.containers(all=True, filters={"label": f"{MANAGED}=true"}):
                if summary.get("State") == "running":
                    found.append(
                        Deployment.from_labels(
                            summary.get("Labels") or {},
                            state="running",
                            image=summary.get("Image", ""),
                            id=summary["Id"],
                        )
                    )
                    continue
                try:
                    found.append(to_deployment(self.client.containers.get(summary["Id"])))
                except docker.errors.NotFound:
                    continue
        except _errors() as e:
            raise translate(e) from e
        return sorted(found, key=lambda d: d.name)

    def get(self, name: str) -> Deployment | None:
        try:
            return to_deployment(self._container(name))
        except NotFound:
            return None

    def create(self, cfg: ContainerConfig) -> Deployment:
        """Create and start the container; on a failed start remove it again so nothing half exists."""
        import docker
        from docker.types import DeviceRequest, LogConfig
        from docker.types import Mount as DockerMount

        kwargs: dict[str, Any] = dict(
            image=cfg.image,
            name=cfg.name,
            entrypoint=cfg.entrypoint,
            command=cfg.command,
            labels=cfg.labels,
            detach=True,
            ipc_mode=cfg.ipc_mode,
            network_mode=cfg.network_mode,
            mounts=[DockerMount(m.target, m.source, type="bind", read_only=m.read_only) for m in cfg.mounts],
            environment=cfg.env,
            restart_policy={"Name": "on-failure", "MaximumRetryCount": cfg.restart_max},
            log_config=LogConfig(
                type="json-file", config={"max-size": cfg.log_max_size, "max-file": str(cfg.log_max_files)}
            ),
            privileged=False,
        )
        if cfg.gpu_ids:
            kwargs["device_requests"] = [
                DeviceRequest(
                    driver="nvidia", device_ids=[str(i) for i in cfg.gpu_ids], capabilities=[["gpu"]]
                )
            ]
        if cfg.ports:
            kwargs["ports"] = {f"{c}/tcp": (cfg.publish_host, h) for c, h in cfg.ports.items()}
        if cfg.shm_size:
            kwargs["shm_size"] = cfg.shm_size
        if cfg.cpuset_cpus:
            kwargs["cpuset_cpus"] = cfg.cpuset_cpus
        try:
            container = self.client.containers.create(**kwargs)
        except docker.errors.ImageNotFound:
            raise ImageMissing(cfg.image) from None
        except _errors() as e:
            raise translate(e, cfg.name) from e
        try:
            container.start()
        except _errors() as e:
            container.remove(force=True)
            raise translate(e, cfg.name) from e
        container.reload()
        return to_deployment(container)

    def start(self, name: str) -> None:
        self._call(name, "start")

    def stop(self, name: str, timeout: float = 30) -> None:
        self._call(name, "stop", timeout=int(timeout))

    def remove(self, name: str, force: bool = False) -> None:
        self._call(name, "remove", force=force)

    def _call(self, name: str, method: str, **kwargs: Any) -> None:

        container = self._container(name)
        try:
            getattr(container, method)(**kwargs)
        except _errors() as e:
            raise translate(e, name) from e

    def logs(self, name: str, *, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        container = self._container(name)
        buf = b""
        try:
            stream = container.logs(stream=True, follow=follow, tail=tail if tail is not None else "all")
            for chunk in stream:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace").rstrip("\r")
        except _errors() as e:
            raise translate(e, name) from e
        if buf:
            yield buf.decode("utf-8", "replace")

    def tail(self, name: str, n: int) -> list[str]:
        try:
            return list(self.logs(name, tail=n))
        except LlmdockError:
            return []

    def image_id(self, image: str) -> str | None:
        import docker

        try:
            return str(self.client.images.get(image).id)
        except docker.errors.ImageNotFound:
            return None
        except _errors() as e:
            raise translate(e) from e

    def has_gpu_runtime(self) -> bool:
        try:
            info = self.client.info()
        except _errors() as e:
            raise translate(e) from e
        runtimes = info.get("Runtimes") or {}
        return "nvidia" in runtimes or bool(
            info.get("CDISpecDirs") and "nvidia" in str(info.get("DefaultRuntime"))
        )

    def run_probe(self, image: str, argv: list[str]) -> str:
        """Run ``argv`` once in a throwaway, network-less container of ``image``; return its stdout."""

        try:
            container = self.client.containers.create(
                image,
                entrypoint=argv[:1],
                command=argv[1:],
                network_disabled=True,
                labels={"io.llmdock.probe": "true"},
            )
            try:
                container.start()
                container.wait(timeout=120)
                out = container.logs(stdout=True, stderr=False)
            finally:
                container.remove(force=True)
        except _errors() as e:
            raise translate(e) from e
        return bytes(out).decode("utf-8", "replace").strip()
