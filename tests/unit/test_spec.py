from __future__ import annotations

import pytest

from llmdock.errors import InvalidSpec
from llmdock.spec import DeploymentSpec, default_name, parse_limit_mm, parse_port

M = "/data/models/Qwen2.5-VL-72B-Instruct"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("image=5,video=5", {"image": 5, "video": 5}),
        (" image = 2 ", {"image": 2}),
        ('{"image": 5, "video": 5}', {"image": 5, "video": 5}),
        ("", None),
        (None, None),
    ],
)
def test_limit_mm_parses_both_syntaxes(text: str | None, expected: dict[str, int] | None) -> None:
    assert parse_limit_mm(text) == expected


@pytest.mark.parametrize("text", ["image", "image=x", "image=-1", "{bad json", "[1,2]", "IMAGE=1", "../x=1"])
def test_limit_mm_rejects_garbage(text: str) -> None:
    with pytest.raises(InvalidSpec) as e:
        parse_limit_mm(text)
    assert "image=5,video=5" in e.value.hint


@pytest.mark.parametrize(
    ("text", "expected"), [("auto", None), ("AUTO", None), ("8001", 8001), (65535, 65535)]
)
def test_port(text: str | int, expected: int | None) -> None:
    assert parse_port(text) == expected


@pytest.mark.parametrize("text", ["0", "65536", "-1", "eighty", "80.5"])
def test_port_rejects(text: str) -> None:
    with pytest.raises(InvalidSpec):
        parse_port(text)


@pytest.mark.parametrize(
    ("model", "name"),
    [(M, "qwen2.5-vl-72b-instruct"), ("/m/Foo Bar!/", "foo-bar"), ("/", "model"), ("rel/x_y.z", "x_y.z")],
)
def test_default_name(model: str, name: str) -> None:
    assert default_name(model) == name


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"name": "../etc"}, "name '../etc' is not allowed"),
        ({"name": "a/b"}, "not allowed"),
        ({"name": "-x"}, "not allowed"),
        ({"name": "x" * 64}, "not allowed"),
        ({"engine": "ollama"}, "unknown engine"),
        ({"network": "none"}, "unknown network"),
        ({"dtype": "int3"}, "unknown dtype"),
        ({"tensor_parallel_size": 0}, "at least 1"),
        ({"gpu_memory_utilization": 1.5}, "outside (0, 1]"),
        ({"gpu_memory_utilization": 0.0}, "outside (0, 1]"),
        ({"max_model_len": 0}, "positive"),
        ({"env": ["NOVALUE"]}, "KEY=VALUE"),
        ({"env": ["1BAD=x"]}, "KEY=VALUE"),
        ({"gpus": "0,0"}, "twice"),
        ({"gpus": "gpu0"}, "not understood"),
        ({"gpus": "0"}, "asks for no GPU"),
        ({"served_model_name": " "}, "empty"),
    ],
)
def test_spec_rejects_with_a_hint(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidSpec) as e:
        DeploymentSpec.create(M, **kwargs)  # type: ignore[arg-type]
    assert fragment in e.value.message
    assert e.value.hint


def test_hash_is_stable_and_sensitive() -> None:
    a = DeploymentSpec.create(M, port="8001", env=["A=1", "B=2"])
    b = DeploymentSpec.create(M, port=8001, env=["B=2", "A=1"])
    c = DeploymentSpec.create(M, port=8002)
    assert a.hash() == b.hash()
    assert a.hash() != c.hash()
    assert DeploymentSpec.from_dict(a.to_dict()) == a


def test_engine_defaults() -> None:
    assert DeploymentSpec.create(M).gpus == "auto"
    assert DeploymentSpec.create(M, engine="transformers").gpus == "none"
