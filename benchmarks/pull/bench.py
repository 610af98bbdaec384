"""Pull a ~2 GB multi-shard model: llmdock vs `modelscope download` vs huggingface_hub's
snapshot_download, in one run, verification included, over two links:

* ``loopback``: the hub (tests/support/hub.py) on 127.0.0.1, unshaped: what each tool costs in CPU.
* ``shaped``: the hub in a network namespace behind a veth pair, the link shaped to ``--link-mbit``
  with a round trip of ``--rtt-ms``, and each connection capped at ``--cap-mb`` MB/s in the hub, as
  CDNs cap a connection. The round trip is ``tc netem`` delay on both veth ends when the kernel has
  netem; without it (CONFIG_NET_SCH_NETEM unset, as on the machine that recorded results.json) the
  rate is a ``tbf`` qdisc and the hub waits one round trip before answering each request.

Each tool runs as its own subprocess into an empty directory, ``--runs`` times, interleaved; medians.
"Verification included": llmdock and ModelScope check every file's sha256 themselves; huggingface_hub
does not check LFS sha256, so its run adds a sha256 pass over the shards. Every tool runs with its
defaults (llmdock: 16 connections, LLMDOCK_PULL_CONNECTIONS's default; modelscope download: 4 files at once, no ranges;
snapshot_download: 8 files at once).

    benchmarks/pull/run [--gib 2] [--shards 4] [--runs 3] [--link-mbit 1000] [--rtt-ms 50] [--cap-mb 8]

Writes benchmarks/pull/results.json and RESULTS.md; deletes its data and the namespace afterwards.
Needs root (ip netns, tc) and ~2x the model size free under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.hub import LocalHub, hub_env, write_big_model  # noqa: E402

REPO = "bench/model"
HERE = Path(__file__).resolve().parent
PY = sys.executable
NS, HOST_DEV, HUB_DEV = "pullbench", "pb-host", "pb-hub"
HOST_IP, HUB_IP, HUB_PORT = "10.77.0.1", "10.77.0.2", 8080

HF_SCRIPT = """
import hashlib, sys
from pathlib import Path
from huggingface_hub import HfApi, snapshot_download
dest = Path(sys.argv[1])
snapshot_download("bench/model", local_dir=dest)
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
TOOLS = ["llmdock", "modelscope download", "huggingface_hub snapshot_download"]


def command(tool: str, dest: Path) -> list[str]:
    if tool == "llmdock":
        return [PY, "-m", "llmdock.cli.models", "pull", REPO, "--models-dir", str(dest), "--json"]
    if tool == "modelscope download":
        return [str(Path(PY).parent / "modelscope"), "download", "--model", REPO, "--local_dir", str(dest)]
    return [PY, "-c", HF_SCRIPT, str(dest)]


def run_once(tool: str, dest: Path, env: dict[str, str], total: int) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command(tool, dest), env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{tool} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = {"wall_s": wall, "cpu_s": cpu, "mb_s": total / wall / 1e6}
    if tool == "llmdock":  # its own clock: from the plan to every file verified and in place
        done = [json.loads(line) for line in proc.stdout.splitlines() if '"done"' in line][-1]
        out["pull_s"] = float(done["seconds"])
        out["pull_mb_s"] = total / out["pull_s"] / 1e6
    return out


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


