"""``llmdock export k8s NAME | -f llmdock.yaml [-o DIR]``: Kubernetes manifests of deployments."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from llmdock.k8s.export import DEFAULT_NODE_GPUS

if TYPE_CHECKING:
    from llmdock.spec import DeploymentSpec


def export_k8s(
    name: Annotated[
        str | None,
        typer.Argument(
            metavar="NAME", help="A deployment of this host (`llmdock ps`), or one entry of --file."
        ),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", metavar="FILE", help="An llmdock.yaml: every deployment in it."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", metavar="DIR", help="Write DIR/NAME.yaml per deployment (else stdout)."
        ),
    ] = None,
    nodes: Annotated[
        int,
        typer.Option(
            metavar="N", help="Nodes per copy: 2 or more is vLLM over Ray in a LeaderWorkerSet (TP x PP)."
        ),
    ] = 1,
    node_gpus: Annotated[
        str,
        typer.Option(metavar="COUNTxSIZE", help="The GPUs of one node, as --assume-gpus: 8x80GiB, 8xH100."),
    ] = DEFAULT_NODE_GPUS,
    storage: Annotated[
        str | None,
        typer.Option(metavar="SIZE", help="Size of the models claim (default: 1.2 x the weights)."),
    ] = None,
    storage_class: Annotated[
        str | None, typer.Option(metavar="CLASS", help="StorageClass of the models claim.")
    ] = None,
    source: Annotated[
        str, typer.Option(metavar="HUB", help="Hub of an ORG/NAME model: modelscope | huggingface.")
    ] = "modelscope",
) -> None:
    """Render Kubernetes manifests from the spec and plan `up` uses: a PersistentVolumeClaim for the
    models, a Deployment (a LeaderWorkerSet with --nodes 2+) and a ClusterIP Service. Notes go to stderr.

    Example: llmdock export k8s -f llmdock.yaml -o k8s/ && kubectl apply -f k8s/
    """
    from llmdock import settings
    from llmdock.cli.deploy import print_notes
    from llmdock.errors import InvalidSpec, LlmdockError
    from llmdock.gpuinfo import parse_assume_gpus
    from llmdock.k8s.export import Options, check_storage, render_specs, write
    from llmdock.k8s.render import dump
    from llmdock.weights import PullOptions

    try:
        gpus = parse_assume_gpus(node_gpus)
    except LlmdockError as e:
        raise InvalidSpec(e.message.replace("--assume-gpus", "--node-gpus"), e.hint) from None
    specs = _specs(name, file)
    s = settings.load()
    rendered = render_specs(
        specs,
        s,
        PullOptions(pull=True, source=source),
        Options(node_gpus=gpus, nodes=nodes, storage=check_storage(storage), storage_class=storage_class),
    )
    for r in rendered:
        print_notes([f"{r.name}: {note}" for note in r.notes])
    if output is None:
        typer.echo(dump([doc for r in rendered for doc in r.docs]), nl=False)
        return
    for path in write(rendered, output):
        typer.echo(str(path))


def _specs(name: str | None, file: Path | None) -> list[DeploymentSpec]:
    from llmdock.errors import InvalidSpec, NotFound

    if file is not None:
        from llmdock.apply import load

        try:
            text = file.read_text()
        except OSError as e:
            raise NotFound(f"cannot read {file}: {e.strerror}", "give the path of an llmdock.yaml") from None
        desired = load(text, str(file))
        if name is None:
            if not desired.specs:
                raise InvalidSpec(f"{file} names no deployment", "add one under `deployments:`")
            return list(desired.specs.values())
        if name not in desired.specs:
            raise NotFound(
                f"{file} has no deployment {name!r}",
                f"give one of: {', '.join(desired.specs) or '(none)'}, or leave NAME out for all",
            )
        return [desired.specs[name]]
    if name is None:
        raise InvalidSpec("give a deployment NAME or -f llmdock.yaml", "e.g. llmdock export k8s qwen -o k8s/")
    return [_deployed(name)]


def _deployed(name: str) -> DeploymentSpec:
    """The spec of deployment ``name`` as its labels record it (or the state DB, Docker being away)."""
    from llmdock.cli.deploy import lifecycle, print_notes
    from llmdock.errors import NotFound
    from llmdock.spec import DeploymentSpec

    lc = lifecycle()
    found = next((d.spec for d in lc.ps() if (d.group or d.name) == name and d.spec), None)
    if found is None:
        saved = lc.store.deployment(name)
        found = saved["spec"] if saved else None
    if found is None:
        print_notes(lc.notes)
        raise NotFound(
            f"no deployment named {name!r}",
            "see `llmdock ps`, or render a file: llmdock export k8s -f llmdock.yaml",
        )
    return DeploymentSpec.from_dict({**found, "name": name, "group": None})
