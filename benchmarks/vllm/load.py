"""The gateway in front of real vLLM, loaded by vLLM's own client, ``vllm bench serve``.

One vLLM deployment (``llmdock up``) serves every round; ``llmdock serve`` runs in front of it, and so
does nginx (``proxy_buffering off``, one worker), the reference for what any proxy costs on this machine.
Each round runs ``vllm bench serve`` (in a container of the same image, ``--network host``) once direct
to the engine, once through nginx and once through the gateway, the order rotating every round (D N G,
N G D, G D N…), for each load profile; every run gets its own random prompts (``--seed``), so the prefix
cache favours none.

CPU placement: vLLM's CPU backend binds its OpenMP compute thread to CPU 0 and reserves CPU 1 for its
API server (``VLLM_CPU_OMP_THREADS_BIND=auto``, read from its log). The gateway and nginx (``taskset -c 1``)
and the load generator (``--cpuset-cpus 1``) go to CPU 1 too, beside the API server, so neither takes the
compute core from the engine. CPU seconds of the engine container and of the gateway are read per run.
"""

from __future__ import annotations

import json
import os
import shutil
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
PROXIES = ("nginx", "gateway")  # each compared with direct
NGINX_CONF = """worker_processes 1; daemon off; pid {dir}/nginx.pid; error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};
  uwsgi_temp_path {dir}; scgi_temp_path {dir};
  upstream engine {{ server 127.0.0.1:{up}; keepalive 512; }}
  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://engine; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_buffering off; proxy_request_buffering off; }} }} }}
"""


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
        self.bases: dict[str, str] = {}
        self.pids: dict[str, int] = {}
        self.home = home

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
        engine = self.bases["direct"] = up["url"].removesuffix("/v1")
        argvs = {"gateway": [self.llmdock, "serve", "--port", "{port}"]}
        if shutil.which("nginx"):
            conf = self.home / "nginx.conf"
            argvs["nginx"] = ["nginx", "-e", str(self.home / "nginx.err"), "-c", str(conf)]
        for path, argv in argvs.items():
            port = free_port()
            if path == "nginx":
                up_port = engine.rsplit(":", 1)[1]
                conf.write_text(NGINX_CONF.format(dir=self.home, up=up_port, port=port))
            proc = subprocess.Popen(
                ["taskset", "-c", self.cpus, *(a.format(port=port) for a in argv)],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.owned.procs.append(proc)
            self.pids[path] = proc.pid
            self.bases[path] = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while not serves_models(self.bases[path], self.name):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{path} did not come up (or does not list {self.name})")
                time.sleep(0.2)
        return {**self.bases, "engine_ready_s": up["ready_after_s"]}

    def paths(self) -> tuple[str, ...]:
        return ("direct", *(p for p in PROXIES if p in self.bases))

    def one(self, path: str, p: Profile, seed: int, tag: str) -> dict[str, Any]:
        base = self.bases[path]
        result_file = f"{tag}.json"
        name = self.owned.add(f"bench-load-{tag}")
        engine0, t0 = cpu_seconds_container(self.name), time.monotonic()
        proxies0 = {p: cpu_seconds_pid(pid) for p, pid in self.pids.items()}
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
            client_wall_s=wall,
            **{f"{p}_cpu_s": cpu_seconds_pid(pid) - proxies0[p] for p, pid in self.pids.items()},
        )
        return row

    def rounds(self, n: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        log("load: warm-up, one short run each way (discarded)")
        paths = self.paths()
        for path in paths:
            self.one(path, Profile("warm-up", "inf", 64), 7, f"warmup-{path}")
        seed = 100
        for r in range(n):
            k = r % len(paths)
            order = paths[k:] + paths[:k]
            for pi, p in enumerate(PROFILES):
                for path in order:
                    seed += 1
                    row = self.one(path, p, seed, f"r{r}-p{pi}-{path}")
                    row["round"] = r
                    log(
                        f"  round {r} {p.name} {path}: {row['request_throughput']:.2f} req/s, "
                        f"TTFT p50 {row['median_ttft_ms']:.1f} ms, ITL p50 {row['median_itl_ms']:.2f} ms, "
                        f"{path} CPU {row.get(f'{path}_cpu_s', 0.0):.2f}s"
                    )
                    rows.append(row)
        return rows


def serves_models(base: str, model: str) -> bool:
    """The gateway is up once its ``/v1/models`` lists ``model`` (it routes by deployment name)."""
    status, body = get_json(base + "/v1/models")
    return status == 200 and model in [m.get("id") for m in (body or {}).get("data", [])]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per profile and metric: the median of each path, and for each proxy vs direct the ratio of
    medians and the median of the paired (same-round) ratios."""
    out: dict[str, Any] = {}
    paths = [p for p in ("direct", *PROXIES) if any(r["path"] == p for r in rows)]
    for p in PROFILES:
        mine = [r for r in rows if r["profile"] == p.name]
        by = {
            path: sorted((r for r in mine if r["path"] == path), key=lambda r: r["round"]) for path in paths
        }
        entry: dict[str, Any] = {"rate": p.rate, "prompts": p.prompts, "rounds": len(by["direct"])}
        cpu = [f"{x}_cpu_s" for x in paths if x != "direct"]
        for m in (*METRICS, "engine_cpu_s", *cpu):
            e: dict[str, Any] = {path: median([r[m] for r in by[path]]) for path in paths}
            d = e["direct"]
            for path in paths[1:]:
                paired = [x[m] / dr[m] for dr, x in zip(by["direct"], by[path], strict=True) if dr[m]]
                e[f"{path}_ratio_of_medians"] = e[path] / d if d else None
                e[f"{path}_median_paired_ratio"] = median(paired) if paired else None
            entry[m] = e
        entry["failed"] = sum(r["failed"] for r in mine)
        for path in paths[1:]:
            entry[f"{path}_cpu_ms_per_request"] = 1000 * median(
                [r[f"{path}_cpu_s"] / r["completed"] for r in by[path]]
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
