"""Model weights: pull from ModelScope or Hugging Face, verify, import, list, remove, resolve.

The store keeps each model under ``models_dir/source/org/name@revision`` with a manifest; a model is
present only when its manifest is complete and every file verified. Hubs sit behind
:class:`~llmdock.models.hubs.Hub`; the real SDKs are imported only when a hub is used.

Example (what ``llmdock up`` calls)::

    from llmdock.models import resolve
    weights = resolve("Qwen/Qwen2.5-7B-Instruct", no_pull=False, progress=print)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmdock.models.store import LocalModel, ModelStore, UsedBy

__all__ = ["LocalModel", "ModelStore", "UsedBy", "resolve"]


def resolve(model_ref: str, *, models_dir: Path | None = None, no_pull: bool = False, **kwargs: Any) -> Path:
    """The weights directory for ``model_ref`` (a local dir, or ``ORG/NAME[@REV]``), pulling if needed.

    ``kwargs`` go to :meth:`ModelStore.resolve` / :func:`llmdock.models.pull.pull`: ``source``,
    ``revision``, ``include``, ``exclude``, ``allow_system_disk``, ``token``, ``progress``.
    """
    store = ModelStore(models_dir) if models_dir is not None else ModelStore.default()
    return store.resolve(model_ref, no_pull=no_pull, **kwargs)
