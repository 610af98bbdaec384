"""Which replica serves a request: the route table and least-outstanding-requests choice. Pure.

A *route* is one deployment: the names clients may send as ``model`` (its served name, plus its
deployment name and model path as aliases) and its replicas. Replicas are the containers that carry the
deployment's name label, each with its own port. The table is rebuilt from the runtime's listing every
second; :meth:`RouteTable.rebuild` keeps each replica object (and its outstanding count) across rebuilds.

Example::

    table = RouteTable()
    table.rebuild([Target("qwen", "qwen-7b", "http://127.0.0.1:8001", "c1", running=True)], policies={})
    route = table.lookup("qwen-7b")
    replica = pick(route.replicas)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


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

    @property
    def url(self) -> str:
        return self.target.base_url

    @property
    def usable(self) -> bool:
        return self.target.running and self.healthy


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

    def lookup(self, model: str) -> Route | None:
        return self.by_model.get(model)

    def rebuild(self, targets: Iterable[Target], policies: Mapping[str, Policy]) -> None:
        """Replace the table from a fresh listing, keeping replica objects whose key is unchanged."""
        old = {r.target.key: r for route in self.routes.values() for r in route.replicas}
        routes: dict[str, Route] = {}
        for t in targets:
            route = routes.get(t.deployment)
            if route is None:
                prev = self.routes.get(t.deployment)
                route = Route(t.deployment, t.served_name, t.aliases)
                if prev is not None:
                    route.last_used, route.outstanding = prev.last_used, prev.outstanding
                routes[t.deployment] = route
            replica = old.get(t.key)
            if replica is None:
                replica = Replica(t)
            else:
                if not t.running or t.base_url != replica.target.base_url:
                    replica.healthy = False
                replica.target = t
            route.replicas.append(replica)
        by_model: dict[str, Route] = {}
        for route in routes.values():
            route.policy = policies.get(route.name, Policy())
            for alias in route.aliases:
                by_model.setdefault(alias, route)
        for route in routes.values():  # served names win over aliases
            by_model[route.served_name] = route
        self.routes, self.by_model = routes, by_model

    def servable(self) -> list[Route]:
        """Routes a request could be served by: ready now, or startable on demand."""
        return [r for r in self.routes.values() if r.ready or r.policy.on_demand or r.running]
