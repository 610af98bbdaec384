"""``llmdock pull`` and ``llmdock models ls|rm|verify|import``: the weights on this host.

Registration (in cli/main.py)::

    from llmdock.cli import models as models_cmd
    app.command("pull")(models_cmd.pull_command)
    app.add_typer(models_cmd.app, name="models")
    models_cmd.set_used_by(fn)   # fn(model_dir: Path) -> list of deployment names using it

Heavy imports (the hub SDKs, rich.progress) happen inside the commands, so ``llmdock --help`` stays fast.
Runnable on its own as ``python -m llmdock.cli.models pull MODEL`` (what the tests kill with SIGKILL).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llmdock.errors import IntegrityError

if TYPE_CHECKING:
    from llmdock.models.store import ModelStore, UsedBy

app = typer.Typer(
    help="Weights on this host: list, verify, import and remove models (fetch them with `pull`)."
)

_used_by: UsedBy | None = None


def set_used_by(fn: UsedBy | None) -> None:
    """Tell ``ls`` and ``rm`` which deployments use a model directory (the core passes its lookup)."""
    global _used_by
    _used_by = fn


def _store(models_dir: Path | None) -> ModelStore:
    from llmdock.models.store import ModelStore

    return ModelStore(models_dir) if models_dir is not None else ModelStore.default()


ModelsDir = Annotated[
    Path | None,
    typer.Option("--models-dir", help="Where weights live (default: LLMDOCK_MODELS_DIR / config)."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON lines for progress).")]


def pull_command(
    model: Annotated[str, typer.Argument(help="Hub model ID, ORG/NAME or ORG/NAME@REVISION.")],
    source: Annotated[
        str, typer.Option(help="modelscope (default), huggingface, or auto (ModelScope, then Hugging Face).")
    ] = "modelscope",
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit (default: the hub's).")] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(
            metavar="GLOB", help="Only files matching this glob (repeatable), e.g. '*.safetensors'."
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(metavar="GLOB", help="Skip files matching this glob (repeatable).")
    ] = None,
    models_dir: ModelsDir = None,
    allow_system_disk: Annotated[
        bool, typer.Option(help="Allow a big model on the root filesystem (refused by default).")
    ] = False,
    token: Annotated[
        str | None, typer.Option(help="Hub token (default: MODELSCOPE_API_TOKEN / HF_TOKEN). Never printed.")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Download a model's weights, verified and resumable, into the models dir.

    Example: llmdock pull Qwen/Qwen2.5-VL-72B-Instruct --models-dir /data/models
    """
    if source not in ("modelscope", "huggingface", "auto"):
        from llmdock.errors import InvalidSpec

        raise InvalidSpec(f"unknown --source {source!r}", "use modelscope, huggingface or auto")
    store = _store(models_dir)
    try:
        with _progress(json_out) as progress:
            model_ = store.pull(
                model,
                source=source,
                revision=revision,
                include=include or (),
                exclude=exclude or (),
                allow_system_disk=allow_system_disk,
                token=token,
                progress=progress,
            )
    except KeyboardInterrupt:
        from llmdock.cli.render import err

        err.print(f"interrupted: what was fetched is kept; `llmdock pull {model}` again resumes from there")
        raise typer.Exit(130) from None
    if json_out:
        _emit({"event": "result", **model_.as_dict()})
    else:
        typer.echo(f"{model_.key}: {model_.total_bytes / 2**30:.2f} GiB verified in {model_.path}")


@app.command("ls")
def ls(models_dir: ModelsDir = None, json_out: JsonFlag = False) -> None:
    """Models in the store: name, source, revision, size, verified, which deployments use them."""
    models = _store(models_dir).list(used_by=_used_by)
    if json_out:
        sys.stdout.write(json.dumps([m.as_dict() for m in models], indent=2) + "\n")
        return
    from rich.table import Table

    from llmdock.cli.render import out

    table = Table(box=None, header_style="bold")
    for col in ("NAME", "SOURCE", "REVISION", "SIZE", "STATUS", "USED BY", "PATH"):
        table.add_column(col)
    for m in models:
        table.add_row(
            m.ref.repo_id,
            m.ref.source,
            m.ref.revision,
            _gib(m.total_bytes),
            m.status,
            ", ".join(m.used_by) or "-",
            str(m.path),
        )
    out.print(table if models else "no models yet: `llmdock pull ORG/NAME` or `llmdock models import DIR`")


@app.command("rm")
def rm(
    name: Annotated[
        str, typer.Argument(help="ORG/NAME, or source:ORG/NAME@REV as `models ls --json` shows.")
    ],
    force: Annotated[
        bool, typer.Option("-f", "--force", help="Remove even while deployments use it.")
    ] = False,
    models_dir: ModelsDir = None,
) -> None:
    """Delete a model's weights (an imported model's own directory is kept; only its record goes)."""
    model = _store(models_dir).remove(name, force=force, used_by=_used_by)
    typer.echo(f"removed {model.key}")


