"""Real model configs for planner tests (tests/fixtures/models; provenance in SOURCES.md there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmdock.modelfacts import ModelFacts, facts_from_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"


def config(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name / "config.json").read_text())
    return data


def published_total(name: str) -> int | None:
    """``metadata.total_size`` recorded in the fixture's weights.json, where one was found."""
    path = FIXTURES / name / "weights.json"
    total = json.loads(path.read_text()).get("total_size_bytes") if path.is_file() else None
    return int(total) if total else None


def facts(name: str) -> ModelFacts:
    return facts_from_config(config(name))


def qwen25_vl_72b_config() -> dict[str, Any]:
    """ASSEMBLED, not verbatim: no Qwen2.5-VL-72B-Instruct config.json was found (SOURCES.md, "Not
    obtained"). Built from the Qwen2.5-72B-Instruct text config and the Qwen2.5-VL-7B vision config, with
    the values the official Qwen2.5-VL-72B-Instruct-AWQ config shows for the 72B VL model:
    intermediate_size 29696, vision intermediate_size 3456, out_hidden_size 8192; context 128000 as VL-7B."""
    text, vl7 = config("Qwen--Qwen2.5-72B-Instruct"), config("Qwen--Qwen2.5-VL-7B-Instruct")
    return {
        **text,
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "intermediate_size": 29696,
        "max_position_embeddings": 128000,
        "rope_scaling": vl7["rope_scaling"],
        "vision_config": {**vl7["vision_config"], "intermediate_size": 3456, "out_hidden_size": 8192},
    }


def qwen25_vl_72b() -> ModelFacts:
    return facts_from_config(qwen25_vl_72b_config())
