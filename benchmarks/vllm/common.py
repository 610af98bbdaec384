"""Shared pieces of the vLLM benchmarks: Docker by argv, the containers this run owns, polls, medians.

Every container a benchmark starts is named ``bench-…`` and registered in :class:`Owned` *before* it is
started, so Ctrl-C (or any error) removes exactly those, and nothing else::

    with Owned() as owned:
        owned.add("bench-bare-1")
        docker("run", "-d", "--name", "bench-bare-1", ...)
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

IMAGE = "llmdock/engine-vllm:0.32.0-cpu"
TEST_PREFIXES = ("v-", "vf-", "t-")  # containers of the test suite running beside us
# Probes go to loopback engines: never through http_proxy/https_proxy.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def up_argv(llmdock: str, model: str, name: str, *extra: str) -> list[str]:
    """`llmdock up MODEL` of the tiny model on vLLM's CPU backend, with JSON output."""
    return [llmdock, "up", model, "--engine", "vllm", "--gpus", "none", "--name", name, "--json", *extra]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def docker(*args: str, check: bool = True) -> str:
    """Run the docker CLI with ``args``; return stdout. Raise with docker's stderr on failure."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:2])} failed: {done.stderr.strip()[-400:]}")
    return done.stdout


def docker_time(stamp: str) -> float:
    """Docker's RFC 3339 nanosecond stamp (``2026-12-04T03:38:20.282194099Z``) as a Unix time."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    base = datetime.fromisoformat(head + "+00:00").timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def container_times(name: str) -> tuple[float, float]:
    """(created, started) of container ``name`` as Unix times, from the daemon's own clock."""
    out = docker("inspect", "--format", "{{.Created}} {{.State.StartedAt}}", name).split()
    return docker_time(out[0]), docker_time(out[1])


def container_state(name: str) -> str:
    return docker("inspect", "--format", "{{.State.Status}}", name, check=False).strip() or "gone"


def cpu_seconds_container(name: str) -> float:
    """CPU time used by every process of container ``name`` (cgroup v1 cpuacct, v2 cpu.stat)."""
    cid = docker("inspect", "--format", "{{.Id}}", name).strip()
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
    if v1.is_file():
        return int(v1.read_text()) / 1e9
    for v2 in (Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"),):
        if v2.is_file():
            usage = dict(line.split() for line in v2.read_text().splitlines())
            return int(usage["usage_usec"]) / 1e6
    return float("nan")


def cpu_seconds_pid(pid: int) -> float:
    """User + system CPU of ``pid`` and its live descendants (nginx's worker is its master's child)."""
    stats: dict[int, list[str]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stats[int(d.name)] = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        fields = stats.get(p)
        if fields is None:
            continue
        total += int(fields[11]) + int(fields[12])
        todo += [c for c, f in stats.items() if int(f[1]) == p]
    return total / os.sysconf("SC_CLK_TCK")


def get_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """(status, parsed body) of GET ``url``; (0, None) when nothing answers."""
    try:
        with _DIRECT.open(url, timeout=timeout) as r:
            body = r.read()
            return r.status, json.loads(body) if body[:1] in (b"{", b"[") else None
    except urllib.error.HTTPError as e:
        return e.code, None
    except (OSError, ValueError):
        return 0, None


def serves(base: str, model: str) -> bool:
    """``/health`` answers 200 and ``/v1/models`` lists ``model`` (the readiness llmdock waits for)."""
    status, _ = get_json(base + "/health")
    if status != 200:
        return False
    status, body = get_json(base + "/v1/models")
    return status == 200 and model in [m.get("id") for m in (body or {}).get("data", [])]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_tests(max_wait_s: float = 600.0, every_s: float = 30.0) -> float:
    """Wait (up to ``max_wait_s``) while the test suite's containers run; return seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < max_wait_s:
        names = docker("ps", "--format", "{{.Names}}").split()
        busy = [n for n in names if n.startswith(TEST_PREFIXES)]
        if not busy:
            break
        log(f"test containers running ({', '.join(busy[:4])}); waiting {every_s:.0f}s")
        time.sleep(every_s)
    return time.monotonic() - start


def other_containers() -> list[str]:
    """Running containers that are not ours: the noise this run shared the machine with."""
    return [n for n in docker("ps", "--format", "{{.Names}}").split() if not n.startswith("bench-")]


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def machine() -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker": docker("version", "--format", "{{.Server.Version}}").strip(),
        "image": IMAGE,
        "image_id": docker("image", "inspect", "--format", "{{.Id}}", IMAGE).strip(),
    }


class Owned:
    """The containers (and processes) this run started; all removed on exit, Ctrl-C or SIGTERM."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def add(self, name: str) -> str:
        if not name.startswith("bench-"):
            raise ValueError(f"benchmark containers are named bench-…, not {name!r}")
        self.names.append(name)
        return name

    def remove(self, name: str) -> None:
        docker("rm", "-f", "-v", name, check=False)
        if name in self.names:
            self.names.remove(name)

    def __enter__(self) -> Owned:
        def to_interrupt(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, to_interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for name in list(self.names):
            log(f"removing {name}")
            self.remove(name)
        signal.signal(signal.SIGINT, signal.default_int_handler)
