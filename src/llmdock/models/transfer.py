"""Fetch many files over HTTP in parallel byte ranges, bounded, resumable per range, verified.

The hubs' SDKs say *where* a file is (:meth:`Hub.locate` gives its URL and auth headers); the bytes
come through one ``requests`` session (urllib3's pools) shared by at most ``connections`` worker
threads, read straight from the socket into a reused buffer. Each large file is
split into ranges (:mod:`llmdock.models.ranges`), files biggest first, so every connection is busy
until the end and a per-connection cap (as CDNs apply) is multiplied by the connection count.

Per file: the first request asks for its first missing range; a 206 proves the server honours
``Range`` and only then are the file's other ranges queued. A 200 means it does not: that one response
streams the whole file instead. Redirects (CDNs answer with signed URLs) are followed. Every range
writes into ``NAME.part`` at its offset and records its progress in the sidecar; a dropped connection
retries from where that range stopped (backing off), a killed pull resumes each range where the
sidecar says. sha256 follows the contiguous prefix as ranges fill (re-reading just-written bytes from
the page cache, overlapping the download), so the check at the end is the last few ranges, not a
second pass over the file. Only a file whose digest matches the hub's is renamed to ``NAME``; a
mismatch deletes it and fetches it once more, then refuses it (:class:`IntegrityError`).

Events are fetch's (see :mod:`llmdock.models.fetch`): ``file_start``, ``progress`` (``delta`` < 0 when a
file restarts), ``retry``, ``file_done``.
"""

from __future__ import annotations

import functools
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llmdock.errors import HubError, IntegrityError, LlmdockError
from llmdock.models import fetch
from llmdock.models import ranges as rg
from llmdock.models.fetch import ATTEMPTS, READ_BLOCK, WRITE_BLOCK, Hashers, Progress
from llmdock.models.hubs import Location, RemoteFile, unreachable
from llmdock.models.manifest import FileRecord
from llmdock.models.names import PART_SUFFIX

if TYPE_CHECKING:
    import requests

STEAL_MIN = 4 << 20  # at the end, an idle connection takes over half of a range when each half has this
SAVE_EVERY_S = 1.0  # the sidecar is rewritten at most this often per file (and at every range's end)
CONNECT_TIMEOUT_S = 15.0
READ_TIMEOUT_S = 60.0
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


_warm: threading.Thread | None = None


def warm_up() -> None:
    """Import requests in the background (a fraction of a second, more on a busy machine) while the
    hub's SDK lists the files; :meth:`Transfer.run` waits for it."""
    global _warm
    if _warm is None:

        def build() -> None:
            import requests.adapters  # noqa: F401

        _warm = threading.Thread(target=build, name="llmdock-http-warm-up", daemon=True)
        _warm.start()


def session(connections: int) -> requests.Session:
    """A requests session for ``connections`` threads: one pooled connection each per host, no
    retries of its own (each range retries from where it stopped), proxies from the environment."""
    warm_up()
    assert _warm is not None
    _warm.join()
    import requests
    import requests.adapters

    s = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=connections, max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


class Cancelled(Exception):
    """A worker stops because the pull is being abandoned (a sibling failed, or Ctrl-C)."""


def already_fetched(staging: Path, remote: RemoteFile) -> int:
    """Bytes of ``remote`` already on disk in ``staging`` (what a resume will not fetch again)."""
    part = staging / (remote.path + PART_SUFFIX)
    try:
        size = part.stat().st_size
    except FileNotFoundError:
        return 0
    saved = rg.read_sidecar(part, remote.size, remote.sha256)
    return rg.fetched(saved) if saved is not None else min(size, remote.size)


