"""Weights copied to a host through its Docker (:mod:`llmdock.hosts.weights`), against this host's real
Docker: copied once and verified, not again when they match, again when they do not, refused before
anything is written when the disk is too small."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmdock.errors import InsufficientSpace
from llmdock.hosts.weights import ensure_weights, remote_path

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def base(docker_client: Any) -> str:
    from llmdock.demo.image import ensure_base

    return ensure_base(docker_client, log=lambda _: None)


def weights(tmp_path: Path) -> Path:
    src = tmp_path / "here" / "org" / "Model-7B"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"model_type": "qwen2"}')
    (src / "sub" / "model.safetensors").write_bytes(bytes(range(256)) * 4096)
    return src


def test_copied_once_verified_and_again_only_when_changed(
    docker_client: Any, base: str, tmp_path: Path
) -> None:
    src = weights(tmp_path)
    there = tmp_path / "there"
    there.mkdir()
    remote = remote_path(src, tmp_path / "here", str(there))
    assert remote == str(there / "org" / "Model-7B")

    def ensure(free: int | None = None) -> bool:
        return ensure_weights(docker_client, base, src, remote, str(there), host="h", free_bytes=free)

    assert ensure() is True
    for f in ("config.json", "sub/model.safetensors"):
        assert (Path(remote) / f).read_bytes() == (src / f).read_bytes()
    assert ensure(free=1) is False  # there and equal: nothing to copy, so no space needed
    (Path(remote) / "sub" / "model.safetensors").write_bytes(b"corrupt")
    assert (
        ensure() is True
        and (Path(remote) / "sub" / "model.safetensors").read_bytes()
        == (src / "sub" / "model.safetensors").read_bytes()
    )
    assert not [p.name for p in there.iterdir() if p.name.startswith(".llmdock-incoming")]

    other = str(there / "org" / "Other")
    with pytest.raises(InsufficientSpace) as e:
        ensure_weights(docker_client, base, src, other, str(there), host="h", free_bytes=1000)
    assert "host h has 0.0 GiB free" in e.value.message and e.value.need > 1000
    assert not Path(other).exists()
