"""``up``, ``ps``, ``logs``, ``stop``, ``start``, ``restart``, ``rm``, ``inspect``."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from llmdock.states import Event, State

if TYPE_CHECKING:
    from llmdock.lifecycle import Lifecycle, PullOptions
    from llmdock.runtimes.base import Deployment
    from llmdock.runtimes.multi import Member
    from llmdock.settings import Settings
    from llmdock.spec import DeploymentSpec

Name = Annotated[str, typer.Argument(help="Deployment name (see `llmdock ps`).")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the engine serves.")]
Timeout = Annotated[
    float, typer.Option("--timeout", min=1, metavar="SECONDS", help="Seconds to wait for readiness.")
]


def runtimes(s: Settings) -> dict[str, Member]:
    from llmdock.runtimes.multi import default_members

    return default_members(s)


def lifecycle(pull: PullOptions | None = None) -> Lifecycle:
    from llmdock import settings
    from llmdock.lifecycle import Lifecycle
    from llmdock.state import Store

    s = settings.load()
    return Lifecycle(s, runtimes(s), Store(s.db_path), pull)


def print_notes(notes: list[str]) -> None:
    """Why a listing may be incomplete (e.g. Docker unreachable), on stderr."""
    if notes:
        from rich.markup import escape

        from llmdock.cli.render import err

        for note in notes:
            err.print(f"[yellow]note:[/yellow] {escape(note)}")


def deployments_using(model_dir: Path) -> list[str]:
    """For `models ls/rm`: deployments whose weights are ``model_dir`` (none known without Docker)."""
    from llmdock.errors import RuntimeUnavailable

    try:
        return lifecycle().used_by(model_dir)
    except RuntimeUnavailable:
        return []


@contextmanager
def phase_status(enabled: bool, what: str) -> Iterator[Callable[[str], None] | None]:
    """A live spinner that shows the engine's current phase; nothing when output is JSON."""
    if not enabled:
        yield None
        return
    from llmdock.cli.render import err

    with err.status(f"{what}: checking the request") as status:
        yield lambda phase: status.update(f"{what}: {phase}")


