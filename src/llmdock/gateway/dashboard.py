"""Admin endpoints the dashboard (``/ui``) reads, beside those of :mod:`llmdock.gateway.admin`.

    GET    /admin/v1/inventory                   GPUs (or host RAM) with memory split by deployment
    GET    /admin/v1/phases                      {deployment: phase}: what a starting engine is doing
    GET    /admin/v1/usage/series?since=&step=   usage per key and model over time (buckets of STEP s)
    POST   /admin/v1/plan                        the plan `up --dry-run` shows, for the fields of create

They are routed by :class:`~llmdock.gateway.admin.Admin` after its checks (admin key or local caller,
JSON for POST), so they follow the same rules. The computations are plain functions over data
(:func:`split_gpu`, :func:`series`), the routes only wire them; lifecycle work runs in the
supervisor's lifecycle thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmdock.errors import InvalidSpec
from llmdock.gateway.proxy import json_response
from llmdock.gateway.wire import BadRequest

if TYPE_CHECKING:
    from llmdock.gateway.admin import Admin
    from llmdock.gateway.app import LifecycleController
    from llmdock.gateway.asgi import Request, Response
    from llmdock.planning.inventory import Gpu
    from llmdock.runtimes.base import Deployment
    from llmdock.spec import DeploymentSpec

ROUTES = frozenset({"inventory", "phases", "plan", "usage"})
MAX_POINTS = 2000  # buckets per series: a year at one a day, a day and a bit at one a minute
LOG_TAIL = 200  # engine log lines read to tell a starting deployment's phase
HOLDING = ("running", "restarting", "created")
# Fields of a create body that are not DeploymentSpec.create's but the gateway's own.
NOT_SPEC = ("model", "wait", "on_demand", "idle_stop_s")


def spec_from_body(body: Mapping[str, Any], also: tuple[str, ...] = ()) -> DeploymentSpec:
    """A create body (`up`'s long option names, ``also``: more fields the caller reads itself) -> a
    validated spec; InvalidSpec names a field ``up`` does not know."""
    from llmdock.spec import DeploymentSpec

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidSpec("`model` (a weights directory) is required", 'send {"model": "/data/models/X"}')
    skip = (*NOT_SPEC, *also)
    fields = {k: v for k, v in body.items() if k not in skip and v is not None and v != ""}
    try:
        return DeploymentSpec.create(model, **fields)
    except TypeError as e:
        raise InvalidSpec(f"unknown field: {e}", "use the long names of `llmdock up`'s flags") from None


# ---- memory: pure -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Share:
    deployment: str
    bytes: int


def split_gpu(gpu: Gpu, holders: Iterable[Deployment]) -> tuple[list[Share], int]:
    """How a GPU's used memory divides among the deployments holding it, and what is left (other processes).

    An engine told ``gpu_memory_utilization`` takes that share of the whole GPU (vLLM and SGLang
    reserve it at start); others split what remains of the used memory evenly. Shares are scaled
    down when together they claim more than is used.
    """
    used = max(gpu.total_bytes - gpu.free_bytes, 0)
    holders = list(holders)
    fixed = {
        d.name: int(float(d.spec["gpu_memory_utilization"]) * gpu.total_bytes)
        for d in holders
        if isinstance(d.spec.get("gpu_memory_utilization"), (int, float))
    }
    rest = [d.name for d in holders if d.name not in fixed]
    left = max(used - sum(fixed.values()), 0)
    claims = {**fixed, **{n: left // len(rest) for n in rest}} if rest else fixed
    total = sum(claims.values())
    scale = min(1.0, used / total) if total else 0.0
    shares = [Share(n, int(b * scale)) for n, b in claims.items()]
    return shares, max(used - sum(s.bytes for s in shares), 0)


def inventory_view(
    gpus: Iterable[Gpu],
    deployments: Iterable[Deployment],
    host: tuple[int, int],
    host_use: Mapping[str, int],
) -> dict[str, Any]:
    """What the GPU panel draws: each GPU's used memory by deployment, and host RAM the same way."""
    deps = [d for d in deployments if d.state in HOLDING]
    view = []
    for g in gpus:
        shares, other = split_gpu(g, [d for d in deps if g.index in d.gpus])
        view.append(
            {
                "index": g.index,
                "name": g.name,
                "total": g.total_bytes,
                "free": g.free_bytes,
                "deployments": [vars(s) for s in shares],
                "other": other,
            }
        )
    total, available = host
    on_host = [Share(n, b) for n, b in host_use.items()]
    return {
        "gpus": view,
        "host": {
            "total": total,
            "available": available,
            "deployments": [vars(s) for s in on_host],
            "other": max(total - available - sum(s.bytes for s in on_host), 0),
        },
    }


def container_memory(controller: LifecycleController, deployments: Iterable[Deployment]) -> dict[str, int]:
    """RAM each running Docker deployment uses, as ``docker stats`` counts it (page cache left out).
    Deployments Docker cannot tell about (local processes, a daemon gone) are left out."""
    try:
        client = getattr(controller.lc.runtimes.named("docker"), "client", None)
    except Exception:
        return {}
    found: dict[str, int] = {}
    for d in deployments:
        if client is None or d.runtime != "docker" or d.state != "running" or not d.id:
            continue
        try:
            mem = client.containers.get(d.id).stats(stream=False, one_shot=True)["memory_stats"]
            found[d.name] = max(int(mem["usage"]) - int(mem.get("stats", {}).get("inactive_file", 0)), 0)
        except Exception:  # gone meanwhile, or a daemon without these fields: leave it out
            continue
    return found


def inventory(controller: LifecycleController) -> dict[str, Any]:
    from llmdock import hostinfo
    from llmdock.lifecycle import detect_gpus

    deps = controller.lc.ps()
    return inventory_view(detect_gpus(), deps, hostinfo.memory(), container_memory(controller, deps))


def phases(controller: LifecycleController, names: Iterable[str]) -> dict[str, str]:
    """Per deployment, what it is doing: for each named one that runs (and is not ready yet) the latest
    phase its engine log shows; for one that does not run, its last lifecycle event (``stopped`` when
    llmdock stopped it, ``failed``…), which tells a stop from a crash."""
    from llmdock.engines import get_engine
    from llmdock.readiness import current_phase
    from llmdock.states import LIFECYCLE, Event

    deps = controller.lc.ps()
    last = controller.store.health((*LIFECYCLE, Event.IDLE_STOPPED))
    found: dict[str, str] = {}
    for d in deps:
        if not d.running:
            if d.name in last:
                found[d.name] = last[d.name][0]
            continue
        if d.name not in names:
            continue
        try:
            phase = current_phase(list(controller.lc.logs(d.name, tail=LOG_TAIL)), get_engine(d.engine))
        except Exception:  # a log that cannot be read tells no phase
            continue
        if phase:
            found[d.name] = phase
    return found


# ---- usage over time: pure over SQLite --------------------------------------------------------------
def series(db: sqlite3.Connection, since: float, step_s: int) -> dict[str, Any]:
    """Usage per (key, model) in buckets of ``step_s`` seconds (a whole number of minutes) from ``since``."""
    step_min = max(step_s // 60, 1)
    first = int(since // 60)
    rows = db.execute(
        "SELECT key_name, model, (minute / ?) * ? AS bucket, SUM(requests), SUM(errors), "
        "SUM(prompt_tokens), SUM(completion_tokens) FROM usage WHERE minute >= ? "
        "GROUP BY key_name, model, bucket ORDER BY key_name, model, bucket",
        (step_min, step_min, first),
    ).fetchall()
    out: dict[tuple[str, str], list[list[int]]] = {}
    for key, model, bucket, req, err, prompt, completion in rows:
        out.setdefault((key, model), []).append(
            [int(bucket) * 60, int(req), int(err), int(prompt), int(completion)]
        )
    return {
        "step": step_min * 60,
        "columns": ["t", "requests", "errors", "prompt_tokens", "completion_tokens"],
        "series": [{"key": k, "model": m, "points": p} for (k, m), p in out.items()],
    }


# ---- routes -----------------------------------------------------------------------------------------
async def route(admin: Admin, request: Request, method: str, parts: list[str]) -> Response | None:
    """The answer for one of :data:`ROUTES`, or None when the path is none of them."""
    import time

    q = request.query
    if parts == ["usage", "series"] and method == "GET" and admin.keystore is not None:
        since = float(q.get("since") or 0)
        step = int(q.get("step") or 60)
        if step < 60:
            raise BadRequest("`step` is in seconds and at least 60 (usage is kept per minute)")
        since = max(since, time.time() - step * MAX_POINTS)
        return json_response(series(admin.keystore.db, since, step))
    act = admin.act
    if act is None:
        return None
    if parts == ["inventory"] and method == "GET":
        return json_response(await act(inventory))
    if parts == ["phases"] and method == "GET":
        starting = [n for n, r in admin.table.routes.items() if r.running and not r.ready]
        names = {n for n in q.get("names", "").split(",") if n} | set(starting)
        return json_response(await act(lambda c: phases(c, names)))
    if parts == ["plan"] and method == "POST":
        body = await admin.json(request)
        return json_response(await act(lambda c: plan(c, body)))
    return None


def plan(controller: LifecycleController, body: Mapping[str, Any]) -> dict[str, Any]:
    """What ``up --dry-run`` would do for ``body``; creates nothing."""
    from llmdock.gpuinfo import parse_assume_gpus

    spec = spec_from_body(body, also=("assume_gpus",))
    assume = body.get("assume_gpus")
    gpus = parse_assume_gpus(assume) if isinstance(assume, str) and assume.strip() else ()
    result = controller.lc.up(spec, dry_run=True, assume_gpus=gpus)
    data = result.to_dict()
    data["members"] = [m.plan.to_dict() for m in result.members]
    return data


OPENAPI_PATHS: dict[str, Any] = {
    "/admin/v1/inventory": {"get": "GPUs and host RAM, used memory split by deployment"},
    "/admin/v1/phases": {"get": "The phase each starting deployment's engine is in (?names=a,b)"},
    "/admin/v1/usage/series": {"get": "Usage per key and model over time (?since=EPOCH&step=SECONDS)"},
    "/admin/v1/plan": {"post": "What `up --dry-run` would do for the fields of create; creates nothing"},
}
