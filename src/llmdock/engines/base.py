"""What every engine module provides: its argv, health path, log phases and known failures.

An engine module is the only place that knows an engine's flags. The planner hands it a
:class:`Launch` with every value already decided; the engine renders argv and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from llmdock.errors import InvalidSpec
from llmdock.models.names import as_hub_id
from llmdock.spec import DeploymentSpec


@dataclass(frozen=True)
class Launch:
    """Decided values an engine renders into its command line."""

    spec: DeploymentSpec
    model_path: str  # the weights as the engine sees them (inside the container)
    port: int
    tensor_parallel_size: int | None
    version: str | None  # engine version found in the image, None when unknown
    max_model_len: int | None = None  # from the spec, or chosen by the planner
    gpu_memory_utilization: float | None = None
    kv_cache_dtype: str | None = None
    gpu_memory_mib: int | None = None  # total memory of each assigned GPU (SGLang sizes its reserve by it)


@dataclass(frozen=True)
class Phase:
    pattern: re.Pattern[str]
    label: str


@dataclass(frozen=True)
class Failure:
    """A known way to fail: a log pattern, what it means, and what to change."""

    pattern: re.Pattern[str]
    cause: str
    fix: str


def phases(*pairs: tuple[str, str]) -> tuple[Phase, ...]:
    return tuple(Phase(re.compile(p, re.IGNORECASE), label) for p, label in pairs)


def failures(*triples: tuple[str, str, str]) -> tuple[Failure, ...]:
    return tuple(Failure(re.compile(p, re.IGNORECASE), cause, fix) for p, cause, fix in triples)


# Failures any engine can meet; engine modules add their own in front of these.
COMMON_FAILURES = failures(
    (
        r"CUDA out of memory|OutOfMemoryError|No available memory for the cache blocks|"
        r"insufficient memory|KV cache is needed, which is larger than the available",
        "the model does not fit in GPU memory at these settings",
        "lower --max-model-len, raise --gpu-memory-utilization, add GPUs (--tp), or use a quantized model",
    ),
    (
        r"address already in use|Errno 98",
        "the port is already taken by another process",
        "pick another --port (or --port auto); `ss -ltnp` shows who holds it",
    ),
    (
        r"unrecognized arguments|no such option|error: argument|Got unexpected extra argument",
        "the engine does not know one of the flags it was given",
        "check the extra arguments after `--` against the engine version in the image (`--help`)",
    ),
    (
        r"not supported for now|Model architectures? \[.*\] (are|is) not supported|"
        r"does not recognize this architecture|Unrecognized model",
        "the engine in this image does not support this model's architecture",
        "use an image with a newer engine (--image), or check the model's config.json",
    ),
    (
        r"Found no NVIDIA driver|NVIDIA driver on your system is too old|No CUDA GPUs are available|"
        r"could not select device driver|libcuda\.so|Failed to infer device type",
        "the engine sees no usable GPU",
        "install nvidia-container-toolkit and restart Docker, check `nvidia-smi`, or pick GPUs with --gpus",
    ),
    (
        r"No such file or directory: '/work|does not appear to have a file named config\.json|"
        r"Repo id must be in the form|is not a local folder and is not a valid model identifier",
        "the engine cannot find the model's files at the mounted path",
        "check that MODEL is a directory holding config.json and the weights",
    ),
)


class Engine:
    """Base for engine modules. Subclasses set the class attributes and implement :meth:`argv`."""

    name: str = ""
    package: str = ""  # Python distribution whose version selects flag syntax
    health_path: str = "/health"
    health_timeout_s: float = 2.0  # how long one health probe may take before it counts as "not yet"
    uses_gpus: bool = True
    runs_on_cpu: bool = False  # a GPU engine with a CPU backend (vLLM): `--gpus none` runs it there
    # Whether /v1/models lists a model served from a local path; where it does not, /health alone
    # (answered only once the model is loaded) says ready.
    lists_local_models: bool = True
    # The variable the engine reads its API key from (vLLM: the same as `--api-key`); None: it takes none.
    api_key_env: str | None = None
    phases: tuple[Phase, ...] = ()
    failures: tuple[Failure, ...] = ()
    # Flags llmdock renders from its own options; repeating one after `--` would silently override
    # the planned value (argparse keeps the last), so it is refused. Maps engine flag -> up option.
    owned: ClassVar[dict[str, str]] = {}

    def argv(self, launch: Launch) -> list[str]:
        raise NotImplementedError

    def check_extra(self, extra: list[str]) -> list[str]:
        """Return ``extra`` unchanged, or refuse a flag llmdock already sets from its own options."""
        for arg in extra:
            flag = arg.split("=", 1)[0].replace("_", "-")
            if flag in self.owned:
                raise InvalidSpec(
                    f"{arg.split('=', 1)[0]} after `--` would override what llmdock sets",
                    f"give it to `llmdock up` as {self.owned[flag]} instead",
                )
        return extra

    def served_names(self, launch: Launch) -> list[str]:
        """The model ids the engine serves under, first the one it answers with: the user's
        ``--served-model-name``, then the deployment name (a replica's group), then the hub model id
        (``Qwen/Qwen3-8B``) when the model came from a hub. Never the weights path: three deployments
        of one folder would list three identical ids."""
        s = launch.spec
        names = [s.served_model_name, s.group or s.name, as_hub_id(s.model)]
        return list(dict.fromkeys(n for n in names if n))

    def served_name(self, launch: Launch) -> str:
        """The model id the engine answers with (the first of :meth:`served_names`)."""
        return self.served_names(launch)[0]

    def version_probe(self) -> list[str]:
        """A command run once per image to learn the engine version (prints it on stdout)."""
        code = f"import importlib.metadata as m; print(m.version({self.package!r}))"
        return ["python3", "-c", code]

    def known_failures(self) -> tuple[Failure, ...]:
        return self.failures + COMMON_FAILURES

    @staticmethod
    def reject(flag: str, engine: str, fix: str) -> InvalidSpec:
        return InvalidSpec(f"{flag} is not supported by the {engine} engine", fix)


# Engine flags that bound how many requests an engine runs at once (vLLM, SGLang); the gateway
# queues what is beyond that bound in front of the engine (gateway/congestion.py).
CONCURRENCY_FLAGS = ("--max-num-seqs", "--max-running-requests")


def engine_concurrency(extra_args: Sequence[str]) -> int | None:
    """The bound an engine's own flags set (``--max-num-seqs 64``, ``--max_num_seqs=64``), or None."""
    args = list(extra_args)
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag.replace("_", "-") not in CONCURRENCY_FLAGS:
            continue
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def bind_host(spec: DeploymentSpec) -> str:
    """Where the engine listens: this host only, unless ``--expose`` (engines check no API keys; the
    gateway does) or a bridge network (where the container's own loopback is unreachable from the host,
    and the published port is bound to 127.0.0.1 instead)."""
    return "0.0.0.0" if spec.expose or spec.network == "bridge" else "127.0.0.1"
