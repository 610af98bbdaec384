"""Multi-node vLLM across two network-isolated "nodes", with the real vLLM CPU image.

Each node is a network namespace of its own: a holder container on a user-defined bridge network with
a fixed address, and the node's container joins it (``--network container:HOLDER``), which is what
host networking on a real host is to it. The tiny model is mounted at the same path on both.

- Ray (vLLM's recipe): the head and a worker form a Ray cluster (``ray status`` in the head lists both
  nodes); then vLLM 0.32.0 on the CPU refuses Ray (``current platform cpu does not support ray``) —
  the test pins that, so that a vLLM which lifts it shows here (then serve through it instead).
- mp (vLLM's multiprocessing backend over nodes): pipeline parallel 2, one stage per node, answers a
  chat through ``llmdock serve``; ``ps`` shows both nodes and ``rm`` removes both.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import cli, own_home
from tests.support.gateway import serve

pytestmark = [pytest.mark.docker, pytest.mark.vllm, pytest.mark.slow]

SUBNET = "10.215.{}.0/24"
RAY_ARGS = ("--num-cpus=1", "--object-store-memory=100000000")  # 2 cores, 24 GiB shared by everything


@dataclass
class Nodes:
    name: str
    addresses: tuple[str, str]
    holders: tuple[str, str]
    port: int


@pytest.fixture
def nodes(docker_client: Any) -> Iterator[Nodes]:
    """Two namespaces on their own bridge network; the head's engine port published on loopback."""
    import docker

    from llmdock.demo.image import BASE_TAG

    tag = uuid.uuid4().hex[:6]
    net_name, third = f"llmdock-mn-{tag}", int(tag[:2], 16)
    network = docker_client.networks.create(
        net_name, driver="bridge", ipam=_ipam(SUBNET.format(third)), labels={"io.llmdock.test": "multinode"}
    )
    addresses = (f"10.215.{third}.2", f"10.215.{third}.3")
    port = 18000 + third
    holders = []
    try:
        for i, address in enumerate(addresses):
            holder = docker_client.containers.create(
                BASE_TAG,
                ["sleep", "infinity"],
                name=f"{net_name}-ns{i}",
                network=net_name,
                networking_config={net_name: docker_client.api.create_endpoint_config(ipv4_address=address)},
                ports={f"{port}/tcp": ("127.0.0.1", port)} if i == 0 else {},
                labels={"io.llmdock.test": "multinode"},
            )
            holders.append(holder)
            holder.start()
        yield Nodes(f"mn-{tag}", addresses, (holders[0].name, holders[1].name), port)
    finally:
        left = docker_client.containers.list(all=True, filters={"label": f"io.llmdock.group=mn-{tag}"})
        for c in [*left, *holders]:
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)
        network.remove()


def _ipam(subnet: str) -> Any:
    from docker.types import IPAMConfig, IPAMPool

    return IPAMConfig(pool_configs=[IPAMPool(subnet=subnet)])


def _launch(nodes: Nodes, tiny_model: Path, image: str, executor: str) -> Any:
    from llmdock.planning.inventory import Inventory
    from llmdock.planning.multinode import stage_spec
    from llmdock.planning.nodes import Node, launch
    from llmdock.planning.plan import make_plan
    from llmdock.spec import DeploymentSpec

    spec = DeploymentSpec.create(
        str(tiny_model),
        name=nodes.name,
        engine="vllm",
        gpus="none",
        dtype="float32",
        max_model_len=512,
        kv_cache_space=1,
        expose=True,
    )
    if executor == "ray":  # what stage_spec refuses on the CPU, asked for anyway to see vLLM's answer
        leader = replace(
            spec, extra_args=["--pipeline-parallel-size", "2", "--distributed-executor-backend", "ray"]
        )
    else:
        leader, _ = stage_spec(spec, 2, 0, executor=executor)
    inv = Inventory(memory_total_bytes=24 << 30, memory_available_bytes=16 << 30)
    port = (nodes.port, nodes.port)
    plan = make_plan(leader, inv, model_dir=str(tiny_model), image=image, port_range=port)
    on = [
        Node("local", address, network_mode=f"container:{holder}", env={"VLLM_CPU_OMP_THREADS_BIND": str(i)})
        for i, (address, holder) in enumerate(zip(nodes.addresses, nodes.holders, strict=True))
    ]
    return launch(plan, on, executor=executor, ray_args=RAY_ARGS)


