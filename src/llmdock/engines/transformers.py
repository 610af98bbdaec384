"""transformers: ``transformers serve PATH ...`` — a CPU-capable OpenAI-compatible server.

It stands in for vLLM where there is no GPU (demo, tests). It lists the model under its path and
has no tensor parallelism, context or memory flags, so those are refused rather than ignored.
"""

from __future__ import annotations

from typing import ClassVar

from llmdock.engines.base import Engine, Launch, bind_host, failures, phases


class Transformers(Engine):
    name = "transformers"
    package = "transformers"
    health_path = "/health"
    uses_gpus = False
    # `transformers serve` loads the forced model before it answers /health; releases before 5.24
    # list only models in the Hugging Face cache under /v1/models (seen on 5.17), never a local path.
    lists_local_models = False
    phases = phases(
        (r"Loading weights|loading configuration file", "loading weights"),
        (r"Waiting for application startup", "starting server"),
        (r"Application startup complete|Uvicorn running", "serving"),
    )
    failures = failures(
        (
            r"Requires FastAPI and Uvicorn|No module named 'fastapi'|No module named 'uvicorn'",
            "the image lacks the serving extras of transformers",
            "use an image with `pip install transformers[serving]` (the default one `llmdock demo` builds)",
        ),
    )

    owned: ClassVar[dict[str, str]] = {
        "--host": "--expose",
        "--port": "--port",
        "--device": "--gpus",
        "--dtype": "--dtype",
    }

    def argv(self, launch: Launch) -> list[str]:
        s = launch.spec
        unsupported = {
            "--served-model-name": s.served_model_name,
            "--tensor-parallel-size": launch.tensor_parallel_size not in (None, 1) or None,
            "--gpu-memory-utilization": launch.gpu_memory_utilization,
            "--max-model-len": launch.max_model_len,
            "--kv-cache-dtype": launch.kv_cache_dtype,
            "--limit-mm-per-prompt": s.limit_mm_per_prompt,
        }
        for flag, value in unsupported.items():
            if value:
                raise self.reject(flag, "transformers", f"drop {flag}, or use --engine vllm on a GPU server")
        device = "cpu" if s.gpus == "none" else "auto"
        argv = [
            "transformers",
            "serve",
            launch.model_path,
            "--host",
            bind_host(s),
            "--port",
            str(launch.port),
        ]
        argv += ["--device", device, "--log-level", "info"]
        if s.dtype:
            argv += ["--dtype", s.dtype]
        return argv + self.check_extra(s.extra_args)

    def served_name(self, launch: Launch) -> str:
        return launch.model_path
