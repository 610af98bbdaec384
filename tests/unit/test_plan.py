from __future__ import annotations

import json

import pytest

from llmdock.errors import ImageMissing, InvalidSpec, RuntimeUnavailable
from llmdock.planning.container import docker_run_argv
from llmdock.planning.inventory import Gpu, Inventory
from llmdock.planning.plan import make_plan
from llmdock.spec import DeploymentSpec
from tests.support.procedure import IMAGE, MODEL, procedure_spec

GPU8 = Inventory(gpus=tuple(Gpu(i) for i in range(8)), gpu_runtime=True)


def plan(spec: DeploymentSpec, inv: Inventory = GPU8, **kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = dict(
        model_dir=MODEL, image=IMAGE, port_range=(8001, 8999), engine_version="0.7.3"
    )
    args.update(kw)
    return make_plan(spec, inv, **args)  # type: ignore[arg-type]


def test_procedure_container() -> None:
    p = plan(procedure_spec())
    c = p.container.to_dict()
    assert p.gpus == tuple(range(8)) and p.port == 8001 and p.tensor_parallel_size == 8
    assert c["device_requests"] == [
        {"driver": "nvidia", "device_ids": [str(i) for i in range(8)], "capabilities": [["gpu"]]}
    ]
    assert c["ipc_mode"] == "host" and c["network_mode"] == "host" and c["detach"] is True
    assert c["privileged"] is False
    assert c["mounts"] == [{"source": MODEL, "target": "/work/Qwen2.5-VL-72B-Instruct", "read_only": True}]
    assert c["entrypoint"] + c["command"] == p.argv
    assert c["restart_policy"]["MaximumRetryCount"] > 0
    assert c["log_config"]["type"] == "json-file" and c["log_config"]["config"]["max-size"]
    labels = c["labels"]
    assert labels["io.llmdock.name"] == "qwen2.5-vl-72b" and labels["io.llmdock.port"] == "8001"
    assert labels["io.llmdock.gpus"] == "0,1,2,3,4,5,6,7" and labels["io.llmdock.spec-hash"] == p.spec_hash
    assert json.loads(labels["io.llmdock.spec"])["max_model_len"] == 73480


def test_docker_run_line_is_equivalent() -> None:
    argv = docker_run_argv(plan(procedure_spec()).container)
    assert argv[:5] == ["docker", "run", "-d", "--name", "qwen2.5-vl-72b"]
    assert '"device=0,1,2,3,4,5,6,7"' in argv and "--ipc=host" in argv and "--network=host" in argv
    assert f"{MODEL}:/work/Qwen2.5-VL-72B-Instruct:ro" in argv
    i = argv.index(IMAGE)
    assert argv[i - 2 : i] == ["--entrypoint", "vllm"]
    assert argv[i + 1 :][:2] == ["serve", "/work/Qwen2.5-VL-72B-Instruct"]


def test_tp_defaults_to_gpu_count_and_must_fit() -> None:
    assert plan(procedure_spec(tensor_parallel_size=None, gpus="0,1")).tensor_parallel_size == 2
    with pytest.raises(InvalidSpec, match="needs 8 GPUs but 2"):
        plan(procedure_spec(gpus="0,1"))


def test_no_nvidia_runtime_names_the_toolkit() -> None:
    inv = Inventory(gpus=GPU8.gpus, gpu_runtime=False)
    with pytest.raises(RuntimeUnavailable) as e:
        plan(procedure_spec(), inv)
    assert "nvidia-container-toolkit" in e.value.hint


def test_missing_image() -> None:
    with pytest.raises(ImageMissing) as e:
        plan(procedure_spec(), image_present=False)
    assert "docker pull" in e.value.hint and "docker load" in e.value.hint


def test_dry_run_renders_despite_problems() -> None:
    p = plan(procedure_spec(gpus="0,9"), Inventory(), image_present=False, strict=False)
    assert p.gpus == (0, 9)
    assert any("NVIDIA runtime" in x for x in p.problems)
    assert any("does not exist" in x or "no GPU" in x for x in p.problems)
    assert any("not present" in x for x in p.problems)
    assert p.argv[:2] == ["vllm", "serve"]


def test_sglang_needs_gpus() -> None:
    with pytest.raises(InvalidSpec, match="needs at least one GPU"):
        plan(
            procedure_spec(engine="sglang", gpus="none", tensor_parallel_size=None, limit_mm_per_prompt=None)
        )


def test_cpu_engine_needs_no_gpu_runtime() -> None:
    spec = DeploymentSpec.create("/m/tiny", engine="transformers", network="bridge")
    p = plan(spec, Inventory(), model_dir="/m/tiny")
    assert p.gpus == () and p.container.gpu_ids == ()
    assert p.container.ports == {p.port: p.port}
    assert p.served_name == "/work/tiny"


# ---- with the memory planner (model facts from the real fixture configs) -----------------------------
def gib_gpus(n: int, gib: int = 80) -> Inventory:
    from llmdock.gpuinfo import parse_assume_gpus

    return Inventory(gpus=parse_assume_gpus(f"{n}x{gib}GiB"), gpu_runtime=True)


def test_procedure_fits_on_eight_80g_gpus_and_keeps_its_command() -> None:
    from tests.support.modelconfigs import qwen25_vl_72b

    p = plan(procedure_spec(), gib_gpus(8), facts=qwen25_vl_72b())
    assert p.fit is not None and p.fit.tp == 8 and p.fit.max_model_len == 73480
    assert p.argv[p.argv.index("--max-model-len") + 1] == "73480"
    assert p.to_dict()["fit"]["concurrent_seqs"] > 1


def test_procedure_refused_on_two_gpus_with_alternatives() -> None:
    from llmdock.errors import DoesNotFit
    from tests.support.modelconfigs import qwen25_vl_72b

    spec = procedure_spec(tensor_parallel_size=None)
    with pytest.raises(DoesNotFit) as e:
        plan(spec, gib_gpus(2), facts=qwen25_vl_72b())
    assert e.value.alternatives and "--gpus" in e.value.hint
    dry = plan(spec, gib_gpus(2), facts=qwen25_vl_72b(), strict=False)
    assert any("does not fit" in x for x in dry.problems)


def test_auto_gpus_takes_the_fewest_that_fit() -> None:
    from tests.support.modelconfigs import facts

    spec = DeploymentSpec.create("/m/Qwen2.5-7B-Instruct", engine="vllm")
    p = plan(spec, gib_gpus(8), model_dir="/m/Qwen2.5-7B-Instruct", facts=facts("Qwen--Qwen2.5-7B-Instruct"))
    assert p.gpus == (0,) and p.tensor_parallel_size is None
    assert p.argv[p.argv.index("--max-model-len") + 1] == "32768"  # the model's own limit fits


def test_auto_gpus_skips_gpus_held_by_other_deployments() -> None:
    from llmdock.planning.inventory import Holding
    from tests.support.modelconfigs import facts

    inv = Inventory(gpus=gib_gpus(4).gpus, gpu_runtime=True, holdings=(Holding("other", 9000, (0, 1)),))
    spec = DeploymentSpec.create("/m/Qwen2.5-7B-Instruct", engine="vllm")
    p = plan(spec, inv, model_dir="/m/Qwen2.5-7B-Instruct", facts=facts("Qwen--Qwen2.5-7B-Instruct"))
    assert p.gpus == (2,)


def test_auto_without_facts_takes_one_gpu() -> None:
    spec = DeploymentSpec.create("/m/x", engine="vllm")
    assert plan(spec, gib_gpus(8), model_dir="/m/x").gpus == (0,)
