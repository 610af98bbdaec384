"""The engine version table and what vllm.py / sglang.py render from it, per claimed release.

The table itself is checked against each release's real parser by scripts/check-engine-argv; these
tests pin what llmdock renders and refuses for each version.
"""

from __future__ import annotations

from typing import Any

import pytest

from llmdock.engines import Launch, get_engine, versions
from llmdock.engines.sglang import kv_cache_dtype, memory_fraction
from llmdock.errors import InvalidSpec
from llmdock.spec import DeploymentSpec
from tests.support.procedure import procedure_spec


def launch(spec: DeploymentSpec, version: str | None, tp: int | None = 8, util: float | None = 0.9) -> Launch:
    return Launch(
        spec, "/work/m", spec.port or 8000, tp, version, spec.max_model_len, util, spec.kv_cache_dtype
    )


def value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize(
    ("version", "limit"),
    [
        ("0.6.3", "image=5,video=5"),
        ("0.7.2", "image=5,video=5"),
        ("0.8.4", "image=5,video=5"),
        ("0.8.5", '{"image":5,"video":5}'),
        ("0.11.0", '{"image":5,"video":5}'),
        ("0.32.0", '{"image":5,"video":5}'),
        ("0.34.0", '{"image":5,"video":5}'),
        (None, '{"image":5,"video":5}'),
    ],
)
def test_vllm_renders_the_procedure_per_version(version: str | None, limit: str) -> None:
    argv = get_engine("vllm").argv(launch(procedure_spec(), version))
    assert value(argv, "--limit-mm-per-prompt") == limit
    # always passed, even at 0.9: 0.20 moved vLLM's default to 0.92 and 0.34 has none
    assert value(argv, "--gpu-memory-utilization") == "0.9"
    assert value(argv, "--tensor-parallel-size") == "8"


def test_vllm_passes_every_served_name() -> None:
    spec = DeploymentSpec.create("Qwen/Qwen3-8B", name="q3", served_model_name="qwen")
    argv = get_engine("vllm").argv(launch(spec, "0.32.0"))
    i = argv.index("--served-model-name")
    assert argv[i + 1 : i + 4] == ["qwen", "q3", "Qwen/Qwen3-8B"]
    sglang = DeploymentSpec.create("Qwen/Qwen3-8B", engine="sglang", name="q3", served_model_name="qwen")
    argv = get_engine("sglang").argv(launch(sglang, "0.5.4"))
    i = argv.index("--served-model-name")
    assert argv[i + 1] == "qwen" and argv[i + 2].startswith("--")  # SGLang takes one


@pytest.mark.parametrize(
    ("engine", "version", "flag", "up_option"),
    [
        ("vllm", "0.6.3", "-tp", "--tensor-parallel-size"),
        ("vllm", "0.6.3", "--model", "MODEL"),
        ("vllm", "0.32.0", "--device-memory-utilization", "--gpu-memory-utilization"),
        ("vllm", "0.34.0", "--device-memory-utilization", "--gpu-memory-utilization"),
        ("sglang", "0.5.4", "--tensor-parallel-size", "--tensor-parallel-size"),
        ("sglang", "0.5.4", "--tp-size", "--tensor-parallel-size"),
        ("sglang", "0.5.23", "--model", "MODEL"),
        ("sglang", "0.5.23", "--mem-fraction-static", "--gpu-memory-utilization"),
    ],
)
def test_owned_sets_include_aliases(engine: str, version: str, flag: str, up_option: str) -> None:
    assert versions.owned_options(engine, version)[flag] == up_option


def test_device_memory_alias_is_owned_only_where_it_exists() -> None:
    assert "--device-memory-utilization" not in versions.owned_options("vllm", "0.11.0")
    assert "--device-memory-utilization" in versions.owned_options("vllm", "0.31.0")


