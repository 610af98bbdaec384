"""The manifest: one JSON file per model saying which files it has, their sizes and sha256, and whether
every one of them was verified. A model is *present* only when its manifest says ``complete``.

Example file (``.manifests/modelscope/Qwen/Qwen2.5-7B-Instruct@master.json``)::

    {"schema": 1, "source": "modelscope", "repo_id": "Qwen/Qwen2.5-7B-Instruct", "revision": "master",
     "commit": "…", "path": "/data/models/modelscope/Qwen/Qwen2.5-7B-Instruct@master", "imported": false,
     "files": [{"path": "config.json", "size": 663, "sha256": "…", "checked": "sha256"}],
     "completed_at": "2025-01-01T10:00:00+00:00", "verified_at": "…", "bad_files": []}

``checked`` says what the hub let us compare against: ``sha256``, ``git-sha1`` (small files on Hugging
Face), ``size`` (the hub gave no checksum), or ``local`` (imported: hashed on import).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmdock.errors import ConfigError

SCHEMA = 1


@dataclass(frozen=True)
class FileRecord:
    path: str
    size: int
    sha256: str
    checked: str = "sha256"


@dataclass
class Manifest:
    source: str
    repo_id: str
    revision: str
    path: str
    commit: str = ""
    imported: bool = False
    files: list[FileRecord] = field(default_factory=list)
    completed_at: str | None = None
    verified_at: str | None = None
    bad_files: list[str] = field(default_factory=list)
    schema: int = SCHEMA

    @property
    def complete(self) -> bool:
        """Complete = every file fetched and verified, and no later verify found a bad one."""
        return self.completed_at is not None and not self.bad_files

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw: dict[str, Any] = json.loads(text)
        files = [FileRecord(**f) for f in raw.pop("files", [])]
        known = set(cls.__dataclass_fields__)
        return cls(files=files, **{k: v for k, v in raw.items() if k in known})


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read(path: Path) -> Manifest | None:
    """The manifest at ``path``; None when absent. An unreadable one is an error naming the file."""
    try:
        return Manifest.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(
            f"model manifest {path} is unreadable: {e}",
            f"delete {path} and pull the model again (its files are re-verified, not re-downloaded)",
        ) from e


def write(path: Path, manifest: Manifest) -> None:
    """Write atomically: a reader sees the old manifest or the new one, never half of one."""
    write_atomic(path, manifest.to_json())


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
