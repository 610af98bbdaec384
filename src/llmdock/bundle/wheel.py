"""llmdock itself as a wheel, for the bundle: what an offline host installs with ``pip install``.

Where it comes from, in this order:

1. a wheel the user names (``llmdock bundle --wheel FILE``);
2. a source tree (a checkout, or an editable install of one): ``pip wheel --no-deps --no-build-isolation``
   on a copy of ``pyproject.toml``, ``README.md`` and ``src/`` in a temporary directory, so the build
   writes nothing into the checkout and needs no index;
3. otherwise (``pip install llmdock``, or a checkout without setuptools to build it): the running
   package directory and the installed metadata (``METADATA``, ``entry_points.txt``) packed into a
   pure-Python wheel, with a fresh ``RECORD``.

The wheel holds llmdock only (``--no-deps``): an offline host needs llmdock's dependencies already
(an older llmdock installed, or a wheelhouse of its own).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from llmdock.errors import LlmdockError

WHEEL_HINT = "name a wheel with --wheel FILE (built with `pip wheel --no-deps .` in a checkout of llmdock)"


def llmdock_wheel(dest: Path, given: Path | None = None) -> tuple[Path, str]:
    """A wheel of this llmdock in ``dest`` (a directory the caller owns), and how it was got."""
    if given is not None:
        if not given.is_file() or not given.name.startswith("llmdock-") or given.suffix != ".whl":
            raise LlmdockError(f"{given} is not an llmdock wheel file (llmdock-*.whl)", WHEEL_HINT)
        return given, "given with --wheel"
    dest.mkdir(parents=True, exist_ok=True)
    root = source_tree()
    if root is not None and importlib.util.find_spec("setuptools") is not None:
        return _build(root, dest), f"built from {root} with pip wheel --no-deps"
    return _repack(dest), "packed from the installed distribution"


def source_tree() -> Path | None:
    """The checkout llmdock runs from (editable install or ``src/`` on the path), if any."""
    candidates: list[Path] = []
    try:
        raw = metadata.distribution("llmdock").read_text("direct_url.json")
        info = json.loads(raw) if raw else {}
        if info.get("dir_info", {}).get("editable") and str(info.get("url", "")).startswith("file://"):
            candidates.append(Path(info["url"][len("file://") :]))
    except (metadata.PackageNotFoundError, ValueError):
        pass
    import llmdock

    candidates.append(Path(llmdock.__file__).resolve().parents[2])
    for root in candidates:
        if (root / "pyproject.toml").is_file() and (root / "src" / "llmdock" / "__init__.py").is_file():
            return root
    return None


def _build(root: Path, dest: Path) -> Path:
    tree = dest / "src-copy"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        if (root / name).is_file():
            shutil.copy2(root / name, tree / name)
    shutil.copytree(root / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    argv = [
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "--disable-pip-version-check", "-q", "-w", str(dest), str(tree),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    shutil.rmtree(tree, ignore_errors=True)
    wheels = sorted(dest.glob("llmdock-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout).strip()[-400:]
        raise LlmdockError(f"building the llmdock wheel from {root} failed: {tail}", WHEEL_HINT)
    return wheels[-1]


def _repack(dest: Path) -> Path:
    """A wheel of the running llmdock: its package directory as imported, and the metadata pip installed
    (``METADATA``, ``entry_points.txt``); works for an editable install too, and needs no setuptools."""
    import llmdock

    try:
        dist = metadata.distribution("llmdock")
    except metadata.PackageNotFoundError:
        raise LlmdockError(
            "llmdock is not installed as a distribution, so no wheel can be made", WHEEL_HINT
        ) from None
    package = Path(llmdock.__file__).parent
    info = f"llmdock-{dist.version}.dist-info"
    files: dict[str, bytes] = {}
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files[f"llmdock/{path.relative_to(package).as_posix()}"] = path.read_bytes()
    for name in ("METADATA", "entry_points.txt", "top_level.txt"):
        text = dist.read_text(name)
        if text is not None:
            files[f"{info}/{name}"] = text.encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: llmdock\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"llmdock-{dist.version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return out
