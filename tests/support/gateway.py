"""Run the real ``llmdock serve`` in a subprocess on a free port, for integration and e2e tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, key: str | None = None, timeout: float = 10) -> None:
        """Poll ``/v1/models`` until a model is ready (the first health probe has run), or fail."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        deadline = time.monotonic() + timeout
        while True:
            r = httpx.get(self.url + "/v1/models", headers=headers)
            if any(m["llmdock"]["ready"] for m in r.json()["data"]):
                return
            assert time.monotonic() < deadline, f"no model ready after {timeout:g}s: {r.text}"
            time.sleep(0.05)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


@contextmanager
def serve(tmp: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 30) -> Iterator[Served]:
    """Start ``llmdock serve --port 0 ARGS`` and yield once it listens; stop it (SIGTERM) afterwards."""
    log = tmp / f"serve-{time.monotonic_ns()}.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmdock.cli.main", "serve", "--port", "0", *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(r"gateway on http://[^:]+:(\d+)/v1", log.read_text())
            if m:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve did not start: {log.read_text()}")
            time.sleep(0.05)
        yield Served(proc, int(m.group(1)), log)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
