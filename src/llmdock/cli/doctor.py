"""``llmdock doctor``: check this host and say what to fix."""

from __future__ import annotations

from typing import Annotated

import typer


def doctor(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Check Docker, the NVIDIA runtime, GPUs and driver, CUDA of the engine images, the models disk,
    ports, micromamba and stale deployments; each problem with its fix. Exit 1 when a check fails."""
    from rich.markup import escape

    from llmdock import doctor as doc
    from llmdock import settings
    from llmdock.cli.deploy import runtimes
    from llmdock.cli.render import out, print_json

    s = settings.load()
    results = doc.checks(doc.gather(s, runtimes(s)))
    report = doc.to_dict(results)
    if json_out:
        print_json(report)
    else:
        marks = {
            "ok": "[green]✓[/green]",
            "warn": "[yellow]![/yellow]",
            "fail": "[red]✗[/red]",
            "skip": "[dim]-[/dim]",
        }
        for c in results:
            out.print(f"{marks[c.status]} [bold]{escape(c.name)}[/bold]: {escape(c.detail)}")
            if c.fix and c.status in ("warn", "fail"):
                out.print(f"    [dim]fix:[/dim] {escape(c.fix)}")
    if not report["ok"]:
        raise typer.Exit(1)
