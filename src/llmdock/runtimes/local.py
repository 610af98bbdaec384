"""Local runtime: the engine as a detached process of an engine environment, no Docker.

What ``nohup vllm serve … &`` did by hand, with what it lacked: the process runs in its own session
(it outlives the CLI, and stop reaches its workers through the process group), sees only its GPUs
(``CUDA_VISIBLE_DEVICES``), logs to ``$LLMDOCK_HOME/local/NAME/engine.log`` (rotated on every start,
three files kept, capped at the container log size), and is recorded with its PID *and* start time
in ``state.json`` (written atomically), so a reused PID is never taken for it. The state file holds
the same labels a container carries, so ``ps`` needs no database.

Exit codes: a process whose parent is this process is reaped and its code kept; one started by an
earlier CLI is reported ``exited`` with no code (no supervisor watches it).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from llmdock.errors import Conflict, EngineFailed, EnvMissing, LlmdockError, NotFound
from llmdock.planning.container import ContainerConfig
from llmdock.runtimes import procs
from llmdock.runtimes.base import Deployment

STATE = "state.json"
LOG = "engine.log"


class EnvLookup(Protocol):
    def get(self, name: str) -> Any: ...  # an llmdock.envs.Env (prefix, bin_dir, kind, fingerprint())


def size_bytes(text: str) -> int:
    """Docker's log size syntax: ``100m`` -> 104857600; ``10k``, ``1g``, plain bytes."""
    text = text.strip().lower()
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def launch_env(
    base: dict[str, str], prefix: Path, kind: str, gpu_ids: tuple[int, ...], extra: dict[str, str]
) -> dict[str, str]:
    """The engine's environment: the caller's, activated for ``prefix`` (PATH first, VIRTUAL_ENV or
    CONDA_PREFIX), only the chosen GPUs visible (none: empty), then the deployment's own variables."""
    env = {k: v for k, v in base.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX")}
    env["PATH"] = f"{prefix / 'bin'}{os.pathsep}{base.get('PATH', os.defpath)}"
    env["CONDA_PREFIX" if kind == "micromamba" else "VIRTUAL_ENV"] = str(prefix)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA's own order is fastest-first; NVML's indices are bus order
    env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_ids))
    env.update(extra)
    return env


