"""Helpers for bundle tests: a tiny Docker image made with `docker import`, and tar surgery on bundles
(flip a byte in a member, add a member, cut the stream) to make tampered, unsafe and truncated ones."""

from __future__ import annotations

import contextlib
import hashlib
import io
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmdock.models.store import ModelStore

Member = tuple[tarfile.TarInfo, bytes]


def members(bundle: bytes) -> list[Member]:
    out: list[Member] = []
    if not bundle:
        return out
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:") as tar:
        for info in tar:
            f = tar.extractfile(info)
            out.append((info, f.read() if f is not None else b""))
    return out


def rebuild(bundle: bytes, change: Callable[[list[Member]], list[Member]]) -> bytes:
    """The bundle with its members passed through ``change`` (which may edit, add or drop them)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in change(members(bundle)):
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def flip_byte(name: str) -> Callable[[list[Member]], list[Member]]:
    def change(ms: list[Member]) -> list[Member]:
        out = []
        for info, data in ms:
            if info.name == name:
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
            out.append((info, data))
        return out

    return change


def insert_after_head(*extra: Member) -> Callable[[list[Member]], list[Member]]:
    def change(ms: list[Member]) -> list[Member]:
        return [ms[0], *extra, *ms[1:]]

    return change


def entry(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size, info.mode = kind, link, len(data), 0o644
    return info, data


def offset_of(bundle: bytes, name: str) -> int:
    """Where member ``name``'s data starts in the bundle (cut there and the stream ends inside it)."""
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:") as tar:
        return tar.getmember(name).offset_data


@contextlib.contextmanager
def tiny_image(client: Any, size: int = 3 << 20) -> Iterator[tuple[str, str]]:
    """A one-layer image from `docker import` of a tar holding one file of ``size`` bytes (no registry);
    yields (tag, image ID) and removes it afterwards."""
    import docker

    tag = f"llmdock-test/bundle-tiny:{uuid.uuid4().hex[:8]}"
    buf = io.BytesIO()
    blob = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(size // 32 + 1))[:size]
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("payload.bin")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    repo, t = tag.split(":")
    client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=t)
    image = client.images.get(tag)
    try:
        yield tag, image.id
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(image.id, force=True)


def source_store(tmp_path: Path) -> ModelStore:
    """A store holding tiny/model (imported with --copy from tiny_model_files)."""
    from llmdock.models.store import ModelStore
    from tests.support.hub import tiny_model_files

    files = tmp_path / "hand-downloaded"
    files.mkdir()
    for name, data in tiny_model_files().items():
        (files / name).write_bytes(data)
    store = ModelStore(tmp_path / "models-src", reserve=0)
    store.import_local(files, "tiny/model", copy=True)
    return store


def stand_in_wheel(tmp_path: Path) -> Path:
    """Bytes named like llmdock's wheel, for tests about the other members."""
    path = tmp_path / "llmdock-0.1.0-py3-none-any.whl"
    path.write_bytes(b"a stand-in wheel: these tests are about the other members")
    return path
