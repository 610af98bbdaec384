"""Load a bundle on an offline host: verify every member, then load the image and register the model.

Steps, under the model's lock: read the head (the first member) → look at the staging directory
(:mod:`llmdock.bundle.staging`) for members an earlier load of this bundle verified → refuse a
model that the store already holds with other files, and too little free space, before anything is
written → read the rest of the stream: each member's name is checked (a plain file, a relative path of a
bundle's kind, never ``..``, absolute, a link or a device) and its bytes go to ``NAME.part`` in
staging, are hashed on the way, compared with the head (image parts: with the seal at the end) and
only then renamed to their name and recorded in the staging progress file → when the seal has come
and every member matches: ``docker load`` the image parts (skipped when the image ID is already
there), rename the weights into the store and write the model's manifest (the moment it counts as
present), keep the wheel, and drop the staging directory.

A stream that ends early (a copy still under way), a tampered member, or a crash leave the members
verified so far in staging: the next ``load`` of the same bundle (the file once complete, or the same
bytes on stdin) skips them — a seekable file is not even read there.

Events::

    {"event": "load_start", "model": KEY, "members": N, "total_bytes": T, "staging": DIR, "kept": K}
    {"event": "member", "path": P, "size": N, "action": "verified" | "kept" | "received" | "present" | "skipped"}
    {"event": "image_load", "image": NAME, "id": ID, "action": "loaded" | "present"}
    {"event": "registered", "model": KEY, "path": DIR, "action": "registered" | "present"}
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from llmdock.bundle import manifest as bm
from llmdock.bundle.images import Images
from llmdock.bundle.staging import Staging
from llmdock.errors import Conflict
from llmdock.models import disk, manifest
from llmdock.models.manifest import Manifest
from llmdock.models.names import ModelRef, parse_model_id

if TYPE_CHECKING:
    from llmdock.models.store import LocalModel, ModelStore

Progress = Callable[[dict[str, Any]], None]
BLOCK = 1 << 20


def _quiet(event: dict[str, Any]) -> None:
    pass


@dataclass
class Loaded:
    model: LocalModel
    wheel: Path
    image: bm.ImageInfo | None = None
    image_loaded: bool = False
    kept: list[str] = field(default_factory=list)  # verified by an earlier load, not read again
    received: list[str] = field(default_factory=list)


def load_bundle(
    store: ModelStore,
    source: IO[bytes],
    *,
    seekable: bool,
    wheels_dir: Path,
    images: Callable[[], Images] | None,
    expect: str | None = None,
    progress: Progress = _quiet,
) -> Loaded:
    """Verify and load the bundle read from ``source`` (``seekable``: a file, whose verified members
    are skipped by seeking; else a pipe). ``images`` is called only when the bundle has an image;
    None leaves the image out (not staged, not loaded: a host without Docker). ``expect``: the digest
    ``llmdock bundle`` printed (sha256 of the head), refused when the bundle's is another."""
    try:
        tar = tarfile.open(fileobj=source, mode="r:" if seekable else "r|", bufsize=BLOCK)  # noqa: SIM115 (with below)
    except tarfile.ReadError as e:
        raise bm.BundleError(
            f"this is not an llmdock bundle (not a tar stream: {e})",
            "give a file written by `llmdock bundle`",
        ) from None
    with tar:
        members = _members(tar)
        first = next(members, None)
        if first is None or first.name != bm.HEAD or not first.isreg():
            raise bm.BundleError(
                f"this is not an llmdock bundle: its first member is {first.name if first else 'missing'!r}, "
                f"not {bm.HEAD}",
                "give a file written by `llmdock bundle`",
            )
        head_bytes = _read_json_member(tar, first)
        head = bm.check_head(head_bytes)
        head_sha = hashlib.sha256(head_bytes).hexdigest()
        if expect is not None and expect.strip().lower() != head_sha:
            raise bm.BundleError(
                f"the bundle's digest is {head_sha}, not the expected {expect.strip()}: it is another bundle, "
                "or its manifest was rewritten",
                bm.TAMPERED_HINT,
                member=bm.HEAD,
            )
        ref = parse_model_id(head.model.repo_id, head.model.source, head.model.revision)
        with store.lock(ref, progress):
            return _Loader(store, head, head_sha, ref, wheels_dir, images, progress).run(tar, members)