def up(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Argument(help="Weights directory (holding config.json), or a hub ID ORG/NAME to pull.")
    ],
    name: Annotated[str | None, typer.Option(help="Deployment/container name (default: from MODEL).")] = None,
    engine: Annotated[str, typer.Option(help="vllm | sglang | transformers.")] = "vllm",
    image: Annotated[
        str | None, typer.Option(help="Engine image (default per engine, see `config list`).")
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            help="auto (fewest that fit) | all | none | N (a count) | 0,1 (indices; one: device=3)."
        ),
    ] = None,
    port: Annotated[str, typer.Option(help="Port the engine listens on, or auto.")] = "auto",
    tensor_parallel_size: Annotated[
        int | None, typer.Option("--tensor-parallel-size", "--tp", help="GPUs per model copy.")
    ] = None,
    gpu_memory_utilization: Annotated[
        float | None,
        typer.Option(
            "--gpu-memory-utilization", "--gpu_memory_utilization", help="Share of each GPU's memory."
        ),
    ] = None,
    max_model_len: Annotated[
        int | None, typer.Option("--max-model-len", "--max_model_len", help="Context length in tokens.")
    ] = None,
    dtype: Annotated[str | None, typer.Option(help="auto | bfloat16 | float16 | float32 ...")] = None,
    kv_cache_dtype: Annotated[str | None, typer.Option(help="auto | fp8 (halves KV cache memory).")] = None,
    kv_cache_space: Annotated[
        int | None,
        typer.Option(
            help="vLLM on the CPU (--gpus none): GiB of host RAM for the KV cache (default: planned)."
        ),
    ] = None,
    cpus: Annotated[
        str | None,
        typer.Option(
            help="Host CPUs for the engine, e.g. 0-7 (a cpuset; vLLM on the CPU binds its threads there)."
        ),
    ] = None,
    limit_mm_per_prompt: Annotated[
        str | None, typer.Option(help='Per-prompt media limits: image=5,video=5 or {"image":5}.')
    ] = None,
    served_model_name: Annotated[str | None, typer.Option(help="Model name clients send.")] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            "-e",
            metavar="KEY=VALUE",
            help="KEY=VALUE for the engine (repeatable); with --runtime local, NAME picks the engine environment.",
        ),
    ] = None,
    runtime: Annotated[
        str, typer.Option(help="docker (a container) | local (a process in an engine environment).")
    ] = "docker",
    engine_env: Annotated[
        str | None,
        typer.Option(
            "--engine-env", help="Local runtime: environment to run in (default: the engine's name)."
        ),
    ] = None,
    network: Annotated[str, typer.Option(help="host (default, as the procedure) | bridge.")] = "host",
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            metavar="NAME",
            help="Docker host to run on (`llmdock hosts ls`; local is this one). Default: the one with room.",
        ),
    ] = None,
    share_gpus: Annotated[bool, typer.Option(help="Allow GPUs another deployment holds.")] = False,
    spread: Annotated[
        bool, typer.Option("--spread", help="With --gpus auto: prefer the emptiest GPUs (default: binpack).")
    ] = False,
    expose: Annotated[
        bool,
        typer.Option(help="Engine listens on all interfaces (it checks no keys; prefer `llmdock serve`)."),
    ] = False,
    replicas: Annotated[
        int, typer.Option(help="Copies behind one name, each with its own GPUs and port (`serve` balances).")
    ] = 1,
    on_demand: Annotated[
        bool, typer.Option(help="`llmdock serve` starts it when a request for it arrives.")
    ] = False,
    idle_stop: Annotated[
        str | None, typer.Option(help="`llmdock serve` stops it after this long without requests: 30m, 2h.")
    ] = None,
    replace: Annotated[
        bool, typer.Option(help="Replace a deployment of this name with a different spec.")
    ] = False,
    wait: Wait = True,
    timeout: Timeout = 3600.0,
    dry_run: Annotated[
        bool, typer.Option(help="Show what would be created and run; create nothing.")
    ] = False,
    json_out: Json = False,
    pull: Annotated[bool, typer.Option("--pull/--no-pull", help="Pull a hub model that is missing.")] = True,
    source: Annotated[
        str, typer.Option(help="Hub for ORG/NAME: modelscope | huggingface | auto.")
    ] = "modelscope",
    revision: Annotated[str | None, typer.Option(help="Hub revision to pull.")] = None,
    allow_system_disk: Annotated[bool, typer.Option(help="Allow a big model on the system disk.")] = False,
    assume_gpus: Annotated[
        str | None, typer.Option(help="Plan for GPUs this host lacks: 8x80GiB, 4xH100 (dry run only).")
    ] = None,
) -> None:
    """Deploy MODEL in a container and wait until it serves. Extra engine flags go after `--`.

    Example: llmdock up /data/models/Qwen2.5-VL-72B-Instruct --port 8001 --dtype bfloat16
    --limit-mm-per-prompt image=5,video=5 --tp 8 --gpu-memory-utilization 0.9 --max-model-len 73480
    """
    from llmdock.spec import DeploymentSpec

    variables, named_env = split_env(env or [], runtime)
    from llmdock.weights import canonical_model

    spec = DeploymentSpec.create(
        canonical_model(model),
        name=name,
        engine=engine,
        image=image,
        gpus=gpus,
        port=port,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        dtype=dtype,
        kv_cache_dtype=kv_cache_dtype,
        kv_cache_space=kv_cache_space,
        cpus=cpus,
        limit_mm_per_prompt=limit_mm_per_prompt,
        served_model_name=served_model_name,
        env=variables,
        network=network,
        share_gpus=share_gpus,
        placement="spread" if spread else "binpack",
        expose=expose,
        replicas=replicas,
        extra_args=list(ctx.args),
        runtime=runtime,
        engine_env=engine_env or named_env,
        host=host,
    )
    from llmdock.gateway.keystore import parse_duration
    from llmdock.gateway.routing import Policy

    policy = Policy(on_demand, parse_duration(idle_stop) if idle_stop else None)  # checked before `up`

    from llmdock.cli.models import _progress
    from llmdock.gpuinfo import parse_assume_gpus
    from llmdock.lifecycle import PullOptions

    assumed = parse_assume_gpus(assume_gpus) if assume_gpus else ()
    with _progress(False, "pull") as bars:  # bars on stderr; --json keeps stdout to the one result
        opts = PullOptions(pull, source, revision, allow_system_disk, None if json_out else bars)
        lc = lifecycle(opts)
        with phase_status(wait and not json_out and not dry_run, spec.name) as on_phase:
            try:
                result = lc.up(
                    spec,
                    replace=replace,
                    wait=wait,
                    timeout=timeout,
                    dry_run=dry_run,
                    on_phase=on_phase,
                    assume_gpus=assumed,
                )
            except KeyboardInterrupt:
                interrupted(lc, spec)
                raise
    if result.action != "dry-run" and (on_demand or idle_stop):
        from llmdock.gateway.keystore import KeyStore

        KeyStore(lc.store).set_policy(spec.name, policy)
        lc.store.record(spec.name, Event.POLICY, f"on_demand={on_demand} idle_stop={idle_stop}")
    from llmdock.cli.views import show_up

    show_up(result, json_out)
    if result.action == "dry-run" and any(m.plan.blocking for m in result.members or [result]):
        raise typer.Exit(1)  # the request itself cannot work (does not fit, bad model…): scripts can tell


