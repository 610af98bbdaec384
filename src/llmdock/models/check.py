"""Verify a stored model against its manifest (and repair it from its hub), or import weights already
on disk without copying them.

``verify`` re-hashes every file. A bad one is written into the manifest (``bad_files``) at once, so the
model stops counting as present; ``repair=True`` then re-fetches only those files from the hub, checks
them against the hub's checksums, and swaps them in.

Events::

    {"event": "verify_start", "model": KEY, "files": N, "total_bytes": T}
    {"event": "verify_file", "path": P, "size": N, "ok": bool}
    {"event": "repair", "model": KEY, "files": [P, ...]}
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llmdock.errors import IntegrityError, InvalidSpec, NotFound
from llmdock.models import manifest
from llmdock.models.fetch import Progress, _quiet, fetch_file, hash_file
from llmdock.models.manifest import FileRecord, Manifest
from llmdock.models.names import parse_model_id

if TYPE_CHECKING:
    from llmdock.models.store import LocalModel, ModelStore


@dataclass
class Verified:
    model: LocalModel
    bad: list[str] = field(default_factory=list)  # damaged or missing files found
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return set(self.bad) <= set(self.repaired)


def verify(
    store: ModelStore,
    name: str,
    *,
    repair: bool = False,
    token: str | None = None,
    progress: Progress = _quiet,
) -> Verified:
    """Re-hash every file of ``name``; with ``repair``, re-fetch only the bad ones from the hub."""
    model = store.find(name)
    with store.lock(model.ref, progress):
        m = model.manifest
        root = Path(m.path)
        progress(
            {"event": "verify_start", "model": model.key, "files": len(m.files), "total_bytes": m.total_bytes}
        )

        def check(record: FileRecord) -> str | None:
            path = root / record.path
            ok = path.is_file() and path.stat().st_size == record.size and hash_file(path) == record.sha256
            progress({"event": "verify_file", "path": record.path, "size": record.size, "ok": ok})
            return None if ok else record.path

        with ThreadPoolExecutor(max_workers=max(1, store.workers)) as pool:
            bad = sorted(p for p in pool.map(check, m.files) if p is not None)
        m.bad_files = bad
        if not bad:
            m.verified_at = manifest.now()
        manifest.write(store.layout(model.ref).manifest, m)
        result = Verified(model, bad)
        if bad and repair:
            result.repaired = _repair(store, model, bad, token, progress)
        return result


def _repair(
    store: ModelStore, model: LocalModel, bad: list[str], token: str | None, progress: Progress
) -> list[str]:
    m = model.manifest
    if m.imported:
        raise IntegrityError(
            f"{len(bad)} file(s) of imported model {model.key} are damaged: {', '.join(bad[:5])}",
            "imported weights have no hub to repair them from: copy them again and re-run "
            "`llmdock models import`, or pull the model from a hub",
            files=bad,
        )
    progress({"event": "repair", "model": model.key, "files": bad})
    hub = store.hub_factory(model.ref.source, token)
    listing = hub.list_files(model.ref.repo_id, m.commit or model.ref.revision)
    remote = {f.path: f for f in listing.files}
    missing = [p for p in bad if p not in remote]
    if missing:
        raise NotFound(
            f"the hub no longer lists {', '.join(missing)} for {model.key}",
            f"remove the model (`llmdock models rm {model.key}`) and pull it again",
        )
    lay = store.layout(model.ref)
    records = {r.path: r for r in m.files}
    lay.staging.mkdir(parents=True, exist_ok=True)
    for path in bad:
        records[path] = fetch_file(
            hub, model.ref.repo_id, m.commit or model.ref.revision, remote[path], lay.staging, progress
        )
        target = Path(m.path) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(lay.staging / path, target)
    shutil.rmtree(lay.staging, ignore_errors=True)  # we hold the lock: nothing else is staging this model
    m.files = sorted(records.values(), key=lambda r: r.path)
    m.bad_files = []
    m.verified_at = manifest.now()
    manifest.write(lay.manifest, m)
    return bad


def import_local(
    store: ModelStore, path: Path, name: str | None = None, progress: Progress = _quiet, copy: bool = False
) -> LocalModel:
    """Register a directory of weights (e.g. a manual ``modelscope download``), in place by default.

    Every file is hashed once, so a later ``verify`` can tell if it changed. Dot-files and
    dot-directories (``.cache``, ``.git``) are not part of the model. With ``copy`` the files are
    first copied into the store (through its staging place, moved in at once, space checked first),
    so the original can be deleted.
    """
    from llmdock.models.store import LocalModel

    root = path.expanduser().absolute()
    try:
        files = _model_files(root)
    except PermissionError as e:
        raise InvalidSpec(
            f"{e.filename or root} cannot be read by this user (permission denied); nothing was imported",
            f"make the weights readable (e.g. `chmod -R a+rX {root}`), or import as a user who can read them",
        ) from None
    ref = parse_model_id(name or _default_name(root), "local")
    lay = store.layout(ref)
    with store.lock(ref, progress):
        old = manifest.read(lay.manifest)
        if old is not None and Path(old.path) != root:
            raise InvalidSpec(
                f"a model named {ref.repo_id} is already imported from {old.path}",
                "choose another --name, or remove the old one with `llmdock models rm`",
            )
        total = sum(p.stat().st_size for p in files)
        if copy and Path(old.path if old else "") != lay.weights:
            root, files = _copy_in(store, root, files, lay.weights, lay.staging, total)
        progress({"event": "verify_start", "model": ref.key, "files": len(files), "total_bytes": total})

        def record(p: Path) -> FileRecord:
            rec = FileRecord(p.relative_to(root).as_posix(), p.stat().st_size, hash_file(p), "local")
            progress({"event": "verify_file", "path": rec.path, "size": rec.size, "ok": True})
            return rec

        with ThreadPoolExecutor(max_workers=max(1, store.workers)) as pool:
            records = list(pool.map(record, files))
        stamp = manifest.now()
        m = Manifest(
            source="local",
            repo_id=ref.repo_id,
            revision=ref.revision,
            path=str(root),
            imported=True,
            files=records,
            completed_at=stamp,
            verified_at=stamp,
        )
        manifest.write(lay.manifest, m)
    return LocalModel(ref, m)


def _model_files(root: Path) -> list[Path]:
    """The files of the model directory ``root`` (dot-files and dot-directories such as ``.cache``
    and ``.git`` are not the model's); raises when ``root`` is not a model directory, and
    PermissionError for anything in it that cannot be read (not skipped: a partial import would
    verify as complete)."""
    if not root.is_dir():
        raise NotFound(
            f"{root} is not a directory", "give the directory that holds config.json and the weights"
        )
    if not (root / "config.json").is_file():
        nested = sorted(p.parent for p in root.glob("*/config.json")) + sorted(
            p.parent for p in root.glob("*/*/config.json")
        )
        raise InvalidSpec(
            f"{root} has no config.json, so no engine could load it as a model; nothing was imported",
            f"import {nested[0]} instead (it holds config.json)"
            if nested
            else "give the directory that holds config.json and the weights (e.g. what `modelscope download` wrote)",
        )

    def refuse(e: OSError) -> None:
        raise e

    files = []
    for top, dirs, names in os.walk(root, onerror=refuse):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in names:
            p = Path(top) / n
            if not n.startswith(".") and p.is_file():
                if not os.access(p, os.R_OK):
                    raise PermissionError(13, "Permission denied", str(p))
                files.append(p)
    return sorted(files)


def _copy_in(
    store: ModelStore, root: Path, files: list[Path], dest: Path, staging: Path, total: int
) -> tuple[Path, list[Path]]:
    """Copy ``files`` (under ``root``) to ``dest`` via ``staging``; a half copy never sits at ``dest``."""
    import shutil

    from llmdock.models import disk

    if dest.exists():
        raise InvalidSpec(
            f"{dest} already exists in the store", "choose another --name, or `llmdock models rm` it"
        )
    staging.parent.mkdir(parents=True, exist_ok=True)
    disk.check_space(total, disk.probe(staging.parent), reserve=store.reserve)
    shutil.rmtree(staging, ignore_errors=True)
    for f in files:
        target = staging / f.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(dest)
    return dest, [dest / f.relative_to(root) for f in files]


def _default_name(root: Path) -> str:
    import re

    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", root.name).strip(".-") or "model"
    return f"local/{cleaned}"
