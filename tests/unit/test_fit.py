"""fit(): TP size, GPUs, context, utilization and the alternatives offered when a model does not fit."""

from __future__ import annotations

import pytest

from llmdock.errors import DoesNotFit, InvalidSpec
from llmdock.gpuinfo import parse_assume_gpus
from llmdock.planning.fit import fit, max_utilization, valid_tp_sizes
from llmdock.planning.inventory import Gpu
from llmdock.planning.memory import GiB
from tests.support.modelconfigs import facts, qwen25_vl_72b


def idle(n: int, gib: int = 80) -> tuple[Gpu, ...]:
    return parse_assume_gpus(f"{n}x{gib}GiB")


def test_vl_72b_fits_8x80_with_tp8() -> None:
    # The wiki's command: Qwen2.5-VL-72B (config assembled, see tests/support/modelconfigs.py), bf16,
    # --tensor-parallel-size 8 --max-model-len 73480 on 8 × 80 GiB at the default utilization 0.9.
    # Per GPU: budget 0.9 × 80 GiB = 77,309,411,328; fixed 24,746,124,352 (weights 18,448,376,896 +
    # activation 3,076,521,984 + vision 268,435,456 + runtime 2 GiB + graphs 0.75 GiB, see test_memory);
    # KV 52,563,286,976 B = 80,205 blocks of 16 × 40,960 B = 1,283,280 tokens; / 3,010,068,480 B per
    # 73480-token sequence = 17.46 concurrent sequences.
    f = fit(qwen25_vl_72b(), idle(8), tp=8, max_model_len=73480)
    assert (f.tp, f.gpus, f.max_model_len, f.gpu_memory_utilization) == (8, tuple(range(8)), 73480, 0.9)
    assert (f.kv_tokens, f.concurrent_seqs) == (1_283_280, 17.46)
    assert f.per_gpu[0].kv_cache == 52_563_286_976 and len(f.per_gpu) == 8
    assert fit(qwen25_vl_72b(), idle(8), requested_gpus=tuple(range(8)), max_model_len=73480).tp == 8


def test_vl_72b_default_takes_fewest_gpus() -> None:
    f = fit(qwen25_vl_72b(), idle(8), max_model_len=73480)
    assert (f.tp, f.gpus) == (4, (0, 1, 2, 3))


def test_vl_72b_does_not_fit_2x80() -> None:
    # Weights alone are 147.3 GB / 2 = 68.6 GiB per GPU; with 4.8 GiB of overheads and 11.2 GiB of KV for
    # one 73480-token sequence (160 KiB/token at TP 2) that is 86 GiB, above 0.9 × 80 = 72 GiB.
    with pytest.raises(DoesNotFit) as e:
        fit(qwen25_vl_72b(), idle(2), max_model_len=73480)
    assert "73480 tokens" in e.value.message
    assert e.value.alternatives[0].startswith("--gpus 4")
    assert "--gpus 4" in e.value.hint
    with pytest.raises(DoesNotFit, match="even 2048 tokens"):
        fit(qwen25_vl_72b(), idle(2))


@pytest.mark.parametrize(
    ("name", "limit", "expected"),
    [
        ("Qwen--Qwen2.5-7B-Instruct", 8, (1, 2, 4)),  # 28 heads, 4 KV heads
        ("Qwen--Qwen2.5-VL-7B-Instruct", 8, (1, 2, 4)),  # + 16 vision heads
        ("meta-llama--Llama-3.1-70B-Instruct", 16, (1, 2, 4, 8, 16)),  # 16 > 8 KV heads: replicated
        ("google--gemma-2-9b-it", 8, (1, 2, 4, 8)),
        ("Qwen--Qwen2.5-0.5B-Instruct", 8, (1, 2)),  # 14 heads, 2 KV heads: 7 divides neither way
    ],
)
def test_valid_tp_sizes(name: str, limit: int, expected: tuple[int, ...]) -> None:
    assert valid_tp_sizes(facts(name), limit) == expected


def test_invalid_tp_refused() -> None:
    with pytest.raises(InvalidSpec, match="does not divide") as e:
        fit(facts("Qwen--Qwen2.5-7B-Instruct"), idle(8), tp=8)
    assert "1, 2, 4" in e.value.hint
    with pytest.raises(InvalidSpec, match="does not divide"):
        fit(facts("Qwen--Qwen2.5-7B-Instruct"), idle(8), requested_gpus=(0, 1, 2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_model_len": 40000}, "outside what the model supports"),
        ({"gpu_memory_utilization": 1.5}, "outside"),
        ({"tp": 2, "requested_gpus": (0,)}, "one TP group"),
        ({"requested_gpus": (9,)}, "not in the inventory"),
        ({"placement": "random"}, "not known"),
    ],
)
def test_bad_requests(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidSpec, match=match):
        fit(facts("Qwen--Qwen2.5-7B-Instruct"), idle(2), **kwargs)  # type: ignore[arg-type]


def test_no_gpu() -> None:
    with pytest.raises(DoesNotFit, match="no GPU"):
        fit(facts("Qwen--Qwen2.5-7B-Instruct"), ())


