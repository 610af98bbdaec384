"""Pure choice of tensor-parallel size, GPUs, context length and memory utilization for one deployment.

``fit(facts, gpus, ...)`` answers, before anything starts, what ``vllm serve`` would find at start-up:

- **TP size**: a divisor of the attention heads that KV heads (and vision heads) allow; by default the
  fewest GPUs that hold the requested context (the model's limit when none is asked), or exactly the
  GPUs in ``requested_gpus``.
- **Utilization**: vLLM refuses to start when a GPU's free memory is below ``utilization × total``
  ("Free memory on device ... is less than desired GPU memory utilization"). An explicit utilization
  that a GPU cannot give is refused; the default 0.9 is lowered to what the busiest chosen GPU allows.
- **Context**: the requested ``max_model_len`` must leave KV room for one full-length sequence; without
  one, the largest length up to the model's limit that fits.
- **Placement**: ``binpack`` (default) takes the GPUs with the least free memory that still fit, so
  whole GPUs stay free for large models; ``spread`` takes the emptiest. Other deployments are seen
  through the inventory: the GPUs they hold and the free memory NVML reports.

When nothing fits it raises :class:`~llmdock.errors.DoesNotFit` with the nearest requests that do:
a smaller ``--max-model-len``, more GPUs, an fp8 KV cache, a lower utilization.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from llmdock.errors import DoesNotFit, InvalidSpec
from llmdock.modelfacts import ModelFacts
from llmdock.planning.inventory import Gpu
from llmdock.planning.memory import (
    BLOCK_TOKENS,
    GiB,
    MemoryEstimate,
    engine_profile,
    estimate,
    max_tokens,
    sequence_bytes,
)

DEFAULT_UTILIZATION = 0.9
CUDA_CONTEXT_BYTES = GiB // 2  # the new engine's own CUDA context, taken before vLLM checks free memory
MIN_CONTEXT = 2048  # below this an automatically chosen context is useless: refuse instead
POLICIES = ("binpack", "spread")


@dataclass(frozen=True)
class GpuBreakdown:
    """Where one GPU's memory goes, in bytes. ``budget`` = utilization × total; ``kv_cache`` is its rest."""

    index: int
    name: str
    total: int
    free: int
    budget: int
    weights: int
    activation: int
    vision: int
    runtime: int
    cuda_graph: int
    kv_cache: int


@dataclass(frozen=True)
class Fit:
    """A deployment that fits: engine flags (``tp``, ``max_model_len``, ``gpu_memory_utilization``,
    ``kv_cache_dtype``), the GPU indices, KV capacity (``kv_tokens``; ``concurrent_seqs`` full-length
    sequences at once, as vLLM's "Maximum concurrency" line), a per-GPU breakdown, and notes."""

    tp: int
    gpus: tuple[int, ...]
    max_model_len: int
    gpu_memory_utilization: float
    kv_cache_dtype: str
    kv_tokens: int
    concurrent_seqs: float
    per_gpu: tuple[GpuBreakdown, ...]
    alternatives: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensor_parallel_size": self.tp,
            "gpus": list(self.gpus),
            "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "kv_cache_dtype": self.kv_cache_dtype,
            "kv_tokens": self.kv_tokens,
            "concurrent_seqs": self.concurrent_seqs,
            "per_gpu": [vars(g) for g in self.per_gpu],
            "alternatives": list(self.alternatives),
            "notes": list(self.notes),
        }


def valid_tp_sizes(facts: ModelFacts, limit: int) -> tuple[int, ...]:
    """TP sizes up to ``limit`` vLLM accepts: dividing the attention heads (and vision heads); KV heads
    either divisible by TP or, when TP is larger, TP divisible by them (vLLM then replicates heads)."""
    sizes = []
    for tp in range(1, limit + 1):
        kv = facts.num_kv_heads
        if facts.num_attention_heads % tp or (kv % tp and tp % kv):
            continue
        if facts.vision_heads and facts.vision_heads % tp:
            continue
        sizes.append(tp)
    return tuple(sizes)


def check_request(facts: ModelFacts, tp: int | None, max_model_len: int | None) -> None:
    """Refuse what the model itself rules out, whatever the GPUs: a TP size that does not divide its
    heads, a context beyond its limit (also where no GPU is visible to fit against)."""
    _validate(facts, tp, max_model_len, None, "binpack")
    if tp is not None and tp not in valid_tp_sizes(facts, tp):
        raise InvalidSpec(
            f"tensor parallel size {tp} does not divide the model's {facts.num_attention_heads} "
            f"attention heads / {facts.num_kv_heads} KV heads"
            + (f" / {facts.vision_heads} vision heads" if facts.vision else ""),
            f"use one of {', '.join(map(str, valid_tp_sizes(facts, 64)))} "
            "(as a --gpus count or --tensor-parallel-size)",
        )


