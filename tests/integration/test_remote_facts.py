"""Planning from the hub before a download: config.json + file sizes through both real SDKs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmdock.errors import NotFound
from llmdock.modelfacts import facts_from_config, weight_bytes_from_file_list
from llmdock.models.remote import remote_config
from tests.support.hub import LocalHub, hub_env, safetensors_bytes

FIXTURE = Path(__file__).parents[1] / "fixtures" / "models" / "Qwen--Qwen2.5-7B-Instruct" / "config.json"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LocalHub]:
    with LocalHub() as h:
        shard = safetensors_bytes({"w": b"\0" * 4096})
        h.add_repo(
            "Qwen/Qwen2.5-7B-Instruct", {"config.json": FIXTURE.read_bytes(), "model.safetensors": shard}
        )
        for k, v in hub_env(h.url).items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        yield h


@pytest.mark.parametrize("source", ["modelscope", "huggingface", "auto"])
def test_config_and_sizes_without_downloading_weights(hub: LocalHub, source: str) -> None:
    config, files = remote_config("Qwen/Qwen2.5-7B-Instruct", source=source)
    assert config == json.loads(FIXTURE.read_text())
    facts = facts_from_config(config, weight_bytes=weight_bytes_from_file_list(files))
    assert facts.num_attention_heads == 28 and facts.weight_bytes == dict(files)["model.safetensors"]
    assert hub.file_requests("model.safetensors") == []  # the weights were listed, never fetched


def test_unknown_model(hub: LocalHub) -> None:
    with pytest.raises(NotFound):
        remote_config("Qwen/Nope", source="modelscope")