@pytest.mark.parametrize(
    ("engine", "version", "extra", "up_option"),
    [
        ("sglang", "0.5.4", ["--tensor-parallel-size", "4"], "--tensor-parallel-size"),
        ("sglang", "0.5.4", ["--tp", "4"], "--tensor-parallel-size"),  # argparse abbreviation of --tp-size
        ("sglang", "0.5.23", ["--model=/elsewhere"], "MODEL"),
        ("sglang", "0.5.23", ["--mem-frac", "0.5"], "--gpu-memory-utilization"),
        ("vllm", "0.34.0", ["--device-memory-utilization", "0.5"], "--gpu-memory-utilization"),
        ("vllm", "0.6.3", ["--gpu-memory", "0.5"], "--gpu-memory-utilization"),
        ("vllm", "0.11.0", ["--max_model_len=9"], "--max-model-len"),
        ("vllm", None, ["-tp", "2"], "--tensor-parallel-size"),
    ],
)
def test_aliases_and_abbreviations_after_dashes_are_refused(
    engine: str, version: str | None, extra: list[str], up_option: str
) -> None:
    spec = DeploymentSpec.create("/m/x", engine=engine, extra_args=extra)
    with pytest.raises(InvalidSpec) as e:
        get_engine(engine).argv(launch(spec, version))
    assert "override" in e.value.message and up_option in e.value.hint


@pytest.mark.parametrize(
    ("version", "flag", "hint"),
    [
        ("0.17.0", "--disable-log-requests", "off by default there; drop it"),
        ("0.32.0", "--disable-log-requests", "off by default there; drop it"),
        ("0.7.2", "--enable-log-requests", "logs requests by default"),
        ("0.13.0", "--task", "--runner"),
        ("0.34.0", "--task=embed", "--runner"),
        ("0.6.3", "--task", "drop it"),
        ("0.8.5", "--runner", "--task"),
    ],
)
def test_flags_a_release_lacks_are_refused_with_what_to_do(version: str, flag: str, hint: str) -> None:
    spec = DeploymentSpec.create("/m/x", extra_args=[flag])
    with pytest.raises(InvalidSpec) as e:
        get_engine("vllm").argv(launch(spec, version))
    assert flag.split("=")[0] in e.value.message and version in e.value.message
    assert hint in e.value.hint


@pytest.mark.parametrize(
    ("version", "flag"),
    [
        ("0.11.0", "--disable-log-requests"),  # deprecated from 0.10.1, still parsed until 0.17
        ("0.16.0", "--disable-log-requests"),
        ("0.7.2", "--disable-log-requests"),
        ("0.11.0", "--enable-log-requests"),
        ("0.8.5", "--task"),
        ("0.12.0", "--task"),
        ("0.34.0", "--runner"),
        ("0.34.0", "--disable-log-requests"),  # 0.33 pairs --enable-x with --disable-x again
    ],
)
def test_flags_a_release_has_pass_through(version: str, flag: str) -> None:
    spec = DeploymentSpec.create("/m/x", extra_args=[flag])
    assert get_engine("vllm").argv(launch(spec, version))[-1] == flag


def test_values_after_dashes_are_not_taken_for_flags() -> None:
    spec = DeploymentSpec.create("/m/x", extra_args=["--max-num-seqs", "-1", "--swap-space", "4"])
    assert get_engine("vllm").argv(launch(spec, "0.6.3"))[-4:] == [
        "--max-num-seqs",
        "-1",
        "--swap-space",
        "4",
    ]


@pytest.mark.parametrize(
    ("given", "rendered"), [("fp8", "fp8_e4m3"), ("fp8_e5m2", "fp8_e5m2"), ("auto", "auto")]
)
def test_sglang_kv_cache_dtype_in_its_own_terms(given: str, rendered: str) -> None:
    assert kv_cache_dtype(given) == rendered
    spec = DeploymentSpec.create("/m/x", engine="sglang", kv_cache_dtype=given)
    assert value(get_engine("sglang").argv(launch(spec, "0.5.4")), "--kv-cache-dtype") == rendered


@pytest.mark.parametrize(
    ("planned", "gpu_mib", "tp", "fraction"),
    [
        (0.9, None, 1, 0.78),  # GPU size unknown: SGLang's own fallback headroom, 1 - 0.88
        (0.9, 81559, 1, 0.735),  # H100 80GB: 512 + 8192*1.5 + 256*2 + 128 = 13440 MiB
        (0.9, 143771, 8, 0.797),  # H200: 512 + 12288 + 1024 + 1024 = 14848 MiB
        (0.9, 24564, 1, 0.748),  # 24 GB: 512 + 3072 + 32 + 128 = 3744 MiB
    ],
)
def test_sglang_fraction_keeps_its_headroom_inside_the_plan(
    planned: float, gpu_mib: int | None, tp: int, fraction: float
) -> None:
    assert memory_fraction(planned, gpu_mib, tp) == fraction


