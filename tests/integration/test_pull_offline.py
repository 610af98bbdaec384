"""`llmdock pull` with the hub unreachable (nothing listens at the endpoint), through the real SDKs:
one error line naming the hub and why, one hint, exit 1; none of the SDK's retry warnings or the
urllib3/httpx error chain."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.hub import hub_env


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("source", ["modelscope", "huggingface", "auto"])
def test_pull_with_the_hub_unreachable_says_so_in_one_line(tmp_path: Path, source: str) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    env = {**os.environ, **hub_env(url), "LLMDOCK_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    env.pop("MODELSCOPE_LOG_LEVEL", None)
    cmd = [sys.executable, "-m", "llmdock.cli.main", "pull", "Qwen/Qwen2.5-0.5B", "--source", source]
    done = subprocess.run(
        [*cmd, "--models-dir", str(tmp_path / "models")], capture_output=True, text=True, env=env, timeout=120
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 2, done.stderr
    assert lines[0].startswith("error: ") and "cannot reach" in lines[0] and url in lines[0]
    assert "the connection was refused" in lines[0]
    assert lines[1].startswith("hint: ") and "llmdock models import" in lines[1]
    assert len(lines[0]) < 250  # not the SDK's pool/retry dump
    assert done.stdout == ""
    assert not list((tmp_path / "models").rglob("*.part"))
