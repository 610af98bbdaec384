"""Placement of a seeded stream of deployment requests over three simulated 8-GPU hosts. Pure Python.

Each request (a real model config, a context length, sometimes a pinned TP size) arrives in turn;
some placed ones are later removed (seeded lifetimes), so free GPUs scatter over the hosts. Policies:

- ``llmdock-binpack`` / ``llmdock-spread``: llmdock's own decision, as ``up`` makes it without
  ``--host``: :func:`~llmdock.planning.plan.make_plan` on each host's :class:`Inventory` (not strict, as
  ``Lifecycle._place`` does), then :func:`~llmdock.planning.hosts.choose_host` over the hosts whose plan
  has no disqualifying problem, ranked by the free memory of their unheld GPUs (as ``_place`` computes
  it); then the chosen host's plan is what runs.
- ``first-fit``: the first host (in the order listed) that has enough free GPUs; its lowest-numbered
  free GPUs; TP = the smallest valid size whose per-GPU memory (llmdock's estimate: the same
  ``memory.estimate``, the same 0.9 utilization) holds the requested context (for an unset context:
  the model's limit, else the smallest TP that holds 2048 tokens).

The accounting is the same for all, so the figures compare placement only. A refusal is *avoidable*
when the deployments alive at that moment plus the refused one could all be placed at once (an
exhaustive search over hosts, each deployment needing the GPUs llmdock gives it on that GPU type):
a different placement would have made room. A *capacity* refusal has no such packing.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.support.modelconfigs import qwen25_vl_72b_config  # noqa: E402

from llmdock.errors import LlmdockError  # noqa: E402
from llmdock.modelfacts import ModelFacts, facts_from_config  # noqa: E402
from llmdock.planning.fit import MIN_CONTEXT, fit, valid_tp_sizes  # noqa: E402
from llmdock.planning.hosts import HostOption, choose_host, disqualified  # noqa: E402
from llmdock.planning.inventory import Gpu, Holding, Inventory  # noqa: E402
from llmdock.planning.memory import engine_profile, estimate, max_tokens  # noqa: E402
from llmdock.planning.plan import DEFAULT_UTILIZATION, make_plan  # noqa: E402
from llmdock.spec import DeploymentSpec  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
FIXTURES = ROOT.parent / "shared" / "fixtures" / "models"
IDLE_USED = 480 * MiB  # what nvidia-smi shows used on an idle H100 (tests/e2e/test_fleet.py)
PORTS = (8001, 8999)
# name, GPU model, memory as nvidia-smi reports it (MiB), GPUs
HOSTS: tuple[tuple[str, str, int, int], ...] = (
    ("h100", "NVIDIA H100 80GB HBM3", 81559, 8),
    ("a100", "NVIDIA A100-SXM4-40GB", 40960, 8),
    ("l40s", "NVIDIA L40S", 46068, 8),
)
# fixture, weight in the mix, context choices (None: the planner's choice, up to the model's limit)
MIX: tuple[tuple[str, int, tuple[int | None, ...]], ...] = (
    ("Qwen--Qwen2.5-0.5B-Instruct", 2, (8192, 32768)),
    ("Qwen--Qwen2.5-7B-Instruct", 3, (8192, 32768)),
    ("meta-llama--Llama-3.1-8B-Instruct", 3, (8192, 32768, 131072, None)),
    ("mistralai--Mistral-7B-Instruct-v0.3", 2, (8192, 32768)),
    ("google--gemma-2-9b-it", 2, (8192,)),
    ("Qwen--Qwen3-8B", 3, (8192, 40960)),
    ("Qwen--Qwen2.5-VL-7B-Instruct", 2, (32768, 128000)),
    ("Qwen--Qwen3-30B-A3B", 2, (8192, 40960)),
    ("deepseek-ai--DeepSeek-V2-Lite", 1, (32768, 163840)),
    ("deepseek-ai--DeepSeek-R1-Distill-Qwen-32B", 2, (32768, 131072)),
    ("Qwen--Qwen2.5-72B-Instruct", 2, (8192, 32768)),
    ("meta-llama--Llama-3.1-70B-Instruct", 2, (8192, 32768, 131072)),
    ("Qwen--Qwen2.5-VL-72B-Instruct", 1, (32768, 128000)),
)
PIN_TP = 0.15  # share of requests that pin --tensor-parallel-size (throughput, not memory)


@cache
def model(name: str) -> ModelFacts:
    """Facts of a fixture config, with the published weight bytes where weights.json records them."""
    if name == "Qwen--Qwen2.5-VL-72B-Instruct":  # assembled (tests/support/modelconfigs.py says how)
        return facts_from_config(qwen25_vl_72b_config())
    folder = FIXTURES / name
    cfg = json.loads((folder / "config.json").read_text())
    weights = folder / "weights.json"
    total = json.loads(weights.read_text()).get("total_size_bytes") if weights.is_file() else None
    return facts_from_config(cfg, weight_bytes=int(total) if total else None)


@dataclass(frozen=True)
class Request:
    id: int
    model: str
    max_model_len: int | None
    tp: int | None

    @property
    def name(self) -> str:
        return f"r{self.id:02d}"

    def label(self) -> str:
        short = self.model.split("--")[1]
        return f"{short} ctx={self.max_model_len or 'auto'}" + (f" tp={self.tp}" if self.tp else "")


def workload(seed: int, n: int = 50) -> tuple[list[Request], list[tuple[str, int]]]:
    """``n`` requests and the event order: ("up", id) for each, ("rm", id) for the ones churned."""
    rng = random.Random(seed)
    names = [m for m, _, _ in MIX]
    weights = [w for _, w, _ in MIX]
    requests = []
    for i in range(n):
        m = rng.choices(names, weights)[0]
        ctx = rng.choice(next(c for name, _, c in MIX if name == m))
        tp = None
        if rng.random() < PIN_TP:
            sizes = [t for t in valid_tp_sizes(model(m), 8) if t in (2, 4)]
            tp = rng.choice(sizes) if sizes else None
        requests.append(Request(i, m, ctx, tp))
    # Lifetimes counted in later arrivals: three in four leave 2-10 arrivals later (the fleet ~70 % busy).
    leave: dict[int, list[int]] = {}
    for r in requests:
        if rng.random() < 0.75:
            leave.setdefault(r.id + rng.randint(2, 10), []).append(r.id)
    events: list[tuple[str, int]] = []
    for r in requests:
        events += [("rm", i) for i in leave.get(r.id, [])]
        events.append(("up", r.id))
    return requests, events


@dataclass
class Host:
    name: str
    gpu_name: str
    total: int
    count: int
    held: dict[int, str] = field(default_factory=dict)  # GPU index -> deployment
    ports: dict[str, int] = field(default_factory=dict)

    def free_gpus(self) -> list[int]:
        return [i for i in range(self.count) if i not in self.held]

    def inventory(self) -> Inventory:
        """The host as NVML would report it: an engine's GPU shows utilization × total in use."""
        gpus = tuple(
            Gpu(
                i,
                f"GPU-{self.name}-{i}",
                self.gpu_name,
                self.total,
                self.total - IDLE_USED - (int(DEFAULT_UTILIZATION * self.total) if i in self.held else 0),
            )
            for i in range(self.count)
        )
        by: dict[str, list[int]] = {}
        for i, owner in self.held.items():
            by.setdefault(owner, []).append(i)
        holdings = tuple(Holding(n, self.ports.get(n), tuple(g)) for n, g in by.items())
        return Inventory(gpus=gpus, holdings=holdings, gpu_runtime=True)


