"""The engine image's side of a bundle: ``docker save`` out, ``docker load`` in, through the docker SDK.

:class:`Images` is what the bundle code needs; :class:`DockerImages` is the real one (both directions
stream: the save is read in the SDK's chunks, the load is posted from a generator, so neither holds an
image in memory), :class:`MemoryImages` a plain in-memory one for unit tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from llmdock.bundle.manifest import ImageInfo
from llmdock.errors import ImageMissing, LlmdockError, RuntimeUnavailable

SAVE_CHUNK = 4 << 20


class Images(Protocol):
    def inspect(self, name: str) -> ImageInfo:
        """ID and size of image ``name``; ImageMissing when this host lacks it."""
        ...

    def has(self, image_id: str) -> bool: ...

    def save(self, name: str) -> Iterator[bytes]:
        """``docker save NAME`` (tagged, so a load re-creates the name) as a stream of chunks."""
        ...

    def load(self, data: Iterable[bytes]) -> None:
        """``docker load`` of a ``docker save`` stream."""
        ...

    def data_root(self) -> Path | None:
        """Where the daemon keeps images, when that is a directory on this machine (else None)."""
        ...


class DockerImages:
    def __init__(self, client: Any) -> None:
        self.client = client

    def inspect(self, name: str) -> ImageInfo:
        import docker

        try:
            image = self.client.images.get(name)
        except docker.errors.ImageNotFound:
            raise ImageMissing(name) from None
        except _errors() as e:
            raise _translate(e, f"inspecting image {name}") from e
        return ImageInfo(_tag(image, name) or name, image.id, int(image.attrs.get("Size") or 0))

    def has(self, image_id: str) -> bool:
        import docker

        try:
            self.client.images.get(image_id)
        except docker.errors.ImageNotFound:
            return False
        except _errors() as e:
            raise _translate(e, f"inspecting image {image_id}") from e
        return True

    def save(self, name: str) -> Iterator[bytes]:
        try:
            image = self.client.images.get(name)
            yield from image.save(chunk_size=SAVE_CHUNK, named=_tag(image, name) or False)
        except _errors() as e:
            raise _translate(e, f"`docker save {name}`") from e

    def load(self, data: Iterable[bytes]) -> None:
        try:
            # images.load would read the daemon's answer only after posting everything; the low-level
            # call streams the generator as a chunked request body
            for message in self.client.api.load_image(iter(data), quiet=True):
                if isinstance(message, dict) and message.get("error"):
                    raise LlmdockError(
                        f"`docker load` failed: {message['error']}",
                        "check the Docker daemon's disk space (`docker system df`) and run `llmdock load` again: "
                        "the verified bundle members are kept",
                    )
        except _errors() as e:
            raise _translate(e, "`docker load`") from e

    def data_root(self) -> Path | None:
        import os

        try:
            root = self.client.info().get("DockerRootDir")
        except _errors():
            return None
        host = os.environ.get("DOCKER_HOST", "")
        if not root or (host and not host.startswith("unix://")) or not Path(root).is_dir():
            return None  # a remote daemon, or one whose root this user cannot see
        return Path(root)


class MemoryImages:
    """Images in a dict, for unit tests: ``{name: bytes}``; the ID is the sha256 of the bytes."""

    def __init__(self, images: dict[str, bytes] | None = None, root: Path | None = None) -> None:
        self.images = dict(images or {})
        self.loaded: list[bytes] = []
        self.root = root

    def inspect(self, name: str) -> ImageInfo:
        if name not in self.images:
            raise ImageMissing(name)
        data = self.images[name]
        return ImageInfo(name, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))

    def has(self, image_id: str) -> bool:
        return any(self.inspect(n).id == image_id for n in self.images)

    def save(self, name: str) -> Iterator[bytes]:
        self.inspect(name)
        data = self.images[name]
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    def load(self, data: Iterable[bytes]) -> None:
        blob = b"".join(data)
        self.loaded.append(blob)
        self.images[f"loaded-{len(self.loaded)}"] = blob

    def data_root(self) -> Path | None:
        return self.root


def _tag(image: Any, name: str) -> str:
    """The tag ``docker save`` records, so that a load names the image again ('' for an untagged one)."""
    tags: list[str] = list(image.tags or [])
    for candidate in (name, f"{name}:latest"):
        if candidate in tags:
            return candidate
    return tags[0] if tags else ""


def _errors() -> tuple[type[Exception], ...]:
    from llmdock.runtimes.docker import _errors as errors

    return errors()


def _translate(e: Exception, doing: str) -> LlmdockError:
    from llmdock.runtimes.docker import START_HINT, _reason

    if isinstance(e, LlmdockError):
        return e
    return RuntimeUnavailable(f"Docker failed {doing}: {_reason(e)}", START_HINT)
