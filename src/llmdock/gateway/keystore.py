"""Keys, usage and gateway policies in the state database (tables of migration 2).

Takes an open :class:`llmdock.state.Store` (so it shares its connection, WAL mode and migrations).
Usage is kept per key, model and minute; the gateway adds to it in batches about once a second.

Example::

    ks = KeyStore(store)
    key = ks.create("ci", models=("qwen",), rpm=60)    # shown once; only its hash is kept
    ks.add_usage({("ci", "qwen", 29000000): Usage(requests=1, prompt_tokens=5, completion_tokens=7)})
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from llmdock.errors import Conflict, InvalidSpec, NotFound
from llmdock.gateway.keys import KeyRecord, generate
from llmdock.gateway.routing import Policy
from llmdock.spec import NAME_RE
from llmdock.state import Store


@dataclass
class Usage:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class KeyInfo:
    name: str
    prefix: str
    models: tuple[str, ...]
    rpm: int | None
    admin: bool
    created_at: float
    revoked_at: float | None


class KeyStore:
    def __init__(self, store: Store) -> None:
        self.db = store.db

    # ---- keys -------------------------------------------------------------------------------------
    def create(
        self, name: str, *, models: tuple[str, ...] = (), rpm: int | None = None, admin: bool = False
    ) -> str:
        """Store a new key's hash and return the key itself (the only time it is seen)."""
        if not NAME_RE.match(name):
            raise InvalidSpec(f"key name {name!r} is not allowed", "use letters, digits, '.', '_' and '-'")
        if rpm is not None and rpm < 1:
            raise InvalidSpec("--rpm must be at least 1", "give e.g. --rpm 60, or leave it out for no limit")
        key, digest = generate()
        exists = self.db.execute("SELECT 1 FROM api_keys WHERE name=?", (name,)).fetchone()
        if exists:
            raise Conflict(f"a key named {name!r} already exists", "revoke it first or choose another name")
        self.db.execute(
            "INSERT INTO api_keys(name, hash, prefix, models, rpm, admin, created_at) VALUES (?,?,?,?,?,?,?)",
            (name, digest, key[:15], ",".join(models), rpm, int(admin), time.time()),
        )
        return key

    def revoke(self, name: str) -> None:
        cur = self.db.execute(
            "UPDATE api_keys SET revoked_at=? WHERE name=? AND revoked_at IS NULL", (time.time(), name)
        )
        if cur.rowcount == 0:
            raise NotFound(f"no active key named {name!r}", "list keys with `llmdock keys ls`")

    def list_keys(self, include_revoked: bool = False) -> list[KeyInfo]:
        rows = self.db.execute(
            "SELECT name, prefix, models, rpm, admin, created_at, revoked_at FROM api_keys "
            + ("" if include_revoked else "WHERE revoked_at IS NULL ")
            + "ORDER BY created_at"
        ).fetchall()
        return [
            KeyInfo(n, p, tuple(m for m in ms.split(",") if m), rpm, bool(a), float(c), r)
            for n, p, ms, rpm, a, c, r in rows
        ]

    def active(self) -> list[KeyRecord]:
        rows = self.db.execute(
            "SELECT name, hash, models, rpm, admin FROM api_keys WHERE revoked_at IS NULL"
        ).fetchall()
        return [
            KeyRecord(n, h, tuple(m for m in ms.split(",") if m), rpm, bool(a)) for n, h, ms, rpm, a in rows
        ]

    # ---- usage ------------------------------------------------------------------------------------
    def add_usage(self, batch: Mapping[tuple[str, str, int], Usage]) -> None:
        if not batch:
            return
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO usage(key_name, model, minute, requests, errors, prompt_tokens, completion_tokens) "
                "VALUES (?,?,?,?,?,?,?) ON CONFLICT(key_name, model, minute) DO UPDATE SET "
                "requests=requests+excluded.requests, errors=errors+excluded.errors, "
                "prompt_tokens=prompt_tokens+excluded.prompt_tokens, "
                "completion_tokens=completion_tokens+excluded.completion_tokens",
                [
                    (k, m, minute, u.requests, u.errors, u.prompt_tokens, u.completion_tokens)
                    for (k, m, minute), u in batch.items()
                ],
            )

    def usage(self, since: float = 0.0) -> list[tuple[str, str, Usage]]:
        """Totals per (key, model) from ``since`` (epoch seconds) on."""
        rows = self.db.execute(
            "SELECT key_name, model, SUM(requests), SUM(errors), SUM(prompt_tokens), SUM(completion_tokens) "
            "FROM usage WHERE minute >= ? GROUP BY key_name, model ORDER BY key_name, model",
            (int(since // 60),),
        ).fetchall()
        return [(k, m, Usage(int(r), int(e), int(p), int(c))) for k, m, r, e, p, c in rows]

    # ---- policies ---------------------------------------------------------------------------------
    def set_policy(self, name: str, policy: Policy) -> None:
        if policy == Policy():
            self.db.execute("DELETE FROM gateway_policies WHERE name=?", (name,))
            return
        self.db.execute(
            "INSERT OR REPLACE INTO gateway_policies(name, on_demand, idle_stop_s) VALUES (?,?,?)",
            (name, int(policy.on_demand), policy.idle_stop_s),
        )

    def policies(self) -> dict[str, Policy]:
        rows = self.db.execute("SELECT name, on_demand, idle_stop_s FROM gateway_policies").fetchall()
        return {n: Policy(bool(od), idle) for n, od, idle in rows}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    scale = units.get(t[-1:], 0)
    try:
        value = float(t[:-1] if scale else t)
    except ValueError:
        raise InvalidSpec(
            f"duration {text!r} is not understood", "write it like 90s, 15m, 2h or 1d"
        ) from None
    if value <= 0:
        raise InvalidSpec(f"duration {text!r} must be positive", "write it like 90s, 15m, 2h or 1d")
    return value * (scale or 1)


def update_key(
    keystore: KeyStore,
    name: str,
    *,
    models: tuple[str, ...] = (),
    rpm: int | None = None,
    admin: bool = False,
) -> None:
    """Change an active key's scope and limits in place; its secret stays (``llmdock apply``)."""
    if rpm is not None and rpm < 1:
        raise InvalidSpec("rpm must be at least 1", "give e.g. rpm: 60, or leave it out for no limit")
    cur = keystore.db.execute(
        "UPDATE api_keys SET models=?, rpm=?, admin=? WHERE name=? AND revoked_at IS NULL",
        (",".join(models), rpm, int(admin), name),
    )
    if cur.rowcount == 0:
        raise NotFound(f"no active key named {name!r}", "list keys with `llmdock keys ls`")
