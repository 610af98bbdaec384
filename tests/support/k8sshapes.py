"""The shapes `llmdock export k8s` renders, planned from real model configs (tests/fixtures/models):
one table for the renderer's tests, the schema checks and the YAML goldens (tests/fixtures/k8s)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmdock.gpuinfo import parse_assume_gpus
from llmdock.k8s.plan import Cluster, ClusterPlan, for_cluster, plan_cluster
from llmdock.k8s.render import manifests
from llmdock.modelfacts import ModelFacts
from llmdock.spec import DeploymentSpec
from tests.support.modelconfigs import facts, qwen25_vl_72b

GOLDENS = Path(__file__).resolve().parents[1] / "fixtures" / "k8s"
GPU_IMAGE = "vllm/vllm-openai:v0.11.0"
CPU_IMAGE = "llmdock/engine-vllm:0.32.0-cpu"


@dataclass(frozen=True)
class Shape:
    spec: dict[str, Any]  # DeploymentSpec.create keywords
    facts: str  # a fixture model, or "qwen25-vl-72b" (assembled)
    node_gpus: str = "8x80GiB"
    nodes: int = 1
    image: str = GPU_IMAGE
    version: str = "0.11.0"
    extra: dict[str, Any] = field(default_factory=dict)

    def model_facts(self) -> ModelFacts:
        return qwen25_vl_72b() if self.facts == "qwen25-vl-72b" else facts(self.facts)

    def plan(self) -> ClusterPlan:
        spec = DeploymentSpec.create(**self.spec)
        adapted, _ = for_cluster(spec, self.image)
        cluster = Cluster(
            node_gpus=parse_assume_gpus(self.node_gpus),
            image=adapted.image or self.image,
            engine_version=self.version,
            nodes=self.nodes,
        )
        sub = f"modelscope/{spec.model}@master"
        return plan_cluster(adapted, cluster, facts=self.model_facts(), model_path=sub)

    def docs(self) -> list[dict[str, Any]]:
        return manifests(self.plan())


SHAPES: dict[str, Shape] = {
    # One GPU: --gpus auto, the fit picks the fewest that hold 32k tokens; a token from a Secret.
    "single-gpu": Shape(
        {
            "model": "Qwen/Qwen2.5-7B-Instruct",
            "name": "qwen7b",
            "max_model_len": 32768,
            "env": ["HF_TOKEN=hf_secret"],
        },
        "Qwen--Qwen2.5-7B-Instruct",
    ),
    # The wiki's procedure (DESIGN.md): Qwen2.5-VL-72B on 8 GPUs, TP 8, 73480 tokens, images and videos.
    "tp8": Shape(
        {
            "model": "Qwen/Qwen2.5-VL-72B-Instruct",
            "name": "qwen-vl-72b",
            "gpus": "8",
            "tensor_parallel_size": 8,
            "dtype": "bfloat16",
            "limit_mm_per_prompt": "image=5,video=5",
            "gpu_memory_utilization": 0.9,
            "max_model_len": 73480,
        },
        "qwen25-vl-72b",
    ),
    # vLLM's CPU backend: host RAM sized by the plan, no GPU, llmdock's own CPU image.
    "cpu": Shape(
        {"model": "Qwen/Qwen2.5-0.5B-Instruct", "name": "qwen-cpu", "gpus": "none", "kv_cache_space": 4},
        "Qwen--Qwen2.5-0.5B-Instruct",
        image=CPU_IMAGE,
        version="0.32.0",
    ),
    # Bigger than a node of 8 x 16 GiB: two nodes, TP 8 x PP 2 over Ray, in a LeaderWorkerSet.
    "multi-node": Shape(
        {"model": "Qwen/Qwen2.5-72B-Instruct", "name": "qwen72b", "max_model_len": 32768},
        "Qwen--Qwen2.5-72B-Instruct",
        node_gpus="8x16GiB",
        nodes=2,
    ),
}
