"""Weights on the host that runs them: copied from this host through that host's Docker, verified.

A deployment on another host mounts its weights from that host's models dir. ``up --host`` therefore
makes sure they are there first, over the same SSH tunnel as everything else and with nothing but the
host's Docker: one short-lived container of the engine image with the models dir mounted read-write

1. hashes what is already at the target path (``sha256sum``) — equal to ours: nothing to copy (also
   the case of a models dir the hosts share over NFS);
2. refuses, before anything is written, a host whose models disk has less free space than the weights;
3. receives the files as one tar stream (the Engine API's archive upload, ``docker cp``'s transport)
   into a staging folder beside the target, hashes them there, and only when every file matches moves
   the folder into place. A copy cut off or corrupted leaves the target as it was.

Example::

    remote = ensure_weights(rt, image, Path("/data/models/Qwen2.5-7B"), "/data/models/Qwen2.5-7B", models_dir)
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from llmdock.errors import InsufficientSpace, IntegrityError, LlmdockError
from llmdock.hosts.facts import MODELS_MOUNT

CHUNK = 1 << 20


def files_of(path: Path) -> list[tuple[str, int]]:
    """``(relative path, size)`` of every regular file under ``path``, sorted; links are refused."""
    found = []
    for p in sorted(path.rglob("*")):
        if p.is_symlink():
            raise LlmdockError(f"{p} is a symbolic link", "copy the weights as plain files, then deploy them")
        if p.is_file():
            found.append((p.relative_to(path).as_posix(), p.stat().st_size))
    return found


def digests(path: Path, files: list[tuple[str, int]]) -> dict[str, str]:
    out = {}
    for rel, _ in files:
        h = hashlib.sha256()
        with (path / rel).open("rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        out[rel] = h.hexdigest()
    return out


def parse_sha256sum(text: str) -> dict[str, str]:
    """``sha256sum`` output (``HEX  ./rel`` or ``HEX *./rel``) -> {rel: hex}."""
    out = {}
    for line in text.splitlines():
        digest, _, name = line.partition(" ")
        name = name.lstrip(" *")
        if len(digest) == 64 and name:
            out[name.removeprefix("./")] = digest
    return out


def remote_path(local: Path, local_models: Path, remote_models: str) -> str:
    """Where ``local`` goes on the host: the same place under its models dir (the folder's name when
    ``local`` lies outside this host's models dir)."""
    try:
        rel = local.resolve().relative_to(local_models.resolve()).as_posix()
    except ValueError:
        rel = local.name
    return str(PurePosixPath(remote_models) / rel)


def _tar_stream(local: Path, files: list[tuple[str, int]]) -> Any:
    """A file object reading a tar of ``files`` as it is written (no copy of the weights on disk)."""
    r, w = os.pipe()

    def write() -> None:
        with os.fdopen(w, "wb") as sink, tarfile.open(fileobj=sink, mode="w|") as tar:
            for rel, _ in files:
                info = tar.gettarinfo(str(local / rel), arcname=rel)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with (local / rel).open("rb") as f:
                    tar.addfile(info, f)

    threading.Thread(target=write, daemon=True, name="llmdock-weights-tar").start()
    return os.fdopen(r, "rb")


def ensure_weights(
    client: Any,
    image: str,
    local: Path,
    remote: str,
    models_dir: str,
    *,
    host: str,
    free_bytes: int | None,
    on_phase: Callable[[str], None] | None = None,
) -> bool:
    """Make ``remote`` on the host of ``client`` hold exactly the files of ``local``; True when they
    were copied, False when they were there already. Raises InsufficientSpace or IntegrityError (the
    target untouched) and the SDK's errors (the caller translates them)."""
    rel = PurePosixPath(remote).relative_to(models_dir).as_posix()
    if rel in ("", "."):
        raise LlmdockError(f"{remote} is the models dir itself", "deploy a model folder inside it")
    files = files_of(local)
    want = digests(local, files)
    inside = f"{MODELS_MOUNT}/{rel}"
    stage = f"{MODELS_MOUNT}/.llmdock-incoming-{PurePosixPath(rel).name}"
    box = client.containers.run(
        image,
        entrypoint=["sleep"],
        command=["3600"],
        network_disabled=True,
        labels={"io.llmdock.probe": "true"},
        volumes={models_dir: {"bind": MODELS_MOUNT, "mode": "rw"}},
        detach=True,
    )
    try:

        def run(*argv: str, workdir: str | None = None) -> tuple[int, str]:
            code, out = box.exec_run(list(argv), workdir=workdir, stdout=True, stderr=True)
            return int(code or 0), bytes(out or b"").decode("utf-8", "replace")

        def hashed(where: str) -> dict[str, str]:
            code, out = run("sha256sum", *[f"./{r}" for r, _ in files], workdir=where)
            return parse_sha256sum(out) if code == 0 else {}

        if run("test", "-d", inside)[0] == 0 and hashed(inside) == want:
            return False
        need = sum(size for _, size in files)
        if free_bytes is not None and need > free_bytes:
            raise InsufficientSpace(
                f"host {host} has {free_bytes / (1 << 30):.1f} GiB free in {models_dir}; the weights need "
                f"{need / (1 << 30):.1f} GiB",
                "free space there, or add the host with another --models-dir, or pick another --host",
                need=need,
                free=free_bytes,
            )
        if on_phase is not None:
            on_phase(f"copying {need / (1 << 20):.0f} MiB of weights to {host}")
        run("rm", "-rf", stage)
        run("mkdir", "-p", stage)
        with _tar_stream(local, files) as stream:
            box.put_archive(stage, stream)
        got = hashed(stage)
        bad = sorted(r for r in want if got.get(r) != want[r])
        if bad:
            run("rm", "-rf", stage)
            raise IntegrityError(
                f"the weights copied to {host} do not match: {', '.join(bad[:5])}",
                "run `up` again to copy them again; check the host's disk if it repeats",
                files=bad,
            )
        parent = str(PurePosixPath(inside).parent)
        run("mkdir", "-p", parent)
        run("rm", "-rf", inside)
        code, out = run("mv", stage, inside)
        if code != 0:
            raise LlmdockError(f"moving the weights into place on {host} failed: {out.strip()[:300]}")
        return True
    finally:
        box.remove(force=True)
