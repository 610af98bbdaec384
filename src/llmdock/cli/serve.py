"""``serve`` (the gateway), ``keys`` (API keys) and ``usage`` (tokens per key and model)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from llmdock.gateway.keystore import KeyStore

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

keys_app = typer.Typer(
    help="API keys for the gateway: create (shown once), list, revoke.", no_args_is_help=True
)


def keystore() -> KeyStore:
    from llmdock import settings
    from llmdock.gateway.keystore import KeyStore
    from llmdock.state import Store

    return KeyStore(Store(settings.load().db_path))


def serve(
    host: Annotated[
        str, typer.Option(help="Address to bind; beyond loopback a key must exist.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    insecure: Annotated[
        bool, typer.Option(help="Allow binding beyond loopback with no API key configured.")
    ] = False,
    route: Annotated[
        list[str] | None,
        typer.Option(
            "--route",
            metavar="MODEL=URL",
            help="MODEL=URL (repeatable): also serve an OpenAI-compatible server not run by llmdock.",
        ),
    ] = None,
    docker: Annotated[bool, typer.Option("--docker/--no-docker", help="Serve llmdock's deployments.")] = True,
    body_limit_mb: Annotated[float, typer.Option(help="Largest request body, in MiB (else 413).")] = 32.0,
    upstream_timeout: Annotated[
        float, typer.Option(help="Seconds an engine may stay silent (before answering, between chunks).")
    ] = 600.0,
    hold_timeout: Annotated[
        float, typer.Option(help="Seconds a request waits for an on-demand deployment to start.")
    ] = 600.0,
    queue_max: Annotated[int, typer.Option(help="Requests held per deployment while it starts.")] = 256,
    health_interval: Annotated[
        float,
        typer.Option(help="How often, in seconds, deployments are listed and replicas probed."),
    ] = 1.0,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a client has to send a request's line and headers (else 408).")
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(help="Seconds a client has to send a request's body after its headers (else 408)."),
    ] = 60.0,
    send_timeout: Annotated[
        float, typer.Option(help="Seconds a client may read nothing of an answer before it is cut off.")
    ] = 60.0,
    idle_timeout: Annotated[
        float, typer.Option(help="Seconds a keep-alive connection may wait for its next request.")
    ] = 75.0,
    max_connections: Annotated[int, typer.Option(help="Open connections in all (beyond: 503).")] = 10_000,
    max_connections_per_ip: Annotated[
        int, typer.Option(help="Open connections per client address (beyond: 429).")
    ] = 1_000,
    drain: Annotated[
        float, typer.Option(help="On SIGTERM, seconds live streams may go on before they are ended.")
    ] = 30.0,
) -> None:
    """Serve every deployment behind one OpenAI-compatible endpoint, with keys, usage and metrics.

    Example: llmdock serve --port 8000   then   OPENAI_BASE_URL=http://127.0.0.1:8000/v1

    Every limit is listed, with its default, in llmdock.gateway.limits.
    """
    from llmdock import settings
    from llmdock.errors import InvalidSpec
    from llmdock.gateway.app import ServeOptions, run
    from llmdock.gateway.limits import Limits
    from llmdock.gateway.proxy import ProxyConfig
    from llmdock.gateway.routing import parse_base
    from llmdock.gateway.supervisor import SupervisorConfig
    from llmdock.state import Store

    routes = []
    for item in route or []:
        model, sep, url = item.partition("=")
        try:
            parse_base(url)
        except ValueError:
            sep = ""
        if not sep or not model:
            raise InvalidSpec(
                f"--route {item!r} is not MODEL=URL", "write it like --route qwen=http://10.0.0.5:8001"
            )
        routes.append((model, url))
    if not health_interval > 0:  # also refuses nan
        raise InvalidSpec(
            f"--health-interval {health_interval:g} is not a positive number of seconds",
            "write it like --health-interval 1 (or 0.5 for faster failover)",
        )
    s = settings.load()
    options = ServeOptions(
        host=host,
        port=port,
        insecure=insecure,
        docker=docker,
        routes=tuple(routes),
        proxy=ProxyConfig(upstream_timeout=upstream_timeout),
        limits=Limits(
            header_timeout_s=header_timeout,
            body_timeout_s=body_timeout,
            send_timeout_s=send_timeout,
            idle_timeout_s=idle_timeout,
            max_connections=max_connections,
            max_connections_per_ip=max_connections_per_ip,
            body_bytes=int(body_limit_mb * 1024 * 1024),
            drain_s=drain,
        ),
        supervisor=SupervisorConfig(
            interval_s=health_interval, hold_timeout_s=hold_timeout, queue_max=queue_max
        ),
    )
    run(s, options, Store(s.db_path))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A name for the key's owner (shown in usage).")],
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models it may use (default: all).")
    ] = None,
    rpm: Annotated[
        int | None, typer.Option(help="Requests per minute it may make (default: no limit).")
    ] = None,
    admin: Annotated[bool, typer.Option(help="May use the admin API.")] = False,
    json_out: Json = False,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from llmdock.cli.render import err, print_json

    allowed = tuple(m.strip() for m in (models or "").split(",") if m.strip())
    key = keystore().create(name, models=allowed, rpm=rpm, admin=admin)
    if json_out:
        print_json({"name": name, "key": key})
        return
    typer.echo(key)
    err.print(f"[dim]key {name!r} created; it is shown only now, store it safely[/dim]")


@keys_app.command("ls")
def keys_ls(json_out: Json = False) -> None:
    """List keys (names, prefixes, limits; never the keys)."""
    from rich.table import Table

    from llmdock.cli.render import out, print_json

    keys = keystore().list_keys()
    if json_out:
        print_json([vars(k) for k in keys])
        return
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "PREFIX", "MODELS", "RPM", "ADMIN", "CREATED"):
        table.add_column(col)
    for k in keys:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created_at))
        table.add_row(
            k.name,
            k.prefix + "…",
            ",".join(k.models) or "all",
            str(k.rpm or "-"),
            "yes" if k.admin else "",
            created,
        )
    out.print(
        table
        if keys
        else "no keys (the gateway is open on loopback); create one with `llmdock keys create NAME`"
    )


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name (see `keys ls`).")]) -> None:
    """Revoke a key; a running gateway refuses it within seconds."""
    keystore().revoke(name)
    typer.echo(f"revoked {name}")


def usage(
    since: Annotated[
        str | None,
        typer.Option(help="Only usage in the last DURATION (90s, 15m, 2h, 7d) or since a date (2025-01-31)."),
    ] = None,
    json_out: Json = False,
) -> None:
    """Requests and tokens per key and model, as recorded by the gateway."""
    from rich.table import Table

    from llmdock.cli.render import out, print_json

    rows = keystore().usage(parse_since(since) if since else 0.0)
    if json_out:
        print_json([{"key": k, "model": m, **vars(u)} for k, m, u in rows])
        return
    table = Table(box=None, header_style="bold")
    for col in ("KEY", "MODEL", "REQUESTS", "ERRORS", "PROMPT", "COMPLETION"):
        table.add_column(col, justify="right" if col.isupper() and col not in ("KEY", "MODEL") else "left")
    for k, m, u in rows:
        table.add_row(k, m, str(u.requests), str(u.errors), str(u.prompt_tokens), str(u.completion_tokens))
    out.print(table if rows else "no usage recorded yet")


def parse_since(text: str) -> float:
    """``2h`` -> now minus two hours; ``2025-01-31`` or ``2025-01-31T08:00`` -> that local time."""
    from datetime import datetime

    from llmdock.errors import InvalidSpec
    from llmdock.gateway.keystore import parse_duration

    if text[:4].isdigit() and "-" in text:
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            raise InvalidSpec(
                f"--since {text!r} is not a date", "write 2025-01-31 or 2025-01-31T08:00"
            ) from None
    return time.time() - parse_duration(text)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.add_typer(keys_app, name="keys")
    app.command()(usage)
