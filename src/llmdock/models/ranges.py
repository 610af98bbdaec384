"""Byte ranges of one file being fetched in parallel: how to split it, and what a resume still needs.

Pure bookkeeping, no I/O but the sidecar's read and atomic write. A file fetched in several ranges is
written into ``NAME.part`` at each range's offsets; ``NAME.part.ranges`` (the *sidecar*) records, per
range, how many of its bytes are on disk. The sidecar is written before the part first grows, and
only ever claims bytes already written, so a pull killed at any moment resumes each range where it
stopped. A part without a sidecar is a plain prefix (a single-stream download): its size is its
progress, and the rest of the file is split afresh.

Example::

    ranges = plan(size=1 << 30, connections=16)      # 16 ranges of 64 MiB, nothing done
    ranges[0].done = 5 << 20                          # 5 MiB of the first range arrived
    contiguous(ranges)                                # 5 MiB: what can be hashed so far
    write_sidecar(part, remote_size, sha256, ranges)
    resume(size, part_size, read_sidecar(part, size, sha256))   # the same ranges, next run
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MIN_RANGE = 8 << 20  # a range smaller than this costs more in requests than it gains in parallelism
SIDECAR_SUFFIX = ".ranges"
SIDECAR_VERSION = 1


@dataclass
class Range:
    """Bytes ``[start, end)`` of a file; the first ``done`` of them are on disk."""

    start: int
    end: int
    done: int = 0

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def pos(self) -> int:
        """The next offset to fetch."""
        return self.start + self.done

    @property
    def complete(self) -> bool:
        return self.done >= self.size


def split(start: int, end: int, parts: int) -> list[Range]:
    """``[start, end)`` in ``parts`` ranges of nearly equal size (the first ones one byte longer)."""
    length = end - start
    parts = max(1, min(parts, length)) if length > 0 else 1
    base, extra = divmod(length, parts)
    out, pos = [], start
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(Range(pos, pos + size))
        pos += size
    return out


def parts_for(length: int, connections: int, min_range: int = MIN_RANGE) -> int:
    """How many ranges ``length`` bytes are worth: one per connection, none under ``min_range``."""
    return max(1, min(connections, length // max(1, min_range)))


def plan(size: int, connections: int, min_range: int = MIN_RANGE, prefix: int = 0) -> list[Range]:
    """Ranges for a file of ``size`` bytes whose first ``prefix`` bytes are already on disk."""
    prefix = max(0, min(prefix, size))
    head = [Range(0, prefix, prefix)] if prefix else []
    if prefix == size and size > 0:
        return head
    return head + split(prefix, size, parts_for(size - prefix, connections, min_range))


def contiguous(ranges: Sequence[Range]) -> int:
    """How many bytes from offset 0 are on disk without a hole: the part of the file hashable now."""
    cursor = 0
    for r in sorted(ranges, key=lambda r: r.start):
        if r.start != cursor:
            return cursor
        if not r.complete:
            return r.pos
        cursor = r.end
    return cursor


def fetched(ranges: Sequence[Range]) -> int:
    return sum(min(r.done, r.size) for r in ranges)


def valid(ranges: Sequence[Range], size: int) -> bool:
    """The ranges tile ``[0, size)`` exactly, in order, each with ``0 <= done <= its size``."""
    cursor = 0
    for r in ranges:
        if r.start != cursor or r.end < r.start or not 0 <= r.done <= r.size:
            return False
        cursor = r.end
    return cursor == size and (bool(ranges) or size == 0)


def resume(size: int, part_size: int, saved: Sequence[Range] | None, connections: int) -> list[Range]:
    """What is left of a file: the sidecar's ranges (trimmed to what the part really holds), or,
    without one, the part as a plain prefix and the rest split afresh."""
    if saved is not None and valid(saved, size):
        return [Range(r.start, r.end, max(0, min(r.done, part_size - r.start))) for r in saved]
    return plan(size, connections, prefix=min(part_size, size))


def sidecar_path(part: Path) -> Path:
    return part.with_name(part.name + SIDECAR_SUFFIX)


def read_sidecar(part: Path, size: int, sha256: str | None) -> list[Range] | None:
    """The ranges recorded for ``part``, or None when there is no sidecar or it is for another file
    (the hub now lists a different size or checksum) or unreadable."""
    try:
        raw = json.loads(sidecar_path(part).read_text())
        if raw["version"] != SIDECAR_VERSION or raw["size"] != size or raw["sha256"] != sha256:
            return None
        ranges = [Range(int(s), int(e), int(d)) for s, e, d in raw["ranges"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return ranges if valid(ranges, size) else None


def write_sidecar(part: Path, size: int, sha256: str | None, ranges: Sequence[Range]) -> None:
    """Write the sidecar atomically (a reader sees the old one or the new one), without fsync: the
    part's own bytes are not synced either, and a sidecar lost to a power cut only costs a re-fetch
    (the sha256 check sees to that). One writer at a time per part (the model's lock, the job's)."""
    body = {
        "version": SIDECAR_VERSION,
        "size": size,
        "sha256": sha256,
        "ranges": [[r.start, r.end, r.done] for r in ranges],
    }
    tmp = _tmp(part)
    tmp.write_text(json.dumps(body, separators=(",", ":")))
    os.replace(tmp, sidecar_path(part))


def _tmp(part: Path) -> Path:
    return part.with_name(part.name + SIDECAR_SUFFIX + ".tmp")


def drop_tmp(part: Path) -> None:
    """Remove the temporary sidecar a write killed half-way left behind."""
    _tmp(part).unlink(missing_ok=True)


def remove_sidecar(part: Path) -> None:
    sidecar_path(part).unlink(missing_ok=True)
    drop_tmp(part)