class _Loader:
    def __init__(
        self,
        store: ModelStore,
        head: bm.Head,
        head_sha: str,
        ref: ModelRef,
        wheels_dir: Path,
        images: Callable[[], Images] | None,
        progress: Progress,
    ) -> None:
        self.store, self.head, self.head_sha, self.ref = store, head, head_sha, ref
        self.wheels_dir, self.progress = wheels_dir, progress
        self.images = images() if head.image is not None and images is not None else None
        self.staging = Staging(store.root, head_sha, head.model.key)
        self.expected = {m.path: m for m in head.members}

    def run(self, tar: tarfile.TarFile, members: Iterator[tarfile.TarInfo]) -> Loaded:
        head, store = self.head, self.store
        present = _present(store, self.ref, head)  # raises Conflict before anything is written
        self.staging.drop_others()
        # no Images (the caller leaves the image out) reads as "there": nothing of it is staged or loaded
        image_there = self.images is None or (head.image is not None and self.images.has(head.image.id))
        staged = self.staging.staged()
        self.skip_weights = present is not None  # the store has these very files: no need to copy them
        need = bm.remaining_bytes(head, staged, image_there)
        if self.skip_weights:
            need -= sum(
                m.size for m in head.members if m.path.startswith(bm.WEIGHTS) and m.path not in staged
            )
        self._check_space(need, image_there)
        self.staging.dir.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        received: list[str] = []
        self.progress(
            {
                "event": "load_start",
                "model": head.model.key,
                "members": len(head.members),
                "total_bytes": head.total_bytes + (head.image.size if head.image and self.images else 0),
                "staging": str(self.staging.dir),
                "kept": len(staged),
            }
        )
        seal = self._receive(tar, members, staged, kept, received)
        self._check_all_there(seal, staged)
        if head.image is not None and self.images is not None:
            if not image_there:
                self.images.load(_read_parts(self.staging.dir, seal.image_parts))
                if not self.images.has(head.image.id):
                    raise bm.BundleError(
                        f"`docker load` finished but image {head.image.id[:19]} is not on this Docker host",
                        "check `docker images`; run `llmdock load` again (the verified members are kept)",
                    )
            self.progress(
                {
                    "event": "image_load",
                    "image": head.image.name,
                    "id": head.image.id,
                    "action": "present" if image_there else "loaded",
                }
            )
        model = present if present is not None else self._register()
        wheel = self._keep_wheel()
        self.staging.remove()
        image_loaded = head.image is not None and not image_there
        return Loaded(model, wheel, head.image if self.images else None, image_loaded, kept, received)

    def _check_space(self, need: int, image_there: bool) -> None:
        """The models disk takes what is left to stage; Docker's data root (when it is a directory here)
        takes the image once more on `docker load` — both at once when they are one filesystem."""
        head, store = self.head, self.store
        models = store.probe(store.root)
        name = head.image.name if head.image is not None else ""
        image = head.image.size if head.image is not None and not image_there else 0
        root = self.images.data_root() if image and self.images is not None else None
        docker = store.probe(root) if root is not None else None
        same = docker is not None and os.stat(docker.path).st_dev == os.stat(models.path).st_dev
        disk.check_space(
            need + (image if same else 0),
            models,
            store.reserve,
            what=f"loading this bundle (model {head.model.key}"
            + (f", image {name}" if image else "")
            + (" staged, then loaded into Docker on the same disk" if same else "")
            + ")",
            hint="free some space on the models disk, or load into a bigger one with --models-dir "
            "(or LLMDOCK_MODELS_DIR); nothing was written",
        )
        if docker is not None and not same:
            disk.check_space(
                image,
                docker,
                store.reserve,
                what=f"`docker load` of image {name}",
                hint="free space where Docker keeps images (`docker system df`, `docker image prune`); "
                "nothing was written",
            )

    # -- members ---------------------------------------------------------------------------------------
    def _receive(
        self,
        tar: tarfile.TarFile,
        members: Iterator[tarfile.TarInfo],
        staged: dict[str, bm.Member],
        kept: list[str],
        received: list[str],
    ) -> bm.Seal:
        seen: set[str] = set()
        for info in members:
            name = bm.check_member_path(info.name)
            if not info.isreg():
                kind = (
                    "symbolic link"
                    if info.issym()
                    else "hard link"
                    if info.islnk()
                    else "directory or device"
                )
                raise bm.BundleError(
                    f"bundle member {name!r} is a {kind}, not a file; refusing it (it could point out of staging)",
                    bm.TAMPERED_HINT,
                    member=name,
                )
            if name in seen:
                raise bm.BundleError(f"bundle member {name} appears twice", bm.TAMPERED_HINT, member=name)
            seen.add(name)
            if name == bm.SEAL:
                return bm.check_seal(_read_json_member(tar, info), self.head, self.head_sha)
            want = self.expected.get(name)
            if want is None and not (bm.IMAGE_PART.fullmatch(name) and self.head.image is not None):
                raise bm.BundleError(
                    f"bundle member {name} is not in the bundle's manifest", bm.TAMPERED_HINT, member=name
                )
            if self.skip_weights and name.startswith(bm.WEIGHTS):
                self.progress({"event": "member", "path": name, "size": info.size, "action": "present"})
                continue
            if self.images is None and want is None:
                self.progress({"event": "member", "path": name, "size": info.size, "action": "skipped"})
                continue
            have = staged.get(name)
            if have is not None and (have == want or (want is None and have.size == info.size)):
                kept.append(name)
                self.progress({"event": "member", "path": name, "size": have.size, "action": "kept"})
                continue
            staged[name] = self.staging.extract(tar, info, want)
            self.staging.save(staged)
            received.append(name)
            action = "received" if want is None else "verified"
            self.progress({"event": "member", "path": name, "size": info.size, "action": action})
        raise bm.BundleError(
            f"the bundle ends early: {len(staged)} of its members are here and verified, its seal "
            f"({bm.SEAL}) is not — a copy that has not finished, or a file cut short",
            f"complete the copy and run `llmdock load` again: the {len(staged)} verified member(s) in "
            f"{self.staging.dir} are kept and not read again; nothing was registered or loaded",
        )

    def _check_all_there(self, seal: bm.Seal, staged: dict[str, bm.Member]) -> None:
        """Every member the manifest lists was in the stream (and matched); the image parts match the seal."""
        for m in self.head.members:
            if m.path not in staged and not (self.skip_weights and m.path.startswith(bm.WEIGHTS)):
                raise bm.BundleError(
                    f"bundle member {m.path} is listed in the manifest but was not in the stream",
                    bm.TAMPERED_HINT,
                    member=m.path,
                )
        for part in seal.image_parts if self.images is not None else ():
            have = staged.get(part.path)
            if have is None:
                raise bm.BundleError(
                    f"bundle member {part.path} is listed in the seal but was not in the stream",
                    bm.TAMPERED_HINT,
                    member=part.path,
                )
            if have != part:
                self.staging.discard(part.path)
                del staged[part.path]
                self.staging.save(staged)
                bm.check_bytes(part, have.size, have.sha256)
        for extra in set(staged) - {m.path for m in seal.members}:
            self.staging.discard(extra)  # from an earlier, different copy

    # -- the end ---------------------------------------------------------------------------------------
    def _register(self) -> LocalModel:
        from llmdock.models.store import LocalModel

        lay = self.store.layout(self.ref)
        lay.weights.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.staging.dir / bm.WEIGHTS.rstrip("/"), lay.weights)  # one filesystem: atomic
        stamp = manifest.now()
        m = Manifest(
            source=self.ref.source,
            repo_id=self.ref.repo_id,
            revision=self.ref.revision,
            path=str(lay.weights),
            commit=self.head.model.commit,
            files=list(self.head.model.files),
            completed_at=stamp,
            verified_at=stamp,
        )
        manifest.write(lay.manifest, m)  # from here on the model is present
        self.progress(
            {"event": "registered", "model": self.ref.key, "path": str(lay.weights), "action": "registered"}
        )
        return LocalModel(self.ref, m)

    def _keep_wheel(self) -> Path:
        self.wheels_dir.mkdir(parents=True, exist_ok=True)
        target = self.wheels_dir / Path(self.head.wheel).name
        os.replace(self.staging.dir / self.head.wheel, target)
        return target


