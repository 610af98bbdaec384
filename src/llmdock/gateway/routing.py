"""Which replica serves a request: the route table and least-outstanding-requests choice. Pure.

A *route* is one deployment: the names clients may send as ``model`` (its deployment name and the
name its engine serves, plus its own ``--served-model-name`` and hub model id as aliases where no other
deployment shares them) and its replicas. Replicas are the containers that carry the
deployment's name label, each with its own port. The table is rebuilt from the runtime's listing every
second; :meth:`RouteTable.rebuild` keeps route and replica objects (and their outstanding counts) across rebuilds.

Example::

    table = RouteTable()
    table.rebuild([Target("qwen", "qwen-7b", "http://127.0.0.1:8001", "c1", running=True)], policies={})
    route = table.lookup("qwen-7b")
    replica = pick(route.replicas)
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

STATIC_KEY = "static:"  # the key prefix of targets given with `serve --route` (engines llmdock did not start)


@dataclass(frozen=True)
class Target:
    """What the runtime says about one replica (a plain view of a runtime Deployment)."""

    deployment: str
    served_name: str
    base_url: str
    key: str  # stable identity: container id, or name:port
    running: bool
    health_path: str = "/health"
    aliases: tuple[str, ...] = ()
    state: str = "running"
    exit_code: int | None = None
    started_at: str = ""  # a new start (a restart) means a new process: health is probed again
    api_key: str = ""  # the engine's own key (an engine on another host), sent upstream as Bearer
    concurrency: int | None = None  # requests the engine runs at once, when its flags say (congestion.py)


@dataclass(frozen=True)
class Policy:
    """Per-deployment gateway policy: start on demand, stop after ``idle_stop_s`` without requests."""

    on_demand: bool = False
    idle_stop_s: float | None = None


@dataclass(eq=False)
class Replica:
    target: Target
    healthy: bool = False
    outstanding: int = 0
    failures: int = 0
    probed_at: float = 0.0  # monotonic time of the last health probe

    @property
    def url(self) -> str:
        return self.target.base_url

    @property
    def origin(self) -> Origin:
        return parse_base(self.target.base_url)

    @property
    def usable(self) -> bool:
        return self.target.running and self.healthy


Origin = tuple[str, int, bool, str]  # host, port, TLS, path prefix


@functools.lru_cache(maxsize=1024)
def parse_base(url: str) -> Origin:
    """``http://127.0.0.1:8001`` -> ``("127.0.0.1", 8001, False, "")``; a path becomes the prefix of every
    request path. ValueError for what is not an http(s) URL with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
    tls = parts.scheme == "https"
    return parts.hostname, parts.port or (443 if tls else 80), tls, parts.path.rstrip("/")


@dataclass(eq=False)
class Route:
    name: str
    served_name: str
    aliases: tuple[str, ...]
    replicas: list[Replica] = field(default_factory=list)
    policy: Policy = field(default_factory=Policy)
    last_used: float = 0.0
    outstanding: int = 0

    @property
    def names(self) -> tuple[str, ...]:
        """What a key's model list is matched against: the deployment name and its aliases (never
        the engine's served name, which for some engines is a weights path several deployments share)."""
        return (self.name, *self.aliases)

    @property
    def ready(self) -> bool:
        return any(r.usable for r in self.replicas)

    @property
    def running(self) -> bool:
        return any(r.target.running for r in self.replicas)


_tiebreak = itertools.count()


def pick(replicas: Iterable[Replica], exclude: frozenset[int] = frozenset()) -> Replica | None:
    """The usable replica with the fewest outstanding requests; ties rotate. ``exclude``: ids tried."""
    best: Replica | None = None
    candidates = [r for r in replicas if r.usable and id(r) not in exclude]
    if not candidates:
        return None
    start = next(_tiebreak) % len(candidates)
    for r in candidates[start:] + candidates[:start]:
        if best is None or r.outstanding < best.outstanding:
            best = r
    return best


class RouteTable:
    """Model name -> route. Lookups are one dict access; rebuilds happen off the hot path."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}  # deployment name -> route
        self.by_model: dict[str, Route] = {}
        self.shared: dict[str, list[Route]] = {}  # served names several deployments claim

    def lookup(self, model: str) -> Route | None:
        """The route for ``model``; where several deployments serve that name, one that is ready."""
        if model in self.shared:
            return next((r for r in self.shared[model] if r.ready), self.by_model.get(model))
        return self.by_model.get(model)

    def rebuild(self, targets: Iterable[Target], policies: Mapping[str, Policy]) -> None:
        """Replace the table from a fresh listing, keeping replica objects whose key is unchanged."""
        old = {r.target.key: r for route in self.routes.values() for r in route.replicas}
        routes: dict[str, Route] = {}
        replicas: dict[str, list[Replica]] = {}
        for t in targets:
            route = routes.get(t.deployment)
            if route is None:
                # Route objects live as long as the deployment: requests in flight hold and count on them.
                route = self.routes.get(t.deployment) or Route(t.deployment, t.served_name, t.aliases)
                route.served_name, route.aliases = t.served_name, t.aliases
                routes[t.deployment] = route
                replicas[t.deployment] = []
            replica = old.get(t.key)
            if replica is None:
                replica = Replica(t)
            else:
                moved = (t.base_url, t.started_at) != (replica.target.base_url, replica.target.started_at)
                if not t.running or moved:
                    replica.healthy = False
                replica.target = t
            replicas[t.deployment].append(replica)
        for name, route in routes.items():
            route.replicas = replicas[name]
        alias_claims: dict[str, list[Route]] = {}
        for route in routes.values():
            route.policy = policies.get(route.name, Policy())
            for alias in route.aliases:
                alias_claims.setdefault(alias, []).append(route)
        # An alias two deployments share (one hub model deployed twice) names neither: call them by name.
        by_model = {alias: rs[0] for alias, rs in alias_claims.items() if len(rs) == 1}
        for route in routes.values():
            by_model.setdefault(route.name, route)
        claims: dict[str, list[Route]] = {}
        for route in routes.values():  # served names win over aliases
            by_model[route.served_name] = route
            claims.setdefault(route.served_name, []).append(route)
        self.shared = {name: rs for name, rs in claims.items() if len(rs) > 1}
        self.routes, self.by_model = routes, by_model

    def servable(self) -> list[Route]:
        """Routes a request could be served by: ready now, or startable on demand."""
        return [r for r in self.routes.values() if r.ready or r.policy.on_demand or r.running]
