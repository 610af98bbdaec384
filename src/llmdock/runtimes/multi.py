"""Several runtimes behind one: ``ps`` lists them all, a name is found in whichever holds it.

Members are given as runtimes or as factories called on first use, so a command that only touches
local deployments never connects to Docker. A member that cannot be reached (``RuntimeUnavailable``)
is skipped where skipping is safe (listing, looking up a name another member holds) and noted in
:attr:`Runtimes.notes`; where it is not (a name no reachable member holds) its error is raised.

Example::

    rts = Runtimes({"local": LocalRuntime(home), "docker": lambda: DockerRuntime.connect()})
    rts.deployments()  # local ones even while dockerd is down; rts.notes says why Docker is missing
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar, cast

from llmdock.errors import InvalidSpec, NotFound, RuntimeUnavailable
from llmdock.hosts import split_member
from llmdock.planning.container import LABEL, ContainerConfig
from llmdock.runtimes.base import Deployment, Runtime
from llmdock.settings import Settings

Factory = Callable[[], Runtime]
RETRY_S = 5.0  # a member that could not be reached is tried again after this long (long-lived callers)
Member = Runtime | Factory
T = TypeVar("T")


class Runtimes:
    """A :class:`Runtime` over named members (``docker``, ``local``); lookups go in the given order."""

    def __init__(self, members: Mapping[str, Member], default: str = "docker") -> None:
        self._members = dict(members)
        self._ready: dict[str, Runtime] = {}
        self._errors: dict[str, RuntimeUnavailable] = {}
        self._failed_at: dict[str, float] = {}
        self.default = default if default in self._members else next(iter(self._members))
        self.notes: list[str] = []

    @property
    def kinds(self) -> list[str]:
        return list(self._members)

    def named(self, kind: str) -> Runtime:
        """The member ``kind``, connecting on first use; RuntimeUnavailable when it cannot be reached."""
        if kind in self._ready:
            return self._ready[kind]
        if kind in self._errors and time.monotonic() - self._failed_at[kind] < RETRY_S:
            raise self._errors[kind]
        if kind not in self._members:
            raise InvalidSpec(
                f"the {kind} runtime is not available here", "choose --runtime " + "|".join(self._members)
            )
        member = self._members[kind]
        try:
            rt = cast(Runtime, member) if hasattr(member, "deployments") else member()
        except RuntimeUnavailable as e:
            self._errors[kind], self._failed_at[kind] = e, time.monotonic()
            raise
        self._errors.pop(kind, None)
        self._ready[kind] = rt
        return rt

    def _note(self, kind: str, e: RuntimeUnavailable) -> None:
        _, host = split_member(kind)
        where = f"{kind} deployments" if host == "local" else f"deployments on host {host}"
        note = f"{where} not listed: {e.message}"
        if note not in self.notes:
            self.notes.append(note)

    def _each(self, fn: Callable[[Runtime], T]) -> list[tuple[str, T]]:
        """``fn`` on every reachable member, all at once (a slow or dead host never holds up the
        others); a member that cannot be reached or fails with RuntimeUnavailable is noted and left out."""

        def call(kind: str) -> tuple[str, T | RuntimeUnavailable]:
            try:
                return kind, fn(self.named(kind))
            except RuntimeUnavailable as e:
                return kind, e

        kinds = list(self._members)
        if len(kinds) <= 2:  # this host's runtimes only: no threads needed
            results = [call(k) for k in kinds]
        else:
            with ThreadPoolExecutor(len(kinds), thread_name_prefix="llmdock-host") as pool:
                results = list(pool.map(call, kinds))
        done: list[tuple[str, T]] = []
        for kind, result in results:
            if isinstance(result, RuntimeUnavailable):
                self._errors.setdefault(kind, result)
                self._failed_at.setdefault(kind, time.monotonic())
                self._note(kind, result)
            else:
                self._errors.pop(kind, None)
                done.append((kind, result))
        return done

    @staticmethod
    def _placed(kind: str, d: Deployment) -> Deployment:
        runtime, host = split_member(kind)
        return replace(d, runtime=runtime, host=host)

    def deployments(self) -> list[Deployment]:
        """Every reachable member's deployments; one that fails while listing (dockerd died after we
        connected, a host went away) is skipped with a note, so the others are still listed."""
        found: list[Deployment] = []
        for kind, deps in self._each(lambda rt: rt.deployments()):
            found += [self._placed(kind, d) for d in deps]
        return sorted(found, key=lambda d: (d.name, d.host))

    def get(self, name: str) -> Deployment | None:
        """The deployment ``name`` in any reachable member; None when none holds it."""
        for kind, dep in self._each(lambda rt: rt.get(name)):
            if dep is not None:
                return self._placed(kind, dep)
        return None

    def find(self, name: str) -> tuple[Runtime, Deployment]:
        """The member holding ``name`` and its deployment. When no reachable member holds it and one
        could not be reached, that member's error is raised: the deployment may well live there."""
        dep = self.get(name)
        if dep is not None:
            return self.named(dep.member), dep
        if self._errors:
            raise next(iter(self._errors.values()))
        raise NotFound(f"no deployment named {name!r}", "list deployments with `llmdock ps`")

    def create(self, cfg: ContainerConfig) -> Deployment:
        kind = cfg.labels.get(f"{LABEL}.runtime", "docker")
        return replace(self.named(kind).create(cfg), runtime=kind)

    def start(self, name: str) -> None:
        self.find(name)[0].start(name)

    def stop(self, name: str, timeout: float = 30) -> None:
        self.find(name)[0].stop(name, timeout=timeout)

    def remove(self, name: str, force: bool = False) -> None:
        self.find(name)[0].remove(name, force=force)

    def logs(self, name: str, *, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        return self.find(name)[0].logs(name, tail=tail, follow=follow)

    # Image questions belong to one runtime; asked of the composite they go to the default member.
    def image_id(self, image: str) -> str | None:
        return self.named(self.default).image_id(image)

    def has_gpu_runtime(self) -> bool:
        return self.named(self.default).has_gpu_runtime()

    def run_probe(self, image: str, argv: list[str]) -> str:
        return self.named(self.default).run_probe(image, argv)


def default_members(s: Settings) -> dict[str, Member]:
    """Both runtimes, local first: Docker is connected only when a command reaches it, so local
    deployments can be managed with dockerd stopped; then Docker on each host of `llmdock hosts ls`
    (``docker@NAME``), each reached over SSH only when a command asks it."""
    from llmdock.envs import Envs
    from llmdock.hosts.registry import registered_members
    from llmdock.runtimes.docker import DockerRuntime
    from llmdock.runtimes.local import LocalRuntime

    return {
        "local": LocalRuntime(s.local_dir, Envs(s.envs_dir)),
        "docker": lambda: DockerRuntime.connect(s.docker_host),
        **registered_members(s),
    }
