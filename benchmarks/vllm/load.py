"""The gateway in front of real vLLM, loaded by vLLM's own client, ``vllm bench serve``.

One vLLM deployment (``llmdock up``) serves every round; ``llmdock serve`` runs in front of it. Each
round runs ``vllm bench serve`` (in a container of the same image, ``--network host``) once direct to
the engine and once through the gateway, the order flipping every round (D G, G D, D G…), for each
load profile; every run gets its own random prompts (``--seed``), so the prefix cache favours neither.

CPU placement: vLLM's CPU backend binds its OpenMP compute thread to CPU 0 and reserves CPU 1 for its
API server (``VLLM_CPU_OMP_THREADS_BIND=auto``, read from its log). The gateway (``taskset -c 1``) and
the load generator (``--cpuset-cpus 1``) go to CPU 1 too, beside the API server, so neither takes the
compute core from the engine. CPU seconds of the engine container and of the gateway are read per run.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    IMAGE,
    Owned,
    cpu_seconds_container,
    cpu_seconds_pid,
    free_port,
    get_json,
    log,
    median,
    up_argv,
)

METRICS = (
    "request_throughput",
    "output_throughput",
    "median_ttft_ms",
    "p99_ttft_ms",
    "median_itl_ms",
    "p99_itl_ms",
    "median_tpot_ms",
    "median_e2el_ms",
)
HIGHER_IS_BETTER = ("request_throughput", "output_throughput")


@dataclass(frozen=True)
class Profile:
    """One load shape: ``rate`` requests/s (Poisson) or ``inf`` (all at once)."""

    name: str
    rate: str
    prompts: int


PROFILES = (Profile("saturating (all at once)", "inf", 400), Profile("fixed rate 20 req/s", "20", 300))


def bench_argv(
    name: str,
    base: str,
    model: str,
    model_dir: Path,
    out: Path,
    p: Profile,
    seed: int,
    result_file: str,
    cpus: str,
) -> list[str]:
    """``vllm bench serve`` in a throwaway container of the engine image (the client nobody here wrote)."""
    return [
        "docker",
        "run",
        "--rm",
        "--name",
        name,
        "--network",
        "host",
        "--cpuset-cpus",
        cpus,
        "-e",
        "VLLM_TARGET_DEVICE=cpu",
        "-e",
        "HF_HUB_OFFLINE=1",
        "-e",
        "VLLM_NO_USAGE_STATS=1",
        "-v",
        f"{model_dir}:/work/{model_dir.name}:ro",
        "-v",
        f"{out}:/out",
        "--entrypoint",
        "/opt/engine/bin/vllm",
        IMAGE,
        "bench",
        "serve",
        "--backend",
        "openai-chat",
        "--base-url",
        base,
        "--endpoint",
        "/v1/chat/completions",
        "--model",
        model,
        "--tokenizer",
        f"/work/{model_dir.name}",
        "--dataset-name",
        "random",
        "--random-input-len",
        "64",
        "--random-output-len",
        "32",
        "--ignore-eos",
        "--num-prompts",
        str(p.prompts),
        "--request-rate",
        p.rate,
        "--seed",
        str(seed),
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--metric-percentiles",
        "50,99",
        "--save-result",
        "--result-dir",
        "/out",
        "--result-filename",
        result_file,
        "--disable-tqdm",
    ]


class Load:
    def __init__(
        self, llmdock: Path, model: Path, home: Path, owned: Owned, out: Path, cpus: str = "1"
    ) -> None:
        self.llmdock, self.model, self.owned, self.out, self.cpus = str(llmdock), model, owned, out, cpus
        self.env = {**os.environ, "LLMDOCK_HOME": str(home)}
        self.name = "bench-engine"
        self.engine_base = ""
        self.gateway_base = ""
        self.gateway_pid = 0

    def start(self, timeout_s: float) -> dict[str, Any]:
        self.owned.add(self.name)
        log("load: llmdock up bench-engine (shared by every round)")
        done = subprocess.run(
            up_argv(self.llmdock, str(self.model), self.name, "--timeout", str(timeout_s)),
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"llmdock up {self.name} failed: {done.stderr.strip()[-600:]}")
        up = json.loads(done.stdout)
        self.engine_base = up["url"].removesuffix("/v1")
        port = free_port()
        self.gateway_base = f"http://127.0.0.1:{port}"
        gateway = subprocess.Popen(
            ["taskset", "-c", self.cpus, self.llmdock, "serve", "--port", str(port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.owned.procs.append(gateway)
        self.gateway_pid = gateway.pid
        deadline = time.monotonic() + 60
        while not serves_models(self.gateway_base, self.name):
            if gateway.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("llmdock serve did not come up (or does not list bench-engine)")
            time.sleep(0.2)
        return {
            "engine": self.engine_base,
            "gateway": self.gateway_base,
            "engine_ready_s": up["ready_after_s"],
        }

    def one(self, path: str, p: Profile, seed: int, tag: str) -> dict[str, Any]:
        base = self.engine_base if path == "direct" else self.gateway_base
        result_file = f"{tag}.json"
        name = self.owned.add(f"bench-load-{tag}")
        engine0, gw0, t0 = (
            cpu_seconds_container(self.name),
            cpu_seconds_pid(self.gateway_pid),
            time.monotonic(),
        )
        done = subprocess.run(
            bench_argv(name, base, self.name, self.model, self.out, p, seed, result_file, self.cpus),
            capture_output=True,
            text=True,
            check=False,
        )
        self.owned.names.remove(name)  # --rm removed it
        if done.returncode != 0:
            raise RuntimeError(f"vllm bench serve ({tag}) failed: {done.stdout[-400:]} {done.stderr[-400:]}")
        wall = time.monotonic() - t0
        data = json.loads((self.out / result_file).read_text())
        row = {k: data[k] for k in METRICS}
        row.update(
            path=path,
            profile=p.name,
            seed=seed,
            completed=data["completed"],
            failed=data["failed"],
            output_tokens=data["total_output_tokens"],
            duration_s=data["duration"],
            engine_cpu_s=cpu_seconds_container(self.name) - engine0,
            gateway_cpu_s=cpu_seconds_pid(self.gateway_pid) - gw0,
            client_wall_s=wall,
        )
        return row

    def rounds(self, n: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        log("load: warm-up, one short run each way (discarded)")
        for path in ("direct", "gateway"):
            self.one(path, Profile("warm-up", "inf", 64), 7, f"warmup-{path}")
        seed = 100
        for r in range(n):
            order = ("direct", "gateway") if r % 2 == 0 else ("gateway", "direct")
            for pi, p in enumerate(PROFILES):
                for path in order:
                    seed += 1
                    row = self.one(path, p, seed, f"r{r}-p{pi}-{path}")
                    row["round"] = r
                    log(
                        f"  round {r} {p.name} {path}: {row['request_throughput']:.2f} req/s, "
                        f"TTFT p50 {row['median_ttft_ms']:.1f} ms, ITL p50 {row['median_itl_ms']:.2f} ms, "
                        f"gateway CPU {row['gateway_cpu_s']:.2f}s"
                    )
                    rows.append(row)
        return rows


def serves_models(base: str, model: str) -> bool:
    """The gateway is up once its ``/v1/models`` lists ``model`` (it routes by deployment name)."""
    status, body = get_json(base + "/v1/models")
    return status == 200 and model in [m.get("id") for m in (body or {}).get("data", [])]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per profile: medians per path, ratio of medians, median of the paired (same-round) ratios."""
    out: dict[str, Any] = {}
    for p in PROFILES:
        mine = [r for r in rows if r["profile"] == p.name]
        by = {
            path: sorted((r for r in mine if r["path"] == path), key=lambda r: r["round"])
            for path in ("direct", "gateway")
        }
        entry: dict[str, Any] = {"rate": p.rate, "prompts": p.prompts, "rounds": len(by["direct"])}
        for m in (*METRICS, "engine_cpu_s", "gateway_cpu_s"):
            d = median([r[m] for r in by["direct"]])
            g = median([r[m] for r in by["gateway"]])
            paired = [gr[m] / dr[m] for dr, gr in zip(by["direct"], by["gateway"], strict=True) if dr[m]]
            entry[m] = {
                "direct": d,
                "gateway": g,
                "ratio_of_medians": g / d if d else None,
                "median_paired_ratio": median(paired) if paired else None,
            }
        entry["failed"] = sum(r["failed"] for r in mine)
        entry["gateway_cpu_ms_per_request"] = 1000 * median(
            [r["gateway_cpu_s"] / r["completed"] for r in by["gateway"]]
        )
        out[p.name] = entry
    return out


def measure(load: Load, rounds: int, timeout_s: float) -> dict[str, Any]:
    setup = load.start(timeout_s)
    rows = load.rounds(rounds)
    return {
        "setup": setup,
        "cpus": load.cpus,
        "rows": rows,
        "summary": summarize(rows),
        "higher_is_better": list(HIGHER_IS_BETTER),
    }
