"""`llmdock apply -f` end to end: the real CLI, the real daemon, the CPU engine image and the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli


def names() -> set[str]:
    return {d["name"] for d in json.loads(cli("ps", "--json").stdout)}


@pytest.mark.docker
def test_apply_diff_idempotence_change_prune_export(
    home: Path, tmp_path: Path, engine_image: str, tiny_model: Path, name: str, docker_client: Any
) -> None:
    f = tmp_path / "llmdock.yaml"
    entry = f"deployments:\n  - name: {name}\n    model: {tiny_model}\n    engine: transformers\n"
    f.write_text(entry + "keys:\n  - name: team\n    models: [" + name + "]\n")
    first = cli("apply", "-f", str(f), timeout=300)
    assert first.returncode == 0, first.stderr
    assert f"+ deployment {name}" in first.stdout and "+ key team" in first.stdout
    assert "key team (shown once, stored hashed): sk-llmdock-" in first.stderr
    assert name in names()
    again = cli("apply", "-f", str(f))
    assert again.returncode == 0 and again.stdout.strip() == "nothing to change"

    exported = cli("export")
    assert (
        exported.returncode == 0
        and f"name: {name}" in exported.stdout
        and "sk-llmdock" not in exported.stdout
    )

    f.write_text(entry + "    dtype: float32\n")
    dry = cli("apply", "-f", str(f), "--dry-run")
    assert dry.stdout.strip() == f"~ deployment {name} (dtype: None -> 'float32')"
    changed = cli("apply", "-f", str(f), "--prune", timeout=300)
    assert changed.returncode == 0, changed.stderr
    assert "- key team" in changed.stdout
    assert docker_client.containers.get(name).labels["io.llmdock.spec"].count('"dtype":"float32"') == 1

    f.write_text("deployments: []\n")
    pruned = cli("apply", "-f", str(f), "--prune")
    assert pruned.returncode == 0 and f"- deployment {name}" in pruned.stdout and name not in names()


def test_an_invalid_file_changes_nothing(home: Path, tmp_path: Path, model: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(
        f"deployments:\n  - name: ok\n    model: {model}\n  - name: bad\n    model: {model}\n    tp: 2\n"
    )
    done = cli("apply", "-f", str(f))
    assert done.returncode == 1 and f"{f}:6:5" in done.stderr and "tp" in done.stderr
    assert "ok" not in names()
    unwritable = cli("export", "-o", str(tmp_path / "no" / "such" / "dir.yaml"))
    assert (
        unwritable.returncode == 1
        and "cannot write" in unwritable.stderr
        and "Traceback" not in unwritable.stderr
    )
    schema = json.loads(cli("schema").stdout)
    assert "tensor_parallel_size" in schema["$defs"]["DeploymentEntry"]["properties"]
