"""``llmdock doctor``: what this host can deploy, and what to fix. Facts in, checks out.

:func:`gather` reads the host (Docker, NVML, disks, ports, micromamba, deployments) and never raises;
:func:`checks` is pure: each :class:`Check` says ok / warn / fail / skip, what was found and the fix.
A ``fail`` means a default deployment would not work; ``warn`` that something is off but not fatal.

The CUDA rule: a driver runs images built for its CUDA version and older. Within one major version
an image for a newer minor often still runs (CUDA minor-version compatibility), but kernels that
need PTX JIT fail, so that is a warning; an image for a newer major version does not run at all.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

from llmdock.runtimes.base import Deployment
from llmdock.settings import Settings

Version = tuple[int, int]


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""


@dataclass
class Facts:
    docker_version: str | None = None
    docker_error: str = ""
    nvidia_runtime: bool = False
    gpus: list[str] = field(default_factory=list)  # "0: NVIDIA H100 80GB HBM3 (79.1 GiB free)"
    gpu_notes: list[str] = field(default_factory=list)
    driver_version: str | None = None
    driver_cuda: Version | None = None
    images: dict[str, Version | None] = field(default_factory=dict)  # engine image -> its CUDA
    models_dir: str = ""
    free_bytes: int = 0
    on_root_fs: bool = False
    deployments: list[Deployment] = field(default_factory=list)
    listening: frozenset[int] = frozenset()
    port_range: tuple[int, int] = (8001, 8999)
    micromamba: str | None = None
    micromamba_version: str = ""
    engine_envs: list[str] = field(default_factory=list)  # the local runtime's environments ("vllm (vllm)")


def parse_cuda_tag(image: str) -> Version | None:
    """The CUDA version an image's tag names: ``qwenllm/qwenvl:2.5-cu121`` -> (12, 1),
    ``…:cuda12.4.1-…`` -> (12, 4), ``…-cu118`` -> (11, 8); None when the tag does not say."""
    tag = image.rsplit("/", 1)[-1].partition(":")[2] or image.rsplit("/", 1)[-1]
    m = re.search(r"cuda[-_]?(\d+)\.(\d+)", tag, re.IGNORECASE)
    if m:
        return int(m.group(1)), int(m.group(2))
    m = re.search(r"(?<![a-z])cu(\d{2,3})(?!\d)", tag, re.IGNORECASE)
    if m:
        digits = m.group(1)
        return int(digits[:-1]), int(digits[-1])
    return None


def parse_cuda_version(text: str) -> Version | None:
    """``12.4.1`` or ``12.4`` (an image's CUDA_VERSION, nvidia-smi's "CUDA Version") -> (12, 4)."""
    m = re.match(r"\s*(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def cuda_from_driver(value: int) -> Version:
    """NVML's ``nvmlSystemGetCudaDriverVersion`` (12040) -> (12, 4)."""
    return value // 1000, (value % 1000) // 10


def check_cuda(image: str, needed: Version | None, driver: Version | None) -> Check:
    name = f"CUDA for {image}"
    if driver is None:
        return Check(name, "skip", "no NVIDIA driver, so no CUDA to compare")
    if needed is None:
        return Check(
            name,
            "warn",
            "the image's CUDA version is unknown (not in its tag, image not pulled)",
            f"pull it (`docker pull {image}`) so doctor can read its CUDA_VERSION",
        )
    have, want = f"{driver[0]}.{driver[1]}", f"{needed[0]}.{needed[1]}"
    if driver >= needed:
        return Check(name, "ok", f"driver supports CUDA {have}, image needs {want}")
    fix = f"upgrade the NVIDIA driver to one that supports CUDA {want}, or use an image built for CUDA {have} or older"
    if driver[0] == needed[0]:
        return Check(
            name,
            "warn",
            f"driver supports CUDA {have}, image is built for {want} "
            "(minor-version compatibility: most things run, PTX JIT kernels fail)",
            fix,
        )
    return Check(name, "fail", f"driver supports CUDA {have} but the image needs {want}", fix)


