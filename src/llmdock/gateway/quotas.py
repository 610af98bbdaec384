"""Per-key quotas: tokens per UTC day and month, requests and tokens per minute, requests at once. Pure.

=====================  ==================================================================================
limit                  window, and when a refused key may go again (``Retry-After``)
=====================  ==================================================================================
``tokens_per_day``     the calendar day in UTC (00:00 to 00:00); frees at the next 00:00 UTC
``tokens_per_month``   the calendar month in UTC (the 1st, 00:00); frees on the 1st of the next month
``rpm``                sliding 60 s, counted in one-second slots; frees when the oldest request in the
                       window is 60 s old (a new request is let in while fewer than ``rpm`` were made)
``tpm``                sliding 60 s like ``rpm``, over the tokens of the requests that ended in it
``max_concurrent``     requests of this key in flight now; ``Retry-After: 1`` (one ends at any moment)
=====================  ==================================================================================

Tokens are the engine's own figures (``usage.prompt_tokens + completion_tokens`` of the answer, or of a
stream's last event), counted when a request ends. So a key is let in while it is under a token limit
and its last request may take it over: by at most what its requests in flight use, which
``max_concurrent`` bounds.

The day and month totals survive a restart: they are the sums of the ``usage`` table (per key, model and
minute; the gateway writes it once a second, and on shutdown), read back when the gateway starts. A
gateway killed outright (SIGKILL, power loss) loses at most the last second of usage (longer only while
another writer holds the database locked: the batch is kept and retried); SIGTERM/SIGINT lose nothing.
The minute windows and the count in flight start empty after a restart. Counting happens in the
gateway process: two gateways on one state database each count their own requests since they started
(on top of what the database held then).

Checks cost a few dict and deque operations on the event loop thread; nothing here touches SQLite.

Example::

    book = Quotas(clock=lambda: 0.0)
    q = Quota(rpm=1)
    book.admit("ci", q)        # ok
    book.done("ci", 12)
    book.admit("ci", q)        # QuotaExceeded: rpm, retry_after=60
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone

from llmdock.gateway.wire import RateLimited

WINDOW_S = 60


@dataclass(frozen=True)
class Quota:
    """A key's limits; None: no limit."""

    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def as_dict(self) -> dict[str, int | None]:
        return {n: getattr(self, n) for n in self.names()}


NO_QUOTA = Quota()

# What each limit is called in messages, and the flag that changes it.
LABELS = {
    "tokens_per_day": ("tokens per day (UTC)", "--tokens-per-day"),
    "tokens_per_month": ("tokens per month (UTC)", "--tokens-per-month"),
    "rpm": ("requests per minute", "--rpm"),
    "tpm": ("tokens per minute", "--tpm"),
    "max_concurrent": ("requests at once", "--max-concurrent"),
}


class QuotaExceeded(RateLimited):
    code = "quota_exceeded"

    def __init__(self, message: str, limit: str, retry_after: float) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after = retry_after


def check_quota(values: Mapping[str, object]) -> Quota:
    """A Quota from ``name -> value`` (None or a whole number >= 1); ValueError saying which is wrong."""
    out: dict[str, int | None] = {}
    for name in Quota.names():
        value = values.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a whole number of at least 1 (or absent for no limit)")
        out[name] = value
    return Quota(**out)


