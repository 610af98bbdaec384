"""End-to-end CLI flows against the real daemon with the CPU engine image and the tiny model."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli


def ps(env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    done = cli("ps", "--json", env=env)
    assert done.returncode == 0, done.stderr
    return {d["name"]: d for d in json.loads(done.stdout)}


def chat(port: int, model: str) -> Any:
    from openai import OpenAI

    with OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60) as client:
        return client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=4
        )


def test_up_chat_logs_stop_start_rm(home: Path, engine_image: str, tiny_model: Path, name: str) -> None:
    up = cli("up", str(tiny_model), "--engine", "transformers", "--name", name, "--json")
    assert up.returncode == 0, up.stderr
    result = json.loads(up.stdout)
    assert result["action"] == "created" and result["ready_after_s"] > 0
    port, served = result["port"], result["served_model_name"]
    assert ps()[name]["status"] == "ready"  # derived from Docker's "running" and the recorded "ready"

    reply = chat(port, served)
    assert reply.choices[0].finish_reason in ("length", "stop") and reply.usage.completion_tokens > 0

    logs = cli("logs", name, "--tail", "200")
    assert logs.returncode == 0 and "/v1/chat/completions" in logs.stdout

    again = cli("up", str(tiny_model), "--engine", "transformers", "--name", name, "--json")
    assert json.loads(again.stdout)["action"] == "unchanged"

    quiet, everything = cli("logs", name).stdout, cli("logs", name, "--all").stdout
    probe = '"GET /health HTTP/1.1" 200'
    assert probe in everything and probe not in quiet and "/v1/chat/completions" in quiet

    assert cli("stop", name, "--timeout", "5").returncode == 0
    assert ps()[name]["state"] == "exited" and ps()[name]["status"] == "stopped"
    narrow = cli("ps", env={"COLUMNS": "80"}).stdout
    assert f"{name} " in narrow and "stopped" in narrow and "exited (" not in narrow
    assert "…" not in narrow and str(tiny_model) in "".join(narrow.split())  # folded, not cut
    start = cli("start", name)
    assert start.returncode == 0, start.stderr
    assert start.stdout.startswith(f"{name} started")
    assert chat(port, served).choices
    again = cli("start", name)
    assert again.returncode == 0 and again.stdout.strip() == f"{name} already running"

    refused = cli("rm", name)
    assert refused.returncode == 1 and "is running" in refused.stderr and "rm -f" in refused.stderr
    assert cli("rm", "-f", name).returncode == 0
    assert name not in ps()
    inspect = cli("inspect", name)
    assert inspect.returncode == 1 and "no deployment named" in inspect.stderr


def test_bad_engine_flag_fails_fast_with_diagnosis(
    home: Path, engine_image: str, tiny_model: Path, name: str
) -> None:
    t0 = time.monotonic()
    up = cli("up", str(tiny_model), "--engine", "transformers", "--name", name, "--", "--no-such-flag")
    assert up.returncode == 1
    assert time.monotonic() - t0 < 60
    assert "does not know one of the flags" in up.stderr and "--no-such-flag" in up.stderr
    assert ps()[name]["state"] == "exited"  # kept, stopped, so its log can be read


def test_taken_port_is_refused_and_nothing_created(
    home: Path, engine_image: str, tiny_model: Path, name: str
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        up = cli("up", str(tiny_model), "--engine", "transformers", "--name", name, "--port", str(port))
    assert up.returncode == 1 and f"port {port} is already in use" in up.stderr and "--port auto" in up.stderr
    assert name not in ps()


def test_missing_image_and_gpu_without_runtime(
    home: Path, engine_image: str, tiny_model: Path, name: str
) -> None:
    missing = cli(
        "up", str(tiny_model), "--engine", "transformers", "--name", name, "--image", "llmdock/nope:0"
    )
    assert missing.returncode == 1 and "docker pull llmdock/nope:0" in missing.stderr
    gpu = cli(
        "up", str(tiny_model), "--engine", "vllm", "--image", engine_image, "--name", name, "--gpus", "all"
    )
    assert gpu.returncode == 1 and "nvidia-container-toolkit" in gpu.stderr
    assert name not in ps()


def test_procedure_dry_run_json(home: Path, tmp_path: Path, docker_client: Any) -> None:
    from tests.support.modelconfigs import qwen25_vl_72b_config

    model = tmp_path / "Qwen2.5-VL-72B-Instruct"  # its config.json: the planner checks TP and context
    model.mkdir()
    (model / "config.json").write_text(json.dumps(qwen25_vl_72b_config()))
    args = [
        "up",
        str(model),
        "--name",
        "qwen2.5-vl-72b",
        "--engine",
        "vllm",
        "--port",
        "8001",
        "--dtype",
        "bfloat16",
        "--limit-mm-per-prompt",
        "image=5,video=5",
        "--tensor-parallel-size",
        "8",
        "--gpu_memory_utilization",
        "0.9",
        "--max-model-len",
        "73480",
        "--gpus",
        "all",
        "--image",
        "qwenllm/qwenvl:2.5-cu121",
        "--dry-run",
        "--json",
    ]
    done = cli(*args)
    assert done.returncode == 0, done.stderr  # only this host's state is missing (image, GPUs)
    plan = json.loads(done.stdout)
    # The image is absent, so its vLLM cannot be probed: the seed image is known to ship a vLLM before
    # 0.7.2, whose --limit-mm-per-prompt takes key=value (JSON came in 0.8.5), and the plan says so.
    assert plan["command"] == [
        "vllm",
        "serve",
        "/work/Qwen2.5-VL-72B-Instruct",
        "--port",
        "8001",
        "--host",
        "127.0.0.1",
        "--served-model-name",
        "qwen2.5-vl-72b",
        "--dtype",
        "bfloat16",
        "--limit-mm-per-prompt",
        "image=5,video=5",
        "--tensor-parallel-size",
        "8",
        "--gpu-memory-utilization",
        "0.9",
        "--max-model-len",
        "73480",
    ]
    c = plan["container"]
    assert c["image"] == "qwenllm/qwenvl:2.5-cu121" and c["name"] == "qwen2.5-vl-72b"
    assert c["ipc_mode"] == "host" and c["network_mode"] == "host" and c["detach"] is True
    assert c["mounts"][0]["read_only"] is True and c["env"]["HF_HUB_OFFLINE"] == "1"
    assert c["labels"]["io.llmdock.name"] == "qwen2.5-vl-72b"
    assert c["device_requests"][0]["capabilities"] == [["gpu"]]
    assert c["device_requests"][0]["device_ids"] == [str(i) for i in range(8)]  # stand-ins for --tp 8
    problems = " ".join(plan["problems"])
    assert "not present" in problems and "NVIDIA runtime" in problems and plan["blocking"] == []
    assert any("assumed 0.6.3" in n and "`up` probes the image" in n for n in plan["notes"])
    assert plan["docker_run"].startswith("docker run -d --name qwen2.5-vl-72b --gpus")
    assert docker_client.containers.list(all=True, filters={"name": "qwen2.5-vl-72b"}) == []
    human = cli(*args[:-1])
    assert human.returncode == 0
    assert "docker run -d --name qwen2.5-vl-72b" in human.stdout and "! image" in human.stdout
    assert "with warnings about this host" in human.stdout and "none visible on this host" in human.stdout
    tp3 = cli(*[a if a != "8" else "3" for a in args[:-1]])  # 3 does not divide the 64 heads: the request
    assert tp3.returncode == 1 and "cannot deploy" in tp3.stdout and "✗ tensor parallel size 3" in tp3.stdout


def test_cli_killed_during_up_leaves_a_deployment_ps_shows(
    home: Path, engine_image: str, tiny_model: Path, name: str, docker_client: Any
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmdock.cli.main",
            "up",
            str(tiny_model),
            "--engine",
            "transformers",
            "--name",
            name,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    deadline = time.monotonic() + 60
    while not docker_client.containers.list(all=True, filters={"name": name}) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert name in ps()
    assert cli("rm", "-f", name).returncode == 0
    assert docker_client.containers.list(all=True, filters={"name": name}) == []


def test_ctrl_c_during_up_says_what_keeps_running_and_how_to_stop_it(
    home: Path, tiny_model: Path, name: str, docker_client: Any
) -> None:
    from llmdock.demo.image import VLLM_TAG, ensure_engine_image

    ensure_engine_image(docker_client, VLLM_TAG, log=lambda _: None)
    # vLLM takes about a minute to serve: the interrupt always lands while `up` still waits
    argv = [
        sys.executable,
        "-m",
        "llmdock.cli.main",
        "up",
        str(tiny_model),
        "--engine",
        "vllm",
        "--gpus",
        "none",
    ]
    proc = subprocess.Popen([*argv, "--name", name], stderr=subprocess.PIPE, text=True, env={**os.environ})
    deadline = time.monotonic() + 60
    while not docker_client.containers.list(all=True, filters={"name": name}) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert f"{name} keeps starting in the background" in stderr and f"llmdock rm -f {name}" in stderr
    assert name in ps()


def test_ps_and_up_work_without_the_database(
    home: Path, engine_image: str, tiny_model: Path, name: str
) -> None:
    args = ["up", str(tiny_model), "--engine", "transformers", "--name", name, "--no-wait"]
    assert cli(*args).returncode == 0
    (home / "state.db").unlink()
    for extra in ("state.db-wal", "state.db-shm"):
        (home / extra).unlink(missing_ok=True)
    assert ps()[name]["engine"] == "transformers"
    again = cli(*args, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["action"] == "unchanged"
    events = json.loads(cli("inspect", name).stdout)["events"]
    assert [e["kind"] for e in events] == ["adopted"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["up", "/nonexistent/model", "--engine", "transformers"], "neither a local directory"),
        (["up", "/tmp", "--engine", "transformers", "--name", "../x"], "not allowed"),
        (["up", "/tmp", "--gpus", "zero"], "not understood"),
        (["logs", "llmdock-no-such"], "no deployment named"),
        (["config", "set", "colour", "red"], "unknown setting"),
    ],
)
def test_bad_input_is_one_line_and_a_hint(
    home: Path, docker_client: Any, args: list[str], fragment: str
) -> None:
    done = cli(*args)
    assert done.returncode == 1
    assert fragment in done.stderr and "hint:" in done.stderr and "Traceback" not in done.stderr


def test_unreachable_daemon_says_how_to_start_it(home: Path) -> None:
    no_daemon = {"LLMDOCK_DOCKER_HOST": "unix:///tmp/llmdock-no-daemon.sock"}
    listed = cli("ps", env=no_daemon)  # local deployments are still listed, with a note
    assert listed.returncode == 0 and "not reachable" in listed.stderr
    done = cli("logs", "llmdock-no-such", env=no_daemon)
    assert done.returncode == 1 and "not reachable" in done.stderr and "dockerd" in done.stderr


def test_config_set_get_and_env_override(home: Path) -> None:
    assert cli("config", "set", "image.vllm", "qwenllm/qwenvl:2.5-cu121").returncode == 0
    assert cli("config", "get", "image.vllm").stdout.strip() == "qwenllm/qwenvl:2.5-cu121"
    assert "config file" in cli("config", "list").stdout
    env = {"LLMDOCK_IMAGE_VLLM": "other:1"}
    assert cli("config", "get", "image.vllm", env=env).stdout.strip() == "other:1"
