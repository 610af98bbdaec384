"""ModelFacts from real config.json fixtures, and exact weight bytes from safetensors metadata."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from llmdock.modelfacts import (
    estimate_param_count,
    facts_from_config,
    load_model_facts,
    read_safetensors_header,
    weight_bytes_from_file_list,
    weight_bytes_from_header,
    weight_bytes_from_index,
)
from tests.support.modelconfigs import FIXTURES, config, facts, published_total, qwen25_vl_72b

# (fixture, layers, heads, kv heads, head_dim, attention, sliding layers, experts, context limit)
SHAPES = [
    ("Qwen--Qwen2.5-7B-Instruct", 28, 28, 4, 128, "full", 0, 0, 32768),
    ("Qwen--Qwen2.5-VL-7B-Instruct", 28, 28, 4, 128, "full", 0, 0, 128000),  # window set, but unused
    ("Qwen--Qwen3-30B-A3B", 48, 32, 4, 128, "full", 0, 128, 40960),
    ("deepseek-ai--DeepSeek-V2-Lite", 27, 16, 16, 128, "mla", 0, 64, 163840),  # yarn: 4096 × 40
    ("google--gemma-2-9b-it", 42, 16, 8, 256, "full", 21, 0, 8192),  # every other layer slides
    ("mistralai--Mistral-7B-Instruct-v0.3", 32, 32, 8, 128, "full", 0, 0, 32768),
    ("meta-llama--Llama-3.1-70B-Instruct", 80, 64, 8, 128, "full", 0, 0, 131072),  # llama3 rope: no factor
]


@pytest.mark.parametrize(
    ("name", "layers", "heads", "kv", "head_dim", "attn", "swa", "experts", "limit"), SHAPES
)
def test_shapes(
    name: str, layers: int, heads: int, kv: int, head_dim: int, attn: str, swa: int, experts: int, limit: int
) -> None:
    f = facts(name)
    got = (f.num_layers, f.num_attention_heads, f.num_kv_heads, f.head_dim, f.attention, f.sliding_layers)
    assert got == (layers, heads, kv, head_dim, attn, swa)
    assert (f.num_experts, f.max_model_len) == (experts, limit)


# Every fixture whose weights.json gives the real metadata.total_size: the config alone reproduces it.
# Worked by hand for Qwen2.5-7B: embeddings 152064 × 3584 = 544,997,376, twice (untied) = 1,089,994,752;
# per layer q 3584² + bias 3584, k/v 2 × 3584 × 512 + bias 1024, o 3584², MLP 3 × 3584 × 18944, norms
# 2 × 3584 = 233,057,792, × 28 = 6,525,618,176; + final norm 3584 → 7,615,616,512 params × 2 B.
@pytest.mark.parametrize(
    "name",
    [
        "Qwen--Qwen2.5-7B-Instruct",
        "Qwen--Qwen2.5-72B-Instruct",
        "Qwen--Qwen3-8B",
        "Qwen--Qwen3-30B-A3B",
        "meta-llama--Llama-3.1-70B-Instruct",
        "mistralai--Mistral-7B-Instruct-v0.3",
        "google--gemma-2-9b-it",
    ],
)
def test_estimated_weights_equal_published_total_size(name: str) -> None:
    assert facts(name).weight_bytes == published_total(name)


def test_qwen25_7b_hand_count() -> None:
    assert estimate_param_count(facts("Qwen--Qwen2.5-7B-Instruct")) == 7_615_616_512


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # DeepSeek-V2-Lite: "tensor payload from index and shard offsets: 31,412,968,448 bytes" (SOURCES.md)
        ("deepseek-ai--DeepSeek-V2-Lite", 31_412_968_448),
        # Shard files hold headers too, so they are a little larger than the payload (< 0.01 %).
        ("Qwen--Qwen2.5-VL-7B-Instruct", 16_584_414_560),
        ("Qwen--Qwen2.5-0.5B-Instruct", 988_097_824),
        ("meta-llama--Llama-3.1-8B-Instruct", 16_060_556_376),
    ],
)
def test_estimated_weights_close_to_shard_bytes(name: str, expected: int) -> None:
    assert abs(facts(name).weight_bytes - expected) / expected < 1e-4


def test_vision_and_nested_text_config() -> None:
    vl = facts("Qwen--Qwen2.5-VL-7B-Instruct")
    assert vl.vision is not None and (vl.vision.depth, vl.vision.num_heads, vl.vision_heads) == (32, 16, 16)
    flat = config("Qwen--Qwen2.5-7B-Instruct")
    nested = {"model_type": "qwen2", "architectures": ["X"], "text_config": flat}
    assert facts_from_config(nested).weight_bytes == facts_from_config(flat).weight_bytes


def test_assembled_vl_72b() -> None:
    f = qwen25_vl_72b()  # assembled config, see tests/support/modelconfigs.py
    assert (f.num_layers, f.num_kv_heads, f.vision_heads, f.max_model_len) == (80, 8, 16, 128000)
    # vLLM logged "model weights take 34.43GiB" per GPU at TP 4 (vllm-project/vllm#16570): 137.72 GiB.
    assert abs(f.weight_bytes / 2**30 - 4 * 34.43) < 0.01 * 4 * 34.43


def test_quantization_config() -> None:
    cfg = {**config("Qwen--Qwen2.5-7B-Instruct"), "quantization_config": {"quant_method": "awq", "bits": 4}}
    f = facts_from_config(cfg)
    assert (f.quant_method, f.quant_bits) == ("awq", 4)
    assert f.weight_bytes < 0.45 * facts("Qwen--Qwen2.5-7B-Instruct").weight_bytes


def test_missing_fields_refused() -> None:
    with pytest.raises(ValueError, match="hidden_size"):
        facts_from_config({"model_type": "llama"})


def test_exact_bytes_override_estimate() -> None:
    f = facts_from_config(config("Qwen--Qwen3-8B"), weight_bytes=123, weight_source="safetensors headers")
    assert (f.weight_bytes, f.weight_source) == (123, "safetensors headers")


def _write_safetensors(path: Path, tensors: dict[str, tuple[int, int]]) -> None:
    header = {"__metadata__": {"format": "pt"}}
    header.update(
        {n: {"dtype": "BF16", "shape": [1], "data_offsets": [b, e]} for n, (b, e) in tensors.items()}
    )
    raw = json.dumps(header).encode()
    size = max(e for _, e in tensors.values())
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * size)


def test_headers_of_a_local_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        (FIXTURES / "Qwen--Qwen2.5-0.5B-Instruct" / "config.json").read_text()
    )
    _write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": (0, 100), "b": (100, 300)})
    _write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"c": (0, 50)})
    assert (
        weight_bytes_from_header(read_safetensors_header(tmp_path / "model-00002-of-00002.safetensors")) == 50
    )
    f = load_model_facts(tmp_path)
    assert (f.weight_bytes, f.weight_source) == (350, "safetensors headers")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 999}}))
    assert load_model_facts(tmp_path).weight_bytes == 999


def test_not_a_safetensors_file(tmp_path: Path) -> None:
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", 1 << 40))
    with pytest.raises(ValueError, match="not plausible"):
        read_safetensors_header(tmp_path / "x.safetensors")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        # Mistral ships consolidated.safetensors beside the shards: count the shards only.
        (
            [
                ("model-00001-of-00003.safetensors", 4_949_453_792),
                ("model-00002-of-00003.safetensors", 4_999_819_336),
                ("model-00003-of-00003.safetensors", 4_546_807_800),
                ("consolidated.safetensors", 14_496_078_512),
                ("tokenizer.json", 10),
            ],
            14_496_080_928,
        ),
        ([("consolidated.safetensors", 7)], 7),
        ([("pytorch_model-00001-of-00002.bin", 5), ("pytorch_model-00002-of-00002.bin", 6)], 11),
        ([("README.md", 1), ("original/consolidated.00.pth", 9)], None),
    ],
)
def test_weight_bytes_from_file_list(files: list[tuple[str, int]], expected: int | None) -> None:
    assert weight_bytes_from_file_list(files) == expected


def test_index_without_total_size() -> None:
    assert weight_bytes_from_index({"metadata": {"total_size": 15231233024}}) == 15231233024
    with pytest.raises(ValueError):
        weight_bytes_from_index({"weight_map": {}})
