"""Pure memory estimate of one vLLM deployment, per GPU, for a tensor-parallel size.

vLLM sizes its KV cache at start-up: ``budget = gpu_memory_utilization × total memory`` of each GPU, minus
what a profiling pass measured (weights, non-torch memory, activation peak, CUDA graphs since v0.21); the
rest becomes KV cache, and start-up fails when it cannot hold one ``max_model_len`` sequence. This module
predicts each of those terms from :class:`~llmdock.modelfacts.ModelFacts`, so the planner can decide
before anything starts. It logs nothing and reads nothing.

The formula, per GPU (``T`` = ``max_num_batched_tokens``, ``I`` = MLP width, ``H`` hidden, ``V`` vocab)::

    weights    = weight_bytes / tp + rotary cos/sin cache (max positions × rotary dim × dtype)
    activation = T × ((3·I/tp + 3·H) × act_bytes  +  V × act_bytes)      # MLP + residual; logits
    vision     = encoder-cache outputs + max(0, vision-tower peak − activation)
    runtime    = 1 GiB (cuBLAS/cuDNN workspaces, allocator slack) + 1 GiB if tp > 1 (NCCL, all-reduce)
    cuda_graph = 0.75 GiB (inside the budget since vLLM v0.21; outside it before)
    kv/token   = layers × kv_heads/tp × head_dim × 2 × kv_bytes     (full attention)
               = layers × (kv_lora_rank + qk_rope_head_dim) × kv_bytes  (MLA: one latent, not split by TP)

Calibration, from vLLM's own start-up logs (all GitHub):

- weights: Llama-3.1-8B "Model loading took 14.9889 GiB" (vllm-project/vllm#17122) = 16,060,522,496 B of
  safetensors (14.9575 GiB) + 131072 × 128 × 2 B rotary cache (0.0313 GiB): 14.9888 GiB.
- activation: Llama-3.1-8B on RTX 3090, V0, "peak_torch_memory" − weights = 2.07 GiB at 20000 tokens and
  2.99 GiB at 29000 (vllm-project/vllm#10517): 111 KB/token; 3·I + 3·H = 55,296 elements × 2 B = 110.6 KB.
- logits over the whole profiled batch (V1 ``profile_run`` until mid-2025): Qwen2.5-VL-7B on H100, v0.8.2,
  "Model loading took 15.6271 GB", "GPU KV cache size: 905,648 tokens" (QwenLM/Qwen3-VL#1057), and
  Llama-3.1-8B on L40S, "GPU KV cache size: 158,656 tokens" (vllm-project/vllm#17122): the non-KV,
  non-weight part is 7.3 and 5.6 GiB, which only the ``T × V`` logits term (4.6 and 3.9 GiB at T=16384)
  explains.
- runtime: "non_torch_memory" 0.2–0.43 GiB on A100/3090 with TP 1–4 (vllm#16570, #13061, #10517), 1.79 GiB
  on H100 TP 1 and 3.58 GiB at TP 2 (vllm-project/vllm#10511); 1 GiB + 1 GiB for TP > 1 sits between.
- cuda graphs: "Graph capturing finished in 18 secs, took 0.63 GiB" (Qwen3-VL#1057); "Estimated CUDA
  graph memory: 0.36 GiB" (gpustack/runner#251); 1.62 GiB for 86 graphs of a hybrid model (vllm#39559).
- vision: Qwen2.5-VL-72B at TP 4 on A100-40GB, "PyTorch activation peak memory takes 2.51GiB" with
  8192-token text (vllm-project/vllm#16570): the vision tower's share fits (3·Iv/tp + 10·Hv) × 2 B per patch.
- MLA: DeepSeek-V2-Lite "0.95 GiB KV cache is needed" for 32768 tokens (vllm-project/vllm#15871):
  27 × (512 + 64) × 2 B × 32768 = 0.949 GiB.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmdock.modelfacts import ModelFacts, dtype_bytes

GiB = 1 << 30
BLOCK_TOKENS = 16  # vLLM's default KV block size: capacity is counted in whole blocks


@dataclass(frozen=True)
class EngineProfile:
    """How the engine profiles memory: the constants of the formula in the module docstring.

    The default is ``vllm serve`` (V1) on a GPU of 70 GiB or more; :func:`engine_profile` picks the
    batch for smaller GPUs. The other flags let tests and benchmarks reproduce older versions' logs.
    """

    batched_tokens: int = 8192  # V1 max_num_batched_tokens for `vllm serve` on >= 70 GiB GPUs, else 2048
    logits_over_batch: bool = True  # V1 profile computes logits for the whole batch (V0: last tokens only)
    runtime_bytes: int = GiB
    tp_comm_bytes: int = GiB
    cuda_graph_bytes: int = 3 * GiB // 4
    cuda_graphs_in_budget: bool = True
    encoder_budget_tokens: int = 16384  # "Encoder cache will be initialized with a budget of 16384 tokens"


def engine_profile(total_bytes: int) -> EngineProfile:
    """vLLM V1 picks ``max_num_batched_tokens`` for ``vllm serve`` by GPU size (8192 at >= 70 GiB)."""
    return EngineProfile(batched_tokens=8192 if total_bytes >= 70 * GiB else 2048)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one GPU of a ``tp``-way deployment needs before the KV cache, and the KV cost per token."""

    tp: int
    weights: int
    activation: int
    vision: int
    runtime: int
    cuda_graph: int
    kv_bytes_per_token: int  # all layers at full length, per GPU
    kv_dtype: str  # "bfloat16", "float16" or "fp8"
    kv_element_bytes: int
    batched_tokens: int

    @property
    def fixed(self) -> int:
        """Everything inside the utilization budget except the KV cache."""
        return self.weights + self.activation + self.vision + self.runtime + self.cuda_graph


