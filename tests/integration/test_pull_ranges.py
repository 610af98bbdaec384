"""Parallel ranged pulls through both hubs' URLs against the loopback hub (tests/support/hub.py):
ranges equal the file, a drop mid-range re-fetches only what was missing, a killed pull resumes each
range where its sidecar says, corruption is re-fetched once then refused, a server without Range
support still works, redirects are followed and the connection bound holds."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmdock.errors import ConfigError, HubError, IntegrityError, NotFound
from llmdock.models import ranges as rg
from llmdock.models.names import parse_model_id
from llmdock.models.store import ModelStore
from tests.support.hub import LocalHub, hub_env, tiny_model_files

REPO = "tiny/model"
SHARD = "model-00001-of-00002.safetensors"
OTHER = "model-00002-of-00002.safetensors"
SOURCES = ["modelscope", "huggingface"]
MiB = 1 << 20
FILES = tiny_model_files(shard_bytes=32 * MiB)  # shards of 4 ranges of 8 MiB (ranges.MIN_RANGE)
SIZE = len(FILES[SHARD])


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LocalHub]:
    with LocalHub() as h:
        h.add_repo(REPO, FILES)
        for k, v in hub_env(h.url).items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("LLMDOCK_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("LLMDOCK_PULL_CONNECTIONS", "4")
        monkeypatch.setattr("llmdock.models.fetch.BACKOFF_S", 0.0)
        yield h


@pytest.fixture
def store(tmp_path: Path, hub: LocalHub) -> ModelStore:
    return ModelStore(tmp_path / "models", reserve=0)


def starts(hub: LocalHub, path: str) -> list[int]:
    return sorted(r.range_start or 0 for r in hub.file_requests(path))


def quarters(size: int) -> list[int]:
    return [r.start for r in rg.split(0, size, 4)]


@pytest.mark.parametrize("source", SOURCES)
def test_ranged_pull_equals_the_files_through_redirects(
    store: ModelStore, hub: LocalHub, source: str
) -> None:
    hub.faults.redirect = True  # as the hubs' CDNs do: every file GET is a 302 to a signed URL first
    m = store.pull(REPO, source=source)
    assert m.complete and {p.name: p.read_bytes() for p in m.path.iterdir()} == FILES
    assert starts(hub, SHARD) == quarters(SIZE)  # four ranges of one file, each asked once
    assert hub.bytes_sent(SHARD) == SIZE
    assert all(r.path.startswith("/cdn/") for r in hub.file_requests(SHARD))
    assert 2 <= hub.max_active <= 4  # in parallel, never more than LLMDOCK_PULL_CONNECTIONS
    assert not list(m.path.rglob("*.part*"))


@pytest.mark.parametrize("source", SOURCES)
def test_a_drop_mid_range_refetches_only_the_missing_bytes(
    store: ModelStore, hub: LocalHub, source: str
) -> None:
    cut = 3 * MiB + 123
    hub.faults.drop_after[SHARD] = cut  # the first response for the shard (its first range) breaks
    events: list[dict[str, object]] = []
    m = store.pull(REPO, source=source, progress=events.append)
    assert (m.path / SHARD).read_bytes() == FILES[SHARD]
    assert starts(hub, SHARD) == sorted([*quarters(SIZE), cut])  # the range resumed where it stopped
    assert hub.bytes_sent(SHARD) == SIZE  # no byte sent twice
    assert [e["offset"] for e in events if e["event"] == "retry"] == [cut]


@pytest.mark.parametrize("source", SOURCES)
def test_a_corrupt_range_is_refetched_once_then_the_file_is_refused(
    store: ModelStore, hub: LocalHub, source: str
) -> None:
    hub.faults.corrupt.add(SHARD)  # one byte flipped in the middle of the file, in every response
    with pytest.raises(IntegrityError, match=f"{SHARD}: checksum does not match the hub's") as e:
        store.pull(REPO, source=source)
    assert e.value.files == [SHARD] and "run the pull again" in e.value.hint
    assert store.list() == []
    assert hub.bytes_sent(SHARD) == 2 * SIZE  # fetched once more, then refused
    staging = store.layout(parse_model_id(REPO, source)).staging
    assert not (staging / SHARD).exists() and not list(staging.glob(f"{SHARD}.part*"))

    def heal(event: dict[str, object]) -> None:  # the corruption was in transit: the re-fetch is clean
        if event["event"] == "retry" and event["error"] == "checksum mismatch":
            hub.faults.corrupt.clear()

    hub.faults.corrupt.add(SHARD)
    m = store.pull(REPO, source=source, progress=heal)
    assert m.complete and (m.path / SHARD).read_bytes() == FILES[SHARD]


@pytest.mark.parametrize("source", SOURCES)
def test_a_server_without_range_support_gets_one_stream(
    store: ModelStore, hub: LocalHub, source: str
) -> None:
    hub.faults.ignore_range = True  # 200 and the whole file, whatever the Range
    m = store.pull(REPO, source=source)
    assert {p.name: p.read_bytes() for p in m.path.iterdir()} == FILES
    assert starts(hub, SHARD) == [0] and hub.bytes_sent(SHARD) == SIZE  # the first answer was the file


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "sig"),
    [("modelscope", signal.SIGKILL), ("huggingface", signal.SIGINT)],
    ids=["modelscope-SIGKILL", "huggingface-SIGINT"],
)
def test_a_killed_pull_resumes_each_range_where_it_stopped(
    hub: LocalHub, tmp_path: Path, source: str, sig: signal.Signals
) -> None:
    """A real `llmdock pull` killed while the ranges of a shard are half-way: the sidecar records how far
    each range got; the next pull asks the hub for exactly the rest of each range, sends no byte twice
    beyond what the sidecar had not yet recorded, and verifies."""
    hub.faults.delay_s = 0.01  # per 64 KiB: ~1.3 s a range, time enough to kill the CLI mid-range
    models = tmp_path / "models"
    cmd = [
        sys.executable, "-m", "llmdock.cli.main", "pull", REPO,
        "--source", source, "--models-dir", str(models), "--json",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint
    )
    staging = ModelStore(models, reserve=0).layout(parse_model_id(REPO, source)).staging
    part = staging / f"{SHARD}.part"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the sidecar records a good share of the shard, not all
        saved = rg.read_sidecar(part, SIZE, _sha(SHARD))
        if (saved is not None and rg.fetched(saved) >= SIZE // 4) or proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0, stderr
    saved = rg.read_sidecar(part, SIZE, _sha(SHARD))
    assert saved is not None and [r.start for r in saved] == quarters(SIZE)
    assert 0 < rg.fetched(saved) < SIZE
    data = part.read_bytes()
    for r in saved:  # what the sidecar claims is on disk is the file's bytes
        assert data[r.start : r.pos] == FILES[SHARD][r.start : r.pos]

    hub.faults.delay_s = 0.0
    before = len(hub.file_requests(SHARD))
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert not [e for e in events if e.get("delta", 0) < 0]  # nothing restarted
    asked = sorted((r.range_start, r.range_end) for r in hub.file_requests(SHARD)[before:])
    assert asked == [(r.pos, r.end) for r in saved if not r.complete]
    m = ModelStore(models, reserve=0).find(f"{source}:{REPO}")
    assert m.complete and (m.path / SHARD).read_bytes() == FILES[SHARD]
    assert not list(m.path.rglob("*.part*"))


def _sha(path: str) -> str:
    import hashlib

    return hashlib.sha256(FILES[path]).hexdigest()


def test_the_connection_setting_bounds_a_pull(
    store: ModelStore, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMDOCK_PULL_CONNECTIONS", "1")
    m = store.pull(REPO)
    assert m.complete and hub.max_active == 1
    assert starts(hub, SHARD) == [0]  # one connection: one range per file


@pytest.mark.parametrize("source", SOURCES)
def test_a_file_gone_from_the_hub_after_the_listing_is_not_found(
    store: ModelStore, hub: LocalHub, source: str
) -> None:
    def vanish(event: dict[str, object]) -> None:
        if event["event"] == "plan":
            del hub.repos[REPO][SHARD]

    with pytest.raises(NotFound, match="not found") as e:
        store.pull(REPO, source=source, progress=vanish)
    assert SHARD in e.value.message and e.value.hint
    assert store.list() == []


@pytest.mark.parametrize("source", SOURCES)
def test_a_hub_that_goes_away_mid_pull_is_named_after_the_retries(
    store: ModelStore, hub: LocalHub, source: str
) -> None:
    def stop(event: dict[str, object]) -> None:
        if event["event"] == "plan":
            hub.__exit__()  # nothing listens at the endpoint any more

    with pytest.raises(HubError, match="kept failing after 5 attempts") as e:
        store.pull(REPO, source=source, progress=stop)
    assert "cannot reach" in e.value.message and hub.url in e.value.message
    assert "run the same pull again" in e.value.hint or "mirror" in e.value.hint


def test_a_bad_connection_setting_is_refused_before_anything_happens(
    store: ModelStore, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMDOCK_PULL_CONNECTIONS", "0")
    with pytest.raises(ConfigError, match="pull_connections '0'"):
        store.pull(REPO)
    assert hub.log == [] and not store.root.exists()


@pytest.mark.slow
def test_at_the_end_an_idle_connection_takes_over_half_of_a_slow_range(
    store: ModelStore, hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two connections, one 64 MiB file in two ranges; the first range's connection drops early and
    waits a second before it resumes, so the second range finishes while the first still has most of
    its bytes to go: the free connection asks for the back half of what is left, and the file is
    still whole and verified."""
    big = (FILES[SHARD] * 2)[: 64 * MiB]
    hub.add_repo(REPO, {"big.bin": big, "config.json": b"{}"})
    hub.faults.rate_per_connection = 16e6
    hub.faults.drop_after["big.bin"] = MiB  # the first response (the first range) breaks after 1 MiB
    monkeypatch.setenv("LLMDOCK_PULL_CONNECTIONS", "2")
    monkeypatch.setattr("llmdock.models.fetch.BACKOFF_S", 1.0)
    m = store.pull(REPO)
    assert (m.path / "big.bin").read_bytes() == big
    asked = [(r.range_start, r.range_end) for r in hub.file_requests("big.bin")]
    half = 32 * MiB
    # the two ranges, the first one resumed after its drop, and the back of it taken over
    assert asked[:3] == [(0, half), (half, 2 * half), (MiB, half)]
    assert len(asked) == 4 and MiB < (asked[3][0] or 0) < half and asked[3][1] == half
    assert not list(m.path.rglob("*.part*"))
