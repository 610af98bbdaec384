"""Model IDs, revisions and hub file names: validated before they become paths; and the store layout.

Everything a hub or a user hands us ends up as a path under the models dir, so every piece is checked
against a strict alphabet, and ``..``, absolute paths and odd characters are refused. Pure functions.

Layout under the models dir::

    modelscope/Qwen/Qwen2.5-7B-Instruct@master/      the weights, as the hub lays them out
    .manifests/modelscope/Qwen/Qwen2.5-7B-Instruct@master.json
    .staging/modelscope/Qwen/Qwen2.5-7B-Instruct@master/   a pull in progress (partial files: *.part)
    .locks/modelscope--Qwen--Qwen2.5-7B-Instruct@master.lock

Example::

    >>> ref = parse_model_id("Qwen/Qwen2.5-7B-Instruct@master", source="modelscope")
    >>> layout(Path("/data/models"), ref).weights
    PosixPath('/data/models/modelscope/Qwen/Qwen2.5-7B-Instruct@master')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from llmdock.errors import InvalidSpec

SOURCES = ("modelscope", "huggingface", "local")
DEFAULT_REVISION = {"modelscope": "master", "huggingface": "main", "local": "local"}

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FILE_SEGMENT = re.compile(r"[A-Za-z0-9_.+=,@()\[\] -]{1,255}")
PART_SUFFIX = ".part"
RESERVED_PREFIX = ".llmdock"


@dataclass(frozen=True)
class ModelRef:
    """A model in the store: which hub, which repo, which revision."""

    source: str
    org: str
    name: str
    revision: str

    @property
    def repo_id(self) -> str:
        return f"{self.org}/{self.name}"

    @property
    def key(self) -> str:
        """The one-line name used by ``models ls``/``rm``: ``source:org/name@revision``."""
        return f"{self.source}:{self.repo_id}@{self.revision}"

    def with_revision(self, revision: str) -> ModelRef:
        return ModelRef(self.source, self.org, self.name, check_revision(revision))


@dataclass(frozen=True)
class Layout:
    weights: Path
    manifest: Path
    staging: Path
    lock: Path


def layout(models_dir: Path, ref: ModelRef) -> Layout:
    leaf = f"{ref.name}@{ref.revision}"
    return Layout(
        weights=models_dir / ref.source / ref.org / leaf,
        manifest=models_dir / ".manifests" / ref.source / ref.org / f"{leaf}.json",
        staging=models_dir / ".staging" / ref.source / ref.org / leaf,
        lock=models_dir / ".locks" / f"{ref.source}--{ref.org}--{leaf}.lock",
    )


def check_source(source: str) -> str:
    if source not in SOURCES:
        raise InvalidSpec(f"unknown model source {source!r}", "use one of: " + ", ".join(SOURCES))
    return source


def check_revision(revision: str) -> str:
    if not _REVISION.fullmatch(revision) or ".." in revision:
        raise InvalidSpec(
            f"revision {revision!r} is not a plain branch, tag or commit name",
            "use letters, digits, '.', '_' or '-' (e.g. master, main, v1.0 or a commit hash)",
        )
    return revision


def parse_model_id(text: str, source: str, revision: str | None = None) -> ModelRef:
    """``ORG/NAME`` or ``ORG/NAME@REV`` -> ModelRef; ``revision`` (a flag) wins over ``@REV``.

    A bare ``NAME`` is accepted only for ``local`` (imported) models, filed under the org ``local``.
    """
    check_source(source)
    raw = text.strip()
    at_rev: str | None = None
    if "@" in raw:
        raw, at_rev = raw.rsplit("@", 1)
    parts = raw.split("/")
    if len(parts) == 1 and source == "local":
        parts = ["local", parts[0]]
    if len(parts) != 2 or not all(_SEGMENT.fullmatch(p) and ".." not in p for p in parts):
        raise InvalidSpec(
            f"model ID {text!r} is not of the form ORG/NAME",
            "write it as the hub shows it, e.g. Qwen/Qwen2.5-7B-Instruct (letters, digits, '.', '_', '-'; "
            "no '..', no absolute paths)",
        )
    rev = revision or (at_rev if at_rev is not None else DEFAULT_REVISION[source])
    return ModelRef(source, parts[0], parts[1], check_revision(rev))


def check_hub_path(path: str) -> str:
    """A file name from a hub's listing, as a safe relative POSIX path; refuse anything else."""
    pure = PurePosixPath(path)
    bad = (
        not path
        or path.startswith("/")
        or "\\" in path
        or "//" in path
        or pure.is_absolute()
        or any(seg in ("", ".", "..") or not _FILE_SEGMENT.fullmatch(seg) for seg in path.split("/"))
        or path.endswith((PART_SUFFIX, PART_SUFFIX + ".ranges", PART_SUFFIX + ".ranges.tmp"))  # our own files
        or path.split("/")[0].startswith(RESERVED_PREFIX)
    )
    if bad:
        raise InvalidSpec(
            f"the hub lists a file named {path!r}, which is not a safe relative path",
            "refusing to write outside the model directory; report this repository to its owners",
        )
    return path


def looks_like_path(text: str) -> bool:
    """Whether a model reference is meant as a local directory rather than a hub ID."""
    return text.startswith(("/", "./", "../", "~")) or text in (".", "..")


def as_hub_id(model: str) -> str | None:
    """``model`` when it reads as a hub ID (``Qwen/Qwen3-8B``), None for a folder. Pure: looks at no disk."""
    return model if model.count("/") == 1 and not looks_like_path(model) else None