def _present(store: ModelStore, ref: ModelRef, head: bm.Head) -> LocalModel | None:
    """The model when the store holds it already with the bundle's files; None when it is absent;
    Conflict when something else sits there."""
    from llmdock.models.store import LocalModel

    lay = store.layout(ref)
    old = manifest.read(lay.manifest)
    if (
        old is not None
        and old.complete
        and sorted(old.files, key=lambda f: f.path) == sorted(head.model.files, key=lambda f: f.path)
    ):
        return LocalModel(ref, old)
    if old is not None or lay.weights.exists():
        raise Conflict(
            f"the store already holds {ref.key} with other files (or a pull of it is unfinished) in {lay.weights}",
            f"remove it first with `llmdock models rm {ref.key}`, or load into another --models-dir; "
            "nothing was written",
        )
    return None


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The tar's members; a stream that breaks off inside a header reads as its end."""
    while True:
        try:
            info = tar.next()
        except tarfile.ReadError:
            return
        if info is None:
            return
        yield info


def _read_json_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    if info.size > bm.MAX_JSON:
        raise bm.BundleError(
            f"bundle member {info.name} is too large for a manifest", bm.TAMPERED_HINT, member=info.name
        )
    src = tar.extractfile(info)
    assert src is not None
    try:
        data = src.read()
    except tarfile.ReadError:
        data = b""
    if len(data) != info.size:
        raise bm.BundleError(
            f"the bundle ends early, inside {info.name}",
            "complete the copy and run `llmdock load` again",
            member=info.name,
        )
    return data


def _read_parts(staging: Path, parts: tuple[bm.Member, ...]) -> Iterator[bytes]:
    for part in parts:
        with (staging / part.path).open("rb") as f:
            while block := f.read(BLOCK):
                yield block
