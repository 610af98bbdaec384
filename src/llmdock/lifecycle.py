"""Orchestration: spec -> weights -> inventory -> plan -> container -> ready -> recorded.

Every check that can refuse a deployment runs before anything is created, so bad input changes
nothing. Docker is the truth for what runs; the store keeps desired specs and history.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmdock import hostinfo
from llmdock.engines import get_engine
from llmdock.errors import (
    EngineFailed,
    GpuUnavailable,
    InvalidSpec,
    LlmdockError,
    RuntimeUnavailable,
    SpecChanged,
)
from llmdock.hosts import LOCAL, member_key
from llmdock.planning.container import ContainerConfig
from llmdock.planning.inventory import Gpu, Holding, Inventory
from llmdock.planning.plan import Plan, make_plan
from llmdock.runtimes.base import Deployment, Runtime
from llmdock.runtimes.multi import Member, Runtimes
from llmdock.settings import Settings
from llmdock.spec import DeploymentSpec
from llmdock.state import Store
from llmdock.states import Event
from llmdock.weights import PullOptions, Weights, fetch, locate, read_facts

if TYPE_CHECKING:
    from llmdock.hosts.facts import HostFacts
    from llmdock.hosts.keys import EngineKeys
    from llmdock.hosts.registry import HostRegistry

__all__ = ["Lifecycle", "PullOptions", "UpResult"]

DEFAULT_TIMEOUT_S = 3600.0  # a 72B model on slow disks can take many minutes
STOP_TIMEOUT_S = 30.0


@dataclass
class UpResult:
    plan: Plan
    action: str  # created | replaced | started | unchanged | dry-run
    deployment: Deployment | None = None
    ready_after_s: float | None = None
    notes: list[str] = field(default_factory=list)
    members: list[UpResult] = field(default_factory=list)  # every replica's result (--replicas)

    @property
    def url(self) -> str:
        address = self.deployment.address if self.deployment is not None else "127.0.0.1"
        return f"http://{address}:{self.plan.port}/v1"

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "url": self.url,
            "ready_after_s": self.ready_after_s,
            "docker_run": _docker_line(self.plan) if self.plan.spec.runtime == "docker" else None,
            **self.plan.to_dict(),
            "replicas": [
                {"name": m.plan.spec.name, "url": m.url, "gpus": list(m.plan.gpus), "action": m.action}
                for m in self.members
            ],
        }


def _docker_line(plan: Plan) -> str:
    from llmdock.planning.container import docker_run_line

    return docker_run_line(plan.container)


def detect_gpus() -> tuple[Gpu, ...]:
    """GPUs through NVML; none when NVML (nvidia-ml-py or the driver) is absent."""
    from llmdock.gpuinfo import detect_gpus as detect

    return detect()[0]


def spec_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, ...]:
    """``field: old -> new`` for each field that differs (secret env values stay masked)."""
    return tuple(
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and key != "name"
    )


def assume_version(engine: str, image: str, *, probed: bool) -> tuple[str | None, str]:
    """The engine version to render flags for when the image could not tell, and a note that says so:
    from the image's tag or llmdock's table of known images, else the newest release llmdock claims."""
    from llmdock.engines.versions import CLAIMED, assumed_version

    why = "the version probe of the image printed no version" if probed else "not probed in a dry run"
    then = "" if probed else "; `up` probes the image"
    found = assumed_version(engine, image)
    if found is not None:
        return found[0], f"{engine} version {why}: assumed {found[0]} ({found[1]}){then}"
    newest = CLAIMED.get(engine, (None,))[-1]
    return newest, f"{engine} version {why}: assumed the newest ({newest or 'flags of today'}){then}"


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
        self._hosts: HostRegistry | None = None

    # ---- hosts -----------------------------------------------------------------------------------
    @property
    def hosts(self) -> HostRegistry:
        """The registered hosts (`llmdock hosts ls`)."""
        if self._hosts is None:
            from llmdock.hosts.registry import HostRegistry, hosts_dir

            self._hosts = HostRegistry(self.store, hosts_dir(self.settings))
        return self._hosts

    @property
    def keys(self) -> EngineKeys:
        from llmdock.hosts.keys import EngineKeys

        return EngineKeys(self.settings.home / "engine-keys")

    def remote_hosts(self) -> list[str]:
        """Hosts other than this one that this lifecycle has a runtime for, in order."""
        return [k.partition("@")[2] for k in self.runtimes.kinds if "@" in k]

    def host_facts(self, host: str, *, max_age: float | None = None) -> HostFacts:
        """``host``'s GPUs, ports, RAM and disk, from the cache when younger than ``max_age`` (default
        the registry's TTL), else read through its Docker (and cached)."""
        registry = self.hosts
        cached = registry.cached_facts(host) if max_age is None else registry.cached_facts(host, max_age)
        if cached is not None:
            return cached
        facts = self._read_facts(host)
        registry.save_facts(host, facts)
        return facts

    def _read_facts(self, host: str) -> HostFacts:
        """Read ``host``'s facts now (no database access: safe in a worker thread)."""
        from llmdock.hosts.remote import RemoteRuntime

        rt = self.runtimes.named(member_key("docker", host))
        if not isinstance(rt, RemoteRuntime):
            raise RuntimeUnavailable(f"host {host} is not reached over SSH here", "see `llmdock hosts ls`")
        image = rt.host.probe_image or self.settings.image("vllm")
        return rt.facts(image, rt.host.models_dir or str(self.settings.models_dir))

    def prefetch_facts(self, hosts: list[str]) -> dict[str, HostFacts | RuntimeUnavailable]:
        """Facts of every host in ``hosts`` at once (fresh ones read concurrently); an unreachable host
        maps to its error, read within the ssh connect timeout, never holding up the others."""
        from concurrent.futures import ThreadPoolExecutor

        found: dict[str, HostFacts | RuntimeUnavailable] = {}
        stale = []
        for host in hosts:
            cached = self.hosts.cached_facts(host)
            if cached is not None:
                found[host] = cached
            else:
                stale.append(host)

        def read(host: str) -> HostFacts | RuntimeUnavailable:
            try:
                return self._read_facts(host)
            except RuntimeUnavailable as e:
                return e

        if stale:
            with ThreadPoolExecutor(len(stale), thread_name_prefix="llmdock-facts") as pool:
                for host, facts in zip(stale, pool.map(read, stale), strict=True):
                    found[host] = facts
                    if not isinstance(facts, RuntimeUnavailable):
                        self.hosts.save_facts(host, facts)
        return found

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
        cpu = spec.gpus == "none" and get_engine(spec.engine).runs_on_cpu
        return spec.with_image(spec.image or self.settings.image(spec.engine, cpu=cpu))

    # ---- inventory -------------------------------------------------------------------------------
    def inventory(
        self,
        *,
        exclude_port: int | None = None,
        assume_gpus: tuple[Gpu, ...] = (),
        runtime: str = "docker",
        planned: tuple[Holding, ...] = (),
        host: str = LOCAL,
        deployments: list[Deployment] | None = None,
    ) -> Inventory:
        """``host`` as the planner sees it; ``assume_gpus`` replaces the real GPUs (what-if plans).
        Deployments of every reachable runtime there hold their ports and GPUs, and so do ``planned``
        ones (the replicas before this one, in a dry run); ``runtime`` says whose GPU access counts.
        Another host's facts are read through its Docker (:meth:`host_facts`)."""
        listed = self.runtimes.deployments() if deployments is None else deployments
        holdings = planned + tuple(
            Holding(d.name, d.port, d.gpus if d.state in ("running", "restarting", "created") else ())
            for d in listed
            if d.host == host
        )
        if host != LOCAL:
            facts = self.host_facts(host)
            return Inventory(
                gpus=assume_gpus or facts.gpus,
                listening_ports=facts.listening_ports - ({exclude_port} if exclude_port else set()),
                ephemeral_ports=facts.ephemeral_ports,
                holdings=holdings,
                gpu_runtime=bool(assume_gpus) or facts.gpu_runtime,
                memory_total_bytes=facts.memory_total_bytes,
                memory_available_bytes=facts.memory_available_bytes,
                cpus=facts.cpus,
            )
        listening = hostinfo.listening_ports() - ({exclude_port} if exclude_port else set())
        total, available = hostinfo.memory()
        return Inventory(
            gpus=assume_gpus or detect_gpus(),
            listening_ports=frozenset(listening),
            ephemeral_ports=hostinfo.ephemeral_range(),
            holdings=holdings,
            gpu_runtime=bool(assume_gpus) or self._gpu_runtime(runtime),
            memory_total_bytes=total,
            memory_available_bytes=available,
            cpus=hostinfo.cpus(),
        )

    def _gpu_runtime(self, runtime: str) -> bool:
        """Whether ``runtime`` can give containers GPUs; False (noted) when Docker cannot be asked."""
        try:
            return self.runtimes.named(runtime).has_gpu_runtime()
        except RuntimeUnavailable as e:
            # Not a fact about the host: only a what-if plan gets here (`up` needs the daemon anyway).
            self.runtimes.notes.append(f"not checked: the NVIDIA runtime ({e.message})")
            return True

    def engine_version(
        self, image: str, engine_name: str, runtime: str = "docker", *, probe: bool = True, host: str = LOCAL
    ) -> tuple[str | None, bool]:
        """(version or None, image present on ``host``). Probed once per image ID (a throwaway
        container), then cached in the store; ``probe=False`` (a dry run creates nothing) reads the
        cache only. For the local runtime ``image`` is the engine environment."""
        rt = self.runtimes.named(member_key(runtime, host))
        image_id = rt.image_id(image)
        if image_id is None:
            return None, False
        cached = self.store.engine_version(image_id, engine_name)
        if cached is not None or not probe:
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
        weights: Weights | None = None,
        planned: tuple[Holding, ...] = (),
    ) -> Plan:
        """The plan ``up`` carries out, on the host ``--host`` names or, where hosts are registered
        and none is named, on the one placement picks (:func:`llmdock.planning.hosts.choose_host`).
        Never downloads. Not strict (a dry run): reports problems instead of raising, and creates
        nothing (no engine-version probe either)."""
        remote = self._known_hosts(spec)
        problems: list[str] = []
        if weights is None:
            try:
                weights = locate(spec.model, self.settings.models_dir, self.pull)
            except LlmdockError as e:
                if strict:
                    raise
                problems.append(f"{e.message} ({e.hint})")
                weights = Weights(None, None)
        kwargs: dict[str, Any] = dict(exclude_port=exclude_port, assume_gpus=assume_gpus, planned=planned)
        if spec.host is not None or not remote or spec.runtime != "docker":
            plan = self._plan_on(spec, spec.host or LOCAL, weights, strict=strict, **kwargs)
        else:
            plan = self._place(spec, [LOCAL, *remote], weights, strict=strict, **kwargs)
        return replace(
            plan, problems=tuple(problems) + plan.problems, blocking=tuple(problems) + plan.blocking
        )

    def _known_hosts(self, spec: DeploymentSpec) -> list[str]:
        """The registered hosts; NotFound (naming them) when ``--host`` names none of them. Checked
        before a hub is asked for the model, so a mistyped host is not hidden by a network error."""
        remote = self.remote_hosts()
        if spec.host is not None and spec.host != LOCAL and spec.host not in remote:
            self.hosts.get(spec.host)
        return remote

    def _place(
        self, spec: DeploymentSpec, hosts: list[str], weights: Weights, *, strict: bool, **kwargs: Any
    ) -> Plan:
        """Plan on every host that answers, choose one, and plan there for real (strict or not)."""
        from llmdock.planning.hosts import HostOption, choose_host

        facts = self.prefetch_facts([h for h in hosts if h != LOCAL])
        deployments = self.runtimes.deployments()
        size = sum(f.stat().st_size for f in weights.path.rglob("*") if f.is_file()) if weights.path else 0
        options, notes = [], []
        for host in hosts:
            found = facts.get(host)
            if isinstance(found, RuntimeUnavailable):
                notes.append(f"host {host} left out: {found.message}")
                continue
            free_disk = found.disk_free_bytes if found is not None else None
            if free_disk is not None and size > free_disk:  # the weights would be copied there
                notes.append(
                    f"host {host} left out: {free_disk / 2**30:.1f} GiB free in its models dir, "
                    f"the weights need {size / 2**30:.1f} GiB"
                )
                continue
            try:
                plan = self._plan_on(spec, host, weights, strict=False, deployments=deployments, **kwargs)
            except RuntimeUnavailable as e:
                notes.append(f"host {host} left out: {e.message}")
                continue
            inv = self.inventory(host=host, deployments=deployments, runtime=spec.runtime)
            held = {i for h in inv.holdings for i in h.gpus}
            free = (
                sum(g.free_bytes for g in inv.gpus if g.index not in held)
                if plan.gpus
                else inv.memory_available_bytes
            )
            options.append(HostOption(host, plan, free))
        chosen, why = choose_host(options, spec.placement)
        notes += why
        target = chosen.host if chosen is not None else LOCAL
        try:
            plan = self._plan_on(spec, target, weights, strict=strict, deployments=deployments, **kwargs)
        except LlmdockError as e:
            if notes:  # no host can take it: say what each said
                e.message = f"{e.message}; no other host can take it either ({'; '.join(notes)})"
                e.args = (e.message,)
            raise
        return replace(plan, notes=plan.notes + tuple(notes))

    def _on(self, spec: DeploymentSpec, host: str) -> DeploymentSpec:
        """``spec`` as it runs on ``host``: on another host the engine listens on that host's network
        (the gateway reaches it there, with a key: :mod:`llmdock.hosts.keys`)."""
        if host == LOCAL:
            return spec
        if spec.runtime != "docker":
            raise InvalidSpec(
                f"--runtime {spec.runtime} runs on this host only",
                f"drop --host {host}, or use --runtime docker",
            )
        return dataclasses.replace(spec, expose=True)

    def _plan_on(
        self,
        spec: DeploymentSpec,
        host: str,
        weights: Weights,
        *,
        strict: bool,
        exclude_port: int | None = None,
        assume_gpus: tuple[Gpu, ...] = (),
        planned: tuple[Holding, ...] = (),
        deployments: list[Deployment] | None = None,
        model_dir: str | None = None,
    ) -> Plan:
        """The plan of ``spec`` on ``host`` (``model_dir``: where the weights are there, when not
        where they are here)."""
        spec = self._on(self.resolve(spec), host)
        image = spec.engine_env if spec.runtime == "local" and spec.engine_env else spec.image or ""
        notes = [weights.note] if weights.note else []
        try:
            version, present = self.engine_version(image, spec.engine, spec.runtime, probe=strict, host=host)
        except RuntimeUnavailable as e:
            if strict:
                raise
            # A what-if on a laptop: plan without the daemon, and say what could not be seen.
            version, present = None, True
            notes.append(f"{e.message}: image presence, engine version and running deployments not checked")
        if version is None:
            version, note = assume_version(spec.engine, image, probed=strict and present)
            notes.append(note)
        plan = make_plan(
            spec,
            self.inventory(
                exclude_port=exclude_port,
                assume_gpus=assume_gpus,
                runtime=spec.runtime,
                planned=planned,
                host=host,
                deployments=deployments,
            ),
            model_dir=model_dir or str(weights.path or spec.model),
            image=image,
            port_range=self.settings.port_range,
            engine_version=version,
            image_present=present,
            strict=strict,
            facts=weights.facts,
        )
        if host != LOCAL and weights.path is not None and model_dir is None:
            notes.append(
                f"`up` copies the weights to {host}'s models dir first, unless they are there already"
            )
        return replace(plan, notes=plan.notes + tuple(notes), host=host)

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
        if spec.replicas > 1 and spec.group is None:
            return self._up_replicas(spec, replace, wait, timeout, dry_run, on_phase, assume_gpus)
        if dry_run:
            return UpResult(self.plan(spec, strict=False, assume_gpus=assume_gpus), "dry-run")
        if assume_gpus:
            raise InvalidSpec(
                "--assume-gpus is for planning only", "use it with `llmdock plan` or `up --dry-run`"
            )

        existing = self.runtimes.get(spec.name)
        exclude = existing.port if existing is not None and replace else None
        if existing is not None and not replace:
            wanted = self._on(self.resolve(spec), existing.host)
            if existing.spec_hash != wanted.hash():
                raise SpecChanged(spec.name, spec_diff(existing.spec, wanted.public_dict()))
            self._adopt(existing)
            action = "unchanged"
            if not existing.running:
                self._check_gpus_free(existing)
                self.runtimes.start(spec.name)
                self.store.record(spec.name, Event.STARTED)
                action = "started"
            plan = self._plan_existing(spec, existing)
            return self._finish(UpResult(plan, action, existing), wait, timeout, on_phase)
        # Every check runs before anything is fetched or created; a hub model is planned from the
        # hub's config.json, pulled, then planned again from the weights on disk.
        self._known_hosts(spec)
        weights = locate(spec.model, self.settings.models_dir, self.pull)
        plan = self.plan(spec, exclude_port=exclude, weights=weights)
        if weights.path is None:
            if on_phase is not None:
                on_phase("downloading weights")
            path = fetch(spec.model, self.settings.models_dir, self.pull)
            plan = self.plan(spec, exclude_port=exclude, weights=Weights(path, *read_facts(path)))
        if plan.host != LOCAL and weights.path is not None:
            plan = self._weights_to(plan, spec, weights, exclude, on_phase)
        action = "created"
        if existing is not None:
            self.runtimes.remove(spec.name, force=True)
            self.store.record(spec.name, Event.REPLACED, existing.spec_hash)
            action = "replaced"
        if on_phase is not None:
            on_phase("creating the container" if spec.runtime == "docker" else "starting the engine process")
        dep = self.runtimes.named(member_key(spec.runtime, plan.host)).create(self._keyed(plan))
        self.store.save_deployment(spec.name, plan.spec.to_dict(), plan.spec_hash, runtime=spec.runtime)
        self.store.record(spec.name, Event.CREATED, plan.spec_hash)
        return self._finish(UpResult(plan, action, dep), wait, timeout, on_phase)

    def _weights_to(
        self,
        plan: Plan,
        spec: DeploymentSpec,
        weights: Weights,
        exclude: int | None,
        on_phase: Callable[[str], None] | None,
    ) -> Plan:
        """Copy the weights to ``plan.host``'s models dir unless they are there already (verified by
        sha256 either way, refused before anything is written when the disk there cannot hold them),
        and plan again with them at that path."""
        from llmdock.hosts.remote import RemoteRuntime
        from llmdock.hosts.weights import remote_path

        assert weights.path is not None
        rt = self.runtimes.named(member_key("docker", plan.host))
        if not isinstance(rt, RemoteRuntime):
            return plan  # a host in memory (tests): its weights are where they are here
        models_dir = rt.host.models_dir or str(self.settings.models_dir)
        remote = remote_path(weights.path, self.settings.models_dir, models_dir)
        facts = self.host_facts(plan.host)
        if on_phase is not None:
            on_phase(f"checking the weights on {plan.host}")
        copied = rt.ensure_weights(
            plan.container.image, weights.path, remote, models_dir, facts.disk_free_bytes, on_phase
        )
        if copied:
            self.store.record(spec.name, Event.WEIGHTS_COPIED, f"{plan.host}:{remote}")
        replanned = self._plan_on(
            spec, plan.host, weights, strict=True, exclude_port=exclude, model_dir=remote
        )
        return replace(replanned, notes=replanned.notes + plan.notes[len(replanned.notes) :])

    def _plan_existing(self, spec: DeploymentSpec, existing: Deployment) -> Plan:
        """What ``existing`` was planned as, on the host it runs on (for ``up`` of an unchanged spec)."""
        try:
            weights = locate(spec.model, self.settings.models_dir, self.pull)
        except LlmdockError:
            weights = Weights(None, None)
        return self._plan_on(spec, existing.host, weights, strict=False, exclude_port=existing.port)

    def _keyed(self, plan: Plan) -> ContainerConfig:
        """The container to create: on another host, with the engine's secret API key when the
        engine takes one (:mod:`llmdock.hosts.keys`; the plan itself never holds the key)."""
        variable = get_engine(plan.spec.engine).api_key_env
        if plan.host == LOCAL or variable is None:
            self.keys.remove(plan.spec.name)
            return plan.container
        key = self.keys.issue(plan.spec.name)
        return dataclasses.replace(plan.container, env={**plan.container.env, variable: key})

    def engine_auth(self, dep: Deployment) -> str:
        """What protects ``dep``'s engine from callers other than the gateway, in words (no key)."""
        if dep.host == LOCAL:
            return "listens on this host" + (
                " only (loopback)" if not dep.spec.get("expose") else "'s every interface"
            )
        if self.keys.read(dep.name) is not None:
            return (
                f"key-protected: the engine on {dep.host} checks an API key that only the gateway holds "
                f"({self.keys.path(dep.name)}, 0600)"
            )
        return (
            f"not key-protected: the {dep.engine} engine takes no API key, so anyone who reaches "
            f"{dep.address}:{dep.port} can call it; keep that port firewalled to this host"
        )

    def _finish(
        self, result: UpResult, wait: bool, timeout: float, on_phase: Callable[[str], None] | None
    ) -> UpResult:
        if not wait:
            return result
        from llmdock.readiness import wait_ready

        name = result.plan.spec.name
        rt = self.runtimes.named(member_key(result.plan.spec.runtime, result.plan.host))
        address = result.deployment.address if result.deployment is not None else "127.0.0.1"
        try:
            result.ready_after_s = wait_ready(
                rt,
                name,
                get_engine(result.plan.spec.engine),
                timeout=timeout,
                on_phase=on_phase,
                address=address,
                api_key=self.keys.read(name) if result.plan.host != LOCAL else None,
            )
        except EngineFailed as e:
            # Stop the restart policy from looping on a deterministic failure; keep the logs for the user.
            rt.stop(name, timeout=5)
            self.store.record(name, Event.FAILED, e.message)
            raise
        self.store.record(name, Event.READY, f"{result.ready_after_s:.2f}s")
        result.deployment = rt.get(name) or result.deployment
        return result

    def _adopt(self, dep: Deployment) -> None:
        """Record a container found in Docker but missing from the store (e.g. after a lost database)."""
        if self.store.deployment(dep.name) is None and dep.spec:
            self.store.save_deployment(dep.name, dep.spec, dep.spec_hash, runtime=dep.runtime)
            self.store.record(dep.name, Event.ADOPTED)

    def _check_gpus_free(self, dep: Deployment) -> None:
        if dep.spec.get("share_gpus"):
            return
        for other in self.runtimes.deployments():
            clash = set(other.gpus) & set(dep.gpus) if other.host == dep.host else set()
            if other.name != dep.name and other.running and clash:
                raise GpuUnavailable(
                    f"GPU {', '.join(map(str, sorted(clash)))} of {dep.name!r} is now held by {other.name!r}",
                    f"stop {other.name!r} first, or redeploy with --share-gpus",
                )

    # ---- the other verbs -------------------------------------------------------------------------------
    def _up_replicas(
        self,
        spec: DeploymentSpec,
        replace: bool,
        wait: bool,
        timeout: float,
        dry_run: bool,
        on_phase: Callable[[str], None] | None,
        assume_gpus: tuple[Gpu, ...],
    ) -> UpResult:
        """Create every replica first (so their engines load in parallel), then wait for each.
        Each is planned after the ones before it exist, so ports and GPUs never collide."""
        if dry_run:  # every replica planned, each holding its GPUs and port for the ones after it
            results: list[UpResult] = []
            for r in spec.replica_specs():
                held = tuple(
                    Holding(m.plan.spec.name, m.plan.port, m.plan.gpus)
                    for m in results
                    if not m.plan.blocking
                )
                results.append(
                    UpResult(self.plan(r, strict=False, assume_gpus=assume_gpus, planned=held), "dry-run")
                )
        else:
            results = [
                self.up(r, replace=replace, wait=False, assume_gpus=assume_gpus) for r in spec.replica_specs()
            ]
        if wait and not dry_run:
            results = [self._finish(r, True, timeout, on_phase) for r in results]
        first = results[0]
        first.members = results
        return first

    def names(self, name: str) -> list[str]:
        """``[name]``, or for a deployment made with ``--replicas`` its replicas ``NAME-1`` … ``NAME-N``."""
        if self.runtimes.get(name) is not None:
            return [name]
        members = sorted(d.name for d in self.runtimes.deployments() if d.group == name and d.name != name)
        return members or [name]  # unknown: the caller's lookup raises NotFound

    def ps(self) -> list[Deployment]:
        """Deployments of every reachable runtime; :attr:`notes` says which could not be asked."""
        return self.runtimes.deployments()

    def get(self, name: str) -> Deployment:
        return self.runtimes.find(name)[1]

    def logs(self, name: str, *, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        return self.runtimes.logs(name, tail=tail, follow=follow)

    def stop(self, name: str, timeout: float = STOP_TIMEOUT_S) -> None:
        for member in self.names(name):
            self.get(member)
            self.runtimes.stop(member, timeout=timeout)
            self.store.record(member, Event.STOPPED)

    def start(
        self,
        name: str,
        *,
        wait: bool = True,
        timeout: float = DEFAULT_TIMEOUT_S,
        on_phase: Callable[[str], None] | None = None,
    ) -> float | None:
        deps = [self.get(member) for member in self.names(name)]
        for dep in deps:
            self._adopt(dep)
            if not dep.running:
                self._check_gpus_free(dep)
                self.runtimes.start(dep.name)
                self.store.record(dep.name, Event.STARTED)
        waited = [self._wait(dep, wait, timeout, on_phase) for dep in deps]
        return None if None in waited else max(w for w in waited if w is not None)

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

        rt = self.runtimes.named(dep.member)
        return wait_ready(
            rt,
            dep.name,
            get_engine(dep.engine),
            timeout=timeout,
            on_phase=on_phase,
            address=dep.address,
            api_key=self.keys.read(dep.name) if dep.host != LOCAL else None,
        )

    def rm(self, name: str, *, force: bool = False) -> None:
        deps = [self.get(member) for member in self.names(name)]
        if any(dep.running for dep in deps) and not force:
            raise LlmdockError(
                f"{name!r} is running",
                f"stop it first (`llmdock stop {name}`) or remove it anyway with `rm -f`",
            )
        for dep in deps:
            self.runtimes.remove(dep.name, force=True)
            self.keys.remove(dep.name)
            self.store.delete_deployment(dep.name)
            self.store.record(dep.name, Event.REMOVED)

    def inspect(self, name: str) -> dict[str, Any]:
        dep = self.get(name)
        stored = self.store.deployment(name)
        return {
            "deployment": {k: v for k, v in vars(dep).items() if k != "spec"},
            "engine_auth": self.engine_auth(dep),
            "spec": dep.spec or (stored or {}).get("spec", {}),
            "in_store": stored is not None,
            "events": [
                {"at": at, "kind": kind, "detail": detail} for at, kind, detail in self.store.events(name)
            ],
        }
