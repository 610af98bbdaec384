"""SGLang: ``python3 -m sglang.launch_server --model-path PATH ...``.

What differs between releases lives in :mod:`llmdock.engines.versions` (checked against each release's
``ServerArgs.add_cli_args`` by ``scripts/check-engine-argv``). Two things differ from vLLM in kind:

- ``--kv-cache-dtype``: SGLang has no plain ``fp8`` (0.5.4 takes fp8_e5m2/fp8_e4m3); vLLM's ``fp8``
  means fp8_e4m3, so that is what llmdock passes.
- ``--mem-fraction-static`` is not vLLM's ``--gpu-memory-utilization``; see :func:`memory_fraction`.
"""

from __future__ import annotations

import json
from typing import ClassVar

from llmdock.engines import versions
from llmdock.engines.base import Engine, Launch, bind_host, failures, phases
from llmdock.errors import InvalidSpec

# SGLang's own fallback fraction when it cannot read the GPU's memory (0.88): the headroom it keeps for
# activations and CUDA graphs is then 1 - 0.88 of the GPU.
FALLBACK_RESERVE = 0.12
MIN_FRACTION = 0.05


class Sglang(Engine):
    name = "sglang"
    package = "sglang"
    health_path = "/health"
    # SGLang's /health runs a one-token generation: over a second on a busy server, and longer while
    # it warms up, so a short probe budget would call a healthy server dead.
    health_timeout_s = 20.0
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
        (
            r"error: ambiguous option",
            "an abbreviated flag after `--` matches several SGLang flags",
            "spell the flag out in full (`python3 -m sglang.launch_server --help` in the image lists them)",
        ),
    )

    # The newest release's owned flags; argv() checks against the launch's own version.
    owned: ClassVar[dict[str, str]] = versions.owned_options("sglang", None)

    def owned_options(self, version: str | None) -> dict[str, str]:
        """Option strings llmdock sets at this SGLang version (aliases included) -> the `up` option."""
        return versions.owned_options(self.name, version)

    def check_extra_for(self, extra: list[str], version: str | None) -> list[str]:
        """Return ``extra`` unchanged, or refuse a flag llmdock sets (an alias or abbreviation
        included: ``--tp 2 -- --tensor-parallel-size 4`` would run TP 4 on the 2 GPUs planned)."""
        for arg in extra:
            # SGLang's parser is plain argparse: --tp_size is not --tp-size there.
            problem = versions.extra_problem(self.name, version, arg, underscores=False)
            if problem:
                raise InvalidSpec(*problem)
        return extra

    def check_extra(self, extra: list[str]) -> list[str]:
        return self.check_extra_for(extra, None)

    def argv(self, launch: Launch) -> list[str]:
        s = launch.spec
        if s.limit_mm_per_prompt:
            # SGLang has no per-prompt modality limit flag of its own; refuse rather than silently ignore.
            raise self.reject(
                "--limit-mm-per-prompt " + json.dumps(s.limit_mm_per_prompt),
                "sglang",
                "drop it or use --engine vllm",
            )
        argv = ["python3", "-m", "sglang.launch_server", "--model-path", launch.model_path]
        argv += ["--host", bind_host(s), "--port", str(launch.port)]
        argv += ["--served-model-name", self.served_name(launch)]  # SGLang takes one name
        if s.dtype:
            argv += ["--dtype", s.dtype]
        if launch.tensor_parallel_size:
            argv += ["--tp-size", str(launch.tensor_parallel_size)]
        if launch.gpu_memory_utilization is not None:
            gpu_mib = launch.gpu_memory_mib
            fraction = memory_fraction(
                launch.gpu_memory_utilization, gpu_mib, launch.tensor_parallel_size or 1
            )
            argv += ["--mem-fraction-static", f"{fraction:g}"]
        if launch.max_model_len is not None:
            argv += ["--context-length", str(launch.max_model_len)]
        if launch.kv_cache_dtype:
            argv += ["--kv-cache-dtype", kv_cache_dtype(launch.kv_cache_dtype)]
        return argv + self.check_extra_for(s.extra_args, launch.version)


def kv_cache_dtype(dtype: str) -> str:
    """llmdock's (vLLM's) KV cache dtype in SGLang's terms: ``fp8`` -> ``fp8_e4m3``; others unchanged."""
    return versions.SGLANG_KV_CACHE_DTYPES.get(dtype, dtype)


def memory_fraction(planned: float, gpu_mib: int | None, tp: int = 1) -> float:
    """The plan's memory fraction (vLLM's meaning: everything the engine may use of each GPU) as
    SGLang's ``--mem-fraction-static`` (weights and KV cache only).

    SGLang defines ``mem_fraction_static = (GPU memory - activations - CUDA graph buffers) / GPU memory``
    and, when not given one, estimates that headroom itself (``ServerArgs._handle_gpu_memory_settings``
    in sglang/srt/server_args.py, 0.5.4; arg_groups/memory_hook.py in 0.5.23)::

        reserved_mib = 512 + max(chunked_prefill_size, 2048) * 1.5 + cuda_graph_max_bs * 2
                       + tp_size * pp_size / 8 * 1024          # at least 10 GiB on GPUs over 60 GiB

    with chunked_prefill_size and cuda_graph_max_bs chosen by GPU size (:func:`_sglang_defaults`).
    llmdock keeps the same headroom inside the planned budget: ``planned - reserved_mib / gpu_mib``.
    Where the GPU's memory is unknown it keeps SGLang's own fallback headroom, 1 - 0.88.

    >>> memory_fraction(0.9, 81559, 1)  # H100 80GB: 0.9 - 13440/81559
    0.735
    """
    if gpu_mib:
        chunked, graph_bs = _sglang_defaults(gpu_mib, tp)
        reserved = 512 + max(chunked, 2048) * 1.5 + graph_bs * 2 + tp / 8 * 1024
        if gpu_mib > 60 * 1024:
            reserved = max(reserved, 10 * 1024)
        fraction = planned - reserved / gpu_mib
    else:
        fraction = planned - FALLBACK_RESERVE
    if fraction < MIN_FRACTION:
        raise InvalidSpec(
            f"--gpu-memory-utilization {planned:g} leaves SGLang no room for weights and KV cache "
            "after its activation and CUDA graph headroom",
            "raise --gpu-memory-utilization or use --engine vllm",
        )
    return round(fraction, 3)


def _sglang_defaults(gpu_mib: int, tp: int) -> tuple[int, int]:
    """(chunked_prefill_size, cuda_graph_max_bs) SGLang 0.5.4 picks for a CUDA GPU of this size."""
    if gpu_mib < 20 * 1024:
        return 2048, 8
    if gpu_mib < 35 * 1024:
        return 2048, 16 if tp < 4 else 80
    if gpu_mib < 60 * 1024:
        return 4096, 32 if tp < 4 else 160
    if gpu_mib < 160 * 1024:
        return 8192, 256 if tp < 4 else 512
    return 16384, 512
