"""The local runtime with real processes: the tiny model served by `transformers serve` from a real
venv, Docker pointed at a socket that does not exist (so nothing here can lean on it)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli

NO_DOCKER = "unix:///tmp/llmdock-no-daemon.sock"


@pytest.fixture(scope="session")
def envs_dir(request: pytest.FixtureRequest) -> Path:
    """The demo's engine environment (a real venv, built once and cached across runs: ~40 s)."""
    from llmdock.demo.env import ensure_demo_env
    from llmdock.envs import Envs

    root = Path(request.config.cache.mkdir("llmdock-envs"))
    ensure_demo_env(Envs(root))
    return root


@pytest.fixture
def local(home: Path, envs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMDOCK_ENVS_DIR", str(envs_dir))
    monkeypatch.setenv("LLMDOCK_DOCKER_HOST", NO_DOCKER)
    return home


@pytest.fixture
def lname(local: Path) -> Iterator[str]:
    """A unique local deployment name; its process is ended and its state removed afterwards."""
    from llmdock.envs import Envs
    from llmdock.runtimes.local import LocalRuntime

    n = f"t-{uuid.uuid4().hex[:8]}"
    yield n
    rt = LocalRuntime(local / "local", Envs(local / "envs"))
    if rt.get(n) is not None:
        rt.remove(n, force=True)


def ps() -> dict[str, dict[str, Any]]:
    done = cli("ps", "--json")
    assert done.returncode == 0, done.stderr
    return {d["name"]: d for d in json.loads(done.stdout)}


def state(home: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((home / "local" / name / "state.json").read_text()))


def chat(port: int, model: str) -> Any:
    from openai import OpenAI

    with OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60) as client:
        return client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=4
        )


def up_args(model: Path, name: str, *extra: str) -> list[str]:
    return [
        "up",
        str(model),
        "--engine",
        "transformers",
        "--runtime",
        "local",
        "--env",
        "llmdock-demo",
        "--name",
        name,
        *extra,
    ]


def test_up_ready_chat_stop_start_rm(local: Path, tiny_model: Path, lname: str) -> None:
    up = cli(*up_args(tiny_model, lname, "--json"))
    assert up.returncode == 0, up.stderr
    result = json.loads(up.stdout)
    assert result["action"] == "created" and result["ready_after_s"] > 0 and result["docker_run"] is None
    port, served = result["port"], result["served_model_name"]
    assert served == str(tiny_model.resolve()) and result["container"]["mounts"] == []
    assert chat(port, served).usage.completion_tokens > 0

    listed = ps()[lname]
    assert listed["state"] == "running" and listed["runtime"] == "local" and listed["port"] == port
    st = state(local, lname)
    pid = st["pid"]
    assert os.getsid(pid) == pid  # its own session: it outlived the CLI
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"CUDA_VISIBLE_DEVICES=" in env and b"HF_HUB_OFFLINE=1" in env

    logs = cli("logs", lname, "--tail", "50")
    assert logs.returncode == 0 and "/v1/chat/completions" in logs.stdout
    assert json.loads(cli(*up_args(tiny_model, lname, "--json")).stdout)["action"] == "unchanged"

    assert cli("stop", lname, "--timeout", "10").returncode == 0
    assert ps()[lname]["state"] == "exited"
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    start = cli("start", lname)
    assert start.returncode == 0, start.stderr
    assert chat(port, served).choices
    assert (local / "local" / lname / "engine.log.1").is_file()  # the first run's log, rotated

    refused = cli("rm", lname)
    assert refused.returncode == 1 and "is running" in refused.stderr
    new_pid = state(local, lname)["pid"]
    assert cli("rm", "-f", lname).returncode == 0
    assert lname not in ps() and not (local / "local" / lname).exists()
    assert not Path(f"/proc/{new_pid}").exists() or _zombie(new_pid)