def fleet() -> list[Host]:
    return [Host(n, g, mib * MiB, c) for n, g, mib, c in HOSTS]


@dataclass(frozen=True)
class Decision:
    host: str | None
    gpus: tuple[int, ...]
    port: int = 0
    max_model_len: int | None = None


def spec_of(r: Request, placement: str) -> DeploymentSpec:
    return DeploymentSpec.create(
        f"/data/models/{r.model}",
        name=r.name,
        max_model_len=r.max_model_len,
        tensor_parallel_size=r.tp,
        placement=placement,
    )


Chooser = Callable[[list[HostOption], str], tuple[HostOption | None, list[str]]]


def fewest_gpus(options: list[HostOption], placement: str) -> tuple[HostOption | None, list[str]]:
    """Not llmdock's: a what-if host choice that takes the host where the model needs the fewest GPUs,
    then ``choose_host``'s binpack among those (NOTES.md: why it is measured)."""
    fitting = [o for o in options if not disqualified(o.plan)]
    if not fitting:
        return None, []
    least = min(len(o.plan.gpus) for o in fitting)
    return choose_host([o for o in fitting if len(o.plan.gpus) == least], placement)


def llmdock_policy(
    placement: str, chooser: Chooser = choose_host
) -> Callable[[Request, list[Host]], Decision]:
    def decide(r: Request, hosts: list[Host]) -> Decision:
        spec = spec_of(r, placement)
        options = []
        for h in hosts:
            inv = h.inventory()
            plan = make_plan(
                spec,
                inv,
                model_dir=spec.model,
                image="vllm/vllm-openai:v0.11.0",
                port_range=PORTS,
                strict=False,
                facts=model(r.model),
            )
            held = {i for hd in inv.holdings for i in hd.gpus}
            free = sum(g.free_bytes for g in inv.gpus if g.index not in held)
            options.append(HostOption(h.name, replace(plan, host=h.name), free))
        chosen, _ = chooser(options, placement)
        if chosen is None:
            return Decision(None, ())
        p = chosen.plan
        return Decision(chosen.host, p.gpus, p.port, p.fit.max_model_len if p.fit else None)

    return decide