def _active_nodes(status: str) -> list[str]:
    active = status.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return re.findall(r"^\s*1 (node_\w+)", active, re.M)


def test_ray_cluster_forms_over_two_nodes_and_vllm_cpu_refuses_ray(
    docker_client: Any, nodes: Nodes, tiny_model: Path
) -> None:
    from llmdock.cluster import ClusterDeployer
    from llmdock.demo.image import VLLM_RAY_TAG, ensure_engine_image
    from llmdock.engines import get_engine
    from llmdock.errors import EngineFailed
    from llmdock.readiness import wait_ready
    from llmdock.runtimes.docker import DockerRuntime

    image = ensure_engine_image(docker_client, VLLM_RAY_TAG, log=lambda _: None)
    cl = _launch(nodes, tiny_model, image, "ray")
    rt = DockerRuntime(docker_client)
    ClusterDeployer(lambda host: rt).up(cl, timeout=180)
    # formed: Ray's own view, asked in the head container now, and as the head printed it before serving
    code, out = docker_client.containers.get(cl.head.name).exec_run(["ray", "status"])
    assert code == 0 and len(_active_nodes(out.decode())) == 2, out.decode()
    logged = "\n".join(rt.logs(cl.head.name))
    assert "llmdock: ray cluster 2/2 nodes" in logged and len(_active_nodes(logged)) == 2
    with pytest.raises(EngineFailed) as e:
        wait_ready(rt, cl.head.name, get_engine("vllm"), timeout=240, address="127.0.0.1")
    # the line vLLM printed, diagnosed: "'NAME-node0' exited with code 1: vLLM's CPU backend refuses Ray
    # (its CPU platform has no Ray device) — 'ValueError: current platform cpu does not support ray.'"
    said = f"{e.value.message} {e.value.hint}"
    assert "'ValueError: current platform cpu does not support ray.'" in said, said
    assert "vLLM's CPU backend refuses Ray" in said and "--executor mp" in said, said


@pytest.fixture
def mhome(tmp_path: Path) -> Iterator[Path]:
    with own_home(tmp_path / "home") as home:
        yield home


def test_pipeline_parallel_over_two_nodes_answers_through_the_gateway(
    docker_client: Any, nodes: Nodes, tiny_model: Path, mhome: Path, tmp_path: Path
) -> None:
    from llmdock.cluster import ClusterDeployer
    from llmdock.demo.image import VLLM_TAG, ensure_engine_image
    from llmdock.engines import get_engine
    from llmdock.readiness import wait_ready
    from llmdock.runtimes.docker import DockerRuntime

    image = ensure_engine_image(docker_client, VLLM_TAG, log=lambda _: None)
    cl = _launch(nodes, tiny_model, image, "mp")
    rt = DockerRuntime(docker_client)

    def ready(runtime: Any, head: Any, left: float) -> None:
        wait_ready(runtime, head.name, get_engine("vllm"), timeout=left, address="127.0.0.1")

    ClusterDeployer(lambda host: rt).up(cl, timeout=300, ready=ready)
    worker_log = "\n".join(rt.logs(cl.nodes[1].name))
    assert "Worker_PP1" in worker_log  # the second pipeline stage runs in the other namespace

    listed = cli("ps")
    assert listed.returncode == 0, listed.stderr
    assert f"{nodes.name}-node0" in listed.stdout and f"{nodes.name}-node1" in listed.stdout

    with serve(tmp_path) as gw:
        gw.wait_ready(timeout=30)
        body = {"model": nodes.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        r = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 5

    removed = cli("rm", "-f", nodes.name)
    assert removed.returncode == 0, removed.stderr
    assert not docker_client.containers.list(all=True, filters={"label": f"io.llmdock.group={nodes.name}"})
