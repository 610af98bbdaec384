"""Hosts in the state database (migration 3), each with its known_hosts file, and a facts cache.

Facts (GPUs, ports, RAM, disk) are read through a probe container, which takes a second or two over
SSH; they are cached in the database for :data:`FACTS_TTL_S`, so ``plan`` then ``up``, or ``hosts ls``
after ``up``, read a host once. What changes in between (a port taken there since) is met by the
engine itself, which then fails to start and says so.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from llmdock.errors import Conflict, NotFound
from llmdock.hosts import Host, check_name
from llmdock.hosts.facts import HostFacts
from llmdock.state import Store

if TYPE_CHECKING:
    from llmdock.runtimes.multi import Member
    from llmdock.settings import Settings

FACTS_TTL_S = 15.0


def hosts_dir(s: Settings) -> Path:
    return s.home / "hosts"


def registry(s: Settings) -> HostRegistry:
    return HostRegistry(Store(s.db_path), hosts_dir(s))


def registered_members(s: Settings) -> dict[str, Member]:
    """A ``docker@NAME`` runtime per registered host (none, and no database created, when there is
    no state database yet)."""
    if not s.db_path.exists():
        return {}
    from llmdock.hosts.remote import remote_members

    reg = registry(s)
    try:
        hosts = reg.list()
    finally:
        reg.store.close()
    return dict(remote_members(hosts, hosts_dir(s)))


class HostRegistry:
    """``hosts add/ls/rm`` over the store; ``dir`` holds one folder per host (its known_hosts)."""

    def __init__(self, store: Store, dir: Path) -> None:
        self.store = store
        self.dir = dir

    def known_hosts(self, name: str) -> Path:
        return self.dir / check_name(name) / "known_hosts"

    def list(self) -> list[Host]:
        rows = self.store.db.execute(
            "SELECT name, url, identity, docker_socket, models_dir, probe_image, fingerprint "
            "FROM hosts ORDER BY name"
        ).fetchall()
        return [Host(*map(str, row)) for row in rows]

    def get(self, name: str) -> Host:
        for host in self.list():
            if host.name == name:
                return host
        known = ", ".join(["local", *(h.name for h in self.list())])
        raise NotFound(
            f"no host named {name!r} (known: {known})", "add it with `llmdock hosts add NAME ssh://USER@HOST`"
        )

    def add(self, host: Host) -> None:
        if any(h.name == host.name for h in self.list()):
            raise Conflict(
                f"a host named {host.name!r} exists",
                f"remove it first (`llmdock hosts rm {host.name}`) or pick another name",
            )
        self.store.db.execute(
            "INSERT INTO hosts(name, url, identity, docker_socket, models_dir, probe_image, fingerprint, added_at) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (host.name, host.url, host.identity, host.docker_socket, host.models_dir, host.probe_image,
             host.fingerprint, time.time()),
        )  # fmt: skip

    def remove(self, name: str) -> None:
        self.get(name)
        self.store.db.execute("DELETE FROM hosts WHERE name=?", (name,))
        self.store.db.execute("DELETE FROM host_facts WHERE name=?", (name,))
        shutil.rmtree(self.dir / name, ignore_errors=True)

    # ---- facts cache ---------------------------------------------------------------------------
    def cached_facts(self, name: str, ttl: float = FACTS_TTL_S) -> HostFacts | None:
        row = self.store.db.execute("SELECT facts, read_at FROM host_facts WHERE name=?", (name,)).fetchone()
        if row is None or time.time() - float(row[1]) > ttl:
            return None
        return HostFacts.from_dict(json.loads(row[0]))

    def save_facts(self, name: str, facts: HostFacts) -> None:
        self.store.db.execute(
            "INSERT OR REPLACE INTO host_facts(name, facts, read_at) VALUES (?,?,?)",
            (name, json.dumps(facts.to_dict()), facts.read_at),
        )