def netns_up(link_mbit: int, rtt_ms: float) -> str:
    """The namespace, the veth pair and the shaping; returns how the round trip is made."""
    netns_down()
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", HOST_DEV, "type", "veth", "peer", "name", HUB_DEV)
    sh("ip", "link", "set", HUB_DEV, "netns", NS)
    sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", HOST_DEV)
    sh("ip", "link", "set", HOST_DEV, "up")
    inns = ["ip", "netns", "exec", NS]
    sh(*inns, "ip", "addr", "add", f"{HUB_IP}/24", "dev", HUB_DEV)
    sh(*inns, "ip", "link", "set", HUB_DEV, "up")
    sh(*inns, "ip", "link", "set", "lo", "up")
    half = f"{rtt_ms / 2}ms"
    netem = ["tc", "qdisc", "add", "dev", HOST_DEV, "root", "netem", "delay", half, "limit", "100000"]
    if sh(*netem, check=False).returncode == 0:
        sh(*inns, "tc", "qdisc", "add", "dev", HUB_DEV, "root", "netem", "delay", half,
           "rate", f"{link_mbit}mbit", "limit", "100000")  # fmt: skip
        return "netem"
    # tbf: the link rate on the hub's egress (the download direction); its queue holds one round trip
    burst = max(64 << 10, link_mbit * 1000 * 1000 // 8 // 250)
    sh(*inns, "tc", "qdisc", "add", "dev", HUB_DEV, "root", "tbf", "rate", f"{link_mbit}mbit",
       "burst", str(burst), "latency", f"{max(rtt_ms, 20)}ms")  # fmt: skip
    return "hub"


def netns_down() -> None:
    sh("ip", "netns", "del", NS, check=False)
    sh("ip", "link", "del", HOST_DEV, check=False)


def serve(args: argparse.Namespace) -> None:
    """``bench.py serve``: the hub, run inside the namespace; prints ``ready`` and serves until stdin closes."""
    files = {p.name: p for p in sorted(Path(args.dir).iterdir()) if p.is_file()}
    with LocalHub(host=args.host, port=args.port) as hub:
        hub.add_repo(REPO, files)
        hub.faults.rate_per_connection = args.rate
        hub.faults.latency_s = args.latency
        print("ready", flush=True)
        sys.stdin.read()


def scenario(
    name: str, url: str, work: Path, total: int, runs: int, tools: list[str]
) -> dict[str, list[dict[str, float]]]:
    env = {**os.environ, **hub_env(url), "LLMDOCK_HOME": str(work / "home"),
           "MODELSCOPE_CACHE": str(work / "ms-cache"), "HF_HOME": str(work / "hf-home")}  # fmt: skip
    env["NO_PROXY"] = env["no_proxy"] = f"127.0.0.1,localhost,{HUB_IP}"
    env.pop("LLMDOCK_PULL_CONNECTIONS", None)  # the default
    results: dict[str, list[dict[str, float]]] = {}
    for i in range(runs):
        for tool in tools:
            dest = work / "out"
            for d in (dest, work / "ms-cache", work / "hf-home", work / "home"):
                shutil.rmtree(d, ignore_errors=True)
            subprocess.run(["sync"], check=False)
            r = run_once(tool, dest, env, total)
            results.setdefault(tool, []).append(r)
            extra = f"  (pull {r['pull_mb_s']:.1f} MB/s)" if "pull_mb_s" in r else ""
            print(f"{name} run {i + 1} {tool:<36} {r['wall_s']:7.2f} s {r['mb_s']:7.1f} MB/s "
                  f"cpu {r['cpu_s']:6.2f} s{extra}", flush=True)  # fmt: skip
            shutil.rmtree(dest, ignore_errors=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd")
    sv = sub.add_parser("serve")
    sv.add_argument("--dir", required=True)
    sv.add_argument("--host", default=HUB_IP)
    sv.add_argument("--port", type=int, default=HUB_PORT)
    sv.add_argument("--rate", type=float, default=0.0)
    sv.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--link-mbit", type=int, default=1000)
    ap.add_argument("--rtt-ms", type=float, default=50.0)
    ap.add_argument("--cap-mb", type=float, default=8.0, help="per-connection cap in the hub, MB/s")
    ap.add_argument("--only", choices=["loopback", "shaped"], default=None)
    ap.add_argument("--tools", nargs="+", choices=TOOLS, default=TOOLS, help="a subset, for a quick look")
    ap.add_argument("--work", type=Path, default=Path("/tmp/llmdock-pullbench"))
    ap.add_argument("--out", type=Path, default=HERE, help="where results.json and RESULTS.md go")
    args = ap.parse_args()
    if args.cmd == "serve":
        serve(args)
        return

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the namespace and the data go too
    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    hub_proc: subprocess.Popen[str] | None = None
    out: dict[str, Any] = {}
    try:
        files = write_big_model(work / "hub", int(args.gib * (1 << 30)), args.shards)
        total = sum(p.stat().st_size for p in files.values())
        if args.only in (None, "loopback"):
            with LocalHub() as hub:
                hub.add_repo(REPO, files)
                out["loopback"] = {
                    "results": scenario("loopback", hub.url, work, total, args.runs, args.tools)
                }
        if args.only in (None, "shaped"):
            rtt_by = netns_up(args.link_mbit, args.rtt_ms)
            hub_proc = subprocess.Popen(
                ["ip", "netns", "exec", NS, PY, __file__, "serve", "--dir", str(work / "hub"),
                 "--rate", str(args.cap_mb * 1e6), "--latency", str(args.rtt_ms / 1000 if rtt_by == "hub" else 0)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            )  # fmt: skip
            assert hub_proc.stdout is not None
            if hub_proc.stdout.readline().strip() != "ready":
                raise SystemExit("the hub in the namespace did not start")
            url = f"http://{HUB_IP}:{HUB_PORT}"
            out["shaped"] = {
                "link_mbit": args.link_mbit, "rtt_ms": args.rtt_ms, "cap_mb_s": args.cap_mb, "rtt_by": rtt_by,
                "results": scenario("shaped", url, work, total, args.runs, args.tools),
            }  # fmt: skip
        report(out, total, args)
    finally:
        if hub_proc is not None:
            hub_proc.send_signal(signal.SIGTERM)
            hub_proc.wait(timeout=10)
        netns_down()
        shutil.rmtree(work, ignore_errors=True)


def summarise(results: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    return {
        tool: {
            **{f"median_{k}": round(statistics.median(r[k] for r in runs), 2) for k in runs[0]},
            "runs": [{k: round(v, 3) for k, v in r.items()} for r in runs],
        }
        for tool, runs in results.items()
    }


def report(out: dict[str, Any], total: int, args: argparse.Namespace) -> None:
    import huggingface_hub
    import modelscope

    meta = {
        "model_bytes": total, "shards": args.shards, "runs": args.runs, "cpus": os.cpu_count(),
        "load_avg_at_end": [round(x, 1) for x in os.getloadavg()],
        "python": platform.python_version(), "platform": platform.platform(),
        "modelscope": modelscope.__version__, "huggingface_hub": huggingface_hub.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    goals: dict[str, Any] = {}
    lines = [
        "# Pull benchmark: llmdock vs modelscope download vs snapshot_download, verification included",
        "",
        f"{total / 1e9:.2f} GB in {args.shards} safetensors shards plus small files; each tool in its own process "
        f"into an empty directory, {args.runs} runs each, interleaved; medians. MB/s = model bytes / wall time of "
        "the whole command (start to verified). CPU = user + system time of the tool's process. "
        f"Machine: {meta['cpus']} CPUs (shared: load average {meta['load_avg_at_end'][0]} at the end), "
        f"Python {meta['python']}, modelscope {meta['modelscope']}, huggingface_hub {meta['huggingface_hub']}. "
        "How it was measured and what it does not show: NOTES.md.",
    ]
    for name, block in out.items():
        s = block["summary"] = summarise(block.pop("results"))
        best_peer = max([v["median_mb_s"] for k, v in s.items() if k != "llmdock"] or [float("nan")])
        ratio = s["llmdock"]["median_mb_s"] / best_peer
        if name == "loopback":
            lines += ["", "## Loopback, unshaped (127.0.0.1)", ""]
            goals["loopback_vs_best_peer"] = {"ratio": round(ratio, 2), "goal": 1.0, "met": ratio >= 1.0}
        else:
            link = block["link_mbit"] * 1e6 / 8 / 1e6
            how = (
                "tc netem delay on both veth ends"
                if block["rtt_by"] == "netem"
                else (
                    "the hub waiting one round trip before each answer (this kernel has no netem); "
                    "link rate by a tbf qdisc on the hub's veth"
                )
            )
            lines += [
                "", f"## Shaped: {block['link_mbit']} Mbit/s link ({link:.0f} MB/s), {block['rtt_ms']:.0f} ms round trip, "
                f"{block['cap_mb_s']:g} MB/s per connection", "",
                f"Network namespace `{NS}`, veth pair; round trip by {how}; per-connection cap paced in the hub.", "",
            ]  # fmt: skip
            e2e = s["llmdock"]["median_mb_s"] / link
            pull = s["llmdock"]["median_pull_mb_s"] / link
            goals["shaped_vs_best_peer"] = {"ratio": round(ratio, 2), "goal": 3.0, "met": ratio >= 3.0}
            goals["shaped_link_share"] = {
                "end_to_end": round(e2e, 3), "pull_phase": round(pull, 3), "goal": 0.9,
                "met_end_to_end": e2e >= 0.9, "met_pull_phase": pull >= 0.9,
            }  # fmt: skip
        lines += [
            "| tool | MB/s (median) | wall s (median) | CPU s (median) | vs best peer |",
            "|---|---:|---:|---:|---:|",
        ]
        for tool, v in sorted(s.items(), key=lambda kv: -float(kv[1]["median_mb_s"])):
            lines.append(
                f"| {tool} | {v['median_mb_s']} | {v['median_wall_s']} | {v['median_cpu_s']} | "
                f"{v['median_mb_s'] / best_peer:.2f}x |"
            )
        if "median_pull_mb_s" in s["llmdock"]:
            lines += ["", f"llmdock's own clock (plan to every file verified, without interpreter start and listing): "
                      f"{s['llmdock']['median_pull_mb_s']} MB/s median."]  # fmt: skip
    lines += ["", "## Goals (issue 16)", "", "| goal | measured | met |", "|---|---:|---|"]
    if "shaped_vs_best_peer" in goals:
        g = goals["shaped_vs_best_peer"]
        lines.append(f"| shaped: >= 3x the best peer | {g['ratio']}x | {'yes' if g['met'] else 'no'} |")
        g = goals["shaped_link_share"]
        lines.append(
            f"| shaped: >= 90 % of the link, whole command | {g['end_to_end']:.0%} | {'yes' if g['met_end_to_end'] else 'no'} |"
        )
        lines.append(
            f"| shaped: >= 90 % of the link, llmdock's pull phase | {g['pull_phase']:.0%} | {'yes' if g['met_pull_phase'] else 'no'} |"
        )
    if "loopback_vs_best_peer" in goals:
        g = goals["loopback_vs_best_peer"]
        lines.append(f"| loopback: >= 1.0x the best peer | {g['ratio']}x | {'yes' if g['met'] else 'no'} |")
    lines += ["", "Reproduce: `benchmarks/pull/run` (root; see bench.py for the options)."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "goals": goals, **out}, indent=2) + "\n")
    (args.out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
