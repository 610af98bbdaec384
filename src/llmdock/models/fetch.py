"""Fetch one file into a staging directory: resumable, hashed while written, verified before it counts.

Bytes go to ``NAME.part``; a dropped connection resumes from the bytes already on disk (a Range request;
when the server ignores it, the part restarts from zero). sha256 is computed as the bytes arrive, so a
multi-gigabyte shard is read once, not written and then read again. Only a file whose digest matches
the hub's is renamed to ``NAME`` — a corrupt one is deleted and fetched once more, then refused.

Progress events (dicts) go to a callback from the worker thread that fetches the file::

    {"event": "file_start", "path": P, "size": N, "offset": O}
    {"event": "progress", "path": P, "done": D, "size": N, "delta": d}   # d < 0 when a part restarts
    {"event": "retry", "path": P, "offset": O, "error": "…"}
    {"event": "file_done", "path": P, "size": N, "sha256": H}
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from llmdock.errors import HubError, IntegrityError
from llmdock.models.hubs import Hub, RemoteFile
from llmdock.models.manifest import FileRecord
from llmdock.models.names import PART_SUFFIX

Progress = Callable[[dict[str, Any]], None]
ATTEMPTS = 5
BACKOFF_S = 0.2  # first wait between attempts; doubles each time, at most 5 s
READ_BLOCK = 8 << 20
WRITE_BLOCK = 4 << 20  # coalesce network pieces into big writes (and big hash updates)


def _quiet(event: dict[str, Any]) -> None:
    pass


class Hashers:
    """sha256 always; a git blob sha1 too when that is all the hub gives (Hugging Face small files)."""

    def __init__(self, remote: RemoteFile) -> None:
        self.remote = remote
        self.reset()

    def reset(self) -> None:
        self.sha256 = hashlib.sha256()
        self.sha1: Any = None
        if self.remote.sha256 is None and self.remote.git_sha1 is not None:
            self.sha1 = hashlib.sha1(b"blob %d\0" % self.remote.size, usedforsecurity=False)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.sha256.update(data)
        if self.sha1 is not None:
            self.sha1.update(data)

    def check(self) -> tuple[str, str]:
        """(sha256 hex, what was checked); raises IntegrityError on a mismatch."""
        digest = self.sha256.hexdigest()
        r = self.remote
        if r.sha256 is not None:
            ok, checked = digest == r.sha256.lower(), "sha256"
        elif self.sha1 is not None and r.git_sha1 is not None:
            ok, checked = self.sha1.hexdigest() == r.git_sha1.lower(), "git-sha1"
        else:
            ok, checked = True, "size"
        if not ok:
            raise IntegrityError(
                f"{r.path}: checksum does not match the hub's ({checked})",
                "the download was corrupted in transit or on disk; run the pull again",
                files=[r.path],
            )
        return digest, checked


def hash_file(path: Path, hashers: Hashers | None = None, limit: int | None = None) -> str:
    """sha256 of a file (or of its first ``limit`` bytes), fed into ``hashers`` when given."""
    h = hashers or Hashers(RemoteFile(path.name, 0))
    left = limit
    with path.open("rb", buffering=0) as f:
        buf = bytearray(READ_BLOCK)
        view = memoryview(buf)
        while left is None or left > 0:
            n = f.readinto(buf)
            if not n:
                break
            if left is not None:
                n = min(n, left)
                left -= n
            h.update(view[:n])
    return h.sha256.hexdigest()


def fetch_file(
    hub: Hub,
    repo_id: str,
    commit: str,
    remote: RemoteFile,
    staging: Path,
    progress: Progress = _quiet,
    attempts: int = ATTEMPTS,
    fsync: bool = False,
) -> FileRecord:
    """Fetch ``remote`` into ``staging/remote.path`` (resuming ``.part``) and return its verified record.

    ``fsync`` forces each file to disk before it counts. Off by default, like the hubs' own tools: the
    bytes were verified as they were written, the OS writes them back within seconds, and a power cut
    in that window is what ``llmdock models verify`` is for. On, a pull runs at the disk's write speed.
    """
    final = staging / remote.path
    part = final.with_name(final.name + PART_SUFFIX)
    part.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        hashers = Hashers(remote)
        done = part.stat().st_size if part.exists() else 0
        if done > remote.size:
            part.unlink()
            done = 0
        if done:
            hash_file(part, hashers, limit=done)
        progress({"event": "file_start", "path": remote.path, "size": remote.size, "offset": done})
        try:
            if done < remote.size:
                done = _stream(hub, repo_id, commit, remote, part, done, hashers, progress, fsync)
            else:
                part.touch()
            if done != remote.size:
                raise HubError(f"{remote.path}: the hub sent {done} of {remote.size} bytes")
            digest, checked = hashers.check()
        except HubError as e:
            if attempt == attempts:
                raise HubError(
                    f"{remote.path}: download kept failing after {attempts} attempts: {e.message}",
                    "check the network or the hub endpoint, then run the same pull again: it resumes",
                ) from e
            kept = part.stat().st_size if part.exists() else 0
            progress({"event": "retry", "path": remote.path, "offset": kept, "error": e.message})
            time.sleep(min(BACKOFF_S * 2 ** (attempt - 1), 5.0))
            continue
        except IntegrityError:
            part.unlink(missing_ok=True)
            progress(
                {"event": "progress", "path": remote.path, "done": 0, "size": remote.size, "delta": -done}
            )
            if attempt >= 2:
                raise
            progress({"event": "retry", "path": remote.path, "offset": 0, "error": "checksum mismatch"})
            continue
        part.replace(final)
        progress({"event": "file_done", "path": remote.path, "size": remote.size, "sha256": digest})
        return FileRecord(remote.path, remote.size, digest, checked)
    raise AssertionError("unreachable")


def _stream(
    hub: Hub,
    repo_id: str,
    commit: str,
    remote: RemoteFile,
    part: Path,
    done: int,
    hashers: Hashers,
    progress: Progress,
    fsync: bool,
) -> int:
    """Append the body to ``part`` in big writes; bytes that arrived before a drop are kept for resume."""
    with hub.open_file(repo_id, commit, remote.path, done) as body:
        if body.start != done:  # the server ignored the Range: start over
            event = {"event": "progress", "path": remote.path, "done": 0, "size": remote.size, "delta": -done}
            progress(event)
            hashers.reset()
            done = body.start
        with part.open("r+b" if part.exists() else "wb", buffering=0) as f:
            f.seek(done)
            f.truncate()
            buf = bytearray()

            def flush() -> int:
                """Write and hash what is buffered; return how many bytes that was (0: nothing).

                The buffer is emptied before anything that can raise is called: the progress
                callback raises to cancel (a sibling failed, Ctrl-C), and the ``finally`` below
                flushes once more on the way out, which must not write the same bytes twice.
                """
                nonlocal done
                if not buf:
                    return 0
                if done + len(buf) > remote.size:
                    raise IntegrityError(
                        f"{remote.path}: the hub sent more than the {remote.size} bytes it listed",
                        "the hub's listing and its file disagree; try again later or another --source",
                        files=[remote.path],
                    )
                f.write(buf)
                hashers.update(buf)
                done += len(buf)
                n = len(buf)
                buf.clear()
                return n

            def report(n: int) -> None:
                if n:
                    event = {"event": "progress", "path": remote.path, "done": done, "size": remote.size}
                    progress({**event, "delta": n})

            if body.readinto is not None:
                done = _read_into(body.readinto, f, remote, done, hashers, progress)
            else:
                try:
                    for chunk in body.chunks:
                        buf += chunk
                        if len(buf) >= WRITE_BLOCK:
                            report(flush())
                except BaseException:
                    flush()  # bytes that arrived before a drop or a cancel are good: keep them, quietly
                    raise
                report(flush())
            if fsync and done == remote.size:
                os.fsync(f.fileno())
    return done


def _read_into(
    readinto: Callable[[memoryview], int],
    f: BinaryIO,
    remote: RemoteFile,
    done: int,
    hashers: Hashers,
    progress: Progress,
) -> int:
    """Fill one reused buffer from the socket, then write and hash it: no per-chunk allocations."""
    buf = memoryview(bytearray(WRITE_BLOCK))

    def keep(data: memoryview) -> None:
        nonlocal done
        f.write(data)
        hashers.update(data)
        done += len(data)
        event = {"event": "progress", "path": remote.path, "done": done, "size": remote.size}
        progress({**event, "delta": len(data)})

    while done < remote.size:
        want = min(WRITE_BLOCK, remote.size - done)
        if fill(readinto, buf[:want], keep) < want:
            break
    return done


def fill(readinto: Callable[[memoryview], int], buf: memoryview, keep: Callable[[memoryview], None]) -> int:
    """Read into ``buf`` until it is full or the body ends, then hand what arrived to ``keep`` — also
    when a read raises: bytes that arrived before a drop are good bytes, kept for the resume. Returns
    how many arrived."""
    got = 0
    try:
        while got < len(buf):
            n = readinto(buf[got:])
            if not n:
                break
            got += n
    finally:
        if got:
            keep(buf[:got])
    return got
