"""What a deployment becomes on a Kubernetes cluster, decided by the planner ``up`` uses. Pure.

A cluster is not this host: its GPUs are a node's (``--node-gpus 8x80GiB``), the device plugin picks
which, and the pod has its own network. So the spec is adapted first (:func:`for_cluster`: listen on
the pod's address, no cpuset, the docker runtime's image), then :func:`llmdock.planning.plan.make_plan`
decides GPUs, TP size, context and argv exactly as for ``up``, against one node's GPUs.

Several nodes per copy (``--nodes N``) follow vLLM's multi-node recipe: tensor parallel inside a node,
pipeline parallel across nodes (TP x PP), Ray as the executor. The leader's argv is planned for one
node holding one pipeline stage (:func:`pipeline_stage`: 1/N of the layers and weights) with
``--pipeline-parallel-size N --distributed-executor-backend ray``, so memory, context and TP are
checked as ``up`` checks them (:mod:`llmdock.planning.multinode`, shared with ``up --nodes``).

Example::

    spec, notes = for_cluster(DeploymentSpec.create("Qwen/Qwen3-8B"), "vllm/vllm-openai:v0.11.0")
    kp = plan_cluster(spec, Cluster(assume_gpus("8x80GiB"), spec.image or ""), facts=facts,
                      model_path="modelscope/Qwen/Qwen3-8B@master")
    kp.plan.argv  # ['vllm', 'serve', '/work/Qwen3-8B@master', '--port', '8000', '--host', '0.0.0.0', ...]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from llmdock.errors import DoesNotFit
from llmdock.planning.inventory import Gpu, Inventory
from llmdock.planning.multinode import check_nodes, pipeline_stage, stage_spec
from llmdock.planning.plan import Plan, make_plan

if TYPE_CHECKING:
    from llmdock.modelfacts import ModelFacts
    from llmdock.spec import DeploymentSpec

PORT = 8000  # vLLM's own default; a pod has its own network, so no port is ever taken
# Kubernetes object names (Service: RFC 1035 label): lower-case letters, digits and '-', a letter first.
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class ClusterPlan:
    """One deployment on a cluster: what each pod runs (``plan``; the leader's on several nodes)."""

    plan: Plan
    name: str  # the Kubernetes name of every object (DNS label)
    nodes: int  # pods per copy: 1 is a Deployment, more a LeaderWorkerSet
    gpus_per_pod: int
    model_sub_path: str  # where the weights lie inside the models volume
    weight_bytes: int | None  # None: unknown here (the volume size and start-up budget are defaults)
    spec_hash: str  # of the spec as the pod runs it (after for_cluster), an annotation
    notes: tuple[str, ...] = ()

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1


def k8s_name(name: str) -> str:
    """``Qwen2.5_7B`` -> ``qwen2-5-7b``: a deployment name as a Kubernetes object name (DNS label,
    at most 52 characters so that LeaderWorkerSet pod names, NAME-GROUP-INDEX, stay under 63)."""
    base = _NOT_DNS.sub("-", name.lower()).strip("-")[:52].strip("-")
    if not base:
        return "llmdock"
    return base if base[0].isalpha() else f"m-{base}"[:52].strip("-")


def for_cluster(spec: DeploymentSpec, default_image: str) -> tuple[DeploymentSpec, tuple[str, ...]]:
    """``spec`` as a pod runs it, and what changed: the engine listens on the pod's address (the
    Service reaches it there), a local-runtime spec takes the docker runtime's image, and a cpuset
    names this host's CPUs, which mean nothing on a node."""
    notes: list[str] = []
    if spec.runtime == "local":
        notes.append(
            f"runs in the image {spec.image or default_image} (a local engine environment does not travel)"
        )
    if spec.cpus:
        notes.append(f"--cpus {spec.cpus} is left out (it names CPUs of this host; requests size a pod)")
    if spec.network == "bridge":
        notes.append("--network bridge is left out (a pod has its own network)")
    adapted = replace(
        spec,
        runtime="docker",
        engine_env=None,
        image=spec.image or default_image,
        expose=True,
        network="host",
        cpus=None,
        share_gpus=False,
    )
    return adapted, tuple(notes)


@dataclass(frozen=True)
class Cluster:
    """Where the pods run: one node's GPUs (the device plugin picks which), how many nodes a copy
    spans, a node's RAM (0: unknown) for an engine on the CPU, the image and its engine version."""

    node_gpus: tuple[Gpu, ...]
    image: str
    engine_version: str | None = None
    nodes: int = 1
    node_memory_bytes: int = 0

    def plan(
        self, spec: DeploymentSpec, gpus: tuple[Gpu, ...], facts: ModelFacts | None, model_path: str
    ) -> Plan:
        inv = Inventory(
            gpus=gpus,
            gpu_runtime=True,
            memory_total_bytes=self.node_memory_bytes,
            memory_available_bytes=self.node_memory_bytes,
        )
        return make_plan(
            spec,
            inv,
            model_dir=model_path,
            image=self.image,
            port_range=(PORT, PORT),
            engine_version=self.engine_version,
            facts=facts,
        )


def plan_cluster(
    spec: DeploymentSpec, cluster: Cluster, *, facts: ModelFacts | None, model_path: str
) -> ClusterPlan:
    """Plan ``spec`` (already through :func:`for_cluster`) for pods on ``cluster``; ``model_path`` is
    the weights' path inside the models volume. Raises what ``up`` would, before anything is written."""
    check_nodes(cluster.nodes)
    notes: tuple[str, ...] = ()
    if cluster.nodes > 1:
        plan, per_node = _plan_multi_node(spec, cluster, facts, model_path)
        notes = (
            f"{cluster.nodes} nodes x {per_node} GPUs: tensor parallel {per_node}, "
            f"pipeline parallel {cluster.nodes} over Ray",
        )
    else:
        try:
            plan = cluster.plan(spec, () if spec.gpus == "none" else cluster.node_gpus, facts, model_path)
        except DoesNotFit as e:
            more = "spread it over nodes: --nodes 2 (a LeaderWorkerSet)"
            raise DoesNotFit(e.message, f"{e.hint}; or {more}" if e.hint else more, e.alternatives) from None
        per_node = len(plan.gpus)
    return ClusterPlan(
        plan=plan,
        name=k8s_name(spec.name),
        nodes=cluster.nodes,
        gpus_per_pod=per_node,
        model_sub_path=model_path,
        weight_bytes=facts.weight_bytes if facts else None,
        spec_hash=spec.hash(),
        notes=notes,
    )


def _plan_multi_node(
    spec: DeploymentSpec, cluster: Cluster, facts: ModelFacts | None, model_path: str
) -> tuple[Plan, int]:
    """The leader's plan for TP k x PP N (k: --tp, --gpus N or a whole node) and k."""
    nodes, node_gpus = cluster.nodes, cluster.node_gpus
    leader, per_node = stage_spec(spec, nodes, len(node_gpus))
    stage = pipeline_stage(facts, nodes) if facts else None
    try:
        return cluster.plan(leader, node_gpus[:per_node], stage, model_path), per_node
    except DoesNotFit as e:
        raise DoesNotFit(
            f"one of {nodes} pipeline stages: {e.message}", f"{e.hint}; or more --nodes", e.alternatives
        ) from None