def test_sglang_fraction_too_small_is_refused() -> None:
    with pytest.raises(InvalidSpec) as e:
        memory_fraction(0.15, None)
    assert "--gpu-memory-utilization" in e.value.hint


def test_sglang_renders_its_fraction() -> None:
    spec = DeploymentSpec.create("/m/x", engine="sglang")
    assert value(get_engine("sglang").argv(launch(spec, "0.5.4", tp=2)), "--mem-fraction-static") == "0.78"


@pytest.mark.parametrize(
    ("engine", "image", "assumed"),
    [
        ("vllm", "vllm/vllm-openai:v0.11.0", "0.11.0"),
        ("vllm", "vllm/vllm-openai:v0.8.5.post1", "0.8.5.post1"),
        ("vllm", "vllm/vllm-openai:v0.34.0-cu129", "0.34.0"),
        ("vllm", "qwenllm/qwenvl:2.5-cu121", "0.6.3"),
        ("sglang", "lmsysorg/sglang:v0.5.4", "0.5.4"),
        ("sglang", "lmsysorg/sglang:v0.5.4-cu129", "0.5.4"),
        ("vllm", "vllm/vllm-openai:latest", None),
        ("vllm", "registry.local:5000/team/vllm:prod", None),
        ("sglang", "vllm/vllm-openai:v0.11.0", None),
        ("vllm", "lmsysorg/sglang:v0.5.4", None),
    ],
)
def test_assumed_version_from_image(engine: str, image: str, assumed: str | None) -> None:
    found = versions.assumed_version(engine, image)
    assert (found[0] if found else None) == assumed
    if found:
        assert found[1]  # says why


def test_seed_image_renders_the_old_syntax() -> None:
    """The wiki's image cannot always be probed (dry run); its assumed vLLM takes key=value."""
    assumed = versions.assumed_version("vllm", "qwenllm/qwenvl:2.5-cu121")
    assert assumed is not None
    argv = get_engine("vllm").argv(launch(procedure_spec(), assumed[0]))
    assert value(argv, "--limit-mm-per-prompt") == "image=5,video=5"


@pytest.mark.parametrize(
    ("version", "fraction"),
    [("0.6.3", 0.9), ("0.11.0", 0.9), ("0.19.0", 0.9), ("0.20.0", 0.92), ("0.32.0", 0.92), ("0.34.0", None)],
)
def test_default_memory_fraction(version: str, fraction: float | None) -> None:
    assert versions.default_memory_fraction("vllm", version) == fraction


@pytest.mark.parametrize(
    ("version", "name"),
    [
        ("0.6.3", "vllm:gpu_cache_usage_perc"),
        ("0.9.2", "vllm:kv_cache_usage_perc"),
        (None, "vllm:kv_cache_usage_perc"),
    ],
)
def test_cache_usage_metric_name(version: str | None, name: str) -> None:
    assert versions.metric_name("vllm", version, "vllm:kv_cache_usage_perc") == name
    assert versions.metric_name("vllm", version, "vllm:gpu_cache_usage_perc") == name


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("0.8.5.post1", (0, 8, 5)),
        ("v0.11.0", (0, 11, 0)),
        ("0.10", (0, 10, 0)),
        ("", None),
        (None, None),
        ("x", None),
    ],
)
def test_parse_version(text: str | None, parsed: tuple[int, ...] | None) -> None:
    assert versions.parse_version(text) == parsed


def test_every_claimed_release_has_an_owned_row_per_destination() -> None:
    for engine, claimed in versions.CLAIMED.items():
        for version in claimed:
            dests: dict[str, Any] = {}
            for o in versions.options(engine, version):
                assert o.dest not in dests, f"{engine} {version}: two rows for {o.dest}"
                dests[o.dest] = o
            assert len(dests) == len({o.dest for o in versions.OPTIONS[engine]})
