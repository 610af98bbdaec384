from __future__ import annotations

import sqlite3
from pathlib import Path

from llmdock.state import Store, migrate
from llmdock.state.migrations import MIGRATIONS
from llmdock.states import Event


def test_migrate_empty_db_creates_schema_once() -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    assert migrate(db) == [n for n, _ in MIGRATIONS]
    assert migrate(db) == []
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"_migrations", "deployments", "events", "engine_versions"} <= tables
    cols = [r[1] for r in db.execute("PRAGMA table_info(deployments)")]
    assert cols == ["name", "spec", "spec_hash", "runtime", "created_at", "updated_at"]


def test_migrations_are_numbered_in_order() -> None:
    numbers = [n for n, _ in MIGRATIONS]
    assert numbers == list(range(1, len(numbers) + 1))


def test_store_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.save_deployment("a", {"x": 1}, "h1")
    store.save_deployment("a", {"x": 2}, "h2")
    assert store.deployment("a") == {"spec": {"x": 2}, "spec_hash": "h2", "runtime": "docker"}
    store.record("a", Event.CREATED)
    store.record("a", Event.READY, "1.0s")
    assert [k for _, k, _ in store.events("a")] == ["created", "ready"]
    store.save_engine_version("sha256:1", "vllm", "0.7.2")
    assert store.engine_version("sha256:1", "vllm") == "0.7.2"
    assert store.engine_version("sha256:1", "sglang") is None
    store.delete_deployment("a")
    assert store.deployment("a") is None and store.deployment_names() == []
    store.close()
    assert Store(tmp_path / "s.db").engine_version("sha256:1", "vllm") == "0.7.2"  # persisted


def test_database_is_private_and_a_corrupt_one_is_a_clear_error(tmp_path: Path) -> None:
    import pytest

    from llmdock.errors import ConfigError

    Store(tmp_path / "home" / "s.db").close()
    assert (tmp_path / "home" / "s.db").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "home").stat().st_mode & 0o777 == 0o700
    (tmp_path / "bad.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError) as e:
        Store(tmp_path / "bad.db")
    assert "mv " in e.value.hint


def test_health_marks_for_ps(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.record("a", Event.READY)
    store.record("a", Event.UNHEALTHY, "stopped answering")
    store.record("b", Event.CRASHED)
    store.record("b", Event.RESTARTED)
    store.record("b", Event.STOPPED)  # not a health event: the mark stays
    store.record("c", Event.RESTARTED)
    store.record("c", Event.HEALTHY)
    assert store.health() == {"a": ("unhealthy", 0), "b": ("restarted", 1), "c": ("healthy", 1)}