def checks(f: Facts) -> list[Check]:
    from llmdock.models.disk import SYSTEM_DISK_LIMIT, human
    from llmdock.runtimes.docker import GPU_HINT, START_HINT

    out: list[Check] = []
    if f.docker_version:
        out.append(Check("Docker daemon", "ok", f"reachable, version {f.docker_version}"))
    else:
        # A host that runs engines on the local runtime does not need Docker: then it is a warning.
        out.append(
            Check(
                "Docker daemon",
                "warn" if f.engine_envs else "fail",
                (f.docker_error or "not reachable")
                + (f"; the local runtime has {', '.join(f.engine_envs)}" if f.engine_envs else ""),
                START_HINT + "; or deploy without Docker: `llmdock up MODEL --runtime local`",
            )
        )
    if not f.docker_version:
        out.append(Check("NVIDIA container runtime", "skip", "Docker is not reachable"))
    elif f.nvidia_runtime:
        out.append(Check("NVIDIA container runtime", "ok", "Docker can give containers GPUs"))
    else:
        status = "fail" if f.gpus else "warn"
        out.append(Check("NVIDIA container runtime", status, "Docker has no nvidia runtime", GPU_HINT))
    if f.gpus:
        driver = f"driver {f.driver_version or '?'}" + (
            f", CUDA {f.driver_cuda[0]}.{f.driver_cuda[1]}" if f.driver_cuda else ""
        )
        out.append(Check("GPUs", "ok", f"{len(f.gpus)} ({driver}): " + "; ".join(f.gpus)))
    else:
        why = "; ".join(f.gpu_notes) or "NVML and nvidia-smi found none"
        out.append(
            Check(
                "GPUs",
                "warn",
                f"no GPU: {why}",
                "install the NVIDIA driver and nvidia-ml-py; without GPUs only CPU deployments "
                "work (--engine transformers --gpus none)",
            )
        )
    for image, needed in f.images.items():
        if f.gpus:
            out.append(check_cuda(image, needed, f.driver_cuda))
    disk = f"{f.models_dir}: {human(f.free_bytes)} free"
    if f.on_root_fs:
        out.append(
            Check(
                "models dir",
                "warn",
                disk + ", on the system disk",
                "point LLMDOCK_MODELS_DIR (or `llmdock config set models_dir`) at a data disk; "
                f"models over {human(SYSTEM_DISK_LIMIT)} are refused there",
            )
        )
    else:
        out.append(
            Check(
                "models dir",
                "ok" if f.free_bytes > 20 << 30 else "warn",
                disk + ", on a data disk",
                "" if f.free_bytes > 20 << 30 else "free space: one 7B model needs about 16 GiB",
            )
        )
    held = {d.port: d for d in f.deployments if d.port}
    clashes = [
        f"{p} ({d.name}, {d.state})" for p, d in sorted(held.items()) if not d.running and p in f.listening
    ]
    low, high = f.port_range
    others = sorted(p for p in f.listening if low <= p <= high and p not in held)
    mine = ", ".join(f"{p} {d.name}" for p, d in sorted(held.items())) or "none"
    detail = f"deployments hold {mine}; other processes listen on {len(others)} port(s) in {low}-{high}" + (
        f" ({', '.join(map(str, others[:10]))})" if others else ""
    )
    if clashes:
        out.append(
            Check(
                "ports",
                "warn",
                detail + "; taken while stopped: " + ", ".join(clashes),
                "free the port (`ss -ltnp` shows who holds it) or redeploy with --port auto --replace",
            )
        )
    else:
        out.append(Check("ports", "ok", detail))
    if f.micromamba:
        out.append(Check("micromamba", "ok", f"{f.micromamba} {f.micromamba_version}".strip()))
    else:
        from llmdock.envs.micromamba import INSTALL_HINT

        out.append(
            Check("micromamba", "warn", "not found; `llmdock env create` falls back to venv", INSTALL_HINT)
        )
    stale = [d for d in f.deployments if (d.runtime == "docker" and d.state in ("exited", "dead")) or d.error]
    if stale:
        names = ", ".join(f"{d.name} ({d.runtime}: {d.error or d.state})" for d in stale)
        out.append(
            Check(
                "stale deployments",
                "warn",
                names,
                "look at `llmdock logs NAME`, then `llmdock start NAME` or `llmdock rm NAME`",
            )
        )
    else:
        out.append(Check("stale deployments", "ok", "none"))
    return out


