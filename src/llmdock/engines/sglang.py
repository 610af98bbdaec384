"""SGLang: ``python3 -m sglang.launch_server --model-path PATH ...``."""

from __future__ import annotations

import json
from typing import ClassVar

from llmdock.engines.base import Engine, Launch, bind_host, failures, phases


class Sglang(Engine):
    name = "sglang"
    package = "sglang"
    health_path = "/health"
    phases = phases(
        (r"server_args=|ServerArgs\(", "starting"),
        (r"Load weight begin|Loading safetensors", "loading weights"),
        (r"Load weight end", "weights loaded"),
        (r"Memory pool end|KV Cache is allocated", "allocating KV cache"),
        (r"Capture cuda graph begin|Capture cuda graph", "capturing CUDA graphs"),
        (r"Uvicorn running|The server is fired up", "serving"),
    )
    failures = failures(
        (
            r"Not enough memory|max_total_num_tokens",
            "the KV cache pool is too small at these settings",
            "lower --max-model-len (--context-length) or raise --gpu-memory-utilization (--mem-fraction-static)",
        ),
    )

    owned: ClassVar[dict[str, str]] = {
        "--model-path": "MODEL",
        "--host": "--expose",
        "--port": "--port",
        "--served-model-name": "--served-model-name",
        "--dtype": "--dtype",
        "--tp-size": "--tensor-parallel-size",
        "--mem-fraction-static": "--gpu-memory-utilization",
        "--context-length": "--max-model-len",
        "--kv-cache-dtype": "--kv-cache-dtype",
    }

    def argv(self, launch: Launch) -> list[str]:
        s = launch.spec
        argv = ["python3", "-m", "sglang.launch_server", "--model-path", launch.model_path]
        argv += ["--host", bind_host(s), "--port", str(launch.port)]
        if s.served_model_name:
            argv += ["--served-model-name", s.served_model_name]
        if s.dtype:
            argv += ["--dtype", s.dtype]
        if launch.tensor_parallel_size:
            argv += ["--tp-size", str(launch.tensor_parallel_size)]
        if launch.gpu_memory_utilization is not None:
            argv += ["--mem-fraction-static", f"{launch.gpu_memory_utilization:g}"]
        if launch.max_model_len is not None:
            argv += ["--context-length", str(launch.max_model_len)]
        if launch.kv_cache_dtype:
            argv += ["--kv-cache-dtype", launch.kv_cache_dtype]
        if s.limit_mm_per_prompt:
            # SGLang has no per-prompt modality limit flag of its own; it reads the same JSON via
            # --mm-process-config only in newer releases, so refuse rather than silently ignore.
            raise self.reject(
                "--limit-mm-per-prompt " + json.dumps(s.limit_mm_per_prompt),
                "sglang",
                "drop it or use --engine vllm",
            )
        return argv + self.check_extra(s.extra_args)
