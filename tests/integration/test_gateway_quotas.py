"""Per-key quotas, the congestion queue and metrics-scoped keys on the real ``llmdock serve`` (subprocess)
in front of the support upstream, which reports usage as an engine does (5 prompt + 64 completion tokens
per answer, JSON or the stream's last event)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmdock.gateway.keystore import KeyStore
from llmdock.gateway.quotas import Quota
from llmdock.state import Store
from tests.conftest import cli
from tests.integration.test_gateway_proxy import wait_for
from tests.support.gateway import Served, serve
from tests.support.upstream import Upstream, UpstreamThread

TOKENS = 5 + 64  # what the upstream reports per answer
BODY: dict[str, Any] = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with UpstreamThread() as up:
        yield up


def key(name: str, *flags: str) -> str:
    """A key made by the real ``llmdock keys create`` (where its flags are what is tested)."""
    done = cli("keys", "create", name, *flags)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def stored(home: Path, name: str, **limits: Any) -> str:
    """A key written straight to the state database (quicker than a CLI process)."""
    store = Store(home / "state.db")
    try:
        quota = Quota(**{n: limits.pop(n) for n in Quota.names() if n in limits})
        return KeyStore(store).create(name, quota=quota, **limits)
    finally:
        store.close()


def chat(gw: Served, secret: str, **extra: Any) -> httpx.Response:
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={**BODY, **extra},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )
    r.read()
    return r


def refused(r: httpx.Response, code: str, says: str) -> int:
    """Assert an OpenAI-style 429 with ``code`` and ``says`` in its message; return its Retry-After."""
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "rate_limit_error" and error["code"] == code, error
    assert says in error["message"], error["message"]
    return int(r.headers["retry-after"])


def utc_midnight_in(now: float) -> float:
    return (int(now // 86400) + 1) * 86400 - now


def next_month_in(now: float) -> float:
    t = datetime.fromtimestamp(now, timezone.utc)
    first = datetime(t.year + t.month // 12, t.month % 12 + 1, 1, tzinfo=timezone.utc)
    return first.timestamp() - now


def totals(home: Path) -> dict[str, tuple[int, int]]:
    store = Store(home / "state.db")
    try:
        return KeyStore(store).token_totals(time.time())
    finally:
        store.close()


def test_each_limit_is_a_429_with_retry_after_and_token_counts_survive_restarts(
    home: Path, tmp_path: Path, upstream: Upstream
) -> None:
    day = key("day", "--tokens-per-day", "100")
    month = stored(home, "month", tokens_per_month=60)
    tpm = stored(home, "tpm", tpm=50)
    rpm = stored(home, "rpm", rpm=2)
    args = ("--no-docker", "--route", f"mock={upstream.url}")
    with serve(tmp_path, *args) as gw:
        assert chat(gw, day).status_code == 200  # 69 tokens: under 100, so the next one goes too
        assert chat(gw, day, stream=True).status_code == 200  # a stream's usage counts as well: 138
        retry = refused(chat(gw, day), "quota_exceeded", "100 tokens per day (UTC) (used 138 today)")
        assert abs(retry - utc_midnight_in(time.time())) <= 3
        assert "llmdock keys quota day --tokens-per-day N" in chat(gw, day).json()["error"]["message"]

        assert chat(gw, month).status_code == 200
        retry = refused(chat(gw, month), "quota_exceeded", "60 tokens per month (UTC)")
        assert abs(retry - next_month_in(time.time())) <= 3

        assert chat(gw, tpm).status_code == 200
        assert 55 <= refused(chat(gw, tpm), "quota_exceeded", "50 tokens per minute (used 69") <= 60

        assert chat(gw, rpm).status_code == 200 and chat(gw, rpm).status_code == 200
        assert 55 <= refused(chat(gw, rpm), "quota_exceeded", "2 requests per minute") <= 60
        # keys ls: usage against the limit, from the database (written once a second)
        assert wait_for(lambda: totals(home).get("day", (0, 0))[0] == 2 * TOKENS)
        listing = cli("keys", "ls").stdout
        assert "138/100" in listing and "69/60" in listing, listing
    # SIGTERM: the last usage is written on the way out; the day and the month are still used up
    with serve(tmp_path, *args) as gw:
        refused(chat(gw, day), "quota_exceeded", "used 138 today")
        refused(chat(gw, month), "quota_exceeded", "used 69 this month")
        assert chat(gw, rpm).status_code == 200  # minute windows start empty after a restart
        # SIGKILL: what was written (at most a second old) is what survives
        assert chat(gw, tpm).status_code == 200
        assert wait_for(lambda: totals(home)["tpm"][0] == 2 * TOKENS)
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(10)
    with serve(tmp_path, *args) as gw:
        assert totals(home)["tpm"] == (2 * TOKENS, 2 * TOKENS)
        refused(chat(gw, day), "quota_exceeded", "used 138 today")


def metric(gw: Served, admin: str, series: str) -> float | None:
    text = httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {admin}"}).text
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def test_max_concurrent_then_a_full_queue_then_a_wait_that_runs_out(
    home: Path, tmp_path: Path, upstream: Upstream
) -> None:
    one = key("one", "--max-concurrent", "1")
    many = stored(home, "many")
    admin = stored(home, "root", admin=True)
    queued = 'llmdock_queued_requests{model="mock"}'
    args = ("--no-docker", "--route", f"mock={upstream.url}")
    flags = ("--replica-concurrency", "1", "--queue-length", "1", "--queue-wait", "1")
    with serve(tmp_path, *args, *flags) as gw, ThreadPoolExecutor(4) as pool:
        held = pool.submit(chat, gw, one, stream=True, mock={"hold": True})
        assert wait_for(lambda: upstream.held_streams == 1)
        assert refused(chat(gw, one), "quota_exceeded", "1 requests at once (has 1 in flight)") == 1
        # the deployment is at its bound of one: the next request waits in line ...
        waiting: Future[httpx.Response] = pool.submit(chat, gw, many)
        assert wait_for(lambda: metric(gw, admin, queued) == 1)
        # ... the line of one is full: refused at once
        assert refused(chat(gw, many), "model_congested", "1 wait already") == 1
        # ... and the one in line is refused when its wait of 1 s runs out
        assert refused(waiting.result(10), "model_congested", "no slot freed within 1s") == 1
        assert metric(gw, admin, queued) == 0
        # a request in line is served as soon as the slot frees
        waiting = pool.submit(chat, gw, many)
        assert wait_for(lambda: metric(gw, admin, queued) == 1)
        upstream.release()
        assert held.result(10).status_code == 200 and waiting.result(10).status_code == 200
        assert chat(gw, one).status_code == 200  # its slot was given back
        assert len(upstream.bodies) == 3  # nothing refused reached the engine


def test_metrics_need_an_admin_or_a_metrics_scoped_key(
    home: Path, tmp_path: Path, upstream: Upstream
) -> None:
    prom = key("prom", "--scope", "metrics")
    both = stored(home, "both", scopes=("api", "metrics"))
    limited = stored(home, "limited", models=("mock",))
    admin = stored(home, "root", admin=True)
    bad = cli("keys", "create", "x", "--scope", "logs")
    assert bad.returncode == 1 and "scope logs is not known" in bad.stderr and "--scope metrics" in bad.stderr
    with serve(tmp_path, "--no-docker", "--route", f"mock={upstream.url}") as gw, httpx.Client() as c:

        def scrape(secret: str | None) -> httpx.Response:
            return c.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {secret}"} if secret else {})

        assert scrape(None).status_code == 401
        for secret in (prom, both, admin):
            r = scrape(secret)
            assert r.status_code == 200 and "llmdock_requests_total" in r.text
        r = scrape(limited)
        assert r.status_code == 403 and "--scope metrics" in r.json()["error"]["message"]
        r = chat(gw, prom)  # a scraper's key is no API key
        assert (
            r.status_code == 403 and "scoped to metrics and may not use /v1" in r.json()["error"]["message"]
        )
        assert c.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {prom}"}).status_code == 403
        assert chat(gw, both).status_code == 200 and chat(gw, limited).status_code == 200
        assert (
            c.get(gw.url + "/admin/v1/keys", headers={"Authorization": f"Bearer {prom}"}).status_code == 403
        )


def test_limits_change_in_place_from_the_cli_and_the_admin_api(
    home: Path, tmp_path: Path, upstream: Upstream
) -> None:
    team = stored(home, "team", rpm=1)
    admin = stored(home, "root", admin=True)
    auth = {"Authorization": f"Bearer {admin}"}
    for args, says in (
        (["team", "--tpm", "0"], "--tpm '0' is not a limit"),
        (["nobody", "--rpm", "5"], "no active key named 'nobody'"),
    ):
        done = cli("keys", "quota", *args)
        assert done.returncode == 1 and says in done.stderr, done.stderr
    with serve(tmp_path, "--no-docker", "--route", f"mock={upstream.url}") as gw, httpx.Client() as c:
        assert chat(gw, team).status_code == 200
        refused(chat(gw, team), "quota_exceeded", "1 requests per minute")
        done = cli("keys", "quota", "team", "--rpm", "off", "--tokens-per-day", "100")
        assert done.returncode == 0 and "tokens_per_day=100" in done.stderr
        assert wait_for(lambda: chat(gw, team).status_code == 200)  # the gateway reloads keys every 2 s
        refused(chat(gw, team), "quota_exceeded", "tokens per day")  # the usage so far still counts
        r = c.post(gw.url + "/admin/v1/keys", json={"name": "made", "tokens_per_day": 10}, headers=auth)
        assert r.status_code == 201
        made = r.json()["key"]
        assert wait_for(lambda: chat(gw, made).status_code == 200)
        refused(chat(gw, made), "quota_exceeded", "10 tokens per day")
        listed = {k["name"]: k for k in c.get(gw.url + "/admin/v1/keys", headers=auth).json()}
        assert listed["made"]["tokens_per_day"] == 10 and listed["made"]["usage"]["tokens_today"] == TOKENS
        assert listed["team"]["rpm"] is None and listed["team"]["scopes"] == ["api"]
        for bad, says in (({"rpm": 0}, "rpm must be"), ({"colour": 1}, "unknown field colour")):
            r = c.patch(gw.url + "/admin/v1/keys/made", json=bad, headers=auth)
            assert r.status_code == 400 and says in r.json()["error"]["message"], r.text
        r = c.patch(gw.url + "/admin/v1/keys/made", json={"tokens_per_day": None, "tpm": 500}, headers=auth)
        assert r.status_code == 200 and r.json()["tokens_per_day"] is None and r.json()["tpm"] == 500
        assert wait_for(lambda: chat(gw, made).status_code == 200)
        assert c.patch(gw.url + "/admin/v1/keys/nobody", json={"rpm": 1}, headers=auth).status_code == 404


def test_apply_carries_quotas_through_the_cli(home: Path, tmp_path: Path) -> None:
    import yaml

    nodocker = {"LLMDOCK_DOCKER_HOST": "unix:///nonexistent"}  # keys only: no deployment to list
    f = tmp_path / "llmdock.yaml"
    f.write_text(
        "keys:\n  - name: team\n    rpm: 60\n    tokens_per_day: 1000\n  - name: prom\n    scopes: [metrics]\n"
    )
    first = cli("apply", "-f", str(f), env=nodocker)
    assert first.returncode == 0 and "+ key team" in first.stdout and "+ key prom" in first.stdout, first
    f.write_text(f.read_text().replace("rpm: 60", "max_concurrent: 2"))
    second = cli("apply", "-f", str(f), env=nodocker)
    assert "~ key team (rpm: 60 -> None; max_concurrent: None -> 2)" in second.stdout, second
    assert "shown once" not in second.stderr  # changed in place: no new secret
    keys = yaml.safe_load(cli("export", env=nodocker).stdout)["keys"]
    assert keys == [
        {"name": "prom", "scopes": ["metrics"]},
        {"name": "team", "tokens_per_day": 1000, "max_concurrent": 2},
    ]