@app.command("verify")
def verify(
    name: Annotated[str, typer.Argument(help="ORG/NAME, or source:ORG/NAME@REV.")],
    repair: Annotated[bool, typer.Option(help="Re-fetch only the damaged files from the hub.")] = False,
    token: Annotated[str | None, typer.Option(help="Hub token for --repair. Never printed.")] = None,
    models_dir: ModelsDir = None,
    json_out: JsonFlag = False,
) -> None:
    """Re-hash every file against the manifest; exit 1 when some are damaged (and not repaired)."""
    with _progress(json_out, verb="verify") as progress:
        result = _store(models_dir).verify(name, repair=repair, token=token, progress=progress)
    if json_out:
        _emit({"event": "result", "model": result.model.key, "bad": result.bad, "repaired": result.repaired})
    if not result.ok:
        raise IntegrityError(
            f"{len(result.bad)} file(s) of {result.model.key} are damaged: {', '.join(result.bad[:5])}",
            f"run `llmdock models verify {result.model.key} --repair` to re-fetch just those files",
            files=result.bad,
        )
    if not json_out:
        fixed = f", repaired {len(result.repaired)}" if result.repaired else ""
        typer.echo(f"{result.model.key}: {len(result.model.manifest.files)} files verified{fixed}")


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="Directory holding config.json and the weights.")],
    name: Annotated[
        str | None, typer.Option(help="Name to register it under (default: local/DIRNAME).")
    ] = None,
    models_dir: ModelsDir = None,
    json_out: JsonFlag = False,
    copy: Annotated[bool, typer.Option("--copy", help="Copy the files into the store first.")] = False,
) -> None:
    """Register weights already on disk (e.g. a manual `modelscope download`), in place unless --copy."""
    with _progress(json_out, verb="hash") as progress:
        model = _store(models_dir).import_local(path, name, progress=progress, copy=copy)
    if json_out:
        _emit({"event": "result", **model.as_dict()})
    else:
        typer.echo(
            f"imported {model.key} ({_gib(model.total_bytes)}, {len(model.manifest.files)} files) from {path}"
        )


# -- progress rendering --------------------------------------------------------------------------------

_emit_lock = threading.Lock()


def _emit(event: dict[str, Any]) -> None:
    with _emit_lock:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


@contextmanager
def _progress(json_out: bool, verb: str = "pull") -> Iterator[Callable[[dict[str, Any]], None]]:
    """A progress callback: JSON lines on stdout, or rich bars (overall + one per active file) on stderr."""
    if json_out:
        yield _json_events()
        return
    from llmdock.cli.render import err

    bars = Bars(verb, console=err)
    if not err.is_terminal:  # rich draws nothing there, and would end with an empty line
        yield bars.on
        return
    with bars.progress:
        yield bars.on


class Bars:
    """Rich bars for pull/verify/import events: one overall bar and one per file in flight.

    The overall bar stays hidden until an event says there is something to fetch or hash, so a
    command that turns out to need no download (``up`` of a local folder) shows no empty bar. Bytes
    already on disk when a pull resumes, and bytes dropped when a part restarts, move the bars
    without counting as transfer: rich's speed and ETA only see bytes that arrived now.
    """

    def __init__(self, verb: str, console: Any = None) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.verb = verb
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.overall = self.progress.add_task(verb, total=None, visible=False)
        self.files: dict[str, Any] = {}
        self._lock = threading.Lock()

    def task(self, task_id: Any) -> Any:
        return next(t for t in self.progress.tasks if t.id == task_id)

    def on(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        bars, overall = self.progress, self.overall
        with self._lock:
            if kind == "listing":
                bars.update(overall, description=f"{self.verb} {event['model']}: listing files", visible=True)
            elif kind == "plan":
                # reset, not update: the bytes already here are no transfer (no speed sample)
                bars.reset(
                    overall,
                    total=event["total_bytes"],
                    completed=event["total_bytes"] - event["fetch_bytes"],
                    description=f"{self.verb} {event['model']}",
                    visible=True,
                )
            elif kind == "verify_start":
                bars.reset(
                    overall,
                    total=event["total_bytes"],
                    completed=0,
                    description=f"{self.verb} {event['model']}",
                    visible=True,
                )
            elif kind == "file_start":
                if event["path"] in self.files:
                    bars.reset(self.files[event["path"]], total=event["size"], completed=event["offset"])
                else:
                    self.files[event["path"]] = bars.add_task(
                        f"  {event['path']}", total=event["size"], completed=event["offset"]
                    )
            elif kind == "progress":
                if event["path"] in self.files:
                    bars.update(self.files[event["path"]], completed=event["done"])
                if event["delta"] >= 0:
                    bars.advance(overall, event["delta"])
                else:  # a part restarted: move back without a negative speed sample
                    done = self.task(overall).completed
                    bars.update(overall, completed=max(0.0, done + event["delta"]))
            elif kind in ("file_done", "verify_file"):
                if kind == "verify_file":
                    bars.advance(overall, event["size"])
                task = self.files.pop(event["path"], None)
                if task is not None:
                    bars.remove_task(task)
            elif kind == "retry":
                bars.console.print(
                    f"[yellow]retrying[/yellow] {event['path']} from byte {event['offset']}: {event['error']}"
                )
            elif kind == "waiting_lock":
                bars.console.print(f"waiting for another pull of {event['model']} to finish")


def _json_events() -> Callable[[dict[str, Any]], None]:
    last: dict[str, int] = {}

    def on(event: dict[str, Any]) -> None:
        if event["event"] == "progress":  # at most one line per file per 64 MiB, plus the last one
            mark = event["done"] >> 26
            if last.get(event["path"]) == mark and event["done"] != event["size"]:
                return
            last[event["path"]] = mark
        _emit(event)

    return on


def _standalone() -> typer.Typer:
    """``python -m llmdock.cli.models``: pull plus the models commands, errors rendered like the main CLI."""
    solo = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    solo.command("pull")(pull_command)
    solo.add_typer(app, name="models")
    return solo


def main(argv: Sequence[str] | None = None) -> None:
    from llmdock.errors import LlmdockError

    try:
        _standalone()(args=list(argv) if argv is not None else None)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except LlmdockError as e:
        from llmdock.cli.render import print_error

        print_error(e)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
