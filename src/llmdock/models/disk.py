"""Disk guards run before a download: enough free space (with a margin), and not the system disk.

The decisions are pure functions over :class:`DiskFacts`; :func:`probe` gathers the facts.
The manual procedure's warning stands behind the second guard: weights are huge, and a full root
filesystem takes the whole server down (logs, Docker, sshd), not just the download.

Example::

    facts = probe(Path("/data/models"))
    check_space(need=15 * GiB, facts=facts)
    check_system_disk(total=15 * GiB, facts=facts, allow=False)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from llmdock.errors import InsufficientSpace, InvalidSpec

GiB = 1 << 30
MARGIN_RATIO = 0.05  # keep 5 % more than the download itself …
RESERVE = 1 * GiB  # … and at least this much free after it
SYSTEM_DISK_LIMIT = 10 * GiB  # models bigger than this are refused on the root filesystem


@dataclass(frozen=True)
class DiskFacts:
    path: Path  # the models dir (or its nearest existing parent)
    free: int
    on_root_fs: bool


def probe(path: Path) -> DiskFacts:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    st = os.statvfs(existing)
    on_root = os.stat(existing).st_dev == os.stat("/").st_dev
    return DiskFacts(path=existing, free=st.f_bavail * st.f_frsize, on_root_fs=on_root)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def required(need: int, reserve: int = RESERVE, margin: float = MARGIN_RATIO) -> int:
    return need + int(need * margin) + reserve if need > 0 else 0


def check_space(
    need: int,
    facts: DiskFacts,
    reserve: int = RESERVE,
    margin: float = MARGIN_RATIO,
    what: str = "the download",
    hint: str = "free some space, or point --models-dir (or LLMDOCK_MODELS_DIR) at a bigger data disk",
) -> None:
    """Refuse when ``need`` bytes (plus margin and reserve) do not fit; the message has both numbers."""
    want = required(need, reserve, margin)
    if want > facts.free:
        raise InsufficientSpace(
            f"not enough free space in {facts.path}: {what} needs {human(want)} "
            f"({human(need)} of files plus margin) but only {human(facts.free)} is free",
            hint,
            need=want,
            free=facts.free,
        )


def check_system_disk(total: int, facts: DiskFacts, allow: bool, limit: int = SYSTEM_DISK_LIMIT) -> None:
    """Refuse a model over ``limit`` bytes on the root filesystem unless ``allow``."""
    if facts.on_root_fs and total > limit and not allow:
        raise InvalidSpec(
            f"{facts.path} is on the system (root) filesystem and this model is {human(total)}; "
            "weights that size can fill the system disk and take the server down with it",
            "set --models-dir (or LLMDOCK_MODELS_DIR) to a directory on a data disk, "
            "or pass --allow-system-disk if you are sure",
        )