def kv_cache_bytes(kv_cache_dtype: str | None, dtype: str) -> int:
    """Bytes per KV element: ``auto``/None follows the model dtype; ``fp8*`` is one byte."""
    if not kv_cache_dtype or kv_cache_dtype == "auto":
        return dtype_bytes(dtype)
    return dtype_bytes(kv_cache_dtype)


def kv_heads_per_gpu(facts: ModelFacts, tp: int) -> int:
    """KV heads each GPU stores; vLLM replicates heads when ``tp`` exceeds their number."""
    return max(1, facts.num_kv_heads // tp)


def kv_bytes_per_token_layer(facts: ModelFacts, tp: int, kv_bytes: int) -> int:
    """KV bytes one layer keeps per token on one GPU."""
    if facts.attention == "mla":
        return (facts.kv_lora_rank + facts.qk_rope_head_dim) * kv_bytes
    return kv_heads_per_gpu(facts, tp) * facts.head_dim * 2 * kv_bytes


def kv_bytes_per_sequence(facts: ModelFacts, tp: int, length: int, kv_bytes: int, batched_tokens: int) -> int:
    """KV bytes one sequence of ``length`` tokens holds on one GPU, in whole blocks. Sliding-window
    layers hold at most ``window − 1 + batched_tokens`` tokens (vLLM ``SlidingWindowSpec``) plus a block."""
    per_layer = kv_bytes_per_token_layer(facts, tp, kv_bytes)
    full_layers = facts.num_layers - facts.sliding_layers
    blocks = -(-length // BLOCK_TOKENS)
    total = full_layers * per_layer * blocks * BLOCK_TOKENS
    if facts.sliding_layers:
        kept = min(length, facts.sliding_window - 1 + batched_tokens)
        swa_blocks = min(blocks, -(-kept // BLOCK_TOKENS) + 1)
        total += facts.sliding_layers * per_layer * swa_blocks * BLOCK_TOKENS
    return total


def weights_per_gpu(facts: ModelFacts, tp: int, dtype: str | None = None) -> int:
    """Exact weight bytes split by TP (embeddings, LM head, vision tower and MoE experts are all sharded
    by vLLM; norms are replicated but tiny), plus the replicated rotary cos/sin cache."""
    width = dtype_bytes(dtype or facts.dtype)
    rotary_dim = facts.qk_rope_head_dim if facts.attention == "mla" else facts.head_dim
    return -(-facts.weight_bytes // tp) + facts.max_model_len * rotary_dim * width


def activation_bytes(facts: ModelFacts, tp: int, act_bytes: int, profile: EngineProfile) -> int:
    """Peak of the profiling forward pass over ``batched_tokens`` tokens (see the module docstring)."""
    if facts.is_moe:
        width = facts.experts_per_token * facts.moe_intermediate_size
        width += facts.shared_experts * facts.moe_intermediate_size
        if facts.dense_layers:
            width = max(width, facts.intermediate_size)
    else:
        width = facts.intermediate_size
    per_token = (3 * width // tp + 3 * facts.hidden_size) * act_bytes
    if profile.logits_over_batch:
        per_token += facts.vocab_size * act_bytes
    return profile.batched_tokens * per_token


def vision_bytes(facts: ModelFacts, tp: int, act_bytes: int, activation: int, profile: EngineProfile) -> int:
    """Vision tower: encoder-cache outputs, plus its profiling peak where it exceeds the text pass."""
    v = facts.vision
    if v is None:
        return 0
    tokens = profile.encoder_budget_tokens
    patches = tokens * v.spatial_merge_size**2
    peak = patches * (3 * v.intermediate_size // tp + 10 * v.hidden_size) * act_bytes
    outputs = tokens * facts.hidden_size * act_bytes
    return outputs + max(0, peak - activation)


def estimate(
    facts: ModelFacts,
    tp: int,
    *,
    dtype: str | None = None,
    kv_cache_dtype: str | None = None,
    profile: EngineProfile | None = None,
) -> MemoryEstimate:
    """Per-GPU memory of ``facts`` served with ``tp``-way tensor parallelism.

    >>> est = estimate(facts, 8)            # Qwen2.5-VL-72B, bf16
    >>> est.weights / GiB, est.kv_bytes_per_token   # ≈ 17.2 GiB, 40960 B (80 layers × 1 head × 128 × 2 × 2)
    """
    if tp < 1:
        raise ValueError("tp must be at least 1")
    profile = profile or EngineProfile()
    model_dtype = dtype if dtype and dtype != "auto" else facts.dtype
    act = dtype_bytes(model_dtype)
    kv = kv_cache_bytes(kv_cache_dtype, model_dtype)
    activation = activation_bytes(facts, tp, act, profile)
    return MemoryEstimate(
        tp=tp,
        weights=weights_per_gpu(facts, tp, model_dtype if not facts.quant_method else None),
        activation=activation,
        vision=vision_bytes(facts, tp, act, activation, profile),
        runtime=profile.runtime_bytes + (profile.tp_comm_bytes if tp > 1 else 0),
        cuda_graph=profile.cuda_graph_bytes if profile.cuda_graphs_in_budget else 0,
        kv_bytes_per_token=facts.num_layers * kv_bytes_per_token_layer(facts, tp, kv),
        kv_dtype="fp8" if kv == 1 else model_dtype,
        kv_element_bytes=kv,
        batched_tokens=profile.batched_tokens,
    )


def kv_budget(est: MemoryEstimate, total_bytes: int, utilization: float) -> int:
    """Bytes left for the KV cache on one GPU: ``utilization × total − fixed`` (may be negative)."""
    return int(utilization * total_bytes) - est.fixed


def sequence_bytes(facts: ModelFacts, est: MemoryEstimate, length: int) -> int:
    """KV bytes of one ``length``-token sequence on one GPU of ``est``'s deployment."""
    return kv_bytes_per_sequence(facts, est.tp, length, est.kv_element_bytes, est.batched_tokens)


def max_tokens(facts: ModelFacts, est: MemoryEstimate, budget: int) -> int:
    """The longest single sequence whose KV fits ``budget`` bytes (0 when none), by bisection."""
    lo, hi = 0, 1 << 24
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sequence_bytes(facts, est, mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def heuristic_bytes(weight_bytes: int) -> int:
    """The common rule of thumb for a whole deployment: 1.2 × weights + 2 GiB (for comparison only)."""
    return int(1.2 * weight_bytes) + 2 * GiB
