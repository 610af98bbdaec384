"""What `pip install llmdock` gives a new user, in a fresh venv with the base install only (no extras,
no torch): `pull` through both hub SDKs (against the loopback hub), `serve --help`, and `llmdock demo`,
which builds its tiny model inside its own engine environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.hub import LocalHub, hub_env, tiny_model_files

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("base") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", "--no-compile", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def run(
    venv: Path, *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LLMDOCK_", "VIRTUAL_ENV"))}
    return subprocess.run(
        [str(venv / "bin/llmdock"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, **env, "COLUMNS": "200"},
    )


def test_the_base_install_has_no_torch_and_every_command(base_venv: Path, tmp_path: Path) -> None:
    python = str(base_venv / "bin/python")
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0
    for command in (["pull", "--help"], ["serve", "--help"], ["demo", "--help"], ["keys", "ls"]):
        done = run(base_venv, *command, env={"LLMDOCK_HOME": str(tmp_path / "home")})
        assert done.returncode == 0, (command, done.stderr)
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize("source", ["modelscope", "huggingface"])
def test_pull_works_from_the_base_install(base_venv: Path, tmp_path: Path, source: str) -> None:
    with LocalHub() as hub:
        hub.add_repo("tiny/model", tiny_model_files())
        env = {**hub_env(hub.url), "LLMDOCK_HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf")}
        done = run(base_venv, "pull", "tiny/model", "--source", source, env=env)
    assert done.returncode == 0, done.stderr
    assert "verified" in done.stdout


def test_demo_works_from_the_base_install(base_venv: Path, tmp_path: Path) -> None:
    """The engine environment (torch + transformers) is built by the demo itself; the tiny model is
    built in it; Docker is not needed (the daemon named here does not exist)."""
    env = {"LLMDOCK_HOME": str(tmp_path / "home"), "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    done = run(base_venv, "demo", "--rm", env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("engine  transformers") for line in lines), done.stdout
    assert any(line.startswith("ready   http://127.0.0.1:") for line in lines), done.stdout
    assert any(line.startswith("tokens  ") and " out" in line for line in lines), done.stdout
    assert (tmp_path / "home/models/demo/tiny-qwen/model.safetensors").is_file()
    assert "removed llmdock-demo" in done.stdout
