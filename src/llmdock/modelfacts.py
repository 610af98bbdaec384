"""What the planner needs to know about a model, read from its ``config.json`` and weight files.

Pure part: :func:`facts_from_config` turns a config dict (plus, when known, the exact weight bytes) into a
frozen :class:`ModelFacts`; :func:`weight_bytes_from_index`, :func:`weight_bytes_from_header` and
:func:`weight_bytes_from_file_list` compute the exact bytes from safetensors metadata or a hub file list.
Effectful part, kept small: :func:`read_safetensors_header` and :func:`load_model_facts` read a local
model directory (only the 8-byte length and the JSON header of each ``*.safetensors``, never the tensors).

Why exact bytes: the weights are most of what a GPU holds, and vLLM's own "Model loading took X GiB"
equals the safetensors payload (+0.2 % of rotary caches), so the planner can be right to the megabyte.
When no weights are known (a what-if plan before download), :func:`estimate_param_count` gives the
count from the config; it reproduces ``metadata.total_size`` exactly for Qwen2/Qwen3/Llama/Mistral/Gemma-2.

    >>> facts = facts_from_config({"model_type": "llama", "hidden_size": 4096, ...}, weight_bytes=16060522496)
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Qwen2-family attention has a bias on q/k/v; most others do not (``attention_bias`` overrides).
_QKV_BIAS_TYPES = frozenset({"qwen2", "qwen2_vl", "qwen2_5_vl", "qwen2_moe"})
# Config keys vLLM reads for the context limit, in its order (vllm/config: _get_and_verify_max_len).
_LEN_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")


@dataclass(frozen=True)
class VisionFacts:
    """The vision tower of a VL model (Qwen2-VL / Qwen2.5-VL layout)."""

    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    out_hidden_size: int = 0


@dataclass(frozen=True)
class ModelFacts:
    """Architecture numbers the memory estimate needs. Sizes in elements unless named ``*_bytes``.

    ``attention`` is ``"full"`` (MHA/GQA, ``num_kv_heads`` × ``head_dim`` K and V per layer) or ``"mla"``
    (DeepSeek latent attention: one ``kv_lora_rank + qk_rope_head_dim`` vector per token and layer).
    ``sliding_layers`` of ``num_layers`` keep only the last ``sliding_window`` tokens.
    ``weight_bytes`` is exact when ``weight_source`` says where it came from, else estimated.
    """

    model_type: str
    architecture: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_model_len: int
    dtype: str = "bfloat16"
    tie_word_embeddings: bool = False
    attention: str = "full"
    qkv_bias: bool = False
    qk_norm: bool = False
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    q_lora_rank: int = 0
    sliding_window: int = 0
    sliding_layers: int = 0
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_experts: int = 0
    dense_layers: int = 0
    quant_method: str = ""
    quant_bits: int = 0
    vision: VisionFacts | None = None
    weight_bytes: int = 0
    weight_source: str = "estimated from config.json"

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def vision_heads(self) -> int:
        return self.vision.num_heads if self.vision else 0


def _int(cfg: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = cfg.get(key)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _max_model_len(cfg: Mapping[str, Any]) -> int:
    """The model's context limit as vLLM derives it: the first length key, times a rope scaling factor."""
    lengths = [_int(cfg, k) for k in _LEN_KEYS if _int(cfg, k) > 0]
    limit = min(lengths) if lengths else 2048
    rope = cfg.get("rope_scaling")
    if isinstance(rope, Mapping):
        kind = str(rope.get("rope_type", rope.get("type", "")))
        factor = rope.get("factor")
        if kind in ("yarn", "dynamic", "linear") and isinstance(factor, (int, float)):
            base = _int(rope, "original_max_position_embeddings", limit) if kind == "yarn" else limit
            limit = int(base * factor)
    return limit


