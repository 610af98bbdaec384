"""``make_plan``: a validated spec + host inventory -> everything ``up`` will create. Pure.

With ``strict=False`` (``--dry-run``) a problem that would refuse the deployment (a GPU that is not
there, an image that is not pulled) is recorded in ``Plan.problems`` and a stand-in value is used, so
the user still sees the full command line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from llmdock.engines import Launch, get_engine
from llmdock.errors import (
    EnvMissing,
    GpuUnavailable,
    ImageMissing,
    InvalidSpec,
    LlmdockError,
    PortTaken,
    RuntimeUnavailable,
)
from llmdock.planning.container import ContainerConfig, Mount, labels_for
from llmdock.planning.gpus import choose_gpus, parse_gpus
from llmdock.planning.inventory import Gpu, Inventory
from llmdock.planning.ports import choose_port
from llmdock.spec import DeploymentSpec

if TYPE_CHECKING:
    from llmdock.modelfacts import ModelFacts
    from llmdock.planning.cpu import CpuFit
    from llmdock.planning.fit import Fit

# Problems about this host as it is now (the image not pulled, GPUs busy or absent, a port taken):
# a dry run on a laptop or for --assume-gpus meets them without the request being wrong.
HOST_STATE = (ImageMissing, RuntimeUnavailable, GpuUnavailable, PortTaken, EnvMissing)
DEFAULT_UTILIZATION = 0.9  # what the planner assumes; always passed (vLLM's own default moved to 0.92)
MOUNT_ROOT = "/work"  # where the procedure mounted weights; kept so paths look familiar
DEFAULT_ENV = {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "VLLM_NO_USAGE_STATS": "1"}


@dataclass(frozen=True)
class Plan:
    spec: DeploymentSpec
    gpus: tuple[int, ...]
    port: int
    tensor_parallel_size: int | None
    argv: list[str]
    served_name: str
    health_path: str
    container: ContainerConfig
    spec_hash: str
    problems: tuple[str, ...] = field(default=())  # what would refuse the deployment (dry runs list them)
    notes: tuple[str, ...] = field(default=())  # worth knowing, refuses nothing
    blocking: tuple[str, ...] = field(default=())  # the problems no other host would fix (does not fit…)
    fit: Fit | None = None
    cpu_fit: CpuFit | None = None  # an engine on its CPU backend (vLLM --gpus none): host RAM
    stand_in_gpus: bool = False  # no GPU was visible: the indices only show the shape of the command
    problem_kinds: tuple[str, ...] = field(default=())  # the error class of each problem (ImageMissing…)
    host: str = "local"  # the Docker host it is planned on (`llmdock hosts ls`)

    @property
    def device(self) -> str:
        return "cpu" if not self.gpus else "gpu"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "engine": self.spec.engine,
            "model": self.spec.model,
            "gpus": list(self.gpus),
            "port": self.port,
            "tensor_parallel_size": self.tensor_parallel_size,
            "served_model_name": self.served_name,
            "spec_hash": self.spec_hash,
            "command": self.argv,
            "container": self.container.to_dict(),
            "problems": list(self.problems),
            "notes": list(self.notes),
            "blocking": list(self.blocking),
            "device": self.device,
            "host": self.host,
            "fit": self.fit.to_dict() if self.fit else self.cpu_fit.to_dict() if self.cpu_fit else None,
        }


def make_plan(
    spec: DeploymentSpec,
    inv: Inventory,
    *,
    model_dir: str,
    image: str,
    port_range: tuple[int, int],
    engine_version: str | None = None,
    image_present: bool = True,
    strict: bool = True,
    facts: ModelFacts | None = None,
) -> Plan:
    """Decide GPUs, port, TP size, argv and container for ``spec``; raise the first problem if strict.

    With ``facts`` (config.json + weight sizes) a GPU engine's deployment is fitted by the memory
    planner: it picks the GPUs (fewest that fit for ``--gpus auto``), the TP size and the context
    length, and refuses what cannot fit, naming the nearest alternatives that do.
    """
    engine = get_engine(spec.engine)
    if spec.runtime != "local":  # a local deployment's "image" is its engine environment, kept in engine_env
        spec = spec.with_image(image)
    problems: list[str] = []
    blocking: list[str] = []  # problems of the request itself, not of this host's current state

    errors: list[LlmdockError] = []
    kinds: list[str] = []

    def check(err: LlmdockError) -> None:
        # Planning goes on with stand-in values either way; a strict plan raises at the end, a problem
        # of the request itself before one of this host's state (a bad --tp says more than a missing image).
        errors.append(err)
        kinds.append(type(err).__name__)
        problems.append(f"{err.message} ({err.hint})" if err.hint else err.message)
        if not isinstance(err, HOST_STATE):
            blocking.append(problems[-1])

    if not image_present:  # first: a named environment or image that is not there says more than GPUs
        check(EnvMissing(image, spec.engine) if spec.runtime == "local" else ImageMissing(image))
    request = parse_gpus(spec.gpus)
    if request.kind != "none" and not inv.gpu_runtime:
        check(
            RuntimeUnavailable(
                "Docker on this host has no NVIDIA runtime, so containers cannot use GPUs",
                "install nvidia-container-toolkit, run `sudo nvidia-ctk runtime configure --runtime=docker`, "
                "restart Docker; or run on the CPU with --gpus none (vLLM's CPU backend)",
            )
        )
    try:
        gpus = choose_gpus(request, inv, owner=spec.name, share=spec.share_gpus)
    except LlmdockError as e:
        check(e)
        stand_in = tuple(range(max(spec.tensor_parallel_size or 1, request.count or 1)))
        gpus = (request.indices or stand_in) if request.kind != "none" else ()
    on_cpu = engine.uses_gpus and request.kind == "none"  # a GPU engine on its CPU backend
    if engine.uses_gpus and not gpus and not (on_cpu and engine.runs_on_cpu):
        check(
            InvalidSpec(
                f"the {engine.name} engine needs at least one GPU",
                "use --gpus, or run on the CPU with --gpus none (--engine vllm or transformers)",
            )
        )
    if spec.kv_cache_space is not None and not on_cpu:
        check(
            InvalidSpec(
                "--kv-cache-space sizes the KV cache of vLLM on the CPU (--gpus none)",
                "on GPUs use --gpu-memory-utilization and --max-model-len instead",
            )
        )
    if spec.cpus is not None:
        from llmdock.spec import parse_cpus

        missing = sorted(set(parse_cpus(spec.cpus)) - set(inv.cpus)) if inv.cpus else []
        if missing:
            check(
                InvalidSpec(
                    f"--cpus names CPU {', '.join(map(str, missing))}, which this host does not have",
                    f"use CPUs of {_cpu_list(inv.cpus)} (see `nproc`)",
                )
            )
    tp = spec.tensor_parallel_size
    max_len, util, fitted = spec.max_model_len, spec.gpu_memory_utilization, None
    cpu_fit, device_env = None, {}
    if on_cpu and engine.runs_on_cpu:
        from llmdock.engines.cpu import cpu_env

        cpu_fit = _fit_cpu(spec, facts, inv, check)
        if cpu_fit is not None:
            max_len = cpu_fit.max_model_len
        device_env = cpu_env(cpu_fit.kv_cache_gib if cpu_fit else spec.kv_cache_space or 1, spec.cpus)
        if util is not None:
            check(
                InvalidSpec(
                    "--gpu-memory-utilization has no GPU to apply to with --gpus none",
                    "size the KV cache in host RAM with --kv-cache-space GiB instead",
                )
            )
    if facts is not None and engine.uses_gpus and gpus and inv.gpus:
        from llmdock.planning.fit import fit

        try:
            fitted = fit(
                facts,
                [g for g in inv.gpus if g.index in gpus],
                tp=tp,
                max_model_len=spec.max_model_len,
                gpu_memory_utilization=spec.gpu_memory_utilization,
                kv_cache_dtype=spec.kv_cache_dtype,
                dtype=spec.dtype,
                requested_gpus=None if request.kind == "auto" else gpus,
                placement=spec.placement,
            )
        except LlmdockError as e:
            check(e)
        else:
            gpus, tp, max_len = fitted.gpus, fitted.tp, fitted.max_model_len
            if util is None:
                util = fitted.gpu_memory_utilization  # lowered where other processes use part of a GPU
    elif facts is not None and engine.uses_gpus and gpus:  # no GPU visible to fit against (a laptop)
        from llmdock.planning.fit import check_request

        try:
            check_request(facts, tp or (len(gpus) if request.kind != "auto" else None), max_len)
        except LlmdockError as e:
            check(e)
    if util is None and engine.uses_gpus and gpus:
        util = DEFAULT_UTILIZATION  # the fraction the plan assumed, passed even where it is the default
    if request.kind == "auto" and fitted is None:
        if not engine.uses_gpus:  # transformers: the GPU with the most free memory
            free = {g.index: g.free_bytes for g in inv.gpus}
            gpus = tuple(sorted(gpus, key=lambda i: -free.get(i, 0)))
        gpus = gpus[: tp or 1]  # without model facts: one GPU, or one per TP rank
    if not engine.uses_gpus and facts is not None and gpus and inv.gpus:
        _check_weights_fit(facts, [g for g in inv.gpus if g.index in gpus], check)
    if tp is None and engine.uses_gpus and len(gpus) > 1:
        tp = len(gpus)
    if tp == 1 and spec.tensor_parallel_size is None:
        tp = None  # the engine's default; keeps the command as short as the user's own
    if tp is not None and gpus and tp > len(gpus):
        check(
            InvalidSpec(
                f"--tensor-parallel-size {tp} needs {tp} GPUs but {len(gpus)} are assigned",
                f"give --gpus {tp} (or more), or lower --tp",
            )
        )
    try:
        port = choose_port(spec.port, inv, port_range, owner=spec.name)
    except LlmdockError as e:
        check(e)
        port = spec.port or port_range[0]

    local = spec.runtime == "local"
    # Docker mounts the weights under /work as the procedure did; a local process reads them in place.
    model_path = model_dir if local else str(PurePosixPath(MOUNT_ROOT) / PurePosixPath(model_dir).name)
    launch = Launch(
        spec=spec,
        model_path=model_path,
        port=port,
        tensor_parallel_size=tp,
        version=engine_version,
        max_model_len=max_len,
        gpu_memory_utilization=util,
        kv_cache_dtype=spec.kv_cache_dtype,
        gpu_memory_mib=min(
            (g.total_bytes >> 20 for g in inv.gpus if g.index in gpus and g.total_bytes), default=None
        ),
    )
    argv = engine.argv(launch)
    served = engine.served_name(launch)
    spec_hash = spec.hash()
    container = ContainerConfig(
        image=image,
        name=spec.name,
        entrypoint=argv[:1],
        command=argv[1:],
        labels=labels_for(
            name=spec.name,
            model=spec.model,
            engine=spec.engine,
            port=port,
            gpus=gpus,
            spec_hash=spec_hash,
            spec=spec.public_dict(),
            served_name=served,
            health_path=engine.health_path,
            model_dir=model_dir,
            runtime=spec.runtime,
            engine_env=spec.engine_env or "",
            group=spec.group,
        ),
        gpu_ids=gpus,
        network_mode=spec.network,
        ports={port: port} if spec.network == "bridge" else {},
        publish_host="0.0.0.0" if spec.expose else "127.0.0.1",
        mounts=() if local else (Mount(model_dir, model_path, read_only=True),),
        env={**DEFAULT_ENV, **device_env, **spec.env},
        cpuset_cpus=spec.cpus,
    )
    if strict and errors:
        raise next((e for e in errors if not isinstance(e, HOST_STATE)), errors[0])
    return Plan(
        spec=spec,
        gpus=gpus,
        port=port,
        tensor_parallel_size=tp,
        argv=argv,
        served_name=served,
        health_path=engine.health_path,
        container=container,
        spec_hash=spec_hash,
        problems=tuple(problems),
        blocking=tuple(blocking),
        fit=fitted,
        cpu_fit=cpu_fit,
        stand_in_gpus=bool(gpus) and not inv.gpus,
        problem_kinds=tuple(kinds),
    )


def _check_weights_fit(facts: ModelFacts, gpus: list[Gpu], check: Callable[[LlmdockError], None]) -> None:
    """An engine without a memory planner of its own (transformers) on a GPU: the weights at least must
    fit in what is free, beside the CUDA context."""
    from llmdock.errors import DoesNotFit
    from llmdock.planning.fit import CUDA_CONTEXT_BYTES
    from llmdock.planning.memory import GiB

    share = facts.weight_bytes // len(gpus)  # device_map spreads the layers over the GPUs given
    for g in gpus:
        if share + CUDA_CONTEXT_BYTES > g.free_bytes:
            check(
                DoesNotFit(
                    f"the weights ({facts.weight_bytes / GiB:.1f} GiB) do not fit on GPU {g.index}, which has "
                    f"{g.free_bytes / GiB:.1f} GiB free",
                    "free that GPU, pick others with --gpus, or use --engine vllm (it plans memory per GPU)",
                )
            )
            return


def _cpu_list(cpus: tuple[int, ...]) -> str:
    return (
        f"{cpus[0]}-{cpus[-1]}"
        if list(cpus) == list(range(cpus[0], cpus[-1] + 1))
        else ",".join(map(str, cpus))
    )


def _fit_cpu(
    spec: DeploymentSpec, facts: ModelFacts | None, inv: Inventory, check: Callable[[LlmdockError], None]
) -> CpuFit | None:
    """Host RAM for an engine on the CPU; None without model facts (the engine then sizes nothing
    but the KV budget it is given) or when the model does not fit (``check`` has the reason)."""
    from llmdock.planning.cpu import fit_cpu

    if facts is None:
        return None
    try:
        return fit_cpu(
            facts,
            total_bytes=inv.memory_total_bytes,
            available_bytes=inv.memory_available_bytes,
            max_model_len=spec.max_model_len,
            kv_cache_gib=spec.kv_cache_space,
            dtype=spec.dtype,
            kv_cache_dtype=spec.kv_cache_dtype,
        )
    except LlmdockError as e:
        check(e)
        return None