def max_utilization(gpu: Gpu) -> float:
    """The highest utilization vLLM accepts on ``gpu`` now: its free memory, less the engine's own CUDA
    context, over its total, rounded down to a hundredth."""
    if gpu.total_bytes <= 0:
        return 0.0
    return max(0.0, int(100 * (gpu.free_bytes - CUDA_CONTEXT_BYTES) / gpu.total_bytes) / 100)


@dataclass(frozen=True)
class _Try:
    """One evaluated candidate: the GPUs, utilization, estimate and the longest sequence that fits."""

    gpus: tuple[Gpu, ...]
    utilization: float
    est: MemoryEstimate
    kv_budget: int
    longest: int


def _evaluate(
    facts: ModelFacts, gpus: Sequence[Gpu], tp: int, util: float, kv: str, dtype: str | None
) -> _Try:
    est = estimate(
        facts, tp, dtype=dtype, kv_cache_dtype=kv, profile=engine_profile(min(g.total_bytes for g in gpus))
    )
    budget = min(int(util * g.total_bytes) for g in gpus) - est.fixed
    longest = min(max_tokens(facts, est, budget), facts.max_model_len) if budget > 0 else 0
    return _Try(tuple(gpus), util, est, budget, longest)


def _choose(
    facts: ModelFacts,
    pool: Sequence[Gpu],
    tp: int,
    need: int,
    util: float | None,
    kv: str,
    dtype: str | None,
    policy: str,
) -> _Try | None:
    """Pick ``tp`` GPUs from ``pool`` by ``policy`` that each hold ``need`` tokens; None when too few do."""
    fits = []
    for g in pool:
        u = util if util is not None else min(DEFAULT_UTILIZATION, max_utilization(g))
        if u <= 0 or (util is not None and max_utilization(g) < util):
            continue
        if _evaluate(facts, [g], tp, u, kv, dtype).longest >= need:
            fits.append((g, u))
    if len(fits) < tp:
        return None
    sign = 1 if policy == "binpack" else -1
    chosen = sorted(fits, key=lambda gu: (sign * gu[0].free_bytes, gu[0].index))[:tp]
    result = _evaluate(facts, [g for g, _ in chosen], tp, min(u for _, u in chosen), kv, dtype)
    return result if result.longest >= need else None


def _fixed(
    facts: ModelFacts, pool: Sequence[Gpu], tp: int, util: float | None, kv: str, dtype: str | None
) -> _Try:
    """Evaluate exactly ``pool`` (requested GPUs), refusing a utilization a GPU cannot give."""
    caps = {g.index: max_utilization(g) for g in pool}
    if util is not None:
        short = [g for g in pool if caps[g.index] < util]
        if short:
            g = short[0]
            raise DoesNotFit(
                f"GPU {g.index} has {g.free_bytes / GiB:.1f} GiB free of {g.total_bytes / GiB:.1f} GiB; "
                f"--gpu-memory-utilization {util} needs {util * g.total_bytes / GiB:.1f} GiB free at start",
                f"lower it to --gpu-memory-utilization {min(caps.values())}, or pick other GPUs with --gpus",
                (f"--gpu-memory-utilization {min(caps.values())}",),
            )
    used = util if util is not None else min(DEFAULT_UTILIZATION, *caps.values())
    return _evaluate(facts, pool, tp, used, kv, dtype)


def _to_fit(
    facts: ModelFacts, t: _Try, length: int, kv: str, notes: list[str], alts: Sequence[str], explicit: bool
) -> Fit:
    seq = sequence_bytes(facts, t.est, length)
    concurrency = t.kv_budget / seq
    if facts.sliding_layers:
        tokens = int(concurrency * length)
    else:
        tokens = t.kv_budget // (t.est.kv_bytes_per_token * BLOCK_TOKENS) * BLOCK_TOKENS
    e = t.est
    per_gpu = tuple(
        GpuBreakdown(
            index=g.index,
            name=g.name,
            total=g.total_bytes,
            free=g.free_bytes,
            budget=int(t.utilization * g.total_bytes),
            weights=e.weights,
            activation=e.activation,
            vision=e.vision,
            runtime=e.runtime,
            cuda_graph=e.cuda_graph,
            kv_cache=int(t.utilization * g.total_bytes) - e.fixed,
        )
        for g in t.gpus
    )
    if t.utilization < DEFAULT_UTILIZATION and not explicit:
        notes.append(f"gpu_memory_utilization lowered to {t.utilization}: other processes use part of a GPU")
    return Fit(
        tp=e.tp,
        gpus=tuple(g.index for g in t.gpus),
        max_model_len=length,
        gpu_memory_utilization=t.utilization,
        kv_cache_dtype=kv,
        kv_tokens=tokens,
        concurrent_seqs=int(concurrency * 100) / 100,
        per_gpu=per_gpu,
        alternatives=tuple(alts),
        notes=tuple(notes),
    )


