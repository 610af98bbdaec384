"""Pull a model from a hub into the store: complete and verified, or not there at all.

Steps, under the model's lock: list the hub's files (validated names, include/exclude globs) → if a
complete manifest already covers them, done → move any earlier result back to staging and collect
what is already fetched → check disk space and the system-disk rule → fetch the rest in parallel
(biggest first; in byte ranges over ``pull_connections`` HTTP connections where the hub gives URLs,
see :mod:`llmdock.models.transfer`), recording each finished file in ``.llmdock-progress.json`` → move
the staging directory into place → write the manifest. Interrupted at any point, the next pull resumes
from what is on disk.

Events besides fetch's (see :mod:`llmdock.models.fetch`)::

    {"event": "listing", "model": KEY, "source": S}
    {"event": "plan", "model": KEY, "files": N, "total_bytes": T, "fetch_bytes": F, "dir": D}
    {"event": "done", "model": KEY, "path": D, "fetched_bytes": F, "seconds": S, "cached": bool}
"""

from __future__ import annotations

import dataclasses
import errno
import fnmatch
import json
import os
import shutil
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmdock.errors import HubError, InsufficientSpace, NotFound
from llmdock.models import disk, manifest, transfer
from llmdock.models.fetch import Progress, _quiet, fetch_file
from llmdock.models.hubs import Hub, Location, RemoteFile, first_failure
from llmdock.models.manifest import FileRecord, Manifest
from llmdock.models.names import Layout, ModelRef, check_hub_path, parse_model_id

if TYPE_CHECKING:
    from llmdock.models.store import LocalModel, ModelStore

PROGRESS_FILE = ".llmdock-progress.json"


class _Cancelled(Exception):
    """Raised inside a worker's progress callback to stop it when a sibling failed."""


def pull(
    store: ModelStore,
    model_id: str,
    *,
    source: str = "modelscope",
    revision: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    allow_system_disk: bool = False,
    token: str | None = None,
    progress: Progress = _quiet,
) -> LocalModel:
    """Pull ``model_id`` (``ORG/NAME[@REV]``) from ``source`` (modelscope, huggingface or auto).

    ``auto`` tries ModelScope, then Hugging Face when ModelScope does not have the model or cannot be
    reached. Raises NotFound, HubError, InsufficientSpace, IntegrityError or InvalidSpec.
    """
    sources = ["modelscope", "huggingface"] if source == "auto" else [source]
    if store.connections:  # a bad LLMDOCK_PULL_CONNECTIONS is refused here, before anything happens
        transfer.warm_up()
    failures: list[HubError | NotFound] = []
    for s in sources:
        ref = parse_model_id(model_id, s, revision)
        hub = store.hub_factory(s, token)
        progress({"event": "listing", "model": ref.key, "source": s})
        try:
            listing = hub.list_files(ref.repo_id, ref.revision)
        except (NotFound, HubError) as e:
            failures.append(e)
            continue
        wanted = select(listing.files, include, exclude)
        if not wanted:
            raise NotFound(
                f"{ref.key} has no files matching --include/--exclude",
                "loosen the globs; they match paths like 'model-*.safetensors' or '*.json'",
            )
        return _pull_files(store, hub, ref, listing.commit, wanted, allow_system_disk, progress)
    raise first_failure(model_id, failures)


def select(files: Sequence[RemoteFile], include: Sequence[str], exclude: Sequence[str]) -> list[RemoteFile]:
    """Validate every hub file name, then keep those matching any include and no exclude glob."""
    chosen = []
    for f in files:
        check_hub_path(f.path)
        if include and not any(fnmatch.fnmatch(f.path, g) for g in include):
            continue
        if any(fnmatch.fnmatch(f.path, g) for g in exclude):
            continue
        chosen.append(f)
    return chosen


def _pull_files(
    store: ModelStore,
    hub: Hub,
    ref: ModelRef,
    commit: str,
    wanted: list[RemoteFile],
    allow_system_disk: bool,
    progress: Progress,
) -> LocalModel:
    from llmdock.models.store import LocalModel

    lay = store.layout(ref)
    started = time.monotonic()
    with store.lock(ref, progress):
        old = manifest.read(lay.manifest)
        if old is not None and old.complete and _covers(old, wanted):
            progress(
                {
                    "event": "done",
                    "model": ref.key,
                    "path": old.path,
                    "fetched_bytes": 0,
                    "seconds": 0.0,
                    "cached": True,
                }
            )
            return LocalModel(ref, old)
        records = reopen(lay, old)
        todo = [f for f in wanted if not _fresh(records.get(f.path), f)]
        total = sum(f.size for f in wanted)
        fetch_bytes = sum(f.size - transfer.already_fetched(lay.staging, f) for f in todo)
        facts = store.probe(store.root)
        disk.check_system_disk(total, facts, allow_system_disk, store.system_disk_limit)
        disk.check_space(fetch_bytes, facts, store.reserve)
        progress(
            {
                "event": "plan",
                "model": ref.key,
                "files": len(wanted),
                "total_bytes": total,
                "fetch_bytes": fetch_bytes,
                "dir": str(lay.weights),
            }
        )
        _fetch_all(store, hub, ref, commit, todo, lay.staging, records, progress)
        return _commit(ref, commit, lay, records, progress, started, fetch_bytes)


