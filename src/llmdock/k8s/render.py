"""Kubernetes manifests of a :class:`~llmdock.k8s.plan.ClusterPlan`, as plain data. Pure.

For one node per copy: a PersistentVolumeClaim for the models, a Deployment and a ClusterIP Service.
For several: a LeaderWorkerSet (``leaderworkerset.x-k8s.io/v1``) in place of the Deployment, after
vLLM's LWS recipe: the leader starts the Ray head and waits for the group (the vLLM image's
``examples/online_serving/multi-node-serving.sh``), then runs ``vllm serve … --distributed-executor-backend
ray``; each worker joins the head at ``$(LWS_LEADER_ADDRESS)``; the Service selects the leader.

Each engine container runs the argv the Docker runtime would run (``command`` + ``args`` =
``entrypoint`` + ``command``), with the weights from the claim mounted read-only where the argv reads
them, a memory-backed ``/dev/shm``, ``nvidia.com/gpu`` limits, probes on the engine's health path and
a start-up budget that grows with the weights. Never privileged; secret-looking variables (``HF_TOKEN``)
come from a Secret, never from the manifest; vLLM requires an API key when the optional Secret
``NAME-api-key`` exists.

Example::

    docs = manifests(cluster_plan)          # [PersistentVolumeClaim, Deployment, Service]
    text = dump(docs)                       # one YAML stream, for `kubectl apply -f`
"""

from __future__ import annotations

import math
import shlex
from typing import Any

from llmdock.engines import get_engine
from llmdock.k8s.plan import ClusterPlan
from llmdock.spec import SECRET_KEY_RE

GiB = 1 << 30
MODELS_VOLUME = "models"
SHM_VOLUME = "shm"
GPU_SHM = "16Gi"  # NCCL and vLLM's workers share tensors through /dev/shm (the recipe's 15Gi, rounded)
CPU_SHM = "2Gi"
# Start-up: compile, profile and graph capture take minutes on their own; weights load from network
# storage at a few hundred MiB/s. Unknown weights get half an hour, as `up` waits an hour at most.
STARTUP_FIXED_S = 600
STARTUP_S_PER_GIB = 4
STARTUP_UNKNOWN_S = 1800
STARTUP_PERIOD_S = 10
MULTI_NODE_SCRIPT = "/vllm-workspace/examples/online_serving/multi-node-serving.sh"
MANAGED_BY = {"app.kubernetes.io/managed-by": "llmdock"}


def manifests(
    kp: ClusterPlan, *, storage: str | None = None, storage_class: str | None = None
) -> list[dict[str, Any]]:
    """The objects to ``kubectl apply``: claim first (pods wait for it), then the workload, then the Service."""
    workload = leader_worker_set(kp) if kp.multi_node else deployment(kp)
    return [claim(kp, storage=storage, storage_class=storage_class), workload, service(kp)]


def dump(docs: list[dict[str, Any]]) -> str:
    """One YAML stream (``---`` between documents), keys in the order they were built."""
    import yaml

    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)


# ---- objects ------------------------------------------------------------------------------------------
def claim(kp: ClusterPlan, *, storage: str | None = None, storage_class: str | None = None) -> dict[str, Any]:
    """The models volume: room for the weights and a fifth more (a copy lands beside the old one on an
    update); shared by every pod when a copy spans nodes or there are several copies."""
    many = kp.multi_node or kp.plan.spec.replicas > 1
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany" if many else "ReadWriteOnce"],
        "resources": {"requests": {"storage": storage or claim_size(kp.weight_bytes)}},
    }
    if storage_class:
        spec["storageClassName"] = storage_class
    return _object(kp, "v1", "PersistentVolumeClaim", f"{kp.name}-models", spec)


def deployment(kp: ClusterPlan) -> dict[str, Any]:
    labels = _labels(kp)
    spec = {
        "replicas": kp.plan.spec.replicas,
        "selector": {"matchLabels": {"app.kubernetes.io/name": kp.name}},
        # No surge: a new pod would wait for GPUs the old one holds.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
        "template": {"metadata": {"labels": labels}, "spec": _pod_spec(kp, engine_container(kp))},
    }
    return _object(kp, "apps/v1", "Deployment", kp.name, spec)


