"""``llmdock apply -f FILE``, ``llmdock export``, ``llmdock schema``: deployments and keys as a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmdock.cli.deploy import Timeout, Wait


def apply(
    file: Annotated[Path, typer.Option("--file", "-f", help="The llmdock.yaml to apply (`-` reads stdin).")],
    prune: Annotated[
        bool, typer.Option(help="Also remove deployments and keys the file does not name.")
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Show the changes; make none.")] = False,
    wait: Wait = True,
    timeout: Timeout = 3600.0,
) -> None:
    """Make deployments, policies and keys what FILE says: shows the changes (+ create, ~ change, - remove)
    and makes them. The whole file is checked first; an invalid entry changes nothing.

    Example: llmdock apply -f llmdock.yaml --prune
    """
    import sys

    from llmdock.apply import carry_out, current, diff, load
    from llmdock.cli.deploy import lifecycle, print_notes
    from llmdock.cli.render import err, out
    from llmdock.errors import NotFound
    from llmdock.gateway.keystore import KeyStore

    if str(file) == "-":
        text, source = sys.stdin.read(), "<stdin>"
    else:
        try:
            text, source = file.read_text(), str(file)
        except OSError as e:
            raise NotFound(f"cannot read {file}: {e.strerror}", "give the path of an llmdock.yaml") from None
    desired = load(text, source)
    lc = lifecycle()
    keystore = KeyStore(lc.store)
    now = current(lc, keystore)
    print_notes(now.notes)
    changes = diff(desired, now, lc.resolve, prune=prune)
    if not changes:
        out.print("nothing to change")
        return
    if dry_run:
        for c in changes:
            out.print(str(c))
        return
    secrets = carry_out(changes, desired, lc, keystore, wait=wait, timeout=timeout, say=out.print)
    for name, key in secrets.items():
        err.print(f"[bold]key {name}[/bold] (shown once, stored hashed): {key}")


def export(
    ctx: typer.Context,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Write today's deployments, policies and keys (names and limits, never secrets) as an llmdock.yaml;
    `export k8s` renders Kubernetes manifests instead."""
    if ctx.invoked_subcommand is not None:
        return
    import yaml

    from llmdock.apply import current, export
    from llmdock.cli.deploy import lifecycle, print_notes
    from llmdock.gateway.keystore import KeyStore

    lc = lifecycle()
    now = current(lc, KeyStore(lc.store))
    print_notes(now.notes)
    text = yaml.safe_dump(export(now), sort_keys=False, allow_unicode=True)
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text)
    except OSError as e:
        from llmdock.errors import LlmdockError

        raise LlmdockError(
            f"cannot write {output}: {e.strerror}", "give a path in a folder you can write"
        ) from None


def schema() -> None:
    """Print the JSON Schema of llmdock.yaml (point an editor's YAML language server at it)."""
    import json

    from llmdock.apply import schema as file_schema

    typer.echo(json.dumps(file_schema(), indent=2))


def register(app: typer.Typer) -> None:
    app.command("apply")(apply)
    from llmdock.cli.k8s import export_k8s

    export_app = typer.Typer(invoke_without_command=True, rich_markup_mode=None)
    export_app.callback()(export)
    export_app.command("k8s")(export_k8s)
    app.add_typer(export_app, name="export")
    app.command("schema")(schema)
