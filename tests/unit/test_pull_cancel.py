"""A cancelled fetch keeps exactly the bytes that arrived (never a block twice), and the pull bars show
no negative speed when a part restarts nor a speed spike when a pull resumes."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from llmdock.cli.models import Bars
from llmdock.models.fetch import fetch_file
from llmdock.models.hubs import MemoryHub, RemoteFile

DATA = bytes(range(256)) * 64  # 16 KiB


class Cancelled(Exception):
    pass


@pytest.mark.parametrize("cancel_at", [1, 2, 3])
def test_cancel_inside_a_flush_writes_no_block_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cancel_at: int
) -> None:
    """The pull's progress callback raises to cancel a worker; the buffered block it was reporting
    is on disk once, and the part is a clean prefix of the file (what a resume hashes)."""
    monkeypatch.setattr("llmdock.models.fetch.WRITE_BLOCK", 1000)
    hub = MemoryHub(repos={"org/m": {"w.bin": DATA}})
    remote = RemoteFile("w.bin", len(DATA), hashlib.sha256(DATA).hexdigest())
    seen: list[int] = []

    def progress(event: dict[str, Any]) -> None:
        if event["event"] == "progress":
            seen.append(event["done"])
            if len(seen) == cancel_at:
                raise Cancelled()

    with pytest.raises(Cancelled):
        fetch_file(hub, "org/m", "master", remote, tmp_path, progress)
    part = (tmp_path / "w.bin.part").read_bytes()
    assert len(part) >= seen[-1] and part == DATA[: len(part)]

    record = fetch_file(hub, "org/m", "master", remote, tmp_path)  # the resume verifies
    assert record.sha256 == remote.sha256 and hub.opened[-1] == ("w.bin", len(part))


def bars() -> Bars:
    return Bars("pull", console=Console(file=io.StringIO()))


def test_a_restarted_part_moves_the_bar_back_without_negative_speed() -> None:
    b = bars()
    b.on({"event": "plan", "model": "m", "files": 1, "total_bytes": 1000, "fetch_bytes": 1000, "dir": "/x"})
    b.on({"event": "file_start", "path": "w", "size": 1000, "offset": 0})
    b.on({"event": "progress", "path": "w", "done": 600, "size": 1000, "delta": 600})
    b.on({"event": "progress", "path": "w", "done": 0, "size": 1000, "delta": -600})
    overall = b.task(b.overall)
    assert overall.completed == 0
    assert overall.speed is None or overall.speed >= 0
    assert overall.time_remaining is None or overall.time_remaining >= 0


def test_bytes_already_here_on_resume_are_no_transfer() -> None:
    b = bars()
    b.on({"event": "listing", "model": "m", "source": "modelscope"})
    b.on({"event": "plan", "model": "m", "files": 1, "total_bytes": 10**9, "fetch_bytes": 10, "dir": "/x"})
    overall = b.task(b.overall)
    assert overall.completed == 10**9 - 10 and overall.visible
    assert overall.speed is None  # not a gigabyte in no time


def test_the_overall_bar_is_hidden_until_there_is_something_to_fetch() -> None:
    b = bars()
    assert not b.task(b.overall).visible  # e.g. `up` of a local folder: no empty `0/? bytes`