# ---- calendar windows (UTC) ---------------------------------------------------------------------------
def day_of(now: float) -> int:
    """The UTC day ``now`` falls in, as days since the epoch."""
    return int(now // 86400)


def day_start(now: float) -> float:
    return day_of(now) * 86400.0


def month_of(now: float) -> int:
    """The UTC month ``now`` falls in, as ``year * 12 + month - 1``."""
    t = datetime.fromtimestamp(now, timezone.utc)
    return t.year * 12 + t.month - 1


def month_start(now: float) -> float:
    t = datetime.fromtimestamp(now, timezone.utc)
    return datetime(t.year, t.month, 1, tzinfo=timezone.utc).timestamp()


def next_month_start(now: float) -> float:
    m = month_of(now) + 1
    return datetime(m // 12, m % 12 + 1, 1, tzinfo=timezone.utc).timestamp()


# ---- the sliding minute -------------------------------------------------------------------------------
class MinuteWindow:
    """Counts over the last 60 s in one-second slots: an amount added at second ``s`` leaves the window
    at ``s + 60``."""

    __slots__ = ("slots", "total")

    def __init__(self) -> None:
        self.slots: deque[list[int]] = deque()  # [second, amount], oldest first
        self.total = 0

    def expire(self, now: float) -> None:
        cut = int(now) - WINDOW_S
        while self.slots and self.slots[0][0] <= cut:
            self.total -= self.slots.popleft()[1]

    def add(self, now: float, amount: int) -> None:
        second = int(now)
        if self.slots and self.slots[-1][0] == second:
            self.slots[-1][1] += amount
        else:
            self.slots.append([second, amount])
        self.total += amount

    def frees_in(self, now: float, limit: int) -> float:
        """Seconds until the window holds less than ``limit`` (0 when it does now)."""
        self.expire(now)
        running = self.total
        for second, amount in self.slots:
            if running < limit:
                break
            running -= amount
            frees_at = second + WINDOW_S
            if running < limit:
                return max(0.0, frees_at - now)
        return 0.0


# ---- one key's counters, and the book of all keys -----------------------------------------------------
@dataclass
class KeyCounters:
    day: int = 0
    day_tokens: int = 0
    month: int = 0
    month_tokens: int = 0
    requests: MinuteWindow = field(default_factory=MinuteWindow)
    tokens: MinuteWindow = field(default_factory=MinuteWindow)
    in_flight: int = 0

    def roll(self, now: float) -> None:
        """Start a new day or month at its UTC boundary (months begin with a day: checked only then)."""
        if day_of(now) != self.day:
            self.day, self.day_tokens = day_of(now), 0
            if month_of(now) != self.month:
                self.month, self.month_tokens = month_of(now), 0


def refusal(name: str, quota: Quota, c: KeyCounters, now: float) -> QuotaExceeded | None:
    """Why key ``name`` may not start a request now (the first limit it is at), or None. Pure but for
    expiring old slots of ``c``'s minute windows."""
    c.roll(now)
    wait: float | None = None
    limit = ""
    if quota.max_concurrent is not None and c.in_flight >= quota.max_concurrent:
        limit, wait = "max_concurrent", 1.0
    elif quota.tokens_per_day is not None and c.day_tokens >= quota.tokens_per_day:
        limit, wait = "tokens_per_day", (c.day + 1) * 86400.0 - now
    elif quota.tokens_per_month is not None and c.month_tokens >= quota.tokens_per_month:
        limit, wait = "tokens_per_month", next_month_start(now) - now
    elif quota.rpm is not None and (w := c.requests.frees_in(now, quota.rpm)) > 0:
        limit, wait = "rpm", w
    elif quota.tpm is not None and (w := c.tokens.frees_in(now, quota.tpm)) > 0:
        limit, wait = "tpm", w
    if wait is None:
        return None
    retry = max(1, math.ceil(wait))
    value = getattr(quota, limit)
    label, flag = LABELS[limit]
    used = {
        "max_concurrent": f"has {c.in_flight} in flight",
        "tokens_per_day": f"used {c.day_tokens} today",
        "tokens_per_month": f"used {c.month_tokens} this month",
        "rpm": f"made {c.requests.total} in the last 60 s",
        "tpm": f"used {c.tokens.total} in the last 60 s",
    }[limit]
    return QuotaExceeded(
        f"key {name!r} is at its limit of {value} {label} ({used}); retry in {_span(retry)}, or ask an "
        f"admin to raise it: `llmdock keys quota {name} {flag} N`",
        limit,
        float(retry),
    )


def _span(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Quotas:
    """Every key's counters, on the event loop thread. :meth:`admit` before a request goes to an engine,
    :meth:`done` when it ended (exactly once per admitted request)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.keys: dict[str, KeyCounters] = {}

    def counters(self, name: str) -> KeyCounters:
        c = self.keys.get(name)
        if c is None:
            now = self.clock()
            c = self.keys[name] = KeyCounters(day_of(now), 0, month_of(now), 0)
        return c

    def seed(self, totals: Mapping[str, tuple[int, int]]) -> None:
        """Today's and this month's tokens per key, as the state database has them (at start)."""
        for name, (today, month) in totals.items():
            c = self.counters(name)
            c.day_tokens, c.month_tokens = today, month

    def admit(self, name: str, quota: Quota) -> None:
        """Count a request in, or raise :class:`QuotaExceeded` (429) naming the limit and Retry-After."""
        c = self.counters(name)
        now = self.clock()
        if quota is not NO_QUOTA and quota != NO_QUOTA:
            error = refusal(name, quota, c, now)
            if error is not None:
                raise error
        c.in_flight += 1
        c.requests.add(now, 1)

    def done(self, name: str, tokens: int) -> None:
        c = self.counters(name)
        now = self.clock()
        c.in_flight -= 1
        c.roll(now)
        if tokens:
            c.day_tokens += tokens
            c.month_tokens += tokens
            c.tokens.add(now, tokens)

    def snapshot(self, name: str) -> dict[str, int]:
        """What the key used, for the admin API and ``keys ls``."""
        c = self.counters(name)
        now = self.clock()
        c.roll(now)
        c.requests.expire(now)
        c.tokens.expire(now)
        return {
            "tokens_today": c.day_tokens,
            "tokens_this_month": c.month_tokens,
            "requests_last_minute": c.requests.total,
            "tokens_last_minute": c.tokens.total,
            "in_flight": c.in_flight,
        }

    def forget(self, keep: set[str]) -> None:
        """Drop the counters of keys that no longer exist (nothing in flight)."""
        for name in [n for n, c in self.keys.items() if n not in keep and not c.in_flight]:
            del self.keys[name]
