"""Bundles against the real Docker daemon (a tiny image from `docker import`, no registry): `docker save`
streamed into image parts, `docker load` only after every part matched the seal, the same image ID
back; and the llmdock wheel inside installs and imports on its own."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmdock.bundle.images import DockerImages
from llmdock.bundle.load import load_bundle
from llmdock.bundle.wheel import _repack, llmdock_wheel
from llmdock.bundle.write import write_bundle
from llmdock.errors import ImageMissing, IntegrityError
from llmdock.models.store import ModelStore
from tests.support import bundles

pytestmark = pytest.mark.docker
PART = 1 << 20


@pytest.fixture
def image(docker_client: Any) -> Iterator[tuple[str, str]]:
    with bundles.tiny_image(docker_client) as tag_id:
        yield tag_id


@pytest.fixture
def source(tmp_path: Path) -> ModelStore:
    return bundles.source_store(tmp_path)


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    return bundles.stand_in_wheel(tmp_path)


def write(source: ModelStore, wheel: Path, tag: str, client: Any) -> bytes:
    out = io.BytesIO()
    write_bundle(
        source, "tiny/model", out, wheel=wheel, image=tag, images=DockerImages(client), part_bytes=PART
    )
    return out.getvalue()


def load(target: ModelStore, data: bytes, client: Any, tmp_path: Path) -> Any:
    return load_bundle(
        target,
        io.BytesIO(data),
        seekable=True,
        wheels_dir=tmp_path / "wheels",
        images=lambda: DockerImages(client),
    )


def test_docker_save_and_load_round_trip(
    docker_client: Any, image: tuple[str, str], source: ModelStore, wheel: Path, tmp_path: Path
) -> None:
    tag, image_id = image
    data = write(source, wheel, tag, docker_client)
    parts = [info.name for info, _ in bundles.members(data) if info.name.startswith("image/")]
    assert len(parts) >= 3  # a 3 MiB layer in 1 MiB parts

    target = ModelStore(tmp_path / "models-dst", reserve=0)
    done = load(target, data, docker_client, tmp_path)
    assert not done.image_loaded  # the same daemon has it: nothing to load
    docker_client.images.remove(image_id, force=True)

    target2 = ModelStore(tmp_path / "models-dst2", reserve=0)
    done = load(target2, data, docker_client, tmp_path)
    assert done.image_loaded and docker_client.images.get(tag).id == image_id
    assert done.model.status == "verified" and target2.verify("tiny/model").ok


def test_a_tampered_image_part_is_never_loaded(
    docker_client: Any, image: tuple[str, str], source: ModelStore, wheel: Path, tmp_path: Path
) -> None:
    import docker

    tag, image_id = image
    bad = bundles.rebuild(
        write(source, wheel, tag, docker_client), bundles.flip_byte("image/docker-save.000001")
    )
    docker_client.images.remove(image_id, force=True)
    target = ModelStore(tmp_path / "models-dst", reserve=0)
    with pytest.raises(IntegrityError) as e:
        load(target, bad, docker_client, tmp_path)
    assert "image/docker-save.000001" in e.value.message
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image_id)
    assert target.list() == []


def test_a_missing_image_is_refused_before_writing(
    docker_client: Any, source: ModelStore, wheel: Path
) -> None:
    out = io.BytesIO()
    with pytest.raises(ImageMissing) as e:
        write_bundle(
            source,
            "tiny/model",
            out,
            wheel=wheel,
            image="llmdock-test/absent:none",
            images=DockerImages(docker_client),
        )
    assert "llmdock-test/absent:none" in e.value.message and out.getvalue() == b""


@pytest.mark.slow
def test_the_wheel_installs_offline_and_can_be_packed_again(tmp_path: Path) -> None:
    """Built from this checkout (pip wheel --no-deps), installed with --no-index into a bare target,
    imported; then from that installed copy (no source tree) llmdock packs itself into a wheel again."""
    built, how = llmdock_wheel(tmp_path / "w1")
    assert built.name.startswith("llmdock-") and "pip wheel" in how
    first = _install(built, tmp_path / "site1")
    packed = subprocess.run(
        [sys.executable, "-c", "from pathlib import Path; from llmdock.bundle.wheel import llmdock_wheel; "
         f"p, how = llmdock_wheel(Path({str(tmp_path / 'w2')!r})); print(p); print(how)"],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(first)},
        cwd=tmp_path,
    )  # fmt: skip
    path, how = packed.stdout.splitlines()
    assert how == "packed from the installed distribution"
    _install(Path(path), tmp_path / "site2")
    _install(_repack(tmp_path / "w3"), tmp_path / "site3")  # packed from this (editable) install, no build


def _install(wheel: Path, target: Path) -> Path:
    argv = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-index",
        "-q",
        "--target",
        str(target),
        str(wheel),
    ]
    subprocess.run(argv, check=True, capture_output=True)
    assert (target / "bin" / "llmdock").is_file()  # the console script comes with it
    version = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); import llmdock, llmdock.cli.bundle; "
         "print(llmdock.__file__, llmdock.__version__)"],
        capture_output=True, text=True, check=True, cwd=target,
    ).stdout  # fmt: skip
    assert version.startswith(str(target)) and version.split()[-1] == "0.1.0"
    return target
