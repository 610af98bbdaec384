"""Pull a ~2 GB multi-shard model from the loopback hub: llmdock vs `modelscope download` vs
huggingface_hub's snapshot_download, in one run, verification included.

Each tool runs as its own subprocess (so its CPU time is measured alone; the hub runs in this process),
into an empty directory, several times, interleaved. "Verification included" means every tool ends
with every file's sha256 checked against the hub: llmdock and ModelScope do it themselves;
huggingface_hub does not check LFS sha256, so its run adds a sha256 pass over the downloaded files.

    .venv/bin/python benchmarks/pull/bench.py [--gib 2] [--shards 4] [--runs 3] [--work /tmp/llmdock-bench]

Writes benchmarks/pull/results.json and benchmarks/pull/RESULTS.md; deletes its data afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.hub import LocalHub, hub_env, write_big_model  # noqa: E402

REPO = "bench/model"
HERE = Path(__file__).resolve().parent
PY = sys.executable

HF_SCRIPT = """
import hashlib, json, sys
from pathlib import Path
from huggingface_hub import HfApi, snapshot_download
dest = Path(sys.argv[1])
snapshot_download("bench/model", local_dir=dest, max_workers=8)
tree = {f.path: f for f in HfApi().list_repo_tree("bench/model", recursive=True)}
for path, f in tree.items():  # the sha256 check snapshot_download does not do for LFS files
    if f.lfs is None:
        continue
    h = hashlib.sha256()
    with open(dest / path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            h.update(chunk)
    assert h.hexdigest() == f.lfs.sha256, path
"""


def tools(dest: Path) -> dict[str, list[str]]:
    return {
        "llmdock": [PY, "-m", "llmdock.cli.models", "pull", REPO, "--models-dir", str(dest), "--json"],
        "modelscope download": [str(Path(PY).parent / "modelscope"), "download", "--model", REPO,
                                "--local_dir", str(dest)],
        "huggingface_hub snapshot_download": [PY, "-c", HF_SCRIPT, str(dest)],
    }  # fmt: skip


def run_once(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/llmdock-bench"))
    args = ap.parse_args()

    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    try:
        files = write_big_model(work / "hub", int(args.gib * (1 << 30)), args.shards)
        total = sum(p.stat().st_size for p in files.values())
        results: dict[str, list[dict[str, float]]] = {}
        with LocalHub() as hub:
            hub.add_repo(REPO, files)
            env = {**os.environ, **hub_env(hub.url), "LLMDOCK_HOME": str(work / "home"),
                   "MODELSCOPE_CACHE": str(work / "ms-cache"), "HF_HOME": str(work / "hf-home")}  # fmt: skip
            for i in range(args.runs):
                for name in tools(work):
                    dest = work / f"out-{i}"
                    shutil.rmtree(dest, ignore_errors=True)
                    for cache in ("ms-cache", "hf-home", "home"):
                        shutil.rmtree(work / cache, ignore_errors=True)
                    wall, cpu = run_once(tools(dest)[name], env)
                    results.setdefault(name, []).append(
                        {"wall_s": wall, "cpu_s": cpu, "mb_s": total / wall / 1e6}
                    )
                    print(
                        f"run {i + 1} {name:<36} {wall:6.2f} s  {total / wall / 1e6:7.1f} MB/s  cpu {cpu:5.2f} s"
                    )
                    shutil.rmtree(dest, ignore_errors=True)
        report(results, total, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict[str, list[dict[str, float]]], total: int, args: argparse.Namespace) -> None:
    summary = {
        name: {
            "median_mb_s": round(statistics.median(r["mb_s"] for r in runs), 1),
            "median_wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
            "median_cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 2),
            "runs": [{k: round(v, 3) for k, v in r.items()} for r in runs],
        }
        for name, runs in results.items()
    }
    import huggingface_hub
    import modelscope

    meta = {
        "model_bytes": total, "shards": args.shards, "runs": args.runs,
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "modelscope": modelscope.__version__, "huggingface_hub": huggingface_hub.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    (HERE / "results.json").write_text(json.dumps({"meta": meta, "results": summary}, indent=2) + "\n")
    lines = [
        "# Pull benchmark: loopback hub, multi-shard model, verification included",
        "",
        f"{total / 1e9:.2f} GB in {args.shards} safetensors shards plus small files, served from the page cache by",
        "`tests/support/hub.py` on 127.0.0.1; each tool in its own process into an empty directory;",
        f"{args.runs} runs each, interleaved; medians. CPU = user + system time of the tool's process.",
        f"Machine: {meta['cpus']} CPUs, Python {meta['python']}, modelscope {meta['modelscope']}, "
        f"huggingface_hub {meta['huggingface_hub']}.",
        "",
        "| tool | MB/s (median) | wall s (median) | CPU s (median) |",
        "|---|---:|---:|---:|",
    ]
    for name, s in sorted(summary.items(), key=lambda kv: -float(str(kv[1]["median_mb_s"]))):
        lines.append(f"| {name} | {s['median_mb_s']} | {s['median_wall_s']} | {s['median_cpu_s']} |")
    lines += [
        "",
        "Verification: llmdock hashes while writing and checks every file against the hub's sha256;",
        "`modelscope download` checks sha256 after each file; huggingface_hub does not check LFS sha256,",
        "so its run includes a sha256 pass over the shards (as a user verifying the download would do).",
        "",
        "Run 1 of each tool also competes with the write-back of the freshly generated model (every run is in",
        "results.json). llmdock: 4 files in parallel, 4 MiB reads straight into a reused buffer, sha256 as the",
        "bytes arrive (no second pass), no fsync per file (like the peers; `ModelStore(durable=True)` adds it).",
        "",
        "Reproduce: `.venv/bin/python benchmarks/pull/bench.py` (needs ~2x the model size free in /tmp).",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
