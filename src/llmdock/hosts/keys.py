"""Secret API keys of engines on other hosts, held where only llmdock's user reads them.

An engine on this host listens on loopback; one on another host listens on that host's network, where
anyone could call it, and vLLM checks no key unless given one. So each remote deployment of an engine
that takes a key gets its own, generated on ``up``: it goes to the engine in its environment
(``VLLM_API_KEY``, which is what vLLM's ``--api-key`` defaults to: unlike an argv flag it is not in the
host's process list nor in ``plan``'s output), and to ``$LLMDOCK_HOME/engine-keys/NAME`` (0600, in a
0700 folder), from where the gateway and the readiness probe send it as ``Authorization: Bearer``.

Example::

    keys = EngineKeys(settings.home / "engine-keys")
    key = keys.issue("qwen")       # a new key, stored
    keys.read("qwen") == key
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from llmdock.spec import NAME_RE


class EngineKeys:
    def __init__(self, dir: Path) -> None:
        self.dir = dir

    def path(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise ValueError(f"not a deployment name: {name!r}")
        return self.dir / name

    def issue(self, name: str) -> str:
        """A fresh key for ``name``, written 0600 (replacing an older one)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        key = "sk-engine-" + secrets.token_urlsafe(32)
        tmp = self.path(name).with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        tmp.replace(self.path(name))
        return key

    def read(self, name: str) -> str | None:
        try:
            return self.path(name).read_text().strip() or None
        except (OSError, ValueError):
            return None

    def remove(self, name: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.path(name).unlink()
