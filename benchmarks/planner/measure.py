"""Measure GPU memory of real architectures and compare it with llmdock's planner estimate.

For a few fixture configs (tests/fixtures/models), random-initialise the model with transformers directly
on the GPU (fewer layers where it is large), then measure with ``torch.cuda.memory_allocated``:

- weights: bytes allocated by the model          vs  ``estimate_weight_bytes`` (and the published
                                                      ``metadata.total_size`` where the depth is real)
- KV cache: bytes a prefill of N tokens leaves in  vs  ``kv_bytes_per_sequence`` (layers × KV heads ×
  transformers' cache                                 head_dim × 2 × 2 B; sliding layers capped)
- total: peak allocated during that prefill        vs  weights + KV + activation formula, and the
                                                      common heuristic 1.2 × weights + 2 GiB

It also compares the estimate with figures vLLM printed in published start-up logs (no GPU needed) and
records the NVML inventory (llmdock.gpuinfo). Writes ``results.json`` and ``RESULTS.md`` to ``--out``.

    python benchmarks/planner/measure.py --out /tmp/planner            # on a GPU machine
    python benchmarks/planner/measure.py --out /tmp/planner --cpu      # dry run: 2 layers, 64 tokens
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from llmdock.gpuinfo import detect_gpus  # noqa: E402
from llmdock.modelfacts import estimate_weight_bytes, facts_from_config  # noqa: E402
from llmdock.planning.memory import (  # noqa: E402
    EngineProfile,
    GiB,
    activation_bytes,
    estimate,
    heuristic_bytes,
    kv_budget,
    kv_bytes_per_sequence,
)

FIXTURES = ROOT / "tests" / "fixtures" / "models"
# (fixture, layers to build: None = all). Large or MoE models get fewer layers to stay quick.
MODELS: list[tuple[str, int | None]] = [
    ("Qwen--Qwen2.5-7B-Instruct", None),
    ("meta-llama--Llama-3.1-8B-Instruct", None),
    ("google--gemma-2-9b-it", None),
    ("Qwen--Qwen3-30B-A3B", 8),
    ("Qwen--Qwen2.5-VL-7B-Instruct", None),
]


def config(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name / "config.json").read_text())
    return data


def published_total(name: str) -> int | None:
    path = FIXTURES / name / "weights.json"
    if not path.is_file():
        return None
    total = json.loads(path.read_text()).get("total_size_bytes")
    return int(total) if total else None


def qwen25_vl_72b_config() -> dict[str, Any]:
    """No verbatim Qwen2.5-VL-72B config.json was found (see SOURCES.md): assembled from the 72B text
    config + the VL-7B vision config, with the two values the VL-72B-AWQ config shows (intermediate_size
    29696, vision intermediate_size 3456, out_hidden_size 8192) and the VL context limit 128000."""
    text, vl7 = config("Qwen--Qwen2.5-72B-Instruct"), config("Qwen--Qwen2.5-VL-7B-Instruct")
    vision = {**vl7["vision_config"], "intermediate_size": 3456, "out_hidden_size": 8192}
    return {
        **text,
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "intermediate_size": 29696,
        "max_position_embeddings": 128000,
        "rope_scaling": vl7["rope_scaling"],
        "vision_config": vision,
    }


def err(measured: float, estimated: float) -> float:
    return round(100 * (estimated - measured) / measured, 2) if measured else 0.0


def row(component: str, measured: float, estimated: float, source: str = "") -> dict[str, Any]:
    return {
        "component": component,
        "measured_gib": round(measured / GiB, 4),
        "estimated_gib": round(estimated / GiB, 4),
        "error_pct": err(measured, estimated),
        "source": source,
    }


def build(cfg: dict[str, Any], device: str) -> Any:
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "config.json").write_text(json.dumps(cfg))
        conf = transformers.AutoConfig.from_pretrained(tmp)
    vl = "vision_config" in cfg
    auto = transformers.AutoModelForImageTextToText if vl else transformers.AutoModelForCausalLM
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            try:
                model = auto.from_config(conf, attn_implementation="sdpa")
            except ValueError:  # e.g. Gemma-2 in some transformers versions: eager attention only
                model = auto.from_config(conf, attn_implementation="eager")
    finally:
        torch.set_default_dtype(old)
    return model.to(torch.bfloat16).eval()


def measure_model(name: str, layers: int | None, tokens: int, device: str) -> dict[str, Any]:
    import torch

    cfg = config(name)
    target = cfg.get("text_config", cfg)
    if layers is not None:
        target["num_hidden_layers"] = layers
        for key in ("max_window_layers",):
            if key in target:
                target[key] = min(int(target[key]), layers)
    facts = facts_from_config(cfg)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    alloc = (lambda: torch.cuda.memory_allocated()) if device == "cuda" else (lambda: 0)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = alloc()
    started = time.time()
    model = build(cfg, device)
    sync()
    weights = alloc() - base
    params = {id(p): p for p in model.parameters()}
    param_bytes = sum(p.numel() * p.element_size() for p in params.values())
    if device != "cuda":
        weights = param_bytes
    est_weights = estimate_weight_bytes(facts)
    ids = torch.randint(0, min(facts.vocab_size, 32000), (1, tokens), device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = alloc()
    with torch.no_grad():
        try:
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        except TypeError:  # transformers < 4.50 has no logits_to_keep
            out = model(input_ids=ids, use_cache=True)
    sync()
    kv_measured = cache_bytes(out.past_key_values)
    peak = torch.cuda.max_memory_allocated() - base if device == "cuda" else weights + kv_measured
    after = alloc() - before
    kv_est = kv_bytes_per_sequence(facts, 1, tokens, 2, batched_tokens=1)
    prof = EngineProfile(batched_tokens=tokens, logits_over_batch=False)
    act_est = activation_bytes(facts, 1, 2, prof)
    total_est = est_weights + kv_est + act_est
    rows = [row("weights", weights, est_weights, "estimate_weight_bytes(config)")]
    published = published_total(name)
    if published and layers is None:
        rows.append(row("weights (safetensors total_size)", weights, published, "fixture weights.json"))
    rows += [
        row(f"KV cache, {tokens} tokens", kv_measured, kv_est, "kv_bytes_per_sequence"),
        row("peak total (weights+KV+activation)", peak, total_est, "weights + KV + activation_bytes"),
        row("peak total vs heuristic 1.2×W+2GiB", peak, heuristic_bytes(weights), "heuristic"),
    ]
    del out, model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {
        "model": name,
        "layers": facts.num_layers,
        "tokens": tokens,
        "param_bytes": param_bytes,
        "allocated_after_forward": after,
        "seconds": round(time.time() - started, 1),
        "rows": rows,
    }


def cache_bytes(cache: Any) -> int:
    """Bytes of the distinct tensors a transformers cache object holds (any cache class/version)."""
    import torch

    seen: dict[int, int] = {}

    def walk(obj: Any, depth: int) -> None:
        if depth > 4 or obj is None:
            return
        if isinstance(obj, torch.Tensor):
            seen[obj.data_ptr()] = obj.numel() * obj.element_size()
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item, depth + 1)
        elif isinstance(obj, dict):
            for item in obj.values():
                walk(item, depth + 1)
        elif hasattr(obj, "__dict__"):
            for item in vars(obj).values():
                walk(item, depth + 1)

    walk(cache, 0)
    return sum(seen.values())


H100_TOTAL = int(79.22 * GiB)  # "total_gpu_memory 79.22GiB" (vllm-project/vllm#10511)


def published_rows() -> list[dict[str, Any]]:
    """Estimate vs. what vLLM printed in public start-up logs (each profile mirrors that log's version)."""
    v1_old = EngineProfile(batched_tokens=16384, cuda_graphs_in_budget=False)  # v0.8.x LLM class
    v0 = EngineProfile(batched_tokens=8192, logits_over_batch=False, cuda_graphs_in_budget=False)
    rows: list[dict[str, Any]] = []
    llama = facts_from_config(config("meta-llama--Llama-3.1-8B-Instruct"))
    e = estimate(llama, 1, profile=v1_old)
    rows.append(row("Llama-3.1-8B weights, 1 GPU", 14.9889 * GiB, e.weights, "vllm-project/vllm#17122"))
    # Llama-3-8B (max_position_embeddings 8192) on H100, V0: weights 14.96, non_torch 1.79, activation 1.26,
    # available_kv_cache_memory 53.29 GiB of 71.29 (vllm-project/vllm#10511).
    llama3 = replace(llama, max_model_len=8192)
    e = estimate(llama3, 1, profile=v0)
    rows.append(row("Llama-3-8B non-KV total, H100 TP1", (14.96 + 1.79 + 1.26) * GiB, e.fixed, "vllm#10511"))
    rows.append(
        row("Llama-3-8B KV memory, H100 TP1", 53.29 * GiB, kv_budget(e, H100_TOTAL, 0.9), "vllm#10511")
    )
    e2 = estimate(llama3, 2, profile=v0)
    rows.append(row("Llama-3-8B weights, TP2", 7.48 * GiB, e2.weights, "vllm#10511"))
    vl = facts_from_config(config("Qwen--Qwen2.5-VL-7B-Instruct"))
    e = estimate(vl, 1, profile=v1_old)
    rows.append(row("Qwen2.5-VL-7B weights, H100", 15.6271 * GiB, e.weights, "QwenLM/Qwen3-VL#1057"))
    kv_pub = 905_648 * e.kv_bytes_per_token
    rows.append(
        row("Qwen2.5-VL-7B KV memory, H100", kv_pub, kv_budget(e, H100_TOTAL, 0.9), "QwenLM/Qwen3-VL#1057")
    )
    rows.append(row("Qwen2.5-VL-7B non-KV total", 0.9 * H100_TOTAL - kv_pub, e.fixed, "QwenLM/Qwen3-VL#1057"))
    vl72 = facts_from_config(qwen25_vl_72b_config())
    e = estimate(vl72, 4, profile=v0)
    rows.append(row("Qwen2.5-VL-72B weights, TP4 A100", 34.43 * GiB, e.weights, "vllm-project/vllm#16570"))
    pub = (34.43 + 0.43 + 2.51) * GiB
    rows.append(
        row("Qwen2.5-VL-72B non-KV total, TP4", pub, e.fixed - e.runtime + int(0.43 * GiB), "vllm#16570")
    )
    ds = facts_from_config(config("deepseek-ai--DeepSeek-V2-Lite"))
    mla = kv_bytes_per_sequence(ds, 1, 32768, 2, batched_tokens=1)
    rows.append(row("DeepSeek-V2-Lite MLA KV, 32768 tokens", 0.95 * GiB, mla, "vllm-project/vllm#15871"))
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Planner memory estimate vs measurement",
        "",
        f"Generated by `benchmarks/planner/measure.py` on {result['device']} ({result['when']}); "
        f"torch {result['torch']}, transformers {result['transformers']}.",
        "Error % = (estimated − measured) / measured. Measured = `torch.cuda.memory_allocated` deltas.",
        "",
        "## Measured on the GPU (random weights, transformers, sdpa attention)",
        "",
    ]
    for m in result["models"]:
        depth = f"{m['layers']} layers" if m.get("layers") else "all layers"
        lines.append(f"### {m['model']} ({depth}, {m['tokens']}-token prefill)")
        lines += [
            "",
            "| component | measured GiB | estimated GiB | error % | estimate from |",
            "|---|---:|---:|---:|---|",
        ]
        lines += [_md_row(r) for r in m.get("rows", [])]
        if "error" in m:
            lines.append(f"\nfailed: `{m['error']}`")
        lines.append("")
    lines += [
        "## vs. vLLM's own start-up logs (published; no GPU needed)",
        "",
        "| component | vLLM log GiB | estimated GiB | error % | source |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [_md_row(r) for r in result["published"]]
    lines += ["", "## NVML inventory on the measuring machine (llmdock.gpuinfo.detect_gpus)", "", "```"]
    lines += [json.dumps(g) for g in result["gpus"]] + [f"notes: {result['gpu_notes']}", "```", ""]
    return "\n".join(lines)


def _md_row(r: dict[str, Any]) -> str:
    cells = (r["component"], r["measured_gib"], r["estimated_gib"], f"{r['error_pct']:+.2f}", r["source"])
    return "| " + " | ".join(map(str, cells)) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    ap.add_argument("--cpu", action="store_true", help="dry run on CPU: 2 layers, 64 tokens")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--only", default="", help="comma-separated fixture names")
    args = ap.parse_args()
    import torch
    import transformers

    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    tokens = 64 if device == "cpu" else args.tokens
    models = []
    for name, layers in MODELS:
        if args.only and name not in args.only.split(","):
            continue
        try:
            models.append(measure_model(name, 2 if device == "cpu" else layers, tokens, device))
        except Exception as e:  # record and go on: one architecture's failure must not lose the others
            models.append({"model": name, "layers": layers, "tokens": tokens, "error": repr(e)[:500]})
        print(json.dumps(models[-1]), flush=True)
    gpus, notes = detect_gpus()
    result = {
        "device": torch.cuda.get_device_name(0)
        if device == "cuda"
        else f"CPU dry run ({platform.machine()})",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "models": models,
        "published": published_rows(),
        "gpus": [vars(g) | {"total_gib": round(g.total_bytes / GiB, 2)} for g in gpus],
        "gpu_notes": list(notes),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "RESULTS.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
