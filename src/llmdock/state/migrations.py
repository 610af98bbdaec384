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
    (
        2,
        """
        CREATE TABLE api_keys (
            name TEXT PRIMARY KEY,
            hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            models TEXT NOT NULL DEFAULT '',
            rpm INTEGER,
            admin INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            revoked_at REAL
        );
        CREATE TABLE usage (
            key_name TEXT NOT NULL,
            model TEXT NOT NULL,
            minute INTEGER NOT NULL,
            requests INTEGER NOT NULL DEFAULT 0,
            errors INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (key_name, model, minute)
        );
        CREATE TABLE gateway_policies (
            name TEXT PRIMARY KEY,
            on_demand INTEGER NOT NULL DEFAULT 0,
            idle_stop_s REAL
        );
        """,
    ),
    (
        3,
        """
        ALTER TABLE api_keys ADD COLUMN tokens_per_day INTEGER;
        ALTER TABLE api_keys ADD COLUMN tokens_per_month INTEGER;
        ALTER TABLE api_keys ADD COLUMN tpm INTEGER;
        ALTER TABLE api_keys ADD COLUMN max_concurrent INTEGER;
        ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT 'api';
        CREATE INDEX usage_by_minute ON usage(minute);
        """,
    ),
    (
        4,
        """
        CREATE TABLE hosts (
            name TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            identity TEXT NOT NULL DEFAULT '',
            docker_socket TEXT NOT NULL,
            models_dir TEXT NOT NULL DEFAULT '',
            probe_image TEXT NOT NULL DEFAULT '',
            fingerprint TEXT NOT NULL DEFAULT '',
            added_at REAL NOT NULL
        );
        CREATE TABLE host_facts (
            name TEXT PRIMARY KEY,
            facts TEXT NOT NULL,
            read_at REAL NOT NULL
        );
        """,
    ),
]
