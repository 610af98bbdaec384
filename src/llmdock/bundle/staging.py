"""One bundle's staging directory on the models disk: members written safely, and the ones verified so
far recorded, so that a later load of the same bundle goes on from there.

``models_dir/.staging/bundle-<head sha256[:16]>/`` holds each member under its (checked) name, written
to ``NAME.part`` and renamed only once its bytes are known, and ``.llmdock-bundle-progress.json`` with the
size and sha256 of every member done. Nothing here is ever in the store: the loader moves the weights
in when all members matched.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tarfile
from dataclasses import asdict
from pathlib import Path

from llmdock.bundle import manifest as bm
from llmdock.errors import InsufficientSpace
from llmdock.models import disk, manifest

PROGRESS_FILE = ".llmdock-bundle-progress.json"
BLOCK = 1 << 20


class Staging:
    def __init__(self, models_dir: Path, head_sha: str, model_key: str) -> None:
        self.dir = models_dir / ".staging" / f"bundle-{head_sha[:16]}"
        self.model_key = model_key

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def discard(self, name: str) -> None:
        (self.dir / name).unlink(missing_ok=True)

    def drop_others(self) -> None:
        """Another bundle of this model staged before is given up: this one registers the model (and
        their image parts could never be mixed with these). We hold the model's lock."""
        for other in self.dir.parent.glob("bundle-*"):
            if other == self.dir:
                continue
            try:
                model = json.loads((other / PROGRESS_FILE).read_text()).get("model")
            except (OSError, ValueError, AttributeError):
                continue
            if model == self.model_key:
                shutil.rmtree(other, ignore_errors=True)

    def staged(self) -> dict[str, bm.Member]:
        try:
            raw = json.loads((self.dir / PROGRESS_FILE).read_text())
            found = [bm.Member(**m) for m in raw["members"]]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return {}
        return {
            m.path: m
            for m in found
            if (self.dir / m.path).is_file() and (self.dir / m.path).stat().st_size == m.size
        }

    def save(self, staged: dict[str, bm.Member]) -> None:
        text = json.dumps({"model": self.model_key, "members": [asdict(m) for m in staged.values()]})
        manifest.write_atomic(self.dir / PROGRESS_FILE, text)

    def extract(self, tar: tarfile.TarFile, info: tarfile.TarInfo, want: bm.Member | None) -> bm.Member:
        """Copy one member to ``NAME.part``, hashing it; check it; rename it to ``NAME``."""
        target = self.dir / info.name
        root = self.dir.resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(root) or target.is_symlink():
            raise bm.BundleError(
                f"bundle member {info.name} would be written outside {self.dir} (a link there)",
                f"remove {self.dir} and load again",
                member=info.name,
            )
        part = target.with_name(target.name + ".part")
        part.unlink(missing_ok=True)
        digest, size = hashlib.sha256(), 0
        src = tar.extractfile(info)
        assert src is not None  # a regular file
        try:
            with open(part, "xb") as out:
                while block := src.read(BLOCK):
                    digest.update(block)
                    out.write(block)
                    size += len(block)
                out.flush()
                os.fsync(out.fileno())
        except tarfile.ReadError:
            part.unlink(missing_ok=True)
            raise self.cut_short(info.name) from None
        except OSError as e:
            part.unlink(missing_ok=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientSpace(
                    f"the disk under {self.dir} filled up while loading {info.name}; nothing was registered",
                    "free some space (or choose another --models-dir) and run the same load again: "
                    "the verified members are kept",
                    free=disk.probe(self.dir).free,
                ) from e
            raise
        got = bm.Member(info.name, size, digest.hexdigest())
        if want is not None:
            try:
                bm.check_bytes(want, size, got.sha256)
            except bm.BundleError:
                part.unlink(missing_ok=True)
                raise
        os.replace(part, target)
        return got

    def cut_short(self, name: str) -> bm.BundleError:
        return bm.BundleError(
            f"the bundle ends early, inside member {name} — a copy that has not finished, or a file cut short",
            f"complete the copy and run `llmdock load` again: the members verified before {name} are kept "
            f"in {self.dir} and not read again; nothing was registered or loaded",
            member=name,
        )