def _sliding(cfg: Mapping[str, Any], model_type: str, layers: int) -> tuple[int, int]:
    """(window, number of sliding-window layers). Qwen2 configs carry a window they do not use."""
    window = _int(cfg, "sliding_window")
    if window <= 0 or cfg.get("use_sliding_window") is False:
        return 0, 0
    types = cfg.get("layer_types")
    if isinstance(types, list):
        return window, sum(1 for t in types if t == "sliding_attention")
    if model_type == "gemma2":  # every other layer, from layer 0 (transformers Gemma2: not bool(i % 2))
        return window, (layers + 1) // 2
    if model_type == "gemma3":
        pattern = _int(cfg, "sliding_window_pattern", 6)
        return window, layers - layers // pattern
    return window, layers


def _vision(cfg: Mapping[str, Any]) -> VisionFacts | None:
    vc = cfg.get("vision_config")
    if not isinstance(vc, Mapping) or not (_int(vc, "depth") or _int(vc, "num_hidden_layers")):
        return None
    hidden = _int(vc, "hidden_size", _int(vc, "embed_dim"))
    return VisionFacts(
        depth=_int(vc, "depth", _int(vc, "num_hidden_layers")),
        hidden_size=hidden,
        intermediate_size=_int(vc, "intermediate_size", 4 * hidden),
        num_heads=_int(vc, "num_heads", _int(vc, "num_attention_heads")),
        patch_size=_int(vc, "patch_size", _int(vc, "spatial_patch_size", 14)),
        temporal_patch_size=_int(vc, "temporal_patch_size", 2),
        spatial_merge_size=_int(vc, "spatial_merge_size", 2),
        in_channels=_int(vc, "in_chans", _int(vc, "in_channels", 3)),
        out_hidden_size=_int(vc, "out_hidden_size", _int(vc, "hidden_size")),
    )


