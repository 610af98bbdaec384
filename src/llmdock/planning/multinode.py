"""A model over several nodes: tensor parallel inside a node, pipeline parallel across nodes. Pure.

Shared by ``llmdock export k8s --nodes N`` (a LeaderWorkerSet) and ``llmdock up --nodes N`` (Docker
hosts over SSH). Both follow vLLM's own multi-node recipes and plan the leader as one node holding
one pipeline stage (:func:`pipeline_stage`: 1/N of the layers and weights), so memory, context and
TP are checked as ``up`` checks them on one host.

Two executors, both vLLM's:

- ``ray`` (the documented recipe, ``examples/online_serving/run_cluster.sh``): a Ray head and Ray
  workers, ``vllm serve … --pipeline-parallel-size N --distributed-executor-backend ray`` on the head.
  GPUs only: vLLM's CPU platform has no Ray device key and refuses it at start
  (``ValueError: current platform cpu does not support ray.``, vLLM 0.32.0,
  ``vllm/v1/executor/ray_utils.py`` ``initialize_ray_cluster``), so that is refused here, before launch.
- ``mp`` (vLLM's multiprocessing backend over nodes): the same ``vllm serve`` on every node with
  ``--nnodes N --node-rank I --master-addr HEAD --master-port P``, the others ``--headless``. No Ray;
  it runs on the CPU backend too.

Example::

    leader, per_node = stage_spec(spec, nodes=2, node_gpus=8)
    leader.extra_args  # [..., '--pipeline-parallel-size', '2', '--distributed-executor-backend', 'ray']
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from llmdock.engines.vllm import CPU_REFUSES_RAY, EXECUTORS, MULTI_NODE_FLAGS, pipeline_flags
from llmdock.errors import InvalidSpec

if TYPE_CHECKING:
    from llmdock.modelfacts import ModelFacts
    from llmdock.spec import DeploymentSpec

MAX_NODES = 64


def check_nodes(nodes: int) -> int:
    if not 1 <= nodes <= MAX_NODES:
        raise InvalidSpec(
            f"--nodes {nodes} is outside 1-{MAX_NODES}",
            "give --nodes 2 (or more) for a model bigger than a node",
        )
    return nodes


def stage_spec(
    spec: DeploymentSpec,
    nodes: int,
    node_gpus: int,
    *,
    executor: str = "ray",
    hint: str = "give --nodes 1, or serve it with --engine vllm on GPUs",
) -> tuple[DeploymentSpec, int]:
    """The leader's spec for TP k x PP ``nodes`` and k (``--tp``, ``--gpus N`` or a whole node of
    ``node_gpus``; 0 on the CPU backend, which only ``mp`` runs). Raises InvalidSpec for what cannot
    be spread: another engine, Ray on the CPU, a TP bigger than a node, a flag ``--nodes`` sets."""
    from llmdock.planning.gpus import parse_gpus

    if executor not in EXECUTORS:
        raise InvalidSpec(f"--executor {executor} is not one of {'|'.join(EXECUTORS)}", "give --executor ray")
    if spec.engine != "vllm":
        raise InvalidSpec(
            f"--nodes {nodes} runs vLLM's multi-node recipe ({executor}), not {spec.engine}", hint
        )
    request = parse_gpus(spec.gpus)
    if request.kind == "none" and executor == "ray":
        raise InvalidSpec(
            f"--nodes {nodes} spreads a model over GPU nodes through Ray, and --gpus none asks for none; "
            f"{CPU_REFUSES_RAY}",
            f"{hint}; on CPUs use vLLM's multiprocessing executor (--executor mp)",
        )
    for arg in spec.extra_args:
        if arg.split("=", 1)[0].replace("_", "-") in MULTI_NODE_FLAGS:
            raise InvalidSpec(
                f"{arg.split('=', 1)[0]} after `--` would override what --nodes {nodes} sets",
                f"leave it out: --nodes N sets pipeline parallel N over {executor}",
            )
    per_node = (
        0
        if request.kind == "none"
        else spec.tensor_parallel_size or request.count or len(request.indices) or node_gpus
    )
    if per_node > node_gpus:
        raise InvalidSpec(
            f"tensor parallel {per_node} needs {per_node} GPUs in one node, and a node has {node_gpus}",
            f"give --tp {node_gpus} or less (tensor parallel inside a node, pipeline parallel across nodes)",
        )
    flags = pipeline_flags(nodes, executor)
    if per_node == 0:
        return replace(spec, extra_args=[*spec.extra_args, *flags]), 0
    leader = replace(
        spec, gpus=str(per_node), tensor_parallel_size=per_node, extra_args=[*spec.extra_args, *flags]
    )
    return leader, per_node


def pipeline_stage(facts: ModelFacts, stages: int) -> ModelFacts:
    """What one node holds under pipeline parallel ``stages``: its share of the layers and weights
    (vLLM splits the layers evenly; the embeddings and a vision tower, on the first and last stage,
    are shared out too, which a fifth of memory headroom covers). Heads are untouched: tensor
    parallel inside the node must still divide them."""

    def share(n: int) -> int:
        return -(-n // stages)

    return replace(
        facts,
        num_layers=share(facts.num_layers),
        sliding_layers=share(facts.sliding_layers),
        dense_layers=share(facts.dense_layers),
        weight_bytes=share(facts.weight_bytes),
    )