def _zombie(pid: int) -> bool:
    """Exited but not reaped: this container's PID 1 does not reap orphans."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True


def test_sigkill_is_detected_as_failed_with_the_logs_kept(local: Path, tiny_model: Path, lname: str) -> None:
    from llmdock import settings
    from llmdock.cli.deploy import runtimes
    from llmdock.engines import get_engine
    from llmdock.errors import EngineFailed
    from llmdock.lifecycle import Lifecycle
    from llmdock.readiness import wait_ready
    from llmdock.spec import DeploymentSpec
    from llmdock.state import Store

    s = settings.load()
    store = Store(s.db_path)
    try:
        lc = Lifecycle(s, runtimes(s), store)
        spec = DeploymentSpec.create(
            str(tiny_model), name=lname, engine="transformers", runtime="local", engine_env="llmdock-demo"
        )
        lc.up(spec, wait=False)
        pid = state(local, lname)["pid"]
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineFailed) as e:
            wait_ready(lc.runtimes.named("local"), lname, get_engine("transformers"), timeout=60)
        assert "exited with code 137" in e.value.message  # reaped by us, its parent: the code is known
        dep = lc.get(lname)
        assert dep.state == "exited" and dep.exit_code == 137 and "without `llmdock stop`" in dep.error
    finally:
        store.close()
    # The CLI sees it too, logs stay readable, doctor calls it stale.
    assert ps()[lname]["state"] == "exited"
    assert cli("logs", lname).returncode == 0
    report = json.loads(cli("doctor", "--json").stdout)
    stale = next(c for c in report["checks"] if c["name"] == "stale deployments")
    assert stale["status"] == "warn" and lname in stale["detail"]


def test_crash_after_ready_shows_in_ps(local: Path, tiny_model: Path, lname: str) -> None:
    assert cli(*up_args(tiny_model, lname)).returncode == 0
    pid = state(local, lname)["pid"]
    os.kill(pid, signal.SIGKILL)  # not our child: reaped by init (or left a zombie), code unknown
    deadline = time.monotonic() + 10
    while ps()[lname]["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    listed = ps()[lname]
    assert listed["state"] == "exited" and "without `llmdock stop`" in listed["error"]
    table = cli("ps")
    assert "crashed" in table.stdout
    start = cli("start", lname)  # and it comes back
    assert start.returncode == 0, start.stderr


def test_cli_killed_during_up_leaves_a_process_ps_shows_and_rm_ends(
    local: Path, tiny_model: Path, lname: str
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmdock.cli.main", *up_args(tiny_model, lname)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state_file = local / "local" / lname / "state.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (state_file.exists() and state(local, lname).get("pid")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    pid = state(local, lname)["pid"]
    assert ps()[lname]["state"] == "running"
    assert cli("rm", "-f", lname).returncode == 0
    assert lname not in ps()
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid)


def test_env_ls_and_micromamba_env_used_by_name(
    local: Path, tiny_model: Path, lname: str, tmp_path: Path
) -> None:
    fake = tmp_path / "micromamba"
    fake.write_text(
        f"#!{sys.executable}\nimport runpy\n"
        f"runpy.run_path({str(Path(__file__).parents[1] / 'support' / 'fake_micromamba.py')!r}, run_name='__main__')\n"
    )
    fake.chmod(0o755)
    mm = {"MAMBA_ROOT_PREFIX": str(tmp_path / "mamba"), "MAMBA_EXE": str(fake)}
    created = cli("env", "create", "py312", "--engine", "transformers", env=mm)
    assert created.returncode == 0, created.stderr
    assert "micromamba" in created.stdout
    listed = {e["name"]: e for e in json.loads(cli("env", "ls", "--json", env=mm).stdout)}
    assert listed["py312"]["kind"] == "micromamba" and listed["py312"]["engine"] == "transformers"
    assert listed["llmdock-demo"]["kind"] == "venv" and listed["llmdock-demo"]["versions"]["transformers"]
    again = cli("env", "create", "py312", "--engine", "transformers", env=mm)
    assert again.returncode == 1 and "already exists" in again.stderr

    up = cli(
        "up",
        str(tiny_model),
        "--engine",
        "transformers",
        "--runtime",
        "local",
        "--env",
        "py312",
        "--name",
        lname,
        "--json",
        env=mm,
    )
    assert up.returncode == 0, up.stderr
    assert state(local, lname)["kind"] == "micromamba"
    in_use = cli("env", "rm", "py312", env=mm)
    assert in_use.returncode == 1 and lname in in_use.stderr
    assert cli("rm", "-f", lname, env=mm).returncode == 0
    assert cli("env", "rm", "py312", env=mm).returncode == 0
    # An environment the user made with micromamba itself is removed only with -f.
    made = subprocess.run(
        [str(fake), "create", "-y", "-n", "theirs", "python=3.12"], env={**os.environ, **mm}
    )
    assert made.returncode == 0
    foreign = cli("env", "rm", "theirs", env=mm)
    assert foreign.returncode == 1 and "did not create" in foreign.stderr and "env rm -f" in foreign.stderr
    assert cli("env", "rm", "-f", "theirs", env=mm).returncode == 0
    assert "py312" not in {e["name"] for e in json.loads(cli("env", "ls", "--json", env=mm).stdout)}


def test_half_built_venv_is_listed_incomplete_and_removable(local: Path) -> None:
    half = local / "envs" / "half"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(half)], check=True)
    env = {"LLMDOCK_ENVS_DIR": str(local / "envs")}
    listed = {e["name"]: e for e in json.loads(cli("env", "ls", "--json", env=env).stdout)}
    assert listed["half"]["complete"] is False
    assert cli("env", "rm", "half", env=env).returncode == 0 and not half.exists()
    missing = cli("env", "rm", "half", env=env)
    assert missing.returncode == 1 and "env create half" in missing.stderr


def test_demo_without_docker(local: Path) -> None:
    done = cli("demo", "--rm", timeout=600)
    assert done.returncode == 0, done.stderr
    assert "ready   http://127.0.0.1:" in done.stdout and "model   '" in done.stdout
    assert "removed llmdock-demo" in done.stdout and "llmdock-demo" not in ps()


def test_doctor_without_docker(local: Path) -> None:
    done = cli("doctor", "--json")
    report = json.loads(done.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    # This host runs engines on the local runtime (it has an engine environment): no Docker is a warning.
    docker = checks["Docker daemon"]
    assert (
        docker["status"] == "warn"
        and "the local runtime has" in docker["detail"]
        and "dockerd" in docker["fix"]
    )
    assert done.returncode == 0 and report["ok"] is True
    assert checks["NVIDIA container runtime"]["status"] == "skip"
    assert {"GPUs", "models dir", "ports", "micromamba", "stale deployments"} <= set(checks)
    human = cli("doctor")
    assert human.returncode == 0 and "Docker daemon" in human.stdout and "fix:" in human.stdout


def test_doctor_with_docker(home: Path, docker_client: Any) -> None:
    done = cli("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    version = docker_client.version()["Version"]
    assert checks["Docker daemon"]["status"] == "ok" and version in checks["Docker daemon"]["detail"]
    assert checks["NVIDIA container runtime"]["status"] in ("ok", "warn", "fail")
    assert done.returncode == (1 if any(c["status"] == "fail" for c in checks.values()) else 0)
