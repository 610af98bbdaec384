"""One deployment over several Docker hosts: which hosts, and each node's container. Pure.

:func:`propose` decides how many nodes (the fewest whose pipeline stages fit, or ``--nodes N``) and
plans the leader with :mod:`llmdock.planning.multinode`; :func:`launch` turns that leader's
:class:`~llmdock.planning.plan.Plan` into one container per node, following vLLM's recipes:

- ``ray`` (``examples/online_serving/run_cluster.sh``): node 0 runs ``ray start --head``, waits until
  ``ray status`` counts every node, then becomes ``vllm serve … --distributed-executor-backend ray``
  (:data:`~llmdock.engines.vllm.RAY_HEAD`, so the engine is the container's main process: its logs
  are ``docker logs``, its exit is the container's); nodes 1… run ``ray start --block --address
  HEAD:6379``. The argv of each comes from :mod:`llmdock.engines.vllm`, the only place that knows
  vLLM's and Ray's flags.
- ``mp``: every node runs the same ``vllm serve`` with ``--nnodes/--node-rank/--master-addr``, the
  others ``--headless``.

Every node has host networking, ``VLLM_HOST_IP`` set to its own address and the weights at the same
path (the leader's mounts; a node's own ``model_dir`` replaces the weights' source). Containers are
named ``NAME-node0`` … and labelled with group ``NAME``, so ``stop/start/rm NAME`` take them all, as
for replicas; only the head carries a port (the gateway routes ``NAME`` to it).

Example::

    cl = launch(plan, [Node("a", "10.0.0.1"), Node("b", "10.0.0.2")], executor="ray")
    [n.container.name for n in cl.nodes]  # ['qwen-node0', 'qwen-node1']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from llmdock.engines.vllm import mp_argv, ray_head_argv, ray_worker_argv
from llmdock.errors import DoesNotFit, InvalidSpec
from llmdock.planning.container import LABEL, ContainerConfig, Mount
from llmdock.planning.multinode import check_nodes, pipeline_stage, stage_spec

if TYPE_CHECKING:
    from llmdock.modelfacts import ModelFacts
    from llmdock.planning.inventory import Inventory
    from llmdock.planning.plan import Plan
    from llmdock.spec import DeploymentSpec

ROLE = f"{LABEL}.role"  # head | worker
NODE = f"{LABEL}.node"  # 0 … N-1
NODES = f"{LABEL}.nodes"  # N
EXECUTOR = f"{LABEL}.executor"  # ray | mp


@dataclass(frozen=True)
class Node:
    """A host a node runs on: its Docker host (``local`` or a `llmdock hosts` name), the address the
    other nodes reach it at, its network (``host``; tests give ``container:NETNS-HOLDER``), where the
    weights lie on it (None: the leader's path) and variables of its own (CPU binding)."""

    host: str
    address: str
    network_mode: str = "host"
    model_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeLaunch:
    index: int
    host: str
    address: str
    container: ContainerConfig

    @property
    def role(self) -> str:
        return "head" if self.index == 0 else "worker"

    @property
    def name(self) -> str:
        return self.container.name


@dataclass(frozen=True)
class ClusterLaunch:
    """What ``up --nodes N`` starts: the head first, then the workers."""

    name: str
    executor: str
    nodes: tuple[NodeLaunch, ...]

    @property
    def head(self) -> NodeLaunch:
        return self.nodes[0]

    @property
    def workers(self) -> tuple[NodeLaunch, ...]:
        return self.nodes[1:]


def node_name(name: str, index: int) -> str:
    return f"{name}-node{index}"


def launch(
    plan: Plan, nodes: Sequence[Node], *, executor: str = "ray", ray_args: Sequence[str] = ()
) -> ClusterLaunch:
    """One container per node from the leader's ``plan`` (its argv already has the pipeline flags
    :func:`~llmdock.planning.multinode.stage_spec` adds). ``ray_args`` go to every ``ray start``."""
    check_nodes(len(nodes))
    if len(nodes) < 2:
        raise InvalidSpec("a multi-node deployment needs two nodes or more", "give --nodes 2 and two --host")
    addresses = [n.address for n in nodes]
    if len(set(addresses)) != len(addresses):
        raise InvalidSpec(
            f"two nodes share the address {next(a for a in addresses if addresses.count(a) > 1)}",
            "give each node its own host: vLLM tells nodes apart by VLLM_HOST_IP",
        )
    name, head = plan.spec.name, nodes[0].address
    base = plan.container
    out = []
    for i, node in enumerate(nodes):
        if executor != "ray":
            argv = mp_argv(plan.argv, len(nodes), i, head)
        elif i == 0:
            argv = ray_head_argv(len(nodes), head, plan.argv, ray_args)
        else:
            argv = ray_worker_argv(head, node.address, ray_args)
        labels = base.labels | {
            f"{LABEL}.name": node_name(name, i),
            f"{LABEL}.group": name,
            ROLE: "head" if i == 0 else "worker",
            NODE: str(i),
            NODES: str(len(nodes)),
            EXECUTOR: executor,
        }
        if i:
            labels[f"{LABEL}.port"] = ""  # no HTTP on a worker: the gateway routes NAME to the head
        cfg = replace(
            base,
            name=node_name(name, i),
            entrypoint=argv[:1],
            command=argv[1:],
            labels=labels,
            network_mode=node.network_mode,
            ports={},
            mounts=tuple(_weights_on(m, plan, node) for m in base.mounts),
            env=base.env | node.env | {"VLLM_HOST_IP": node.address},
            cpuset_cpus=None,  # --cpus names the planning host's CPUs; a node binds by its own env
        )
        out.append(NodeLaunch(i, node.host, node.address, cfg))
    return ClusterLaunch(name, executor, tuple(out))


def _weights_on(m: Mount, plan: Plan, node: Node) -> Mount:
    model_dir = plan.container.labels.get(f"{LABEL}.model-dir", "")
    if node.model_dir and model_dir and m.source == model_dir:
        return replace(m, source=node.model_dir)
    return m


# (spec, host, facts) -> the plan of spec on that host, with those facts (a stage's, on several nodes)
PlanOn = Callable[["DeploymentSpec", str, "ModelFacts | None"], "Plan"]


def propose(
    spec: DeploymentSpec,
    hosts: Sequence[tuple[str, Inventory]],
    plan_on: PlanOn,
    *,
    facts: ModelFacts | None,
    nodes: int | None = None,
    executor: str = "ray",
) -> tuple[Plan, tuple[str, ...]]:
    """The leader's plan and the hosts (in the given order) of the fewest nodes that hold ``spec``
    (``hosts``: each host's name and inventory, which bounds the TP by its GPU count):
    one host when it fits there, else TP x PP over 2, 3 … hosts (``nodes`` fixes the count). The
    leader is planned on the first host (its port, its GPUs) with the TP the fewest GPUs of the
    chosen hosts allow; the others are taken to match it. Raises the last DoesNotFit, naming how
    many hosts were tried."""
    if not hosts:
        raise InvalidSpec("no host to plan on", "add hosts with `llmdock hosts add NAME ssh://USER@HOST`")
    counts = [check_nodes(nodes)] if nodes else list(range(1, len(hosts) + 1))
    last: DoesNotFit | None = None
    for n in counts:
        if n > len(hosts):
            raise InvalidSpec(
                f"--nodes {n} needs {n} hosts and {len(hosts)} were given",
                "add hosts with `llmdock hosts add`, or give fewer --nodes",
            )
        chosen = hosts[:n]
        if n == 1:
            try:
                return plan_on(spec, chosen[0][0], facts), (chosen[0][0],)
            except DoesNotFit as e:
                last = e
                continue
        leader, _ = stage_spec(spec, n, min(len(inv.gpus) for _, inv in chosen), executor=executor)
        stage = pipeline_stage(facts, n) if facts else None
        try:
            return plan_on(leader, chosen[0][0], stage), tuple(h for h, _ in chosen)
        except DoesNotFit as e:
            last = DoesNotFit(f"one of {n} pipeline stages: {e.message}", e.hint, e.alternatives)
    assert last is not None
    raise DoesNotFit(
        last.message, f"{last.hint}; or add hosts (tried up to {counts[-1]} nodes)", last.alternatives
    )
