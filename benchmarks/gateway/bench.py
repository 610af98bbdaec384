"""Gateway benchmark on loopback: direct vs llmdock vs nginx vs LiteLLM in front of a fast mock upstream.

Run from the repository root (needs nginx on PATH and LiteLLM's proxy in a separate venv)::

    PYTHONPATH=.:benchmarks/gateway python benchmarks/gateway/bench.py --litellm /tmp/litellm-venv/bin/litellm

The gateway under test is pinned to CPU 0 (taskset), the upstream and this load generator to CPU 1.
Writes benchmarks/gateway/results.json; RESULTS.md is written by hand from it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loadgen import SyncClient, open_loop, request_bytes

HERE = Path(__file__).parent
UP, LLMDOCK, NGINX, LITELLM, BARE = 9301, 9302, 9303, 9304, 9305
JSON_BODY = json.dumps(
    {"model": "mock", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
).encode()
SSE_BODY = json.dumps(
    {"model": "mock", "messages": [{"role": "user", "content": "hello"}], "stream": True}
).encode()
SPACED_SSE_BODY = json.dumps(
    {
        "model": "mock",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "mock": {"delay": 0.002},
    }
).encode()
RATES = [25, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 5000, 6000]
NGINX_CONF = """worker_processes 1; daemon off; pid {dir}/nginx.pid; error_log {dir}/error.log warn;
events {{ worker_connections 16384; }}
http {{ access_log off; keepalive_requests 10000000; keepalive_timeout 300s; client_body_temp_path {dir}; proxy_temp_path {dir};
  upstream up {{ server 127.0.0.1:{up}; keepalive 512; keepalive_requests 10000000; }}
  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://up; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_buffering off; proxy_request_buffering off; }} }} }}
"""
LITELLM_CONF = """model_list:
  - model_name: mock
    litellm_params: {{model: openai/mock, api_base: "http://127.0.0.1:{up}/v1", api_key: none}}
litellm_settings: {{drop_params: true, telemetry: false}}
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and all its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo, seen = 0.0, [pid], set()
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(p.name))
            except (OSError, IndexError):
                continue
    while todo:
        q = todo.pop()
        if q in seen:
            continue
        seen.add(q)
        try:
            fields = Path(f"/proc/{q}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
        todo += children.get(q, [])
    return total


@contextmanager
def process(
    argv: list[str], cpu: int, port: int, env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    out = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        ["taskset", "-c", str(cpu), *argv],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                SyncClient(port).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{argv[0]} did not start: {log.read_text()[-2000:] if log else ''}"
                    ) from None
                time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pctl(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def latency_c1(port: int, key: str | None, pid: int | None, rounds: int, per_round: int) -> dict[str, object]:
    """Alternate rounds against direct and ``port``; added = path minus direct, per percentile."""
    out: dict[str, object] = {}
    # sse: 64 events in one burst, so the upstream is busy on the load generator's CPU while the first
    # chunk travels (what the first chunk then waits for is that CPU); sse_spaced: 2 ms between events,
    # like an engine's tokens, so the added time to the first chunk is the gateway's own.
    for label, body, scale in (
        ("json", JSON_BODY, 1),
        ("sse", SSE_BODY, 1),
        ("sse_spaced", SPACED_SSE_BODY, 20),
    ):
        direct = SyncClient(UP)
        via = SyncClient(port)
        raw_d = request_bytes(UP, "/v1/chat/completions", body, None)
        raw_v = request_bytes(port, "/v1/chat/completions", body, key)
        for _ in range(50 // scale):  # warm up both
            direct.send(raw_d), via.send(raw_v)
        d_tot, v_tot, d_first, v_first = [], [], [], []
        cpu = 0.0
        n = max(2, per_round // scale)
        for _ in range(rounds):
            for _ in range(n):
                r = direct.send(raw_d)
                d_tot.append(r.total_s), d_first.append(r.first_s)
            c0 = cpu_seconds(pid) if pid else 0.0
            for _ in range(n):
                r = via.send(raw_v)
                assert r.status == 200, r.status
                v_tot.append(r.total_s), v_first.append(r.first_s)
            cpu += (cpu_seconds(pid) - c0) if pid else 0.0
        direct.close(), via.close()
        out[label] = {
            "direct_p50_ms": pctl(d_tot, 0.5) * 1e3,
            "direct_p99_ms": pctl(d_tot, 0.99) * 1e3,
            "via_p50_ms": pctl(v_tot, 0.5) * 1e3,
            "via_p99_ms": pctl(v_tot, 0.99) * 1e3,
            "added_p50_ms": (pctl(v_tot, 0.5) - pctl(d_tot, 0.5)) * 1e3,
            "added_p99_ms": (pctl(v_tot, 0.99) - pctl(d_tot, 0.99)) * 1e3,
            "added_first_chunk_p50_ms": (pctl(v_first, 0.5) - pctl(d_first, 0.5)) * 1e3,
            "cpu_us_per_request": cpu / (rounds * n) * 1e6 if pid else None,
            "requests": rounds * n,
        }
    return out


def merged_chunks(port: int, key: str | None) -> dict[str, object]:
    """How many HTTP chunks carried more than one SSE event (spaced 2 ms apart, and in a burst)."""
    result: dict[str, object] = {}
    for label, body in (("spaced_2ms", SPACED_SSE_BODY), ("burst", SSE_BODY)):
        c = SyncClient(port)
        merged = events = chunks = 0
        for _ in range(20):
            r = c.send(request_bytes(port, "/v1/chat/completions", body, key))
            for ch in r.http_chunks:
                n = ch.count(b"data:")
                events += n
                chunks += 1
                merged += n > 1
        c.close()
        result[label] = {"streams": 20, "events": events, "http_chunks": chunks, "merged_chunks": merged}
    return result


def max_rate(port: int, key: str | None, pid: int | None, seconds: float) -> dict[str, object]:
    raw = request_bytes(port, "/v1/chat/completions", JSON_BODY, key)
    steps, best = [], None
    for rate in RATES:
        c0 = cpu_seconds(pid) if pid else 0.0
        r = asyncio.run(open_loop(port, raw, rate, seconds))
        r["cpu_us_per_request"] = (cpu_seconds(pid) - c0) / max(1, r["ok"]) * 1e6 if pid else None
        steps.append(r)
        print(
            f"  {rate:>5}/s p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms errors {r['errors']}",
            flush=True,
        )
        if r["p99_ms"] >= 50 or r["errors"]:
            break
        best = rate
    return {"max_rate_p99_under_50ms": best, "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--litellm", default="/tmp/litellm-venv/bin/litellm")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--only", default="direct,llmdock,bare,nginx,litellm")
    args = ap.parse_args()
    os.sched_setaffinity(0, {1})
    tmp = Path(tempfile.mkdtemp(prefix="gwbench-"))
    out_path = HERE / "results.json"
    results: dict[str, object] = json.loads(out_path.read_text()) if out_path.exists() else {}
    results |= {
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
        "setup": "gateway on CPU 0; mock upstream (raw asyncio + uvloop) and load generator on CPU 1; loopback",
    }
    py = sys.executable
    with process([py, "-m", "tests.support.upstream", "--port", str(UP)], 1, UP, log=tmp / "up.log"):
        only = args.only.split(",")
        if "direct" in only:
            print("direct", flush=True)
            results["direct"] = {
                "max_rate": max_rate(UP, None, None, args.seconds),
                "chunks": merged_chunks(UP, None),
            }
        if "llmdock" in only:
            home = tmp / "home"
            env = {"LLMDOCK_HOME": str(home)}
            key = subprocess.run(
                [py, "-m", "llmdock.cli.main", "keys", "create", "bench"],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            argv = [
                py,
                "-m",
                "llmdock.cli.main",
                "serve",
                "--no-docker",
                "--port",
                str(LLMDOCK),
                "--route",
                f"mock=http://127.0.0.1:{UP}",
            ]
            with process(argv, 0, LLMDOCK, env, tmp / "llmdock.log") as p:
                time.sleep(1.5)  # first health probe
                print("llmdock", flush=True)
                results["llmdock"] = run_all(LLMDOCK, key, p.pid, args)
            out_path.write_text(json.dumps(results, indent=2) + "\n")
        if "bare" in only:
            argv = [py, str(HERE / "bare_aiohttp.py"), str(BARE), str(UP)]
            with process(argv, 0, BARE, log=tmp / "bare.log") as p:
                print("bare aiohttp", flush=True)
                results["bare_aiohttp"] = run_all(BARE, None, p.pid, args)
            out_path.write_text(json.dumps(results, indent=2) + "\n")
        if "nginx" in only and shutil.which("nginx"):
            (tmp / "nginx.conf").write_text(NGINX_CONF.format(dir=tmp, up=UP, port=NGINX))
            with process(
                ["nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)], 0, NGINX, log=tmp / "nginx.log"
            ) as p:
                print("nginx", flush=True)
                results["nginx"] = run_all(NGINX, None, p.pid, args) | {
                    "version": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
                }
        if "litellm" in only and Path(args.litellm).exists():
            (tmp / "litellm.yaml").write_text(LITELLM_CONF.format(up=UP))
            env = {
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_LOG": "ERROR",
                "DISABLE_SCHEMA_UPDATE": "True",
            }
            argv = [
                args.litellm,
                "--config",
                str(tmp / "litellm.yaml"),
                "--port",
                str(LITELLM),
                "--host",
                "127.0.0.1",
                "--num_workers",
                "1",
            ]
            with process(argv, 0, LITELLM, env, tmp / "litellm.log") as p:
                print("litellm", flush=True)
                version = subprocess.run(
                    [
                        str(Path(args.litellm).parent / "python"),
                        "-c",
                        "import importlib.metadata as m; print(m.version('litellm'))",
                    ],
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                results["litellm"] = run_all(LITELLM, None, p.pid, args, rounds=3, per_round=50) | {
                    "version": version
                }
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(summary(results), indent=2))


def run_all(
    port: int,
    key: str | None,
    pid: int,
    args: argparse.Namespace,
    rounds: int | None = None,
    per_round: int | None = None,
) -> dict[str, object]:
    lat = latency_c1(port, key, pid, rounds or args.rounds, per_round or args.per_round)
    print("  c=1", json.dumps(lat), flush=True)
    return {"c1": lat, "chunks": merged_chunks(port, key), "max_rate": max_rate(port, key, pid, args.seconds)}


def summary(results: dict[str, object]) -> dict[str, object]:
    out = {}
    for name in ("llmdock", "bare_aiohttp", "nginx", "litellm"):
        r = results.get(name)
        if not isinstance(r, dict):
            continue
        out[name] = {
            "added_p50_ms_json": round(r["c1"]["json"]["added_p50_ms"], 3),
            "added_p99_ms_json": round(r["c1"]["json"]["added_p99_ms"], 3),
            "added_first_chunk_ms_sse": round(r["c1"]["sse"]["added_first_chunk_p50_ms"], 3),
            "added_first_chunk_ms_sse_spaced": round(r["c1"]["sse_spaced"]["added_first_chunk_p50_ms"], 3),
            "cpu_us_per_request_json": round(r["c1"]["json"]["cpu_us_per_request"], 1),
            "cpu_us_per_request_sse": round(r["c1"]["sse"]["cpu_us_per_request"], 1),
            "max_rate_p99_under_50ms": r["max_rate"]["max_rate_p99_under_50ms"],
            "merged_chunks": {k: v["merged_chunks"] for k, v in r["chunks"].items()},
        }
    return out


if __name__ == "__main__":
    main()
