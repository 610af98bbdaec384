"""``llmdock config get|set|list``: site defaults in $LLMDOCK_HOME/config.toml."""

from __future__ import annotations

import typer

app = typer.Typer(help="Show and change site defaults (models dir, default images, port range, Docker host).")


@app.command("list")
def list_() -> None:
    """Every setting with its effective value and where it comes from."""
    from llmdock import settings
    from llmdock.cli.render import out

    s = settings.load()
    for key, meta in settings.KEYS.items():
        out.print(f"{key:<20} {s.get(key) or '(unset)':<40} [dim]{s.sources[key]}; env {meta.env}[/dim]")


@app.command("get")
def get(key: str) -> None:
    """Print the effective value of KEY."""
    from llmdock import settings

    s = settings.load()
    settings.validate(key, s.get(key) if key in settings.KEYS else "")
    typer.echo(s.get(key))


@app.command("set")
def set_(key: str, value: str) -> None:
    """Write KEY = VALUE into the config file (an LLMDOCK_* variable still overrides it)."""
    from llmdock import settings

    value = settings.validate(key, value)
    path = settings.config_path()
    values = settings.read_file(path)
    values[key] = value
    settings.write_file(path, values)
    typer.echo(f"{key} = {value}  ({path})")
    env = settings.KEYS[key].env
    import os

    if os.environ.get(env):
        typer.echo(f"note: {env} is set in the environment and overrides this value", err=True)
