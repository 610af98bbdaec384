"""What a bundle holds and how its parts are checked: pure functions over data, no disk, no Docker.

A bundle is one tar stream (POSIX pax format), its members in this order::

    llmdock-bundle.json              the head: format version, model, image, llmdock version, and
                                     size + sha256 of every member known before writing starts
    llmdock/llmdock-X-py3-none-any.whl   llmdock itself, so an offline host can install it
    weights/<path>                   each weight file, as the model store holds it
    image/docker-save.000000 …       `docker save` output cut into parts of at most 64 MiB
    llmdock-bundle.seal.json         the seal: sha256 of the head, and size + sha256 of every
                                     member, image parts included

Why a seal at the end: a tar header carries the member's size, and a stream's head is written first,
but ``docker save`` is a stream whose length and digest are known only once it has been read. The
weights' sha256 are known in advance (the store's manifest recorded them when the pull verified them;
the writer re-hashes while streaming and aborts on a difference), so are the wheel's; the image is cut
into bounded parts (one part in memory at a time, never the whole image, no temporary file the size of
the image) and hashed while written, and the seal that closes the stream lists them and binds them to
the head by its sha256. A bundle without its seal is incomplete, never valid.

Every head carries a random ``bundle_id``, so two bundles of one model never share a staging directory
on the loading side: resuming is for the same file (a copy completed later, a load interrupted), and
``docker save`` of the same image is not byte-for-byte the same twice, so parts of two bundles must not
mix. A load of a newer bundle of a model drops what an older one left in staging.

What sha256 proves: that no member changed on its own (a bad copy, a flipped bit, a swapped file). It
does not prove who wrote the bundle — one rewritten with its head and seal to match passes. The head's
digest (:attr:`Head.digest`, printed by ``llmdock bundle``) closes that: every member's sha256 hangs off
it, so ``llmdock load --expect DIGEST`` with the digest carried out of band refuses any other bundle.

Example::

    head = build_head(model, image=ImageInfo("llmdock/engine:cpu", "sha256:…", 123), wheel=member,
                      llmdock_version="0.1.0")
    raw = head.to_json().encode()
    check_head(raw)            # -> Head, or BundleError naming what is wrong
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

from llmdock.errors import IntegrityError, InvalidSpec
from llmdock.models.manifest import FileRecord
from llmdock.models.names import check_hub_path, parse_model_id

FORMAT = "llmdock-bundle"
VERSION = 1
HEAD = "llmdock-bundle.json"
SEAL = "llmdock-bundle.seal.json"
WEIGHTS = "weights/"
WHEEL_DIR = "llmdock/"
IMAGE_PART = re.compile(r"image/docker-save\.(\d{6})")
PART_BYTES = 64 << 20  # one image part; the writer holds at most one in memory
MAX_JSON = 64 << 20  # a head or seal larger than this is not one of ours
_WHEEL = re.compile(r"llmdock/[A-Za-z0-9_.+-]{1,200}\.whl")
_SHA = re.compile(r"[0-9a-f]{64}")
_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}")


class BundleError(IntegrityError):
    """A bundle (or one member of it) is malformed, incomplete, tampered with, or unsafe; ``member``
    names the member when one is to blame (also in ``files``)."""

    def __init__(self, message: str, hint: str = "", member: str | None = None) -> None:
        super().__init__(message, hint, files=[member] if member else [])
        self.member = member


TAMPERED_HINT = (
    "the bundle was changed after it was written or damaged in transit: copy it again "
    "(or write a new one with `llmdock bundle`); nothing was registered or loaded"
)


@dataclass(frozen=True)
class Member:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ImageInfo:
    """The engine image: the name it is saved under, its ID (sha256 of its config) and its size."""

    name: str
    id: str
    size: int


@dataclass(frozen=True)
class ModelInfo:
    source: str
    repo_id: str
    revision: str
    commit: str
    files: tuple[FileRecord, ...]

    @property
    def key(self) -> str:
        return f"{self.source}:{self.repo_id}@{self.revision}"


@dataclass(frozen=True)
class Head:
    model: ModelInfo
    image: ImageInfo | None
    wheel: str
    llmdock_version: str
    members: tuple[Member, ...]
    created_at: str = ""
    bundle_id: str = ""  # unique per bundle written: its staging directory is its own (see load)
    format: str = FORMAT
    version: int = VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @property
    def total_bytes(self) -> int:
        return sum(m.size for m in self.members)

    @property
    def digest(self) -> str:
        """sha256 of the head as written: it names the bundle, and — compared out of band with
        ``load --expect`` — proves the whole bundle (every member's sha256 hangs off it)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


@dataclass(frozen=True)
class Seal:
    head_sha256: str
    members: tuple[Member, ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @property
    def image_parts(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if IMAGE_PART.fullmatch(m.path))


def weight_member(path: str) -> str:
    return WEIGHTS + path


def image_part(index: int) -> str:
    return f"image/docker-save.{index:06d}"


def build_head(
    model: ModelInfo,
    *,
    image: ImageInfo | None,
    wheel: Member,
    llmdock_version: str,
    created_at: str = "",
    bundle_id: str | None = None,
) -> Head:
    """The head for ``model`` (files as the store verified them), ``image`` and the llmdock wheel.

    ``bundle_id`` (default: random) makes every bundle's head, and so its staging directory, its own:
    ``docker save`` is not byte-for-byte repeatable, so image parts of two bundles must never mix."""
    import uuid

    members = (wheel, *(Member(weight_member(f.path), f.size, f.sha256) for f in model.files))
    bid = uuid.uuid4().hex if bundle_id is None else bundle_id
    head = Head(model, image, wheel.path, llmdock_version, members, created_at, bid)
    return check_head(head.to_json().encode())  # what we write is what a loader accepts


def build_seal(head_bytes: bytes, head: Head, parts: Sequence[Member]) -> Seal:
    return Seal(hashlib.sha256(head_bytes).hexdigest(), (*head.members, *parts))


# -- checking --------------------------------------------------------------------------------------------


def check_member_path(path: str) -> str:
    """A member name as a safe relative path inside the staging directory, of a kind bundles have."""
    pure = PurePosixPath(path)
    unsafe = not path or path.startswith("/") or pure.is_absolute() or "\\" in path or ".." in pure.parts
    if not unsafe and path.startswith(WEIGHTS):
        try:
            check_hub_path(path[len(WEIGHTS) :])
        except InvalidSpec:
            unsafe = True
    elif not unsafe:
        unsafe = not (path in (HEAD, SEAL) or IMAGE_PART.fullmatch(path) or _WHEEL.fullmatch(path))
    if unsafe:
        raise BundleError(
            f"bundle member {path!r} is not a safe path of a bundle (absolute, '..', or not a "
            "weights/, llmdock/ or image/ file); refusing to write it anywhere",
            "this file was not written by `llmdock bundle`, or it was altered; nothing was registered or loaded",
            member=path,
        )
    return path


def check_head(raw: bytes) -> Head:
    """Parse and validate a head; BundleError says what is wrong (format, version, paths, sizes)."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise TypeError(f"it is a JSON {type(data).__name__}, not an object")
        if data.get("format") != FORMAT:
            raise BundleError(
                f"this is not an llmdock bundle (its first member says format {data.get('format')!r})",
                "give a file written by `llmdock bundle`",
            )
        version = data.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise BundleError(
                f"the bundle has format version {version!r}; this llmdock ({_version()}) reads up to {VERSION}",
                "install the llmdock wheel inside the bundle first: `tar -xf BUNDLE --wildcards 'llmdock/*.whl'` "
                "then `pip install llmdock/*.whl`",
            )
        m = data["model"]
        files = tuple(FileRecord(**f) for f in m["files"])
        model = ModelInfo(m["source"], m["repo_id"], m["revision"], str(m.get("commit", "")), files)
        img = data.get("image")
        image = ImageInfo(str(img["name"]), str(img["id"]), int(img["size"])) if img else None
        members = tuple(Member(str(x["path"]), int(x["size"]), str(x["sha256"])) for x in data["members"])
        head = Head(
            model,
            image,
            str(data["wheel"]),
            str(data["llmdock_version"]),
            members,
            str(data.get("created_at", "")),
            str(data.get("bundle_id", "")),
        )
    except BundleError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise BundleError(
            f"the bundle's manifest ({HEAD}) is unreadable: {type(e).__name__}: {e}",
            TAMPERED_HINT,
            member=HEAD,
        ) from None
    _check_members(members, allow_image_parts=False)
    try:
        parse_model_id(model.repo_id, model.source, model.revision)
    except InvalidSpec as e:
        raise BundleError(
            f"the bundle names a model that is not valid here: {e.message}", TAMPERED_HINT
        ) from None
    if image is not None and not _IMAGE_ID.fullmatch(image.id):
        raise BundleError(f"the bundle's image ID {image.id!r} is not a sha256 image ID", TAMPERED_HINT)
    by_path = {mb.path: mb for mb in members}
    for f in files:
        mb = by_path.get(weight_member(f.path))
        if mb is None or (mb.size, mb.sha256) != (f.size, f.sha256):
            raise BundleError(
                f"the bundle's manifest lists model file {f.path!r} without a matching member",
                TAMPERED_HINT,
                member=weight_member(f.path),
            )
    if head.wheel not in by_path or not _WHEEL.fullmatch(head.wheel):
        raise BundleError(
            f"the bundle's manifest names no llmdock wheel member ({head.wheel!r})", TAMPERED_HINT
        )
    if len(members) != len(files) + 1:
        raise BundleError(
            "the bundle's manifest lists members that are neither weights nor the wheel", TAMPERED_HINT
        )
    return head


def check_seal(raw: bytes, head: Head, head_sha256: str) -> Seal:
    """The seal, checked against the head it must close: same head digest, the same members, then image
    parts numbered from 0 without a gap (and none when the bundle has no image)."""
    try:
        data = json.loads(raw)
        members = tuple(Member(str(x["path"]), int(x["size"]), str(x["sha256"])) for x in data["members"])
        seal = Seal(str(data["head_sha256"]), members)
    except (ValueError, TypeError, KeyError) as e:
        raise BundleError(
            f"the bundle's seal ({SEAL}) is unreadable: {e}", TAMPERED_HINT, member=SEAL
        ) from None
    if seal.head_sha256 != head_sha256:
        raise BundleError(
            f"the bundle's seal does not belong to its manifest ({HEAD} was changed)",
            TAMPERED_HINT,
            member=HEAD,
        )
    _check_members(members, allow_image_parts=True)
    if members[: len(head.members)] != head.members:
        raise BundleError(
            "the bundle's seal lists other members than its manifest", TAMPERED_HINT, member=SEAL
        )
    parts = members[len(head.members) :]
    if [p.path for p in parts] != [image_part(i) for i in range(len(parts))] or bool(parts) != (
        head.image is not None
    ):
        raise BundleError(
            "the bundle's seal lists image parts that do not fit its manifest", TAMPERED_HINT, member=SEAL
        )
    return seal


def _check_members(members: Sequence[Member], allow_image_parts: bool) -> None:
    seen: set[str] = set()
    for mb in members:
        check_member_path(mb.path)
        bad = (
            mb.path in seen
            or mb.path in (HEAD, SEAL)
            or (IMAGE_PART.fullmatch(mb.path) and not allow_image_parts)
            or mb.size < 0
            or not _SHA.fullmatch(mb.sha256)
        )
        if bad:
            raise BundleError(
                f"the bundle's manifest lists member {mb.path!r} twice, out of place, or with a bad size or sha256",
                TAMPERED_HINT,
                member=mb.path,
            )
        seen.add(mb.path)


def check_bytes(expected: Member, size: int, sha256: str) -> None:
    """Refuse a member whose bytes are not the ones the manifest (or seal) lists."""
    if (size, sha256) != (expected.size, expected.sha256):
        what = f"{size} bytes instead of {expected.size}" if size != expected.size else "its sha256 differs"
        raise BundleError(
            f"bundle member {expected.path} does not match the manifest ({what})",
            TAMPERED_HINT,
            member=expected.path,
        )


def remaining_bytes(head: Head, staged: Mapping[str, Member], image_present: bool) -> int:
    """Bytes still to write into staging: members not staged yet, plus the image when it is not on the
    Docker host already (its saved size is estimated by the image's size, less parts already staged)."""
    todo = sum(m.size for m in head.members if staged.get(m.path) != m)
    if head.image is not None and not image_present:
        have = sum(m.size for p, m in staged.items() if IMAGE_PART.fullmatch(p))
        todo += max(0, head.image.size - have)
    return todo


def _version() -> str:
    from llmdock import __version__

    return __version__