def holds(facts: ModelFacts, total: int, tp: int, target: int) -> bool:
    """Whether one GPU of ``total`` bytes at tensor parallel ``tp`` holds a ``target``-token sequence
    (llmdock's estimate, utilization 0.9: the same arithmetic as the planner's)."""
    est = estimate(facts, tp, profile=engine_profile(total))
    budget = int(DEFAULT_UTILIZATION * total) - est.fixed
    return budget > 0 and min(max_tokens(facts, est, budget), facts.max_model_len) >= target


def first_fit_tp(r: Request, total: int) -> tuple[int, int] | None:
    """(TP, context) first-fit uses on GPUs of ``total`` bytes, or None when no TP up to 8 holds it."""
    facts = model(r.model)
    sizes = [r.tp] if r.tp else list(valid_tp_sizes(facts, 8))
    targets = [r.max_model_len] if r.max_model_len else [facts.max_model_len, MIN_CONTEXT]
    for target in targets:
        for tp in sizes:
            if holds(facts, total, tp, target):
                return tp, target
    return None


def first_fit(order: tuple[str, ...]) -> Callable[[Request, list[Host]], Decision]:
    def decide(r: Request, hosts: list[Host]) -> Decision:
        by_name = {h.name: h for h in hosts}
        for name in order:
            h = by_name[name]
            got = first_fit_tp(r, h.total)
            if got is not None and len(h.free_gpus()) >= got[0]:
                return Decision(h.name, tuple(h.free_gpus()[: got[0]]), 0, got[1])
        return Decision(None, ())

    return decide


@cache
def need(req: Request, total: int) -> int | None:
    """GPUs llmdock gives ``req`` on an empty host of 8 GPUs of ``total`` bytes (None: it never fits)."""
    gpus = [Gpu(i, "", "", total, total - IDLE_USED) for i in range(8)]
    try:
        return fit(model(req.model), gpus, tp=req.tp, max_model_len=req.max_model_len).tp
    except LlmdockError:
        return None


def packable(items: list[dict[str, int | None]], capacity: dict[str, int]) -> bool:
    """Whether every item (GPUs it needs per host; None: not there) fits at once. Exhaustive, largest first."""
    order = sorted(items, key=lambda d: -max(v or 0 for v in d.values()))
    left = dict(capacity)

    def place(k: int) -> bool:
        if k == len(order):
            return True
        tried: set[int] = set()
        for host, n in order[k].items():
            if n is None or n > left[host] or left[host] in tried:  # hosts with equal room: same subtree
                continue
            tried.add(left[host])
            left[host] -= n
            if place(k + 1):
                return True
            left[host] += n
        return False

    return place(0)


