"""Lifecycle over two runtimes (in memory): routing by spec, Docker unreachable, lazy connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmdock import settings
from llmdock.errors import RuntimeUnavailable
from llmdock.lifecycle import Lifecycle
from llmdock.runtimes.base import Runtime
from llmdock.spec import DeploymentSpec
from llmdock.state import Store
from tests.support.memruntime import MemoryRuntime

IMAGE = settings.KEYS["image.transformers"].default


def make(tmp_path: Path, docker: Runtime | None) -> tuple[Lifecycle, MemoryRuntime, list[str]]:
    local = MemoryRuntime(images={"transformers": "env:/e", "py312": "env:/p"}, gpu_runtime=True)
    connects: list[str] = []

    def connect() -> Runtime:
        connects.append("docker")
        if docker is None:
            raise RuntimeUnavailable("the Docker daemon is not reachable", "start it")
        return docker

    s = settings.load({"LLMDOCK_HOME": str(tmp_path / "home")})
    store = Store(s.db_path)
    return Lifecycle(s, {"local": local, "docker": connect}, store), local, connects


def test_local_up_and_verbs_work_with_docker_down(tmp_path: Path, model: str) -> None:
    lc, local, connects = make(tmp_path, None)
    spec = DeploymentSpec.create(model, name="t", engine="transformers", runtime="local")
    result = lc.up(spec, wait=False)
    assert result.plan.spec.engine_env == "transformers"  # the default: the engine's name
    assert result.plan.container.image == "transformers" and result.plan.container.mounts == ()
    assert result.plan.argv[2] == str(Path(model).resolve())  # weights read in place, no /work mount
    assert result.to_dict()["docker_run"] is None
    assert lc.store.deployment("t")["runtime"] == "local"  # type: ignore[index]
    assert lc.up(spec, wait=False).action == "unchanged"
    lc.stop("t")
    lc.start("t", wait=False)
    lc.rm("t", force=True)
    assert (local.items == {} and connects == []) or connects == ["docker"]


def test_ps_lists_local_with_a_note_when_docker_is_down(tmp_path: Path, model: str) -> None:
    lc, _, _ = make(tmp_path, None)
    lc.up(DeploymentSpec.create(model, name="t", engine="transformers", runtime="local"), wait=False)
    deps = lc.ps()
    assert [(d.name, d.runtime) for d in deps] == [("t", "local")]
    assert any("not reachable" in n for n in lc.notes)
    with pytest.raises(RuntimeUnavailable):  # maybe a Docker deployment: say why it cannot be looked up
        lc.get("elsewhere")


def test_deployments_go_to_their_runtime_and_ps_merges(tmp_path: Path, model: str) -> None:
    docker = MemoryRuntime(images={IMAGE: "sha256:abc"})
    lc, local, _ = make(tmp_path, docker)
    lc.up(DeploymentSpec.create(model, name="d", engine="transformers"), wait=False)
    lc.up(
        DeploymentSpec.create(model, name="l", engine="transformers", runtime="local", engine_env="py312"),
        wait=False,
    )
    assert list(docker.items) == ["d"] and list(local.items) == ["l"]
    assert [(d.name, d.runtime) for d in lc.ps()] == [("d", "docker"), ("l", "local")]
    assert lc.get("d").runtime == "docker" and lc.get("l").runtime == "local"
    # Ports are held across runtimes.
    assert docker.items["d"].port != local.items["l"].port
    # Moving a deployment between runtimes is a spec change.
    moved = lc.up(
        DeploymentSpec.create(model, name="d", engine="transformers", runtime="local"),
        wait=False,
        replace=True,
    )
    assert moved.action == "replaced" and "d" in local.items and "d" not in docker.items


def test_missing_env_is_refused_before_anything_exists(tmp_path: Path, model: str) -> None:
    from llmdock.errors import EnvMissing

    lc, local, _ = make(tmp_path, None)
    with pytest.raises(EnvMissing) as e:
        lc.up(
            DeploymentSpec.create(model, name="t", engine="transformers", runtime="local", engine_env="nope")
        )
    assert "env create nope --engine transformers" in e.value.hint
    assert local.items == {} and lc.store.deployment_names() == []


def test_a_member_failing_while_listing_does_not_hide_the_others() -> None:
    from llmdock.errors import RuntimeUnavailable
    from llmdock.runtimes.multi import Runtimes
    from tests.support.memruntime import MemoryRuntime

    class Dying(MemoryRuntime):
        def deployments(self) -> list:  # type: ignore[override, type-arg]
            raise RuntimeUnavailable("Docker did not answer: connection reset")

    local = MemoryRuntime()
    from llmdock.runtimes.base import Deployment

    local.items["a"] = Deployment(name="a", state="running")
    rts = Runtimes({"local": local, "docker": Dying()})
    assert [d.name for d in rts.deployments()] == ["a"]
    assert any("connection reset" in n for n in rts.notes)
