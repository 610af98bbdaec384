"""``fit_cpu``: an engine on the CPU, planned in host RAM the way :mod:`fit` plans GPU memory. Pure.

vLLM's CPU backend keeps weights and the KV cache in host RAM. The KV cache is a fixed budget in whole
GiB (``VLLM_CPU_KVCACHE_SPACE``); the rest is the weights and the engine's processes (API server,
engine core, worker: torch and vLLM itself). The plan needs

    weights + KV budget + runtime  <=  RAM available now

and a KV budget that holds at least one sequence of ``--max-model-len`` tokens; otherwise it refuses
and says what to change. Without ``--kv-cache-space`` the budget is sized for
:data:`DEFAULT_SEQUENCES` full-length sequences (at least 1 GiB), shrunk to what RAM allows.

Example::

    fit = fit_cpu(facts, total_bytes=24 * GiB, available_bytes=20 * GiB)
    fit.kv_cache_gib, fit.kv_tokens      # 1, 524288 for the tiny test model
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmdock.errors import DoesNotFit, InvalidSpec
from llmdock.modelfacts import ModelFacts
from llmdock.planning.memory import GiB, kv_bytes_per_sequence, kv_cache_bytes

# RSS of vLLM's three processes on the CPU before weights and KV cache (measured with vllm-cpu 0.32 on
# the tiny model: benchmarks/vllm/RESULTS.md); torch.compile's warm-up is included.
RUNTIME_BYTES = 2 * GiB
DEFAULT_SEQUENCES = 4
BATCHED_TOKENS = 2048  # vLLM's CPU default max_num_batched_tokens; matters for sliding windows only


@dataclass(frozen=True)
class CpuFit:
    """A CPU deployment that fits: the context, the KV budget and where the host's RAM goes."""

    max_model_len: int
    kv_cache_gib: int
    kv_tokens: int  # tokens the budget holds at full attention
    concurrent_seqs: float  # full-length sequences at once
    weights: int
    runtime: int
    total: int  # host RAM
    available: int  # host RAM available when planned

    @property
    def need(self) -> int:
        return self.weights + self.kv_cache_gib * GiB + self.runtime

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": "cpu",
            "max_model_len": self.max_model_len,
            "kv_cache_space_gib": self.kv_cache_gib,
            "kv_tokens": self.kv_tokens,
            "concurrent_seqs": self.concurrent_seqs,
            "host_memory": {
                "total": self.total,
                "available": self.available,
                "weights": self.weights,
                "kv_cache": self.kv_cache_gib * GiB,
                "runtime": self.runtime,
                "need": self.need,
            },
        }


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def fit_cpu(
    facts: ModelFacts,
    *,
    total_bytes: int,
    available_bytes: int,
    max_model_len: int | None = None,
    kv_cache_gib: int | None = None,
    dtype: str | None = None,
    kv_cache_dtype: str | None = None,
) -> CpuFit:
    """Fit ``facts`` in host RAM; raise :class:`DoesNotFit` (with the change that fits) when it cannot.

    ``available_bytes`` 0 means unknown (no /proc/meminfo): only the one-sequence check is made.
    """
    limit = facts.max_model_len
    if max_model_len is not None and not 0 < max_model_len <= limit:
        raise InvalidSpec(
            f"--max-model-len {max_model_len} is outside what the model supports (1..{limit})",
            f"use at most --max-model-len {limit}",
        )
    length = max_model_len or limit
    model_dtype = dtype if dtype and dtype != "auto" else facts.dtype
    kv = kv_cache_bytes(kv_cache_dtype, model_dtype)
    one = kv_bytes_per_sequence(facts, 1, length, kv, BATCHED_TOKENS)
    per_token = max(1, kv_bytes_per_sequence(facts, 1, 1 << 16, kv, BATCHED_TOKENS) >> 16)
    weights = facts.weight_bytes
    fixed = weights + RUNTIME_BYTES
    room = (available_bytes - fixed) // GiB if available_bytes else None  # whole GiB left for KV
    if kv_cache_gib is None:
        wanted = max(1, -(-DEFAULT_SEQUENCES * one // GiB))
        kv_cache_gib = wanted if room is None else max(min(wanted, room), -(-one // GiB))
    if kv_cache_gib * GiB < one:
        need_gib = -(-one // GiB)
        longest = min(limit, (kv_cache_gib * GiB) // per_token)
        raise DoesNotFit(
            f"a KV cache of {kv_cache_gib} GiB holds {kv_cache_gib * GiB // per_token:,} tokens, less than "
            f"one sequence of --max-model-len {length:,} ({_gib(one)})",
            f"give --kv-cache-space {need_gib} or more, or lower --max-model-len to {longest:,}",
            (f"--kv-cache-space {need_gib}", f"--max-model-len {longest}"),
        )
    fitted = CpuFit(
        max_model_len=length,
        kv_cache_gib=kv_cache_gib,
        kv_tokens=kv_cache_gib * GiB // per_token,
        concurrent_seqs=round(kv_cache_gib * GiB / one, 2),
        weights=weights,
        runtime=RUNTIME_BYTES,
        total=total_bytes,
        available=available_bytes,
    )
    if available_bytes and fitted.need > available_bytes:
        smallest = max(1, -(-one // GiB))
        fix = (
            f"lower --kv-cache-space to {room}"
            if room is not None and room >= smallest
            else "free host memory (stop other deployments) or use a smaller or quantized model"
        )
        raise DoesNotFit(
            f"the model needs {_gib(fitted.need)} of host RAM on the CPU (weights {_gib(weights)}, "
            f"KV cache {kv_cache_gib} GiB, engine {_gib(RUNTIME_BYTES)}) but {_gib(available_bytes)} "
            f"of {_gib(total_bytes)} is available",
            fix,
        )
    return fitted