def reopen(lay: Layout, old: Manifest | None) -> dict[str, FileRecord]:
    """Make the staging dir hold everything already fetched; return the records of verified files.

    A finished model being extended (other --include) or a move interrupted before its manifest was
    written both leave files in the weights dir: they move back to staging, manifest removed first.
    """
    records: dict[str, FileRecord] = {}
    if old is not None:
        records.update({f.path: f for f in old.files if f.path not in old.bad_files})
    if lay.weights.exists():
        lay.manifest.unlink(missing_ok=True)
        records.update(_read_progress(lay.weights))
        if not lay.staging.exists():
            lay.staging.parent.mkdir(parents=True, exist_ok=True)
            os.rename(lay.weights, lay.staging)
        else:
            for src in sorted(p for p in lay.weights.rglob("*") if p.is_file()):
                dst = lay.staging / src.relative_to(lay.weights)
                if not dst.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.rename(src, dst)
            shutil.rmtree(lay.weights)
    lay.staging.mkdir(parents=True, exist_ok=True)
    records.update(_read_progress(lay.staging))
    return {p: r for p, r in records.items() if _on_disk(lay.staging / p, r.size)}


def _fetch_all(
    store: ModelStore,
    hub: Hub,
    ref: ModelRef,
    commit: str,
    todo: list[RemoteFile],
    staging: Path,
    records: dict[str, FileRecord],
    progress: Progress,
) -> None:
    guard = threading.Lock()

    def record(done: FileRecord) -> None:
        with guard:
            records[done.path] = done
            _write_progress(staging, records)

    def where(f: RemoteFile) -> Location:
        loc = hub.locate(ref.repo_id, commit, f.path)
        assert loc is not None  # a hub that gives one file a URL gives every file one
        return loc

    if todo and hub.locate(ref.repo_id, commit, todo[0].path) is not None:
        try:
            transfer.Transfer(
                where,
                staging,
                store.connections,
                progress,
                on_done=record,
                fsync=store.durable,
            ).run(todo)
        except OSError as e:
            _raise(e, staging)
        return
    stop = threading.Event()

    def report(event: dict[str, Any]) -> None:
        if stop.is_set():
            raise _Cancelled()
        progress(event)

    def one(remote: RemoteFile) -> None:
        if stop.is_set():
            return
        record(fetch_file(hub, ref.repo_id, commit, remote, staging, report, fsync=store.durable))

    pool = ThreadPoolExecutor(max_workers=max(1, store.workers), thread_name_prefix="llmdock-pull")
    try:
        futures = [pool.submit(one, f) for f in sorted(todo, key=lambda f: -f.size)]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f.exception() for f in done if f.exception() is not None]
        if failed:
            stop.set()
            wait(futures)
            _raise(failed[0], staging)
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def _raise(error: BaseException | None, staging: Path) -> None:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        free = disk.probe(staging).free
        raise InsufficientSpace(
            f"the disk under {staging} filled up during the download ({free} bytes free); "
            "nothing was marked complete",
            "free some space (or choose another --models-dir) and run the same pull again: it resumes",
            free=free,
        ) from error
    assert error is not None
    raise error


def _commit(
    ref: ModelRef,
    commit: str,
    lay: Layout,
    records: dict[str, FileRecord],
    progress: Progress,
    started: float,
    fetched: int,
) -> LocalModel:
    from llmdock.models.store import LocalModel

    _write_progress(lay.staging, records)
    lay.weights.parent.mkdir(parents=True, exist_ok=True)
    os.rename(lay.staging, lay.weights)  # atomic on one filesystem; the manifest comes after
    stamp = manifest.now()
    m = Manifest(
        source=ref.source,
        repo_id=ref.repo_id,
        revision=ref.revision,
        path=str(lay.weights),
        commit=commit,
        files=sorted(records.values(), key=lambda r: r.path),
        completed_at=stamp,
        verified_at=stamp,
    )
    manifest.write(lay.manifest, m)
    (lay.weights / PROGRESS_FILE).unlink(missing_ok=True)
    progress(
        {
            "event": "done",
            "model": ref.key,
            "path": str(lay.weights),
            "fetched_bytes": fetched,
            "seconds": round(time.monotonic() - started, 3),
            "cached": False,
        }
    )
    return LocalModel(ref, m)


def _covers(m: Manifest, wanted: list[RemoteFile]) -> bool:
    have = {f.path: f for f in m.files}
    return all(_fresh(have.get(w.path), w) for w in wanted)


def _fresh(record: FileRecord | None, remote: RemoteFile) -> bool:
    """A verified local record still matches what the hub lists now."""
    if record is None or record.size != remote.size:
        return False
    return remote.sha256 is None or record.sha256 == remote.sha256.lower()


def _on_disk(path: Path, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size


def _read_progress(directory: Path) -> dict[str, FileRecord]:
    try:
        raw = json.loads((directory / PROGRESS_FILE).read_text())
        return {r["path"]: FileRecord(**r) for r in raw["files"]}
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return {}


def _write_progress(directory: Path, records: dict[str, FileRecord]) -> None:
    files = [dataclasses.asdict(r) for r in records.values()]
    manifest.write_atomic(directory / PROGRESS_FILE, json.dumps({"files": files}))
