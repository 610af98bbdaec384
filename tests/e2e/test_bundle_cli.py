"""`llmdock bundle` and `llmdock load` through the real command line: a model pulled from the loopback
hub and a tiny image (real Docker) bundled to stdout and piped into `load -` on a fresh home; then a
tampered member, a truncated copy completed later, a load killed mid-stream, an unsafe member and a
full disk (a real tmpfs)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli
from tests.support import bundles
from tests.support.hub import LocalHub, hub_env, tiny_model_files

pytestmark = pytest.mark.docker
REPO = "tiny/model"
SHARD = "weights/model-00001-of-00002.safetensors"
LLMDOCK = [sys.executable, "-m", "llmdock.cli.main"]


@pytest.fixture
def pulled(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The source host: a home whose store holds tiny/model, pulled from the loopback hub."""
    with LocalHub() as hub:
        hub.add_repo(REPO, tiny_model_files())
        env = {
            **hub_env(hub.url),
            "LLMDOCK_HOME": str(tmp_path / "src-home"),
            "MODELSCOPE_CACHE": str(tmp_path / "ms-cache"),
        }
        done = cli("pull", REPO, env=env)
        assert done.returncode == 0, done.stderr
        yield env


@pytest.fixture
def image(docker_client: Any) -> Iterator[tuple[str, str]]:
    with bundles.tiny_image(docker_client, size=3 << 20) as tag_id:
        yield tag_id


@pytest.fixture
def wheel(tmp_path: Path) -> str:
    return str(bundles.stand_in_wheel(tmp_path))


def fresh(tmp_path: Path, name: str = "dst-home") -> dict[str, str]:
    """The offline host: an empty home (its models dir inside)."""
    return {"LLMDOCK_HOME": str(tmp_path / name)}


def bundle_file(pulled: dict[str, str], tmp_path: Path, *args: str) -> Path:
    out = tmp_path / "tiny.llmdock"
    done = cli("bundle", REPO, "-o", str(out), *args, env=pulled)
    assert done.returncode == 0, done.stderr
    return out


def listed(env: dict[str, str]) -> list[dict[str, Any]]:
    done = cli("models", "ls", "--json", env=env)
    assert done.returncode == 0, done.stderr
    result: list[dict[str, Any]] = json.loads(done.stdout)
    return result


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_bundle_piped_into_load_on_a_fresh_host(
    pulled: dict[str, str], image: tuple[str, str], docker_client: Any, tmp_path: Path
) -> None:
    """`llmdock bundle … -o - | llmdock load -`, the wheel built from this checkout, the image removed
    in between so `load` really runs `docker load`."""
    tag, image_id = image
    out = tmp_path / "bundle.bytes"
    with out.open("wb") as f:
        made = subprocess.run(
            [*LLMDOCK, "bundle", REPO, "--image", tag, "-o", "-"],
            stdout=f, stderr=subprocess.PIPE, text=False, env={**os.environ, **pulled}, timeout=300,
        )  # fmt: skip
    assert made.returncode == 0, made.stderr.decode()
    assert b"built from" in made.stderr and b"pip wheel --no-deps" in made.stderr
    digest = re.search(rb"digest ([0-9a-f]{64})", made.stderr)
    assert digest is not None
    docker_client.images.remove(image_id, force=True)

    dst = fresh(tmp_path)
    producer = subprocess.Popen([sys.executable, "-c", f"import sys, shutil; shutil.copyfileobj(open({str(out)!r}, 'rb'), sys.stdout.buffer)"], stdout=subprocess.PIPE)  # fmt: skip
    loaded = subprocess.run(
        [*LLMDOCK, "load", "-", "--expect", digest.group(1).decode()], stdin=producer.stdout, capture_output=True, text=True,
        env={**os.environ, **dst}, timeout=300,
    )  # fmt: skip
    assert producer.stdout is not None
    producer.stdout.close()
    assert producer.wait() == 0
    assert loaded.returncode == 0, loaded.stderr
    assert f"image {tag} loaded" in loaded.stdout
    assert docker_client.images.get(tag).id == image_id

    [model] = listed(dst)
    assert model["name"] == REPO and model["source"] == "modelscope" and model["status"] == "verified"
    assert Path(model["path"]).is_relative_to(tmp_path / "dst-home" / "models")
    assert {p.name: p.read_bytes() for p in Path(model["path"]).iterdir()} == tiny_model_files()
    assert cli("models", "verify", REPO, env=dst).returncode == 0
    wheels = list((tmp_path / "dst-home" / "wheels").glob("llmdock-*.whl"))
    assert len(wheels) == 1 and wheels[0].stat().st_size > 10_000


