"""The GPU part of the inventory: what GPUs this host has, and ``--assume-gpus`` for what-if plans.

Sources, tried in order by :func:`detect_gpus`: NVML through ``pynvml`` (nvidia-ml-py; index, UUID, name,
total/free memory, compute-process PIDs), then ``nvidia-smi --query-gpu`` text, then nothing (a CPU-only
host yields an empty tuple, never an error). Each source is a :class:`GpuSource`; tests use
:class:`StaticGpus`. The parsers (:func:`parse_nvidia_smi`, :func:`parse_assume_gpus`) are pure.

NVML's total includes ~0.5 GiB the driver reserves, so an idle 80 GB H100 reports 79.6 GiB total and
about 79.1 GiB free; the planner works from both numbers as reported.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from typing import Protocol

from llmdock.errors import InvalidSpec
from llmdock.planning.inventory import Gpu

MiB = 1 << 20
GiB = 1 << 30

# Total memory as `nvidia-smi` reports it (MiB) for common data-centre and workstation GPUs.
KNOWN_GPUS: dict[str, int] = {
    "H100": 81559,
    "H800": 81559,
    "H200": 143771,
    "H20": 97871,
    "GH200": 97871,
    "A100": 81920,
    "A100-80G": 81920,
    "A100-40G": 40960,
    "A800": 81920,
    "L40S": 46068,
    "L40": 46068,
    "A6000": 49140,
    "A10": 23028,
    "A10G": 23028,
    "L4": 23034,
    "4090": 24564,
    "3090": 24576,
    "V100": 32768,
    "V100-16G": 16384,
    "T4": 15360,
}

_ASSUME = re.compile(r"^(?:(\d+)\s*[x×*]\s*)?(.+)$", re.IGNORECASE)
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(G|GB|GiB|T|TB|TiB|M|MB|MiB)?$", re.IGNORECASE)
SMI_QUERY = "index,uuid,name,memory.total,memory.free"
SMI_APPS_QUERY = "gpu_uuid,pid"


class GpuSource(Protocol):
    """Anything that lists this host's GPUs; raises ``OSError``/``RuntimeError`` when it cannot."""

    def gpus(self) -> tuple[Gpu, ...]: ...


def parse_assume_gpus(text: str) -> tuple[Gpu, ...]:
    """``8x80GiB``, ``4xH100``, ``2xH200``, ``8x80G``, ``80GiB`` or a comma list (``2xH100,2xA100-40G``)
    as idle GPUs numbered from 0. Sizes are binary: ``80G`` = ``80GB`` = ``80GiB`` = 80 × 2³⁰ bytes."""
    gpus: list[Gpu] = []
    for part in (p.strip() for p in text.split(",")):
        m = _ASSUME.match(part)
        if not part or not m:
            raise InvalidSpec(f"--assume-gpus {text!r} is not understood", _ASSUME_HINT)
        count = int(m.group(1) or 1)
        what = m.group(2).strip()
        name, total = _size_or_name(what, text)
        if count < 1:
            raise InvalidSpec(f"--assume-gpus {text!r} asks for no GPU", _ASSUME_HINT)
        for _ in range(count):
            gpus.append(
                Gpu(len(gpus), uuid=f"assumed-{len(gpus)}", name=name, total_bytes=total, free_bytes=total)
            )
    return tuple(gpus)


_ASSUME_HINT = f"write COUNTxSIZE or COUNTxNAME, e.g. 8x80GiB or 4xH100; names: {', '.join(KNOWN_GPUS)}"


def _size_or_name(what: str, text: str) -> tuple[str, int]:
    size = _SIZE.match(what)
    if size:
        unit = (size.group(2) or "G").upper()[0]
        scale = {"M": MiB, "G": GiB, "T": 1 << 40}[unit]
        total = int(float(size.group(1)) * scale)
        if total <= 0:
            raise InvalidSpec(f"--assume-gpus {text!r} has a GPU without memory", _ASSUME_HINT)
        return f"assumed {what}", total
    key = what.upper().removeprefix("NVIDIA ").replace(" ", "-").replace("GB", "G")
    for known, mib in KNOWN_GPUS.items():
        if key == known.upper():
            return f"assumed {known}", mib * MiB
    raise InvalidSpec(f"--assume-gpus {text!r}: unknown GPU {what!r}", _ASSUME_HINT)