class _Job:
    """One file: its ranges, its open part, its hash cursor. Workers touch it under ``lock``."""

    def __init__(self, remote: RemoteFile, location: Location, staging: Path, connections: int) -> None:
        self.remote = remote
        self.location = location
        self.final = staging / remote.path
        self.part = self.final.with_name(self.final.name + PART_SUFFIX)
        self.connections = connections
        self.lock = threading.Lock()
        self.hash_lock = threading.Lock()
        self.save_lock = threading.Lock()
        self.integrity_failures = 0
        self.saved_at = 0.0
        self.fd = -1
        self.open()

    # -- state -------------------------------------------------------------------------------------
    def open(self) -> None:
        """(Re)read what is on disk: the part, its sidecar, and hash the contiguous prefix lazily."""
        r = self.remote
        self.part.parent.mkdir(parents=True, exist_ok=True)
        size = self.part.stat().st_size if self.part.exists() else 0
        saved = rg.read_sidecar(self.part, r.size, r.sha256) if size else None
        rg.drop_tmp(self.part)
        if size > r.size:
            self.part.unlink()
            size, saved = 0, None
        self.ranges = rg.resume(r.size, size, saved, self.connections)
        self.hashers = Hashers(r)
        self.hashed = 0
        self.queued = False  # the file's other ranges were queued (after a 206 proved Range works)
        self.finishing = False  # one thread, the one that completed the last range, finishes the file
        self.finished = False  # verified and renamed: no sidecar may be written for it any more
        self.ranged = False  # the server answered a Range with 206: this file's ranges may be split
        self.multi = len(self.ranges) > 1
        if self.multi:  # written before the part first grows: a part never has bytes the sidecar lacks
            self.save(force=True)
        self.fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)

    def save(self, force: bool = False) -> None:
        if not self.multi:
            return  # a single range is a plain prefix: the part's size says it all
        if not force and time.monotonic() - self.saved_at < SAVE_EVERY_S:
            return
        if not self.save_lock.acquire(blocking=force):
            return  # another thread is saving right now
        try:
            if self.finished:
                return
            with self.lock:
                snapshot = [rg.Range(x.start, x.end, x.done) for x in self.ranges]
            rg.write_sidecar(self.part, self.remote.size, self.remote.sha256, snapshot)
            self.saved_at = time.monotonic()
        finally:
            self.save_lock.release()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def done_bytes(self) -> int:
        with self.lock:
            return rg.fetched(self.ranges)

    def claim_finish(self) -> bool:
        """True for the one caller that sees every range complete first: it finishes the file."""
        with self.lock:
            if self.finishing or not all(x.complete for x in self.ranges):
                return False
            self.finishing = True
            return True

    def restart_whole(self) -> rg.Range:
        """The server ignored Range: one range for the whole file, from zero."""
        with self.hash_lock, self.lock:
            self.ranges = [rg.Range(0, self.remote.size)]
            self.hashers.reset()
            self.hashed = 0
            self.multi = False
            rg.remove_sidecar(self.part)
            os.ftruncate(self.fd, 0)
            return self.ranges[0]

    def discard(self) -> None:
        """A checksum mismatch: forget every byte of this file (until :meth:`open` starts it again)."""
        with self.save_lock:
            self.finished = True
            self.close()
            self.part.unlink(missing_ok=True)
            rg.remove_sidecar(self.part)

    # -- hashing -----------------------------------------------------------------------------------
    def advance_hash(self, final: bool = False, written: tuple[int, memoryview] | None = None) -> None:
        """Hash what is newly contiguous from the start. Whoever holds the hash lock does it; the
        thread finishing the file waits for it (``final``) so nothing is left unhashed.

        ``written`` = (offset, bytes) just written: when they sit right at the hash cursor (the first
        range, and every byte of a single-range file) they are hashed from memory, not read back.
        """
        if not self.hash_lock.acquire(blocking=final):
            return
        try:
            if written is not None and written[0] == self.hashed:
                self.hashers.update(written[1])
                self.hashed += len(written[1])
            buf: memoryview | None = None
            while True:
                with self.lock:
                    upto = rg.contiguous(self.ranges)
                if upto <= self.hashed:
                    return
                buf = buf or memoryview(bytearray(READ_BLOCK))
                while self.hashed < upto:
                    n = os.preadv(self.fd, [buf[: min(READ_BLOCK, upto - self.hashed)]], self.hashed)
                    if n <= 0:
                        raise IntegrityError(
                            f"{self.remote.path}: the partial file is shorter than its recorded ranges",
                            "something else changed the staging directory; run the pull again",
                            files=[self.remote.path],
                        )
                    self.hashers.update(buf[:n])
                    self.hashed += n
        finally:
            self.hash_lock.release()


