"""The container a deployment runs in, as plain data, and its ``docker run`` equivalent.

Defaults follow the manual procedure (``--ipc=host --network=host``, weights mounted under /work) with
what it lacked: the engine as the main process, read-only weights, log rotation, a bounded restart
policy, labels that let ``ps`` work from Docker alone. Never privileged.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from llmdock.spec import SECRET_KEY_RE

LABEL = "io.llmdock"
MANAGED = f"{LABEL}.managed"
LOG_MAX_SIZE = "100m"
LOG_MAX_FILES = 3
RESTART_MAX = 3


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class ContainerConfig:
    """Parameters for ``docker create``; :func:`docker_run_argv` renders the CLI equivalent.

    The local runtime reads the same data as a process launch: ``image`` is then the engine
    environment's name, ``entrypoint + command`` the argv, ``gpu_ids`` become CUDA_VISIBLE_DEVICES.
    """

    image: str
    name: str
    entrypoint: list[str]
    command: list[str]
    labels: dict[str, str]
    gpu_ids: tuple[int, ...] = ()
    ipc_mode: str = "host"
    network_mode: str = "host"
    ports: dict[int, int] = field(default_factory=dict)  # container port -> host port (bridge only)
    publish_host: str = "127.0.0.1"  # the host address bridge ports are published on
    mounts: tuple[Mount, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    restart_max: int = RESTART_MAX
    log_max_size: str = LOG_MAX_SIZE
    log_max_files: int = LOG_MAX_FILES
    shm_size: str | None = None
    cpuset_cpus: str | None = None  # `docker run --cpuset-cpus` (the local runtime leaves it to the engine)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mounts"] = [asdict(m) for m in self.mounts]
        data["gpu_ids"] = list(self.gpu_ids)
        data["device_requests"] = (
            [{"driver": "nvidia", "device_ids": [str(i) for i in self.gpu_ids], "capabilities": [["gpu"]]}]
            if self.gpu_ids
            else []
        )
        data["restart_policy"] = {"Name": "on-failure", "MaximumRetryCount": self.restart_max}
        data["log_config"] = {
            "type": "json-file",
            "config": {"max-size": self.log_max_size, "max-file": str(self.log_max_files)},
        }
        data["detach"] = True
        data["privileged"] = False
        return data


def labels_for(
    *,
    name: str,
    model: str,
    engine: str,
    port: int,
    gpus: tuple[int, ...],
    spec_hash: str,
    spec: dict[str, Any],
    served_name: str,
    health_path: str,
    model_dir: str = "",
    runtime: str = "docker",
    engine_env: str = "",
    group: str | None = None,
) -> dict[str, str]:
    """The ``io.llmdock.*`` labels: enough to list, route to and re-adopt a deployment without the DB."""
    extra = {f"{LABEL}.runtime": runtime, f"{LABEL}.engine-env": engine_env} if runtime != "docker" else {}
    if group:
        extra[f"{LABEL}.group"] = group
    return extra | {
        MANAGED: "true",
        f"{LABEL}.name": name,
        f"{LABEL}.model": model,
        f"{LABEL}.model-dir": model_dir,
        f"{LABEL}.engine": engine,
        f"{LABEL}.port": str(port),
        f"{LABEL}.gpus": ",".join(map(str, gpus)),
        f"{LABEL}.spec-hash": spec_hash,
        f"{LABEL}.served-name": served_name,
        f"{LABEL}.health-path": health_path,
        f"{LABEL}.spec": json.dumps(spec, sort_keys=True, separators=(",", ":")),
    }


def docker_run_argv(cfg: ContainerConfig) -> list[str]:
    """The ``docker run`` argv that creates the same container (for ``--dry-run``; never executed)."""
    argv = ["docker", "run", "-d", "--name", cfg.name]
    if cfg.gpu_ids:
        argv += ["--gpus", '"device=' + ",".join(map(str, cfg.gpu_ids)) + '"']
    argv += [f"--ipc={cfg.ipc_mode}", f"--network={cfg.network_mode}"]
    for container_port, host_port in sorted(cfg.ports.items()):
        argv += ["-p", f"{cfg.publish_host}:{host_port}:{container_port}"]
    if cfg.shm_size:
        argv += ["--shm-size", cfg.shm_size]
    if cfg.cpuset_cpus:
        argv += ["--cpuset-cpus", cfg.cpuset_cpus]
    argv += [f"--restart=on-failure:{cfg.restart_max}", "--log-driver=json-file"]
    argv += ["--log-opt", f"max-size={cfg.log_max_size}", "--log-opt", f"max-file={cfg.log_max_files}"]
    for m in cfg.mounts:
        argv += ["-v", f"{m.source}:{m.target}" + (":ro" if m.read_only else "")]
    for k, v in sorted(cfg.env.items()):
        # A secret is passed as `-e KEY`: docker then takes it from the caller's environment.
        argv += ["-e", k if SECRET_KEY_RE.search(k) else f"{k}={v}"]
    for k, v in sorted(cfg.labels.items()):
        argv += ["--label", f"{k}={v}"]
    argv += ["--entrypoint", cfg.entrypoint[0], cfg.image, *cfg.entrypoint[1:], *cfg.command]
    return argv


def docker_run_line(cfg: ContainerConfig) -> str:
    return shlex.join(docker_run_argv(cfg))