def facts_from_config(
    config: Mapping[str, Any], *, weight_bytes: int | None = None, weight_source: str = ""
) -> ModelFacts:
    """Read a Hugging Face ``config.json`` dict. Multimodal configs with a nested ``text_config`` are read
    from it (the vision part from ``vision_config``); MoE, MLA, sliding windows and
    ``quantization_config`` are recognised. ``weight_bytes`` should be exact (see ``weight_bytes_*``);
    without it the bytes are estimated from the parameter count.

    Raises ``ValueError`` when a field the planner cannot do without is missing.
    """
    text = config.get("text_config")
    cfg: Mapping[str, Any] = {**config, **text} if isinstance(text, Mapping) else config
    model_type = str(config.get("model_type", cfg.get("model_type", "")))
    hidden, layers, heads = (
        _int(cfg, "hidden_size"),
        _int(cfg, "num_hidden_layers"),
        _int(cfg, "num_attention_heads"),
    )
    if not (hidden and layers and heads):
        raise ValueError("config.json lacks hidden_size, num_hidden_layers or num_attention_heads")
    kv_lora = _int(cfg, "kv_lora_rank")
    window, sliding_layers = _sliding(cfg, str(cfg.get("model_type", model_type)), layers)
    quant = cfg.get("quantization_config")
    quant_method, quant_bits = "", 0
    if isinstance(quant, Mapping):
        quant_method = str(quant.get("quant_method", ""))
        quant_bits = _int(quant, "bits", _int(quant, "w_bit", 8 if "fp8" in quant_method else 0))
    experts = _int(cfg, "num_experts", _int(cfg, "n_routed_experts", _int(cfg, "num_local_experts")))
    mlp_only = cfg.get("mlp_only_layers")
    dense = _int(cfg, "first_k_dense_replace") + (len(mlp_only) if isinstance(mlp_only, list) else 0)
    archs = config.get("architectures")
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    facts = ModelFacts(
        model_type=model_type,
        architecture=str(archs[0]) if isinstance(archs, list) and archs else "",
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=_int(cfg, "num_key_value_heads", heads),
        head_dim=_int(cfg, "head_dim", hidden // heads),
        intermediate_size=_int(cfg, "intermediate_size", 4 * hidden),
        vocab_size=_int(cfg, "vocab_size"),
        max_model_len=_max_model_len(cfg),
        dtype=dtype,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", model_type.startswith("gemma"))),
        attention="mla" if kv_lora else "full",
        qkv_bias=bool(cfg.get("attention_bias", model_type in _QKV_BIAS_TYPES)),
        qk_norm=str(cfg.get("model_type", model_type)).startswith("qwen3"),
        kv_lora_rank=kv_lora,
        qk_rope_head_dim=_int(cfg, "qk_rope_head_dim"),
        qk_nope_head_dim=_int(cfg, "qk_nope_head_dim"),
        v_head_dim=_int(cfg, "v_head_dim"),
        q_lora_rank=_int(cfg, "q_lora_rank"),
        sliding_window=window,
        sliding_layers=sliding_layers,
        num_experts=experts,
        experts_per_token=_int(cfg, "num_experts_per_tok") if experts else 0,
        moe_intermediate_size=_int(cfg, "moe_intermediate_size", _int(cfg, "intermediate_size"))
        if experts
        else 0,
        shared_experts=_int(cfg, "n_shared_experts") if experts else 0,
        dense_layers=dense if experts else 0,
        quant_method=quant_method,
        quant_bits=quant_bits,
        vision=_vision(config),
    )
    if weight_bytes:
        return _replace_weights(facts, weight_bytes, weight_source or "exact")
    return _replace_weights(facts, estimate_weight_bytes(facts), "estimated from config.json")


def _replace_weights(facts: ModelFacts, weight_bytes: int, source: str) -> ModelFacts:
    from dataclasses import replace

    return replace(facts, weight_bytes=int(weight_bytes), weight_source=source)


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a torch dtype name as config.json or vLLM's ``--dtype`` spell it."""
    name = dtype.lower().removeprefix("torch.")
    if name in ("float32", "fp32", "float"):
        return 4
    if name.startswith(("fp8", "float8", "int8", "uint8")):
        return 1
    return 2  # bfloat16, float16, half, auto on every current GPU model


def _attention_params(f: ModelFacts) -> int:
    h = f.hidden_size
    if f.attention == "mla":
        qk = f.qk_nope_head_dim + f.qk_rope_head_dim
        if f.q_lora_rank:
            q = h * f.q_lora_rank + f.q_lora_rank + f.q_lora_rank * f.num_attention_heads * qk
        else:
            q = h * f.num_attention_heads * qk
        kv = h * (f.kv_lora_rank + f.qk_rope_head_dim) + f.kv_lora_rank
        kv += f.kv_lora_rank * f.num_attention_heads * (f.qk_nope_head_dim + f.v_head_dim)
        return q + kv + f.num_attention_heads * f.v_head_dim * h
    q_out, kv_out = f.num_attention_heads * f.head_dim, f.num_kv_heads * f.head_dim
    params = h * q_out + 2 * h * kv_out + q_out * h
    if f.qkv_bias:
        params += q_out + 2 * kv_out
    if f.qk_norm:
        params += 2 * f.head_dim
    return params


def _mlp_params(f: ModelFacts, layer: int) -> int:
    h = f.hidden_size
    if not f.is_moe or layer < f.dense_layers:
        return 3 * h * f.intermediate_size
    experts = f.num_experts * 3 * h * f.moe_intermediate_size
    shared = 3 * h * f.moe_intermediate_size * f.shared_experts
    return experts + shared + f.num_experts * h  # + router


def _vision_params(v: VisionFacts) -> int:
    """Qwen2.5-VL vision tower: conv patch embed, ``depth`` blocks (RMSNorm, biased qkv/proj and gated
    MLP), patch merger (RMSNorm + 2-layer MLP from 4 merged patches to the LM hidden size)."""
    h, i = v.hidden_size, v.intermediate_size
    patch = v.in_channels * v.temporal_patch_size * v.patch_size**2 * h
    block = 2 * h + (h * 3 * h + 3 * h) + (h * h + h) + (3 * h * i + 2 * i + h)
    merged = h * v.spatial_merge_size**2
    merger = h + merged * merged + merged + merged * v.out_hidden_size + v.out_hidden_size
    return patch + v.depth * block + merger


def estimate_param_count(f: ModelFacts) -> int:
    """Parameters implied by the config (transformers' module layout). Exact for the dense and MoE
    fixtures that publish ``metadata.total_size``; an estimate for others (norm layouts differ)."""
    h = f.hidden_size
    norms_per_layer = 4 if f.model_type.startswith("gemma") else 2
    embed = f.vocab_size * h * (1 if f.tie_word_embeddings else 2)
    layers = sum(_attention_params(f) + _mlp_params(f, i) + norms_per_layer * h for i in range(f.num_layers))
    vision = _vision_params(f.vision) if f.vision else 0
    return embed + layers + h + vision


def estimate_weight_bytes(f: ModelFacts) -> int:
    """Bytes of the weights from the parameter count: ``dtype`` bytes each, or for a quantized checkpoint
    ``bits/8`` for the transformer-layer weights plus 3 % for scales and zero points (AWQ/GPTQ group 128)."""
    params = estimate_param_count(f)
    width = dtype_bytes(f.dtype)
    if not f.quant_bits or f.quant_bits >= 8 * width:
        return params * width
    embed = f.vocab_size * f.hidden_size * (1 if f.tie_word_embeddings else 2)
    return int(embed * width + (params - embed) * f.quant_bits / 8 * 1.03)


def weight_bytes_from_index(index: Mapping[str, Any]) -> int:
    """``metadata.total_size`` of a ``model.safetensors.index.json``: the tensor payload in bytes."""
    meta = index.get("metadata")
    total = meta.get("total_size") if isinstance(meta, Mapping) else None
    if not isinstance(total, (int, float)) or total <= 0:
        raise ValueError("index has no metadata.total_size")
    return int(total)


def weight_bytes_from_header(header: Mapping[str, Any]) -> int:
    """Tensor payload bytes described by one safetensors JSON header (sum of ``data_offsets`` spans)."""
    total = 0
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, Mapping):
            continue
        begin, end = info["data_offsets"]
        total += int(end) - int(begin)
    return total


