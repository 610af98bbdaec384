"""Per-key quotas and the congestion gate: window arithmetic, refusals, Retry-After, the key store. Pure
parts table-driven; the store on a real SQLite file."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path

import pytest

from llmdock.engines.base import engine_concurrency
from llmdock.errors import InvalidSpec, NotFound
from llmdock.gateway.congestion import Congested, Gate
from llmdock.gateway.keystore import KeyStore, Usage
from llmdock.gateway.quotas import (
    MinuteWindow,
    Quota,
    QuotaExceeded,
    Quotas,
    check_quota,
    day_start,
    month_start,
    next_month_start,
)
from llmdock.state import Store


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(
    ("now", "day", "month", "next_month"),
    [
        (utc(2026, 12, 4, 18, 45), utc(2026, 12, 4), utc(2026, 12, 1), utc(2027, 1, 1)),
        (utc(2026, 12, 31, 23, 59, 59), utc(2026, 12, 31), utc(2026, 12, 1), utc(2027, 1, 1)),
        (utc(2027, 1, 1), utc(2027, 1, 1), utc(2027, 1, 1), utc(2027, 2, 1)),
        (utc(2028, 2, 29, 12), utc(2028, 2, 29), utc(2028, 2, 1), utc(2028, 3, 1)),
    ],
)
def test_calendar_windows_are_utc(now: float, day: float, month: float, next_month: float) -> None:
    assert (day_start(now), month_start(now), next_month_start(now)) == (day, month, next_month)


@pytest.mark.parametrize(
    ("adds", "now", "limit", "total", "frees_in"),
    [
        ([(0.2, 1)], 0.5, 1, 1, 59.5),  # one request at second 0 leaves the window at 60
        ([(0.2, 1)], 59.9, 1, 1, 0.1),
        ([(0.2, 1)], 60.0, 1, 0, 0.0),  # gone
        ([(0, 1), (10, 1), (20, 1)], 30, 3, 3, 30.0),  # the oldest frees first
        ([(0, 1), (10, 1), (20, 1)], 30, 2, 3, 40.0),  # two must leave to be under 2
        ([(0, 50), (30, 50)], 31, 60, 100, 29.0),  # tokens: 100 in the window, under 60 when 50 leave
        ([(5, 10)], 6, 100, 10, 0.0),  # under the limit: free now
    ],
)
def test_the_sliding_minute(
    adds: list[tuple[float, int]], now: float, limit: int, total: int, frees_in: float
) -> None:
    w = MinuteWindow()
    for at, n in adds:
        w.add(at, n)
    assert w.frees_in(now, limit) == pytest.approx(frees_in)
    assert w.total == total


def book_at(t: list[float]) -> Quotas:
    return Quotas(clock=lambda: t[0])


@pytest.mark.parametrize(
    ("quota", "used", "limit", "retry_after", "says"),
    [
        (Quota(rpm=2), [0, 0], "rpm", 60, "2 requests per minute"),
        (Quota(tpm=100), [150], "tpm", 60, "100 tokens per minute (used 150"),
        (Quota(tokens_per_day=100), [60, 60], "tokens_per_day", 5 * 3600 + 15 * 60, "used 120 today"),
        (Quota(tokens_per_month=10), [10], "tokens_per_month", 27 * 86400 + 5 * 3600 + 15 * 60, "this month"),
    ],
)
def test_each_limit_refuses_with_its_name_retry_after_and_the_fix(
    quota: Quota, used: list[int], limit: str, retry_after: int, says: str
) -> None:
    t = [utc(2026, 2, 1, 18, 45)]
    book = book_at(t)
    for tokens in used:
        book.admit("team", quota)
        book.done("team", tokens)
    with pytest.raises(QuotaExceeded) as e:
        book.admit("team", quota)
    assert e.value.limit == limit and e.value.retry_after == retry_after
    assert e.value.status == 429 and e.value.code == "quota_exceeded" and e.value.type == "rate_limit_error"
    assert says in e.value.message and "llmdock keys quota team --" in e.value.message
    assert book.snapshot("team")["in_flight"] == 0  # a refusal holds nothing


def test_the_day_frees_at_utc_midnight_and_the_month_on_the_first() -> None:
    t = [utc(2026, 1, 31, 23, 59)]
    book = book_at(t)
    day, month = Quota(tokens_per_day=10), Quota(tokens_per_month=15)
    book.admit("k", day)
    book.done("k", 12)
    with pytest.raises(QuotaExceeded, match="retry in 60s"):
        book.admit("k", day)
    with pytest.raises(QuotaExceeded):
        book.admit("k", Quota(tokens_per_month=12))
    t[0] = utc(2026, 2, 1, 0, 0, 1)  # a new day and a new month
    book.admit("k", day)
    book.done("k", 9)
    book.admit("k", month)  # 9 this month now
    book.done("k", 9)
    with pytest.raises(QuotaExceeded) as e:
        book.admit("k", month)
    assert e.value.retry_after == utc(2026, 3, 1) - t[0]  # the 1st of March, 00:00 UTC
    assert book.snapshot("k")["tokens_today"] == 18


def test_max_concurrent_counts_requests_in_flight() -> None:
    book = book_at([1000.0])
    q = Quota(max_concurrent=2)
    book.admit("k", q)
    book.admit("k", q)
    with pytest.raises(QuotaExceeded) as e:
        book.admit("k", q)
    assert e.value.retry_after == 1 and "2 requests at once (has 2 in flight)" in e.value.message
    book.done("k", 0)
    book.admit("k", q)


def test_seeded_totals_go_on_counting() -> None:
    book = book_at([utc(2026, 12, 4, 12)])
    book.seed({"k": (990, 5000)})
    q = Quota(tokens_per_day=1000)
    book.admit("k", q)
    book.done("k", 10)
    with pytest.raises(QuotaExceeded, match="used 1000 today"):
        book.admit("k", q)


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"rpm": 60, "tpm": None}, None),
        ({"rpm": 0}, "rpm must be a whole number"),
        ({"tokens_per_day": "5"}, "tokens_per_day must be"),
        ({"max_concurrent": True}, "max_concurrent must be"),
        ({"tpm": 1.5}, "tpm must be"),
    ],
)
def test_quota_values_are_checked(values: dict[str, object], error: str | None) -> None:
    if error is None:
        assert check_quota(values) == Quota(rpm=60)
    else:
        with pytest.raises(ValueError, match=error):
            check_quota(values)


# ---- the key store: limits in place, totals from usage ------------------------------------------------
def test_the_store_keeps_quotas_and_sums_today_and_this_month(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    try:
        ks = KeyStore(store)
        ks.create("team", quota=Quota(rpm=60, tokens_per_day=1000))
        ks.create("prom", scopes=("metrics",))
        with pytest.raises(InvalidSpec, match="scope bogus"):
            ks.create("x", scopes=("bogus",))
        with pytest.raises(InvalidSpec, match="tpm must be"):
            ks.create("y", quota=Quota(tpm=0))
        info = ks.set_quota("team", {"rpm": None, "max_concurrent": 4})
        assert info.quota == Quota(tokens_per_day=1000, max_concurrent=4)  # rpm removed, the rest kept
        assert [(r.name, r.quota, r.scopes) for r in ks.active()] == [
            ("team", Quota(tokens_per_day=1000, max_concurrent=4), ("api",)),
            ("prom", Quota(), ("metrics",)),
        ]
        with pytest.raises(NotFound):
            ks.set_quota("nobody", {"rpm": 5})
        now = utc(2026, 12, 4, 18)
        minute = int(now // 60)
        ks.add_usage(
            {
                ("team", "a", minute): Usage(1, 0, 10, 20),
                ("team", "b", int(utc(2026, 12, 4) // 60)): Usage(1, 0, 1, 2),  # today's first minute
                ("team", "a", int(utc(2026, 12, 3, 23, 59) // 60)): Usage(1, 0, 100, 0),  # yesterday
                ("team", "a", int(utc(2026, 11, 30, 12) // 60)): Usage(1, 0, 1000, 0),  # last month
            }
        )
        assert ks.token_totals(now) == {"team": (33, 133)}
    finally:
        store.close()


# ---- congestion -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "bound"),
    [
        (["--max-num-seqs", "64"], 64),
        (["--enforce-eager", "--max_num_seqs=8"], 8),
        (["--max-running-requests", "32"], 32),
        (["--max-num-seqs"], None),
        (["--max-num-seqs", "0"], None),
        (["--max-num-batched-tokens", "4096"], None),
        ([], None),
    ],
)
def test_the_engines_own_bound_is_read_from_its_flags(args: list[str], bound: int | None) -> None:
    assert engine_concurrency(args) == bound


def test_the_gate_queues_in_order_then_refuses() -> None:
    async def go() -> None:
        gate = Gate()
        await gate.enter("m", 1, 2, 5)  # the one slot
        order: list[str] = []

        async def wait(tag: str) -> None:
            await gate.enter("m", 1, 2, 5)
            order.append(tag)

        first = asyncio.ensure_future(wait("first"))
        second = asyncio.ensure_future(wait("second"))
        await asyncio.sleep(0)
        with pytest.raises(Congested, match="2 wait already"):
            await gate.enter("m", 1, 2, 5)  # the queue is full
        gate.leave(1)
        await first
        assert order == ["first"] and gate.active == 1
        gate.leave(1)
        await second
        assert order == ["first", "second"]
        with pytest.raises(Congested, match=r"no slot freed within 0\.05s") as e:
            await gate.enter("m", 1, 2, 0.05)
        assert e.value.retry_after == 1 and e.value.status == 429 and e.value.code == "model_congested"
        gate.leave(1)
        assert gate.active == 0 and not gate.waiters

    asyncio.run(go())


def test_a_waiter_that_leaves_gives_its_turn_away() -> None:
    async def go() -> None:
        gate = Gate()
        await gate.enter("m", 1, 4, 5)
        quitter = asyncio.ensure_future(gate.enter("m", 1, 4, 5))
        stayer = asyncio.ensure_future(gate.enter("m", 1, 4, 5))
        await asyncio.sleep(0)
        quitter.cancel()
        await asyncio.sleep(0)
        gate.leave(1)
        await stayer
        assert gate.active == 1 and not gate.waiters
        # a larger bound (a replica turned healthy) lets those in line in
        more = [asyncio.ensure_future(gate.enter("m", 1, 4, 5)) for _ in range(2)]
        await asyncio.sleep(0)
        await gate.enter("m", 4, 4, 5)
        await asyncio.gather(*more)
        assert gate.active == 4  # the holder, the two woken, and this one

    asyncio.run(go())


def test_a_deployments_engine_flags_set_its_bound() -> None:
    from llmdock.gateway.supervisor import DockerSource
    from llmdock.runtimes.base import Deployment

    class Listing:
        def deployments(self) -> list[Deployment]:
            return [
                Deployment("small", "running", port=8001, spec={"extra_args": ["--max-num-seqs", "16"]}),
                Deployment("plain", "running", port=8002, spec={}),
            ]

    bounds = {t.deployment: t.concurrency for t in DockerSource(Listing()).targets()}
    assert bounds == {"small": 16, "plain": None}
