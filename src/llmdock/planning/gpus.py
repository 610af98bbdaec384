"""``--gpus`` syntax and GPU selection.

Syntax, as in ``docker run --gpus``: ``all``, ``none``, a bare number ``N`` (any N GPUs), or indices
``0,1,2`` / ``device=3`` (a single index needs the ``device=`` form or a trailing comma: ``3,``).
``auto`` (the default for GPU engines) offers every free GPU and lets the planner take the fewest
that fit the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmdock.errors import GpuUnavailable, InvalidSpec
from llmdock.planning.inventory import Inventory

HINT = "use --gpus auto, all, none, a count like 2, or indices like 0,1 (one index: device=3)"


@dataclass(frozen=True)
class GpuRequest:
    kind: str  # "auto" | "all" | "none" | "count" | "indices"
    count: int = 0
    indices: tuple[int, ...] = ()


def parse_gpus(text: str) -> GpuRequest:
    text = text.strip().lower()
    if text in ("all", "auto"):
        return GpuRequest(text)
    if text in ("none", "", "cpu"):
        return GpuRequest("none")
    body = text.removeprefix("device=")
    if body.isdigit() and body == text:
        count = int(body)
        if count < 1:
            raise InvalidSpec(
                f"--gpus {text!r} asks for no GPU (a bare number is a count)",
                "for GPU 0 write --gpus device=0; for a CPU deployment --gpus none",
            )
        return GpuRequest("count", count=count)
    parts = [p.strip() for p in body.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise InvalidSpec(f"--gpus {text!r} is not understood", HINT)
    indices = tuple(int(p) for p in parts)
    if len(set(indices)) != len(indices):
        raise InvalidSpec(f"--gpus {text!r} names a GPU twice", HINT)
    return GpuRequest("indices", indices=indices)


def choose_gpus(request: GpuRequest, inv: Inventory, *, owner: str, share: bool) -> tuple[int, ...]:
    """Pick GPU indices for a deployment named ``owner``; refuse missing or held GPUs.

    ``all`` means every GPU on the host. A count takes the lowest-numbered GPUs no other deployment holds.
    """
    present = sorted(g.index for g in inv.gpus)
    held = {i: h.name for h in inv.holdings if h.name != owner for i in h.gpus}
    if request.kind == "none":
        return ()
    if not present:
        raise GpuUnavailable(
            "no GPU is visible on this host (NVML found none)",
            "check `nvidia-smi`; or run on the CPU with --gpus none (vLLM's CPU backend)",
        )
    if request.kind == "all":
        chosen = tuple(present)
    elif request.kind == "auto":
        pool = tuple(i for i in present if share or i not in held)
        if not pool:
            raise GpuUnavailable(
                f"every GPU is held by a deployment ({', '.join(sorted(set(held.values())))})",
                "stop one (`llmdock ps`), or add --share-gpus",
            )
        return pool
    elif request.kind == "count":
        free = [i for i in present if share or i not in held]
        if len(free) < request.count:
            raise GpuUnavailable(
                f"--gpus {request.count} asks for {request.count} GPUs but only {len(free)} are free "
                f"(present: {len(present)}, held by deployments: {len(held)})",
                "stop a deployment, ask for fewer, or add --share-gpus",
            )
        chosen = tuple(free[: request.count])
    else:
        missing = [i for i in request.indices if i not in present]
        if missing:
            raise GpuUnavailable(
                f"GPU {', '.join(map(str, missing))} does not exist on this host "
                f"(present: {', '.join(map(str, present))})",
                "pick indices from `nvidia-smi -L`",
            )
        chosen = request.indices
    taken = {i: held[i] for i in chosen if i in held}
    if taken and not share:
        desc = ", ".join(f"GPU {i} by {n!r}" for i, n in sorted(taken.items()))
        raise GpuUnavailable(
            f"GPUs already held: {desc}",
            "choose other GPUs with --gpus, stop that deployment, or add --share-gpus to share them",
        )
    return chosen
