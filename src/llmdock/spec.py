"""DeploymentSpec: what the user asked for, validated, before anything is planned or created.

A spec is plain data. Values the planner decides later (a port for ``--port auto``, GPU indices for
``--gpus 2``) stay as the user wrote them, so the same request always hashes the same: that is how
``up`` recognises "already running" and stays idempotent.

Example::

    spec = DeploymentSpec.create(model="/data/models/Qwen2.5-VL-72B-Instruct", port="8001", gpus="all")
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from llmdock.errors import InvalidSpec

ENGINES = ("vllm", "sglang", "transformers")
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
NETWORKS = ("host", "bridge")
PLACEMENTS = ("binpack", "spread")
SECRET_KEY_RE = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)
RUNTIMES = ("docker", "local")
# Docker's own rule for container names, kept a bit shorter so labels and paths stay readable.
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CPUS_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def parse_cpus(text: str) -> tuple[int, ...]:
    """``0-3,8`` -> (0, 1, 2, 3, 8): the CPU list syntax of ``taskset -c`` and ``docker --cpuset-cpus``."""
    hint = "write CPU numbers and ranges like --cpus 0-7 or --cpus 0,2,4-6 (see `nproc`)"
    if not CPUS_RE.match(text.strip()):
        raise InvalidSpec(f"--cpus {text!r} is not a CPU list", hint)
    cpus: set[int] = set()
    for part in text.strip().split(","):
        low, _, high = part.partition("-")
        if high and int(high) < int(low):
            raise InvalidSpec(f"--cpus range {part!r} runs backwards", hint)
        cpus.update(range(int(low), int(high or low) + 1))
    return tuple(sorted(cpus))


def parse_port(text: str | int) -> int | None:
    """``auto`` -> None, else a port number in 1..65535."""
    if isinstance(text, int) or text.strip().lower() != "auto":
        try:
            port = int(text)
        except ValueError:
            raise InvalidSpec(
                f"--port {text!r} is not a number", "give --port N (1-65535) or --port auto"
            ) from None
        if not 1 <= port <= 65535:
            raise InvalidSpec(f"--port {port} is outside 1-65535", "give --port N (1-65535) or --port auto")
        return port
    return None


def parse_limit_mm(text: str | None) -> dict[str, int] | None:
    """``image=5,video=5`` or ``{"image": 5, "video": 5}`` -> ``{"image": 5, "video": 5}``."""
    if text is None or not text.strip():
        return None
    hint = 'write it as image=5,video=5 or as JSON {"image": 5, "video": 5}'
    text = text.strip()
    if text.startswith("{"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidSpec(f"--limit-mm-per-prompt is not valid JSON: {e}", hint) from None
        if not isinstance(raw, dict):
            raise InvalidSpec("--limit-mm-per-prompt JSON must be an object", hint)
        items = list(raw.items())
    else:
        items = []
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise InvalidSpec(f"--limit-mm-per-prompt part {part!r} has no '='", hint)
            items.append((key.strip(), value.strip()))
    limits: dict[str, int] = {}
    for key, value in items:
        if not re.fullmatch(r"[a-z_]+", str(key)):
            raise InvalidSpec(
                f"--limit-mm-per-prompt modality {key!r} is not a name like image or video", hint
            )
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise InvalidSpec(f"--limit-mm-per-prompt {key}={value!r} is not a whole number", hint) from None
        if n < 0:
            raise InvalidSpec(f"--limit-mm-per-prompt {key}={n} is negative", hint)
        limits[str(key)] = n
    return limits


def parse_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not ENV_KEY_RE.match(key):
            raise InvalidSpec(f"--env {pair!r} is not KEY=VALUE", "write it like --env HF_HUB_OFFLINE=1")
        env[key] = value
    return env


def default_name(model: str) -> str:
    """A container name from the model's last path part: ``/m/Qwen2.5-VL-7B-Instruct`` -> ``qwen2.5-vl-7b-instruct``."""
    base = Path(model.rstrip("/")).name.lower()
    base = re.sub(r"[^a-z0-9_.-]+", "-", base).strip("-._")
    return (base or "model")[:63]


