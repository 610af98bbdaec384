"""`llmdock export k8s`, the pure parts: cluster planning and the manifests, table by table."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest
import yaml

from llmdock.errors import DoesNotFit, InvalidSpec
from llmdock.gpuinfo import parse_assume_gpus
from llmdock.k8s.plan import Cluster, for_cluster, k8s_name, pipeline_stage, plan_cluster
from llmdock.k8s.render import claim_size, dump, manifests, startup_seconds
from llmdock.planning.container import docker_run_argv
from llmdock.spec import DeploymentSpec
from tests.support.k8sshapes import GOLDENS, SHAPES, Shape
from tests.support.modelconfigs import facts

GiB = 1 << 30


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs}


def pod_specs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kinds = by_kind(docs)
    if "Deployment" in kinds:
        return [kinds["Deployment"]["spec"]["template"]["spec"]]
    lwt = kinds["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]
    return [lwt["leaderTemplate"]["spec"], lwt["workerTemplate"]["spec"]]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("qwen", "qwen"),
        ("Qwen2.5_7B", "qwen2-5-7b"),
        ("7b-model", "m-7b-model"),
        ("a" * 63, "a" * 52),
        ("--x--", "x"),
        ("___", "llmdock"),
    ],
)
def test_deployment_names_become_dns_labels(name: str, expected: str) -> None:
    assert k8s_name(name) == expected


@pytest.mark.parametrize(
    ("weights", "claim", "startup"),
    [(None, "100Gi", 1800), (int(0.9 * GiB), "2Gi", 604), (136 * GiB, "164Gi", 600 + 136 * 4)],
)
def test_claim_and_startup_budget_grow_with_the_weights(
    weights: int | None, claim: str, startup: int
) -> None:
    assert claim_size(weights) == claim
    assert startup_seconds(weights) == startup
    assert startup_seconds(weights, nodes=2) == startup + 300


# shape -> (workload kind, GPUs per pod, shm size, claim access mode, pods per copy)
EXPECTED = {
    "single-gpu": ("Deployment", 1, "16Gi", "ReadWriteOnce", 1),
    "tp8": ("Deployment", 8, "16Gi", "ReadWriteOnce", 1),
    "cpu": ("Deployment", 0, "2Gi", "ReadWriteOnce", 1),
    "multi-node": ("LeaderWorkerSet", 8, "16Gi", "ReadWriteMany", 2),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_has_claim_workload_service_gpus_shm_and_no_privilege(shape: str) -> None:
    kind, gpus, shm, access, pods = EXPECTED[shape]
    kp = SHAPES[shape].plan()
    docs = manifests(kp)
    assert [d["kind"] for d in docs] == ["PersistentVolumeClaim", kind, "Service"]
    kinds = by_kind(docs)
    assert kinds["PersistentVolumeClaim"]["spec"]["accessModes"] == [access]
    for pod in pod_specs(docs):
        (container,) = pod["containers"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": shm}
        assert volumes["models"]["persistentVolumeClaim"] == {
            "claimName": f"{kp.name}-models",
            "readOnly": True,
        }
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["shm"]["mountPath"] == "/dev/shm"
        # the weights are mounted where the argv reads them
        assert mounts["models"]["mountPath"] == kp.plan.argv[2] and mounts["models"]["readOnly"] is True
        assert container["securityContext"]["privileged"] is False
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        limits = container["resources"].get("limits", {})
        if gpus:
            assert limits["nvidia.com/gpu"] == gpus
        else:
            assert "nvidia.com/gpu" not in limits and container["resources"]["requests"]["memory"].endswith(
                "Gi"
            )
        env = {e["name"]: e for e in container["env"]}
        assert env["HF_HUB_OFFLINE"]["value"] == "1"
    if kind == "LeaderWorkerSet":
        assert kinds[kind]["spec"]["leaderWorkerTemplate"]["size"] == pods
    service = kinds["Service"]["spec"]
    assert service["type"] == "ClusterIP"
    assert service["ports"] == [
        {"name": "http", "port": kp.plan.port, "targetPort": "http", "protocol": "TCP"}
    ]


@pytest.mark.parametrize("shape", ["single-gpu", "tp8", "cpu"])
def test_the_engine_runs_the_argv_of_the_docker_runtime_with_probes_on_health(shape: str) -> None:
    kp = SHAPES[shape].plan()
    (pod,) = pod_specs(manifests(kp))
    (c,) = pod["containers"]
    assert c["command"] + c["args"] == kp.plan.argv
    docker = docker_run_argv(kp.plan.container)  # ... --entrypoint vllm IMAGE serve ...
    at = docker.index("--entrypoint")
    assert [docker[at + 1], *docker[at + 3 :]] == kp.plan.argv and docker[at + 2] == c["image"]
    assert kp.plan.argv[kp.plan.argv.index("--host") + 1] == "0.0.0.0"  # the Service reaches the pod's IP
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert startup >= startup_seconds(kp.weight_bytes)
    assert pod["enableServiceLinks"] is False  # a Service called vllm would set VLLM_PORT=tcp://…


def test_the_wiki_procedure_becomes_tp8_with_its_flags() -> None:
    argv = SHAPES["tp8"].plan().plan.argv
    for flag, value in [
        ("--tensor-parallel-size", "8"),
        ("--max-model-len", "73480"),
        ("--dtype", "bfloat16"),
        ("--limit-mm-per-prompt", '{"image":5,"video":5}'),
        ("--gpu-memory-utilization", "0.9"),
    ]:
        assert argv[argv.index(flag) + 1] == value


def test_multi_node_follows_vllms_lws_recipe() -> None:
    kp = SHAPES["multi-node"].plan()
    assert (kp.nodes, kp.gpus_per_pod) == (2, 8)
    argv = kp.plan.argv
    assert argv[argv.index("--tensor-parallel-size") + 1] == "8"
    assert argv[argv.index("--pipeline-parallel-size") + 1] == "2"
    assert argv[argv.index("--distributed-executor-backend") + 1] == "ray"
    lws = by_kind(manifests(kp))["LeaderWorkerSet"]
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    lwt = lws["spec"]["leaderWorkerTemplate"]
    assert lwt["restartPolicy"] == "RecreateGroupOnPodRestart"
    (leader,) = lwt["leaderTemplate"]["spec"]["containers"]
    (worker,) = lwt["workerTemplate"]["spec"]["containers"]
    shell, flag, script = leader["command"]
    head, serve = script.split(" && exec ")
    assert (shell, flag) == ("/bin/bash", "-c")
    assert head.endswith("multi-node-serving.sh leader --ray_cluster_size=2")
    assert yaml.safe_load(f"[{', '.join(repr(a) for a in argv)}]") == argv and serve.split() == argv
    assert worker["command"][-2:] == ["worker", "--ray_address=$(LWS_LEADER_ADDRESS)"]
    assert "startupProbe" in leader and "startupProbe" not in worker and "ports" not in worker
    for c in (leader, worker):
        env = {e["name"]: e for e in c["env"]}
        assert env["VLLM_HOST_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    selector = by_kind(manifests(kp))["Service"]["spec"]["selector"]
    assert selector == {"leaderworkerset.sigs.k8s.io/name": kp.name, "role": "leader"}


def test_secrets_come_from_a_secret_never_the_manifest() -> None:
    docs = SHAPES["single-gpu"].docs()
    text = dump(docs)
    assert "hf_secret" not in text
    (pod,) = pod_specs(docs)
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "qwen7b-env", "key": "HF_TOKEN"}},
    }
    # vLLM asks for a key once the optional Secret qwen7b-api-key exists
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True


@pytest.mark.parametrize(
    ("spec", "requests", "limits"),
    [
        ({}, None, {"nvidia.com/gpu": 1}),
        ({"gpus": "4"}, None, {"nvidia.com/gpu": 4}),
        # vLLM on the CPU: what the plan sized (weights + --kv-cache-space + engine), shm on top
        ({"gpus": "none", "kv_cache_space": 4}, {"cpu": "2", "memory": "21Gi"}, {"memory": "23Gi"}),
        # transformers on the CPU (no planner of its own): the weights and 2 GiB
        ({"gpus": "none", "engine": "transformers"}, {"cpu": "2", "memory": "17Gi"}, {"memory": "19Gi"}),
    ],
)
def test_resources(spec: dict[str, Any], requests: dict[str, str] | None, limits: dict[str, Any]) -> None:
    shape = Shape({"model": "Qwen/Qwen2.5-7B-Instruct", "name": "q", **spec}, "Qwen--Qwen2.5-7B-Instruct")
    (pod,) = pod_specs(shape.docs())
    assert pod["containers"][0]["resources"] == ({"requests": requests} if requests else {}) | {
        "limits": limits
    }


def test_an_explicit_port_is_the_engines_the_containers_and_the_services() -> None:
    shape = replace(SHAPES["tp8"], spec={**SHAPES["tp8"].spec, "port": "8001"})
    kp = shape.plan()
    docs = by_kind(manifests(kp))
    (c,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert c["args"][c["args"].index("--port") + 1] == "8001"
    assert c["ports"][0]["containerPort"] == 8001 and docs["Service"]["spec"]["ports"][0]["port"] == 8001


def test_replicas_share_the_models_claim() -> None:
    shape = replace(SHAPES["single-gpu"], spec={**SHAPES["single-gpu"].spec, "replicas": 3})
    kinds = by_kind(shape.docs())
    assert kinds["Deployment"]["spec"]["replicas"] == 3
    assert kinds["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize(
    ("spec", "notes"),
    [
        ({"runtime": "local"}, ["runs in the image img:1"]),
        ({"cpus": "0-3"}, ["--cpus 0-3 is left out"]),
        ({"network": "bridge"}, ["--network bridge is left out"]),
        ({}, []),
    ],
)
def test_what_does_not_travel_to_a_cluster_is_said(spec: dict[str, Any], notes: list[str]) -> None:
    adapted, said = for_cluster(DeploymentSpec.create("Qwen/Qwen3-8B", **spec), "img:1")
    assert (adapted.runtime, adapted.image, adapted.cpus, adapted.expose) == ("docker", "img:1", None, True)
    assert len(said) == len(notes) and all(n in s for n, s in zip(notes, said, strict=True))


def cluster(nodes: int = 1, gpus: str = "8x80GiB") -> Cluster:
    return Cluster(node_gpus=parse_assume_gpus(gpus), image="vllm/vllm-openai:v0.11.0", nodes=nodes)


@pytest.mark.parametrize(
    ("spec", "nodes", "error", "fragment"),
    [
        ({"engine": "sglang"}, 2, InvalidSpec, "vLLM's multi-node recipe"),
        ({"gpus": "none"}, 2, InvalidSpec, "--gpus none asks for none"),
        ({"extra_args": ["--pipeline-parallel-size", "4"]}, 2, InvalidSpec, "would override what --nodes 2"),
        ({"tensor_parallel_size": 16}, 2, InvalidSpec, "a node has 8"),
        ({}, 65, InvalidSpec, "outside 1-64"),
        ({"tensor_parallel_size": 3}, 1, InvalidSpec, "--tensor-parallel-size"),
    ],
)
def test_what_cannot_be_rendered_is_refused(
    spec: dict[str, Any], nodes: int, error: type[Exception], fragment: str
) -> None:
    adapted, _ = for_cluster(
        DeploymentSpec.create("Qwen/Qwen2.5-7B-Instruct", **spec), "vllm/vllm-openai:v0.11.0"
    )
    with pytest.raises(error, match=None) as e:
        plan_cluster(adapted, cluster(nodes), facts=facts("Qwen--Qwen2.5-7B-Instruct"), model_path="m")
    assert fragment in f"{e.value.message} {e.value.hint}"  # type: ignore[attr-defined]


def test_a_model_bigger_than_a_node_is_refused_with_the_nodes_hint_and_fits_on_two() -> None:
    adapted, _ = for_cluster(
        DeploymentSpec.create("Qwen/Qwen2.5-72B-Instruct", max_model_len=32768), "vllm/vllm-openai:v0.11.0"
    )
    big = facts("Qwen--Qwen2.5-72B-Instruct")
    with pytest.raises(DoesNotFit) as e:
        plan_cluster(adapted, cluster(1, "8x16GiB"), facts=big, model_path="m")
    assert "--nodes 2" in e.value.hint
    two = plan_cluster(adapted, cluster(2, "8x16GiB"), facts=big, model_path="m")
    assert two.plan.fit is not None and two.plan.fit.tp == 8  # one pipeline stage per node
    assert two.weight_bytes == big.weight_bytes  # the claim holds all the weights


def test_a_pipeline_stage_holds_its_share_of_layers_and_weights_and_all_heads() -> None:
    big = facts("Qwen--Qwen2.5-72B-Instruct")
    stage = pipeline_stage(big, 3)
    assert (stage.num_layers, stage.weight_bytes) == (-(-big.num_layers // 3), -(-big.weight_bytes // 3))
    assert (stage.num_attention_heads, stage.num_kv_heads) == (big.num_attention_heads, big.num_kv_heads)
    # TP inside a node must divide the heads: 28 heads refuse TP 8 (not a TP of 16 over both nodes)
    adapted, _ = for_cluster(DeploymentSpec.create("Qwen/Qwen2.5-7B-Instruct"), "vllm/vllm-openai:v0.11.0")
    with pytest.raises(InvalidSpec, match="tensor parallel size 8 does not divide"):
        plan_cluster(adapted, cluster(2), facts=facts("Qwen--Qwen2.5-7B-Instruct"), model_path="m")
    four = plan_cluster(
        replace(adapted, tensor_parallel_size=4),
        cluster(2),
        facts=facts("Qwen--Qwen2.5-7B-Instruct"),
        model_path="m",
    )
    assert (four.gpus_per_pod, four.nodes) == (4, 2)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_golden(shape: str) -> None:
    """tests/fixtures/k8s/SHAPE.yaml, reviewed by hand; LLMDOCK_UPDATE_GOLDENS=1 rewrites them."""
    text = dump(SHAPES[shape].docs())
    path = GOLDENS / f"{shape}.yaml"
    if os.environ.get("LLMDOCK_UPDATE_GOLDENS") == "1":
        path.write_text(text)
    assert path.read_text() == text


def test_shape_table_is_what_the_goldens_cover() -> None:
    assert {p.stem for p in GOLDENS.glob("*.yaml")} == set(SHAPES)
    assert all(isinstance(s, Shape) for s in SHAPES.values())
