"""Added time to ready: ``llmdock up`` vs the same ``vllm serve`` started by plain ``docker run``.

Both paths use the same image, env, mounts and engine argv: the bare one takes them from
``llmdock up --dry-run --json`` for its own name (after the version probe is cached, so the argv is the
probed one), leaving out only llmdock's labels. Runs alternate llmdock, bare, llmdock, bare… so a slow
phase of the host lands on both.

- llmdock: from just before the ``llmdock up --json`` process starts to its exit (it waits for
  ``/health`` 200 and ``/v1/models`` listing the name itself); its own ``ready_after_s`` is kept too.
- bare: from just before ``docker run -d`` to the first 50 ms poll (from outside) at which ``/health``
  answers 200 and ``/v1/models`` lists the name.

For each run the container's ``Created`` and ``State.StartedAt`` (the daemon's clock) are read back, so
the time before the engine process starts and the engine's own start are told apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import Owned, container_times, docker, log, median, serves, up_argv

BARE_POLL_S = 0.05
STATE_EVERY = 20  # polls between two checks that the bare container still runs


@dataclass
class Run:
    path: str  # "llmdock" | "bare"
    index: int
    total_s: float  # start of the command to ready
    created_s: float  # start of the command to the container's Created stamp
    started_s: float  # start of the command to State.StartedAt (the engine process starts)
    engine_s: float  # StartedAt to ready (seen from outside / by llmdock's exit)
    ready_after_s: float | None = None  # llmdock's own figure: its readiness wait alone
    cold: bool = False  # the version probe ran (first use of the image in this state DB)


class Ready:
    def __init__(self, llmdock: Path, model: Path, home: Path, owned: Owned, timeout_s: float) -> None:
        self.llmdock, self.model, self.owned, self.timeout_s = str(llmdock), model, owned, timeout_s
        self.env = {**os.environ, "LLMDOCK_HOME": str(home)}
        import docker as docker_sdk

        self.sdk = docker_sdk.from_env()

    def _up_argv(self, name: str, *extra: str) -> list[str]:
        return up_argv(self.llmdock, str(self.model), name, *extra)

    def llmdock_run(self, index: int, *, cold: bool = False) -> Run:
        name = self.owned.add(f"bench-up-{index}")
        argv = self._up_argv(name, "--timeout", str(self.timeout_s))
        wall, t0 = time.time(), time.monotonic()
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False)
        total = time.monotonic() - t0
        if done.returncode != 0:
            raise RuntimeError(f"llmdock up {name} failed: {done.stderr.strip()[-600:]}")
        result = json.loads(done.stdout)
        created, started = container_times(name)
        run = Run(
            "llmdock",
            index,
            total,
            created - wall,
            started - wall,
            wall + total - started,
            float(result["ready_after_s"]),
            cold,
        )
        subprocess.run([self.llmdock, "rm", "-f", name], env=self.env, capture_output=True, check=False)
        self.owned.remove(name)
        return run

    def bare_argv(self, name: str) -> tuple[list[str], str, str]:
        """(``docker run`` argv, engine base URL, served name) that llmdock would use for ``name``."""
        done = subprocess.run(
            self._up_argv(name, "--dry-run"), env=self.env, capture_output=True, text=True, check=True
        )
        plan = json.loads(done.stdout)
        c = plan["container"]
        argv = [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            f"--ipc={c['ipc_mode']}",
            f"--network={c['network_mode']}",
            f"--restart={c['restart_policy']['Name']}:{c['restart_policy']['MaximumRetryCount']}",
            f"--log-driver={c['log_config']['type']}",
        ]
        for key, value in c["log_config"]["config"].items():
            argv += ["--log-opt", f"{key}={value}"]
        for m in c["mounts"]:
            argv += ["-v", f"{m['source']}:{m['target']}" + (":ro" if m["read_only"] else "")]
        for key, value in c["env"].items():
            argv += ["-e", f"{key}={value}"]
        argv += ["--entrypoint", c["entrypoint"][0], c["image"], *c["entrypoint"][1:], *c["command"]]
        return argv, f"http://127.0.0.1:{plan['port']}", str(plan["served_model_name"])

    def bare_run(self, index: int) -> Run:
        name = self.owned.add(f"bench-bare-{index}")
        argv, base, served = self.bare_argv(name)
        wall, t0 = time.time(), time.monotonic()
        subprocess.run(argv, capture_output=True, check=True)
        tick = 0
        while not serves(base, served):
            tick += 1
            # The exit check goes through the SDK once a second: a `docker inspect` process every 50 ms
            # costs enough CPU on 2 cores to slow the engine's own start by tens of seconds.
            if tick % STATE_EVERY == 0:
                state = self.sdk.containers.get(name).status
                if time.monotonic() - t0 > self.timeout_s or state not in ("running", "created"):
                    tail = docker("logs", "--tail", "20", name, check=False)
                    raise RuntimeError(f"bare vllm {name} not ready ({state}): {tail[-600:]}")
            time.sleep(max(0.0, t0 + tick * BARE_POLL_S - time.monotonic()))
        total = time.monotonic() - t0
        created, started = container_times(name)
        self.owned.remove(name)
        return Run("bare", index, total, created - wall, started - wall, wall + total - started)


def cli_costs(llmdock: str, model: Path, env: dict[str, str], reps: int = 5) -> dict[str, float]:
    """Median seconds of the CLI's fixed costs, measured apart: start (``--help``) and a full plan with
    the probe cached (``up --dry-run --json``: imports, inventory, Docker queries, no container)."""

    def timed(argv: list[str]) -> float:
        t0 = time.monotonic()
        subprocess.run(argv, env=env, capture_output=True, check=False)
        return time.monotonic() - t0

    up = [
        llmdock,
        "up",
        str(model),
        "--engine",
        "vllm",
        "--gpus",
        "none",
        "--name",
        "bench-plan",
        "--json",
        "--dry-run",
    ]
    return {
        "cli_help_s": median([timed([llmdock, "--help"]) for _ in range(reps)]),
        "up_dry_run_s": median([timed(up) for _ in range(reps)]),
    }


def summarize(runs: list[Run]) -> dict[str, Any]:
    warm_up = [r for r in runs if r.path == "llmdock" and not r.cold]
    bare = [r for r in runs if r.path == "bare"]
    pairs = list(zip(warm_up, bare, strict=False))

    def med(rs: list[Run], field: str) -> float:
        return median([float(getattr(r, field)) for r in rs])

    out: dict[str, Any] = {
        "runs": [asdict(r) for r in runs],
        "n_pairs": len(pairs),
        "median": {
            p: {f: med(rs, f) for f in ("total_s", "created_s", "started_s", "engine_s")}
            for p, rs in (("llmdock", warm_up), ("bare", bare))
        },
    }
    out["median"]["llmdock"]["ready_after_s"] = med(warm_up, "ready_after_s")
    out["median"]["llmdock"]["outside_wait_s"] = median(
        [r.total_s - (r.ready_after_s or 0.0) for r in warm_up]
    )
    out["added_s"] = {
        "median_minus_median": out["median"]["llmdock"]["total_s"] - out["median"]["bare"]["total_s"],
        "median_of_pairs": median([u.total_s - b.total_s for u, b in pairs]),
        "before_engine_start_pairs": median([u.started_s - b.started_s for u, b in pairs]),
        "after_engine_start_pairs": median([u.engine_s - b.engine_s for u, b in pairs]),
    }
    cold = [r for r in runs if r.cold]
    if cold:
        out["cold"] = asdict(cold[0])
        out["cold"]["outside_wait_s"] = cold[0].total_s - (cold[0].ready_after_s or 0.0)
    return out


def measure(ready: Ready, runs: int) -> dict[str, Any]:
    """One cold llmdock run (fresh state DB: the version probe runs), then ``runs`` warm pairs."""
    log("ready: cold llmdock up (version probe not cached yet)")
    results = [ready.llmdock_run(0, cold=True)]
    log(f"  cold: {results[0].total_s:.2f}s (ready_after_s {results[0].ready_after_s:.2f})")
    for i in range(1, runs + 1):
        for kind in ("llmdock", "bare"):
            r = ready.llmdock_run(i) if kind == "llmdock" else ready.bare_run(i)
            log(f"  {kind} {i}: {r.total_s:.2f}s (engine start at {r.started_s:.2f}s)")
            results.append(r)
    out = summarize(results)
    out["cli"] = cli_costs(ready.llmdock, ready.model, ready.env)
    return out
