"""Store logic against the in-memory hub: resume, integrity, include/exclude, resolve, rm, import, lock."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from llmdock.errors import Conflict, HubError, IntegrityError, InvalidSpec, NotFound
from llmdock.models import disk, manifest
from llmdock.models.fetch import fetch_file
from llmdock.models.hubs import Listing, MemoryHub, RemoteFile
from llmdock.models.names import ModelRef, parse_model_id
from llmdock.models.store import ModelStore

FILES = {
    "config.json": b'{"a": 1}',
    "w-1.safetensors": bytes(range(256)) * 40,
    "w-2.safetensors": b"x" * 5000,
}


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("llmdock.models.fetch.BACKOFF_S", 0.0)


@pytest.fixture
def hub() -> MemoryHub:
    return MemoryHub(repos={"org/m": dict(FILES)})


@pytest.fixture
def store(tmp_path: Path, hub: MemoryHub) -> ModelStore:
    return ModelStore(tmp_path / "models", hub_factory=lambda source, token: hub, reserve=0, workers=2)


def test_pull_writes_verified_files_and_manifest(store: ModelStore) -> None:
    events: list[dict[str, object]] = []
    m = store.pull("org/m", progress=events.append)
    assert m.complete and m.path == store.root / "modelscope/org/m@master"
    assert {p.name: p.read_bytes() for p in m.path.iterdir()} == FILES  # no progress file, no parts left
    assert {f.path: f.sha256 for f in m.manifest.files} == {
        k: hashlib.sha256(v).hexdigest() for k, v in FILES.items()
    }
    assert not store.layout(m.ref).staging.exists()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "listing" and kinds[1] == "plan" and kinds[-1] == "done"
    assert sum(int(str(e["delta"])) for e in events if e["event"] == "progress") == sum(
        map(len, FILES.values())
    )


def test_second_pull_is_a_no_op(store: ModelStore, hub: MemoryHub) -> None:
    store.pull("org/m")
    hub.opened.clear()
    events: list[dict[str, object]] = []
    store.pull("org/m", progress=events.append)
    assert hub.opened == [] and events[-1]["cached"] is True


def test_dropped_read_resumes_from_the_bytes_on_disk(store: ModelStore, hub: MemoryHub) -> None:
    hub.fail_after["w-1.safetensors"] = 3000
    store.pull("org/m")
    assert [o for p, o in hub.opened if p == "w-1.safetensors"] == [0, 3000]


def test_failed_pull_leaves_nothing_complete_and_resumes(store: ModelStore, hub: MemoryHub) -> None:
    real = hub.open_file

    def broken(repo_id: str, revision: str, path: str, offset: int):  # type: ignore[no-untyped-def]
        if path == "w-2.safetensors":
            raise HubError("hub down")
        return real(repo_id, revision, path, offset)

    hub.open_file = broken  # type: ignore[method-assign]
    store.workers = 1  # biggest first: w-1 finishes, then w-2 fails
    with pytest.raises(HubError, match="kept failing"):
        store.pull("org/m")
    assert store.get(_ref(store)) is None
    assert store.list() == []
    hub.open_file = real  # type: ignore[method-assign]
    hub.opened.clear()
    store.pull("org/m")
    fetched = [p for p, _ in hub.opened]
    assert "w-2.safetensors" in fetched and "w-1.safetensors" not in fetched  # w-1 was not fetched again


def _ref(store: ModelStore) -> ModelRef:
    return parse_model_id("org/m", "modelscope")


def test_corrupt_file_is_never_marked_verified(tmp_path: Path) -> None:
    class LyingHub(MemoryHub):
        def list_files(self, repo_id: str, revision: str) -> Listing:
            listing = super().list_files(repo_id, revision)
            files = [RemoteFile(f.path, f.size, "0" * 64 if f.path == "config.json" else f.sha256)
                     for f in listing.files]  # fmt: skip
            return Listing(listing.commit, files)

    hub = LyingHub(repos={"org/m": dict(FILES)})
    store = ModelStore(tmp_path, hub_factory=lambda s, t: hub, reserve=0)
    with pytest.raises(IntegrityError, match=r"config\.json: checksum does not match") as e:
        store.pull("org/m")
    assert e.value.files == ["config.json"]
    assert [p for p, _ in hub.opened].count("config.json") == 2  # fetched once more, then refused
    assert store.get(_ref(store)) is None
    assert not list((store.layout(_ref(store)).staging).glob("config.json*"))


def test_include_exclude_and_extending_a_model(store: ModelStore, hub: MemoryHub) -> None:
    m = store.pull("org/m", include=["*.json"])
    assert [f.path for f in m.manifest.files] == ["config.json"]
    with pytest.raises(NotFound, match="no files matching"):
        store.pull("org/m", include=["*.gguf"])
    hub.opened.clear()
    m = store.pull("org/m", exclude=["w-2*"])
    assert sorted(f.path for f in m.manifest.files) == ["config.json", "w-1.safetensors"]
    assert [p for p, _ in hub.opened] == ["w-1.safetensors"]


def test_traversal_in_hub_listing_is_refused(store: ModelStore, hub: MemoryHub, tmp_path: Path) -> None:
    hub.repos["org/evil"] = {"config.json": b"{}", "../../escape.txt": b"boom"}
    with pytest.raises(InvalidSpec, match="not a safe relative path"):
        store.pull("org/evil")
    assert not list(tmp_path.rglob("escape.txt"))


def test_unknown_model(store: ModelStore) -> None:
    with pytest.raises(NotFound, match="not found"):
        store.pull("org/missing")


def test_space_and_system_disk_checks_run_before_fetching(tmp_path: Path, hub: MemoryHub) -> None:
    tight = ModelStore(tmp_path, hub_factory=lambda s, t: hub, reserve=0,
                       probe=lambda p: disk.DiskFacts(p, free=100, on_root_fs=False))  # fmt: skip
    with pytest.raises(disk.InsufficientSpace):
        tight.pull("org/m")
    root = ModelStore(tmp_path, hub_factory=lambda s, t: hub, reserve=0, system_disk_limit=10,
                      probe=lambda p: disk.DiskFacts(p, free=10**12, on_root_fs=True))  # fmt: skip
    with pytest.raises(InvalidSpec, match="system"):
        root.pull("org/m")
    assert hub.opened == []
    assert root.pull("org/m", allow_system_disk=True).complete


def test_fetch_restarts_when_the_server_ignores_range(tmp_path: Path) -> None:
    data = b"abcdefghij" * 100

    class NoRange(MemoryHub):
        def open_file(self, repo_id: str, revision: str, path: str, offset: int):  # type: ignore[no-untyped-def]
            return super().open_file(repo_id, revision, path, 0)

    hub = NoRange(repos={"o/m": {"f": data}})
    (tmp_path / "f.part").write_bytes(b"GARBAGE")  # a partial that does not match: must be overwritten
    rec = fetch_file(hub, "o/m", "r", RemoteFile("f", len(data), hashlib.sha256(data).hexdigest()), tmp_path)
    assert (tmp_path / "f").read_bytes() == data and rec.checked == "sha256"


def test_resolve(store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as e:
        store.resolve("org/m", no_pull=True)
    assert "llmdock pull org/m" in e.value.hint
    path = store.resolve("org/m")
    assert path == store.root / "modelscope/org/m@master"
    assert store.resolve("org/m", no_pull=True) == path
    assert store.resolve(str(tmp_path)) == tmp_path
    with pytest.raises(NotFound):
        store.resolve("/no/such/dir")


def test_verify_repair_refetches_only_bad_files(store: ModelStore, hub: MemoryHub) -> None:
    m = store.pull("org/m")
    (m.path / "w-2.safetensors").write_bytes(b"y" * 5000)
    hub.opened.clear()
    result = store.verify("org/m")
    assert result.bad == ["w-2.safetensors"] and not result.ok
    assert store.get(m.ref) is None  # damaged models do not count as present
    result = store.verify("org/m", repair=True)
    assert result.ok and hub.opened == [("w-2.safetensors", 0)]
    assert (m.path / "w-2.safetensors").read_bytes() == FILES["w-2.safetensors"]
    assert store.get(m.ref) is not None


def test_import_list_remove(store: ModelStore, tmp_path: Path) -> None:
    src = tmp_path / "hand-downloaded"
    (src / ".cache").mkdir(parents=True)
    (src / ".cache" / "junk").write_text("x")
    (src / "config.json").write_text("{}")
    m = store.import_local(src, "team/qwen")
    assert m.key == "local:team/qwen@local" and [f.path for f in m.manifest.files] == ["config.json"]
    assert store.resolve("team/qwen", no_pull=True) == src
    store.pull("org/m")
    users = {src: ["svc-a"]}
    listed = {x.key: x.used_by for x in store.list(used_by=lambda p: users.get(p, []))}
    assert listed == {"local:team/qwen@local": ["svc-a"], "modelscope:org/m@master": []}
    with pytest.raises(Conflict, match="svc-a"):
        store.remove("team/qwen", used_by=lambda p: users.get(p, []))
    store.remove("team/qwen", force=True, used_by=lambda p: users.get(p, []))
    assert (src / "config.json").exists()  # imported weights are the user's: never deleted
    store.remove("modelscope:org/m")
    assert store.list() == [] and not (store.root / "modelscope/org/m@master").exists()
    with pytest.raises(NotFound):
        store.remove("org/m")


def test_two_pulls_at_once_do_not_corrupt_each_other(store: ModelStore, hub: MemoryHub) -> None:
    results, errors = [], []

    def go() -> None:
        try:
            results.append(store.pull("org/m"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3
    assert sum(1 for p, _ in hub.opened if p == "w-1.safetensors") == 1
    assert manifest.read(store.layout(results[0].ref).manifest) is not None
