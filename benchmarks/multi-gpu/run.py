"""GPU inventory and free-memory-aware planning on a real GPU host (the single-GPU part of issue 17).

Runs on a GPU host with torch + transformers and no network (no Docker, no vLLM, no llmdock venv):

    PYTHONPATH=src python3 -u benchmarks/multi-gpu/run.py --wheels build/multi-gpu-wheels \
        --out benchmarks/multi-gpu/results.json

``--wheels`` names a directory of wheels (llmdock's CLI deps and ``transformers[serving]``'s) that are
installed, all of them, into a side directory put first on ``PYTHONPATH`` for this script, the CLI
it runs and the engine it starts. Without an NVIDIA GPU (no ``nvidia-smi``, or torch sees no GPU) it
stops at once with exit status 2.

What it records, each through llmdock's own code (``detect_gpus``, the ``llmdock`` CLI, ``Lifecycle``):

1. **inventory**: every GPU as ``detect_gpus()`` (and each of its two sources) reports it, beside
   ``nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.free`` read right after, and the
   ``GPUs`` check of ``llmdock doctor --json``;
2. **plans** (``llmdock plan FIXTURE --gpus auto --json``) of Qwen2.5-7B (fits) and Qwen2.5-72B (does
   not) on the idle GPU, then with a **hog** of our own (a torch process holding ``--hog-fraction`` of
   the free memory), then with a second hog leaving ``--leave-gib`` GiB free; free memory per NVML at
   each point, and how much the hog's CUDA context took beyond its allocation;
3. **a real deployment around the hog**: the tiny model with the transformers engine, ``--gpus auto``,
   local runtime; it must answer a chat and its PID must show in NVML's per-process list beside the
   hog's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "models"
SMALL, LARGE = "Qwen--Qwen2.5-7B-Instruct", "Qwen--Qwen2.5-72B-Instruct"
MiB, GiB = 1 << 20, 1 << 30
SMI = ["nvidia-smi", "--query-gpu=index,uuid,name,memory.total,memory.free", "--format=csv,noheader,nounits"]
SMI_MORE = [
    "nvidia-smi",
    "--query-gpu=index,memory.used,memory.reserved,driver_version",
    "--format=csv,noheader",
]
HOG = r"""
import json, os, sys, torch
mode, value = sys.argv[1], float(sys.argv[2])
free, total = torch.cuda.mem_get_info(0)  # after this process's own CUDA context
n = int(free * value) if mode == "fraction" else int(free - value * 2**30)
x = torch.empty(n, dtype=torch.uint8, device="cuda:0")
x.fill_(1)  # touch it: the memory is really taken, not only reserved
torch.cuda.synchronize()
print("HOG " + json.dumps({"pid": os.getpid(), "bytes": n, "free_seen": free, "total": total}), flush=True)
sys.stdin.read()  # hold the memory until the parent closes our stdin
"""


def sh(argv: list[str], timeout: float = 120, env: dict[str, str] | None = None) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"rc": None, "error": f"{type(e).__name__}: {e}"}
    return {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr, "s": round(time.monotonic() - t0, 2)}


def install_wheels(wheels: Path, side: Path) -> list[str]:
    """Every wheel in ``wheels`` into ``side`` (first on the path from now on); the names installed."""
    files = sorted(str(f) for f in wheels.glob("*.whl"))
    if files:
        argv = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        subprocess.run([*argv, "--upgrade", "--target", str(side), *files], check=True)
    return [Path(f).name for f in files]


# ---- 1. inventory -------------------------------------------------------------------------------
def gpu_row(g: Any) -> dict[str, Any]:
    return {
        "index": g.index,
        "uuid": g.uuid,
        "name": g.name,
        "total_mib": round(g.total_bytes / MiB, 1),
        "free_mib": round(g.free_bytes / MiB, 1),
        "processes": list(g.processes),
    }


def nvml_extra() -> list[dict[str, Any]]:
    """What NVML says beyond llmdock's read: v2 memory info (reserved), per-process used memory."""
    import pynvml

    pynvml.nvmlInit()
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            row: dict[str, Any] = {"index": i}
            try:
                m2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
                row["v2_mib"] = {
                    k: round(getattr(m2, k) / MiB, 1) for k in ("total", "reserved", "used", "free")
                }
            except (pynvml.NVMLError, AttributeError, TypeError) as e:
                row["v2_mib"] = f"not available: {e}"
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
            row["processes"] = [
                {"pid": int(p.pid), "used_mib": None if p.usedGpuMemory is None else p.usedGpuMemory // MiB}
                for p in procs
            ]
            out.append(row)
        return out
    finally:
        pynvml.nvmlShutdown()


def inventory(label: str) -> dict[str, Any]:
    """llmdock's view and nvidia-smi's, read back to back, and where they differ."""
    from llmdock.gpuinfo import NvidiaSmiGpus, NvmlGpus, detect_gpus

    gpus, notes = detect_gpus()
    smi = sh(SMI)
    nvml, via_smi = NvmlGpus().gpus(), NvidiaSmiGpus().gpus()
    smi_rows = []
    for line in (smi.get("stdout") or "").splitlines():
        f = [x.strip() for x in line.split(",")]
        if len(f) == 5:
            smi_rows.append({"index": int(f[0]), "uuid": f[1], "name": f[2], "total_mib": float(f[3]),
                             "free_mib": float(f[4])})  # fmt: skip
    by_index = {r["index"]: r for r in smi_rows}
    compare = []
    for g in map(gpu_row, gpus):
        s = by_index.get(g["index"], {})
        compare.append({
            "index": g["index"],
            "uuid_same": g["uuid"] == s.get("uuid"),
            "name_same": g["name"] == s.get("name"),
            "total_mib": [g["total_mib"], s.get("total_mib")],
            "free_mib": [g["free_mib"], s.get("free_mib")],
            "total_diff_mib": None if not s else round(g["total_mib"] - s["total_mib"], 1),
            "free_diff_mib": None if not s else round(g["free_mib"] - s["free_mib"], 1),
        })  # fmt: skip
    return {
        "label": label,
        "detect_gpus": [gpu_row(g) for g in gpus],
        "detect_notes": list(notes),
        "source_nvml": [gpu_row(g) for g in nvml],
        "source_nvidia_smi": [gpu_row(g) for g in via_smi],
        "nvidia_smi_csv": smi.get("stdout", smi.get("error")),
        "nvidia_smi_more": sh(SMI_MORE).get("stdout"),
        "nvml_extra": nvml_extra(),
        "compare": compare,
        "agree": bool(compare) and len(compare) == len(smi_rows) and all(
            c["uuid_same"] and c["name_same"] and abs(c["total_diff_mib"]) < 1 and abs(c["free_diff_mib"]) <= 4
            for c in compare
        ),
    }  # fmt: skip


# ---- 2. the CLI: doctor and plan -------------------------------------------------------------------
def cli(*args: str) -> dict[str, Any]:
    r = sh([sys.executable, "-m", "llmdock.cli.main", *args], timeout=180)
    try:
        r["json"] = json.loads(r.get("stdout") or "")
    except ValueError:
        r["json"] = None
    return r


def doctor_gpus() -> dict[str, Any]:
    r = cli("doctor", "--json")
    checks = (r["json"] or {}).get("checks", [])
    return {"rc": r["rc"], "gpu_checks": [c for c in checks if "GPU" in c["name"] or "NVIDIA" in c["name"]],
            "stderr": (r.get("stderr") or "")[-2000:]}  # fmt: skip


def plan(model: str, *extra: str) -> dict[str, Any]:
    """``llmdock plan FIXTURE --gpus auto --json EXTRA`` (EXTRA may name other --gpus), condensed (the full JSON minus the container)."""
    gpus = [] if "--gpus" in extra else ["--gpus", "auto"]
    args = ["plan", str(FIXTURES / model), *gpus, "--json", *extra]
    r = cli(*args)
    d = r["json"] or {}
    fit = d.get("fit") or {}
    cmd = d.get("command") or []
    util = cmd[cmd.index("--gpu-memory-utilization") + 1] if "--gpu-memory-utilization" in cmd else None
    per_gpu = [
        {k: round(g[k] / GiB, 2) if isinstance(g[k], int) and k != "index" else g[k]
         for k in ("index", "total", "free", "budget", "weights", "activation", "runtime", "cuda_graph", "kv_cache")}
        for g in fit.get("per_gpu", [])
    ]  # fmt: skip
    return {
        "model": model,
        "args": ["llmdock", *args[:1], model, *args[2:]],
        "rc": r["rc"],
        "s": r.get("s"),
        "gpus": d.get("gpus"),
        "command_utilization": util,
        "fit": {k: fit.get(k) for k in ("gpus", "gpu_memory_utilization", "max_model_len", "kv_tokens",
                                          "concurrent_seqs", "notes", "alternatives")} if fit else None,
        "per_gpu_gib": per_gpu,
        "problems": d.get("problems"),
        "blocking": d.get("blocking"),
        "notes": d.get("notes"),
        "command": cmd,
        "stderr": (r.get("stderr") or "")[-3000:],
    }  # fmt: skip


# ---- the hog -------------------------------------------------------------------------------------
def start_hog(mode: str, value: float) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """A torch process holding GPU 0's memory (``fraction`` of free, or all but ``leave`` GiB)."""
    p = subprocess.Popen(
        [sys.executable, "-c", HOG, mode, str(value)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stdout is not None
    line = p.stdout.readline()  # blocks until the hog holds its memory, or EOF when it dies
    if not line.startswith("HOG "):
        p.kill()
        raise RuntimeError(f"the hog did not start: {line!r} {p.stderr.read() if p.stderr else ''}")
    return p, json.loads(line[4:])


def stop_hog(p: subprocess.Popen[str]) -> None:
    assert p.stdin is not None
    p.stdin.close()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)


def free_mib() -> float:
    from llmdock.gpuinfo import NvmlGpus

    return round(NvmlGpus().gpus()[0].free_bytes / MiB, 1)


# ---- 3. a real deployment around the hog ---------------------------------------------------------------
def engine_prefix(root: Path) -> Path:
    """An engine environment for this interpreter: ``bin/python{,3}`` shims and ``bin/transformers``."""
    prefix = root / "engine-env"
    (prefix / "bin").mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):  # not symlinks: a venv's python reached through a link loses its site
        (prefix / "bin" / name).write_text(
            f"#!{sys.executable}\nimport os, sys\nos.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
        )
    (prefix / "bin" / "transformers").write_text(
        f"#!{sys.executable}\nimport sys\nfrom transformers.cli.transformers import main\nsys.exit(main())\n"
    )
    for f in (prefix / "bin").iterdir():
        f.chmod(0o755)
    return prefix


def deploy_around(hog_pid: int, root: Path, timeout: float) -> dict[str, Any]:
    from llmdock import settings
    from llmdock.demo.tinymodel import ensure_tiny_model
    from llmdock.engines import get_engine
    from llmdock.envs import Envs
    from llmdock.lifecycle import Lifecycle
    from llmdock.readiness import wait_ready
    from llmdock.runtimes.local import LocalRuntime
    from llmdock.spec import DeploymentSpec
    from llmdock.state import Store

    s = settings.load(dict(os.environ))
    local = LocalRuntime(s.local_dir, Envs(s.envs_dir))
    store = Store(s.db_path)
    lc = Lifecycle(s, {"local": local}, store)
    model = ensure_tiny_model(s.models_dir / "tiny-qwen")
    cache = root / "hf-cache"  # transformers < 5.24 answers 500 on /v1/models without an HF cache dir
    cache.mkdir(exist_ok=True)
    env = [f"HF_HUB_CACHE={cache}", f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}"]
    spec = DeploymentSpec.create(
        str(model), name="tiny-around-hog", engine="transformers", gpus="auto", runtime="local",
        engine_env=str(engine_prefix(root)), env=env,
    )  # fmt: skip
    res: dict[str, Any] = {"free_mib_before": free_mib()}
    p = lc.plan(spec, strict=False)
    res["plan"] = {"gpus": list(p.gpus), "problems": list(p.problems), "notes": list(p.notes), "argv": p.argv,
                   "fit": p.fit.to_dict() if p.fit else None}  # fmt: skip
    t0 = time.monotonic()
    try:
        up = lc.up(spec, wait=False)
        wait_ready(local, spec.name, get_engine("transformers"), timeout=timeout)
        res["ready_after_s"] = round(time.monotonic() - t0, 2)
        dep = local.get(spec.name)
        assert dep is not None
        pid = int(dep.id.split(":")[1])
        res["engine_pid"], res["hog_pid"] = pid, hog_pid
        res["chat"] = chat(up.plan.port, up.plan.served_name)
        res["engine_CUDA_VISIBLE_DEVICES"] = proc_env(pid, "CUDA_VISIBLE_DEVICES")
        res["nvml_processes"] = nvml_extra()
        res["free_mib_with_engine"] = free_mib()
        on = {r["index"]: {q["pid"] for q in r["processes"]} for r in res["nvml_processes"]}
        res["engine_on_gpus"] = [i for i, pids in on.items() if pid in pids]
        res["hog_on_gpus"] = [i for i, pids in on.items() if hog_pid in pids]
        ps = cli("ps", "--json")
        res["ps"] = (
            ps["json"] if ps["json"] is not None else {"rc": ps["rc"], "stderr": ps.get("stderr", "")[-1500:]}
        )
    except Exception as e:  # record, then clean up: the report says what went wrong
        res["error"] = f"{type(e).__name__}: {e}"
        res["log_tail"] = list(local.logs(spec.name, tail=40)) if local.get(spec.name) else []
    finally:
        if local.get(spec.name):
            lc.rm(spec.name, force=True)
        store.close()
    return res


def proc_env(pid: int, key: str) -> str | None:
    try:
        pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    found = [p.split(b"=", 1)[1].decode() for p in pairs if p.startswith(key.encode() + b"=")]
    return found[0] if found else None


def chat(port: int, model: str) -> dict[str, Any]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8})
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", body.encode(), {"Content-Type": "application/json"}
    )
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            reply = json.loads(r.read())
    except urllib.error.HTTPError as e:  # keep the engine's own explanation
        return {"s": round(time.monotonic() - t0, 3), "error": f"HTTP {e.code}: {e.read()[:1000]!r}"}
    return {"s": round(time.monotonic() - t0, 3), "usage": reply.get("usage")}


