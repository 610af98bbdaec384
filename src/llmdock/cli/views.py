"""How ``up`` and ``plan`` results look on a terminal (rich is imported lazily, by the callers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmdock.lifecycle import UpResult
    from llmdock.planning.cpu import CpuFit
    from llmdock.planning.fit import Fit
    from llmdock.planning.plan import Plan


def show_up(result: UpResult, json_out: bool) -> None:
    import shlex

    from rich.markup import escape

    from llmdock.cli.render import out, print_json
    from llmdock.planning.container import docker_run_line

    if json_out:
        print_json(result.to_dict())
        return
    plan = result.plan
    name = plan.spec.name
    if result.action == "dry-run":
        for member in result.members or [result]:
            show_verdict(member.plan)
        refused = [m.plan.spec.name for m in result.members if m.plan.blocking]
        if len(result.members) > 1 and refused:
            out.print(f"[bold red]{len(refused)} of {len(result.members)} replicas cannot deploy[/bold red]")
        for note in plan.notes:
            out.print(f"[dim]note: {escape(note)}[/dim]")
        if plan.fit is not None:
            show_fit(plan.fit)
        if plan.cpu_fit is not None:
            show_cpu_fit(plan.cpu_fit)
        out.print("[bold]engine command:[/bold]")
        out.print(escape(shlex.join(plan.argv)))
        if plan.spec.runtime == "local":
            out.print(f"[bold]runs in engine environment[/bold] {escape(plan.spec.engine_env or '')}")
        else:
            out.print("[bold]equivalent docker command:[/bold]")
            out.print(escape(docker_run_line(plan.container)))
        return
    verb = {
        "unchanged": "already running",
        "started": "started",
        "replaced": "replaced",
        "created": "deployed",
    }
    for member in result.members[1:]:
        out.print(f"[green]✓[/green] replica {member.plan.spec.name}: {member.url}, {verb[member.action]}")
    if result.members:
        name = result.members[0].plan.spec.group or name
    ready = f", ready in {result.ready_after_s:.1f}s" if result.ready_after_s is not None else ""
    out.print(f"[green]✓[/green] {name} {verb[result.action]}{ready}")
    for note in plan.notes:
        out.print(f"[dim]note: {escape(note)}[/dim]")
    out.print(f"  endpoint  {result.url}   model {escape(plan.served_name)}")
    out.print(f"  logs      llmdock logs -f {name}")
    out.print(f"  stop      llmdock stop {name}   (remove: llmdock rm -f {name})")


def show_verdict(plan: Plan) -> None:
    """ "cannot deploy" when the request itself cannot work (✗ lines), else "would deploy", with the
    problems of this host as it is now (! lines: an image not pulled, GPUs busy, Docker down)."""
    from rich.markup import escape

    from llmdock.cli.render import out

    where = "CPU"
    if plan.gpus:
        where = (
            f"{len(plan.gpus)} GPU(s), none visible on this host"
            if plan.stand_in_gpus
            else ("GPUs " + ",".join(map(str, plan.gpus)))
        )
    on = f" of host {plan.host}" if plan.host != "local" else ""
    what = f"{plan.spec.name}: {plan.spec.engine} on {where}{on}, port {plan.port}"
    host = [p for p in plan.problems if p not in plan.blocking]
    if plan.blocking:
        out.print(f"[bold red]cannot deploy[/bold red] {what}")
    elif host:
        out.print(f"[bold]would deploy[/bold] {what} [yellow](with warnings about this host)[/yellow]")
    else:
        out.print(f"[bold]would deploy[/bold] {what}")
    for problem in plan.blocking:
        out.print(f"[red]✗ {escape(problem)}[/red]")
    for problem in host:
        out.print(f"[yellow]! {escape(problem)}[/yellow]")


def show_fit(fit: Fit) -> None:
    """The planner's numbers: TP, context, KV capacity and where each GPU's memory goes."""
    from rich.table import Table

    from llmdock.cli.render import out

    gib = 2**30
    out.print(
        f"[bold]fit:[/bold] TP {fit.tp} on GPUs {','.join(map(str, fit.gpus))}, max_model_len {fit.max_model_len}, "
        f"utilization {fit.gpu_memory_utilization:g}, KV cache {fit.kv_tokens:,} tokens "
        f"= {fit.concurrent_seqs:.1f} full-length sequences at once"
    )
    table = Table(box=None, header_style="bold")
    cols = ("GPU", "total", "budget", "weights", "activation", "vision", "runtime", "graphs", "KV cache")
    for col in cols:
        table.add_column(col, justify="right")
    for g in fit.per_gpu:
        values = (g.total, g.budget, g.weights, g.activation, g.vision, g.runtime, g.cuda_graph, g.kv_cache)
        table.add_row(str(g.index), *(f"{v / gib:.1f}G" for v in values))
    out.print(table)
    for note in fit.notes:
        out.print(f"[dim]note: {note}[/dim]")


def show_cpu_fit(fit: CpuFit) -> None:
    """The planner's numbers for an engine on the CPU: context, KV budget and host RAM."""
    from llmdock.cli.render import out

    gib = 2**30
    out.print(
        f"[bold]fit:[/bold] CPU, max_model_len {fit.max_model_len}, KV cache {fit.kv_cache_gib} GiB "
        f"= {fit.kv_tokens:,} tokens = {fit.concurrent_seqs:.1f} full-length sequences at once"
    )
    out.print(
        f"  host RAM: weights {fit.weights / gib:.1f}G + KV cache {fit.kv_cache_gib}G + engine "
        f"{fit.runtime / gib:.1f}G = {fit.need / gib:.1f}G of {fit.available / gib:.1f}G available "
        f"({fit.total / gib:.1f}G total)"
    )