def _check_runtime(runtime: str, engine_env: str | None, image: str | None, network: str) -> None:
    if runtime not in RUNTIMES:
        raise InvalidSpec(f"unknown runtime {runtime!r}", "choose --runtime " + "|".join(RUNTIMES))
    if runtime == "docker" and engine_env is not None:
        raise InvalidSpec(
            f"--env {engine_env} names an engine environment, which only the local runtime uses",
            "add --runtime local (or give engine variables as --env KEY=VALUE)",
        )
    if runtime == "local" and image is not None:
        raise InvalidSpec(
            "--image is for the docker runtime",
            "the local runtime runs the engine from --env NAME (`llmdock env ls`)",
        )
    if runtime == "local" and network != "host":
        raise InvalidSpec("--network bridge needs Docker", "the local runtime always listens on the host")
    if engine_env is not None and not engine_env.strip():
        raise InvalidSpec("the engine environment name is empty", "give --env NAME (see `llmdock env ls`)")


def _check_host(host: str | None) -> str | None:
    if host is None or host == "local":
        return host
    from llmdock.hosts import check_name

    check_name(host)
    return host


@dataclass(frozen=True)
class DeploymentSpec:
    """A validated deployment request. Build it with :meth:`create`, which checks every field."""

    name: str
    model: str
    engine: str = "vllm"
    image: str | None = None
    gpus: str = "all"
    port: int | None = None
    tensor_parallel_size: int | None = None
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    dtype: str | None = None
    kv_cache_dtype: str | None = None
    kv_cache_space: int | None = None  # GiB of host RAM for the KV cache of an engine on the CPU
    cpus: str | None = None  # host CPUs the engine runs on (``0-7``): a cpuset, and vLLM's OpenMP threads
    limit_mm_per_prompt: dict[str, int] | None = None
    served_model_name: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    network: str = "host"
    share_gpus: bool = False
    placement: str = "binpack"  # or "spread": where --gpus auto puts a model among free GPUs
    expose: bool = False  # listen on every interface (the engine itself has no API keys)
    replicas: int = 1  # copies of the model, each with its own GPUs and port, behind one name
    group: str | None = None  # set on each replica: the deployment name the gateway routes by
    extra_args: list[str] = field(default_factory=list)
    runtime: str = "docker"  # docker | local (a detached process in an engine environment)
    engine_env: str | None = None  # local runtime: the environment (`llmdock env ls`) to run the engine in
    # the Docker host to run on (`--host`; None: placement picks, `local` is this one)
    host: str | None = None

    @classmethod
    def create(
        cls,
        model: str,
        *,
        name: str | None = None,
        engine: str = "vllm",
        image: str | None = None,
        gpus: str | None = None,
        port: str | int = "auto",
        tensor_parallel_size: int | None = None,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        dtype: str | None = None,
        kv_cache_dtype: str | None = None,
        kv_cache_space: int | None = None,
        cpus: str | None = None,
        limit_mm_per_prompt: str | None = None,
        served_model_name: str | None = None,
        env: list[str] | None = None,
        network: str = "host",
        share_gpus: bool = False,
        placement: str = "binpack",
        expose: bool = False,
        replicas: int = 1,
        extra_args: list[str] | None = None,
        runtime: str = "docker",
        engine_env: str | None = None,
        host: str | None = None,
    ) -> DeploymentSpec:
        if engine not in ENGINES:
            raise InvalidSpec(f"unknown engine {engine!r}", "choose --engine " + "|".join(ENGINES))
        name = name or default_name(model)
        if not NAME_RE.match(name):
            raise InvalidSpec(
                f"name {name!r} is not allowed",
                "use letters, digits, '.', '_' and '-', starting with a letter or digit (at most 63)",
            )
        _check_runtime(runtime, engine_env, image, network)
        if not 1 <= replicas <= 64:
            raise InvalidSpec(
                f"--replicas {replicas} is outside 1-64", "give --replicas 2 (or more) for copies"
            )
        if placement not in PLACEMENTS:
            raise InvalidSpec(f"unknown placement {placement!r}", "choose binpack (default) or --spread")
        if network not in NETWORKS:
            raise InvalidSpec(f"unknown network mode {network!r}", "choose --network host|bridge")
        if dtype is not None and dtype not in DTYPES:
            raise InvalidSpec(f"unknown dtype {dtype!r}", "choose --dtype " + "|".join(DTYPES))
        if kv_cache_dtype is not None and kv_cache_dtype not in KV_CACHE_DTYPES:
            raise InvalidSpec(
                f"unknown KV cache dtype {kv_cache_dtype!r}",
                "choose --kv-cache-dtype " + "|".join(KV_CACHE_DTYPES),
            )
        if kv_cache_space is not None and not 1 <= kv_cache_space <= 1 << 20:
            raise InvalidSpec(
                f"--kv-cache-space {kv_cache_space} is not a number of GiB",
                "give whole GiB of host RAM for the KV cache, e.g. --kv-cache-space 4",
            )
        if cpus is not None:
            parse_cpus(cpus)
        if tensor_parallel_size is not None and tensor_parallel_size < 1:
            raise InvalidSpec("--tensor-parallel-size must be at least 1", "give --tp 1, 2, 4 or 8")
        if gpu_memory_utilization is not None and not 0 < gpu_memory_utilization <= 1:
            raise InvalidSpec(
                f"--gpu-memory-utilization {gpu_memory_utilization} is outside (0, 1]", "give e.g. 0.9"
            )
        if max_model_len is not None and max_model_len < 1:
            raise InvalidSpec("--max-model-len must be a positive number of tokens", "give e.g. 32768")
        if served_model_name is not None and not served_model_name.strip():
            raise InvalidSpec("--served-model-name is empty", "give a name clients will use as `model`")
        if gpus is None:
            gpus = "none" if engine == "transformers" else "auto"
        from llmdock.planning.gpus import parse_gpus  # validates the syntax early

        parse_gpus(gpus)
        return cls(
            name=name,
            model=model,
            engine=engine,
            image=image,
            gpus=gpus.strip().lower(),
            port=parse_port(port),
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            dtype=dtype,
            kv_cache_dtype=kv_cache_dtype,
            kv_cache_space=kv_cache_space,
            cpus=cpus.strip() if cpus is not None else None,
            limit_mm_per_prompt=parse_limit_mm(limit_mm_per_prompt),
            served_model_name=served_model_name,
            env=parse_env(env or []),
            network=network,
            share_gpus=share_gpus,
            placement=placement,
            expose=expose,
            replicas=replicas,
            extra_args=list(extra_args or []),
            runtime=runtime,
            engine_env=engine_env,
            host=_check_host(host),
        )

    def with_image(self, image: str) -> DeploymentSpec:
        return replace(self, image=image)

    def with_engine_env(self, env: str) -> DeploymentSpec:
        return replace(self, engine_env=env)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeploymentSpec:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replica_specs(self) -> list[DeploymentSpec]:
        """One spec per replica: ``NAME-1`` … ``NAME-N``, grouped under ``NAME`` (just itself when N is 1)."""
        if self.replicas == 1:
            return [self]
        return [replace(self, name=f"{self.name}-{i}", group=self.name) for i in range(1, self.replicas + 1)]

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with secret-looking env values (``HF_TOKEN``…) masked: for labels and output."""
        data = self.to_dict()
        data["env"] = {k: "***" if SECRET_KEY_RE.search(k) else v for k, v in self.env.items()}
        return data

    def hash(self) -> str:
        """Stable digest of the request; equal specs give equal hashes."""
        data = self.to_dict()
        # Fields added later hash only when set, so deployments made before them keep their hash.
        for key, default in (
            ("runtime", "docker"),
            ("engine_env", None),
            ("placement", "binpack"),
            ("expose", False),
            ("replicas", 1),
            ("group", None),
            ("kv_cache_space", None),
            ("cpus", None),
            ("host", None),
        ):
            if data.get(key) == default:
                data.pop(key, None)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]
