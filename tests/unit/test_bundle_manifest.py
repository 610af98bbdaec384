"""The bundle format's pure parts: member names, the head, the seal, sizes still to copy, image parts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

import pytest

from llmdock.bundle import manifest as bm
from llmdock.bundle.write import _parts
from llmdock.models.manifest import FileRecord


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


FILES = (
    FileRecord("config.json", 2, sha(b"{}"), "git-sha1"),
    FileRecord("sub/model.safetensors", 5, sha(b"12345"), "sha256"),
)
WHEEL = bm.Member("llmdock/llmdock-0.1.0-py3-none-any.whl", 3, sha(b"whl"))
IMAGE = bm.ImageInfo("llmdock/engine:cpu", "sha256:" + "a" * 64, 100)
MODEL = bm.ModelInfo("modelscope", "tiny/model", "master", "c" * 40, FILES)


def head(image: bm.ImageInfo | None = IMAGE) -> bm.Head:
    return bm.build_head(MODEL, image=image, wheel=WHEEL, llmdock_version="0.1.0", bundle_id="b" * 32)


def raw(h: bm.Head, **change: Any) -> bytes:
    data = json.loads(h.to_json())
    for key, value in change.items():
        data[key] = value
    return json.dumps(data).encode()


def test_head_round_trips_and_lists_every_member() -> None:
    h = head()
    assert bm.check_head(h.to_json().encode()) == h
    assert [m.path for m in h.members] == [WHEEL.path, "weights/config.json", "weights/sub/model.safetensors"]
    assert h.total_bytes == 3 + 2 + 5


@pytest.mark.parametrize(
    "path",
    [
        "weights/config.json",
        "weights/sub/dir/model-00001-of-00002.safetensors",
        "llmdock/llmdock-0.1.0-py3-none-any.whl",
        "image/docker-save.000000",
        "image/docker-save.123456",
        bm.HEAD,
        bm.SEAL,
    ],
)
def test_safe_member_paths(path: str) -> None:
    assert bm.check_member_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "../evil",
        "weights/../../etc/passwd",
        "/etc/passwd",
        "weights//config.json",
        "weights/./config.json",
        "weights/a\\b",
        "weights/model.safetensors.part",
        "weights/.llmdock-progress.json",
        "image/docker-save.1",
        "image/other.tar",
        "llmdock/evil.sh",
        "llmdock/../x.whl",
        "other/file",
        "",
    ],
)
def test_unsafe_member_paths_are_refused_by_name(path: str) -> None:
    with pytest.raises(bm.BundleError) as e:
        bm.check_member_path(path)
    assert e.value.member == path and repr(path) in e.value.message


def _member(h: bm.Head, index: int, **change: Any) -> list[dict[str, Any]]:
    members = [vars(m).copy() for m in h.members]
    members[index].update(change)
    return members


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"format": "zip"}, "not an llmdock bundle"),
        ({"version": bm.VERSION + 1}, "format version"),
        ({"members": _member(head(), 1, path="weights/../../x")}, "not a safe path"),
        ({"members": _member(head(), 1, sha256="x" * 64)}, "bad size or sha256"),
        ({"members": _member(head(), 2, size=6)}, "without a matching member"),
        ({"members": _member(head(), 1, path=WHEEL.path)}, "twice"),
        ({"members": [*_member(head(), 0), {"path": "image/docker-save.000000", "size": 1, "sha256": "a" * 64}]},
         "out of place"),
        ({"wheel": "llmdock/other.whl"}, "no llmdock wheel"),
        ({"image": {"name": "x", "id": "latest", "size": 1}}, "not a sha256 image ID"),
        ({"model": {**json.loads(head().to_json())["model"], "repo_id": "../etc"}}, "not valid here"),
        ({"members": "nope"}, "unreadable"),
    ],
)  # fmt: skip
def test_bad_heads_are_refused(change: dict[str, Any], says: str) -> None:
    with pytest.raises(bm.BundleError) as e:
        bm.check_head(raw(head(), **change))
    assert says in e.value.message


@pytest.mark.parametrize("text", [b"[]", b"null", b'"llmdock-bundle"', b"7"])
def test_a_head_that_is_not_a_json_object_is_refused(text: bytes) -> None:
    with pytest.raises(bm.BundleError) as e:
        bm.check_head(text)
    assert "unreadable" in e.value.message and e.value.member == bm.HEAD


def test_a_newer_format_names_the_wheel_inside() -> None:
    with pytest.raises(bm.BundleError) as e:
        bm.check_head(raw(head(), version=bm.VERSION + 1))
    assert "llmdock/*.whl" in e.value.hint


PART0 = bm.Member("image/docker-save.000000", 64, "b" * 64)
PART1 = bm.Member("image/docker-save.000001", 10, "c" * 64)


def _seal(h: bm.Head, parts: list[bm.Member], head_sha: str | None = None, members: Any = None) -> bytes:
    seal = bm.build_seal(h.to_json().encode(), h, parts)
    data = json.loads(seal.to_json())
    if head_sha is not None:
        data["head_sha256"] = head_sha
    if members is not None:
        data["members"] = members
    return json.dumps(data).encode()


def test_seal_checks_out() -> None:
    h = head()
    digest = sha(h.to_json().encode())
    seal = bm.check_seal(_seal(h, [PART0, PART1]), h, digest)
    assert seal.image_parts == (PART0, PART1)
    assert (
        bm.check_seal(_seal(head(None), []), head(None), sha(head(None).to_json().encode())).image_parts == ()
    )


@pytest.mark.parametrize(
    ("case", "says", "member"),
    [
        ("other head", "does not belong", bm.HEAD),
        ("gap", "do not fit", bm.SEAL),
        ("no parts", "do not fit", bm.SEAL),
        ("other members", "other members", bm.SEAL),
        ("garbage", "unreadable", bm.SEAL),
    ],
)
def test_bad_seals_are_refused(case: str, says: str, member: str) -> None:
    h = head()
    digest = sha(h.to_json().encode())
    raw_seal = {
        "other head": _seal(h, [PART0], head_sha="0" * 64),
        "gap": _seal(h, [PART0, replace(PART1, path="image/docker-save.000002")]),
        "no parts": _seal(h, []),
        "other members": _seal(h, [PART0], members=[vars(m) for m in h.members[1:]] + [vars(PART0)]),
        "garbage": b"{",
    }[case]
    with pytest.raises(bm.BundleError) as e:
        bm.check_seal(raw_seal, h, digest)
    assert says in e.value.message and e.value.member == member


@pytest.mark.parametrize(
    ("size", "digest", "says"),
    [
        (5, sha(b"12345"), None),
        (4, sha(b"12345"), "4 bytes instead of 5"),
        (5, sha(b"54321"), "sha256 differs"),
    ],
)
def test_member_bytes(size: int, digest: str, says: str | None) -> None:
    want = bm.Member("weights/sub/model.safetensors", 5, sha(b"12345"))
    if says is None:
        bm.check_bytes(want, size, digest)
        return
    with pytest.raises(bm.BundleError) as e:
        bm.check_bytes(want, size, digest)
    assert says in e.value.message and "weights/sub/model.safetensors" in e.value.message


@pytest.mark.parametrize(
    ("staged", "image_present", "image", "need"),
    [
        ({}, False, IMAGE, 10 + 100),
        ({}, True, IMAGE, 10),
        ({}, False, None, 10),
        ({"wheel": True}, False, None, 7),
        ({"wheel": True, "part0": True}, False, IMAGE, 7 + 36),
        ({"wheel": "stale"}, False, None, 10),  # a staged member of another size is copied again
    ],
)
def test_remaining_bytes(
    staged: dict[str, Any], image_present: bool, image: bm.ImageInfo | None, need: int
) -> None:
    h = head(image)
    have: dict[str, bm.Member] = {}
    if "wheel" in staged:
        have[WHEEL.path] = WHEEL if staged["wheel"] is True else replace(WHEEL, size=1)
    if "part0" in staged:
        have[PART0.path] = PART0
    assert bm.remaining_bytes(h, have, image_present) == need


@pytest.mark.parametrize(
    ("chunks", "size", "parts"),
    [
        ([b"abc", b"defg", b"h"], 3, [b"abc", b"def", b"gh"]),
        ([b"abcdef"], 3, [b"abc", b"def"]),
        ([b"ab"], 3, [b"ab"]),
        ([], 3, []),
        ([b"a"] * 7, 2, [b"aa", b"aa", b"aa", b"a"]),
    ],
)
def test_image_stream_is_cut_into_parts(chunks: list[bytes], size: int, parts: list[bytes]) -> None:
    assert list(_parts(iter(chunks), size)) == parts
