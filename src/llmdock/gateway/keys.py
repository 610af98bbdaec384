"""API keys: generation, hashing, constant-time checks, model allow-lists and scopes. Pure.

A key is ``sk-llmdock-`` plus 32 random bytes (URL-safe base64). Only its SHA-256 is stored: with that
much entropy a fast hash is enough (no salt or KDF needed), and a leaked database reveals no key.
Lookup is by hash; the matching record's hash is then compared with :func:`hmac.compare_digest` so
the final decision does not depend on how many leading bytes match.

Example::

    key, digest = generate()
    auth = Authenticator([KeyRecord("ci", digest, models=("qwen",), quota=Quota(rpm=60))])
    record = auth.check("Bearer " + key)        # -> the "ci" record
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from llmdock.gateway.quotas import NO_QUOTA, Quota
from llmdock.gateway.wire import Forbidden, Unauthorized

PREFIX = "sk-llmdock-"


def generate() -> tuple[str, str]:
    """A new key and the hex SHA-256 that is stored instead of it."""
    key = PREFIX + secrets.token_urlsafe(32)
    return key, digest(key)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


SCOPES = ("api", "metrics")  # /v1/* as the key's models allow; GET /metrics. Admin keys may use both.


@dataclass(frozen=True)
class KeyRecord:
    name: str
    hash: str
    models: tuple[str, ...] = ()  # empty: every model
    quota: Quota = NO_QUOTA
    admin: bool = False
    scopes: tuple[str, ...] = ("api",)

    def allows(self, route_names: Iterable[str]) -> bool:
        return not self.models or any(n in self.models for n in route_names)

    def may(self, scope: str) -> bool:
        return self.admin or scope in self.scopes


ANONYMOUS = KeyRecord("-", "", admin=True)


@dataclass
class Authenticator:
    """Checks ``Authorization`` headers against the known keys; open when no key exists."""

    records: Iterable[KeyRecord] = ()
    # Beyond loopback without --insecure: a key is always required, even after the last one is
    # revoked (then every request is refused rather than the gateway falling open).
    require_key: bool = False
    by_hash: dict[str, KeyRecord] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.replace(self.records)

    def replace(self, records: Iterable[KeyRecord]) -> None:
        self.by_hash = {r.hash: r for r in records}

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

    def api(self, header: str | None) -> KeyRecord:
        """A key that may use ``/v1/*`` (not one made for ``/metrics`` only)."""
        record = self.check(header)
        if not record.may("api"):
            raise Forbidden(
                f"key {record.name!r} is scoped to {','.join(record.scopes)} and may not use /v1; "
                "create one for the API with `llmdock keys create NAME`"
            )
        return record

    def authorize(self, record: KeyRecord, model: str, route_names: Iterable[str]) -> None:
        """403 when the key may not use the model (its quotas are :mod:`llmdock.gateway.quotas`')."""
        if not record.allows(route_names):
            raise Forbidden(f"this key may not use model {model!r}", param="model")

    def admin(self, header: str | None) -> KeyRecord:
        record = self.check(header)
        if not record.admin:
            raise Forbidden("this endpoint needs an admin key (`llmdock keys create NAME --admin`)")
        return record

    def metrics(self, header: str | None) -> KeyRecord:
        record = self.check(header)
        if not record.may("metrics"):
            raise Forbidden(
                "/metrics names every key and model: it needs an admin key or a metrics-scoped one "
                "(`llmdock keys create prom --scope metrics`)"
            )
        return record