# ---- main ----------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        **{d: version(d) for d in ("transformers", "nvidia-ml-py", "typer", "fastapi", "pydantic")},
        "nvidia_smi_L": sh(["nvidia-smi", "-L"]).get("stdout"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", type=Path, help="wheels to install into a side directory first")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    ap.add_argument(
        "--hog-fraction", type=float, default=0.8, help="share of GPU 0's free memory the hog takes"
    )
    ap.add_argument("--leave-gib", type=float, default=18, help="a second hog leaves this many GiB free")
    ap.add_argument("--timeout", type=float, default=180, help="seconds to wait for the engine")
    ap.add_argument("--skip-deploy", action="store_true", help="no real deployment (step 3)")
    args = ap.parse_args()

    if not shutil.which("nvidia-smi"):
        print("run.py needs an NVIDIA GPU host: nvidia-smi is not on PATH", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="llmdock-multigpu-"))
    os.environ["LLMDOCK_HOME"] = str(root / "home")  # the CLI, the lifecycle and the engine: one home
    side = root / "site"
    installed = install_wheels(args.wheels, side) if args.wheels else []
    paths = [str(side)] if installed else []
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    sys.path[:0] = [*paths, str(REPO / "src")]
    import torch

    if not torch.cuda.is_available():
        print("run.py needs an NVIDIA GPU host: torch sees no CUDA device", file=sys.stderr)
        return 2

    res: dict[str, Any] = {"machine": machine(), "installed_from_wheels": installed, "steps": []}

    def step(label: str, hogs: list[dict[str, Any]], models: list[tuple[str, ...]]) -> dict[str, Any]:
        st = {"label": label, "hogs": hogs, "inventory": inventory(label), "doctor": doctor_gpus(),
              "plans": [plan(*m) for m in models]}  # fmt: skip
        res["steps"].append(st)
        print(f"== {label}: free {st['inventory']['detect_gpus'][0]['free_mib']} MiB", flush=True)
        for p in st["plans"]:
            print(f"   {' '.join(p['args'][2:])}: rc={p['rc']} gpus={p['gpus']} util={p['command_utilization']} "
                  f"fit={json.dumps(p['fit'])} blocking={p['blocking']}", flush=True)  # fmt: skip
        return st

    hogs: list[subprocess.Popen[str]] = []
    try:
        step("idle", [], [(SMALL,), (LARGE,)])
        free0 = free_mib()
        p1, info1 = start_hog("fraction", args.hog_fraction)
        hogs.append(p1)
        info1["free_mib_before"], info1["free_mib_after"] = free0, free_mib()
        # Beyond its allocation the hog's CUDA context (and allocator rounding) takes this much:
        info1["context_mib"] = round(free0 - info1["free_mib_after"] - info1["bytes"] / MiB, 1)
        step(f"hog holding {args.hog_fraction:.0%} of free", [info1],
             [(SMALL,), (LARGE,), (SMALL, "--gpu-memory-utilization", "0.9"),
              (SMALL, "--gpus", "device=0", "--gpu-memory-utilization", "0.9")])  # fmt: skip
        if not args.skip_deploy:
            res["deploy_around_hog"] = d = deploy_around(info1["pid"], root, args.timeout)
            print("== deploy:", json.dumps({k: d.get(k) for k in ("ready_after_s", "engine_on_gpus", "hog_on_gpus",
                  "engine_CUDA_VISIBLE_DEVICES", "error")}), flush=True)  # fmt: skip
        free1 = free_mib()
        p2, info2 = start_hog("leave", args.leave_gib)
        hogs.append(p2)
        info2["free_mib_before"], info2["free_mib_after"] = free1, free_mib()
        step(f"second hog, {args.leave_gib:g} GiB left", [info1, info2],
             [(SMALL,), (LARGE,), (SMALL, "--engine", "transformers", "--runtime", "local"),
              (LARGE, "--engine", "transformers", "--runtime", "local")])  # fmt: skip
    finally:
        for p in reversed(hogs):
            stop_hog(p)
    res["free_mib_after_hogs"] = free_mib()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