class LocalRuntime:
    """Deployments as detached local processes; state under ``root`` (``$LLMDOCK_HOME/local``)."""

    def __init__(self, root: Path, envs: EnvLookup) -> None:
        self.root = root
        self.envs = envs

    # ---- state ------------------------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        return self.root / name

    def _load(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self._dir(name) / STATE).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _state(self, name: str) -> dict[str, Any]:
        state = self._load(name)
        if state is None:
            raise NotFound(f"no deployment named {name!r}", "list deployments with `llmdock ps`")
        return state

    def _save(self, state: dict[str, Any]) -> None:
        write_atomic(self._dir(state["name"]) / STATE, state)

    def _alive(self, state: dict[str, Any]) -> bool:
        pid, ticks = state.get("pid"), state.get("start_ticks")
        return isinstance(pid, int) and isinstance(ticks, int) and procs.alive(pid, ticks)

    def _settle(self, state: dict[str, Any]) -> dict[str, Any]:
        """Record the exit code of a process that ended, when we can still reap it; keep its log
        within its cap (every listing does this, so a log nobody reads still stays bounded)."""
        self._cap(state)
        pid = state.get("pid")
        if isinstance(pid, int) and state.get("exit_code") is None and not self._alive(state):
            code = procs.reap(pid)
            if code is not None:
                state["exit_code"] = code
                with self._locked(state["name"]):  # only if no start/stop changed it meanwhile
                    fresh = self._load(state["name"])
                    if fresh is not None and fresh.get("pid") == pid and fresh.get("exit_code") is None:
                        self._save({**fresh, "exit_code": code})
        return state

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """One writer of a deployment's state at a time (CLI, gateway threads): flock on its folder."""
        folder = self._dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / ".lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def _view(self, state: dict[str, Any]) -> Deployment:
        running = self._alive(state)
        error = ""
        if not running and state.get("pid") and not state.get("stopped"):
            code = state.get("exit_code")
            error = f"the engine process {state['pid']} ended without `llmdock stop`" + (
                f" (exit code {code})" if code is not None else ""
            )
        return Deployment.from_labels(
            state.get("labels", {}),
            state="running" if running else "exited",
            image=state.get("engine_env", ""),
            id=f"pid:{state.get('pid')}" if state.get("pid") else "",
            exit_code=None if running else state.get("exit_code"),
            started_at=state.get("started_at", ""),
            error=error,
        )

    # ---- Runtime protocol -------------------------------------------------------------------------
    def deployments(self) -> list[Deployment]:
        found = []
        for d in sorted(self.root.iterdir()) if self.root.is_dir() else ():
            state = self._load(d.name)
            if state is not None:
                found.append(self._view(self._settle(state)))
        return found

    def get(self, name: str) -> Deployment | None:
        state = self._load(name)
        return None if state is None else self._view(self._settle(state))

    def create(self, cfg: ContainerConfig) -> Deployment:
        """Record the deployment and start its process; on a failed start nothing is left behind."""
        if self._load(cfg.name) is not None:
            raise Conflict(
                f"a local deployment named {cfg.name!r} exists", f"remove it with `llmdock rm {cfg.name}`"
            )
        env = self.envs.get(cfg.image)
        if env is None:
            raise EnvMissing(cfg.image, cfg.labels.get("io.llmdock.engine", "ENGINE"))
        self._dir(cfg.name).mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {
            "name": cfg.name,
            "labels": cfg.labels,
            "argv": [*cfg.entrypoint, *cfg.command],
            "env": cfg.env,
            "gpu_ids": list(cfg.gpu_ids),
            "engine_env": cfg.image,
            "prefix": str(env.prefix),
            "kind": env.kind,
            "log_max_bytes": size_bytes(cfg.log_max_size),
            "log_max_files": cfg.log_max_files,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "pid": None,
            "start_ticks": None,
        }
        self._save(state)
        try:
            self.start(cfg.name)
        except BaseException:
            shutil.rmtree(self._dir(cfg.name), ignore_errors=True)
            raise
        dep = self.get(cfg.name)
        assert dep is not None
        return dep

    def start(self, name: str) -> None:
        self._settle(self._state(name))
        with self._locked(name):
            self._start(self._state(name))

    def _start(self, state: dict[str, Any]) -> None:
        name = state["name"]
        if self._alive(state):
            return  # started meanwhile (two `start`s at once run one engine)
        log = self._dir(name) / LOG
        procs.rotate(log, int(state.get("log_max_files", 3)))
        prefix = Path(state["prefix"])
        argv = list(state["argv"])
        exe = prefix / "bin" / argv[0]
        if not exe.exists():
            raise EngineFailed(
                f"{argv[0]!r} is not installed in engine environment {state['engine_env']!r} ({prefix})",
                "install the engine there, or create one: `llmdock env create NAME --engine ENGINE`",
            )
        env = launch_env(
            dict(os.environ), prefix, state.get("kind", "venv"), tuple(state["gpu_ids"]), state["env"]
        )
        pid = procs.spawn([str(exe), *argv[1:]], env, log)
        stat = procs.read_stat(pid)
        state.update(
            pid=pid,
            start_ticks=stat.start_ticks if stat else -1,
            started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            stopped=False,
            exit_code=None,
        )
        self._save(state)

    def stop(self, name: str, timeout: float = 30) -> None:
        with self._locked(name):
            state = self._state(name)
            pid, ticks = state.get("pid"), state.get("start_ticks")
            if isinstance(pid, int) and isinstance(ticks, int):
                code = procs.terminate(pid, ticks, timeout)
                if code is not None:
                    state["exit_code"] = code
            state["stopped"] = True
            self._save(state)

    def remove(self, name: str, force: bool = False) -> None:
        state = self._state(name)
        if self._alive(state) and not force:
            raise Conflict(f"{name!r} is running", f"stop it first (`llmdock stop {name}`) or use `rm -f`")
        self.stop(name, timeout=10)
        shutil.rmtree(self._dir(name))

    def logs(self, name: str, *, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        self._cap(self._state(name))
        return self._logs(name, self._dir(name) / LOG, tail, follow)

    def _cap(self, state: dict[str, Any]) -> None:
        log = self._dir(str(state["name"])) / LOG
        procs.cap(log, int(state.get("log_max_bytes", 100 << 20)), int(state.get("log_max_files", 3)))

    def _logs(self, name: str, log: Path, tail: int | None, follow: bool) -> Iterator[str]:
        yield from procs.tail_lines(log, tail)
        if follow and log.exists():

            def running() -> Iterator[bool]:
                while True:
                    state = self._load(name)
                    yield state is not None and self._alive(state)

            yield from procs.follow_lines(log, running())

    def image_id(self, image: str) -> str | None:
        """The engine environment's fingerprint (None when it does not exist)."""
        env = self.envs.get(image)
        return None if env is None else str(env.fingerprint())

    def has_gpu_runtime(self) -> bool:
        return True  # a local process reaches the GPUs through the driver, no container layer between

    def run_probe(self, image: str, argv: list[str]) -> str:
        """Run ``argv`` once inside the environment ``image`` (its ``bin`` first); return stdout."""
        env = self.envs.get(image)
        if env is None:
            raise EnvMissing(image)
        exe = env.bin_dir / argv[0]
        try:
            done = subprocess.run(
                [str(exe) if exe.exists() else argv[0], *argv[1:]],
                capture_output=True,
                text=True,
                timeout=120,
                env=launch_env(dict(os.environ), env.prefix, env.kind, (), {}),
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise LlmdockError(f"probe in environment {image!r} failed: {e}") from e
        if done.returncode != 0:
            raise LlmdockError(f"probe in environment {image!r} failed: {done.stderr.strip()[-300:]}")
        return done.stdout.strip()