def weight_bytes_from_file_list(files: Iterable[tuple[str, int]]) -> int | None:
    """Weight bytes from a hub listing of ``(path, size)`` before download. Sums ``*.safetensors`` sizes
    (headers included: they add ~0.001 %); ignores ``consolidated.safetensors`` (Mistral ships the same
    weights twice) and sub-folders; falls back to ``pytorch_model*.bin``. None when no weight file is listed.
    """
    listed = [(p, s) for p, s in files if "/" not in p]
    safetensors = [s for p, s in listed if p.endswith(".safetensors") and not p.startswith("consolidated")]
    if not safetensors:
        safetensors = [s for p, s in listed if p.endswith(".safetensors")]
    if safetensors:
        return sum(safetensors)
    bins = [s for p, s in listed if p.startswith("pytorch_model") and p.endswith(".bin")]
    return sum(bins) if bins else None


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of one safetensors file: an 8-byte little-endian length, then that many bytes."""
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > 100_000_000:
            raise ValueError(f"{path}: header length {length} is not plausible; not a safetensors file")
        header: dict[str, Any] = json.loads(fh.read(length))
    return header


def weight_bytes_in_dir(model_dir: Path) -> tuple[int, str] | None:
    """Exact weight bytes of a local checkpoint and where they came from, or None without safetensors."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            return weight_bytes_from_index(json.loads(index.read_text())), "model.safetensors.index.json"
        except ValueError:
            pass  # an index without total_size: read the headers instead
    files = sorted(p for p in model_dir.glob("*.safetensors") if not p.name.startswith("consolidated"))
    if not files:
        return None
    return sum(weight_bytes_from_header(read_safetensors_header(p)) for p in files), "safetensors headers"


def load_model_facts(model_dir: Path) -> ModelFacts:
    """Read ``config.json`` and the weight headers of a local model directory."""
    config = json.loads((model_dir / "config.json").read_text())
    found = weight_bytes_in_dir(model_dir)
    if found is None:
        return facts_from_config(config)
    return facts_from_config(config, weight_bytes=found[0], weight_source=found[1])