def interrupted(lc: Lifecycle, spec: DeploymentSpec) -> None:
    """Ctrl-C during ``up``: say what is left behind (the engine keeps starting) and how to stop it."""
    from llmdock.cli.render import err
    from llmdock.errors import LlmdockError

    try:
        names = [n for n in lc.names(spec.name) if lc.runtimes.get(n) is not None]
    except LlmdockError:
        names = []
    if names:
        shown = " ".join(names)
        err.print(
            f"[yellow]interrupted:[/yellow] {shown} keeps starting in the background; "
            f"watch it with `llmdock logs -f {names[0]}`, stop it with `llmdock stop {spec.name}` "
            f"or remove it with `llmdock rm -f {spec.name}`"
        )
    else:
        err.print(
            f"[yellow]interrupted:[/yellow] nothing was created for {spec.name}; a download that was cut "
            f"resumes where it stopped on the next `llmdock up` or `llmdock pull {spec.model}`"
        )


def split_env(values: list[str], runtime: str) -> tuple[list[str], str | None]:
    """``--env KEY=VALUE`` sets engine variables; for the local runtime ``--env NAME`` (no ``=``)
    names the engine environment, as the issue's ``up --runtime local --env NAME`` reads."""
    names = [v for v in values if "=" not in v]
    if runtime != "local" or not names:
        return values, None
    if len(names) > 1:
        from llmdock.errors import InvalidSpec

        raise InvalidSpec(f"--env names two environments: {', '.join(names)}", "give one --env NAME")
    return [v for v in values if "=" in v], names[0]


def supervision(kinds: tuple[Event, ...] | None = None) -> dict[str, tuple[str, int]]:
    """Health marks `llmdock serve` recorded (latest event, restarts), if there is a state database;
    with ``kinds``, the latest event of those kinds instead."""
    from llmdock.errors import LlmdockError
    from llmdock.settings import load
    from llmdock.state import Store

    path = load().db_path
    if not path.exists():
        return {}
    try:
        store = Store(path)
        return store.health(kinds) if kinds else store.health()
    except LlmdockError:
        return {}


def deployment_state(d: Deployment, lifecycle: str, health: str) -> State:
    """The state ``ps`` shows, from Docker's and the recorded events (:func:`llmdock.states.derive`)."""
    from llmdock.states import derive, event

    return derive(d.state, d.exit_code, event(lifecycle), event(health))


def state_text(state: State, d: Deployment) -> str:
    """``ready``, ``starting``…; ``failed (1)`` with the exit code of one that died."""
    code = f" ({d.exit_code})" if state is State.FAILED and d.exit_code is not None else ""
    return f"{state}{code}"