def _round_len(tokens: int, limit: int) -> int:
    return tokens if tokens >= limit else tokens // BLOCK_TOKENS * BLOCK_TOKENS


def fit(
    facts: ModelFacts,
    gpus: Sequence[Gpu],
    *,
    tp: int | None = None,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    kv_cache_dtype: str | None = None,
    dtype: str | None = None,
    requested_gpus: tuple[int, ...] | None = None,
    placement: str = "binpack",
) -> Fit:
    """Choose TP, GPUs, context and utilization for ``facts`` on ``gpus`` (see the module docstring).

    >>> f = fit(qwen25_vl_72b, assume_gpus("8x80GiB"), max_model_len=73480)
    >>> f.tp, f.gpus, f.concurrent_seqs        # (8, (0, 1, ..., 7), 17.6)

    Raises ``InvalidSpec`` for values vLLM would reject (a TP size that does not divide the heads, a
    context beyond the model's limit) and ``DoesNotFit`` with alternatives when memory is short.
    """
    kv = kv_cache_dtype or "auto"
    limit = facts.max_model_len
    _validate(facts, tp, max_model_len, gpu_memory_utilization, placement)
    if not gpus:
        raise DoesNotFit(
            "no GPU to place the model on (the inventory has none)",
            "plan for GPUs you do not have here with --assume-gpus 8x80GiB; on CPU use --engine transformers",
        )
    by_index = {g.index: g for g in gpus}
    if requested_gpus:
        missing = [i for i in requested_gpus if i not in by_index]
        if missing:
            raise InvalidSpec(
                f"GPU {missing[0]} is not in the inventory", "pick indices from `nvidia-smi -L`"
            )
        if tp is not None and tp != len(requested_gpus):
            raise InvalidSpec(
                f"--tensor-parallel-size {tp} with {len(requested_gpus)} GPUs: llmdock runs one TP group",
                f"pass {len(requested_gpus)} GPUs with --gpus, or drop --tensor-parallel-size",
            )
    pool = [by_index[i] for i in requested_gpus] if requested_gpus else sorted(gpus, key=lambda g: g.index)
    sizes = valid_tp_sizes(facts, len(pool))
    wanted = tp or (len(pool) if requested_gpus else None)
    check_request(facts, wanted, max_model_len)
    target = max_model_len or limit
    util = gpu_memory_utilization
    if not requested_gpus and util is not None and all(max_utilization(g) < util for g in pool):
        _fixed(facts, pool, 1, util, kv, dtype)  # refuses: no GPU can give that much
    candidates = [wanted] if wanted else list(sizes)
    tries: list[_Try] = []
    for t in candidates:
        if requested_gpus:
            got: _Try | None = _fixed(facts, pool, t, gpu_memory_utilization, kv, dtype)
        else:
            args = (gpu_memory_utilization, kv, dtype, placement)
            got = _choose(facts, pool, t, target, *args) or _choose(
                facts, pool, t, min(target, MIN_CONTEXT), *args
            )
        if got is None:
            continue
        tries.append(got)
        if got.longest >= target:
            return _to_fit(facts, got, target, kv, [], (), gpu_memory_utilization is not None)
    best = max(tries, key=lambda t: (t.longest, -t.est.tp), default=None)
    if max_model_len is None and best is not None and best.longest >= min(MIN_CONTEXT, limit):
        length = _round_len(best.longest, limit)
        note = f"max_model_len {length} instead of the model's {limit}: the KV cache has room for no more"
        alts = _alternatives(
            facts, pool, best.est.tp, limit, gpu_memory_utilization, kv, dtype, placement, False
        )
        return _to_fit(facts, best, length, kv, [note], alts, gpu_memory_utilization is not None)
    current = best.est.tp if best else (wanted or (sizes[-1] if sizes else 1))
    alts = _alternatives(facts, pool, current, target, gpu_memory_utilization, kv, dtype, placement, True)
    need = f"{target} tokens of context" if max_model_len else f"even {min(MIN_CONTEXT, limit)} tokens"
    length = target if max_model_len else min(MIN_CONTEXT, limit)
    needed, busy = _need_text(facts, pool, current, length, kv, dtype, gpu_memory_utilization)
    if busy is not None:  # other processes hold the memory: freeing it is the first fix
        held = busy.total_bytes - busy.free_bytes
        pids = f" (PIDs {', '.join(map(str, busy.processes))})" if busy.processes else ""
        alts = (f"free GPU {busy.index}: other processes{pids} hold {held / GiB:.1f} GiB", *alts)
    raise DoesNotFit(
        f"{facts.architecture or facts.model_type} does not fit: {need} on "
        f"{current} × {pool[0].total_bytes / GiB:.0f} GiB GPU(s) needs {needed}",
        f"try {alts[0]}" if alts else "use GPUs with more memory or a quantized checkpoint (AWQ, GPTQ, FP8)",
        alts,
    )


