"""`up ORG/NAME`: pull from the (loopback) hub, verify, then deploy the verified directory read-only."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli
from tests.support.hub import LocalHub, hub_env


@pytest.fixture
def hub(home: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LocalHub]:
    with LocalHub() as h:
        h.add_repo("tiny/qwen-chat", {f.name: f for f in tiny_model.iterdir()})
        for k, v in hub_env(h.url).items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-cache"))
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        yield h


def test_up_hub_id_pulls_then_deploys(
    hub: LocalHub, engine_image: str, name: str, docker_client: Any
) -> None:
    planned = cli("plan", "tiny/qwen-chat", "--assume-gpus", "1x80GiB", "--json")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["fit"]["tensor_parallel_size"] == 1 and any("not downloaded yet" in n for n in plan["notes"])
    with socket.socket() as s:  # a refused `up` downloads nothing
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = str(s.getsockname()[1])
        refused = cli("up", "tiny/qwen-chat", "--engine", "transformers", "--name", name, "--port", taken)
    assert refused.returncode == 1 and "already in use" in refused.stderr
    assert [r for r in hub.log if (r.file or "").endswith(".safetensors") and r.method == "GET"] == []
    refused = cli("up", "tiny/qwen-chat", "--engine", "transformers", "--name", name, "--no-pull")
    assert refused.returncode == 1 and "llmdock pull tiny/qwen-chat" in refused.stderr
    assert docker_client.containers.list(all=True, filters={"name": name}) == []

    up = cli("up", "tiny/qwen-chat", "--engine", "transformers", "--name", name, "--json")
    assert up.returncode == 0, up.stderr
    result = json.loads(up.stdout)
    mount = result["container"]["mounts"][0]
    assert mount["read_only"] is True and "tiny" in mount["source"] and "qwen-chat" in mount["source"]
    assert result["container"]["labels"]["io.llmdock.model"] == "tiny/qwen-chat"

    listed = json.loads(cli("models", "ls", "--json").stdout)
    entry = next(m for m in listed if "qwen-chat" in json.dumps(m))
    assert name in json.dumps(entry)  # the deployment that uses it
    rm = cli("models", "rm", "tiny/qwen-chat")
    assert rm.returncode == 1 and name in rm.stderr

    again = cli("up", "tiny/qwen-chat", "--engine", "transformers", "--name", name, "--no-pull", "--json")
    assert again.returncode == 0 and '"unchanged"' in again.stdout
    assert cli("rm", "-f", name).returncode == 0
    assert cli("models", "rm", "tiny/qwen-chat").returncode == 0


def test_plan_json_with_assumed_gpus(home: Path, docker_client: Any, tmp_path: Path) -> None:
    fixture = Path(__file__).parents[1] / "fixtures" / "models" / "Qwen--Qwen2.5-7B-Instruct"
    model = tmp_path / "Qwen2.5-7B-Instruct"
    model.mkdir()
    (model / "config.json").write_text((fixture / "config.json").read_text())
    done = cli("plan", str(model), "--assume-gpus", "4x80GiB", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["gpus"] == [0] and plan["fit"]["tensor_parallel_size"] == 1
    assert plan["fit"]["kv_tokens"] > 100_000 and plan["fit"]["per_gpu"][0]["weights"] > 14 * 2**30
    assert plan["command"][:3] == ["vllm", "serve", "/work/Qwen2.5-7B-Instruct"]
    too_long = cli("plan", str(model), "--assume-gpus", "1x16GiB", "--max-model-len", "32768")
    assert "does not fit" in too_long.stdout and too_long.returncode == 1
    refused = cli("up", str(model), "--assume-gpus", "1x16GiB")
    assert refused.returncode == 1 and "planning only" in refused.stderr
