"""The manual procedure's deployment (../shared/seed, step 3) as llmdock flags, shared by the tests."""

from __future__ import annotations

from typing import Any

from llmdock.spec import DeploymentSpec

MODEL = "/home/online/models/Qwen2.5-VL-72B-Instruct"
IMAGE = "qwenllm/qwenvl:2.5-cu121"
# nohup vllm serve /work/Qwen2.5-VL-72B-Instruct --port 8001 --dtype bfloat16 --limit-mm-per-prompt
#   image=5,video=5 --tensor-parallel-size 8 --gpu_memory_utilization 0.9 --max-model-len 73480
FLAGS: dict[str, Any] = dict(
    engine="vllm",
    port="8001",
    dtype="bfloat16",
    limit_mm_per_prompt="image=5,video=5",
    tensor_parallel_size=8,
    gpu_memory_utilization=0.9,
    max_model_len=73480,
    gpus="all",
)


def procedure_spec(**over: Any) -> DeploymentSpec:
    """The procedure's spec (container name as in the wiki), with ``over`` replacing flags."""
    return DeploymentSpec.create(MODEL, **{"name": "qwen2.5-vl-72b", **FLAGS, **over})