def _need_text(
    facts: ModelFacts,
    pool: Sequence[Gpu],
    tp: int,
    length: int,
    kv: str,
    dtype: str | None,
    util: float | None,
) -> tuple[str, Gpu | None]:
    """What one GPU needs against what it can give now, and the GPU whose free memory is the limit
    (None when the fraction is: the memory is just too small)."""
    t = _evaluate(facts, pool[:tp], tp, DEFAULT_UTILIZATION, kv, dtype)
    need = t.est.fixed + sequence_bytes(facts, t.est, length)
    wanted = util if util is not None else DEFAULT_UTILIZATION
    g = min(pool[:tp], key=max_utilization)
    cap = min(wanted, max_utilization(g))
    text = f"{need / GiB:.1f} GiB per GPU (weights {t.est.weights / GiB:.1f} GiB) but "
    if cap < wanted:
        text += f"GPU {g.index} has {g.free_bytes / GiB:.1f} GiB free, {cap:g} × total ({cap * g.total_bytes / GiB:.1f} GiB)"
        return text, g
    return text + f"{cap:g} × total is {cap * g.total_bytes / GiB:.1f} GiB", None


def _alternatives(
    facts: ModelFacts,
    pool: Sequence[Gpu],
    tp: int,
    target: int,
    util: float | None,
    kv: str,
    dtype: str | None,
    policy: str,
    failed: bool,
) -> tuple[str, ...]:
    """Nearest requests that fit: shorter context at this TP, more GPUs, fp8 KV cache, lower utilization."""
    alts: list[str] = []
    here = _evaluate(
        facts, pool[:tp], tp, util or min(DEFAULT_UTILIZATION, *map(max_utilization, pool[:tp])), kv, dtype
    )
    if failed and here.longest >= BLOCK_TOKENS:
        alts.append(f"--max-model-len {_round_len(here.longest, facts.max_model_len)} (on {tp} GPU(s))")
    template = max(pool, key=lambda g: g.total_bytes)
    for more in valid_tp_sizes(facts, 64):
        if more <= tp:
            continue
        hypo = [replace(template, index=i) for i in range(more)]
        if _evaluate(facts, hypo, more, util or DEFAULT_UTILIZATION, kv, dtype).longest >= target:
            where = "" if more <= len(pool) else f"; this inventory has {len(pool)}"
            alts.append(f"--gpus {more} (tensor parallel {more}{where})")
            break
    if kv == "auto" and facts.dtype not in ("float8", "fp8"):
        t8 = _evaluate(facts, pool[:tp], tp, here.utilization, "fp8", dtype)
        if t8.longest >= target:
            alts.append(f"--kv-cache-dtype fp8 (on {tp} GPU(s), halves the KV cache)")
    return tuple(alts)


def _validate(
    facts: ModelFacts, tp: int | None, max_len: int | None, util: float | None, placement: str
) -> None:
    if placement not in POLICIES:
        raise InvalidSpec(f"placement {placement!r} is not known", "use binpack (default) or spread")
    if util is not None and not 0 < util <= 1:
        raise InvalidSpec(f"--gpu-memory-utilization {util} is outside (0, 1]", "use a fraction such as 0.9")
    if tp is not None and tp < 1:
        raise InvalidSpec(f"--tensor-parallel-size {tp} is below 1", "use a positive TP size")
    if max_len is not None and not 0 < max_len <= facts.max_model_len:
        raise InvalidSpec(
            f"--max-model-len {max_len} is outside what the model supports (1..{facts.max_model_len})",
            f"use at most --max-model-len {facts.max_model_len}",
        )
