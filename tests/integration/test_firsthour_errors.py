"""What a new user meets that used to be a traceback, through the real `llmdock` command line: an
unreadable model folder in `plan`/`up`, a bad LLMDOCK_HOME in `keys create`, a models dir that
cannot be made, `models import` of a folder that is no model. Each is one error line and one hint,
exit 1, and changes nothing.

Unreadable files need a user that permissions apply to: as root the commands run with the
capabilities that override file permissions dropped from their bounding set (root then reads only
what its mode bits allow, like anyone else).
"""

from __future__ import annotations

import ctypes
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _as_plain_user() -> None:
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def llmdock(*args: str, home: Path, plain_user: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMDOCK_")}
    env.update({"LLMDOCK_HOME": str(home), "COLUMNS": "200"})
    return subprocess.run(
        [sys.executable, "-m", "llmdock.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        preexec_fn=_as_plain_user if plain_user else None,
    )


def one_error(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 1, and stderr is one `error:` line (holding ``fragments``) and one `hint:` line."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], done.stderr
    return lines[1]


@pytest.fixture(scope="module")
def permissions_apply(tmp_path_factory: pytest.TempPathFactory) -> None:
    secret = tmp_path_factory.mktemp("probe") / "secret"
    secret.write_text("x")
    secret.chmod(0)
    probe = subprocess.run(
        [sys.executable, "-c", f"open({str(secret)!r})"], preexec_fn=_as_plain_user, capture_output=True
    )
    if probe.returncode == 0:
        pytest.skip("file permissions cannot be made to apply to this user here")


@pytest.fixture
def model_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "weights" / "Tiny-Model"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}))
    (d / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    yield d
    for p in (d, *d.iterdir()):
        p.chmod(0o755)


def deployments(home: Path) -> list[str]:
    if not (home / "state.db").exists():
        return []
    with sqlite3.connect(home / "state.db") as db:
        return [r[0] for r in db.execute("SELECT name FROM deployments")]


@pytest.mark.usefixtures("permissions_apply")
@pytest.mark.parametrize("unreadable", ["directory", "config.json", "model.safetensors"])
@pytest.mark.parametrize(
    "command", [["plan"], ["up", "--dry-run"], ["up", "--no-wait"]], ids=["plan", "dry-run", "up"]
)
def test_an_unreadable_model_folder_is_one_error(
    tmp_path: Path, model_dir: Path, unreadable: str, command: list[str]
) -> None:
    target = model_dir if unreadable == "directory" else model_dir / unreadable
    target.chmod(0)
    home = tmp_path / "home"
    done = llmdock(*command, str(model_dir), "--gpus", "none", home=home, plain_user=True)
    assert "Traceback" not in done.stderr
    if command == ["up", "--no-wait"]:
        hint = one_error(done, "cannot be read by this user")
    else:  # plan and dry run list it as what blocks the deployment, among their other findings
        assert done.returncode == 1, done.stderr + done.stdout
        hint = next(line for line in done.stdout.splitlines() if "cannot be read by this user" in line)
    assert f"chmod -R a+rX {model_dir}" in hint
    assert deployments(home) == []


@pytest.mark.parametrize("how", ["a file", "under a file", "unwritable"])
def test_a_bad_llmdock_home_in_keys_create_is_one_error(tmp_path: Path, how: str) -> None:
    if how == "unwritable":
        parent = tmp_path / "readonly"
        parent.mkdir()
        parent.chmod(0o555)
        home, fragment = parent / "home", "cannot create the state directory"
    else:
        afile = tmp_path / "afile"
        afile.write_text("not a directory")
        home = afile if how == "a file" else afile / "sub"
        fragment = "is not a directory"
    done = llmdock("keys", "create", "ci", home=home, plain_user=how == "unwritable")
    if how == "unwritable" and done.returncode == 0:
        pytest.skip("file permissions do not apply to this user here")
    hint = one_error(done, fragment, str(home) if how != "under a file" else "is a file")
    assert "LLMDOCK_HOME" in hint and "sk-" not in done.stdout
    assert not home.is_dir()  # nothing was made


def test_a_models_dir_that_cannot_be_made_is_one_error(tmp_path: Path, model_dir: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    done = llmdock("models", "import", str(model_dir), "--models-dir", str(afile / "models"), home=tmp_path)
    assert "--models-dir" in one_error(done, "cannot create the models directory", str(afile / "models"))


def test_models_import_refuses_a_folder_without_config_json(tmp_path: Path, model_dir: Path) -> None:
    download = model_dir.parent  # what `modelscope download` leaves: the model one level down
    (download / "README.md").write_text("hi")
    models = tmp_path / "models"
    done = llmdock("models", "import", str(download), "--models-dir", str(models), home=tmp_path / "h")
    hint = one_error(done, "has no config.json", "nothing was imported")
    assert f"import {model_dir} instead" in hint
    assert not models.exists()
    listed = llmdock("models", "ls", "--json", "--models-dir", str(models), home=tmp_path / "h")
    assert json.loads(listed.stdout) == []


def test_models_ls_does_not_call_an_imported_folder_without_config_json_verified(
    tmp_path: Path, model_dir: Path
) -> None:
    models, home = tmp_path / "models", tmp_path / "h"
    assert llmdock("models", "import", str(model_dir), "--models-dir", str(models), home=home).returncode == 0
    (model_dir / "config.json").unlink()  # the user's folder changed after the import
    listed = json.loads(llmdock("models", "ls", "--json", "--models-dir", str(models), home=home).stdout)
    assert [(m["status"], m["verified"]) for m in listed] == [("no config.json", False)]
    table = llmdock("models", "ls", "--models-dir", str(models), home=home).stdout
    assert "no config.json" in table and "verified" not in table
