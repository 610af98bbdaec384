"""vLLM on the CPU (``--gpus none``): host RAM planned like GPU memory, refused with the fix."""

from __future__ import annotations

import pytest

from llmdock.errors import DoesNotFit, InvalidSpec
from llmdock.planning.cpu import RUNTIME_BYTES, fit_cpu
from llmdock.planning.inventory import Inventory
from llmdock.planning.memory import GiB
from llmdock.planning.plan import make_plan
from llmdock.spec import DeploymentSpec
from tests.support.modelconfigs import facts

QWEN7B = "Qwen--Qwen2.5-7B-Instruct"  # 28 layers × 4 KV heads × 128 × 2 × bf16 = 57,344 B per token
PER_SEQ_32K = 57344 * 32768  # 1.75 GiB


@pytest.mark.parametrize(
    ("total", "available", "max_len", "kv", "want_kv", "want_len"),
    [
        (64, 60, None, None, 7, 32768),  # 4 full-length sequences by default
        (24, 20, None, None, 3, 32768),  # shrunk to the RAM that is left
        (64, 60, 8192, None, 2, 8192),  # a shorter context needs less
        (64, 60, 8192, 1, 1, 8192),  # as asked
        (0, 0, None, None, 7, 32768),  # RAM unknown: sized, not checked
    ],
)
def test_fit_cpu_sizes_the_kv_cache(
    total: int, available: int, max_len: int | None, kv: int | None, want_kv: int, want_len: int
) -> None:
    f = facts(QWEN7B)
    fit = fit_cpu(
        f, total_bytes=total * GiB, available_bytes=available * GiB, max_model_len=max_len, kv_cache_gib=kv
    )
    assert (fit.kv_cache_gib, fit.max_model_len) == (want_kv, want_len)
    assert fit.kv_tokens == want_kv * GiB // 57344
    assert fit.need == f.weight_bytes + want_kv * GiB + RUNTIME_BYTES
    if available:
        assert fit.need <= available * GiB


@pytest.mark.parametrize(
    ("available", "max_len", "kv", "error", "message", "hint"),
    [
        (60, None, 1, DoesNotFit, "less than one sequence of --max-model-len 32,768", "--kv-cache-space 2"),
        (60, None, 1, DoesNotFit, "holds 18,724 tokens", "--max-model-len to 18,724"),
        (16, None, None, DoesNotFit, "of host RAM on the CPU", "free host memory"),
        (20, None, 6, DoesNotFit, "KV cache 6 GiB", "lower --kv-cache-space to 3"),
        (60, 40000, None, InvalidSpec, "outside what the model supports", "at most --max-model-len 32768"),
    ],
)
def test_fit_cpu_refuses_with_the_fix(
    available: int, max_len: int | None, kv: int | None, error: type[Exception], message: str, hint: str
) -> None:
    with pytest.raises(error) as e:
        fit_cpu(
            facts(QWEN7B),
            total_bytes=64 * GiB,
            available_bytes=available * GiB,
            max_model_len=max_len,
            kv_cache_gib=kv,
        )
    assert message in e.value.message and hint in e.value.hint  # type: ignore[attr-defined]


HOST = Inventory(memory_total_bytes=64 * GiB, memory_available_bytes=60 * GiB)


def cpu_plan(inv: Inventory = HOST, strict: bool = True, **kw: object):  # type: ignore[no-untyped-def]
    spec = DeploymentSpec.create("/m/Qwen2.5-7B-Instruct", engine="vllm", gpus="none", **kw)  # type: ignore[arg-type]
    return make_plan(
        spec,
        inv,
        model_dir="/m/Qwen2.5-7B-Instruct",
        image="llmdock/engine-vllm:0.32.0-cpu",
        port_range=(8001, 8999),
        engine_version="0.32.0",
        facts=facts(QWEN7B),
        strict=strict,
    )


def test_vllm_on_the_cpu_gets_its_platform_and_kv_budget() -> None:
    p = cpu_plan(kv_cache_space=3)
    assert p.gpus == () and p.container.gpu_ids == () and p.device == "cpu"
    assert p.container.env["VLLM_TARGET_DEVICE"] == "cpu"
    assert p.container.env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert "--gpu-memory-utilization" not in p.argv  # on the CPU vLLM would take it of all host RAM
    assert p.argv[p.argv.index("--max-model-len") + 1] == "32768"
    fit = p.to_dict()["fit"]
    assert fit["device"] == "cpu" and fit["kv_cache_space_gib"] == 3
    assert fit["host_memory"]["need"] == p.cpu_fit.need  # type: ignore[union-attr]


def test_cpu_plan_refusals_are_problems_in_a_dry_run() -> None:
    with pytest.raises(DoesNotFit):
        cpu_plan(Inventory(memory_total_bytes=24 * GiB, memory_available_bytes=8 * GiB))
    dry = cpu_plan(Inventory(memory_total_bytes=24 * GiB, memory_available_bytes=8 * GiB), strict=False)
    assert any("host RAM" in x for x in dry.blocking)
    assert dry.container.env["VLLM_CPU_KVCACHE_SPACE"] == "1"  # a stand-in, so the command still shows


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"gpu_memory_utilization": 0.5}, "no GPU to apply to"),
        ({"engine": "sglang"}, "needs at least one GPU"),
    ],
)
def test_cpu_plan_refuses_gpu_only_settings(kw: dict[str, object], message: str) -> None:
    spec = DeploymentSpec.create("/m/x", gpus="none", **kw)  # type: ignore[arg-type]
    with pytest.raises(InvalidSpec, match=message):
        make_plan(spec, HOST, model_dir="/m/x", image="i", port_range=(8001, 8999))


