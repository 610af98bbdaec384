"""Numbered, append-only schema migrations. Never edit one that has shipped: add the next."""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE deployments (
            name TEXT PRIMARY KEY,
            spec TEXT NOT NULL,
            spec_hash TEXT NOT NULL,
            runtime TEXT NOT NULL DEFAULT 'docker',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX events_by_name ON events(name, at);
        CREATE TABLE engine_versions (
            image_id TEXT NOT NULL,
            engine TEXT NOT NULL,
            version TEXT NOT NULL,
            probed_at REAL NOT NULL,
            PRIMARY KEY (image_id, engine)
        );
        """,
    ),
]
