"""Where a deployment's weights come from, and what the planner knows of them before and after a pull.

``locate`` never downloads: it answers with the local directory when the weights are here, or, for a
hub model not pulled yet, with the facts read from the hub (config.json and file sizes), so ``up``
can refuse a request that cannot fit *before* fetching 140 GB. ``fetch`` then pulls.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmdock.errors import InvalidSpec, LlmdockError, NotFound

if TYPE_CHECKING:
    from llmdock.modelfacts import ModelFacts


@dataclass(frozen=True)
class PullOptions:
    """How ``up`` brings a hub model (``ORG/NAME``) that is not in the store yet."""

    pull: bool = True
    source: str = "modelscope"
    revision: str | None = None
    allow_system_disk: bool = False
    progress: Callable[[dict[str, Any]], None] | None = None


@dataclass(frozen=True)
class Weights:
    """``path`` is the directory to mount (None: not downloaded yet); ``facts`` what the planner uses
    (None: unknown, with the reason in ``note``)."""

    path: Path | None
    facts: ModelFacts | None
    note: str = ""


def canonical_model(model: str) -> str:
    """An existing folder as its real absolute path (``./m`` and ``/abs/m`` are one deployment, one
    spec hash); anything else (a hub ID) as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def is_hub_id(model: str) -> bool:
    from llmdock.models.names import looks_like_path

    return not looks_like_path(model) and model.count("/") == 1 and not Path(model).exists()


def _unreadable(what: Path, directory: Path) -> InvalidSpec:
    return InvalidSpec(
        f"{what} cannot be read by this user (permission denied)",
        f"make the weights readable (e.g. `chmod -R a+rX {directory}`), or run llmdock as a user who can read them",
    )


def _checked(path: Path, model: str) -> Path:
    """``path`` resolved, when it is a model directory this user can read; else one clear error."""
    config = path / "config.json"
    try:
        is_model = path.is_dir() and config.is_file()
    except PermissionError:  # the directory cannot be searched: config.json cannot even be seen
        raise _unreadable(path, path) from None
    if not is_model:
        raise InvalidSpec(
            f"{model!r} has no config.json", "point MODEL at the directory that holds config.json"
        )
    if not os.access(path, os.R_OK | os.X_OK):
        raise _unreadable(path, path)
    if not os.access(config, os.R_OK):
        raise _unreadable(config, path)
    return path.resolve()


def locate(model: str, models_dir: Path, opts: PullOptions) -> Weights:
    """The weights as they are now, without downloading. Raises for a MODEL that cannot be used."""
    path = Path(model).expanduser()
    if path.exists():
        path = _checked(path, model)
        return Weights(path, *read_facts(path))
    if not is_hub_id(model):
        raise NotFound(
            f"model {model!r} is neither a local directory nor a hub ID like ORG/NAME",
            "give the directory that holds config.json (e.g. /data/models/Qwen2.5-7B-Instruct) "
            "or a hub ID such as Qwen/Qwen2.5-7B-Instruct",
        )
    from llmdock.models import resolve

    try:
        path = _checked(
            resolve(model, models_dir=models_dir, no_pull=True, source=opts.source, revision=opts.revision),
            model,
        )
        return Weights(path, *read_facts(path))
    except NotFound:
        if not opts.pull:
            raise
    from llmdock.modelfacts import facts_from_config, weight_bytes_from_file_list
    from llmdock.models.remote import remote_config

    config, files = remote_config(model, source=opts.source, revision=opts.revision)
    facts = facts_from_config(
        config, weight_bytes=weight_bytes_from_file_list(files), weight_source="hub file list"
    )
    return Weights(
        None, facts, f"{model} is not downloaded yet: planned from the hub's config.json and file sizes"
    )


def fetch(model: str, models_dir: Path, opts: PullOptions) -> Path:
    """The verified weights directory for ``model``, pulling a hub model when it is missing."""
    path = Path(model).expanduser()
    if path.exists():
        return _checked(path, model)
    from llmdock.models import resolve

    kwargs: dict[str, Any] = {"source": opts.source, "revision": opts.revision}
    if opts.pull:
        kwargs["allow_system_disk"] = opts.allow_system_disk
        if opts.progress is not None:
            kwargs["progress"] = opts.progress
    return _checked(resolve(model, models_dir=models_dir, no_pull=not opts.pull, **kwargs), model)


def read_facts(model_dir: Path) -> tuple[ModelFacts | None, str]:
    """Planner facts from config.json and the safetensors headers, or (None, why not).

    A config.json that is not JSON is refused: no engine could load it either.
    """
    from llmdock.modelfacts import load_model_facts

    try:
        return load_model_facts(model_dir), ""
    except json.JSONDecodeError as e:
        raise InvalidSpec(
            f"{model_dir}/config.json is not valid JSON: {e}", "re-download or repair the model"
        ) from e
    except PermissionError as e:  # a shard the engine could not load either
        raise _unreadable(Path(e.filename or model_dir), model_dir) from None
    except (OSError, ValueError, KeyError, TypeError, LlmdockError) as e:
        return None, f"GPU memory not checked: the planner cannot read this model's config ({e})"
