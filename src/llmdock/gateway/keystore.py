"""Keys, usage and gateway policies in the state database (tables of migration 2).

Takes an open :class:`llmdock.state.Store` (so it shares its connection, WAL mode and migrations).
Usage is kept per key, model and minute; the gateway adds to it in batches about once a second. The
day's and month's tokens per key (:meth:`KeyStore.token_totals`) are summed from it when the gateway
starts, so a key's token quotas hold across restarts.

Example::

    ks = KeyStore(store)
    key = ks.create("ci", models=("qwen",), quota=Quota(rpm=60))   # shown once; only its hash is kept
    ks.add_usage({("ci", "qwen", 29000000): Usage(requests=1, prompt_tokens=5, completion_tokens=7)})
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmdock.errors import Conflict, InvalidSpec, NotFound
from llmdock.gateway.keys import SCOPES, KeyRecord, generate
from llmdock.gateway.quotas import NO_QUOTA, Quota, check_quota, day_start, month_start
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
    quota: Quota
    admin: bool
    created_at: float
    revoked_at: float | None
    scopes: tuple[str, ...] = ("api",)

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if k != "quota"}
        data.update(models=list(self.models), scopes=list(self.scopes), **self.quota.as_dict())
        return data


QUOTA_COLUMNS = ", ".join(Quota.names())
KEY_COLUMNS = f"name, prefix, models, {QUOTA_COLUMNS}, admin, created_at, revoked_at, scopes"


def _split(text: str) -> tuple[str, ...]:
    return tuple(m for m in text.split(",") if m)


def check_scopes(scopes: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise InvalidSpec(
            f"scope {','.join(unknown) or '(none)'} is not known",
            f"give one or more of {', '.join(SCOPES)} (e.g. --scope metrics for a Prometheus scraper)",
        )
    return tuple(dict.fromkeys(scopes))


def checked_quota(values: dict[str, Any]) -> Quota:
    try:
        return check_quota(values)
    except ValueError as e:
        raise InvalidSpec(
            str(e), "give e.g. --rpm 60 --tokens-per-day 1000000; leave one out for no limit"
        ) from None


class KeyStore:
    def __init__(self, store: Store) -> None:
        self.db = store.db

    # ---- keys -------------------------------------------------------------------------------------
    def create(
        self,
        name: str,
        *,
        models: tuple[str, ...] = (),
        quota: Quota = NO_QUOTA,
        admin: bool = False,
        scopes: tuple[str, ...] = ("api",),
    ) -> str:
        """Store a new key's hash and return the key itself (the only time it is seen)."""
        if not NAME_RE.match(name):
            raise InvalidSpec(f"key name {name!r} is not allowed", "use letters, digits, '.', '_' and '-'")
        quota = checked_quota(quota.as_dict())
        scopes = check_scopes(scopes)
        key, digest = generate()
        exists = self.db.execute("SELECT 1 FROM api_keys WHERE name=?", (name,)).fetchone()
        if exists:
            raise Conflict(f"a key named {name!r} already exists", "revoke it first or choose another name")
        self.db.execute(
            f"INSERT INTO api_keys(name, hash, prefix, models, {QUOTA_COLUMNS}, admin, created_at, scopes) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                name,
                digest,
                key[:15],
                ",".join(models),
                *quota.as_dict().values(),
                int(admin),
                time.time(),
                ",".join(scopes),
            ),
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
            f"SELECT {KEY_COLUMNS} FROM api_keys "
            + ("" if include_revoked else "WHERE revoked_at IS NULL ")
            + "ORDER BY created_at"
        ).fetchall()
        return [
            KeyInfo(n, p, _split(ms), Quota(*q), bool(a), float(c), r, _split(sc))
            for n, p, ms, *q, a, c, r, sc in rows
        ]

    def get(self, name: str) -> KeyInfo:
        found = [k for k in self.list_keys() if k.name == name]
        if not found:
            raise NotFound(f"no active key named {name!r}", "list keys with `llmdock keys ls`")
        return found[0]

    def active(self) -> list[KeyRecord]:
        rows = self.db.execute(
            f"SELECT name, hash, models, {QUOTA_COLUMNS}, admin, scopes FROM api_keys WHERE revoked_at IS NULL"
        ).fetchall()
        return [KeyRecord(n, h, _split(ms), Quota(*q), bool(a), _split(sc)) for n, h, ms, *q, a, sc in rows]

    def set_quota(self, name: str, changes: dict[str, int | None]) -> KeyInfo:
        """Change some of a key's limits in place (None removes that limit); the others stay."""
        unknown = set(changes) - set(Quota.names())
        if unknown:
            raise InvalidSpec(f"unknown limit {', '.join(sorted(unknown))}", f"limits: {QUOTA_COLUMNS}")
        merged = checked_quota({**self.get(name).quota.as_dict(), **changes})
        sets = ", ".join(f"{n}=?" for n in Quota.names())
        self.db.execute(
            f"UPDATE api_keys SET {sets} WHERE name=? AND revoked_at IS NULL",
            (*merged.as_dict().values(), name),
        )
        return self.get(name)

    def token_totals(self, now: float) -> dict[str, tuple[int, int]]:
        """Tokens per key in the UTC day and the UTC month of ``now``: what quotas start from."""
        day, month = int(day_start(now) // 60), int(month_start(now) // 60)
        rows = self.db.execute(
            "SELECT key_name, SUM(CASE WHEN minute >= ? THEN prompt_tokens + completion_tokens ELSE 0 END), "
            "SUM(prompt_tokens + completion_tokens) FROM usage WHERE minute >= ? GROUP BY key_name",
            (day, month),
        ).fetchall()
        return {str(k): (int(d), int(m)) for k, d, m in rows}

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
    if not 0 < value < math.inf:  # also refuses nan and inf
        raise InvalidSpec(f"duration {text!r} must be positive", "write it like 90s, 15m, 2h or 1d")
    return value * (scale or 1)


def update_key(
    keystore: KeyStore,
    name: str,
    *,
    models: tuple[str, ...] = (),
    quota: Quota = NO_QUOTA,
    admin: bool = False,
    scopes: tuple[str, ...] = ("api",),
) -> None:
    """Change an active key's scope and limits in place; its secret stays (``llmdock apply``)."""
    quota = checked_quota(quota.as_dict())
    sets = ", ".join(f"{n}=?" for n in Quota.names())
    cur = keystore.db.execute(
        f"UPDATE api_keys SET models=?, {sets}, admin=?, scopes=? WHERE name=? AND revoked_at IS NULL",
        (",".join(models), *quota.as_dict().values(), int(admin), ",".join(check_scopes(scopes)), name),
    )
    if cur.rowcount == 0:
        raise NotFound(f"no active key named {name!r}", "list keys with `llmdock keys ls`")