def test_kv_cache_space_is_for_the_cpu_only() -> None:
    from llmdock.planning.inventory import Gpu

    spec = DeploymentSpec.create("/m/x", gpus="all", kv_cache_space=2)
    inv = Inventory(gpus=(Gpu(0),), gpu_runtime=True)
    with pytest.raises(InvalidSpec, match="--kv-cache-space sizes the KV cache of vLLM on the CPU"):
        make_plan(spec, inv, model_dir="/m/x", image="i", port_range=(8001, 8999))


def test_gpu_plans_always_pass_the_fraction_they_assumed() -> None:
    from llmdock.planning.inventory import Gpu

    spec = DeploymentSpec.create("/m/x", gpus="all")
    p = make_plan(
        spec,
        Inventory(gpus=(Gpu(0),), gpu_runtime=True),
        model_dir="/m/x",
        image="i",
        port_range=(8001, 8999),
    )
    assert p.argv[p.argv.index("--gpu-memory-utilization") + 1] == "0.9"


@pytest.mark.parametrize(("gib", "want"), [(80, "0.736"), (24, None)])
def test_sglang_fraction_is_sized_by_the_assigned_gpus_memory(gib: int, want: str | None) -> None:
    from llmdock.gpuinfo import parse_assume_gpus

    spec = DeploymentSpec.create("/m/x", engine="sglang", gpus="all")
    inv = Inventory(gpus=parse_assume_gpus(f"1x{gib}GiB"), gpu_runtime=True)
    p = make_plan(spec, inv, model_dir="/m/x", image="i", port_range=(8001, 8999), engine_version="0.5.4")
    fraction = p.argv[p.argv.index("--mem-fraction-static") + 1]
    unknown = make_plan(
        spec,
        Inventory(gpus=(inv.gpus[0].__class__(0),), gpu_runtime=True),
        model_dir="/m/x",
        image="i",
        port_range=(8001, 8999),
        engine_version="0.5.4",
    )
    assert unknown.argv[unknown.argv.index("--mem-fraction-static") + 1] == "0.78"  # SGLang's own fallback
    assert float(fraction) < 0.9 and (want is None or fraction == want)


@pytest.mark.parametrize(
    ("text", "want"),
    [("0-3", (0, 1, 2, 3)), ("0,2,4-5", (0, 2, 4, 5)), (" 7 ", (7,)), ("1,1", (1,))],
)
def test_parse_cpus(text: str, want: tuple[int, ...]) -> None:
    from llmdock.spec import parse_cpus

    assert parse_cpus(text) == want


@pytest.mark.parametrize("text", ["", "a", "0-", "3-1", "0;1", "-1"])
def test_parse_cpus_refuses(text: str) -> None:
    from llmdock.spec import parse_cpus

    with pytest.raises(InvalidSpec, match="--cpus"):
        parse_cpus(text)


def test_cpus_bind_vllms_threads_and_the_container() -> None:
    from llmdock.planning.container import docker_run_argv

    inv = Inventory(memory_total_bytes=64 * GiB, memory_available_bytes=60 * GiB, cpus=tuple(range(8)))
    p = cpu_plan(inv, cpus="2-5")
    assert p.container.env["VLLM_CPU_OMP_THREADS_BIND"] == "2-5" and p.container.cpuset_cpus == "2-5"
    argv = docker_run_argv(p.container)
    assert argv[argv.index("--cpuset-cpus") + 1] == "2-5"
    with pytest.raises(InvalidSpec, match="CPU 8, 9, which this host does not have") as e:
        cpu_plan(inv, cpus="6-9")
    assert "0-7" in e.value.hint
    assert "VLLM_CPU_OMP_THREADS_BIND" not in cpu_plan(inv).container.env  # vLLM binds by itself


def test_transformers_on_a_gpu_takes_the_roomiest_and_refuses_weights_that_cannot_fit() -> None:
    from llmdock.errors import DoesNotFit
    from llmdock.planning.inventory import Gpu

    gpus = (
        Gpu(0, total_bytes=80 * GiB, free_bytes=10 * GiB),
        Gpu(1, total_bytes=80 * GiB, free_bytes=70 * GiB),
    )
    inv = Inventory(gpus=gpus, gpu_runtime=True)
    spec = DeploymentSpec.create("/m/Qwen2.5-7B-Instruct", engine="transformers", gpus="auto")
    kw: dict[str, object] = dict(model_dir="/m/Qwen2.5-7B-Instruct", image="i", port_range=(8001, 8999))
    p = make_plan(spec, inv, facts=facts(QWEN7B), **kw)  # type: ignore[arg-type]
    assert p.gpus == (1,)
    with pytest.raises(DoesNotFit, match=r"do not fit on GPU 0, which has 10\.0 GiB free"):
        make_plan(
            DeploymentSpec.create("/m/x", engine="transformers", gpus="device=0"),
            inv,
            facts=facts(QWEN7B),
            **kw,
        )  # type: ignore[arg-type]
