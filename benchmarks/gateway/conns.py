"""Connections at scale through the real ``llmdock serve``: 1,000 concurrent streams and 5,000 idle
connections held at once, with the gateway's RSS, open descriptors and the time of a ``GET /health``
before, during and after; then 2,000 slowloris connections and 20 pipelining floods at once, with
another client's requests timed meanwhile (tests/support/connload.py does the holding and measuring).

Every limit is as shipped (10,000 connections in all, 1,000 per client address, the default
timeouts): the clients spread over loopback source addresses instead of raising the per-address cap.
The descriptor limit of this process (and so of the gateway it starts) is raised to 20,000.

Run from the repository root: ``.venv/bin/python benchmarks/gateway/conns.py`` (about a minute and a half);
``--streams/--idle`` change the counts. Writes ``conns.json`` and ``CONNS.md`` beside this file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.connload import hold, hostile, raise_fd_limit  # noqa: E402
from tests.support.gateway import serve  # noqa: E402
from tests.support.upstream import UpstreamThread  # noqa: E402

HERE = Path(__file__).resolve().parent


def measure(streams: int, idle: int, slow: int, floods: int) -> dict[str, Any]:
    limit = raise_fd_limit(20_000)
    with tempfile.TemporaryDirectory(prefix="conns-") as tmp, UpstreamThread() as up:
        up.keep_bodies = False
        env = {"LLMDOCK_HOME": str(Path(tmp) / "home")}
        with serve(Path(tmp), "--no-docker", "--route", f"mock={up.url}", env=env) as gw:
            gw.wait_ready()
            report = asyncio.run(hold(gw.port, gw.proc.pid, up, streams=streams, idle=idle))
        with serve(Path(tmp), "--no-docker", "--route", f"mock={up.url}", env=env) as gw:
            gw.wait_ready()
            report["hostile"] = asyncio.run(
                hostile(gw.port, gw.proc.pid, slow=slow, floods=floods, header_timeout_s=10)
            )
    report["fd_limit"] = limit
    report["host"] = (
        f"{os.cpu_count()} vCPUs, Python {platform.python_version()}, kernel {platform.release()}"
    )
    report["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return report


def markdown(r: dict[str, Any]) -> str:
    rows = [("before", r["before"]), ("during", r["during"]), ("after", r["after"])]
    lines = [
        "# Connections at scale — loopback, support upstream",
        "",
        f"Written by `benchmarks/gateway/conns.py` ({r['when']}; {r['host']}); raw figures in `conns.json`.",
        f"{r['streams']:,} streams held open (each has sent its first event) and {r['idle']:,} idle "
        "connections (connected, nothing sent), all at once, through `llmdock serve --no-docker "
        "--route mock=…` with every limit as shipped: the clients come from several loopback "
        "addresses (at most 900 each) rather than raising `--max-connections-per-ip`.",
        "",
        "| phase | gateway RSS | open descriptors | `GET /health` (median of 5 / slowest) |",
        "|---|---|---|---|",
    ]
    for name, s in rows:
        lines.append(
            f"| {name} | {s['rss_mib']:.1f} MiB | {s['fds']:,} | {s['health_ms']:.2f} / {s['health_max_ms']:.2f} ms |"
        )
    grown = r["during"]["rss_mib"] - r["before"]["rss_mib"]
    per_conn = grown * 1024 / max(1, r["streams"] + r["idle"])
    lines += [
        "",
        f"- RSS grew {grown:.1f} MiB with {r['streams'] + r['idle']:,} connections held "
        f"(≈ {per_conn:.1f} KiB each, streams with their engine connections included).",
        f"- Opening: {r['idle']:,} idle in {r['idle_open_s']} s, then {r['streams']:,} streams in "
        f"{r['streams_open_s']} s; {r['idle_alive']:,} idle connections still open while measuring.",
        f"- Another client was served during the load: a chat completion answered "
        f"{'200' if r['served_during'] else 'NOT 200'} in {r['chat_during_ms']:.2f} ms.",
        f"- {r['streams_complete']:,} of {r['streams']:,} streams then ran to `[DONE]` with all 64 events.",
        f"- Afterwards the gateway's descriptors were back to {r['after']['fds']} within "
        f"{r['fds_settled_s']} s (pooled engine connections idle out after 4-8 s); RSS stays near its "
        "peak (Python keeps the memory it freed for reuse).",
        f"- Descriptor limit of the gateway: {r['fd_limit']:,} (raised in-process, inherited).",
        "",
    ]
    return "\n".join(lines + hostile_markdown(r["hostile"]))


def hostile_markdown(h: dict[str, Any]) -> list[str]:
    worst = h["during_worst"]
    return [
        "## A slowloris crowd and pipelining floods, at once",
        "",
        f"A fresh gateway, defaults again: {h['slowloris']:,} slowloris connections (a request head, one "
        f"byte every half second, never finished) and {h['floods']} connections that pipeline "
        "`GET /openapi.json` as fast as the gateway takes them and never read, until every slowloris "
        f"connection was answered ({h['seconds']:g} s). Meanwhile another client sends a chat "
        "completion and a `/health` every half second.",
        "",
        "| | before | worst during | after |",
        "|---|---|---|---|",
        f"| gateway RSS | {h['before']['rss_mib']:.1f} MiB | {worst['rss_mib']:.1f} MiB | "
        f"{h['after']['rss_mib']:.1f} MiB |",
        f"| `GET /health` | {h['before']['health_ms']:.2f} ms | {worst['health_ms']:.2f} ms | "
        f"{h['after']['health_ms']:.2f} ms |",
        f"| chat completion (another client) | — | {worst['chat_ms']:.2f} ms | — |",
        "",
        f"- Slowest moments (s since the start: `/health` ms, chat ms): {slowest(h['samples'])}.",
        f"- Requests of the other client that failed: {h['others_failed']}. The gateway used "
        f"{h['gateway_cpu']:.0%} of a core meanwhile, the load generator (one Python process, on the "
        f"same 2 vCPUs) {h['client_cpu']:.0%}: the worst times are the host's as much as the gateway's.",
        f"- Slowloris connections answered `408` when their head was not in after "
        f"{h['header_timeout_s']:g} s: {h['slowloris_408']:,} of {h['slowloris']:,}.",
        f"- The floods wrote {h['flood_mib_sent']} MiB in all; the gateway reads a pipelined request only "
        "when the answer before it was taken, and cuts a client that reads nothing for the send "
        "timeout, so its RSS grew by what is in the table, not by what they sent.",
        "",
    ]


def slowest(samples: list[list[float]]) -> str:
    top = sorted(samples, key=lambda s: -max(s[1:]))[:3]
    return ", ".join(f"{t:g}: {health:g} / {chat:g}" for t, health, chat in sorted(top))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--slowloris", type=int, default=2000)
    parser.add_argument("--floods", type=int, default=20)
    args = parser.parse_args()
    report = measure(args.streams, args.idle, args.slowloris, args.floods)
    (HERE / "conns.json").write_text(json.dumps(report, indent=2) + "\n")
    (HERE / "CONNS.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
