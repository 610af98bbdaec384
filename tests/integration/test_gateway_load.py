"""Many connections at once through the real gateway, with its memory measured: 1,000 concurrent
streams; and streams with idle connections held together while other clients are served
(benchmarks/gateway/conns.py records the full-size figures: 1,000 streams and 5,000 idle)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.connload import hold, hostile, raise_fd_limit
from tests.support.gateway import serve
from tests.support.upstream import UpstreamThread

STREAMS = 1000
RSS_BOUND_MIB = 200  # measured: 53 MiB idle, +28 MiB with 1,000 streams; a per-stream leak would show


@pytest.fixture(autouse=True)
def enough_files() -> None:
    raise_fd_limit(8192)


def test_thousand_concurrent_streams_bounded_memory(home: Path, tmp_path: Path) -> None:
    with UpstreamThread() as up:
        up.keep_bodies = False
        with serve(tmp_path, "--no-docker", "--route", f"mock={up.url}") as gw:
            gw.wait_ready()
            report = asyncio.run(hold(gw.port, gw.proc.pid, up, streams=STREAMS, idle=0))
    assert report["streams_complete"] == STREAMS  # all held at once, then each ran to [DONE], 64 events
    before, during = report["before"]["rss_mib"], report["during"]["rss_mib"]
    print(f"gateway RSS idle {before:.1f} MiB, with {STREAMS} streams {during:.1f} MiB")
    assert during - before < RSS_BOUND_MIB


HELD_STREAMS, HELD_IDLE = 300, 1500
HELD_RSS_BOUND_MIB = 60  # measured: +14 MiB here; +54 MiB for 1,000 streams and 5,000 idle (CONNS.md)


@pytest.mark.slow
def test_streams_and_idle_connections_held_at_once_leave_others_served(home: Path, tmp_path: Path) -> None:
    with UpstreamThread() as up:
        up.keep_bodies = False
        with serve(tmp_path, "--no-docker", "--route", f"mock={up.url}") as gw:
            gw.wait_ready()
            report = asyncio.run(hold(gw.port, gw.proc.pid, up, streams=HELD_STREAMS, idle=HELD_IDLE))
    print(report)
    assert report["served_during"], "another client's chat completion was not answered during the load"
    assert report["during"]["health_max_ms"] < 2000
    assert report["idle_alive"] == HELD_IDLE  # none was dropped to make room
    assert report["streams_complete"] == HELD_STREAMS
    assert report["during"]["fds"] >= HELD_IDLE + 2 * HELD_STREAMS  # all of them really were held
    assert report["during"]["rss_mib"] - report["before"]["rss_mib"] < HELD_RSS_BOUND_MIB
    assert report["after"]["fds"] < report["before"]["fds"] + 50  # and given back


@pytest.mark.slow
def test_a_slowloris_crowd_and_pipelining_floods_at_once_leave_others_served(
    home: Path, tmp_path: Path
) -> None:
    """900 slowloris connections (one address, under its cap) and 8 pipelining floods that never read,
    together; test_gateway_http.py has each alone at small scale."""
    with UpstreamThread() as up:
        up.keep_bodies = False
        args = ["--no-docker", "--route", f"mock={up.url}", "--header-timeout", "2", "--send-timeout", "2"]
        with serve(tmp_path, *args) as gw:
            gw.wait_ready()
            report = asyncio.run(hostile(gw.port, gw.proc.pid, slow=900, floods=8, header_timeout_s=2))
    print(report)
    assert report["others_failed"] == 0
    assert report["during_worst"]["chat_ms"] < 2000 and report["during_worst"]["health_ms"] < 2000
    assert report["slowloris_408"] == 900  # each told why, within 5 s of its deadline
    assert report["flood_mib_sent"] > 0
    assert report["during_worst"]["rss_mib"] - report["before"]["rss_mib"] < HELD_RSS_BOUND_MIB
