"""The model store: where weights live, what is there, and the one lock per model.

:class:`ModelStore` is the entry point; pulling lives in :mod:`llmdock.models.pull`, verifying and
importing in :mod:`llmdock.models.check` — the store's methods only delegate to them.

Example::

    store = ModelStore(Path("/data/models"))
    path = store.resolve("Qwen/Qwen2.5-7B-Instruct")   # pulls from ModelScope when missing
    for m in store.list(used_by=lambda p: []):
        print(m.key, m.status, m.total_bytes)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmdock.errors import Conflict, InvalidSpec, NotFound
from llmdock.models import disk, manifest
from llmdock.models.fetch import Progress, _quiet
from llmdock.models.hubs import Hub, open_hub
from llmdock.models.manifest import Manifest
from llmdock.models.names import Layout, ModelRef, check_source, layout, looks_like_path, parse_model_id

MODELS_DIR_HINT = (
    "choose a writable one on a big data disk: --models-dir DIR, LLMDOCK_MODELS_DIR, "
    "or `llmdock config set models_dir DIR`"
)
UsedBy = Callable[[Path], Sequence[str]]  # model dir -> names of deployments that use it
HubFactory = Callable[[str, "str | None"], Hub]


@dataclass
class LocalModel:
    """A model the store knows: its manifest, where its weights are, and (for ``ls``) who uses it."""

    ref: ModelRef
    manifest: Manifest
    used_by: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.ref.key

    @property
    def path(self) -> Path:
        return Path(self.manifest.path)

    @property
    def complete(self) -> bool:
        return self.manifest.complete

    @property
    def status(self) -> str:
        """``verified``, ``damaged`` (a verify found bad files), ``partial`` (being pulled or
        repaired), or for an imported model whose directory changed since: ``missing`` (gone),
        ``no config.json`` (not a model an engine can load) or ``unreadable``."""
        if self.manifest.bad_files:
            return "damaged"
        if not self.manifest.complete:
            return "partial"
        if self.manifest.imported:  # the user's directory: it can change under us, look again
            try:
                if not self.path.is_dir():
                    return "missing"
                if not (self.path / "config.json").is_file():
                    return "no config.json"
            except PermissionError:
                return "unreadable"
        return "verified"

    @property
    def total_bytes(self) -> int:
        return self.manifest.total_bytes

    def as_dict(self) -> dict[str, Any]:
        m, status = self.manifest, self.status
        return {
            "name": self.ref.repo_id,
            "key": self.key,
            "source": self.ref.source,
            "revision": self.ref.revision,
            "commit": m.commit,
            "path": m.path,
            "size": self.total_bytes,
            "files": len(m.files),
            "status": status,
            "verified": status == "verified",
            "imported": m.imported,
            "completed_at": m.completed_at,
            "verified_at": m.verified_at,
            "bad_files": m.bad_files,
            "used_by": self.used_by,
        }


class ModelStore:
    """Weights under ``root``: ``source/org/name@revision`` plus one manifest each (see names.layout)."""

    def __init__(
        self,
        root: Path,
        *,
        hub_factory: HubFactory = open_hub,
        workers: int = 4,
        reserve: int = disk.RESERVE,
        system_disk_limit: int = disk.SYSTEM_DISK_LIMIT,
        probe: Callable[[Path], disk.DiskFacts] = disk.probe,
        durable: bool = False,
        connections: int | None = None,
    ) -> None:
        self.root = root.expanduser().absolute()
        self.hub_factory = hub_factory
        self.workers = workers
        self.reserve = reserve
        self.system_disk_limit = system_disk_limit
        self.probe = probe
        self.durable = durable  # fsync every file before it counts (see fetch.fetch_file)
        self._connections = connections

    @property
    def connections(self) -> int:
        """HTTP connections a pull uses at once: the argument, else the ``pull_connections`` setting."""
        if self._connections is None:
            from llmdock import settings

            self._connections = settings.load().pull_connections
        return self._connections

    @classmethod
    def default(cls) -> ModelStore:
        from llmdock import settings

        return cls(settings.load().models_dir)

    def layout(self, ref: ModelRef) -> Layout:
        return layout(self.root, ref)

    @contextlib.contextmanager
    def lock(self, ref: ModelRef, progress: Progress = _quiet) -> Iterator[None]:
        """Hold the model's lock (fcntl.flock; the kernel drops it if we die). Waits for another pull."""
        from llmdock.settings import ensure_dir

        ensure_dir(self.root, "the models directory", MODELS_DIR_HINT)
        path = self.layout(ref).lock
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                progress({"event": "waiting_lock", "model": ref.key, "lock": str(path)})
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- what is there -----------------------------------------------------------------------------
    def get(self, ref: ModelRef) -> LocalModel | None:
        """The model if it is present: manifest complete and every file verified; else None."""
        m = manifest.read(self.layout(ref).manifest)
        return LocalModel(ref, m) if m is not None and m.complete else None

    def list(self, used_by: UsedBy | None = None) -> list[LocalModel]:
        """Every model with a manifest (complete, damaged or being repaired), sorted by key."""
        found: list[LocalModel] = []
        for path in sorted((self.root / ".manifests").glob("*/*/*.json")):
            m = manifest.read(path)
            if m is None:
                continue
            ref = _ref_of(m)
            found.append(LocalModel(ref, m, list(used_by(Path(m.path))) if used_by else []))
        return found

    def find(self, name: str) -> LocalModel:
        """One model by ``source:org/name@rev``, ``org/name@rev``, ``org/name`` or an imported ``name``."""
        source, rest = name.split(":", 1) if ":" in name else (None, name)
        if source is not None:
            check_source(source)
        org_name, _, rev = rest.partition("@")
        if "/" not in org_name:
            org_name = f"local/{org_name}"
        matches = [
            m
            for m in self.list()
            if m.ref.repo_id == org_name
            and (source is None or m.ref.source == source)
            and (not rev or m.ref.revision == rev)
        ]
        if not matches:
            raise NotFound(
                f"no model {name!r} in {self.root}", "see `llmdock models ls`, or `llmdock pull` it"
            )
        if len(matches) > 1:
            raise InvalidSpec(
                f"{name!r} matches {len(matches)} models: " + ", ".join(m.key for m in matches),
                "name one of them in full, as `llmdock models ls` shows it",
            )
        return matches[0]

    def remove(self, name: str, *, force: bool = False, used_by: UsedBy | None = None) -> LocalModel:
        """Delete a model's manifest and weights (an imported model's own directory is left alone)."""
        model = self.find(name)
        users = list(used_by(model.path)) if used_by else []
        if users and not force:
            raise Conflict(
                f"model {model.key} is used by deployment(s): {', '.join(users)}",
                "stop and remove those deployments first, or pass -f to remove the weights anyway",
            )
        lay = self.layout(model.ref)
        with self.lock(model.ref):
            lay.manifest.unlink(missing_ok=True)  # first: from now on the model is absent
            if not model.manifest.imported:
                shutil.rmtree(lay.weights, ignore_errors=True)
            shutil.rmtree(lay.staging, ignore_errors=True)
        return model

    # -- getting weights ---------------------------------------------------------------------------
    def pull(self, model_id: str, **kwargs: Any) -> LocalModel:
        """See :func:`llmdock.models.pull.pull` for the arguments."""
        from llmdock.models.pull import pull

        return pull(self, model_id, **kwargs)

    def verify(self, name: str, **kwargs: Any) -> Any:
        """See :func:`llmdock.models.check.verify`."""
        from llmdock.models.check import verify

        return verify(self, name, **kwargs)

    def import_local(
        self, path: Path, name: str | None = None, progress: Progress = _quiet, copy: bool = False
    ) -> LocalModel:
        from llmdock.models.check import import_local

        return import_local(self, path, name, progress=progress, copy=copy)

    def resolve(
        self,
        model_ref: str,
        *,
        source: str = "modelscope",
        revision: str | None = None,
        no_pull: bool = False,
        **pull_kwargs: Any,
    ) -> Path:
        """The directory to mount for ``model_ref``.

        A local directory (``/x``, ``./x``, ``~/x``) is returned as is. ``ORG/NAME[@REV]`` gives the
        verified directory of that model (or of an imported model of that name), pulling it first when
        it is missing — unless ``no_pull``, which raises NotFound with the pull command as the hint.
        """
        if looks_like_path(model_ref):
            path = Path(model_ref).expanduser().absolute()
            if not path.is_dir():
                raise NotFound(
                    f"model directory {path} does not exist", "give an existing directory or ORG/NAME"
                )
            return path
        sources = ["modelscope", "huggingface"] if source == "auto" else [source]
        for s in [*sources, "local"]:
            with contextlib.suppress(InvalidSpec):
                ref = parse_model_id(model_ref, s, revision)
                if (found := self.get(ref)) is not None:
                    return found.path
        if no_pull:
            raise NotFound(
                f"model {model_ref} is not in {self.root}",
                f"pull it first with `llmdock pull {model_ref}`, or drop --no-pull",
            )
        return self.pull(model_ref, source=source, revision=revision, **pull_kwargs).path


def _ref_of(m: Manifest) -> ModelRef:
    org, name = m.repo_id.split("/", 1)
    return ModelRef(m.source, org, name, m.revision)
