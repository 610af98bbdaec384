"""GPU inventory: --assume-gpus parsing, nvidia-smi text (captured on an H100), source fallback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from llmdock.errors import InvalidSpec
from llmdock.gpuinfo import (
    KNOWN_GPUS,
    NvidiaSmiGpus,
    StaticGpus,
    detect_gpus,
    parse_assume_gpus,
    parse_nvidia_smi,
)
from llmdock.planning.inventory import Gpu

GiB = 1 << 30
MiB = 1 << 20
CAPTURED = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia-smi"


@pytest.mark.parametrize(
    ("text", "count", "total"),
    [
        ("8x80GiB", 8, 80 * GiB),
        ("8x80G", 8, 80 * GiB),
        ("2 x 80GB", 2, 80 * GiB),
        ("80GiB", 1, 80 * GiB),
        ("4xH100", 4, 81559 * MiB),
        ("2xH200", 2, 143771 * MiB),
        ("1xa100-40g", 1, 40960 * MiB),
        ("2xA100 80GB", 2, 81920 * MiB),
        ("1x1.5T", 1, int(1.5 * (1 << 40))),
    ],
)
def test_assume_gpus(text: str, count: int, total: int) -> None:
    gpus = parse_assume_gpus(text)
    assert len(gpus) == count
    assert all(g.total_bytes == g.free_bytes == total for g in gpus)
    assert [g.index for g in gpus] == list(range(count))


def test_assume_mixed_list() -> None:
    gpus = parse_assume_gpus("2xH100,1xL40S")
    assert [g.name for g in gpus] == ["assumed H100", "assumed H100", "assumed L40S"]
    assert gpus[2].total_bytes == KNOWN_GPUS["L40S"] * MiB


@pytest.mark.parametrize("text", ["", "8x", "0x80GiB", "4xB9000", "x80", "8x0GiB"])
def test_assume_gpus_refused(text: str) -> None:
    with pytest.raises(InvalidSpec) as e:
        parse_assume_gpus(text)
    assert "8x80GiB" in e.value.hint


def test_nvidia_smi_captured_on_h100() -> None:
    # `nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.free --format=csv,noheader,nounits`,
    # captured on the benchmark machine (benchmarks/planner/RESULTS.md).
    (gpu,) = parse_nvidia_smi((CAPTURED / "h100-gpus.csv").read_text())
    assert (gpu.index, gpu.name) == (0, "NVIDIA H100 80GB HBM3")
    assert gpu.uuid == "GPU-29abafc0-093e-e285-5195-cf85618010d3"
    assert (gpu.total_bytes, gpu.free_bytes) == (81559 * MiB, 81079 * MiB)


SMI = """0, GPU-aaa, NVIDIA A100-SXM4-80GB, 81920, 1024
1, GPU-bbb, NVIDIA A100-SXM4-80GB, 81920, 81000
2, GPU-ccc, NVIDIA A100-SXM4-80GB, [N/A], [N/A]
"""
APPS = """GPU-aaa, 4242
GPU-aaa, 4343
GPU-bbb, [N/A]
"""


def test_nvidia_smi_processes_and_na() -> None:
    gpus = parse_nvidia_smi(SMI, APPS)
    assert [g.processes for g in gpus] == [(4242, 4343), (), ()]
    assert gpus[2].total_bytes == 0


def test_nvidia_smi_garbage() -> None:
    with pytest.raises(ValueError, match="unexpected"):
        parse_nvidia_smi("No devices were found")


def test_nvidia_smi_source_with_runner() -> None:
    calls: list[list[str]] = []

    def runner(argv: list[str]) -> str:
        calls.append(argv)
        if "--query-compute-apps=gpu_uuid,pid" in argv:
            raise subprocess.CalledProcessError(1, argv)
        return SMI

    gpus = NvidiaSmiGpus(runner).gpus()
    assert len(gpus) == 3 and calls[0][1] == "--query-gpu=index,uuid,name,memory.total,memory.free"


class Broken:
    def gpus(self) -> tuple[Gpu, ...]:
        raise RuntimeError("NVML is not usable: driver not loaded")


def test_detect_falls_back_in_order() -> None:
    one = (Gpu(0, name="x", total_bytes=1, free_bytes=1),)
    assert detect_gpus((Broken(), StaticGpus(one))) == (
        one,
        ("Broken: NVML is not usable: driver not loaded",),
    )
    assert detect_gpus((Broken(),)) == ((), ("Broken: NVML is not usable: driver not loaded",))
