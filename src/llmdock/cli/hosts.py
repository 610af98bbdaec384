"""``hosts add | ls | rm``: Docker hosts beyond this one, reached over SSH (:mod:`llmdock.hosts`)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from llmdock.hosts.facts import HostFacts
    from llmdock.lifecycle import Lifecycle

app = typer.Typer(
    help="Docker hosts llmdock deploys to besides this one (`local`), reached over SSH.",
    no_args_is_help=True,
)
HostName = Annotated[str, typer.Argument(help="The host's name in llmdock (e.g. gpu1).", metavar="NAME")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
GiB = 1 << 30


@app.command("add")
def add(
    name: HostName,
    url: Annotated[str, typer.Argument(help="ssh://USER@HOST or ssh://USER@HOST:PORT.", metavar="URL")],
    identity: Annotated[
        str | None, typer.Option("--identity", "-i", metavar="FILE", help="Private key ssh logs in with.")
    ] = None,
    docker_socket: Annotated[
        str, typer.Option(metavar="PATH", help="Docker's socket on that host.")
    ] = "/var/run/docker.sock",
    models_dir: Annotated[
        str | None, typer.Option(metavar="PATH", help="Where weights live there (default: as on this host).")
    ] = None,
    probe_image: Annotated[
        str | None,
        typer.Option(
            metavar="IMAGE",
            help="Image that reads GPUs and disk there (default: the vLLM image, image.vllm).",
        ),
    ] = None,
) -> None:
    """Add a host: connect over SSH once, check its Docker, and trust and record its host key.

    Example: llmdock hosts add gpu1 ssh://ops@10.0.0.7 --identity ~/.ssh/id_ed25519
    """
    from llmdock import settings
    from llmdock.cli.render import out
    from llmdock.errors import Conflict
    from llmdock.hosts import Host
    from llmdock.hosts.registry import registry
    from llmdock.hosts.remote import RemoteRuntime
    from llmdock.hosts.ssh import fingerprints

    host = Host.create(
        name,
        url,
        identity=identity,
        docker_socket=docker_socket,
        models_dir=models_dir or "",
        probe_image=probe_image or "",
    )
    s = settings.load()
    reg = registry(s)
    if any(h.name == name for h in reg.list()):
        raise Conflict(
            f"a host named {name!r} exists",
            f"remove it first (`llmdock hosts rm {name}`) or pick another name",
        )
    folder = reg.known_hosts(name).parent
    shutil.rmtree(folder, ignore_errors=True)  # left by an add that was interrupted
    folder.mkdir(mode=0o700, parents=True)
    known = reg.known_hosts(name)
    known.touch(mode=0o600)
    rt = RemoteRuntime(host, known, first=True)
    try:
        version = rt.version()
        gpu_runtime = rt.has_gpu_runtime()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        rt.close()
    prints = fingerprints(known)
    reg.add(Host(**{**vars(host), "fingerprint": ", ".join(prints)}))
    out.print(
        f"added {name} ({host.url}): Docker {version}, "
        + ("NVIDIA runtime present" if gpu_runtime else "no NVIDIA runtime (CPU deployments only)")
    )
    for fp in prints:
        out.print(
            f"  host key {fp} trusted and recorded; later connections must present it "
            f"(compare: `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on {host.address})"
        )


def local_facts(lc: Lifecycle) -> HostFacts | Exception:
    """This host's facts, as ``hosts ls`` shows them for remote ones."""
    import time

    from llmdock import hostinfo
    from llmdock.errors import RuntimeUnavailable
    from llmdock.hosts.facts import HostFacts
    from llmdock.lifecycle import detect_gpus
    from llmdock.runtimes.docker import DockerRuntime

    try:
        rt = lc.runtimes.named("docker")
    except RuntimeUnavailable as e:
        return e
    version = ""
    if isinstance(rt, DockerRuntime):
        version = str(rt.client.version().get("Version", ""))
    where = Path(lc.settings.models_dir)
    while not where.exists() and where != where.parent:
        where = where.parent
    disk = shutil.disk_usage(where)
    total, available = hostinfo.memory()
    return HostFacts(
        docker_version=version,
        gpu_runtime=rt.has_gpu_runtime(),
        gpus=detect_gpus(),
        memory_total_bytes=total,
        memory_available_bytes=available,
        disk_free_bytes=disk.free,
        disk_total_bytes=disk.total,
        read_at=time.time(),
    )


