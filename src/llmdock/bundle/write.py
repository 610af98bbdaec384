"""Write a bundle: a model from the store, an engine image and llmdock's wheel as one tar stream.

The layout and why the image is sealed at the end are in :mod:`llmdock.bundle.manifest`. Everything
that can be checked is checked before the first byte is written (the model verified and its files the
sizes the manifest says, the image present, the wheel built), and while writing each weight file is
hashed again: a file that changed since its pull aborts the bundle (no seal is written, so the output
can never load).

Events::

    {"event": "bundle_start", "model": KEY, "image": NAME | None, "members": N, "total_bytes": T}
    {"event": "bundle_member", "path": P, "size": N}      (once written)
    {"event": "bundle_done", "members": N, "bytes": B}
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from llmdock.bundle import manifest as bm
from llmdock.bundle.images import Images
from llmdock.errors import IntegrityError
from llmdock.models import manifest
from llmdock.models.fetch import hash_file

if TYPE_CHECKING:
    from llmdock.models.store import LocalModel, ModelStore

Progress = Callable[[dict[str, Any]], None]
BUFSIZE = 1 << 20


def _quiet(event: dict[str, Any]) -> None:
    pass


def write_bundle(
    store: ModelStore,
    name: str,
    out: IO[bytes],
    *,
    wheel: Path,
    image: str | None = None,
    images: Images | None = None,
    part_bytes: int = bm.PART_BYTES,
    progress: Progress = _quiet,
) -> bm.Head:
    """Write the bundle of model ``name`` (as ``models ls`` names it), ``image`` and ``wheel`` to ``out``."""
    from llmdock import __version__

    model = store.find(name)
    _check_model(model)
    info = None
    if image is not None:
        assert images is not None, "an image needs an Images adapter"
        info = images.inspect(image)
    wheel_member = bm.Member(bm.WHEEL_DIR + wheel.name, wheel.stat().st_size, hash_file(wheel))
    m = model.manifest
    head = bm.build_head(
        bm.ModelInfo(m.source, m.repo_id, m.revision, m.commit, tuple(m.files)),
        image=info,
        wheel=wheel_member,
        llmdock_version=__version__,
        created_at=manifest.now(),
    )
    head_bytes = head.to_json().encode()  # what Head.digest hashes
    progress(
        {
            "event": "bundle_start",
            "model": model.key,
            "image": info.name if info else None,
            "members": len(head.members) + 2,
            "total_bytes": head.total_bytes + (info.size if info else 0),
        }
    )
    written = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=BUFSIZE) as tar:
        tar.copybufsize = BUFSIZE  # type: ignore[attr-defined]  # real (3.8+), not in typeshed; else 16 KiB reads
        _add(tar, bm.HEAD, len(head_bytes), io.BytesIO(head_bytes))
        sources = [wheel, *(model.path / f.path for f in m.files)]
        for member, path in zip(head.members, sources, strict=True):
            with path.open("rb") as f:
                reader = _Hashing(f)
                _add(tar, member.path, member.size, reader)
            if reader.sha256.hexdigest() != member.sha256:
                raise IntegrityError(
                    f"{path} changed since it was verified (its sha256 is not the manifest's); "
                    "the bundle was left unfinished and cannot be loaded",
                    f"run `llmdock models verify {model.key} --repair`, then bundle again",
                    files=[member.path],
                )
            written += member.size
            progress({"event": "bundle_member", "path": member.path, "size": member.size})
        parts: list[bm.Member] = []
        if info is not None and images is not None:
            for index, chunk in enumerate(_parts(images.save(info.name), part_bytes)):
                path_ = bm.image_part(index)
                _add(tar, path_, len(chunk), io.BytesIO(chunk))
                parts.append(bm.Member(path_, len(chunk), hashlib.sha256(chunk).hexdigest()))
                written += len(chunk)
                progress({"event": "bundle_member", "path": path_, "size": len(chunk)})
        seal = bm.build_seal(head_bytes, head, parts).to_json().encode()
        _add(tar, bm.SEAL, len(seal), io.BytesIO(seal))
    progress({"event": "bundle_done", "members": len(head.members) + len(parts) + 2, "bytes": written})
    return head


def _check_model(model: LocalModel) -> None:
    if model.status != "verified":
        raise IntegrityError(
            f"model {model.key} is {model.status}, not verified; only verified weights are bundled",
            f"run `llmdock models verify {model.key} --repair` (or pull it again), then bundle",
        )
    for f in model.manifest.files:
        path = model.path / f.path
        if not path.is_file() or path.stat().st_size != f.size:
            raise IntegrityError(
                f"{path} is missing or not the size its manifest says ({f.size} bytes)",
                f"run `llmdock models verify {model.key} --repair`, then bundle again",
                files=[f.path],
            )


def _add(tar: tarfile.TarFile, name: str, size: int, data: IO[bytes] | _Hashing) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, int(time.time())
    tar.addfile(info, data)  # tarfile only calls .read(n)


class _Hashing:
    """A file read by tarfile, hashed on the way (one pass over each weight file)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.sha256 = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha256.update(data)
        return data


def _parts(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Re-cut a stream of chunks into parts of ``size`` bytes (the last one shorter); one part in memory."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)
