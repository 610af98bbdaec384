"""API keys: generation, hashing, constant-time checks, model allow-lists and rate limits. Pure.

A key is ``sk-llmdock-`` plus 32 random bytes (URL-safe base64). Only its SHA-256 is stored: with that
much entropy a fast hash is enough (no salt or KDF needed), and a leaked database reveals no key.
Lookup is by hash; the matching record's hash is then compared with :func:`hmac.compare_digest` so
the final decision does not depend on how many leading bytes match.

Example::

    key, digest = generate()
    auth = Authenticator([KeyRecord("ci", digest, models=("qwen",), rpm=60)])
    record = auth.check("Bearer " + key)        # -> the "ci" record
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from llmdock.gateway.wire import Forbidden, RateLimited, Unauthorized

PREFIX = "sk-llmdock-"


def generate() -> tuple[str, str]:
    """A new key and the hex SHA-256 that is stored instead of it."""
    key = PREFIX + secrets.token_urlsafe(32)
    return key, digest(key)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    name: str
    hash: str
    models: tuple[str, ...] = ()  # empty: every model
    rpm: int | None = None
    admin: bool = False

    def allows(self, route_names: Iterable[str]) -> bool:
        return not self.models or any(n in self.models for n in route_names)


ANONYMOUS = KeyRecord("-", "", admin=True)


@dataclass
class Bucket:
    """Token bucket holding up to ``rpm`` requests, refilled at ``rpm / 60`` per second."""

    rpm: int
    tokens: float
    at: float

    def take(self, now: float) -> float:
        """0 when a request may go now, else the seconds until one may."""
        self.tokens = min(float(self.rpm), self.tokens + (now - self.at) * self.rpm / 60.0)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) * 60.0 / self.rpm


@dataclass
class Authenticator:
    """Checks ``Authorization`` headers against the known keys; open when no key exists."""

    records: Iterable[KeyRecord] = ()
    clock: Callable[[], float] = time.monotonic
    # Beyond loopback without --insecure: a key is always required, even after the last one is
    # revoked (then every request is refused rather than the gateway falling open).
    require_key: bool = False
    by_hash: dict[str, KeyRecord] = field(init=False, default_factory=dict)
    buckets: dict[str, Bucket] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.replace(self.records)

    def replace(self, records: Iterable[KeyRecord]) -> None:
        self.by_hash = {r.hash: r for r in records}
        self.buckets = {n: b for n, b in self.buckets.items() if n in {r.name for r in self.by_hash.values()}}

    @property
    def open(self) -> bool:
        """No key configured: every request is let through as the anonymous admin."""
        return not self.by_hash

    def check(self, header: str | None) -> KeyRecord:
        if not self.by_hash:
            if self.require_key:
                raise Unauthorized(
                    "no API key is configured and this gateway listens beyond loopback: "
                    "create one with `llmdock keys create NAME`"
                )
            return ANONYMOUS
        if not header:
            raise Unauthorized("missing API key: send `Authorization: Bearer sk-llmdock-...`")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized("the Authorization header must be `Bearer KEY`")
        h = digest(key.strip())
        record = self.by_hash.get(h)
        if record is None or not hmac.compare_digest(record.hash, h):
            raise Unauthorized("invalid API key (unknown or revoked); create one with `llmdock keys create`")
        return record

    def authorize(self, record: KeyRecord, model: str, route_names: Iterable[str]) -> None:
        """403 when the key may not use the model, 429 when it is over its rate."""
        if not record.allows(route_names):
            raise Forbidden(f"this key may not use model {model!r}", param="model")
        if record.rpm is not None:
            now = self.clock()
            bucket = self.buckets.get(record.name)
            if bucket is None:
                bucket = self.buckets[record.name] = Bucket(record.rpm, float(record.rpm), now)
            wait = bucket.take(now)
            if wait:
                raise RateLimited(
                    f"rate limit of {record.rpm} requests per minute reached; retry in {wait:.1f}s"
                )

    def admin(self, header: str | None) -> KeyRecord:
        record = self.check(header)
        if not record.admin:
            raise Forbidden("this endpoint needs an admin key (`llmdock keys create NAME --admin`)")
        return record