def leader_worker_set(kp: ClusterPlan) -> dict[str, Any]:
    labels = _labels(kp)
    group = {
        "size": kp.nodes,
        # One pod lost breaks the Ray group: start the whole group again.
        "restartPolicy": "RecreateGroupOnPodRestart",
        "leaderTemplate": {
            "metadata": {"labels": {**labels, "role": "leader"}},
            "spec": _pod_spec(kp, leader_container(kp)),
        },
        "workerTemplate": {
            "metadata": {"labels": {**labels, "role": "worker"}},
            "spec": _pod_spec(kp, worker_container(kp)),
        },
    }
    spec = {"replicas": kp.plan.spec.replicas, "leaderWorkerTemplate": group}
    return _object(kp, "leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", kp.name, spec)


def service(kp: ClusterPlan) -> dict[str, Any]:
    selector = (
        {"leaderworkerset.sigs.k8s.io/name": kp.name, "role": "leader"}
        if kp.multi_node
        else {"app.kubernetes.io/name": kp.name}
    )
    ports = [{"name": "http", "port": kp.plan.port, "targetPort": "http", "protocol": "TCP"}]
    return _object(kp, "v1", "Service", kp.name, {"type": "ClusterIP", "selector": selector, "ports": ports})


# ---- containers ---------------------------------------------------------------------------------------
def engine_container(kp: ClusterPlan) -> dict[str, Any]:
    """The engine as the Docker runtime runs it, with probes on its health path."""
    c = kp.plan.container
    return {**_container_base(kp, "engine", [*c.entrypoint], [*c.command]), **_probes(kp)}


def leader_container(kp: ClusterPlan) -> dict[str, Any]:
    """The Ray head, waiting for the whole group, then the engine (the recipe's ``&&``, with an exec
    so the engine is the container's main process and gets its signals)."""
    head = ["bash", MULTI_NODE_SCRIPT, "leader", f"--ray_cluster_size={kp.nodes}"]
    script = f"{shlex.join(head)} && exec {shlex.join(kp.plan.argv)}"
    return {**_container_base(kp, "leader", ["/bin/bash", "-c", script]), **_probes(kp)}


def worker_container(kp: ClusterPlan) -> dict[str, Any]:
    """A Ray worker joining the head; Kubernetes fills ``$(LWS_LEADER_ADDRESS)``, which LWS sets."""
    join = ["bash", MULTI_NODE_SCRIPT, "worker", "--ray_address=$(LWS_LEADER_ADDRESS)"]
    return _container_base(kp, "worker", join, serves=False)


