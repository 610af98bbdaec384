"""Range splitting and resume bookkeeping for parallel ranged pulls (llmdock.models.ranges), and the
``pull_connections`` setting. Pure functions, table-driven; the sidecar round-trips through a real file."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmdock import settings
from llmdock.errors import ConfigError
from llmdock.models import ranges as rg
from llmdock.models.ranges import Range

MiB = 1 << 20


def spans(ranges: list[Range]) -> list[tuple[int, int, int]]:
    return [(r.start, r.end, r.done) for r in ranges]


@pytest.mark.parametrize(
    ("start", "end", "parts", "expected"),
    [
        (0, 10, 1, [(0, 10, 0)]),
        (0, 10, 3, [(0, 4, 0), (4, 7, 0), (7, 10, 0)]),  # the first ones take the remainder
        (0, 3, 8, [(0, 1, 0), (1, 2, 0), (2, 3, 0)]),  # never an empty range
        (5, 15, 2, [(5, 10, 0), (10, 15, 0)]),  # the rest of a file after a prefix
        (0, 0, 4, [(0, 0, 0)]),  # an empty file is one (complete) range
    ],
)
def test_split(start: int, end: int, parts: int, expected: list[tuple[int, int, int]]) -> None:
    assert spans(rg.split(start, end, parts)) == expected


@pytest.mark.parametrize(
    ("length", "connections", "parts"),
    [
        (1000, 16, 1),  # small files: one stream
        (rg.MIN_RANGE * 2 - 1, 16, 1),
        (rg.MIN_RANGE * 2, 16, 2),
        (rg.MIN_RANGE * 100, 16, 16),  # big files: one range per connection
        (rg.MIN_RANGE * 100, 1, 1),
    ],
)
def test_parts_for(length: int, connections: int, parts: int) -> None:
    assert rg.parts_for(length, connections) == parts


@pytest.mark.parametrize(
    ("size", "prefix", "expected"),
    [
        (
            32 * MiB,
            0,
            [(0, 8 * MiB, 0), (8 * MiB, 16 * MiB, 0), (16 * MiB, 24 * MiB, 0), (24 * MiB, 32 * MiB, 0)],
        ),
        # a plain prefix (a single-stream part) is kept; only the rest is split
        (32 * MiB, 16 * MiB, [(0, 16 * MiB, 16 * MiB), (16 * MiB, 24 * MiB, 0), (24 * MiB, 32 * MiB, 0)]),
        (32 * MiB, 32 * MiB, [(0, 32 * MiB, 32 * MiB)]),
        (32 * MiB, 40 * MiB, [(0, 32 * MiB, 32 * MiB)]),  # a prefix is never longer than the file
        (100, 0, [(0, 100, 0)]),
    ],
)
def test_plan(size: int, prefix: int, expected: list[tuple[int, int, int]]) -> None:
    ranges = rg.plan(size, connections=4, prefix=prefix)
    assert spans(ranges) == expected and rg.valid(ranges, size)


@pytest.mark.parametrize(
    ("ranges", "hashable", "fetched"),
    [
        ([Range(0, 10, 0), Range(10, 20, 10)], 0, 10),  # a later range done, the first not: a hole at 0
        ([Range(0, 10, 4), Range(10, 20, 10)], 4, 14),
        ([Range(0, 10, 10), Range(10, 20, 3), Range(20, 30, 10)], 13, 23),
        ([Range(0, 10, 10), Range(10, 20, 10)], 20, 20),
        ([Range(10, 20, 10), Range(0, 10, 10)], 20, 20),  # order does not matter
    ],
)
def test_contiguous_and_fetched(ranges: list[Range], hashable: int, fetched: int) -> None:
    assert rg.contiguous(ranges) == hashable
    assert rg.fetched(ranges) == fetched


@pytest.mark.parametrize(
    ("ranges", "size", "ok"),
    [
        ([Range(0, 10, 0), Range(10, 20, 5)], 20, True),
        ([Range(0, 10, 0), Range(11, 20, 0)], 20, False),  # a gap
        ([Range(0, 10, 0), Range(5, 20, 0)], 20, False),  # an overlap
        ([Range(0, 10, 0)], 20, False),  # short of the file
        ([Range(0, 10, 11)], 10, False),  # more done than the range holds
        ([Range(0, 10, -1)], 10, False),
        ([], 0, True),
        ([], 5, False),
    ],
)
def test_valid(ranges: list[Range], size: int, ok: bool) -> None:
    assert rg.valid(ranges, size) is ok


SAVED = [Range(0, 10, 10), Range(10, 20, 7), Range(20, 30, 2)]


@pytest.mark.parametrize(
    ("part_size", "saved", "expected"),
    [
        (30, SAVED, [(0, 10, 10), (10, 20, 7), (20, 30, 2)]),  # the sidecar: each range where it stopped
        (15, SAVED, [(0, 10, 10), (10, 20, 5), (20, 30, 0)]),  # trimmed to what the part really holds
        (0, SAVED, [(0, 10, 0), (10, 20, 0), (20, 30, 0)]),
        (12, None, [(0, 12, 12), (12, 30, 0)]),  # no sidecar: the part is a plain prefix
        (12, [Range(0, 10, 10)], [(0, 12, 12), (12, 30, 0)]),  # a sidecar for another size is ignored
    ],
)
def test_resume(part_size: int, saved: list[Range] | None, expected: list[tuple[int, int, int]]) -> None:
    copy = None if saved is None else [Range(r.start, r.end, r.done) for r in saved]
    assert spans(rg.resume(30, part_size, copy, connections=4)) == expected


def test_sidecar_round_trip_and_refusals(tmp_path: Path) -> None:
    part = tmp_path / "model.safetensors.part"
    rg.write_sidecar(part, 30, "ab" * 32, SAVED)
    assert rg.sidecar_path(part).name == "model.safetensors.part.ranges"
    assert spans(rg.read_sidecar(part, 30, "ab" * 32) or []) == spans(SAVED)
    assert rg.read_sidecar(part, 31, "ab" * 32) is None  # the hub now lists another size
    assert rg.read_sidecar(part, 30, "cd" * 32) is None  # or another checksum
    rg.sidecar_path(part).write_text("{not json")
    assert rg.read_sidecar(part, 30, "ab" * 32) is None
    rg.sidecar_path(part).write_text('{"version": 1, "size": 30, "sha256": null, "ranges": [[0, 10, 11]]}')
    assert rg.read_sidecar(part, 30, None) is None  # ranges that do not tile the file
    assert rg.read_sidecar(tmp_path / "absent.part", 30, None) is None
    stale = tmp_path / "model.safetensors.part.ranges.tmp"  # what a write killed half-way leaves
    stale.write_text("{")
    rg.remove_sidecar(part)
    assert not stale.exists() and not rg.sidecar_path(part).exists()


@pytest.mark.parametrize(
    ("value", "ok"), [("16", 16), ("1", 1), (" 64 ", 64), ("0", None), ("65", None), ("x", None)]
)
def test_pull_connections_setting(tmp_path: Path, value: str, ok: int | None) -> None:
    env = {"LLMDOCK_HOME": str(tmp_path), "LLMDOCK_PULL_CONNECTIONS": value}
    if ok is None:
        with pytest.raises(ConfigError, match="not a whole number from 1 to 64") as e:
            settings.load(env)
        assert "LLMDOCK_PULL_CONNECTIONS" in e.value.hint
    else:
        assert settings.load(env).pull_connections == ok


def test_pull_connections_default(tmp_path: Path) -> None:
    loaded = settings.load({"LLMDOCK_HOME": str(tmp_path)})
    assert loaded.pull_connections == 16 and loaded.sources["pull_connections"] == "default"