def test_a_tampered_member_is_refused_with_its_path(
    pulled: dict[str, str], wheel: str, tmp_path: Path
) -> None:
    path = bundle_file(pulled, tmp_path, "--no-image", "--wheel", wheel)
    path.write_bytes(bundles.rebuild(path.read_bytes(), bundles.flip_byte(SHARD)))
    dst = fresh(tmp_path)
    done = cli("load", str(path), env=dst)
    assert done.returncode == 1
    assert f"bundle member {SHARD} does not match the manifest" in done.stderr and "hint:" in done.stderr
    assert listed(dst) == []


def test_a_truncated_copy_is_refused_then_resumed_when_complete(
    pulled: dict[str, str], image: tuple[str, str], wheel: str, tmp_path: Path
) -> None:
    tag, _ = image
    full = bundle_file(pulled, tmp_path, "--image", tag, "--wheel", wheel).read_bytes()
    copy = tmp_path / "usb" / "tiny.llmdock"
    copy.parent.mkdir()
    cut = len(full) // 2  # inside the image
    copy.write_bytes(full[:cut])
    dst = fresh(tmp_path)
    first = cli("load", str(copy), "--json", env=dst)
    assert first.returncode == 1 and "the bundle ends early" in first.stderr, first.stderr
    verified = [e["path"] for e in events(first.stdout) if e["event"] == "member"]
    assert SHARD in verified and listed(dst) == []

    with copy.open("ab") as f:  # the copy finishes (as `rsync --append` or a second `cat >>` would)
        f.write(full[cut:])
    second = cli("load", str(copy), "--json", env=dst)
    assert second.returncode == 0, second.stderr
    result = events(second.stdout)[-1]
    assert set(verified) <= set(result["kept"]) and not set(result["kept"]) & set(result["received"])
    assert result["image"] == tag and result["model"] == "modelscope:tiny/model@master"
    assert [m["status"] for m in listed(dst)] == ["verified"]


def test_a_load_killed_mid_stream_resumes_from_its_staging(
    pulled: dict[str, str], image: tuple[str, str], wheel: str, tmp_path: Path
) -> None:
    tag, _ = image
    full = bundle_file(pulled, tmp_path, "--image", tag, "--wheel", wheel).read_bytes()
    dst = fresh(tmp_path)
    proc = subprocess.Popen(
        [*LLMDOCK, "load", "-", "--json"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, **dst},
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(full[: len(full) - (3 << 20) // 2])  # all but half the image; the pipe stays open
    proc.stdin.flush()
    seen = []
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "member":
            seen.append(event["path"])
            if event["path"] == SHARD.replace("00001", "00002"):
                break
    proc.send_signal(signal.SIGKILL)  # no cleanup: whatever staging holds is what a crash leaves
    proc.communicate(timeout=60)
    assert listed(dst) == []

    again = cli("load", str(tmp_path / "tiny.llmdock"), "--json", env=dst)
    assert again.returncode == 0, again.stderr
    result = events(again.stdout)[-1]
    assert set(seen) <= set(result["kept"])


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (bundles.entry("../../evil"), "'../../evil' is not a safe path"),
        (bundles.entry("/tmp/llmdock-bundle-evil"), "'/tmp/llmdock-bundle-evil' is not a safe path"),
        (bundles.entry("weights/config.json", b"", bundles.tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_unsafe_members_are_refused(
    pulled: dict[str, str], wheel: str, tmp_path: Path, extra: bundles.Member, says: str
) -> None:
    path = bundle_file(pulled, tmp_path, "--no-image", "--wheel", wheel)
    path.write_bytes(bundles.rebuild(path.read_bytes(), bundles.insert_after_head(extra)))
    dst = fresh(tmp_path)
    done = cli("load", str(path), env=dst)
    assert done.returncode == 1 and says in done.stderr, done.stderr
    assert not Path("/tmp/llmdock-bundle-evil").exists() and not (tmp_path / "evil").exists()
    assert listed(dst) == []


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_is_refused_with_what_is_needed(
    pulled: dict[str, str], wheel: str, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs and needs root (as scripts/ci-setup and CI run)")
    path = bundle_file(pulled, tmp_path, "--no-image", "--wheel", wheel)
    with tmpfs(tmp_path / "small-disk", "64k") as small:
        dst = {**fresh(tmp_path), "LLMDOCK_MODELS_DIR": str(small / "models")}
        done = cli("load", str(path), env=dst)
        assert done.returncode == 1
        assert f"not enough free space in {small}" in done.stderr and "loading this bundle" in done.stderr
        assert "nothing was written" in done.stderr
        assert not (small / "models" / ".staging").exists()


def test_a_reader_that_goes_away_is_one_error(pulled: dict[str, str], wheel: str) -> None:
    proc = subprocess.Popen(
        [*LLMDOCK, "bundle", REPO, "--no-image", "--wheel", wheel, "-o", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **pulled},
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.close()  # as `| head -c 0` or a dropped ssh would
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "went away before the end" in stderr and "Traceback" not in stderr, stderr
