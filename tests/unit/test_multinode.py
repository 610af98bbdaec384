"""Multi-node vLLM, the pure parts and the deployer over in-memory hosts: TP x PP over hosts, each
node's container (Ray head/worker or vLLM mp ranks), the Ray head's launcher, start and clean-up."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from llmdock.cluster import ClusterDeployer, node_address, nodes_seen
from llmdock.engines.vllm import CPU_REFUSES_RAY, RAY_HEAD
from llmdock.errors import DoesNotFit, EngineFailed, InvalidSpec, LlmdockError
from llmdock.gpuinfo import parse_assume_gpus
from llmdock.planning.container import LABEL, ContainerConfig
from llmdock.planning.inventory import Inventory
from llmdock.planning.multinode import stage_spec
from llmdock.planning.nodes import (
    ClusterLaunch,
    Node,
    launch,
    propose,
)
from llmdock.planning.plan import Plan, make_plan
from llmdock.runtimes.base import Deployment
from llmdock.spec import DeploymentSpec
from tests.support.memruntime import MemoryRuntime
from tests.support.modelconfigs import facts

GiB = 1 << 30
IMAGE = "vllm/vllm-openai:v0.11.0"


def gpu_host(gpus: str = "8x80GiB") -> Inventory:
    return Inventory(gpus=parse_assume_gpus(gpus), gpu_runtime=True)


def plan_at(spec: DeploymentSpec, inv: Inventory, f: Any) -> Plan:
    return make_plan(
        spec,
        inv,
        model_dir="/data/models/m",
        image=IMAGE,
        port_range=(8000, 8100),
        engine_version="0.11.0",
        facts=f,
    )


def cpu_plan(executor: str) -> Plan:
    spec = DeploymentSpec.create(
        "/data/models/tiny", name="tiny", engine="vllm", gpus="none", dtype="float32"
    )
    leader, _ = stage_spec(spec, 2, 0, executor=executor)
    inv = Inventory(memory_total_bytes=24 * GiB, memory_available_bytes=20 * GiB)
    return make_plan(leader, inv, model_dir="/data/models/tiny", image=IMAGE, port_range=(8000, 8100))


@pytest.mark.parametrize(
    ("spec", "executor", "fragment"),
    [
        ({"gpus": "none"}, "ray", CPU_REFUSES_RAY),
        ({"gpus": "none"}, "ray", "--executor mp"),
        ({"engine": "sglang"}, "ray", "not sglang"),
        ({"extra_args": ["--nnodes=3"]}, "mp", "--nnodes after `--` would override"),
        ({"extra_args": ["--distributed_executor_backend", "mp"]}, "ray", "would override"),
        ({"tensor_parallel_size": 16}, "ray", "a node has 8"),
        ({}, "slurm", "--executor slurm is not one of ray|mp"),
    ],
)
def test_what_cannot_be_spread_over_nodes_is_refused(
    spec: dict[str, Any], executor: str, fragment: str
) -> None:
    with pytest.raises(InvalidSpec) as e:
        stage_spec(DeploymentSpec.create("Qwen/Qwen3-8B", **spec), 2, 8, executor=executor)
    assert fragment in f"{e.value.message} {e.value.hint}"


@pytest.mark.parametrize(
    ("spec", "executor", "per_node", "flags"),
    [
        ({}, "ray", 8, ["--pipeline-parallel-size", "2", "--distributed-executor-backend", "ray"]),
        ({"tensor_parallel_size": 4}, "ray", 4, ["--pipeline-parallel-size", "2"]),
        ({"gpus": "2"}, "mp", 2, ["--distributed-executor-backend", "mp"]),
        (
            {"gpus": "none"},
            "mp",
            0,
            ["--pipeline-parallel-size", "2", "--distributed-executor-backend", "mp"],
        ),
    ],
)
def test_the_leader_holds_one_stage_with_tp_inside_the_node(
    spec: dict[str, Any], executor: str, per_node: int, flags: list[str]
) -> None:
    leader, k = stage_spec(DeploymentSpec.create("Qwen/Qwen3-8B", **spec), 2, 8, executor=executor)
    assert k == per_node
    assert leader.tensor_parallel_size == (per_node or None)
    joined = " ".join(leader.extra_args)
    assert " ".join(flags) in joined


def test_ray_nodes_head_serves_after_the_cluster_and_workers_join_it() -> None:
    plan = plan_at(*_leader_on_gpus())
    nodes = [Node("a", "10.0.0.1", model_dir="/disk/m"), Node("b", "10.0.0.2")]
    cl = launch(plan, nodes, executor="ray", ray_args=("--num-cpus=1",))
    head, worker = cl.nodes
    assert [n.name for n in cl.nodes] == ["big-node0", "big-node1"]
    assert (head.role, worker.role, head.host, worker.host) == ("head", "worker", "a", "b")
    argv = head.container.entrypoint + head.container.command
    assert argv[:3] == ["python3", "-c", RAY_HEAD]
    assert argv[3:7] == ["2", "6379", "10.0.0.1", '["--num-cpus=1"]']
    assert argv[7:] == plan.argv and "--distributed-executor-backend" in plan.argv
    assert worker.container.entrypoint + worker.container.command == [
        "ray",
        "start",
        "--block",
        "--address=10.0.0.1:6379",
        "--node-ip-address=10.0.0.2",
        "--disable-usage-stats",
        "--num-cpus=1",
    ]
    for n in cl.nodes:
        assert n.container.env["VLLM_HOST_IP"] == n.address
        assert n.container.network_mode == "host" and n.container.ports == {}
        assert n.container.gpu_ids == plan.container.gpu_ids  # each node its own 8
        # the weights at the same path in every container; node a has them elsewhere on disk
        assert [m.target for m in n.container.mounts] == [m.target for m in plan.container.mounts]
    assert {m.source for m in head.container.mounts} >= {"/disk/m"}
    assert "/disk/m" not in {m.source for m in worker.container.mounts}


def test_nodes_are_one_group_and_only_the_head_is_routed() -> None:
    cl = launch(plan_at(*_leader_on_gpus()), [Node("a", "10.0.0.1"), Node("b", "10.0.0.2")])
    head, worker = (Deployment.from_labels(n.container.labels, state="running") for n in cl.nodes)
    assert (head.name, head.group, worker.name, worker.group) == ("big-node0", "big", "big-node1", "big")
    assert head.port is not None and worker.port is None  # the gateway skips a deployment without port
    labels = cl.nodes[1].container.labels
    assert (labels[f"{LABEL}.role"], labels[f"{LABEL}.node"], labels[f"{LABEL}.nodes"]) == (
        "worker",
        "1",
        "2",
    )


def test_mp_nodes_run_vllm_ranks_and_the_others_headless() -> None:
    plan = cpu_plan("mp")
    nodes = [Node("local", "10.1.0.2", env={"VLLM_CPU_OMP_THREADS_BIND": "0"}), Node("b", "10.1.0.3")]
    cl = launch(plan, nodes, executor="mp")
    head, worker = (n.container.entrypoint + n.container.command for n in cl.nodes)
    assert head[: len(plan.argv)] == plan.argv == worker[: len(plan.argv)]
    tail = ["--nnodes", "2", "--node-rank", "{}", "--master-addr", "10.1.0.2", "--master-port", "29501"]
    assert head[len(plan.argv) :] == [t.format(0) for t in tail]
    assert worker[len(plan.argv) :] == [t.format(1) for t in tail] + ["--headless"]
    assert cl.nodes[0].container.env["VLLM_TARGET_DEVICE"] == "cpu"
    assert cl.nodes[0].container.env["VLLM_CPU_OMP_THREADS_BIND"] == "0"  # a node's own binding
    assert "VLLM_CPU_OMP_THREADS_BIND" not in cl.nodes[1].container.env


@pytest.mark.parametrize(
    ("nodes", "fragment"),
    [
        ([Node("a", "10.0.0.1")], "needs two nodes"),
        ([Node("a", "10.0.0.1"), Node("b", "10.0.0.1")], "share the address 10.0.0.1"),
    ],
)
def test_nodes_that_cannot_form_a_cluster_are_refused(nodes: list[Node], fragment: str) -> None:
    with pytest.raises(InvalidSpec, match=fragment):
        launch(cpu_plan("mp"), nodes, executor="mp")


def _leader_on_gpus() -> tuple[DeploymentSpec, Inventory, Any]:
    spec = DeploymentSpec.create("Qwen/Qwen2.5-72B-Instruct", name="big", max_model_len=32768)
    leader, _ = stage_spec(spec, 2, 8)
    from llmdock.planning.multinode import pipeline_stage

    return leader, gpu_host("8x16GiB"), pipeline_stage(facts("Qwen--Qwen2.5-72B-Instruct"), 2)


def planner(hosts: list[tuple[str, Inventory]]) -> Callable[[DeploymentSpec, str, Any], Plan]:
    return lambda spec, host, f: plan_at(spec, dict(hosts)[host], f)


def test_propose_takes_one_host_when_it_fits_and_spreads_over_two_when_not() -> None:
    hosts = [("a", gpu_host("8x16GiB")), ("b", gpu_host("8x16GiB")), ("c", gpu_host("8x16GiB"))]
    plan_on = planner(hosts)
    small = DeploymentSpec.create("Qwen/Qwen2.5-7B-Instruct", name="small")
    plan, chosen = propose(small, hosts, plan_on, facts=facts("Qwen--Qwen2.5-7B-Instruct"))
    assert chosen == ("a",) and "--pipeline-parallel-size" not in plan.argv
    big = DeploymentSpec.create("Qwen/Qwen2.5-72B-Instruct", name="big", max_model_len=32768)
    plan, chosen = propose(big, hosts, plan_on, facts=facts("Qwen--Qwen2.5-72B-Instruct"))
    assert chosen == ("a", "b")
    assert plan.fit is not None and plan.fit.tp == 8
    i = plan.argv.index("--pipeline-parallel-size")
    assert plan.argv[i : i + 4] == ["--pipeline-parallel-size", "2", "--distributed-executor-backend", "ray"]


def test_propose_says_what_no_number_of_hosts_holds() -> None:
    hosts = [("a", gpu_host("2x16GiB")), ("b", gpu_host("2x16GiB"))]
    plan_on = planner(hosts)
    big = DeploymentSpec.create("Qwen/Qwen2.5-72B-Instruct", name="big", max_model_len=32768)
    with pytest.raises(DoesNotFit) as e:
        propose(big, hosts, plan_on, facts=facts("Qwen--Qwen2.5-72B-Instruct"))
    assert "one of 2 pipeline stages" in e.value.message and "tried up to 2 nodes" in e.value.hint
    with pytest.raises(InvalidSpec, match="--nodes 3 needs 3 hosts and 2 were given"):
        propose(big, hosts, plan_on, facts=facts("Qwen--Qwen2.5-72B-Instruct"), nodes=3)


# ---- the Ray head's launcher, run for real with a stand-in `ray` on PATH -------------------------

STATUS = """\
======== Autoscaler status: 2026-12-04 19:18:12.458657 ========
Node status
---------------------------------------------------------------
Active:
{active}
Pending:
 (no pending nodes)
