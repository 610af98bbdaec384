"""RESULTS.md from results.json (no numbers are typed by hand): ``python report.py [results.json]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
READY_GOAL_S = 1.0
LOAD_GOAL = 0.02
POLL_S = {"llmdock": 0.1, "bare": 0.05}  # readiness poll intervals of the two paths

COMMANDS = """```bash
benchmarks/vllm/run                      # both parts: --runs 5 pairs, --rounds 3 per profile
benchmarks/vllm/run --only ready --runs 7
benchmarks/vllm/run --only load --rounds 5
```

What each run does, as argv (no shell):

- llmdock: `llmdock up <tiny-qwen> --engine vllm --gpus none --name bench-up-N --json --timeout 600`,
  then `llmdock rm -f bench-up-N`.
- bare: `docker run -d --name bench-bare-N --ipc=host --network=host --restart=on-failure:3
  --log-driver=json-file --log-opt max-size=100m --log-opt max-file=3 -v <tiny-qwen>:/work/tiny-qwen:ro
  -e HF_HUB_OFFLINE=1 -e DO_NOT_TRACK=1 -e VLLM_NO_USAGE_STATS=1 -e VLLM_TARGET_DEVICE=cpu
  -e VLLM_CPU_KVCACHE_SPACE=1 --entrypoint vllm llmdock/engine-vllm:0.32.0-cpu serve /work/tiny-qwen
  --port 8001 --host 127.0.0.1 --served-model-name bench-bare-N --max-model-len 512` — taken from
  `llmdock up … --name bench-bare-N --dry-run --json` (its `container`), llmdock's labels left out.
