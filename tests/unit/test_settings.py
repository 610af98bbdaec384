from __future__ import annotations

from pathlib import Path

import pytest

from llmdock import settings
from llmdock.errors import ConfigError


def test_precedence_default_file_env(tmp_path: Path) -> None:
    env = {"LLMDOCK_HOME": str(tmp_path)}
    assert settings.load(env).get("image.vllm") == settings.KEYS["image.vllm"].default
    settings.write_file(
        settings.config_path(env), {"image.vllm": "qwenllm/qwenvl:2.5-cu121", "port_range": "9000-9100"}
    )
    s = settings.load(env)
    assert s.image("vllm") == "qwenllm/qwenvl:2.5-cu121" and s.sources["image.vllm"] == "config file"
    assert s.port_range == (9000, 9100)
    s = settings.load({**env, "LLMDOCK_IMAGE_VLLM": "mine:1"})
    assert s.image("vllm") == "mine:1" and s.sources["image.vllm"] == "env LLMDOCK_IMAGE_VLLM"
    assert s.models_dir == tmp_path / "models" and s.db_path == tmp_path / "state.db"


def test_home_defaults_to_xdg(tmp_path: Path) -> None:
    assert settings.home({"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "llmdock"


def test_round_trip_quotes(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    settings.write_file(path, {"models_dir": 'C:\\we"ird', "image.sglang": "x:y"})
    assert settings.read_file(path) == {"models_dir": 'C:\\we"ird', "image.sglang": "x:y"}


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("models_dir = [", "not valid TOML"),
        ('colour = "red"', "unknown setting"),
        ('port_range = "9-1"', "port range"),
    ],
)
def test_bad_file_is_a_clear_error(tmp_path: Path, content: str, fragment: str) -> None:
    (tmp_path / "config.toml").write_text(content)
    with pytest.raises(ConfigError) as e:
        settings.load({"LLMDOCK_HOME": str(tmp_path)})
    assert fragment in e.value.message and e.value.hint


@pytest.mark.parametrize("value", ["8001", "a-b", "80-90", "9000-8000", "1000-70000"])
def test_bad_port_range(value: str) -> None:
    with pytest.raises(ConfigError):
        settings.validate("port_range", value)


def test_bad_env_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        settings.load({"LLMDOCK_HOME": str(tmp_path), "LLMDOCK_PORT_RANGE": "x"})