def parse_nvidia_smi(gpu_csv: str, apps_csv: str = "") -> tuple[Gpu, ...]:
    """Parse ``nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.free --format=csv,noheader,nounits``
    (MiB) and, optionally, ``--query-compute-apps=gpu_uuid,pid --format=csv,noheader`` for the PIDs."""
    pids: dict[str, list[int]] = {}
    for line in apps_csv.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 2 and fields[1].isdigit():
            pids.setdefault(fields[0], []).append(int(fields[1]))
    gpus = []
    for line in gpu_csv.splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 5:
            raise ValueError(f"unexpected nvidia-smi line: {line!r}")
        index, uuid, name, total, free = fields
        gpus.append(
            Gpu(
                index=int(index),
                uuid=uuid,
                name=name,
                total_bytes=_mib(total) * MiB,
                free_bytes=_mib(free) * MiB,
                processes=tuple(pids.get(uuid, ())),
            )
        )
    return tuple(gpus)


def _mib(field: str) -> int:
    """A MiB figure; ``[N/A]`` (MIG parents, some vGPUs) counts as 0."""
    try:
        return int(float(field))
    except ValueError:
        return 0


class NvmlGpus:
    """GPUs through NVML (``pynvml`` from nvidia-ml-py), imported only when asked."""

    def gpus(self) -> tuple[Gpu, ...]:
        import pynvml

        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise RuntimeError(f"NVML is not usable: {e}") from e
        try:
            found = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
                name = pynvml.nvmlDeviceGetName(handle)
                uuid = pynvml.nvmlDeviceGetUUID(handle)
                try:
                    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                except pynvml.NVMLError:
                    procs = []
                found.append(
                    Gpu(
                        index=i,
                        uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                        name=name.decode() if isinstance(name, bytes) else str(name),
                        total_bytes=int(mem.total),
                        free_bytes=int(mem.free),
                        processes=tuple(int(p.pid) for p in procs),
                    )
                )
            return tuple(found)
        finally:
            pynvml.nvmlShutdown()


Runner = Callable[[list[str]], str]


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=20).stdout


class NvidiaSmiGpus:
    """GPUs by running ``nvidia-smi``; ``runner`` takes an argv and returns stdout (injectable for tests)."""

    def __init__(self, runner: Runner = _run) -> None:
        self.runner = runner

    def gpus(self) -> tuple[Gpu, ...]:
        if self.runner is _run and not shutil.which("nvidia-smi"):
            raise OSError("nvidia-smi is not on PATH")
        gpu_csv = self.runner(["nvidia-smi", f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"])
        try:
            apps = self.runner(
                ["nvidia-smi", f"--query-compute-apps={SMI_APPS_QUERY}", "--format=csv,noheader"]
            )
        except (OSError, subprocess.SubprocessError):
            apps = ""
        return parse_nvidia_smi(gpu_csv, apps)


class StaticGpus:
    """A fixed list: ``--assume-gpus`` and tests."""

    def __init__(self, gpus: tuple[Gpu, ...]) -> None:
        self._gpus = gpus

    def gpus(self) -> tuple[Gpu, ...]:
        return self._gpus


def detect_gpus(sources: tuple[GpuSource, ...] | None = None) -> tuple[tuple[Gpu, ...], tuple[str, ...]]:
    """This host's GPUs from the first source that works, and notes on the ones that did not.
    No GPU (no driver, no NVML, no nvidia-smi) gives ``((), notes)``: a CPU-only inventory."""
    notes: list[str] = []
    for source in sources or (NvmlGpus(), NvidiaSmiGpus()):
        try:
            return source.gpus(), tuple(notes)
        except (ImportError, OSError, RuntimeError, ValueError, subprocess.SubprocessError) as e:
            notes.append(f"{type(source).__name__}: {e}")
    return (), tuple(notes)
