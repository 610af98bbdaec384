"""Keeps the route table true and deployments alive: discovery, health, restarts, on-demand, idle stop.

Every second the runtime is listed (in a worker thread: the docker SDK blocks) and the route table rebuilt.
Running replicas are probed over HTTP (``health_path``; on the way to healthy also ``/v1/models``); a
healthy one only every ``HEALTHY_PROBE_S``, so an engine's access log is not one probe line a second
(a replica that refuses a request is marked unhealthy by the proxy at once, and probed next tick).

The tick never waits on lifecycle work. Lifecycle actions (restart a crashed deployment, start one on
demand, stop an idle one, the admin API's calls) run in one dedicated thread that owns its own
:class:`~llmdock.lifecycle.Lifecycle` and SQLite connection; the tick starts them as background tasks
and reads their results when they end. The quick reads and records the tick itself needs (policies,
health events) go through a second thread with its own controller, so a deploy that pulls weights for
minutes does not freeze routing, probes, restarts or on-demand starts.

Restarts follow :func:`due_restart`: a deployment that exited without being stopped by someone is started
again after 1, 2, 4 … seconds (at most ``RESTART_MAX_S``), at most ``MAX_RESTARTS`` times in a row; each
crash, restart and the final give-up is recorded in the store's events with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import aiohttp

from llmdock.engines.base import engine_concurrency
from llmdock.gateway.metrics import Metrics
from llmdock.gateway.routing import STATIC_KEY, Policy, Replica, Route, RouteTable, Target, pick
from llmdock.gateway.wire import NoReplica
from llmdock.models.names import as_hub_id
from llmdock.states import Event

log = logging.getLogger("llmdock.gateway")
T = TypeVar("T")

RESTART_BASE_S = 1.0
RESTART_MAX_S = 60.0
MAX_RESTARTS = 5
STABLE_S = 60.0  # running this long after a restart resets the backoff
HEALTHY_PROBE_S = 5.0  # a healthy replica is probed this often; others every tick
# Last events after which an exited deployment is meant to be down and is left alone.
STOPPED_KINDS = frozenset({"stopped", "failed", "removed", "gave-up", "idle-stopped"})


@dataclass
class Backoff:
    attempts: int = 0
    next_at: float = 0.0
    gave_up: bool = False


def due_restart(state: str, last_event: str | None, b: Backoff, now: float) -> str:
    """``restart``, ``wait``, ``give-up`` or ``none`` for one deployment. Pure."""
    if state not in ("exited", "dead") or (last_event in STOPPED_KINDS):
        return "none"
    if b.attempts >= MAX_RESTARTS:
        return "none" if b.gave_up else "give-up"
    return "restart" if now >= b.next_at else "wait"


def backoff_after(attempts: int) -> float:
    return float(min(RESTART_MAX_S, RESTART_BASE_S * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class SupervisorConfig:
    interval_s: float = 1.0
    probe_timeout_s: float = 2.0
    hold_timeout_s: float = 600.0  # how long a request waits for an on-demand start
    queue_max: int = 256  # requests held per deployment while it starts


class Source(Protocol):
    """Where replicas come from (Docker labels, or fixed --route entries)."""

    def targets(self) -> list[Target]: ...


class Controller(Protocol):
    """Lifecycle actions; called from one worker thread."""

    def crashed(self) -> list[tuple[str, str, int | None]]: ...  # (name, state, exit code) not running
    def last_event(self, name: str) -> str | None: ...
    def record(self, name: str, kind: Event, detail: str = "") -> None: ...
    def start(self, name: str) -> None: ...
    def stop(self, name: str) -> None: ...
    def policies(self) -> dict[str, Policy]: ...


@dataclass
class StaticSource:
    targets_: list[Target] = field(default_factory=list)

    def targets(self) -> list[Target]:
        return list(self.targets_)


def static_target(model: str, url: str) -> Target:
    return Target(model, model, url.rstrip("/"), f"{STATIC_KEY}{model}:{url}", running=True)


class DockerSource:
    """Targets from the runtimes' listing; an engine on another host is reached at that host's
    address, with the key ``keys`` holds for it (:mod:`llmdock.hosts.keys`)."""

    def __init__(self, runtime: Any, keys: Any = None) -> None:
        self.runtime = runtime
        self.keys = keys

    def targets(self) -> list[Target]:
        out = []
        for d in self.runtime.deployments():
            if d.port is None:
                continue
            # Clients call a deployment by its name; its own --served-model-name and its hub model id are
            # aliases (the route table drops an alias two deployments share). Never the weights path.
            route = d.group or d.name  # replicas share their group's route
            names = (d.spec.get("served_model_name"), as_hub_id(d.model))
            aliases = tuple(dict.fromkeys(a for a in names if a and a != route))
            out.append(
                Target(
                    deployment=route,
                    served_name=d.served_name or d.name,
                    base_url=f"http://{d.address}:{d.port}",
                    key=d.id or f"{d.name}:{d.port}",
                    running=d.running,
                    health_path=d.health_path,
                    aliases=aliases,
                    state=d.state,
                    exit_code=d.exit_code,
                    started_at=d.started_at,
                    concurrency=engine_concurrency(d.spec.get("extra_args") or ()),
                    api_key=(self.keys.read(d.name) or "") if self.keys and d.host != "local" else "",
                )
            )
        return out


class Supervisor:
    def __init__(
        self,
        table: RouteTable,
        metrics: Metrics,
        sources: Iterable[Source],
        session: aiohttp.ClientSession,
        controller_factory: Callable[[], Controller] | None = None,
        config: SupervisorConfig = SupervisorConfig(),
    ) -> None:
        self.table = table
        self.metrics = metrics
        self._unhealthy: set[str] = set()  # replicas recorded unhealthy, so their recovery is recorded too
        self.sources = list(sources)
        self.session = session
        self.config = config
        self.controller_factory = controller_factory
        self.controller: Controller | None = None
        self.lister = ThreadPoolExecutor(1, thread_name_prefix="llmdock-list")
        self.actor = ThreadPoolExecutor(1, thread_name_prefix="llmdock-act")
        self.reader = ThreadPoolExecutor(1, thread_name_prefix="llmdock-read")
        self.reader_controller: Controller | None = None
        self.background: dict[str, asyncio.Task[None]] = {}  # lifecycle work the tick started
        self.backoffs: dict[str, Backoff] = {}
        self.policies: dict[str, Policy] = {}
        self.starting: dict[str, asyncio.Future[None]] = {}
        self.stopping: set[str] = set()
        self.waiting: dict[str, int] = {}
        self.tick = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        metrics.replicas = self.replica_states

    def replica_states(self) -> Iterable[tuple[str, str, bool, int]]:
        for route in self.table.routes.values():
            for r in route.replicas:
                yield route.name, r.url, r.usable, r.outstanding

    # ---- threads --------------------------------------------------------------------------------
    async def act(self, fn: Callable[[Controller], T]) -> T | None:
        """Run ``fn(controller)`` in the lifecycle thread; None when there is no controller."""
        if self.controller_factory is None:
            return None

        def call() -> T:
            if self.controller is None:
                assert self.controller_factory is not None
                self.controller = self.controller_factory()
            return fn(self.controller)

        return await asyncio.get_running_loop().run_in_executor(self.actor, call)

    async def read(self, fn: Callable[[Controller], T]) -> T | None:
        """Run a quick ``fn(controller)`` (a read, an event record) in the reader thread, never queued
        behind lifecycle work; None when there is no controller."""
        if self.controller_factory is None:
            return None

        def call() -> T:
            if self.reader_controller is None:
                assert self.controller_factory is not None
                self.reader_controller = self.controller_factory()
            return fn(self.reader_controller)

        return await asyncio.get_running_loop().run_in_executor(self.reader, call)

    def spawn(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Start ``work`` in the background unless the previous one of that name still runs."""
        running = self.background.get(name)
        if running is not None and not running.done():
            return

        async def guarded() -> None:
            try:
                await work()
            except Exception:
                log.exception("%s failed", name)

        self.background[name] = asyncio.create_task(guarded())

    # ---- loop -----------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.refresh()
        self.tasks = [asyncio.create_task(self.run())]

    async def close(self) -> None:
        for task in [*self.tasks, *self.background.values()]:
            task.cancel()
        for task in self.background.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for fut in self.starting.values():
            fut.cancel()
        self.lister.shutdown(wait=True, cancel_futures=True)
        self.reader.shutdown(wait=True, cancel_futures=True)
        self.actor.shutdown(wait=True, cancel_futures=True)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            try:
                await self.refresh()
                self.spawn("restarts", self.reconcile)  # lifecycle work: the tick does not wait on it
                self.spawn("idle stops", self.idle_stop)
            except Exception:  # the supervisor must outlive any one failure (Docker restarting, …)
                log.exception("supervisor tick failed")

    async def refresh(self) -> None:
        loop = asyncio.get_running_loop()
        targets: list[Target] = []
        for source in self.sources:
            try:
                targets += await loop.run_in_executor(self.lister, source.targets)
            except Exception as e:
                log.warning("listing deployments failed: %s", e)
                return
        policies = await self.read(lambda c: c.policies())
        if policies is not None:  # an empty table is an answer too: the last policy was removed
            self.policies = policies
        self.table.rebuild(targets, self.policies)
        now = time.monotonic()
        for route in self.table.routes.values():
            if route.last_used == 0.0:
                route.last_used = now
        await asyncio.gather(
            *(
                self.probe(route, r)
                for route in self.table.routes.values()
                for r in route.replicas
                if not r.healthy or now - r.probed_at >= HEALTHY_PROBE_S
            )
        )
        self.tick.set()
        self.tick = asyncio.Event()

    async def probe(self, route: Route, replica: Replica) -> None:
        if not replica.target.running:
            replica.healthy = False
            return
        was = replica.healthy
        replica.probed_at = time.monotonic()
        base = replica.url
        timeout = aiohttp.ClientTimeout(total=self.config.probe_timeout_s)
        try:
            async with self.session.get(base + replica.target.health_path, timeout=timeout) as r:
                ok = r.status == 200
                await r.read()
            if ok and not was:  # ready also means the served name is listed
                key = replica.target.api_key
                auth = {"Authorization": f"Bearer {key}"} if key else None
                async with self.session.get(base + "/v1/models", timeout=timeout, headers=auth) as r:
                    ids = [m.get("id") for m in (await r.json()).get("data", [])] if r.status == 200 else []
                ok = route.served_name in ids
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, AttributeError):
            ok = False
        replica.healthy = ok
        name = route.name
        if was and not ok and not replica.target.key.startswith(STATIC_KEY):
            self._unhealthy.add(replica.target.key)
            await self.read(
                lambda c: c.record(name, Event.UNHEALTHY, f"{base} stopped answering its health check")
            )
        elif ok and not was and replica.target.key in self._unhealthy:
            self._unhealthy.discard(replica.target.key)
            await self.read(lambda c: c.record(name, Event.HEALTHY, f"{base} answers again"))

    async def reconcile(self) -> None:
        """Restart deployments that exited without being stopped, with exponential backoff."""
        if self.controller_factory is None:
            return

        def work(c: Controller) -> None:
            now = time.monotonic()
            down = {name for name, _, _ in c.crashed()}
            for name, b in list(self.backoffs.items()):
                if name not in down and now - b.next_at > STABLE_S:
                    del self.backoffs[name]
            for name, state, code in c.crashed():
                if name in self.stopping or name in self.starting:
                    continue
                b = self.backoffs.setdefault(name, Backoff())
                decision = due_restart(state, c.last_event(name), b, now)
                if decision == "give-up":
                    b.gave_up = True
                    c.record(name, Event.GAVE_UP, f"crashed {b.attempts} times in a row; not restarting")
                elif decision == "restart":
                    b.attempts += 1
                    b.next_at = now + backoff_after(b.attempts)
                    c.record(
                        name,
                        Event.CRASHED,
                        f"{state} with code {code}; restart {b.attempts} of {MAX_RESTARTS}",
                    )
                    try:
                        c.start(name)
                        c.record(name, Event.RESTARTED, f"next backoff {backoff_after(b.attempts):g}s")
                        self.metrics.restarts[(name,)] += 1
                    except Exception as e:
                        c.record(name, Event.RESTART_FAILED, str(e))

        await self.act(work)

    async def idle_stop(self) -> None:
        now = time.monotonic()
        for route in list(self.table.routes.values()):
            idle = route.policy.idle_stop_s
            if idle is None or not route.running or route.outstanding or route.name in self.stopping:
                continue
            if route.name in self.starting or now - route.last_used < idle:
                continue
            name = route.name
            self.stopping.add(name)
            try:
                await self.act(functools.partial(_idle_stop, name=name, idle=idle))
            finally:
                self.stopping.discard(name)

    # ---- on-demand ------------------------------------------------------------------------------
    async def hold(self, route: Route) -> Replica:
        """Wait for a ready replica of ``route``, starting it when it is on-demand and stopped."""
        name = route.name
        if not route.policy.on_demand:
            raise NoReplica(f"no ready replica serves {route.name!r}; see `llmdock ps`")
        if self.waiting.get(name, 0) >= self.config.queue_max:
            raise NoReplica(f"{route.name!r} is starting and its queue is full; retry shortly")
        self.waiting[name] = self.waiting.get(name, 0) + 1
        deadline = time.monotonic() + self.config.hold_timeout_s
        try:
            while True:
                current = self.table.routes.get(name, route)
                replica = pick(current.replicas)
                if replica is not None:
                    current.last_used = time.monotonic()
                    return replica
                if not current.running and name not in self.starting and name not in self.stopping:
                    self.starting[name] = asyncio.ensure_future(self.start_on_demand(name))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NoReplica(
                        f"{route.name!r} did not become ready within {self.config.hold_timeout_s:g}s"
                    )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.tick.wait(), remaining)
        finally:
            self.waiting[name] -= 1

    async def start_on_demand(self, name: str) -> None:
        try:
            await self.act(functools.partial(_start, name=name))
        except Exception as e:
            log.warning("on-demand start of %s failed: %s", name, e)
        finally:
            self.starting.pop(name, None)


def _idle_stop(c: Controller, name: str, idle: float) -> None:
    c.stop(name)
    c.record(name, Event.IDLE_STOPPED, f"no request for {idle:g}s")


def _start(c: Controller, name: str) -> None:
    c.record(name, Event.ON_DEMAND, "a request arrived")
    c.start(name)
