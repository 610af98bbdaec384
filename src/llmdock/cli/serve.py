"""``serve`` (the gateway), ``keys`` (API keys) and ``usage`` (tokens per key and model)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from llmdock.gateway.keystore import KeyStore

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

keys_app = typer.Typer(
    help="API keys for the gateway: create (shown once), list, change quotas, revoke.", no_args_is_help=True
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
    replica_concurrency: Annotated[
        int,
        typer.Option(
            help="Requests one replica takes at once, unless its engine flags set --max-num-seqs "
            "(or SGLang's --max-running-requests); beyond it requests queue."
        ),
    ] = 1024,
    queue_length: Annotated[
        int, typer.Option(help="Requests queued per deployment beyond its bound (beyond: 429).")
    ] = 1024,
    queue_wait: Annotated[
        float, typer.Option(help="Seconds a queued request may wait for a slot (then 429).")
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
    for flag, value, least in (
        ("--replica-concurrency", replica_concurrency, 1),
        ("--queue-length", queue_length, 0),
    ):
        if value < least:
            raise InvalidSpec(f"{flag} {value} is too small", f"give a whole number such as {flag} 64")
    if not queue_wait >= 0:
        raise InvalidSpec(
            f"--queue-wait {queue_wait:g} is not a number of seconds", "write e.g. --queue-wait 30"
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
            replica_concurrency=replica_concurrency,
            queue_length=queue_length,
            queue_wait_s=queue_wait,
        ),
        supervisor=SupervisorConfig(
            interval_s=health_interval, hold_timeout_s=hold_timeout, queue_max=queue_max
        ),
    )
    run(s, options, Store(s.db_path))


def _limit(help_: str) -> Any:
    return typer.Option(metavar="N", min=1, help=help_)


TokensPerDay = Annotated[int | None, _limit("Tokens (prompt + completion) per UTC day.")]
TokensPerMonth = Annotated[int | None, _limit("Tokens per UTC calendar month.")]
Rpm = Annotated[int | None, _limit("Requests per minute (sliding 60 s).")]
Tpm = Annotated[int | None, _limit("Tokens per minute (sliding 60 s).")]
MaxConcurrent = Annotated[int | None, _limit("Requests in flight at once.")]


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A name for the key's owner (shown in usage).")],
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models it may use (default: all).")
    ] = None,
    tokens_per_day: TokensPerDay = None,
    tokens_per_month: TokensPerMonth = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    max_concurrent: MaxConcurrent = None,
    scope: Annotated[
        str,
        typer.Option(metavar="SCOPES", help="api (the /v1 API), metrics (/metrics only), or api,metrics."),
    ] = "api",
    admin: Annotated[bool, typer.Option(help="May use the admin API (and /v1 and /metrics).")] = False,
    json_out: Json = False,
) -> None:
    """Create a key and print it once (only its hash is stored). Limits left out are unlimited.

    Example: llmdock keys create team --models qwen --tokens-per-day 2000000 --rpm 60 --max-concurrent 8
    """
    from llmdock.cli.render import err, print_json
    from llmdock.gateway.quotas import Quota

    allowed = tuple(m.strip() for m in (models or "").split(",") if m.strip())
    quota = Quota(tokens_per_day, tokens_per_month, rpm, tpm, max_concurrent)
    scopes = tuple(x.strip() for x in scope.split(",") if x.strip())
    key = keystore().create(name, models=allowed, quota=quota, admin=admin, scopes=scopes)
    if json_out:
        print_json({"name": name, "key": key})
        return
    typer.echo(key)
    err.print(f"[dim]key {name!r} created; it is shown only now, store it safely[/dim]")


def _change(text: str | None, flag: str) -> int | None:
    from llmdock.errors import InvalidSpec

    assert text is not None
    if text.strip().lower() in ("off", "none"):
        return None
    if not text.strip().isdigit() or int(text) < 1:
        raise InvalidSpec(
            f"{flag} {text!r} is not a limit", f"give a whole number ({flag} 60), or {flag} off"
        )
    return int(text)


@keys_app.command("quota")
def keys_quota(
    name: Annotated[str, typer.Argument(help="The key's name (see `keys ls`).")],
    tokens_per_day: Annotated[str | None, typer.Option(metavar="N|off", help="Tokens per UTC day.")] = None,
    tokens_per_month: Annotated[
        str | None, typer.Option(metavar="N|off", help="Tokens per UTC month.")
    ] = None,
    rpm: Annotated[str | None, typer.Option(metavar="N|off", help="Requests per minute.")] = None,
    tpm: Annotated[str | None, typer.Option(metavar="N|off", help="Tokens per minute.")] = None,
    max_concurrent: Annotated[
        str | None, typer.Option(metavar="N|off", help="Requests in flight at once.")
    ] = None,
    json_out: Json = False,
) -> None:
    """Change a key's limits in place (its secret stays); `off` removes one, those not given stay.
    A running gateway applies the change within seconds; what the key used so far still counts.

    Example: llmdock keys quota team --rpm 120 --tokens-per-day off
    """
    from llmdock.cli.render import err, print_json
    from llmdock.errors import InvalidSpec

    given = {
        "tokens_per_day": tokens_per_day,
        "tokens_per_month": tokens_per_month,
        "rpm": rpm,
        "tpm": tpm,
        "max_concurrent": max_concurrent,
    }
    changes = {n: _change(v, "--" + n.replace("_", "-")) for n, v in given.items() if v is not None}
    if not changes:
        raise InvalidSpec(
            "no limit given", "name one or more, e.g. `llmdock keys quota NAME --rpm 60 --tpm off`"
        )
    info = keystore().set_quota(name, changes)
    if json_out:
        print_json(info.as_dict())
        return
    limits = ", ".join(f"{n}={v}" for n, v in info.quota.as_dict().items() if v is not None)
    err.print(f"key {name!r}: {limits or 'no limits'}")


@keys_app.command("ls")
def keys_ls(json_out: Json = False) -> None:
    """List keys: scope, limits and what each used (tokens today and this month, UTC); never the keys."""
    from rich.table import Table

    from llmdock.cli.render import out, print_json

    ks = keystore()
    keys = ks.list_keys()
    totals = ks.token_totals(time.time())
    if json_out:
        print_json(
            [
                {
                    **k.as_dict(),
                    "tokens_today": totals.get(k.name, (0, 0))[0],
                    "tokens_this_month": totals.get(k.name, (0, 0))[1],
                }
                for k in keys
            ]
        )
        return
    table = Table(box=None, header_style="bold")
    for col in (
        "NAME",
        "PREFIX",
        "MODELS",
        "SCOPE",
        "TOKENS TODAY",
        "THIS MONTH",
        "RPM",
        "TPM",
        "AT ONCE",
        "CREATED",
    ):
        table.add_column(col)
    for k in keys:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created_at))
        today, month = totals.get(k.name, (0, 0))
        q = k.quota
        table.add_row(
            k.name,
            k.prefix + "…",
            (",".join(k.models) or "all") if k.admin or "api" in k.scopes else "-",
            "admin" if k.admin else ",".join(k.scopes),
            _used(today, q.tokens_per_day),
            _used(month, q.tokens_per_month),
            str(q.rpm or "-"),
            str(q.tpm or "-"),
            str(q.max_concurrent or "-"),
            created,
        )
    out.print(
        table
        if keys
        else "no keys (the gateway is open on loopback); create one with `llmdock keys create NAME`"
    )


def _used(used: int, limit: int | None) -> str:
    return f"{used:,}/{limit:,}" if limit is not None else f"{used:,}"


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
