"""Orchestration: spec -> weights -> inventory -> plan -> container -> ready -> recorded.

Every check that can refuse a deployment runs before anything is created, so bad input changes
nothing. Docker is the truth for what runs; the store keeps desired specs and history.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmdock import hostinfo
from llmdock.engines import get_engine
from llmdock.errors import EngineFailed, GpuUnavailable, InvalidSpec, LlmdockError, NotFound, SpecChanged
from llmdock.planning.inventory import Gpu, Holding, Inventory
from llmdock.planning.plan import Plan, make_plan
from llmdock.runtimes.base import Deployment, Runtime
from llmdock.runtimes.multi import Member, Runtimes
from llmdock.settings import Settings
from llmdock.spec import DeploymentSpec
from llmdock.state import Store

DEFAULT_TIMEOUT_S = 3600.0  # a 72B model on slow disks can take many minutes
STOP_TIMEOUT_S = 30.0


@dataclass
class UpResult:
    plan: Plan
    action: str  # created | replaced | started | unchanged | dry-run
    deployment: Deployment | None = None
    ready_after_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.plan.port}/v1"

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "url": self.url,
            "ready_after_s": self.ready_after_s,
            "docker_run": _docker_line(self.plan) if self.plan.spec.runtime == "docker" else None,
            **self.plan.to_dict(),
        }


def _docker_line(plan: Plan) -> str:
    from llmdock.planning.container import docker_run_line

    return docker_run_line(plan.container)


@dataclass(frozen=True)
class PullOptions:
    """How ``up`` brings a hub model (``ORG/NAME``) that is not in the store yet."""

    pull: bool = True
    source: str = "modelscope"
    revision: str | None = None
    allow_system_disk: bool = False
    progress: Callable[[dict[str, Any]], None] | None = None


def resolve_model_dir(model: str, models_dir: Path, opts: PullOptions | None = None) -> Path:
    """A weights directory holding config.json: a local directory as is, or ``ORG/NAME`` from the
    store, pulled first when missing (unless ``opts.pull`` is false)."""
    opts = opts or PullOptions(pull=False)
    path = Path(model).expanduser()
    if not path.exists():
        from llmdock.models import resolve
        from llmdock.models.names import looks_like_path

        if looks_like_path(model) or model.count("/") != 1:
            raise NotFound(
                f"model {model!r} is neither a local directory nor a hub ID like ORG/NAME",
                "give the directory that holds config.json (e.g. /data/models/Qwen2.5-7B-Instruct) "
                "or a hub ID such as Qwen/Qwen2.5-7B-Instruct",
            )
        kwargs: dict[str, Any] = {"source": opts.source, "revision": opts.revision}
        if opts.pull:
            kwargs["allow_system_disk"] = opts.allow_system_disk
            if opts.progress is not None:
                kwargs["progress"] = opts.progress
        path = resolve(model, models_dir=models_dir, no_pull=not opts.pull, **kwargs)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise InvalidSpec(
            f"{model!r} has no config.json", "point MODEL at the directory that holds config.json"
        )
    return path.resolve()


def model_facts(model_dir: Path) -> Any:
    """Planner facts from config.json and the safetensors headers; None when they cannot be read."""
    from llmdock.modelfacts import load_model_facts

    try:
        return load_model_facts(model_dir)
    except (OSError, ValueError, KeyError, TypeError, LlmdockError):
        return None


def detect_gpus() -> tuple[Gpu, ...]:
    """GPUs through NVML; none when NVML (nvidia-ml-py or the driver) is absent."""
    from llmdock.gpuinfo import detect_gpus as detect

    return detect()[0]


class Lifecycle:
    """``up``/``stop``/``rm``… over one runtime, or several by name (``{"local": …, "docker": …}``,
    members may be factories so Docker is connected only when a command needs it). A single runtime
    serves as ``docker``. ``runtime`` is the view over all of them; ``runtimes.named(kind)`` one."""

    def __init__(
        self,
        settings: Settings,
        runtime: Runtime | Mapping[str, Member],
        store: Store,
        pull: PullOptions | None = None,
    ) -> None:
        self.settings = settings
        if isinstance(runtime, Mapping):
            self.runtimes = Runtimes(runtime)
            self.runtime: Runtime = self.runtimes
        else:
            self.runtimes = Runtimes({"docker": runtime})
            self.runtime = runtime
        self.store = store
        self.pull = pull or PullOptions()

    @property
    def notes(self) -> list[str]:
        """Why some deployments may be missing from a listing (e.g. Docker unreachable)."""
        return self.runtimes.notes

    def used_by(self, model_dir: Path) -> list[str]:
        """Deployments whose weights are ``model_dir`` (``models rm`` refuses to remove those)."""
        target = str(model_dir.resolve())
        return [d.name for d in self.runtimes.deployments() if d.model_dir == target]

    def resolve(self, spec: DeploymentSpec) -> DeploymentSpec:
        """``spec`` with its image (docker) or engine environment (local) filled in from the defaults;
        a local deployment without ``--env`` runs in the environment named after its engine."""
        if spec.runtime == "local":
            return spec.with_engine_env(spec.engine_env or spec.engine)
        return spec.with_image(spec.image or self.settings.image(spec.engine))

    # ---- inventory -------------------------------------------------------------------------------
    def inventory(
        self, *, exclude_port: int | None = None, assume_gpus: tuple[Gpu, ...] = (), runtime: str = "docker"
    ) -> Inventory:
        """This host as the planner sees it; ``assume_gpus`` replaces the real GPUs (what-if plans).
        Deployments of every reachable runtime hold their ports and GPUs; ``runtime`` says whose GPU
        access counts."""
        deployments = self.runtimes.deployments()
        holdings = tuple(
            Holding(d.name, d.port, d.gpus if d.state in ("running", "restarting", "created") else ())
            for d in deployments
        )
        listening = hostinfo.listening_ports() - ({exclude_port} if exclude_port else set())
        return Inventory(
            gpus=assume_gpus or detect_gpus(),
            listening_ports=frozenset(listening),
            ephemeral_ports=hostinfo.ephemeral_range(),
            holdings=holdings,
            gpu_runtime=bool(assume_gpus) or self.runtimes.named(runtime).has_gpu_runtime(),
        )

    def engine_version(
        self, image: str, engine_name: str, runtime: str = "docker"
    ) -> tuple[str | None, bool]:
        """(version or None, image present). Probed once per image ID, then cached in the store.
        For the local runtime ``image`` is the engine environment."""
        rt = self.runtimes.named(runtime)
        image_id = rt.image_id(image)
        if image_id is None:
            return None, False
        cached = self.store.engine_version(image_id, engine_name)
        if cached is not None:
            return cached, True
        try:
            version = rt.run_probe(image, get_engine(engine_name).version_probe()).splitlines()[-1]
        except (LlmdockError, IndexError):
            return None, True  # unknown: render the newest syntax
        self.store.save_engine_version(image_id, engine_name, version)
        return version, True

    def plan(
        self,
        spec: DeploymentSpec,
        *,
        strict: bool = True,
        exclude_port: int | None = None,
        assume_gpus: tuple[Gpu, ...] = (),
    ) -> Plan:
        """The plan ``up`` carries out. Not strict (a dry run): never pulls, reports problems instead."""
        try:
            model_dir = resolve_model_dir(spec.model, self.settings.models_dir, self.pull if strict else None)
        except LlmdockError:
            if strict:
                raise
            model_dir = Path(spec.model)
        spec = self.resolve(spec)
        image = spec.engine_env if spec.runtime == "local" and spec.engine_env else spec.image or ""
        version, present = self.engine_version(image, spec.engine, spec.runtime)
        return make_plan(
            spec,
            self.inventory(exclude_port=exclude_port, assume_gpus=assume_gpus, runtime=spec.runtime),
            model_dir=str(model_dir),
            image=image,
            port_range=self.settings.port_range,
            engine_version=version,
            image_present=present,
            strict=strict,
            facts=model_facts(model_dir) if model_dir.is_dir() else None,
        )

    # ---- up ----------------------------------------------------------------------------------------
    def up(
        self,
        spec: DeploymentSpec,
        *,
        replace: bool = False,
        wait: bool = True,
        timeout: float = DEFAULT_TIMEOUT_S,
        dry_run: bool = False,
        on_phase: Callable[[str], None] | None = None,
        assume_gpus: tuple[Gpu, ...] = (),
    ) -> UpResult:
        if dry_run:
            return UpResult(self.plan(spec, strict=False, assume_gpus=assume_gpus), "dry-run")
        if assume_gpus:
            raise InvalidSpec(
                "--assume-gpus is for planning only", "use it with `llmdock plan` or `up --dry-run`"
            )

        existing = self.runtimes.get(spec.name)
        exclude = existing.port if existing is not None and replace else None
        if existing is not None and not replace:
            if existing.spec_hash != self.resolve(spec).hash():
                raise SpecChanged(spec.name)
            self._adopt(existing)
            action = "unchanged"
            if not existing.running:
                self._check_gpus_free(existing)
                self.runtimes.start(spec.name)
                self.store.record(spec.name, "started")
                action = "started"
            plan = self.plan(spec, strict=False, exclude_port=existing.port)
            return self._finish(UpResult(plan, action, existing), wait, timeout, on_phase)
        plan = self.plan(spec, exclude_port=exclude)
        action = "created"
        if existing is not None:
            self.runtimes.remove(spec.name, force=True)
            self.store.record(spec.name, "replaced", existing.spec_hash)
            action = "replaced"
        self.store.save_deployment(spec.name, plan.spec.to_dict(), plan.spec_hash, runtime=spec.runtime)
        dep = self.runtimes.named(spec.runtime).create(plan.container)
        self.store.record(spec.name, "created", plan.spec_hash)
        return self._finish(UpResult(plan, action, dep), wait, timeout, on_phase)

    def _finish(
        self, result: UpResult, wait: bool, timeout: float, on_phase: Callable[[str], None] | None
    ) -> UpResult:
        if not wait:
            return result
        from llmdock.readiness import wait_ready

        name = result.plan.spec.name
        rt = self.runtimes.named(result.plan.spec.runtime)
        try:
            result.ready_after_s = wait_ready(
                rt, name, get_engine(result.plan.spec.engine), timeout=timeout, on_phase=on_phase
            )
        except EngineFailed as e:
            # Stop the restart policy from looping on a deterministic failure; keep the logs for the user.
            rt.stop(name, timeout=5)
            self.store.record(name, "failed", e.message)
            raise
        self.store.record(name, "ready", f"{result.ready_after_s:.2f}s")
        result.deployment = rt.get(name)
        return result

    def _adopt(self, dep: Deployment) -> None:
        """Record a container found in Docker but missing from the store (e.g. after a lost database)."""
        if self.store.deployment(dep.name) is None and dep.spec:
            self.store.save_deployment(dep.name, dep.spec, dep.spec_hash, runtime=dep.runtime)
            self.store.record(dep.name, "adopted")

    def _check_gpus_free(self, dep: Deployment) -> None:
        if dep.spec.get("share_gpus"):
            return
        for other in self.runtimes.deployments():
            clash = set(other.gpus) & set(dep.gpus)
            if other.name != dep.name and other.running and clash:
                raise GpuUnavailable(
                    f"GPU {', '.join(map(str, sorted(clash)))} of {dep.name!r} is now held by {other.name!r}",
                    f"stop {other.name!r} first, or redeploy with --share-gpus",
                )

    # ---- the other verbs -------------------------------------------------------------------------------
    def ps(self) -> list[Deployment]:
        """Deployments of every reachable runtime; :attr:`notes` says which could not be asked."""
        return self.runtimes.deployments()

    def get(self, name: str) -> Deployment:
        return self.runtimes.find(name)[1]

    def logs(self, name: str, *, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        return self.runtimes.logs(name, tail=tail, follow=follow)

    def stop(self, name: str, timeout: float = STOP_TIMEOUT_S) -> None:
        self.get(name)
        self.runtimes.stop(name, timeout=timeout)
        self.store.record(name, "stopped")

    def start(
        self,
        name: str,
        *,
        wait: bool = True,
        timeout: float = DEFAULT_TIMEOUT_S,
        on_phase: Callable[[str], None] | None = None,
    ) -> float | None:
        dep = self.get(name)
        self._adopt(dep)
        if not dep.running:
            self._check_gpus_free(dep)
            self.runtimes.start(name)
            self.store.record(name, "started")
        return self._wait(dep, wait, timeout, on_phase)

    def restart(
        self,
        name: str,
        *,
        wait: bool = True,
        timeout: float = DEFAULT_TIMEOUT_S,
        on_phase: Callable[[str], None] | None = None,
    ) -> float | None:
        self.stop(name)
        return self.start(name, wait=wait, timeout=timeout, on_phase=on_phase)

    def _wait(
        self, dep: Deployment, wait: bool, timeout: float, on_phase: Callable[[str], None] | None
    ) -> float | None:
        if not wait:
            return None
        from llmdock.readiness import wait_ready

        rt = self.runtimes.named(dep.runtime)
        return wait_ready(rt, dep.name, get_engine(dep.engine), timeout=timeout, on_phase=on_phase)

    def rm(self, name: str, *, force: bool = False) -> None:
        dep = self.get(name)
        if dep.running and not force:
            raise LlmdockError(
                f"{name!r} is running",
                f"stop it first (`llmdock stop {name}`) or remove it anyway with `rm -f`",
            )
        self.runtimes.remove(name, force=True)
        self.store.delete_deployment(name)
        self.store.record(name, "removed")

    def inspect(self, name: str) -> dict[str, Any]:
        dep = self.get(name)
        stored = self.store.deployment(name)
        return {
            "deployment": {k: v for k, v in vars(dep).items() if k != "spec"},
            "spec": dep.spec or (stored or {}).get("spec", {}),
            "in_store": stored is not None,
            "events": [
                {"at": at, "kind": kind, "detail": detail} for at, kind, detail in self.store.events(name)
            ],
        }
