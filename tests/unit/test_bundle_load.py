"""Bundles written and loaded through the real store on real files, the image behind the in-memory
``Images``: round trip, tampered members named, truncated copies resumed, unsafe members refused, a full
disk and an occupied store refused before anything is written. (Real Docker: tests/integration.)"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from llmdock.bundle import manifest as bm
from llmdock.bundle.images import MemoryImages
from llmdock.bundle.load import Loaded, load_bundle
from llmdock.bundle.write import write_bundle
from llmdock.errors import Conflict, InsufficientSpace, IntegrityError
from llmdock.models import disk
from llmdock.models.store import ModelStore
from tests.support import bundles
from tests.support.hub import tiny_model_files

SHARD = "weights/model-00001-of-00002.safetensors"
IMAGE = "llmdock-test/engine:cpu"
IMAGE_BYTES = bytes(range(256)) * 800  # 200 KiB: four parts of 64 KiB
PART = 64 << 10


@pytest.fixture
def source(tmp_path: Path) -> ModelStore:
    return bundles.source_store(tmp_path)


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    return bundles.stand_in_wheel(tmp_path)


@pytest.fixture
def bundle(source: ModelStore, wheel: Path) -> bytes:
    out = io.BytesIO()
    write_bundle(
        source,
        "tiny/model",
        out,
        wheel=wheel,
        image=IMAGE,
        images=MemoryImages({IMAGE: IMAGE_BYTES}),
        part_bytes=PART,
    )
    return out.getvalue()


@pytest.fixture
def target(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models-dst", reserve=0)


def load(
    target: ModelStore, data: bytes, images: MemoryImages, tmp_path: Path, seekable: bool = True
) -> Loaded:
    return load_bundle(
        target, io.BytesIO(data), seekable=seekable, wheels_dir=tmp_path / "wheels", images=lambda: images
    )


def staging(target: ModelStore) -> list[Path]:
    return sorted(p for p in (target.root / ".staging").glob("bundle-*/**/*") if p.is_file())


def staged_names(target: ModelStore) -> set[str]:
    """Members in the staging directory (not the progress file, not parts)."""
    return {
        p.relative_to(p.parents[len(p.relative_to(target.root / ".staging").parts) - 2]).as_posix()
        for p in staging(target)
        if not p.name.startswith(".") and not p.name.endswith(".part")
    }


def test_round_trip(bundle: bytes, target: ModelStore, source: ModelStore, tmp_path: Path) -> None:
    names = [info.name for info, _ in bundles.members(bundle)]
    assert names[0] == bm.HEAD and names[-1] == bm.SEAL
    assert names[1] == "llmdock/llmdock-0.1.0-py3-none-any.whl"
    assert [n for n in names if n.startswith("image/")] == [bm.image_part(i) for i in range(4)]

    images = MemoryImages()
    done = load(target, bundle, images, tmp_path)
    assert images.loaded == [IMAGE_BYTES]
    assert (
        done.image_loaded and done.model.status == "verified" and done.model.key == "local:tiny/model@local"
    )
    src = source.find("tiny/model")
    assert done.model.manifest.files == src.manifest.files  # sizes, sha256 and what was checked
    assert not done.model.manifest.imported and done.model.path.is_relative_to(target.root)
    assert {p.name: p.read_bytes() for p in done.model.path.iterdir()} == tiny_model_files()
    assert done.wheel.read_bytes() == (tmp_path / "llmdock-0.1.0-py3-none-any.whl").read_bytes()
    assert target.verify("tiny/model").ok
    assert not (target.root / ".staging").exists() or not any((target.root / ".staging").iterdir())

    again = load(target, bundle, images, tmp_path)  # the same bundle again: nothing to do twice
    assert not again.image_loaded and len(images.loaded) == 1 and again.model.key == done.model.key


@pytest.mark.parametrize("member", [SHARD, "weights/config.json", "llmdock/llmdock-0.1.0-py3-none-any.whl"])
def test_a_tampered_member_is_refused_by_name(
    bundle: bytes, target: ModelStore, tmp_path: Path, member: str
) -> None:
    images = MemoryImages()
    with pytest.raises(IntegrityError) as e:
        load(target, bundles.rebuild(bundle, bundles.flip_byte(member)), images, tmp_path)
    assert member in e.value.message and e.value.files == [member]
    assert target.list() == [] and images.loaded == []
    assert not any(p.name.endswith(".part") or p.name == Path(member).name for p in staging(target))


def test_a_tampered_image_part_is_refused_at_the_seal(
    bundle: bytes, target: ModelStore, tmp_path: Path
) -> None:
    images = MemoryImages()
    with pytest.raises(IntegrityError) as e:
        load(target, bundles.rebuild(bundle, bundles.flip_byte("image/docker-save.000002")), images, tmp_path)
    assert "image/docker-save.000002" in e.value.message
    assert target.list() == [] and images.loaded == []
    done = load(target, bundle, images, tmp_path)  # the good copy: only the bad part is read again
    assert done.received == ["image/docker-save.000002"] and images.loaded == [IMAGE_BYTES]


def test_a_changed_manifest_does_not_match_its_seal(
    bundle: bytes, target: ModelStore, tmp_path: Path
) -> None:
    def change(ms: list[bundles.Member]) -> list[bundles.Member]:
        info, data = ms[0]
        return [(info, data.replace(b'"llmdock_version": "0.1.0"', b'"llmdock_version": "9.9.9"')), *ms[1:]]

    with pytest.raises(IntegrityError) as e:
        load(target, bundles.rebuild(bundle, change), MemoryImages(), tmp_path)
    assert "seal does not belong" in e.value.message and target.list() == []


@pytest.mark.parametrize("seekable", [True, False], ids=["file", "pipe"])
@pytest.mark.parametrize("cut", ["inside a shard", "between members", "before the seal"])
def test_a_truncated_copy_is_refused_then_resumed(
    bundle: bytes, target: ModelStore, tmp_path: Path, cut: str, seekable: bool
) -> None:
    at = {
        "inside a shard": bundles.offset_of(bundle, SHARD) + 5000,
        "between members": bundles.offset_of(bundle, SHARD) - 512,  # the shard's header is cut off
        "before the seal": bundles.offset_of(bundle, bm.SEAL) - 512,
    }[cut]
    images = MemoryImages()
    with pytest.raises(IntegrityError) as e:
        load(target, bundle[:at], images, tmp_path, seekable)
    assert "ends early" in e.value.message and "run `llmdock load` again" in e.value.hint
    assert target.list() == [] and images.loaded == []
    kept = staged_names(target)
    assert kept and not any(p.name.endswith(".part") for p in staging(target))

    done = load(target, bundle, images, tmp_path, seekable)
    assert set(done.kept) == kept and not kept & set(done.received)
    assert done.model.status == "verified" and images.loaded == [IMAGE_BYTES]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (bundles.entry("../evil"), "not a safe path"),
        (bundles.entry("weights/../../evil"), "not a safe path"),
        (bundles.entry("/tmp/evil"), "not a safe path"),
        (bundles.entry("weights/config.json", b"", bundles.tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (bundles.entry("weights/config.json", b"", bundles.tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
        (bundles.entry("weights/config.json", b"", bundles.tarfile.CHRTYPE), "directory or device"),
        (bundles.entry("weights/extra.bin"), "not in the bundle's manifest"),
    ],
)
def test_unsafe_members_are_refused(
    bundle: bytes, target: ModelStore, tmp_path: Path, extra: bundles.Member, says: str
) -> None:
    evil = bundles.rebuild(bundle, bundles.insert_after_head(extra))
    with pytest.raises(IntegrityError) as e:
        load(target, evil, MemoryImages(), tmp_path)
    assert says in e.value.message and extra[0].name in e.value.message
    assert not (tmp_path / "evil").exists() and not (target.root.parent / "evil").exists()
    assert target.list() == []


def test_a_full_disk_is_refused_before_writing(bundle: bytes, tmp_path: Path) -> None:
    small = ModelStore(
        tmp_path / "models-small",
        reserve=0,
        probe=lambda p: disk.DiskFacts(p, free=100_000, on_root_fs=False),
    )
    with pytest.raises(InsufficientSpace) as e:
        load(small, bundle, MemoryImages(), tmp_path)
    assert "loading this bundle" in e.value.message and "needs" in e.value.message
    assert e.value.need > 100_000 and e.value.free == 100_000
    assert not (small.root / ".staging").exists()


def test_a_model_the_store_holds_differently_is_refused(
    bundle: bytes, target: ModelStore, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    target.import_local(other, "tiny/model", copy=True)
    with pytest.raises(Conflict) as e:
        load(target, bundle, MemoryImages(), tmp_path)
    assert "models rm local:tiny/model@local" in e.value.hint
    assert not (target.root / ".staging").exists() or staging(target) == []


def test_a_model_changed_since_its_pull_is_not_bundled(
    source: ModelStore, wheel: Path, tmp_path: Path
) -> None:
    model = source.find("tiny/model")
    shard = model.path / SHARD.removeprefix("weights/")
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))  # same size, other bytes: only a hash sees it
    out = io.BytesIO()
    with pytest.raises(IntegrityError) as e:
        write_bundle(source, "tiny/model", out, wheel=wheel)
    assert "changed since it was verified" in e.value.message and "--repair" in e.value.hint
    with pytest.raises(IntegrityError) as loaded:  # what was written has no seal: it never loads
        load(ModelStore(tmp_path / "x", reserve=0), out.getvalue(), MemoryImages(), tmp_path)
    assert "ends early" in loaded.value.message or SHARD in loaded.value.message


def test_a_member_missing_from_the_stream_is_refused(
    bundle: bytes, target: ModelStore, tmp_path: Path
) -> None:
    dropped = bundles.rebuild(bundle, lambda ms: [m for m in ms if m[0].name != SHARD])
    with pytest.raises(IntegrityError) as e:
        load(target, dropped, MemoryImages(), tmp_path)
    assert f"bundle member {SHARD} is listed in the manifest but was not in the stream" in e.value.message
    assert target.list() == []


def test_the_image_can_be_left_out(bundle: bytes, target: ModelStore, tmp_path: Path) -> None:
    done = load_bundle(target, io.BytesIO(bundle), seekable=True, wheels_dir=tmp_path / "w", images=None)
    assert done.image is None and not done.image_loaded and done.model.status == "verified"
    assert not any(n.startswith("image/") for n in done.received)


def test_each_bundle_stages_apart_and_a_newer_one_drops_the_older(
    source: ModelStore, wheel: Path, target: ModelStore, tmp_path: Path
) -> None:
    def write() -> bytes:
        out = io.BytesIO()
        write_bundle(
            source, "tiny/model", out, wheel=wheel, image=IMAGE, images=MemoryImages({IMAGE: IMAGE_BYTES})
        )
        return out.getvalue()

    older, newer = write(), write()
    assert bundles.members(older)[0][1] != bundles.members(newer)[0][1]  # their own bundle_id
    with pytest.raises(IntegrityError):
        load(target, older[: bundles.offset_of(older, bm.SEAL) - 512], MemoryImages(), tmp_path)
    assert len(list((target.root / ".staging").glob("bundle-*"))) == 1
    done = load(target, newer, MemoryImages(), tmp_path)
    assert done.kept == [] and done.model.status == "verified"
    assert list((target.root / ".staging").glob("bundle-*")) == []


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "not a tar stream"),
        (b"not a tar at all" * 100, "not a tar stream"),
        (
            bundles.rebuild(b"", lambda _: [bundles.entry("config.json", b"{}")]),
            "its first member is 'config.json'",
        ),
    ],
    ids=["empty", "garbage", "other-tar"],
)
def test_what_is_not_a_bundle_is_refused(data: bytes, says: str, target: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(IntegrityError) as e:
        load(target, data, MemoryImages(), tmp_path)
    assert says in e.value.message and "llmdock bundle" in e.value.hint
    assert not target.root.exists()


@pytest.mark.parametrize("where", ["same disk", "other disk"])
def test_dockers_disk_is_counted_for_the_image(bundle: bytes, tmp_path: Path, where: str) -> None:
    """Docker's data root takes the image again on `docker load`: counted with the staging on one disk,
    checked on its own on another (/proc: a directory on another filesystem on every Linux)."""
    root = Path("/proc")
    if where == "same disk":
        root = tmp_path / "docker-root"
        root.mkdir()
    staged_need = len(IMAGE_BYTES) + 400_000  # the image parts plus the weights and more: fits alone

    def probe(path: Path) -> disk.DiskFacts:
        free = 1000 if path == Path("/proc") else staged_need
        return disk.DiskFacts(path if path.exists() else tmp_path, free=free, on_root_fs=False)

    store = ModelStore(tmp_path / "models", reserve=0, probe=probe)
    with pytest.raises(InsufficientSpace) as e:
        load(store, bundle, MemoryImages(root=root), tmp_path)
    says = (
        "then loaded into Docker on the same disk"
        if where == "same disk"
        else f"`docker load` of image {IMAGE}"
    )
    assert says in e.value.message and "nothing was written" in e.value.hint
    assert not (store.root / ".staging").exists()
    assert (
        load(store, bundle, MemoryImages(), tmp_path).model.status == "verified"
    )  # no data root: models disk only


def _rewritten(bundle: bytes) -> bytes:
    """The bundle with a shard changed and its manifest and seal rewritten to match: what sha256 alone
    cannot catch, and the digest compared out of band does."""
    import hashlib
    import json

    ms = bundles.members(bundle)
    new = {info.name: data for info, data in ms}
    new[SHARD] = bundles.flip_byte(SHARD)(ms)[[i.name for i, _ in ms].index(SHARD)][1]
    digest = hashlib.sha256(new[SHARD]).hexdigest()
    head = json.loads(new[bm.HEAD])
    for m in head["members"]:
        if m["path"] == SHARD:
            m["sha256"] = digest
    for f in head["model"]["files"]:
        if "weights/" + f["path"] == SHARD:
            f["sha256"] = digest
    new[bm.HEAD] = (json.dumps(head, indent=1, sort_keys=True) + "\n").encode()
    seal = json.loads(new[bm.SEAL])
    seal["head_sha256"] = hashlib.sha256(new[bm.HEAD]).hexdigest()
    for m in seal["members"]:
        if m["path"] == SHARD:
            m["sha256"] = digest
    new[bm.SEAL] = json.dumps(seal).encode()
    return bundles.rebuild(bundle, lambda ms: [(info, new[info.name]) for info, _ in ms])


def test_the_digest_printed_by_bundle_proves_the_whole_bundle(
    source: ModelStore, wheel: Path, target: ModelStore, tmp_path: Path
) -> None:
    out = io.BytesIO()
    head = write_bundle(source, "tiny/model", out, wheel=wheel)
    forged = _rewritten(out.getvalue())
    with pytest.raises(IntegrityError) as e:
        load_bundle(
            target, io.BytesIO(forged), seekable=True, wheels_dir=tmp_path, images=None, expect=head.digest
        )
    assert f"not the expected {head.digest}" in e.value.message and target.list() == []
    assert load(target, forged, MemoryImages(), tmp_path).model.status == "verified"  # without it: consistent
    target.remove("tiny/model")
    done = load_bundle(
        target,
        io.BytesIO(out.getvalue()),
        seekable=True,
        wheels_dir=tmp_path,
        images=None,
        expect=head.digest.upper(),
    )
    assert done.model.status == "verified"
