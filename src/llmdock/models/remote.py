"""Model facts from a hub before anything is downloaded: config.json and the file sizes.

``llmdock plan ORG/NAME`` uses this so a user learns whether a model fits before pulling 140 GB.
Only ``config.json`` (a few KB) is read; weight sizes come from the hub's file listing.
"""

from __future__ import annotations

import json
from typing import Any

from llmdock.errors import HubError, NotFound
from llmdock.models.hubs import first_failure, open_hub
from llmdock.models.names import parse_model_id

CONFIG_LIMIT = 4 << 20  # a config.json larger than this is not a config


def remote_config(
    model_id: str, *, source: str = "modelscope", revision: str | None = None, token: str | None = None
) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """``(config.json as a dict, [(path, size), ...])`` for ``model_id`` on ``source`` (``auto``: both)."""
    failures: list[HubError | NotFound] = []
    for s in ["modelscope", "huggingface"] if source == "auto" else [source]:
        ref = parse_model_id(model_id, s, revision)
        hub = open_hub(s, token)
        try:
            listing = hub.list_files(ref.repo_id, ref.revision)
            if not any(f.path == "config.json" for f in listing.files):
                raise NotFound(f"{ref.key} has no config.json", "is it a model repository (not a dataset)?")
            with hub.open_file(ref.repo_id, listing.commit, "config.json", offset=0) as body:
                data = bytearray()
                for chunk in body.chunks:
                    data += chunk
                    if len(data) > CONFIG_LIMIT:
                        raise HubError(
                            f"{ref.key}: config.json is over {CONFIG_LIMIT} bytes", "check the model"
                        )
        except (NotFound, HubError) as e:
            failures.append(e)
            continue
        try:
            config = json.loads(bytes(data))
        except ValueError as e:
            raise HubError(
                f"{ref.key}: config.json is not JSON ({e})", "check the model repository"
            ) from None
        return config, [(f.path, f.size) for f in listing.files]
    raise first_failure(model_id, failures)
