"""SQLite state: desired specs, history, engine-version cache. Docker stays the truth for what runs."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from llmdock.errors import ConfigError
from llmdock.state.migrations import MIGRATIONS
from llmdock.states import HEALTH, Event


def migrate(db: sqlite3.Connection) -> list[int]:
    """Apply every migration not yet recorded in ``_migrations``; return the ids applied now."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (id INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {row[0] for row in db.execute("SELECT id FROM _migrations")}
    applied = []
    for number, sql in MIGRATIONS:
        if number in done:
            continue
        with db:
            db.executescript(
                "BEGIN;" + sql + f"; INSERT INTO _migrations VALUES ({number}, {time.time()}); COMMIT;"
            )
        applied.append(number)
    return applied


class Store:
    """Small typed facade over the state database at ``path`` (created and migrated on open)."""

    def __init__(self, path: Path) -> None:
        from llmdock.settings import STATE_HINT, ensure_dir

        ensure_dir(path.parent, "the state directory", STATE_HINT, mode=0o700)
        try:
            path.touch(mode=0o600, exist_ok=True)  # it holds key hashes and usage: owner only
        except OSError as e:
            raise ConfigError(
                f"the state database {path} cannot be created: {e.strerror or e}", STATE_HINT
            ) from None
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA busy_timeout=30000")
            migrate(self.db)
        except sqlite3.DatabaseError as e:
            raise ConfigError(
                f"the state database {path} cannot be used: {e}",
                f"move it aside (`mv {path} {path}.broken`); running deployments are re-adopted from Docker",
            ) from e

    def close(self) -> None:
        self.db.close()

    def save_deployment(
        self, name: str, spec: dict[str, Any], spec_hash: str, runtime: str = "docker"
    ) -> None:
        now = time.time()
        self.db.execute(
            "INSERT INTO deployments(name, spec, spec_hash, runtime, created_at, updated_at) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET spec=excluded.spec, spec_hash=excluded.spec_hash, "
            "runtime=excluded.runtime, updated_at=excluded.updated_at",
            (name, json.dumps(spec, sort_keys=True), spec_hash, runtime, now, now),
        )

    def deployment(self, name: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT spec, spec_hash, runtime FROM deployments WHERE name=?", (name,)
        ).fetchone()
        if row is None:
            return None
        return {"spec": json.loads(row[0]), "spec_hash": row[1], "runtime": row[2]}

    def deployment_names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM deployments ORDER BY name")]

    def delete_deployment(self, name: str) -> None:
        self.db.execute("DELETE FROM deployments WHERE name=?", (name,))

    def record(self, name: str, kind: Event, detail: str = "") -> None:
        self.db.execute(
            "INSERT INTO events(name, at, kind, detail) VALUES (?,?,?,?)",
            (name, time.time(), kind.value, detail),
        )

    def events(self, name: str, limit: int = 20) -> list[tuple[float, str, str]]:
        rows = self.db.execute(
            "SELECT at, kind, detail FROM events WHERE name=? ORDER BY id DESC LIMIT ?", (name, limit)
        ).fetchall()
        return [(float(a), str(k), str(d)) for a, k, d in reversed(rows)]

    def health(self, kinds: tuple[Event, ...] = HEALTH) -> dict[str, tuple[str, int]]:
        """Per deployment: the latest supervision event (``unhealthy``, ``healthy``, ``restarted``…)
        recorded by ``llmdock serve``, and how many restarts it made. For ``ps``."""
        marks = ",".join("?" * len(kinds))
        rows = self.db.execute(
            f"SELECT name, kind, (SELECT COUNT(*) FROM events r WHERE r.name = e.name AND r.kind = 'restarted') "
            f"FROM events e WHERE id IN (SELECT MAX(id) FROM events WHERE kind IN ({marks}) GROUP BY name)",
            [k.value for k in kinds],
        ).fetchall()
        return {str(n): (str(k), int(c)) for n, k, c in rows}

    def engine_version(self, image_id: str, engine: str) -> str | None:
        row = self.db.execute(
            "SELECT version FROM engine_versions WHERE image_id=? AND engine=?", (image_id, engine)
        ).fetchone()
        return None if row is None else str(row[0])

    def save_engine_version(self, image_id: str, engine: str, version: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO engine_versions(image_id, engine, version, probed_at) VALUES (?,?,?,?)",
            (image_id, engine, version, time.time()),
        )