Recent failures:
 (no failures)
"""
FAKE_RAY = """#!/bin/sh
# stand-in for Ray's CLI: `start` succeeds; `status` shows one more active node each time, up to 2
state="$(dirname "$0")/calls"
case "$1" in
  start) echo "start $*" >> "$(dirname "$0")/log" ;;
  status) n=$(cat "$state" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$state"
          [ $n -gt 2 ] && n=2
          i=0; while [ $i -lt $n ]; do echo " 1 node_$i"; i=$((i + 1)); done | python3 -c "
import sys; print(open(sys.argv[1]).read().replace('{active}', sys.stdin.read().rstrip()))" "$(dirname "$0")/status.txt" ;;
esac
"""


def test_the_ray_head_counts_nodes_in_ray_status_then_becomes_the_engine(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "status.txt").write_text(STATUS)
    ray = bin_dir / "ray"
    ray.write_text(FAKE_RAY)
    ray.chmod(0o755)
    env = os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    argv = [sys.executable, "-c", RAY_HEAD, "2", "6379", "10.0.0.1", '["--num-cpus=1"]', "echo", "serving"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30, check=True)
    lines = done.stdout.splitlines()
    assert lines[0] == "llmdock: ray cluster 1/2 nodes" and "llmdock: ray cluster 2/2 nodes" in lines
    assert lines[-1] == "serving"  # exec'd: the engine's output follows the last ray status
    assert nodes_seen(lines) == 2
    started = (bin_dir / "log").read_text()
    assert "--head --port=6379 --node-ip-address=10.0.0.1 --disable-usage-stats --num-cpus=1" in started


# ---- the deployer over in-memory hosts ------------------------------------------------------------


class Host(MemoryRuntime):
    """A host whose Ray head prints what the real one does as nodes join (``on_create``)."""

    def __init__(self, on_create: Callable[[ContainerConfig], None] = lambda cfg: None) -> None:
        super().__init__(images={IMAGE: "sha256:1"})
        self.on_create = on_create

    def create(self, cfg: ContainerConfig) -> Deployment:
        dep = super().create(cfg)
        self.on_create(cfg)
        return dep


def two_hosts(worker_dies: bool = False) -> tuple[dict[str, Host], ClusterLaunch]:
    cl = launch(plan_at(*_leader_on_gpus()), [Node("a", "10.0.0.1"), Node("b", "10.0.0.2")])
    hosts: dict[str, Host] = {}

    def joined(cfg: ContainerConfig) -> None:
        a = hosts["a"]
        if cfg.name == "big-node0":
            a.log_lines[cfg.name] = ["llmdock: ray cluster 1/2 nodes"]
        elif worker_dies:
            hosts["b"]._set(cfg.name, state="exited", exit_code=1)
            hosts["b"].log_lines[cfg.name] = ["ConnectionError: GCS at 10.0.0.1:6379 unreachable"]
        else:
            a.log_lines["big-node0"].append("llmdock: ray cluster 2/2 nodes")

    hosts.update(a=Host(joined), b=Host(joined))
    return hosts, cl


def test_the_deployer_starts_head_then_workers_and_waits_for_every_node() -> None:
    hosts, cl = two_hosts()
    seen: list[str] = []
    ClusterDeployer(hosts.__getitem__, poll_s=0.01).up(
        cl, timeout=5, ready=lambda rt, head, left: seen.append(head.name)
    )
    assert [d.name for d in hosts["a"].deployments()] == ["big-node0"]
    assert [d.name for d in hosts["b"].deployments()] == ["big-node1"]
    assert seen == ["big-node0"]


def test_a_worker_that_cannot_join_fails_the_deployment_and_nothing_is_left() -> None:
    hosts, cl = two_hosts(worker_dies=True)
    with pytest.raises(EngineFailed) as e:
        ClusterDeployer(hosts.__getitem__, poll_s=0.01).up(cl, timeout=5)
    assert "Ray worker 'big-node1' on host b exited" in e.value.message and "(1/2 nodes)" in e.value.message
    assert "GCS at 10.0.0.1:6379 unreachable" in e.value.log_tail[-1]
    assert hosts["a"].deployments() == [] and hosts["b"].deployments() == []


def test_a_cluster_that_never_forms_times_out_naming_the_head_address() -> None:
    hosts, cl = two_hosts()
    hosts["b"].on_create = lambda cfg: None  # joins, but the head never counts it
    with pytest.raises(LlmdockError, match="has 1 of 2 nodes") as e:
        ClusterDeployer(hosts.__getitem__, poll_s=0.01).up(cl, timeout=0.2)
    assert "10.0.0.1:6379" in e.value.hint
    assert hosts["a"].deployments() == [] and hosts["b"].deployments() == []


def test_mp_has_no_ray_step() -> None:
    plan = replace(cpu_plan("mp"), container=replace(cpu_plan("mp").container, image=IMAGE))
    cl = launch(plan, [Node("a", "10.1.0.2"), Node("b", "10.1.0.3")], executor="mp")
    hosts = {"a": Host(), "b": Host()}
    ClusterDeployer(hosts.__getitem__, poll_s=0.01).up(cl, timeout=1)
    assert [d.name for h in hosts.values() for d in h.deployments()] == ["tiny-node0", "tiny-node1"]


@pytest.mark.parametrize(
    ("address", "peer", "expected"),
    [
        ("127.0.0.1", "10.9.9.9", "127.0.0.1"),
        ("localhost", "10.9.9.9", "127.0.0.1"),
        (None, "127.0.0.1", "127.0.0.1"),
    ],
)
def test_a_node_is_reached_at_its_own_ip(address: str | None, peer: str, expected: str) -> None:
    assert node_address(address, peer) == expected


def test_a_node_without_an_ipv4_address_is_refused_with_what_to_do() -> None:
    with pytest.raises(InvalidSpec, match=r"no IPv4 address for node nowhere\.invalid") as e:
        node_address("nowhere.invalid", "127.0.0.1")
    assert "hosts add" in e.value.hint
