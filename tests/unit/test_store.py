"""Pure parts of the model store: names and layout, disk guards, manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmdock.errors import ConfigError, InsufficientSpace, InvalidSpec
from llmdock.models import disk, manifest
from llmdock.models.manifest import FileRecord, Manifest
from llmdock.models.names import ModelRef, check_hub_path, layout, looks_like_path, parse_model_id

GiB = 1 << 30


@pytest.mark.parametrize(
    ("text", "source", "revision", "expected"),
    [
        (
            "Qwen/Qwen2.5-7B-Instruct",
            "modelscope",
            None,
            ModelRef("modelscope", "Qwen", "Qwen2.5-7B-Instruct", "master"),
        ),
        (
            "Qwen/Qwen2.5-7B-Instruct",
            "huggingface",
            None,
            ModelRef("huggingface", "Qwen", "Qwen2.5-7B-Instruct", "main"),
        ),
        ("org/name@v1.0", "modelscope", None, ModelRef("modelscope", "org", "name", "v1.0")),
        ("org/name@v1.0", "modelscope", "dev", ModelRef("modelscope", "org", "name", "dev")),
        ("mymodel", "local", None, ModelRef("local", "local", "mymodel", "local")),
        (" org/a_b-c.d ", "huggingface", None, ModelRef("huggingface", "org", "a_b-c.d", "main")),
    ],
)
def test_parse_model_id_accepts(text: str, source: str, revision: str | None, expected: ModelRef) -> None:
    assert parse_model_id(text, source, revision) == expected


@pytest.mark.parametrize(
    "text",
    [
        "../x",
        "org/..",
        "org/../etc",
        "/abs/path",
        "org/name/extra",
        "name",
        "org/na me",
        "org/na$me",
        "or..g/n",
        "org/",
        "/name",
        "org/name@../..",
        "org/name@a/b",
        "org/-name",
        "org/name@",
    ],
)
def test_parse_model_id_refuses(text: str) -> None:
    with pytest.raises(InvalidSpec) as e:
        parse_model_id(text, "modelscope")
    assert e.value.hint


def test_unknown_source_refused() -> None:
    with pytest.raises(InvalidSpec, match="unknown model source"):
        parse_model_id("a/b", "civitai")


@pytest.mark.parametrize(
    "path",
    [
        "config.json",
        "model-00001-of-00002.safetensors",
        "sub/dir/file.bin",
        "tokenizer (1).json",
        "a+b=c,d@e.txt",
    ],
)
def test_hub_path_accepts(path: str) -> None:
    assert check_hub_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "../evil",
        "a/../../evil",
        "a/./b",
        "a//b",
        "a\\b",
        "x.part",
        ".llmdock-progress.json",
        "a/\x00b",
        "a/b\n",
        "~/x;rm",
        "dir/",
    ],
)
def test_hub_path_refuses(path: str) -> None:
    with pytest.raises(InvalidSpec, match="not a safe relative path"):
        check_hub_path(path)


def test_layout_keeps_everything_under_the_models_dir() -> None:
    lay = layout(Path("/data/models"), ModelRef("modelscope", "Qwen", "Q-7B", "master"))
    assert lay.weights == Path("/data/models/modelscope/Qwen/Q-7B@master")
    assert lay.manifest == Path("/data/models/.manifests/modelscope/Qwen/Q-7B@master.json")
    assert lay.staging == Path("/data/models/.staging/modelscope/Qwen/Q-7B@master")
    assert lay.lock == Path("/data/models/.locks/modelscope--Qwen--Q-7B@master.lock")


@pytest.mark.parametrize(
    ("text", "is_path"),
    [("/data/m", True), ("./m", True), ("~/m", True), ("../m", True), ("Qwen/Q", False), ("name", False)],
)
def test_looks_like_path(text: str, is_path: bool) -> None:
    assert looks_like_path(text) is is_path


def facts(free: int, on_root: bool = False) -> disk.DiskFacts:
    return disk.DiskFacts(Path("/data"), free=free, on_root_fs=on_root)


@pytest.mark.parametrize(
    ("need", "free", "reserve", "ok"),
    [
        (0, 0, GiB, True),  # nothing to fetch: always fine
        (10 * GiB, 20 * GiB, GiB, True),
        (10 * GiB, int(10.5 * GiB) + GiB, GiB, True),  # exactly need + 5 % + reserve
        (10 * GiB, int(10.5 * GiB) + GiB - 1, GiB, False),
        (10 * GiB, 10 * GiB, 0, False),  # the margin alone does not fit
        (100, 105, 0, True),
    ],
)
def test_check_space(need: int, free: int, reserve: int, ok: bool) -> None:
    if ok:
        disk.check_space(need, facts(free), reserve=reserve)
        return
    with pytest.raises(InsufficientSpace) as e:
        disk.check_space(need, facts(free), reserve=reserve)
    assert e.value.free == free and e.value.need == disk.required(need, reserve)
    assert disk.human(free) in e.value.message and disk.human(e.value.need) in e.value.message
    assert "--models-dir" in e.value.hint


@pytest.mark.parametrize(
    ("total", "on_root", "allow", "ok"),
    [
        (50 * GiB, False, False, True),
        (50 * GiB, True, False, False),
        (50 * GiB, True, True, True),
        (disk.SYSTEM_DISK_LIMIT, True, False, True),  # small models may live on the system disk
        (disk.SYSTEM_DISK_LIMIT + 1, True, False, False),
    ],
)
def test_check_system_disk(total: int, on_root: bool, allow: bool, ok: bool) -> None:
    if ok:
        disk.check_system_disk(total, facts(10**15, on_root), allow)
        return
    with pytest.raises(InvalidSpec) as e:
        disk.check_system_disk(total, facts(10**15, on_root), allow)
    assert "system" in e.value.message and "--allow-system-disk" in e.value.hint


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3 * GiB, "3.0 GiB")]
)
def test_human(n: int, text: str) -> None:
    assert disk.human(n) == text


def test_probe_finds_an_existing_parent(tmp_path: Path) -> None:
    f = disk.probe(tmp_path / "not" / "yet")
    assert f.path == tmp_path and f.free > 0


def sample_manifest(**kw: object) -> Manifest:
    m = Manifest(source="modelscope", repo_id="o/n", revision="master", path="/x", commit="c",
                 files=[FileRecord("a", 3, "h"), FileRecord("b/c", 4, "h2", "git-sha1")])  # fmt: skip
    for k, v in kw.items():
        setattr(m, k, v)
    return m


@pytest.mark.parametrize(
    ("changes", "complete"),
    [({}, False), ({"completed_at": "t"}, True), ({"completed_at": "t", "bad_files": ["a"]}, False)],
)
def test_manifest_complete(changes: dict[str, object], complete: bool) -> None:
    assert sample_manifest(**changes).complete is complete


def test_manifest_round_trip(tmp_path: Path) -> None:
    m = sample_manifest(completed_at="t")
    manifest.write(tmp_path / "m" / "x.json", m)
    back = manifest.read(tmp_path / "m" / "x.json")
    assert back == m and back.total_bytes == 7
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["x.json"]  # no temp files left


def test_manifest_missing_and_broken(tmp_path: Path) -> None:
    assert manifest.read(tmp_path / "none.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable") as e:
        manifest.read(tmp_path / "bad.json")
    assert "pull the model again" in e.value.hint