def ps(json_out: Json = False) -> None:
    """List deployments (read from Docker, so it works even without the database)."""
    from rich.table import Table

    from llmdock.cli.render import out, print_json
    from llmdock.runtimes.multi import Runtimes
    from llmdock.settings import load

    rts = Runtimes(runtimes(load()))
    deps = rts.deployments()
    print_notes(rts.notes)
    from llmdock.states import BAD_HEALTH, LIFECYCLE

    health = supervision()
    last = supervision(LIFECYCLE)

    def marks(d: Deployment) -> tuple[str, int, State]:
        kind, restarts = health.get(d.name) or health.get(d.group) or ("", 0)
        return kind, restarts, deployment_state(d, last.get(d.name, ("", 0))[0], kind)

    if json_out:
        rows = [{k: v for k, v in vars(d).items() if k != "spec"} for d in deps]
        for row, d in zip(rows, deps, strict=True):
            kind, restarts, status = marks(d)
            row["status"] = status.value  # "state" stays the runtime's own (running, exited…)
            row["health"], row["gateway_restarts"] = kind or None, restarts
        print_json(rows)
        return
    table = Table(box=None, header_style="bold")
    # HOST once there are hosts besides this one (`llmdock hosts add`): one host's table stays as it was.
    fleet = any("@" in k for k in rts.kinds) or any(d.host != "local" for d in deps)
    columns = ("NAME", "HOST", "STATE", "RUNTIME", "ENGINE", "PORT", "GPUS", "MODEL")
    for col in columns if fleet else tuple(c for c in columns if c != "HOST"):
        # Names and paths wrap instead of shrinking to "demo/big-mo…" on an 80-column terminal.
        table.add_column(col, overflow="fold", min_width=len(col) if col != "MODEL" else 12)
    for d in deps:
        kind, restarts, status = marks(d)
        state = state_text(status, d)
        state += " [red]crashed[/red]" if d.error else ""
        if d.running and kind in BAD_HEALTH and kind != status:
            state += f" [red]{kind}[/red]"
        state += f" [dim]restarted ×{restarts}[/dim]" if restarts else ""
        gpus = ",".join(map(str, d.gpus)) or "-"
        cells = (d.name, d.host, state, d.runtime, d.engine, str(d.port or "-"), gpus, d.model)
        table.add_row(*(cells if fleet else cells[:1] + cells[2:]))
    out.print(table if deps else "no deployments (start one with `llmdock up MODEL`)")


# An engine's access-log line for a successful health, model-list or metrics probe: `llmdock serve`
# and `up` send one every second or so, and vLLM and `transformers serve` log every request.
PROBE_LINE = re.compile(r'"(?:GET|HEAD) (?:/health|/v1/models|/metrics)(?:\?[^"]*)? HTTP/[\d.]+" 200\b')


def logs(
    name: Name,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    tail: Annotated[int | None, typer.Option("--tail", "-n", min=0, help="Only the last N lines.")] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Also the engine's lines for successful health and metrics probes.")
    ] = False,
) -> None:
    """Print the engine's log (what `tail -f nohup.out` showed), without the probes' access lines."""
    import sys

    for line in lifecycle().logs(name, tail=tail, follow=follow):
        if show_all or not PROBE_LINE.search(line):
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


def stop(name: Name, timeout: Annotated[float, typer.Option(help="Seconds before SIGKILL.")] = 30.0) -> None:
    """Stop a deployment (SIGTERM, then SIGKILL after --timeout). `start` brings it back."""
    lifecycle().stop(name, timeout=timeout)
    typer.echo(f"stopped {name}")


def start(name: Name, wait: Wait = True, timeout: Timeout = 3600.0) -> None:
    """Start a stopped deployment and wait until it serves."""
    lc = lifecycle()
    running = all(lc.get(member).running for member in lc.names(name))
    with phase_status(wait, name) as on_phase:
        took = lc.start(name, wait=wait, timeout=timeout, on_phase=on_phase)
    verb = "already running" if running else "started"
    typer.echo(f"{name} {verb}" + (f", ready in {took:.1f}s" if took is not None and not running else ""))


def restart(name: Name, wait: Wait = True, timeout: Timeout = 3600.0) -> None:
    """Stop and start a deployment, then wait until it serves."""
    with phase_status(wait, name) as on_phase:
        took = lifecycle().restart(name, wait=wait, timeout=timeout, on_phase=on_phase)
    typer.echo(f"restarted {name}" + (f", ready in {took:.1f}s" if took is not None else ""))


def rm(
    name: Name,
    force: Annotated[bool, typer.Option("--force", "-f", help="Remove even when running.")] = False,
) -> None:
    """Remove a deployment's container and its record (the weights stay)."""
    lifecycle().rm(name, force=force)
    typer.echo(f"removed {name}")


def inspect(name: Name) -> None:
    """Everything known about a deployment, as JSON: state, spec, history."""
    from llmdock.cli.render import print_json

    print_json(lifecycle().inspect(name))


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_extra_args": True, "allow_interspersed_args": True})(up)
    app.command(
        "plan",
        help="Show how MODEL would be deployed (GPUs, TP, context, memory per GPU, commands); create nothing. "
        "Takes the same flags as `up`.",
        context_settings={"allow_extra_args": True, "default_map": {"dry_run": True}},
    )(up)
    for command in (ps, logs, stop, start, restart, rm, inspect):
        app.command()(command)
    app.command("ls", hidden=True)(ps)
