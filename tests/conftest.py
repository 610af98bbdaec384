"""Shared fixtures: a real Docker daemon, the locally built CPU engine image, the tiny model.

Docker tests need what ``scripts/ci-setup`` provides (dockerd running, the image built); they fail
loudly rather than skip when it is missing, so CI cannot pass by testing nothing.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    from llmdock.errors import RuntimeUnavailable
    from llmdock.runtimes.docker import connect

    try:
        client = connect()
    except RuntimeUnavailable as e:
        pytest.fail(f"{e.message} — run scripts/ci-setup first")
    yield client
    client.close()


@pytest.fixture(scope="session")
def engine_image(docker_client: Any) -> str:
    from llmdock.demo.image import ensure_engine_image

    return ensure_engine_image(docker_client, log=lambda _: None)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmdock.demo.tinymodel import ensure_tiny_model

    path = ensure_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen")
    for f in path.iterdir():
        f.chmod(0o644)
    return path


@pytest.fixture
def model(tmp_path: Path) -> str:
    """A minimal weights directory (just a config.json) for lifecycle tests that never start an engine."""
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return str(d)


@contextlib.contextmanager
def own_home(path: Path) -> Iterator[Path]:
    """LLMDOCK_HOME set to ``path`` (and no other LLMDOCK_* variable) for a module-scoped fixture."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMDOCK_HOME", str(path))
        for var in [v for v in os.environ if v.startswith("LLMDOCK_") and v != "LLMDOCK_HOME"]:
            mp.delenv(var)
        yield path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh LLMDOCK_HOME for each test, so state never leaks between tests."""
    h = tmp_path / "llmdock-home"
    monkeypatch.setenv("LLMDOCK_HOME", str(h))
    for var in [v for v in os.environ if v.startswith("LLMDOCK_") and v != "LLMDOCK_HOME"]:
        monkeypatch.delenv(var)
    return h


@pytest.fixture
def name(docker_client: Any) -> Iterator[str]:
    """A unique deployment name; whatever container carries it is removed after the test."""
    import docker

    n = f"t-{uuid.uuid4().hex[:8]}"
    yield n
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.containers.get(n).remove(force=True)


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the real ``llmdock`` command line in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "llmdock.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
