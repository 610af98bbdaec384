"""DockerRuntime against the real daemon: create, list by labels, logs, stop/start, errors."""

from __future__ import annotations

from typing import Any

import pytest

from llmdock.errors import Conflict, ImageMissing, NotFound, RuntimeUnavailable
from llmdock.planning.container import ContainerConfig, Mount, labels_for
from llmdock.runtimes.docker import DockerRuntime, connect


def config(name: str, image: str, command: list[str], mounts: tuple[Mount, ...] = ()) -> ContainerConfig:
    labels = labels_for(
        name=name,
        model="/m",
        engine="transformers",
        port=8999,
        gpus=(),
        spec_hash="h",
        spec={"name": name},
        served_name="/work/m",
        health_path="/health",
    )
    return ContainerConfig(
        image=image, name=name, entrypoint=command[:1], command=command[1:], labels=labels, mounts=mounts
    )


def test_create_list_logs_stop_start_remove(
    docker_client: Any, engine_image: str, name: str, tmp_path: Any
) -> None:
    rt = DockerRuntime(docker_client)
    (tmp_path / "f").write_text("x")
    script = "import os,time; print('hello', flush=True); open('/work/m/f').read(); time.sleep(600)"
    dep = rt.create(config(name, engine_image, ["python3", "-c", script], (Mount(str(tmp_path), "/work/m"),)))
    assert dep.running and dep.port == 8999 and dep.spec == {"name": name}
    assert name in [d.name for d in rt.deployments()]
    inspect = docker_client.api.inspect_container(name)
    assert inspect["HostConfig"]["IpcMode"] == "host" and inspect["HostConfig"]["NetworkMode"] == "host"
    assert inspect["HostConfig"]["Privileged"] is False
    assert inspect["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert inspect["HostConfig"]["LogConfig"]["Type"] == "json-file"
    assert [m["RW"] for m in inspect["Mounts"]] == [False]
    for _ in range(50):
        if "hello" in rt.tail(name, 5):
            break
    assert "hello" in rt.tail(name, 5)
    rt.stop(name, timeout=1)
    assert rt.get(name).state == "exited"  # type: ignore[union-attr]
    rt.start(name)
    assert rt.get(name).running  # type: ignore[union-attr]
    rt.remove(name, force=True)
    assert rt.get(name) is None


def test_missing_image(docker_client: Any, name: str) -> None:
    with pytest.raises(ImageMissing) as e:
        DockerRuntime(docker_client).create(config(name, "llmdock/does-not-exist:1", ["true"]))
    assert "docker pull llmdock/does-not-exist:1" in e.value.hint


def test_name_taken_by_a_foreign_container(docker_client: Any, engine_image: str, name: str) -> None:
    docker_client.containers.create(engine_image, ["true"], name=name)
    rt = DockerRuntime(docker_client)
    assert rt.get(name) is None  # not ours: invisible to ps
    with pytest.raises(Conflict):
        rt.create(config(name, engine_image, ["true"]))


def test_gpu_request_without_nvidia_runtime(docker_client: Any, engine_image: str, name: str) -> None:
    rt = DockerRuntime(docker_client)
    if rt.has_gpu_runtime():
        pytest.skip("this daemon has the NVIDIA runtime; the refusal cannot be shown here")
    cfg = config(name, engine_image, ["true"])
    gpu_cfg = ContainerConfig(**{**cfg.__dict__, "gpu_ids": (0,)})
    with pytest.raises(RuntimeUnavailable) as e:
        rt.create(gpu_cfg)
    assert "nvidia-container-toolkit" in e.value.hint
    assert docker_client.containers.list(all=True, filters={"name": name}) == []  # nothing half-made


def test_probe_reads_the_engine_version(docker_client: Any, engine_image: str) -> None:
    from llmdock.engines import get_engine

    version = DockerRuntime(docker_client).run_probe(engine_image, get_engine("transformers").version_probe())
    assert version.split(".")[0].isdigit()


def test_unknown_container(docker_client: Any) -> None:
    with pytest.raises(NotFound):
        DockerRuntime(docker_client).stop("llmdock-no-such-container")


def test_unreachable_daemon() -> None:
    with pytest.raises(RuntimeUnavailable) as e:
        connect("unix:///tmp/llmdock-no-daemon.sock")
    assert "not reachable" in e.value.message and "dockerd" in e.value.hint
