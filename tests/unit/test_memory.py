"""Per-GPU memory estimate: hand-worked numbers and figures from published vLLM start-up logs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmdock.planning.memory import (
    EngineProfile,
    GiB,
    engine_profile,
    estimate,
    heuristic_bytes,
    kv_budget,
    kv_bytes_per_sequence,
    max_tokens,
    sequence_bytes,
)
from tests.support.modelconfigs import facts, qwen25_vl_72b

# KV bytes per token per GPU, worked by hand:
KV_PER_TOKEN = [
    # Llama-3.1-8B: 32 layers × 8 KV heads × 128 × 2 (K, V) × 2 B = 131,072
    ("meta-llama--Llama-3.1-8B-Instruct", 1, None, 131_072),
    # at TP 2 each GPU holds 4 of the 8 heads: 65,536
    ("meta-llama--Llama-3.1-8B-Instruct", 2, None, 65_536),
    # fp8 KV cache: 1 B per element: 65,536
    ("meta-llama--Llama-3.1-8B-Instruct", 1, "fp8", 65_536),
    # Qwen2.5-7B at TP 8: 4 KV heads replicated, 1 per GPU: 28 × 1 × 128 × 2 × 2 = 14,336
    ("Qwen--Qwen2.5-7B-Instruct", 8, None, 14_336),
    # DeepSeek-V2-Lite (MLA): 27 layers × (kv_lora_rank 512 + qk_rope_head_dim 64) × 2 B = 31,104, any TP
    ("deepseek-ai--DeepSeek-V2-Lite", 1, None, 31_104),
    ("deepseek-ai--DeepSeek-V2-Lite", 4, None, 31_104),
    ("deepseek-ai--DeepSeek-V2-Lite", 1, "fp8_e4m3", 15_552),
    # gemma-2-9b: 42 × 8 × 256 × 2 × 2 = 344,064 (all layers at full length; sliding capped per sequence)
    ("google--gemma-2-9b-it", 1, None, 344_064),
    # Qwen3-30B-A3B: 48 × 4 × 128 × 2 × 2 = 98,304
    ("Qwen--Qwen3-30B-A3B", 1, None, 98_304),
]


@pytest.mark.parametrize(("name", "tp", "kv_dtype", "expected"), KV_PER_TOKEN)
def test_kv_bytes_per_token(name: str, tp: int, kv_dtype: str | None, expected: int) -> None:
    assert estimate(facts(name), tp, kv_cache_dtype=kv_dtype).kv_bytes_per_token == expected


def test_vl_72b_tp8_by_hand() -> None:
    # Qwen2.5-VL-72B (assembled config) at TP 8, bf16, vllm serve defaults (8192 batched tokens):
    est = estimate(qwen25_vl_72b(), 8)
    # weights 147,324,871,168 / 8 = 18,415,608,896 + rotary 128000 × 128 × 2 = 32,768,000
    assert est.weights == 18_448_376_896
    # activation 8192 × ((3 × 29696/8 + 3 × 8192) × 2 + 152064 × 2) = 8192 × 375,552
    assert est.activation == 3_076_521_984
    # vision: encoder outputs 16384 × 8192 × 2; its own peak (65536 patches × (1296 + 12800) × 2) is lower
    assert est.vision == 268_435_456
    assert (est.runtime, est.cuda_graph, est.kv_bytes_per_token) == (2 * GiB, 3 * GiB // 4, 40_960)
    # one 73480-token sequence: 4593 blocks × 16 × 40,960 B = 2.80 GiB
    assert sequence_bytes(qwen25_vl_72b(), est, 73480) == 3_010_068_480


def test_sliding_window_caps_sequence() -> None:
    gemma = facts("google--gemma-2-9b-it")
    # vLLM keeps window − 1 + batched tokens on sliding layers: at 8192 batched tokens nothing is saved
    assert kv_bytes_per_sequence(gemma, 1, 8192, 2, 8192) == 42 * 8192 * 8192
    # with one token per step: 21 full layers × 8192 tokens + 21 sliding × 257 blocks × 16, × 8192 B/token
    assert kv_bytes_per_sequence(gemma, 1, 8192, 2, 1) == 21 * 8192 * 8192 + 21 * 8192 * 257 * 16


def test_max_tokens_inverts_sequence_bytes() -> None:
    llama = facts("meta-llama--Llama-3.1-8B-Instruct")
    est = estimate(llama, 1)
    assert max_tokens(llama, est, 131_072 * 1000) == 992  # whole blocks of 16: 62 blocks
    assert max_tokens(llama, est, -1) == 0


V1_OLD = EngineProfile(batched_tokens=16384, cuda_graphs_in_budget=False)  # vLLM 0.8.x, LLM class
V0 = EngineProfile(batched_tokens=8192, logits_over_batch=False, cuda_graphs_in_budget=False)
H100 = int(79.22 * GiB)  # "total_gpu_memory 79.22GiB" (vllm-project/vllm#10511)


def test_weights_match_vllm_logs() -> None:
    llama = facts("meta-llama--Llama-3.1-8B-Instruct")
    # "Model loading took 14.9889 GiB" (vllm-project/vllm#17122): 16,060,522,496 + 131072 × 128 × 2
    assert estimate(llama, 1).weights / GiB == pytest.approx(14.9889, abs=0.001)
    # "model weights take 7.48GiB" at TP 2 for Llama-3-8B (8192 positions) (vllm-project/vllm#10511)
    assert estimate(replace(llama, max_model_len=8192), 2).weights / GiB == pytest.approx(7.48, rel=0.002)
    # "Model loading took 15.6271 GB" for Qwen2.5-VL-7B (QwenLM/Qwen3-VL#1057): within 2 %
    assert estimate(facts("Qwen--Qwen2.5-VL-7B-Instruct"), 1).weights / GiB == pytest.approx(
        15.6271, rel=0.02
    )


@pytest.mark.parametrize(
    ("name", "profile", "published_kv_gib"),
    [
        # Qwen2.5-VL-7B on H100, util 0.9: "GPU KV cache size: 905,648 tokens" × 57,344 B (Qwen3-VL#1057)
        ("Qwen--Qwen2.5-VL-7B-Instruct", V1_OLD, 905_648 * 57_344 / GiB),
        # Llama-3-8B on H100, V0: "available_kv_cache_memory 53.29GiB" (vllm-project/vllm#10511)
        ("meta-llama--Llama-3.1-8B-Instruct", V0, 53.29),
    ],
)
def test_kv_memory_matches_vllm_logs_within_5_percent(
    name: str, profile: EngineProfile, published_kv_gib: float
) -> None:
    f = facts(name)
    if name.startswith("meta-llama"):
        f = replace(f, max_model_len=8192)  # Llama-3-8B: same shapes, 8192 positions
    got = kv_budget(estimate(f, 1, profile=profile), H100, 0.9) / GiB
    assert got == pytest.approx(published_kv_gib, rel=0.05)


def test_engine_profile_by_gpu_size() -> None:
    assert engine_profile(80 * GiB).batched_tokens == 8192
    assert engine_profile(24 * GiB).batched_tokens == 2048


def test_heuristic() -> None:
    assert heuristic_bytes(10 * GiB) == 14 * GiB


def test_bad_tp() -> None:
    with pytest.raises(ValueError):
        estimate(facts("Qwen--Qwen3-8B"), 0)
