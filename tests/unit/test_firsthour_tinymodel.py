"""The tiny model needs torch, which the base install does not have: built in this process it says
which extra to install; built with an engine environment's Python, a failure says what to redo."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from llmdock.demo.tinymodel import ensure_tiny_model
from llmdock.errors import LlmdockError


def test_in_process_without_torch_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    with pytest.raises(LlmdockError) as e:
        ensure_tiny_model(tmp_path / "tiny")
    assert "torch" in e.value.message and "pip install 'llmdock[demo]'" in e.value.hint
    assert not (tmp_path / "tiny").exists()


def test_a_broken_engine_python_is_one_error(tmp_path: Path) -> None:
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named torch' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(LlmdockError) as e:
        ensure_tiny_model(tmp_path / "tiny", python=str(broken))
    assert "No module named torch" in e.value.message and "llmdock env rm llmdock-demo" in e.value.hint
    assert not (tmp_path / "tiny").exists()


def test_an_existing_model_is_not_rebuilt(tmp_path: Path) -> None:
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    assert ensure_tiny_model(model, python="/nonexistent/python") == model
