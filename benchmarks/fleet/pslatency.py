"""Wall time of the real ``llmdock ps`` with 0-3 remote hosts, and with one of them unreachable.

The hosts are the fleet tests' (:mod:`tests.support.fleet`): each a network namespace with its own
dockerd and sshd, reached over real SSH with a generated key, built by its ``fleet()`` in a slot of
their own (their own addresses), so a fleet test running beside this does not meet them. Each host
(and this one) runs two llmdock-labelled containers of a 2 MB image (``/bin/sleep`` and its
libraries, ``docker import``-ed; no engine serves). ``ps`` is run as a fresh process each time, as
a user runs it: every remote host costs an SSH connection (key exchange, auth, a socket forward).

Unreachable, three ways: ``refused`` (sshd stopped: the TCP connect is refused at once), ``silent``
(the host drops every packet to port 22, iptables inside its namespace: ssh waits out its 4 s
ConnectTimeout), ``hung`` (sshd frozen with SIGSTOP: the kernel accepts the connection, no SSH banner
comes: ssh's ConnectTimeout covers the banner wait too; llmdock's own bound is 10 s, ``READY_S``).
Each state is set up just before its run and undone after it, and the cases run interleaved, one of
each per round, so the shared machine's changing load falls on all of them alike.

Everything started here is removed in ``finally`` (containers, sshd, dockerd, namespaces, image
stores of fb1-fb3, the llmdock home), also on SIGTERM.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.support.fleet import FleetHost, fleet, remove_leftovers  # noqa: E402

from llmdock.hosts.ssh import CONNECT_TIMEOUT_S, READY_S  # noqa: E402
from llmdock.planning.container import labels_for  # noqa: E402

IMAGE = "fleetbench/sleep:1"
NAMES = ("fb1", "fb2", "fb3")
PER_HOST = 2
LLMDOCK = str(ROOT / ".venv" / "bin" / "llmdock")


def sleep_rootfs() -> bytes:
    """A tar of ``/bin/sleep`` and the shared libraries ``ldd`` names: an image of 2 MB."""
    done = subprocess.run(["ldd", "/bin/sleep"], capture_output=True, text=True, check=True)
    paths = ["/bin/sleep"] + [
        p for line in done.stdout.splitlines() for p in line.split() if p.startswith("/")
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in paths:
            tar.add(os.path.realpath(p), arcname=p.lstrip("/"))
    return buf.getvalue()


def docker_import(socket: str | None, rootfs: bytes) -> None:
    argv = ["docker", *(["-H", f"unix://{socket}"] if socket else []), "import", "-", IMAGE]
    subprocess.run(argv, input=rootfs, capture_output=True, check=True, timeout=120)


def labelled(client: Any, name: str, port: int) -> None:
    """A running container with the labels ``up`` gives a deployment (llmdock.planning.container)."""
    labels = labels_for(
        name=name,
        model=f"/data/models/{name}",
        engine="vllm",
        port=port,
        gpus=(),
        spec_hash="0" * 16,
        spec={"name": name},
        served_name=name,
        health_path="/health",
        model_dir=f"/data/models/{name}",
        runtime="docker",
        engine_env="",
        group=None,
    )
    client.containers.run(IMAGE, ["/bin/sleep", "infinity"], name=name, labels=labels, detach=True,
                          network_mode="host")  # fmt: skip


def ps_once(
    env: dict[str, str], argv: tuple[str, ...] = ("ps",)
) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    done = subprocess.run([LLMDOCK, *argv], capture_output=True, text=True, env=env, timeout=120)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"llmdock {' '.join(argv)} failed: {done.stderr[-1000:]}")
    return wall, done


def summary(walls: list[float], last: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """Median and spread of ``walls``, and what the last run listed (names of ours) and noted."""
    rows = [line.split() for line in last.stdout.splitlines()]
    return {
        "runs": len(walls),
        "median_s": round(statistics.median(walls), 3),
        "min_s": round(min(walls), 3),
        "max_s": round(max(walls), 3),
        "listed": sorted(r[0] for r in rows if r and r[0].startswith("fbench-")),
        "rows": max(0, len(rows) - 1),  # with other work's deployments on this host's shared Docker
        "stderr": [ln for ln in last.stderr.splitlines() if ln.strip()],
    }


@dataclass
class Case:
    """One row: ``llmdock ARGV`` in ``env``; ``enter``/``leave`` put a host into the state measured
    (frozen, dropping packets, sshd stopped) and back, around each run."""

    env: dict[str, str]
    argv: tuple[str, ...] = ("ps",)
    enter: Callable[[], None] = lambda: None
    leave: Callable[[], None] = lambda: None


def interleaved(
    cases: dict[str, Case], runs: int, before_round: Callable[[], None] = lambda: None
) -> dict[str, Any]:
    """Each case once per round, ``runs`` rounds after a warm-up one, so drift in the machine's load
    (it is shared) falls on every case alike."""
    walls: dict[str, list[float]] = {k: [] for k in cases}
    last: dict[str, subprocess.CompletedProcess[str]] = {}
    for i in range(runs + 1):
        before_round()
        for name, case in cases.items():
            case.enter()
            try:
                wall, last[name] = ps_once(case.env, case.argv)
            finally:
                case.leave()
            if i:
                walls[name].append(wall)
    return {name: summary(walls[name], last[name]) for name in cases}


@contextlib.contextmanager
def hosts(local: Any, rootfs: bytes) -> Iterator[tuple[list[FleetHost], Path]]:
    """fb1-fb3 (the harness's own slot, addresses and clean-up) with their containers and sshd."""
    with fleet(local, {name: ("", ()) for name in NAMES}) as built:
        try:
            for h in built.hosts.values():
                docker_import(h.socket, rootfs)
                for k in range(PER_HOST):
                    labelled(h.client, f"fbench-{h.name}-{k}", 9100 + k)
            yield list(built.hosts.values()), built.identity
        finally:
            for h in built.hosts.values():  # a frozen sshd would not end on SIGTERM
                if h.sshd is not None and h.sshd.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(h.sshd.pid, signal.SIGCONT)
    for name in NAMES:  # the image stores the harness keeps for the tests' next run
        remove_leftovers(built.slot, name, purge=True)


def measure(runs: int) -> dict[str, Any]:
    import docker

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    rootfs = sleep_rootfs()
    local = docker.from_env()
    top = Path(tempfile.mkdtemp(prefix="fleetbench-homes-"))
    # As an installed llmdock runs: with byte code cached (pip compiles it on install). Here the
    # cache lives in its own directory, so nothing is written into the checkout.
    skip = ("LLMDOCK_", "PYTHONDONTWRITEBYTECODE")
    base = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    base |= {"COLUMNS": "200", "PYTHONPYCACHEPREFIX": str(top / "pycache")}
    # One llmdock home per case: home k knows fb1..fbk (home 0: none, this host only).
    envs = {k: base | {"LLMDOCK_HOME": str(top / f"home{k}")} for k in range(len(NAMES) + 1)}
    mine = [f"fbench-local-{k}" for k in range(PER_HOST)]
    results: dict[str, Any] = {
        "connect_timeout_s": CONNECT_TIMEOUT_S,
        "ready_bound_s": READY_S,
        "containers_per_host": PER_HOST,
        "cases": {},
    }
    try:
        for n in mine:
            with contextlib.suppress(docker.errors.NotFound):
                local.containers.get(n).remove(force=True)
        recreated = 0

        def ensure_local() -> None:
            """This host's Docker is shared: other work may remove every llmdock-labelled container
            (it happened during a run); put ours back before each round, and count it."""
            nonlocal recreated
            present = {c.name for c in local.containers.list(all=True, filters={"name": "fbench-local-"})}
            for k, n in enumerate(mine):
                if n not in present:
                    try:
                        labelled(local, n, 9200 + k)
                    except docker.errors.ImageNotFound:
                        docker_import(None, rootfs)
                        labelled(local, n, 9200 + k)
                    recreated += 1

        docker_import(None, rootfs)
        ensure_local()
        recreated = 0
        with hosts(local, rootfs) as (built, identity):
            for k in range(1, len(built) + 1):
                for h in built[:k]:
                    add = [LLMDOCK, "hosts", "add", h.name, h.url, "--identity", str(identity),
                           "--docker-socket", h.socket]  # fmt: skip
                    done = subprocess.run(add, capture_output=True, text=True, env=envs[k], timeout=60)
                    if done.returncode != 0:
                        raise RuntimeError(f"hosts add {h.name} failed: {done.stderr}")
            fb = built[-1]

            def sshd() -> int:
                assert fb.sshd is not None
                return fb.sshd.pid

            drop = ("iptables", "-I", "INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP")
            undrop = ("iptables", "-D", *drop[2:])
            public = Path(f"{identity}.pub").read_text()
            all3 = envs[len(built)]
            cases = {
                "floor: llmdock --help (process start, imports)": Case(envs[0], ("--help",)),
                "local only": Case(envs[0]),
                **{f"local + {k} remote": Case(envs[k]) for k in range(1, len(built) + 1)},
                f"local + 3 remote, {fb.name} hung (sshd frozen)": Case(
                    all3,
                    enter=lambda: os.kill(sshd(), signal.SIGSTOP),
                    leave=lambda: os.kill(sshd(), signal.SIGCONT),
                ),
                f"local + 3 remote, {fb.name} silent (packets dropped)": Case(
                    all3,
                    enter=lambda: subprocess.run(fb.nsenter(*drop), check=True, capture_output=True),
                    leave=lambda: subprocess.run(fb.nsenter(*undrop), check=True, capture_output=True),
                ),
                f"local + 3 remote, {fb.name} refused (sshd stopped)": Case(
                    all3, enter=fb.stop_sshd, leave=lambda: fb.start_sshd(public)
                ),
            }
            results["cases"] = interleaved(cases, runs, ensure_local)
            results["local_containers_recreated"] = recreated
    finally:
        for n in mine:
            with contextlib.suppress(docker.errors.NotFound):
                local.containers.get(n).remove(force=True)
        with contextlib.suppress(docker.errors.DockerException):
            local.images.remove(IMAGE)
        shutil.rmtree(top, ignore_errors=True)
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 3), indent=1))
