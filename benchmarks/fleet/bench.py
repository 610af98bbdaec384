"""The fleet benchmark (issue 14): placement over three simulated 8-GPU hosts vs first-fit, and the
wall time of ``llmdock ps`` with 0-3 remote hosts over real SSH. NOTES.md says how to read it.

    benchmarks/fleet/run                       # both; writes results.json and RESULTS.md here
    benchmarks/fleet/run --only placement      # the pure part: no Docker, no root, a few seconds
    benchmarks/fleet/run --seeds 11 --runs 15  # the recorded run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import placement  # noqa: E402
import pslatency  # noqa: E402

PLACEMENT_COLUMNS = (
    ("placed", "placed"),
    ("refused", "refused"),
    ("refused_avoidable", "avoidable"),
    ("refused_capacity", "capacity"),
    ("refused_never_fits", "fits no host"),
    ("gpus_in_use_mean", "GPUs in use (mean)"),
    ("gpus_per_placed", "GPUs / deployment"),
    ("stranded_free_gpus_per_refusal", "free GPUs at a refusal"),
    ("largest_free_block_end", "largest free block (end)"),
    ("decision_ms_median", "decision ms p50"),
    ("decision_ms_p95", "decision ms p95"),
)


def placement_md(p: dict[str, Any]) -> list[str]:
    hosts = ", ".join(f"{h['name']}: {h['gpus']}× {h['gpu']} ({h['memory_mib']} MiB)" for h in p["hosts"])
    lines = [
        "## Placement: 50 requests over 3 hosts × 8 GPUs",
        "",
        f"Run at {p.get('at', '?')}.",
        "",
        f"Hosts: {hosts}. Seeds {p['seeds'][0]}-{p['seeds'][-1]}; each cell is the median over the seeds "
        "(so a row's cells need not add up); the totals are over all seeds.",
        "",
        "| policy | " + " | ".join(title for _, title in PLACEMENT_COLUMNS) + " | refused (all seeds) "
        "| avoidable (all seeds) |",
        "|---|" + "---:|" * (len(PLACEMENT_COLUMNS) + 2),
    ]
    for name, s in p["summary"].items():
        cells = [f"{s[k]:g}" for k, _ in PLACEMENT_COLUMNS]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {s['refused_total']} | {s['avoidable_total']} |"
        )
    lines += [
        "",
        "Refused, seed by seed:",
        "",
        "| policy | " + " | ".join(str(seed) for seed in p["seeds"]) + " |",
        "|---|" + "---:|" * len(p["seeds"]),
        *(
            f"| {name} | " + " | ".join(str(r["refused"]) for r in rs) + " |"
            for name, rs in p["runs"].items()
        ),
    ]
    anomalies = [a for s in p["summary"].values() for a in s["anomalies"]]
    lines += [
        "",
        f"Planner anomalies (a GPU given twice, a refusal while a host had the GPUs it needs): "
        f"{len(anomalies)}." + "".join(f"\n- {a}" for a in anomalies),
        "",
    ]
    return lines


def ps_md(ps: dict[str, Any]) -> list[str]:
    cases = ps["cases"]
    base = cases.get("local + 3 remote", {}).get("median_s")
    lines = [
        "## `llmdock ps` wall time",
        "",
        f"Run at {ps.get('at', '?')}.",
        "",
        f"{ps['containers_per_host']} llmdock-labelled containers on this host and on each remote one; "
        f"ssh ConnectTimeout {ps['connect_timeout_s']} s, llmdock's bound on a tunnel {ps['ready_bound_s']:g} s. "
        "Median of the runs after a warm-up round; the cases ran interleaved, one of each per round, "
        "the unreachable state set up just before its run and undone after it.",
        "",
        "| case | runs | median s | min s | max s | vs 3 remote, all up | ours listed | rows | note on stderr |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for case, c in cases.items():
        extra = f"{c['median_s'] - base:+.2f} s" if base is not None and "3 remote," in case else ""
        rows = "-" if case.startswith("floor") else c.get("rows", "")
        note = "; ".join(c["stderr"]).replace("|", "\\|") or "-"
        lines.append(
            f"| {case} | {c['runs']} | {c['median_s']:.3f} | {c['min_s']:.3f} | {c['max_s']:.3f} "
            f"| {extra} | {len(c['listed'])} | {rows} | {note} |"
        )
    lines += [
        "",
        "*ours listed*: the benchmark's own containers in the last run's table (2 here + 2 per reachable "
        "host); *rows*: all rows, with other work's deployments on this host's shared Docker. "
        f"Ours were put back {ps.get('local_containers_recreated', 0)} time(s) after other work removed them.",
    ]
    return [*lines, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--only", choices=("placement", "ps", "report"), help="report: RESULTS.md from results.json"
    )
    ap.add_argument("--seeds", type=int, default=11, help="placement: seeds 0..N-1 (default 11)")
    ap.add_argument("--runs", type=int, default=15, help="ps: timed runs per case (default 15)")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    path = args.out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE)
    if args.only != "report":
        results["machine"] = {
            "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0)),
            "commit": commit.stdout.strip(),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.only in (None, "placement"):
        results["placement"] = placement.run(list(range(args.seeds))) | {"at": now}
    if args.only in (None, "ps"):
        results["ps"] = pslatency.measure(args.runs) | {"at": now}
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    m = results["machine"]
    md = [
        "# Fleet benchmark",
        "",
        f"Last recorded {m['at']} at commit {m['commit']}, Python {m['python']}, {m['cpus']} CPUs "
        "(shared with other work); each part says when it ran. How to read it: NOTES.md. "
        "Re-run: `benchmarks/fleet/run`.",
        "",
    ]
    if "placement" in results:
        md += placement_md(results["placement"])
    if "ps" in results:
        md += ps_md(results["ps"])
    (args.out / "RESULTS.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
