"""llmdock on real vLLM (CPU build): added time to ready, and the gateway under ``vllm bench serve``.

Run from the repository root (``benchmarks/vllm/run`` does, after making sure of the venv and image)::

    PYTHONPATH=benchmarks/vllm .venv/bin/python benchmarks/vllm/bench.py --runs 5 --rounds 3

Each part first waits (up to 10 minutes, polling every 30 s) while the test suite's containers
(``v-*``, ``vf-*``, ``t-*``) run. Writes ``benchmarks/vllm/results.json`` (``--only`` one part keeps the
other part's recorded numbers) and ``RESULTS.md`` from it. Every container started is named
``bench-…`` and removed at the end, on error and on Ctrl-C; ``LLMDOCK_HOME`` is a fresh temp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import load
import ready
import report
from common import IMAGE, Owned, log, machine, other_containers, wait_for_tests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def ensure_image() -> None:
    import docker as docker_sdk

    from llmdock.demo.image import VLLM_TAG, ensure_engine_image

    assert VLLM_TAG == IMAGE, (VLLM_TAG, IMAGE)
    ensure_engine_image(docker_sdk.from_env(), VLLM_TAG)


def noise(tag: str, waited_s: float, t0: float) -> dict[str, Any]:
    return {
        "part": tag,
        "waited_for_tests_s": round(waited_s, 1),
        "took_s": round(time.monotonic() - t0, 1),
        "load_avg_end": os.getloadavg(),
        "other_containers_end": other_containers(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="ready,load", help="ready, load or both (comma separated)")
    ap.add_argument("--runs", type=int, default=5, help="warm llmdock/bare pairs for time to ready")
    ap.add_argument("--rounds", type=int, default=3, help="direct/gateway rounds per load profile")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds one engine may take to be ready")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for the test suite's containers")
    ap.add_argument("--results", type=Path, default=HERE / "results.json")
    args = ap.parse_args(argv)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}

    ensure_image()
    llmdock = ROOT / ".venv" / "bin" / "llmdock"
    results: dict[str, Any] = json.loads(args.results.read_text()) if args.results.is_file() else {}
    results["machine"] = machine()
    results.setdefault("noise", {})
    home = Path(tempfile.mkdtemp(prefix="bench-vllm-home-"))
    try:
        from llmdock.demo.tinymodel import ensure_tiny_model

        model = ensure_tiny_model(home / "models" / "tiny-qwen")
        with Owned() as owned:
            if "ready" in parts:
                waited = 0.0 if args.no_wait else wait_for_tests()
                t0 = time.monotonic()
                others = other_containers()
                r = ready.Ready(llmdock, model, home, owned, args.timeout)
                results["ready"] = ready.measure(r, args.runs)
                results["noise"]["ready"] = {**noise("ready", waited, t0), "other_containers_start": others}
                write(args.results, results)
            if "load" in parts:
                waited = 0.0 if args.no_wait else wait_for_tests()
                t0 = time.monotonic()
                others = other_containers()
                out = home / "bench-out"
                out.mkdir()
                ld = load.Load(llmdock, model, home, owned, out)
                results["load"] = load.measure(ld, args.rounds, args.timeout)
                results["noise"]["load"] = {**noise("load", waited, t0), "other_containers_start": others}
                write(args.results, results)
    except KeyboardInterrupt:
        log("interrupted: containers removed, results not written")
        return 130
    finally:
        shutil.rmtree(home, ignore_errors=True)
    log(f"wrote {args.results} and {args.results.with_name('RESULTS.md')}")
    return 0


def write(path: Path, results: dict[str, Any]) -> None:
    results["recorded"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    path.with_name("RESULTS.md").write_text(report.render(results))


if __name__ == "__main__":
    sys.exit(main())