def to_dict(checks_: list[Check]) -> dict[str, Any]:
    return {"ok": not any(c.status == "fail" for c in checks_), "checks": [asdict(c) for c in checks_]}


def gather(s: Settings, runtimes: dict[str, Any]) -> Facts:
    """Read this host. Every probe that fails becomes a fact (e.g. the daemon's error), never raises."""
    from llmdock import hostinfo
    from llmdock.envs.micromamba import Micromamba, find
    from llmdock.errors import LlmdockError
    from llmdock.gpuinfo import detect_gpus
    from llmdock.models.disk import human, probe
    from llmdock.runtimes.multi import Runtimes

    f = Facts(port_range=s.port_range, listening=hostinfo.listening_ports())
    rts = Runtimes(runtimes)
    try:
        docker = rts.named("docker")
        client = docker.client  # type: ignore[attr-defined]
        f.docker_version = str(client.version().get("Version", "?"))
        f.nvidia_runtime = docker.has_gpu_runtime()
    except LlmdockError as e:
        f.docker_error, client = e.message, None
    f.deployments = rts.deployments()
    gpus, notes = detect_gpus()
    f.gpu_notes = list(notes)
    f.gpus = [f"{g.index}: {g.name} ({human(g.free_bytes)} free of {human(g.total_bytes)})" for g in gpus]
    if gpus:
        f.driver_version, f.driver_cuda = driver_info()
        for engine in ("vllm", "sglang"):
            image = s.image(engine)
            f.images[image] = parse_cuda_tag(image) or image_cuda(client, image)
    facts = probe(s.models_dir)
    f.models_dir, f.free_bytes, f.on_root_fs = str(facts.path), facts.free, facts.on_root_fs
    try:
        from llmdock.envs import Envs

        f.engine_envs = [
            f"{e.name} ({e.engine()})" for e in Envs(s.envs_dir).list() if e.engine() and e.complete
        ]
    except (LlmdockError, OSError):
        f.engine_envs = []
    f.micromamba = find()
    if f.micromamba:
        try:
            f.micromamba_version = Micromamba(f.micromamba).version()
        except LlmdockError as e:
            f.micromamba_version = f"(does not run: {e.message})"
    return f


def image_cuda(client: Any, image: str) -> Version | None:
    """An image's CUDA from its ``CUDA_VERSION`` environment variable (NVIDIA's base images set it)."""
    if client is None:
        return None
    try:
        env = client.images.get(image).attrs.get("Config", {}).get("Env") or []
    except Exception:  # docker SDK errors: not pulled, daemon hiccup
        return None
    for item in env:
        key, _, value = str(item).partition("=")
        if key == "CUDA_VERSION":
            return parse_cuda_version(value)
    return None


def driver_info() -> tuple[str | None, Version | None]:
    """(driver version, CUDA version it supports) through NVML, else from nvidia-smi's header."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return (version.decode() if isinstance(version, bytes) else str(version)), cuda_from_driver(int(cuda))
    except Exception:  # ImportError, NVMLError: try the CLI
        pass
    try:
        text = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    drv = re.search(r"Driver Version:\s*([\d.]+)", text)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", text)
    return (drv.group(1) if drv else None), (parse_cuda_version(cuda.group(1)) if cuda else None)
