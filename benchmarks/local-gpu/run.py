"""Local runtime on a real GPU: deploy the tiny model on ONE GPU and check the engine saw only it.

Runs on a GPU host with torch + transformers and no network (no Docker, no llmdock venv needed):

    PYTHONPATH=src python benchmarks/local-gpu/run.py --gpu 0 --wheels build/local-gpu-wheels \
        --out benchmarks/local-gpu/results.json

What it does, through llmdock's own API (Lifecycle + LocalRuntime, as `up --runtime local` does):

1. an engine environment for this Python: a prefix whose ``bin/`` runs this interpreter (and a
   ``transformers`` launcher), with ``transformers[serving]``'s missing pure-Python deps installed
   from ``--wheels`` into a side directory when the host lacks them;
2. a probe launched the same way as the engine (same env, ``CUDA_VISIBLE_DEVICES``, detached
   session) that prints what torch sees: device count, name, the variable itself;
3. ``up`` of the tiny model with ``--gpus device=N``: time to ready, one chat completion over HTTP,
   NVML's list of compute processes per GPU (the engine's PID must be on GPU N and nowhere else);
4. ``stop`` then ``start`` (warm restart time), then ``rm``.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

PROBE = (
    "import json, os, torch; n = torch.cuda.device_count(); "
    "print('PROBE ' + json.dumps({'CUDA_VISIBLE_DEVICES': os.environ.get('CUDA_VISIBLE_DEVICES'), "
    "'device_count': n, 'names': [torch.cuda.get_device_name(i) for i in range(n)], "
    "'pid': os.getpid(), 'sid': os.getsid(0)}), flush=True)"
)
SERVING_DISTS = [
    "fastapi", "starlette", "uvicorn", "pydantic", "pydantic-core", "openai", "accelerate", "rich",
    "anyio", "h11", "click", "sniffio", "annotated-types", "typing-inspection", "jiter", "distro",
    "httpx", "httpcore", "idna", "certifi", "tqdm", "typing-extensions", "markdown-it-py", "mdurl",
    "pygments", "psutil", "annotated-doc",
]  # fmt: skip


def make_env(root: Path, wheels: Path | None) -> tuple[Path, dict[str, str], list[str]]:
    """A prefix for this interpreter (``bin/python``, ``bin/python3``, ``bin/transformers``) and the
    variables the engine needs (PYTHONPATH to the side directory when wheels were installed)."""
    prefix = root / "engine-env"
    (prefix / "bin").mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):
        # Not a symlink: a venv's python found through a link elsewhere loses its site-packages.
        shim = prefix / "bin" / name
        shim.write_text(
            f"#!{sys.executable}\nimport os, sys\nos.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
        )
        shim.chmod(0o755)
    launcher = prefix / "bin" / "transformers"
    launcher.write_text(
        f"#!{sys.executable}\nimport sys\nfrom transformers.cli.transformers import main\nsys.exit(main())\n"
    )
    launcher.chmod(0o755)
    dists = list(SERVING_DISTS)
    if wheels is not None:  # whatever the wheel directory holds (e.g. fastapi's newer dependencies)
        dists += sorted(
            {f.name.split("-")[0].lower().replace("_", "-") for f in wheels.glob("*.whl")} - {*dists, "tomli"}
        )
    missing = []
    for dist in dists:
        try:
            md.version(dist)
        except md.PackageNotFoundError:
            missing.append(dist)
    extra: dict[str, str] = {}
    if wheels is not None:
        have = {f.name.split("-")[0].lower().replace("_", "-") for f in wheels.glob("*.whl")}
        missing = [d for d in missing if d in have]
    if missing and wheels is not None:
        side = root / "site"
        argv = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--target",
            str(side),
        ]
        subprocess.run([*argv, "--find-links", str(wheels), *missing], check=True)
        extra["PYTHONPATH"] = str(side)
    return prefix, extra, missing


def nvml_processes() -> dict[int, list[int]]:
    import pynvml

    pynvml.nvmlInit()
    try:
        out = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            out[i] = sorted(int(p.pid) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h))
        return out
    finally:
        pynvml.nvmlShutdown()


def chat(port: int, model: str) -> dict[str, Any]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8})
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", body.encode(), {"Content-Type": "application/json"}
    )
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=120) as r:
        reply = json.loads(r.read())
    return {
        "seconds": round(time.monotonic() - t0, 3),
        "usage": reply.get("usage"),
        "content": reply["choices"][0]["message"]["content"],
    }


def wait_health_then_ready(port: int, served: str, t0: float, timeout: float) -> tuple[float, float | None]:
    """Seconds from ``t0`` until /health answers, and until llmdock's readiness (/health and the model
    in /v1/models) holds; the latter None when /v1/models never lists it within 30 s of health
    (transformers < 5.24 lists only Hub-cache models there)."""
    from llmdock.readiness import probe

    health = None
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                health = health or (time.monotonic() - t0 if r.status == 200 else None)
        except OSError:
            pass
        if health is not None and probe(port, "/health", served):
            return round(health, 2), round(time.monotonic() - t0, 2)
        if health is not None and time.monotonic() - t0 > health + 30:
            return round(health, 2), None
        time.sleep(0.1)
    raise TimeoutError(f"no /health after {timeout}s")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--wheels", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    ap.add_argument("--cpu", action="store_true", help="dry run of the script on a CPU host")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for readiness")
    args = ap.parse_args()

    import torch

    from llmdock import settings
    from llmdock.demo.tinymodel import ensure_tiny_model
    from llmdock.envs import Envs
    from llmdock.lifecycle import Lifecycle
    from llmdock.planning.container import ContainerConfig
    from llmdock.runtimes.local import LocalRuntime
    from llmdock.spec import DeploymentSpec
    from llmdock.state import Store

    res: dict[str, Any] = {
        "host": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "gpus_visible_to_host": torch.cuda.device_count(),
            "gpu_names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "transformers": md.version("transformers"),
        },
        "gpu": None if args.cpu else args.gpu,
    }
    with tempfile.TemporaryDirectory(prefix="llmdock-gpu-") as tmp:
        root = Path(tmp)
        prefix, extra_env, missing = make_env(root, args.wheels)
        res["installed_from_wheels"] = missing
        s = settings.load({"LLMDOCK_HOME": str(root / "home")})
        local = LocalRuntime(s.local_dir, Envs(s.envs_dir))
        store = Store(s.db_path)
        lc = Lifecycle(s, {"local": local}, store)
        t0 = time.monotonic()
        model = ensure_tiny_model(s.models_dir / "tiny-qwen")
        res["model_build_s"] = round(time.monotonic() - t0, 2)
        gpu_ids = () if args.cpu else (args.gpu,)

        # 1. The probe, launched exactly as the engine is (same runtime, env, GPU visibility): once
        # with the GPU, once with none (an empty CUDA_VISIBLE_DEVICES must hide every GPU).
        def run_probe(name: str, gpus: tuple[int, ...]) -> dict[str, Any]:
            labels = {"io.llmdock.managed": "true", "io.llmdock.name": name, "io.llmdock.runtime": "local"}
            cfg = ContainerConfig(
                image=str(prefix), name=name, entrypoint=["python3"], command=["-c", PROBE],
                labels=labels, gpu_ids=gpus, env=extra_env,
            )  # fmt: skip
            local.create(cfg)
            deadline = time.monotonic() + 120
            while local.get(name).running and time.monotonic() < deadline:  # type: ignore[union-attr]
                time.sleep(0.1)
            lines = list(local.logs(name))
            local.remove(name, force=True)
            found = [json.loads(line[6:]) for line in lines if line.startswith("PROBE ")]
            return found[0] if found else {"error": lines[-20:]}

        cache = root / "hf-cache"  # transformers < 5.24 fails /v1/models without an HF cache dir
        cache.mkdir()
        extra_env["HF_HUB_CACHE"] = str(cache)
        res["probe"] = probe = run_probe("probe", gpu_ids)
        res["probe_no_gpu"] = run_probe("probe-none", ())
        print("probes:", json.dumps([probe, res["probe_no_gpu"]]), flush=True)

        # 2. The engine.
        spec = DeploymentSpec.create(
            str(model), name="gpu-tiny", engine="transformers", gpus="none" if args.cpu else f"device={args.gpu}",
            runtime="local", engine_env=str(prefix), env=[f"{k}={v}" for k, v in extra_env.items()],
        )  # fmt: skip
        before = {} if args.cpu else nvml_processes()
        t0 = time.monotonic()
        try:
            up = lc.up(spec, wait=False)
            from llmdock.engines import get_engine
            from llmdock.readiness import wait_ready

            # llmdock's own readiness (what `up` waits on), then the raw endpoints for comparison.
            wait_ready(local, "gpu-tiny", get_engine("transformers"), timeout=args.timeout)
            res["llmdock_ready_after_s"] = round(time.monotonic() - t0, 2)
            res["health_after_s"], res["ready_after_s"] = wait_health_then_ready(
                up.plan.port, up.plan.served_name, t0, 2 * args.timeout
            )
        except Exception as e:
            res["error"] = f"{type(e).__name__}: {e}"
            res["log_tail"] = list(local.logs("gpu-tiny", tail=40)) if local.get("gpu-tiny") else []
            dep = local.get("gpu-tiny")
            for path in ("/health", "/v1/models"):
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{dep.port if dep else 0}{path}", timeout=5
                    ) as r:
                        res[f"GET {path}"] = r.read().decode()[:2000]
                except Exception as e2:
                    res[f"GET {path}"] = repr(e2)
            if local.get("gpu-tiny"):
                local.remove("gpu-tiny", force=True)
            args.out.write_text(json.dumps(res, indent=2) + "\n")
            print(json.dumps(res, indent=2))
            return 1
        res["up_wall_s"] = round(time.monotonic() - t0, 2)
        res["argv"] = up.plan.argv
        res["plan_gpus"] = list(up.plan.gpus)
        dep = local.get("gpu-tiny")
        assert dep is not None
        engine_pid = int(dep.id.split(":")[1])
        res["engine_pid"] = engine_pid
        res["chat"] = chat(up.plan.port, up.plan.served_name)
        if not args.cpu:
            procs = nvml_processes()
            res["nvml_processes"] = {str(k): v for k, v in procs.items()}
            res["engine_on_gpus"] = [g for g, pids in procs.items() if engine_pid in pids]
            # NVML reports host PIDs; inside a PID namespace they differ, so also: which GPUs gained a process.
            res["gpus_with_new_processes"] = [
                g for g, pids in procs.items() if set(pids) - set(before.get(g, []))
            ]
        res["log_device_lines"] = [
            ln for ln in local.logs("gpu-tiny") if "cuda" in ln.lower() or "device" in ln.lower()
        ][:10]

        t0 = time.monotonic()
        lc.stop("gpu-tiny")
        res["stop_s"] = round(time.monotonic() - t0, 2)
        t0 = time.monotonic()
        lc.start("gpu-tiny", wait=False)
        res["restart_health_s"], res["restart_ready_s"] = wait_health_then_ready(
            up.plan.port, up.plan.served_name, t0, args.timeout
        )
        lc.rm("gpu-tiny", force=True)
        store.close()
    checks = {
        "probe_saw_one_gpu": probe.get("device_count") == (0 if args.cpu else 1),
        "probe_env": probe.get("CUDA_VISIBLE_DEVICES") == ",".join(map(str, gpu_ids)),
        "probe_without_gpus_saw_none": res["probe_no_gpu"].get("device_count") == 0,
        "engine_only_on_its_gpu": args.cpu
        or res.get("engine_on_gpus") == [args.gpu]
        or (not res.get("engine_on_gpus") and res.get("gpus_with_new_processes") == [args.gpu]),
        "chat_answered": bool(res["chat"]["usage"]),
    }
    res["checks"] = checks
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