- load: `docker run --rm --network host --cpuset-cpus 1 -e VLLM_TARGET_DEVICE=cpu -v <tiny-qwen>:/work/tiny-qwen:ro
  -v <out>:/out --entrypoint /opt/engine/bin/vllm llmdock/engine-vllm:0.32.0-cpu bench serve
  --backend openai-chat --base-url http://127.0.0.1:PORT --endpoint /v1/chat/completions --model bench-engine
  --tokenizer /work/tiny-qwen --dataset-name random --random-input-len 64 --random-output-len 32 --ignore-eos
  --num-prompts N --request-rate R --seed S --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,99
  --save-result --result-dir /out`, PORT = the engine's (direct) or `taskset -c 1 llmdock serve`'s (gateway)."""


def f(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def ready_section(r: dict[str, Any]) -> list[str]:
    med, added = r["median"], r["added_s"]
    up, bare = med["llmdock"], med["bare"]
    lines = [
        f"## 1. Added time to ready — `llmdock up` vs bare `vllm serve` ({r['n_pairs']} warm pairs, interleaved)",
        "",
        "| path | to ready (median) | command start → container created | → engine process started | engine start → ready | llmdock's `ready_after_s` |",
        "|---|---|---|---|---|---|",
        f"| `llmdock up --json` | **{f(up['total_s'])} s** | {f(up['created_s'])} s | {f(up['started_s'])} s | {f(up['engine_s'])} s | {f(up['ready_after_s'])} s |",
        f"| bare `docker run` + 50 ms poll | **{f(bare['total_s'])} s** | {f(bare['created_s'])} s | {f(bare['started_s'])} s | {f(bare['engine_s'])} s | — |",
        "",
        f"- **Added: {f(added['median_minus_median'])} s** (median − median); "
        f"**{f(added['median_of_pairs'])} s** (median of the paired differences). "
        f"Of the paired difference, {f(added['before_engine_start_pairs'])} s is before the engine process "
        f"starts and {f(added['after_engine_start_pairs'])} s after it (engine start → seen ready).",
        f"- llmdock outside its readiness wait (total − `ready_after_s`: CLI start, planning, create, "
        f"exit): {f(up['outside_wait_s'])} s. Measured apart (median of 5): `llmdock --help` "
        f"{f(r['cli']['cli_help_s'])} s, `llmdock up --dry-run --json` {f(r['cli']['up_dry_run_s'])} s.",
    ]
    fixed = up["outside_wait_s"] - bare["started_s"] + (POLL_S["llmdock"] - POLL_S["bare"]) / 2
    lines.append(
        f"- **llmdock's fixed cost, free of the engine's noise: ≈ {f(fixed)} s** = llmdock outside its "
        f"readiness wait ({f(up['outside_wait_s'])} s) − bare's time to the engine process starting "
        f"({f(bare['started_s'])} s) + the mean extra delay of a 0.1 s poll over a 0.05 s one "
        f"({f((POLL_S['llmdock'] - POLL_S['bare']) / 2, 3)} s)."
    )
    if "cold" in r:
        c = r["cold"]
        lines.append(
            f"- Cold (first `up` on a fresh state DB, the engine-version probe container runs, then is cached "
            f"per image ID): {f(c['total_s'])} s to ready, engine process started at {f(c['started_s'])} s, "
            f"{f(c['outside_wait_s'])} s outside the wait. Not in the medians; every other llmdock run is warm."
        )
    per = " · ".join(
        f"{x['path'][0].upper()}{x['index']} {f(x['total_s'], 1)}" for x in r["runs"] if not x["cold"]
    )
    lines += ["", f"Every run, in order (L = llmdock, B = bare), seconds: {per}", ""]
    ok = max(added["median_minus_median"], added["median_of_pairs"], fixed) <= READY_GOAL_S
    lines.append(
        f"Goal ≤ {READY_GOAL_S:.0f} s added: **{'met' if ok else 'not met'}** "
        f"({f(added['median_of_pairs'])} s paired, {f(added['median_minus_median'])} s by medians, "
        f"≈ {f(fixed)} s fixed cost)."
    )
    return lines


NAMES = {
    "request_throughput": "requests/s",
    "output_throughput": "output tokens/s",
    "median_ttft_ms": "TTFT p50 (ms)",
    "p99_ttft_ms": "TTFT p99 (ms)",
    "median_itl_ms": "ITL p50 (ms)",
    "p99_itl_ms": "ITL p99 (ms)",
    "median_tpot_ms": "TPOT p50 (ms)",
    "median_e2el_ms": "E2E latency p50 (ms)",
    "engine_cpu_s": "engine container CPU per run (s)",
    "nginx_cpu_s": "nginx CPU per run (s)",
    "gateway_cpu_s": "gateway CPU per run (s)",
}
GOAL_METRICS = (
    "request_throughput",
    "output_throughput",
    "median_ttft_ms",
    "p99_ttft_ms",
    "median_itl_ms",
    "p99_itl_ms",
)


def within(m: str, ratio: float | None, higher: list[str]) -> bool:
    if ratio is None:
        return False
    return ratio >= 1 - LOAD_GOAL if m in higher else ratio <= 1 + LOAD_GOAL


def load_section(ld: dict[str, Any]) -> list[str]:
    lines = [
        "## 2. The gateway in front of vLLM, loaded by `vllm bench serve`",
        "",
        f"One `llmdock up` deployment (`bench-engine`) for every run; the gateway is `taskset -c {ld['cpus']} "
        f"llmdock serve`, nginx (one worker, `proxy_buffering off`) runs with `taskset -c {ld['cpus']}` as "
        f"the reference proxy, the load generator with `--cpuset-cpus {ld['cpus']}`. 64 input / 32 output "
        "tokens (`--ignore-eos`), a fresh `--seed` per run. Ratios are proxy ÷ direct, median of the "
        "paired (same-round) ratios; the ratio of medians in brackets.",
        "",
    ]
    verdicts: list[str] = []
    higher = ld["higher_is_better"]
    for name, s in ld["summary"].items():
        proxies = [x for x in ("nginx", "gateway") if f"{x}_cpu_ms_per_request" in s]
        head = (
            "| metric | direct | "
            + " | ".join(proxies)
            + " | "
            + " | ".join(f"{x} ÷ direct" for x in proxies)
        )
        lines += [
            f"### {name}: {s['prompts']} prompts per run, {s['rounds']} rounds each way, {s['failed']} failed",
            "",
            head + " | gateway within 2 %? |",
            "|---|" + "---|" * (1 + 2 * len(proxies) + 1),
        ]
        for m, label in NAMES.items():
            e = s.get(m)
            if e is None:
                continue
            cells = [f(e["direct"]), *(f(e[x]) for x in proxies)]
            ratios = [
                f"{f(e[f'{x}_median_paired_ratio'], 3)} ({f(e[f'{x}_ratio_of_medians'], 3)})" for x in proxies
            ]
            mark = ""
            if m in GOAL_METRICS and "gateway" in proxies:
                mark = "yes" if within(m, e["gateway_median_paired_ratio"], higher) else "**no**"
            lines.append(f"| {label} | " + " | ".join(cells + ratios) + f" | {mark} |")
        cpu = ", ".join(f"{x} {f(s[f'{x}_cpu_ms_per_request'], 3)} ms" for x in proxies)
        idle = s["gateway_cpu_s"]["direct"]  # its background work, paid while direct runs too
        lines += [
            "",
            f"CPU per request, gross: {cpu}; the gateway's background work (listing, probes) took "
            f"{f(idle)} s during a direct run.",
            "",
        ]
        misses = [
            NAMES[m] for m in GOAL_METRICS if not within(m, s[m]["gateway_median_paired_ratio"], higher)
        ]
        verdicts.append(f"{name}: " + ("**met**" if not misses else "**not met** for " + ", ".join(misses)))
    lines += ["Goal within 2 % of direct (median of paired ratios): " + "; ".join(verdicts) + ".", ""]
    rows = " · ".join(
        f"r{x['round']} {x['path'][0].upper()} {f(x['request_throughput'], 1)}"
        for x in ld["rows"]
        if x["profile"].startswith("saturating")
    )
    lines += [f"Saturating runs in order (D = direct, N = nginx, G = gateway), req/s: {rows}", ""]
    return lines


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# llmdock on real vLLM — time to ready and the gateway under load",
        "",
        "Written by `benchmarks/vllm/run` (`bench.py`, `ready.py`, `load.py`) from `results.json` by "
        f"`report.py`; recorded {res.get('recorded', '?')}.",
        "",
        f"Machine: {m['cpus']} vCPUs ({m['cpu_model']}), {m['memory_gib']} GiB, kernel {m['kernel']}, "
        f"Docker {m['docker']}, no GPU. Engine: vLLM 0.32.0 CPU build in `{m['image']}`, the tiny Qwen2 test "
        "model (`llmdock.demo.tinymodel`, max context 512), `VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=1`, "
        "torch.compile on (no `--enforce-eager` on either path).",
        "",
    ]
    for part, n in res.get("noise", {}).items():
        lines.append(
            f"- Noise during `{part}`: waited {n['waited_for_tests_s']} s for test containers first; "
            f"took {n['took_s']} s; other containers at start: {', '.join(n['other_containers_start']) or 'none'}; "
            f"at end: {', '.join(n['other_containers_end']) or 'none'}; load average at end "
            f"{', '.join(f'{x:.2f}' for x in n['load_avg_end'])}."
        )
    lines.append("")
    if "ready" in res:
        lines += [*ready_section(res["ready"]), ""]
    if "load" in res:
        lines += load_section(res["load"])
    lines += ["## Commands", "", COMMANDS, ""]
    notes = HERE / "NOTES.md"
    if notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results.json"
    path.with_name("RESULTS.md").write_text(render(json.loads(path.read_text())))