def simulate(policy: Callable[[Request, list[Host]], Decision], seed: int) -> dict[str, Any]:
    requests, events = workload(seed)
    hosts = fleet()
    by_name = {h.name: h for h in hosts}
    live: dict[int, tuple[str, int]] = {}  # request id -> (host, GPUs)
    times, refused, avoidable, never, stranded, anomalies = [], [], [], [], [], []
    gpu_sum = samples = 0
    for kind, rid in events:
        r = requests[rid]
        if kind == "rm":
            if rid in live:
                h = by_name[live.pop(rid)[0]]
                h.held = {i: o for i, o in h.held.items() if o != r.name}
                h.ports.pop(r.name, None)
            continue
        t0 = time.perf_counter()
        d = policy(r, hosts)
        times.append(time.perf_counter() - t0)
        needs = {h.name: need(r, h.total) for h in hosts}
        if d.host is None:
            refused.append(r.label())
            free = {h.name: len(h.free_gpus()) for h in hosts}
            stranded.append(sum(free.values()))
            if all(n is None for n in needs.values()):
                never.append(r.label())
            else:
                if any(n is not None and n <= free[h] for h, n in needs.items()):
                    anomalies.append(f"refused {r.label()} though free GPUs {free} hold it (needs {needs})")
                alive = [
                    {h.name: (n if h.name == host else need(requests[i], h.total)) for h in hosts}
                    for i, (host, n) in live.items()
                ]
                if packable([*alive, needs], {h.name: h.count for h in hosts}):
                    avoidable.append(r.label())
        else:
            h = by_name[d.host]
            double = [i for i in d.gpus if i in h.held or i >= h.count]
            if double or not d.gpus:
                anomalies.append(f"{r.label()} given GPUs {d.gpus} on {h.name}, held: {sorted(h.held)}")
            h.held.update({i: r.name for i in d.gpus})
            h.ports[r.name] = d.port
            live[rid] = (h.name, len(d.gpus))
        gpu_sum += sum(len(h.held) for h in hosts)
        samples += 1
    free_end = {h.name: len(h.free_gpus()) for h in hosts}
    return {
        "seed": seed,
        "requests": len(requests),
        "placed": len(requests) - len(refused),
        "refused": len(refused),
        "refused_avoidable": len(avoidable),
        "refused_never_fits": len(never),
        "refused_capacity": len(refused) - len(avoidable) - len(never),
        "gpus_in_use_mean": round(gpu_sum / samples, 2),
        "gpus_in_use_end": sum(len(h.held) for h in hosts),
        "gpus_per_placed": round(
            sum(n for _, n in live.values()) / max(1, len(live)), 2
        ),  # of those alive at the end
        "stranded_free_gpus_per_refusal": round(statistics.mean(stranded), 2) if stranded else 0.0,
        "free_gpus_end": free_end,
        "largest_free_block_end": max(free_end.values()),
        "decision_ms_median": round(statistics.median(times) * 1e3, 3),
        "decision_ms_p95": round(sorted(times)[int(0.95 * (len(times) - 1))] * 1e3, 3),
        "refused_list": refused,
        "avoidable_list": avoidable,
        "anomalies": anomalies,
    }


POLICIES: dict[str, Callable[[Request, list[Host]], Decision]] = {
    "llmdock-binpack": llmdock_policy("binpack"),
    "llmdock-spread": llmdock_policy("spread"),
    "first-fit (h100, a100, l40s)": first_fit(("h100", "a100", "l40s")),
    "first-fit (l40s, a100, h100)": first_fit(("l40s", "a100", "h100")),
    "what-if: fewest GPUs, then binpack": llmdock_policy("binpack", fewest_gpus),
}
MEDIAN_KEYS = (
    "placed",
    "refused",
    "refused_avoidable",
    "refused_capacity",
    "refused_never_fits",
    "gpus_in_use_mean",
    "gpus_in_use_end",
    "gpus_per_placed",
    "stranded_free_gpus_per_refusal",
    "largest_free_block_end",
    "decision_ms_median",
    "decision_ms_p95",
)


def run(seeds: list[int]) -> dict[str, Any]:
    runs = {name: [simulate(p, s) for s in seeds] for name, p in POLICIES.items()}
    summary = {
        name: {k: statistics.median(r[k] for r in rs) for k in MEDIAN_KEYS}
        | {
            "refused_total": sum(r["refused"] for r in rs),
            "avoidable_total": sum(r["refused_avoidable"] for r in rs),
            "anomalies": [a for r in rs for a in r["anomalies"]],
        }
        for name, rs in runs.items()
    }
    requests, events = workload(seeds[0])
    return {
        "hosts": [{"name": n, "gpu": g, "memory_mib": m, "gpus": c} for n, g, m, c in HOSTS],
        "seeds": seeds,
        "example_workload": {
            "seed": seeds[0],
            "requests": [r.label() for r in requests],
            "removals": sum(1 for k, _ in events if k == "rm"),
            "needs": {r.label(): {h: need(r, m * MiB) for h, _, m, _ in HOSTS} for r in requests},
        },
        "summary": summary,
        "runs": runs,
    }


if __name__ == "__main__":
    out = run(list(range(int(sys.argv[1]) if len(sys.argv) > 1 else 3)))
    print(json.dumps(out["summary"], indent=1))