def _gpus(r: dict[str, Any]) -> tuple[str, str]:
    """``2× NVIDIA H100 80GB HBM3`` and ``0: 1.0/79.6, 1: 79.2/79.6 GiB`` for a row of ``hosts ls``."""
    if not r["gpus"]:
        return "-", "-"
    names: dict[str, int] = {}
    for g in r["gpus"]:
        names[g["name"]] = names.get(g["name"], 0) + 1
    free = ", ".join(
        f"{g['index']}: {g['free_bytes'] / GiB:.1f}/{g['total_bytes'] / GiB:.1f}" for g in r["gpus"]
    )
    return ", ".join(f"{n}× {name}" for name, n in names.items()), free + " GiB"


def row(name: str, url: str, facts: HostFacts | Exception, models_dir: str) -> dict[str, Any]:
    """One host of ``hosts ls --json``."""
    from llmdock.errors import LlmdockError

    if isinstance(facts, Exception):
        reason = facts.message if isinstance(facts, LlmdockError) else str(facts)
        return {"name": name, "url": url, "reachable": False, "error": reason}
    return {
        "name": name,
        "url": url,
        "reachable": True,
        "docker_version": facts.docker_version,
        "nvidia_runtime": facts.gpu_runtime,
        "gpus": [
            {"index": g.index, "name": g.name, "total_bytes": g.total_bytes, "free_bytes": g.free_bytes}
            for g in facts.gpus
        ],
        "models_dir": models_dir,
        "disk_free_bytes": facts.disk_free_bytes,
        "disk_total_bytes": facts.disk_total_bytes,
        "memory_available_bytes": facts.memory_available_bytes,
        "notes": list(facts.notes),
    }


@app.command("ls")
def ls(json_out: Json = False) -> None:
    """List hosts: reachable?, Docker version, NVIDIA runtime, GPUs and their free memory, free disk
    of the models dir there. Hosts are asked at once; an unreachable one costs a few seconds at most."""
    from rich.markup import escape
    from rich.table import Table

    from llmdock.cli.deploy import lifecycle
    from llmdock.cli.render import err, out, print_json

    lc = lifecycle()
    hosts = lc.hosts.list()
    found = lc.prefetch_facts([h.name for h in hosts])
    rows = [row("local", "-", local_facts(lc), str(lc.settings.models_dir))]
    rows += [row(h.name, h.url, found[h.name], h.models_dir or str(lc.settings.models_dir)) for h in hosts]
    if json_out:
        print_json(rows)
        return
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "URL", "STATE", "DOCKER", "NVIDIA", "GPUS", "GPU FREE/TOTAL", "MODELS DISK FREE"):
        table.add_column(col, overflow="fold")
    for r in rows:
        if not r["reachable"]:
            table.add_row(r["name"], r["url"], "[red]unreachable[/red]", "-", "-", "-", "-", "-")
            continue
        kinds, free = _gpus(r)
        disk = (
            f"{r['disk_free_bytes'] / GiB:.1f} GiB of {r['models_dir']}"
            if r["disk_free_bytes"] is not None
            else f"unknown ({r['models_dir']})"
        )
        nvidia = "yes" if r["nvidia_runtime"] else "no"
        table.add_row(r["name"], r["url"], "ok", r["docker_version"] or "-", nvidia, kinds, free, disk)
    out.print(table)
    for r in rows:
        if not r["reachable"]:
            err.print(f"[red]{escape(r['name'])}:[/red] {escape(r['error'])}")


@app.command("rm")
def rm(
    name: HostName,
    force: Annotated[
        bool,
        typer.Option("--force", "-f", help="Forget the host even while it cannot be asked what runs there."),
    ] = False,
) -> None:
    """Forget a host (its containers are not touched). Refused while llmdock deployments are there."""
    from llmdock.cli.deploy import lifecycle
    from llmdock.errors import Conflict, RuntimeUnavailable
    from llmdock.hosts import check_name, member_key

    if name == "local":
        from llmdock.errors import InvalidSpec

        raise InvalidSpec(
            "`local` is this host: it is always there", "remove another host (`llmdock hosts ls`)"
        )
    check_name(name)
    lc = lifecycle()
    host = lc.hosts.get(name)
    try:
        there = [d.name for d in lc.runtimes.named(member_key("docker", name)).deployments()]
    except RuntimeUnavailable as e:
        if not force:
            raise RuntimeUnavailable(
                f"cannot ask {name} what runs there: {e.message}",
                f"bring it back and try again, or forget it anyway with `llmdock hosts rm -f {name}` "
                "(deployments there keep running, unmanaged)",
            ) from e
        there = []
    if there:
        shown = ", ".join(there)
        raise Conflict(
            f"host {name} still has deployments: {shown}",
            f"remove them first (`llmdock rm -f {there[0]}`{' …' if len(there) > 1 else ''}), then `llmdock hosts rm {name}`",
        )
    lc.hosts.remove(host.name)
    typer.echo(f"removed host {name}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="hosts")