def _container_base(
    kp: ClusterPlan, name: str, command: list[str], args: list[str] | None = None, *, serves: bool = True
) -> dict[str, Any]:
    c = kp.plan.container
    mount = c.mounts[0]
    ports = [{"name": "http", "containerPort": kp.plan.port, "protocol": "TCP"}] if serves else []
    return {
        "name": name,
        "image": c.image,
        "command": command,
        **({"args": args} if args else {}),
        **({"ports": ports} if ports else {}),
        "env": env(kp),
        "resources": resources(kp),
        "volumeMounts": [
            {
                "name": MODELS_VOLUME,
                "mountPath": mount.target,
                "subPath": kp.model_sub_path,
                "readOnly": True,
            },
            {"name": SHM_VOLUME, "mountPath": "/dev/shm"},
        ],
        # As under Docker: never privileged, the runtime's default capabilities and seccomp profile
        # (engine images run as root; dropping every capability breaks reading weights owned by others).
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def env(kp: ClusterPlan) -> list[dict[str, Any]]:
    """The container's variables as ``up`` sets them; secret-looking ones from the Secret ``NAME-env``
    (create it with ``kubectl create secret generic NAME-env --from-literal=HF_TOKEN=…``)."""
    out: list[dict[str, Any]] = []
    for key, value in sorted(kp.plan.container.env.items()):
        if SECRET_KEY_RE.search(key):
            out.append({"name": key, "valueFrom": {"secretKeyRef": {"name": f"{kp.name}-env", "key": key}}})
        else:
            out.append({"name": key, "value": value})
    if kp.multi_node:  # Ray and vLLM address each node by the pod's own IP (run_cluster.sh's VLLM_HOST_IP)
        out.append({"name": "VLLM_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    key_env = get_engine(kp.plan.spec.engine).api_key_env  # vLLM: VLLM_API_KEY, `--api-key`'s default
    if key_env is not None and key_env not in kp.plan.container.env:
        ref = {"name": f"{kp.name}-api-key", "key": "api-key", "optional": True}
        out.append({"name": key_env, "valueFrom": {"secretKeyRef": ref}})
    return out


def resources(kp: ClusterPlan) -> dict[str, Any]:
    """GPUs as limits (the device plugin's extended resource); on the CPU, the RAM the plan needs."""
    if kp.gpus_per_pod:
        return {"limits": {"nvidia.com/gpu": kp.gpus_per_pod}}
    fit = kp.plan.cpu_fit
    if fit is not None:  # vLLM on the CPU: weights, KV budget and engine, as the plan sized them
        need = math.ceil(fit.need / GiB)
    else:  # the weights (4 GiB when unknown here), a KV budget if one is set, 2 GiB for the engine
        kv = int(kp.plan.container.env.get("VLLM_CPU_KVCACHE_SPACE", "0"))
        need = (math.ceil(kp.weight_bytes / GiB) if kp.weight_bytes else 4) + kv + 2
    shm = int(CPU_SHM.removesuffix("Gi"))  # a memory-backed emptyDir counts against the limit
    return {
        "requests": {"cpu": "2", "memory": f"{need}Gi"},
        "limits": {"memory": f"{need + shm}Gi"},
    }


def claim_size(weight_bytes: int | None) -> str:
    """``1.2 x`` the weights in whole GiB; 100Gi when the weights are not known here."""
    if weight_bytes is None:
        return "100Gi"
    return f"{max(1, math.ceil(weight_bytes * 1.2 / GiB))}Gi"


def startup_seconds(weight_bytes: int | None, nodes: int = 1) -> int:
    """How long the start-up probe lets the engine load before Kubernetes restarts it."""
    base = (
        STARTUP_UNKNOWN_S
        if weight_bytes is None
        else STARTUP_FIXED_S + math.ceil(weight_bytes / GiB) * STARTUP_S_PER_GIB
    )
    return base + (300 if nodes > 1 else 0)  # the leader also waits for every worker to join


def _probes(kp: ClusterPlan) -> dict[str, Any]:
    def get() -> dict[str, Any]:  # a new dict each time: YAML would alias a shared one (&id001)
        return {"path": kp.plan.health_path, "port": "http"}

    budget = startup_seconds(kp.weight_bytes, kp.nodes)
    return {
        "startupProbe": {
            "httpGet": get(),
            "periodSeconds": STARTUP_PERIOD_S,
            "timeoutSeconds": 5,
            "failureThreshold": math.ceil(budget / STARTUP_PERIOD_S),
        },
        "readinessProbe": {"httpGet": get(), "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": get(), "periodSeconds": 10, "timeoutSeconds": 10, "failureThreshold": 6},
    }


def _pod_spec(kp: ClusterPlan, container: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        # A Service named like an engine variable (`vllm` -> VLLM_PORT=tcp://…) would break the engine.
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": [
            {
                "name": MODELS_VOLUME,
                "persistentVolumeClaim": {"claimName": f"{kp.name}-models", "readOnly": True},
            },
            {
                "name": SHM_VOLUME,
                "emptyDir": {"medium": "Memory", "sizeLimit": GPU_SHM if kp.gpus_per_pod else CPU_SHM},
            },
        ],
    }
    if kp.gpus_per_pod:  # GPU nodes are often tainted so that only GPU pods land there
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return spec


def _labels(kp: ClusterPlan) -> dict[str, str]:
    return {"app.kubernetes.io/name": kp.name, "app.kubernetes.io/component": "engine", **MANAGED_BY}


def _object(kp: ClusterPlan, api_version: str, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": _metadata(kp, name), "spec": spec}


def _metadata(kp: ClusterPlan, name: str) -> dict[str, Any]:
    s = kp.plan.spec
    return {
        "name": name,
        "labels": _labels(kp),
        "annotations": {
            "llmdock.io/deployment": s.name,
            "llmdock.io/model": s.model,
            "llmdock.io/engine": s.engine,
            "llmdock.io/served-name": kp.plan.served_name,
            "llmdock.io/spec-hash": kp.spec_hash,
        },
    }
