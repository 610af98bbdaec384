"""``llmdock bundle`` and ``llmdock load``: a model, its engine image and llmdock for an offline host.

Registration (in cli/main.py)::

    from llmdock.cli import bundle as bundle_cmd
    bundle_cmd.register(app)

Messages go to stderr: with ``-o -`` stdout carries the bundle itself.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from llmdock.cli.models import ModelsDir, _emit, _store
from llmdock.errors import ImageMissing, InvalidSpec, LlmdockError

if TYPE_CHECKING:
    from llmdock.bundle.images import Images


def register(app: typer.Typer) -> None:
    app.command("bundle")(bundle)
    app.command("load")(load)


def bundle(
    model: Annotated[
        str, typer.Argument(metavar="MODEL", help="A model in the store: ORG/NAME, or source:ORG/NAME@REV.")
    ],
    output: Annotated[
        str, typer.Option("-o", "--output", metavar="FILE", help="Where to write the bundle; '-' for stdout.")
    ],
    image: Annotated[
        str | None, typer.Option(metavar="IMAGE", help="Engine image to include (default: the engine's).")
    ] = None,
    engine: Annotated[
        str, typer.Option(metavar="ENGINE", help="Whose default image to include when --image is not given.")
    ] = "vllm",
    no_image: Annotated[bool, typer.Option("--no-image", help="Weights and llmdock only.")] = False,
    wheel: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="llmdock wheel to include (default: built from this llmdock)."),
    ] = None,
    models_dir: ModelsDir = None,
) -> None:
    """Write MODEL, an engine image (docker save) and llmdock's wheel into one file for an offline host.

    Example: llmdock bundle Qwen/Qwen2.5-7B-Instruct --image vllm/vllm-openai:v0.34.0 -o - | ssh gpu1 llmdock load -
    """
    import tempfile

    from llmdock import settings
    from llmdock.bundle.wheel import llmdock_wheel
    from llmdock.bundle.write import write_bundle
    from llmdock.cli.render import err

    if output == "-" and sys.stdout.isatty():
        raise InvalidSpec(
            "refusing to write a bundle to the terminal",
            "redirect stdout (`-o - > FILE`, `| ssh …`) or give -o FILE",
        )
    store = _store(models_dir)
    store.find(model)  # what can be refused is refused before a wheel is built or a file created
    name = None if no_image else image or settings.load().image(engine)
    images = _docker_images() if name else None
    if images is not None and name is not None:
        try:
            images.inspect(name)
        except ImageMissing as e:
            e.hint += "; or bundle without an image: --no-image"
            raise
    with tempfile.TemporaryDirectory(prefix="llmdock-wheel-") as tmp:
        try:
            with _output(output) as out:
                whl, how = llmdock_wheel(Path(tmp), wheel)
                err.print(f"llmdock wheel: {whl.name} ({how})")
                with _shown() as say:
                    head = write_bundle(store, model, out, wheel=whl, image=name, images=images, progress=say)
        except BrokenPipeError:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, sys.stdout.fileno())  # the interpreter's last flush of stdout must not fail too
            raise LlmdockError(
                "the command reading the bundle from stdout went away before the end",
                "check the other side of the pipe (e.g. what `ssh HOST llmdock load -` said), then run the pipe "
                "again; to resume a long transfer instead, write to a file (-o FILE), copy it, and load that",
            ) from None
    where = "stdout" if output == "-" else output
    image_text = f", image {head.image.name} ({head.image.id[:19]})" if head.image else ""
    err.print(f"wrote {where}: model {head.model.key}{image_text}, llmdock {head.llmdock_version}")
    err.print(
        f"digest {head.digest} (check it on the other side: `llmdock load FILE --expect {head.digest}`)"
    )


def load(
    source: Annotated[
        str, typer.Argument(metavar="FILE", help="A bundle from `llmdock bundle`; '-' for stdin.")
    ],
    models_dir: ModelsDir = None,
    no_image: Annotated[
        bool,
        typer.Option("--no-image", help="Leave the image out (a host without Docker: the local runtime)."),
    ] = False,
    expect: Annotated[
        str | None,
        typer.Option(
            metavar="DIGEST", help="Refuse the bundle unless its digest (printed by `bundle`) is this."
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Progress and the result as JSON lines.")] = False,
) -> None:
    """Verify a bundle, then load its image and register its model; resumes a partial copy.

    Example: llmdock load /mnt/usb/qwen2.5-7b.llmdock
    """
    from llmdock import settings
    from llmdock.bundle.load import load_bundle

    # TODO(hosts): `load --host NAME` once fleet hosts exist (ssh to the host, run `llmdock load -` there)
    store = _store(models_dir)
    with _input(source) as (stream, seekable), _shown(json_out) as say:
        done = load_bundle(
            store,
            stream,
            seekable=seekable,
            wheels_dir=settings.load().home / "wheels",
            images=None if no_image else _docker_images,
            expect=expect,
            progress=say,
        )
    if json_out:
        _emit(
            {
                "event": "result",
                "model": done.model.key,
                "path": str(done.model.path),
                "image": done.image.name if done.image else None,
                "image_loaded": done.image_loaded,
                "wheel": str(done.wheel),
                "kept": done.kept,
                "received": done.received,
            }
        )
        return
    image = (
        f"; image {done.image.name} {'loaded' if done.image_loaded else 'already here'}" if done.image else ""
    )
    typer.echo(f"{done.model.key}: verified and registered in {done.model.path}{image}")
    typer.echo(f"llmdock wheel kept at {done.wheel} (`pip install --no-deps {done.wheel}` to upgrade)")


def _docker_images() -> Images:
    from llmdock.bundle.images import DockerImages
    from llmdock.runtimes.docker import connect

    return DockerImages(connect())


@contextlib.contextmanager
def _output(target: str) -> Iterator[IO[bytes]]:
    """stdout, or ``FILE.part`` renamed to FILE once the bundle is complete (a failed one leaves none)."""
    if target == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    path = Path(target).expanduser()
    part = path.with_name(path.name + ".part")
    try:
        f = part.open("wb")
    except OSError as e:
        raise InvalidSpec(f"cannot write {path}: {e.strerror}", "choose a writable -o FILE") from None
    try:
        with f:
            yield f
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(path)


@contextlib.contextmanager
def _input(source: str) -> Iterator[tuple[IO[bytes], bool]]:
    if source == "-":
        yield sys.stdin.buffer, False
        return
    path = Path(source).expanduser()
    try:
        f = path.open("rb")
    except OSError as e:
        from llmdock.errors import NotFound

        raise NotFound(
            f"cannot read bundle {path}: {e.strerror}", "give the file `llmdock bundle` wrote"
        ) from None
    with f:
        yield f, True


@contextlib.contextmanager
def _shown(json_out: bool = False) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Progress: JSON lines on stdout; one bar on a terminal (stderr); else a line per member."""
    from llmdock.cli.render import err

    if json_out:
        yield _emit
        return
    if not err.is_terminal:
        yield _say
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task("bundle", total=None)

    def on(event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind in ("bundle_start", "load_start"):
            verb = "bundle" if kind == "bundle_start" else "load"
            bar.update(task, total=event["total_bytes"], description=f"{verb} {event['model']}")
        elif kind in ("bundle_member", "member"):
            bar.advance(task, event["size"])
        elif kind == "image_load":
            err.print(f"image {event['image']}: {event['action']}")

    with bar:
        yield on


def _say(event: dict[str, Any]) -> None:
    from llmdock.cli.render import err
    from llmdock.models.disk import human

    kind = event["event"]
    if kind == "bundle_member":
        err.print(f"  + {event['path']} ({human(event['size'])})")
    elif kind == "load_start":
        kept = f", {event['kept']} verified earlier" if event["kept"] else ""
        err.print(f"loading {event['model']}: {event['members']} members{kept}")
    elif kind == "member":
        err.print(f"  {event['action']:>8} {event['path']} ({human(event['size'])})")
    elif kind == "image_load":
        err.print(f"image {event['image']}: {event['action']}")
