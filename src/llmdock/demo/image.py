"""Build the CPU engine image (``transformers serve``) locally, with no container registry.

Steps, each cached by tag: a Debian rootfs from ``mmdebstrap`` imported with ``docker import``; then a
build container on the host network installs torch (CPU) and ``transformers[serving]`` into a venv;
``docker commit`` makes it the image. Takes one to two minutes from nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmdock.errors import LlmdockError, RuntimeUnavailable

BASE_TAG = "llmdock/debian-base:bookworm"
ENGINE_TAG = "llmdock/engine-transformers:cpu"
TRANSFORMERS = "transformers[serving]==5.24.0"
TORCH = "torch==2.13.0"
WHEELS = Path("/opt/wheels")  # a local wheel cache, used when present (it holds a CPU torch here)
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
VENV = "/opt/engine"
PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _has_image(client: Any, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def ensure_base(client: Any, log: Callable[[str], None] = print) -> str:
    if _has_image(client, BASE_TAG):
        return BASE_TAG
    if shutil.which("mmdebstrap") is None:
        raise RuntimeUnavailable(
            "mmdebstrap is needed to build the base image and is not installed",
            "run `apt-get install -y mmdebstrap`",
        )
    log(f"building {BASE_TAG} with mmdebstrap (about 30 s)")
    with tempfile.TemporaryDirectory(prefix="llmdock-rootfs-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        argv = [
            "mmdebstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(tar),
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise LlmdockError(
                f"mmdebstrap failed: {done.stderr.strip()[-500:]}", "check access to the Debian mirror"
            )
        repo, tag = BASE_TAG.split(":")
        client.api.import_image_from_file(str(tar), repository=repo, tag=tag)
    return BASE_TAG


def ensure_engine_image(client: Any, tag: str = ENGINE_TAG, log: Callable[[str], None] = print) -> str:
    """Return ``tag``, building it first when this Docker host lacks it."""
    if _has_image(client, tag):
        return tag
    base = ensure_base(client, log)
    log(f"building {tag}: torch (CPU) + {TRANSFORMERS} (one to two minutes)")
    from docker.types import Mount

    mounts: list[Mount] = []
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if WHEELS.is_dir():
        mounts.append(Mount(str(WHEELS), str(WHEELS), type="bind", read_only=True))
        env["PIP_FIND_LINKS"] = str(WHEELS)
    if CA_BUNDLE.is_file():
        mounts.append(Mount("/host-ca.crt", str(CA_BUNDLE), type="bind", read_only=True))
        env["PIP_CERT"] = "/host-ca.crt"
    # Mounts and env go to the build container only (HostConfig, exec), so the commit carries neither.
    container = client.containers.run(
        base,
        ["sleep", "infinity"],
        detach=True,
        network_mode="host",
        mounts=mounts,
        labels={"io.llmdock.build": "true"},
    )
    try:
        for argv in (
            ["python3", "-m", "venv", VENV],
            [f"{VENV}/bin/pip", "install", "-q", TORCH, TRANSFORMERS],
        ):
            code, output = container.exec_run(argv, environment=env)
            if code != 0:
                tail = bytes(output).decode("utf-8", "replace").strip()[-800:]
                raise LlmdockError(
                    f"building {tag} failed at {' '.join(argv)}: {tail}", "check access to PyPI"
                )
        repo, version = tag.rsplit(":", 1)
        container.commit(repository=repo, tag=version, changes=[f"ENV PATH={PATH}", 'CMD ["python3"]'])
    finally:
        container.remove(force=True)
    return tag


if __name__ == "__main__":
    from llmdock.runtimes.docker import connect

    print(ensure_engine_image(connect()))