def test_context_reduced_to_what_fits() -> None:
    # Llama-3.1-70B on one 80 GiB GPU cannot hold its weights; on two it holds far less than 131072 tokens
    # of context; with no --max-model-len the largest that fits is chosen and more GPUs are suggested.
    f = fit(facts("meta-llama--Llama-3.1-70B-Instruct"), idle(2))
    assert f.tp == 2 and 2048 <= f.max_model_len < 131072 and f.max_model_len % 16 == 0
    assert f.concurrent_seqs >= 1.0
    assert "instead of the model's 131072" in f.notes[0]
    assert any(a.startswith("--gpus 4") for a in f.alternatives)


def test_explicit_context_alternatives() -> None:
    with pytest.raises(DoesNotFit) as e:
        fit(facts("meta-llama--Llama-3.1-70B-Instruct"), idle(2), max_model_len=131072)
    alts = e.value.alternatives
    assert alts[0].startswith("--max-model-len ") and "(on 2 GPU(s))" in alts[0]
    assert any(a.startswith("--gpus 4") for a in alts)


def test_fp8_kv_cache_alternative() -> None:
    # Qwen2.5-7B on one 20 GiB GPU (2048 batched tokens below 70 GiB): budget 0.9 × 20 = 18 GiB; fixed
    # 14.19 weights + 0.84 activation + 1 runtime + 0.75 graphs = 16.8 GiB leaves 1.2 GiB, short of
    # 32768 tokens × 28 × 4 × 128 × 2 × 2 B = 1.75 GiB in bf16; the fp8 KV cache needs 0.875 GiB and fits.
    with pytest.raises(DoesNotFit) as e:
        fit(facts("Qwen--Qwen2.5-7B-Instruct"), idle(1, 20), max_model_len=32768)
    assert any(a.startswith("--kv-cache-dtype fp8") for a in e.value.alternatives)
    ok = fit(facts("Qwen--Qwen2.5-7B-Instruct"), idle(1, 20), max_model_len=32768, kv_cache_dtype="fp8")
    assert ok.kv_cache_dtype == "fp8"


BUSY = (
    Gpu(0, total_bytes=80 * GiB, free_bytes=30 * GiB),
    Gpu(1, total_bytes=80 * GiB, free_bytes=80 * GiB),
)


def test_utilization_lowered_when_gpu_is_busy() -> None:
    # GPU 0 has 30 GiB free: (30 − 0.5) / 80 = 0.368 → 0.36; binpack fills it before the empty GPU.
    assert max_utilization(BUSY[0]) == 0.36
    f = fit(facts("Qwen--Qwen2.5-7B-Instruct"), BUSY)
    assert (f.gpus, f.gpu_memory_utilization) == ((0,), 0.36)
    assert "lowered to 0.36" in f.notes[0]
    assert fit(facts("Qwen--Qwen2.5-7B-Instruct"), BUSY, placement="spread").gpus == (1,)


def test_explicit_utilization_refused_on_busy_gpu() -> None:
    with pytest.raises(DoesNotFit, match=r"GPU 0 has 30\.0 GiB free") as e:
        fit(facts("Qwen--Qwen2.5-7B-Instruct"), BUSY, requested_gpus=(0,), gpu_memory_utilization=0.9)
    assert e.value.alternatives == ("--gpu-memory-utilization 0.36",)
    # without an explicit pin, the busy GPU is skipped when the utilization asked for cannot be had there
    assert fit(facts("Qwen--Qwen2.5-7B-Instruct"), BUSY, gpu_memory_utilization=0.9).gpus == (1,)


@pytest.mark.parametrize(("policy", "expected"), [("binpack", (0,)), ("spread", (1,))])
def test_placement_policy(policy: str, expected: tuple[int, ...]) -> None:
    # A 7B at utilization 0.3 fits on either GPU: binpack fills the busier GPU 0, spread takes idle GPU 1.
    f = fit(facts("Qwen--Qwen2.5-7B-Instruct"), BUSY, gpu_memory_utilization=0.3, placement=policy)
    assert f.gpus == expected


def test_to_dict_for_json() -> None:
    d = fit(facts("Qwen--Qwen3-8B"), idle(1)).to_dict()
    assert d["tensor_parallel_size"] == 1 and d["max_model_len"] == 40960
    assert set(d["per_gpu"][0]) >= {"weights", "kv_cache", "budget"}


# Measured on a lent H200 (benchmarks/multi-gpu/RESULTS.md): a process of ours held most of the GPU.
H200_MIB = 143771


def busy_h200(free_mib: int) -> list[Gpu]:
    return [
        Gpu(
            0, name="NVIDIA H200", total_bytes=H200_MIB << 20, free_bytes=free_mib << 20, processes=(498, 652)
        )
    ]


def test_a_refusal_caused_by_other_processes_says_so_and_how_to_free_it() -> None:
    with pytest.raises(DoesNotFit) as e:
        fit(facts("Qwen--Qwen2.5-7B-Instruct"), busy_h200(18340))
    assert "GPU 0 has 17.9 GiB free" in e.value.message and "0.9 × total" not in e.value.message
    assert e.value.hint.startswith("try free GPU 0: other processes (PIDs 498, 652) hold 122.5 GiB")


def test_an_explicit_fraction_no_gpu_can_give_is_refused_with_the_fraction_that_fits() -> None:
    with pytest.raises(DoesNotFit) as e:
        fit(facts("Qwen--Qwen2.5-7B-Instruct"), busy_h200(28434), gpu_memory_utilization=0.9)
    assert "GPU 0 has 27.8 GiB free" in e.value.message
    assert "lower it to --gpu-memory-utilization 0.19" in e.value.hint
