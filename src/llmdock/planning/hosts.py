"""Which host a deployment goes to, when ``--host`` does not say. Pure.

Each host is planned on its own (its GPUs, ports and deployments); a host whose plan has no problem
but a missing image can take the deployment (``up`` then names the image to load there). Among those,
the host where it needs the fewest GPUs comes first (GPUs are what runs out: a 32B model on two 80 GB
GPUs rather than four 40 GB ones — benchmarks/fleet measured 92 refusals in 550 requests without this
rule, 69 with it); then ``binpack`` (the default) picks the host with the least free memory left — GPU
memory for a GPU deployment, RAM for one on the CPU — so big hosts stay free for big models, and
``spread`` the one with the most. Ties go to the host listed first (this host, then by name).

Example::

    chosen, notes = choose_host([HostOption("local", p1, 0), HostOption("gpu1", p2, 70 << 30)], "binpack")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmdock.planning.plan import Plan

# Problems that do not rule a host out: the image can be loaded there before `up` runs.
NOT_DISQUALIFYING = frozenset({"ImageMissing"})


@dataclass(frozen=True)
class HostOption:
    host: str
    plan: Plan
    free_bytes: int  # free GPU memory of its GPUs (a GPU plan) or available RAM (a CPU plan)


def disqualified(plan: Plan) -> list[str]:
    """The problems of ``plan`` that rule its host out."""
    kinds = plan.problem_kinds or ("",) * len(plan.problems)
    return [p for p, k in zip(plan.problems, kinds, strict=False) if k not in NOT_DISQUALIFYING]


def choose_host(options: Sequence[HostOption], placement: str) -> tuple[HostOption | None, list[str]]:
    """The option to deploy on (None when no host can take it) and why each other host was not chosen."""
    fitting = [o for o in options if not disqualified(o.plan)]
    notes = [f"host {o.host}: {disqualified(o.plan)[0]}" for o in options if o not in fitting]
    if not fitting:
        return None, notes
    if placement == "spread":  # min() keeps the first of equals: ties go to the host listed first
        chosen = min(fitting, key=lambda o: (len(o.plan.gpus), -o.free_bytes))
    else:
        chosen = min(fitting, key=lambda o: (len(o.plan.gpus), o.free_bytes))
    others = [o.host for o in fitting if o is not chosen]
    if others:
        how = "most" if placement == "spread" else "least"
        notes.append(
            f"placed on {chosen.host} ({placement}: the fewest GPUs, then the {how} free memory, "
            f"of {', '.join([chosen.host, *others])})"
        )
    return chosen, notes
