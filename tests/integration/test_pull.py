"""`llmdock pull` and `llmdock models …` through the real ModelScope and Hugging Face SDKs against the
loopback hub (tests/support/hub.py): full pulls, resume after a drop and after SIGKILL, corruption,
a full disk, refused names, import / ls / rm."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmdock.errors import HubError, InsufficientSpace, IntegrityError, InvalidSpec, NotFound
from llmdock.models import disk
from llmdock.models.names import ModelRef, parse_model_id
from llmdock.models.store import ModelStore
from tests.support.hub import LocalHub, hub_env, tiny_model_files

REPO = "tiny/model"
SHARD = "model-00001-of-00002.safetensors"
SOURCES = ["modelscope", "huggingface"]


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LocalHub]:
    with LocalHub() as h:
        h.add_repo(REPO, tiny_model_files())
        for k, v in hub_env(h.url).items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("LLMDOCK_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-cache"))
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.setattr("llmdock.models.fetch.BACKOFF_S", 0.0)
        yield h


@pytest.fixture
def store(tmp_path: Path, hub: LocalHub) -> ModelStore:
    return ModelStore(tmp_path / "models", reserve=0)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("source", SOURCES)
def test_full_pull(store: ModelStore, hub: LocalHub, source: str) -> None:
    m = store.pull(REPO, source=source)
    expected = tiny_model_files()
    assert m.complete and m.ref.source == source
    assert {p.name: p.read_bytes() for p in m.path.iterdir()} == expected
    assert {f.path: f.sha256 for f in m.manifest.files} == {k: sha(v) for k, v in expected.items()}
    checked = {f.path: f.checked for f in m.manifest.files}
    assert checked[SHARD] == "sha256"
    assert checked["config.json"] == ("git-sha1" if source == "huggingface" else "sha256")
    assert store.resolve(REPO, source=source, no_pull=True) == m.path


@pytest.mark.parametrize("source", SOURCES)
def test_resume_after_dropped_connection(store: ModelStore, hub: LocalHub, source: str) -> None:
    hub.faults.drop_after[SHARD] = 40_000
    events: list[dict[str, object]] = []
    m = store.pull(REPO, source=source, progress=events.append)
    assert m.complete and (m.path / SHARD).read_bytes() == tiny_model_files()[SHARD]
    assert [r.range_start for r in hub.file_requests(SHARD)] == [0, 40_000]
    assert [e["offset"] for e in events if e["event"] == "retry"] == [40_000]


@pytest.mark.parametrize("source", SOURCES)
def test_server_ignoring_range_restarts_the_file(store: ModelStore, hub: LocalHub, source: str) -> None:
    hub.faults.drop_after[SHARD] = 40_000
    hub.faults.ignore_range = True
    m = store.pull(REPO, source=source)
    assert (m.path / SHARD).read_bytes() == tiny_model_files()[SHARD]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a CI shell may start us with SIGINT ignored


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
@pytest.mark.parametrize("source", SOURCES)
def test_resume_after_killing_the_cli_mid_file(
    hub: LocalHub, tmp_path: Path, source: str, sig: signal.Signals
) -> None:
    """A real `llmdock pull` killed mid-file (SIGKILL: no cleanup; SIGINT: Ctrl-C, the workers are
    cancelled) leaves parts holding exactly the bytes that arrived; the next pull asks the hub for
    the rest of each file, writes no byte twice and verifies."""
    # Shards of three 4 MiB write blocks: a SIGINT after the first block lands while the second is
    # buffered, which is where a cancelled flush once wrote its block twice.
    big = tiny_model_files(shard_bytes=12 << 20)
    hub.add_repo(REPO, big)
    hub.faults.delay_s = 0.02  # per 64 KiB: ~4 s a shard, time enough to kill the CLI mid-file
    models = tmp_path / "models"
    cmd = [
        sys.executable, "-m", "llmdock.cli.main", "pull", REPO,
        "--source", source, "--models-dir", str(models), "--json",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
        preexec_fn=_default_sigint,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until a shard has bytes on disk (a progress event), then kill
        event = json.loads(line)
        if event["event"] == "progress" and event["path"] == SHARD and event["done"] < event["size"]:
            break
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stderr
        assert stderr.strip().splitlines()[-1].startswith("interrupted: what was fetched is kept"), stderr
        assert "Traceback" not in stderr
    store = ModelStore(models, reserve=0)
    lay = store.layout(parse_model_id(REPO, source))
    assert store.list() == [] and not lay.weights.exists()
    parts = {p.name.removesuffix(".part"): p.stat().st_size for p in lay.staging.glob("*.part")}
    assert parts.get(SHARD, 0) >= 4 << 20
    for name, kept in parts.items():  # every part is a clean prefix of its file
        assert (lay.staging / f"{name}.part").read_bytes() == big[name][:kept], name

    hub.faults.delay_s = 0.0
    before = {name: len(hub.file_requests(name)) for name in big}
    result = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert not [e for e in events if e["event"] == "retry" or e.get("delta", 0) < 0]
    m = store.find(f"{source}:{REPO}")
    assert m.complete and all((m.path / name).read_bytes() == data for name, data in big.items())
    for name, kept in parts.items():  # resumed where it stopped, not restarted
        asked = [r.range_start for r in hub.file_requests(name)[before[name] :]]
        assert asked == ([kept] if kept < len(big[name]) else []), name


def _ref() -> ModelRef:
    return parse_model_id(REPO, "modelscope")


@pytest.mark.parametrize("source", SOURCES)
def test_corruption_in_transit_is_refused_then_repaired_by_a_new_pull(
    store: ModelStore, hub: LocalHub, source: str
) -> None:
    hub.faults.corrupt.add(SHARD)
    with pytest.raises(IntegrityError, match="checksum does not match"):
        store.pull(REPO, source=source)
    assert store.list() == []
    hub.faults.corrupt.clear()
    before = {p: len(hub.file_requests(p)) for p in tiny_model_files()}
    m = store.pull(REPO, source=source)
    assert m.complete and (m.path / SHARD).read_bytes() == tiny_model_files()[SHARD]
    refetched = [p for p in before if len(hub.file_requests(p)) > before[p]]
    assert refetched == [SHARD] or SHARD in refetched


@pytest.mark.parametrize("source", SOURCES)
def test_corruption_on_disk_is_found_and_only_that_file_repaired(
    store: ModelStore, hub: LocalHub, source: str
) -> None:
    m = store.pull(REPO, source=source)
    data = bytearray((m.path / SHARD).read_bytes())
    data[1000] ^= 0xFF
    (m.path / SHARD).write_bytes(bytes(data))
    runner = CliRunner()
    from llmdock.cli.models import _standalone

    args = ["models", "verify", m.key, "--models-dir", str(store.root)]
    result = runner.invoke(_standalone(), args)
    assert result.exit_code == 1 and isinstance(result.exception, IntegrityError)
    assert store.get(m.ref) is None
    with pytest.raises(NotFound):
        store.resolve(REPO, source=source, no_pull=True)
    hub.log.clear()
    result = runner.invoke(_standalone(), [*args, "--repair"])
    assert result.exit_code == 0, result.output
    assert {r.file for r in hub.log if r.file} == {SHARD}
    assert store.get(m.ref) is not None and (m.path / SHARD).read_bytes() == tiny_model_files()[SHARD]


def test_full_disk(hub: LocalHub, tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs (needs root): {mounted.stderr.decode().strip()}")
    try:
        hub.add_repo(REPO, tiny_model_files(shard_bytes=1 << 20, shards=3))  # ~3 MiB: does not fit
        store = ModelStore(mnt / "models", reserve=0)
        with pytest.raises(InsufficientSpace) as e:  # the check before downloading, with both numbers
            store.pull(REPO)
        assert e.value.need > e.value.free > 0 and disk.human(e.value.free) in e.value.message
        # A disk that fills while downloading (the check passed, someone else wrote): clean error.
        lying = ModelStore(mnt / "models", reserve=0, probe=lambda p: disk.DiskFacts(p, 10**12, False))
        with pytest.raises(InsufficientSpace, match="filled up during the download"):
            lying.pull(REPO)
        assert lying.list() == [] and not lying.layout(_ref()).weights.exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("source", SOURCES)
def test_unknown_model(store: ModelStore, source: str) -> None:
    with pytest.raises(NotFound, match="not found"):
        store.pull("nobody/nothing", source=source)


def test_auto_falls_back_to_hugging_face(store: ModelStore, hub: LocalHub) -> None:
    real = hub.repos[REPO]
    hub.repos.clear()
    hub.repos["hf-only/model"] = real  # both APIs serve every repo here, so hide it from ModelScope's routes
    m = store.pull("hf-only/model", source="auto")
    assert m.ref.source in SOURCES and m.complete


@pytest.mark.parametrize("name", ["../etc", "/abs/x", "org/..", "org/a b"])
def test_traversal_model_ids_refused(store: ModelStore, hub: LocalHub, name: str) -> None:
    with pytest.raises(InvalidSpec):
        store.pull(name)
    assert hub.log == []  # refused before asking the hub


@pytest.mark.parametrize("source", SOURCES)
def test_traversal_file_names_from_the_hub_refused(
    store: ModelStore, hub: LocalHub, tmp_path: Path, source: str
) -> None:
    hub.add_repo("evil/model", {"config.json": b"{}", "../../../escape.txt": b"boom"})
    with pytest.raises((InvalidSpec, HubError)):
        store.pull("evil/model", source=source)
    assert not list(tmp_path.rglob("escape.txt"))


def test_import_ls_and_rm_refused_while_used(hub: LocalHub, tmp_path: Path) -> None:
    from llmdock.cli import models as cli

    weights = tmp_path / "by-hand"
    weights.mkdir()
    for name, data in tiny_model_files().items():
        (weights / name).write_bytes(data)
    runner = CliRunner()
    app = cli._standalone()
    md = ["--models-dir", str(tmp_path / "models")]
    assert runner.invoke(app, ["models", "import", str(weights), "--name", "team/tiny", *md]).exit_code == 0
    assert runner.invoke(app, ["pull", REPO, *md]).exit_code == 0
    cli.set_used_by(lambda p: ["chat-prod"] if p == weights else [])
    try:
        listed = json.loads(runner.invoke(app, ["models", "ls", "--json", *md]).output)
        assert {(m["key"], tuple(m["used_by"]), m["verified"]) for m in listed} == {
            ("local:team/tiny@local", ("chat-prod",), True),
            ("modelscope:tiny/model@master", (), True),
        }
        refused = runner.invoke(app, ["models", "rm", "team/tiny", *md])
        assert refused.exit_code == 1 and "chat-prod" in str(refused.exception)
        assert runner.invoke(app, ["models", "rm", "team/tiny", "-f", *md]).exit_code == 0
        assert (weights / SHARD).exists()  # an import's files are the user's
        assert runner.invoke(app, ["models", "rm", REPO, *md]).exit_code == 0
        assert json.loads(runner.invoke(app, ["models", "ls", "--json", *md]).output) == []
    finally:
        cli.set_used_by(None)