class Transfer:
    """Fetch ``files`` into ``staging`` through ``connections`` parallel HTTP connections.

    ``locate(path)`` says where each file is; ``on_done(record)`` is called (from a worker) as each file
    is verified and in place. :meth:`run` returns when all are done, or raises the first failure
    (after every worker stopped and every sidecar was saved).
    """

    def __init__(
        self,
        locate: Callable[[RemoteFile], Location],
        staging: Path,
        connections: int,
        progress: Progress,
        on_done: Callable[[FileRecord], None],
        fsync: bool = False,
        attempts: int = ATTEMPTS,
        http: requests.Session | None = None,
    ) -> None:
        self.locate = locate
        self.staging = staging
        self.connections = max(1, connections)
        self.progress = progress
        self.on_done = on_done
        self.fsync = fsync
        self.attempts = attempts
        self._session = http
        # (priority, order, task): ranges of files already started come before new files, so files
        # complete one after another (their hashes keep up) instead of all being half-fetched.
        self._tasks: queue.PriorityQueue[tuple[int, int, Callable[[], None] | None]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._pending = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._jobs: list[_Job] = []
        self._streaming: dict[int, tuple[_Job, rg.Range]] = {}  # ranges being fetched now, by id

    # -- the pool ----------------------------------------------------------------------------------
    def _submit(self, task: Callable[[], None], priority: int) -> None:
        with self._cond:
            self._pending += 1
        self._tasks.put((priority, next(self._order), task))

    def _worker(self) -> None:
        while (task := self._tasks.get()[2]) is not None:
            try:
                if not self._stop.is_set():
                    task()
                    if self._tasks.empty():  # the end of the pull: help the ranges still running
                        self._steal()
            except Cancelled:
                pass
            except BaseException as e:  # handed to run(), which raises it
                with self._cond:
                    self._errors.append(e)
                self._stop.set()
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()

    def run(self, files: Sequence[RemoteFile]) -> None:
        http = self._session or session(self.connections)
        self.http = http
        threads = [
            threading.Thread(target=self._worker, name=f"llmdock-pull-{i}", daemon=True)
            for i in range(self.connections)
        ]
        for t in threads:
            t.start()
        try:
            for remote in sorted(files, key=lambda f: -f.size):
                self._submit(functools.partial(self._start, remote), priority=1)
            with self._cond:
                while self._pending and not self._errors:
                    self._cond.wait(timeout=0.5)
        finally:
            self._stop.set()
            for _ in threads:
                self._tasks.put((2, next(self._order), None))
            for t in threads:
                t.join()
            for job in self._jobs:
                job.save(force=True)
                job.close()
            if self._session is None:
                http.close()
        if self._errors:
            raise self._errors[0]

    # -- one file ----------------------------------------------------------------------------------
    def _start(self, remote: RemoteFile) -> None:
        job = _Job(remote, self.locate(remote), self.staging, self.connections)
        with self._cond:
            self._jobs.append(job)
        self._begin(job)

    def _begin(self, job: _Job) -> None:
        done = job.done_bytes()
        r = job.remote
        self.progress({"event": "file_start", "path": r.path, "size": r.size, "offset": done})
        todo = [x for x in job.ranges if not x.complete]
        if not todo:
            if job.claim_finish():
                self._finish(job)
            return
        self._range(job, todo[0], lead=True)

    def _queue_rest(self, job: _Job, lead: rg.Range) -> None:
        with job.lock:
            if job.queued:
                return
            job.queued = True
            rest = [x for x in job.ranges if not x.complete and x is not lead]
        for x in rest:
            self._submit(functools.partial(self._range, job, x, False), priority=0)

    def _range(self, job: _Job, r: rg.Range, lead: bool) -> None:
        key = id(r)
        with self._cond:
            self._streaming[key] = (job, r)
        try:
            self._fetch_range(job, r, lead)
        finally:
            with self._cond:
                self._streaming.pop(key, None)
        job.save(force=True)
        if job.claim_finish():
            self._finish(job)

    def _steal(self) -> None:
        """Split the running range with the most left to fetch: it keeps the first half (beyond
        the block it is reading now), a new task takes the second. Without this the last ranges of a
        pull run alone, each at one connection's cap, while the other connections idle."""
        with self._cond:
            running = list(self._streaming.values())
        best: tuple[int, _Job, rg.Range] | None = None
        for job, r in running:
            with job.lock:
                left = r.end - r.pos - WRITE_BLOCK
            if (
                job.ranged
                and not job.finishing
                and left >= 2 * STEAL_MIN
                and (best is None or left > best[0])
            ):
                best = (left, job, r)
        if best is None:
            return
        _, job, r = best
        with job.lock:
            left = r.end - r.pos - WRITE_BLOCK
            if left < 2 * STEAL_MIN or job.finishing:
                return
            new = rg.Range(r.end - left // 2, r.end)
            r.end = new.start
            job.ranges.insert(job.ranges.index(r) + 1, new)
            job.multi = True
        job.save(force=True)  # the new range is recorded before any of its bytes are written
        self._submit(functools.partial(self._range, job, new, False), priority=0)

    def _fetch_range(self, job: _Job, r: rg.Range, lead: bool) -> None:
        remote = job.remote
        for attempt in range(1, self.attempts + 1):
            if self._stop.is_set():
                raise Cancelled()
            try:
                r = self._stream(job, r, lead)
            except HubError as e:
                if attempt == self.attempts:
                    raise HubError(
                        f"{remote.path}: download kept failing after {self.attempts} attempts: {e.message}",
                        e.hint
                        or "check the network or the hub endpoint, then run the same pull again: it resumes",
                    ) from e
                self.progress({"event": "retry", "path": remote.path, "offset": r.pos, "error": e.message})
                job.save(force=True)
                self._stop.wait(min(fetch.BACKOFF_S * 2 ** (attempt - 1), 5.0))
                continue
            if r.complete:
                break

    def _stream(self, job: _Job, r: rg.Range, lead: bool) -> rg.Range:
        """One request for what is left of ``r``; returns the range written into (the whole file
        when the server ignored Range). Raises HubError for anything worth retrying."""
        import requests

        remote, loc = job.remote, job.location
        headers = {**loc.headers, "Accept-Encoding": "identity"}
        with job.lock:
            asked = (r.pos, r.end)  # r.end can shrink while we read (see _steal)
        if asked != (0, remote.size):
            headers["Range"] = f"bytes={asked[0]}-{asked[1] - 1}"
        try:
            resp = self.http.get(
                loc.url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
            )
        except requests.RequestException as e:
            if unreachable(e) is not None:  # the hub's own words: which endpoint, which variable
                err = loc.translate(e, remote.path)
                if isinstance(err, LlmdockError):
                    raise HubError(err.message, err.hint) from e
            raise HubError(f"request for {remote.path} failed: {e}") from e
        complete = False
        try:
            if resp.status_code in RETRY_STATUS:
                raise HubError(f"{remote.path}: the hub answered {resp.status_code}")
            try:
                resp.raise_for_status()
            except requests.HTTPError as e:
                raise loc.translate(e, remote.path) from e
            if resp.status_code == 206:
                self._check_content_range(resp.headers.get("Content-Range", ""), asked, remote)
                job.ranged = True
                if lead:
                    self._queue_rest(job, r)
            elif "Range" in headers:  # 200: the whole file, whatever we asked
                if not lead or job.queued:
                    raise HubError(f"{remote.path}: the hub stopped honouring Range requests")
                lost = job.done_bytes()
                r = job.restart_whole()
                asked = (0, remote.size)
                self.progress(
                    {"event": "progress", "path": remote.path, "done": 0, "size": remote.size, "delta": -lost}
                )
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) != asked[1] - asked[0]:
                raise IntegrityError(
                    f"{remote.path}: the hub sends {length} bytes where its listing makes {asked[1] - asked[0]}",
                    "the hub's listing and its file disagree; try again later or another --source",
                    files=[remote.path],
                )
            self._body(job, r, _reader(resp, remote.path))
            complete = r.end == asked[1]  # else part of the body was handed to another connection
        finally:
            if complete:  # every byte read: the connection goes back to the pool for the next range
                resp.raw.release_conn()
            else:
                resp.close()
        return r

    @staticmethod
    def _check_content_range(got: str, asked: tuple[int, int], remote: RemoteFile) -> None:
        want = f"bytes {asked[0]}-{asked[1] - 1}/{remote.size}"
        if got != want:
            raise IntegrityError(
                f"{remote.path}: the hub answered bytes {got or '(no Content-Range)'} when asked for {want}",
                "the hub's listing and its file disagree; try again later or another --source",
                files=[remote.path],
            )

    def _body(self, job: _Job, r: rg.Range, readinto: Callable[[memoryview], int]) -> None:
        """Fill one reused buffer straight from the socket, write it at ``r``'s offset, hash it when
        it sits at the hash cursor. Bytes that arrived before a drop or a cancel are kept."""
        remote = job.remote
        buf = memoryview(bytearray(min(WRITE_BLOCK, max(1, r.size - r.done))))

        def keep(data: memoryview) -> None:
            at = r.pos
            _pwrite_all(job.fd, data, at)
            with job.lock:
                r.done += len(data)
            job.advance_hash(written=(at, data))
            done = job.done_bytes()
            self.progress(
                {
                    "event": "progress",
                    "path": remote.path,
                    "done": done,
                    "size": remote.size,
                    "delta": len(data),
                }
            )

        while True:
            with job.lock:
                want = min(len(buf), r.size - r.done)
            if want <= 0:
                break
            if fetch.fill(readinto, buf[:want], keep) < want:
                raise HubError(
                    f"{remote.path}: the hub sent {r.done} of the {r.size} bytes asked at {r.start}"
                )
            job.save()
            if self._stop.is_set() and not r.complete:
                raise Cancelled()

    def _finish(self, job: _Job) -> None:
        """Every range is on disk: complete the hash, check it, rename the part. A mismatch fetches
        the file once more from zero; a second one is refused."""
        remote = job.remote
        job.advance_hash(final=True)
        try:
            digest, checked = job.hashers.check()
        except IntegrityError:
            job.integrity_failures += 1
            lost = job.done_bytes()
            job.discard()
            self.progress({"event": "progress", "path": remote.path, "done": 0, "size": remote.size,
                           "delta": -lost})  # fmt: skip
            if job.integrity_failures >= 2:
                raise
            self.progress({"event": "retry", "path": remote.path, "offset": 0, "error": "checksum mismatch"})
            job.open()
            self._begin(job)
            return
        if self.fsync:
            os.fsync(job.fd)
        with job.save_lock:
            job.finished = True
            rg.remove_sidecar(job.part)  # before the rename: a lone part is a prefix
        job.close()
        job.part.replace(job.final)
        self.progress({"event": "file_done", "path": remote.path, "size": remote.size, "sha256": digest})
        self.on_done(FileRecord(remote.path, remote.size, digest, checked))


def _reader(resp: requests.Response, path: str) -> Callable[[memoryview], int]:
    """``readinto`` for the body: from http.client under urllib3 when the body is plain (one copy,
    socket to our buffer), else through urllib3's own read. Errors become HubError (retried)."""
    import http.client

    import urllib3.exceptions

    fp = getattr(resp.raw, "_fp", None)
    plain = resp.headers.get("Content-Encoding", "identity") == "identity"
    errors = (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError)

    def direct(buf: memoryview) -> int:
        try:
            return int(fp.readinto(buf))  # type: ignore[union-attr]
        except errors as e:
            raise HubError(f"connection broke while reading {path}: {e or type(e).__name__}") from e

    def through(buf: memoryview) -> int:
        try:
            data = resp.raw.read(len(buf), decode_content=True)
        except errors as e:
            raise HubError(f"connection broke while reading {path}: {e or type(e).__name__}") from e
        buf[: len(data)] = data
        return len(data)

    return direct if plain and fp is not None and hasattr(fp, "readinto") else through


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
