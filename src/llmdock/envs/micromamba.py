"""micromamba, driven through its command line as the manual procedure does (``mamba create -n py312
python=3.12``). Found via ``--micromamba PATH``, ``$MAMBA_EXE`` or ``PATH``; never installed by llmdock.

Only four commands are used, so a stand-in that answers them can replace it in tests:
``env list --json``, ``create -y -n NAME python=VER``, ``run -n NAME ARGV…``, ``env remove -y -n NAME``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from llmdock.errors import LlmdockError, NotFound

INSTALL_HINT = (
    "download micromamba-linux-64 from its GitHub releases to /usr/bin/micromamba (chmod +x), "
    "or point llmdock at it with --micromamba PATH or MAMBA_EXE"
)


def find(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The micromamba executable: ``explicit``, else ``$MAMBA_EXE``, else ``micromamba`` on PATH."""
    env = os.environ if environ is None else environ
    if explicit:
        path = shutil.which(explicit) or (explicit if os.access(explicit, os.X_OK) else None)
        if path is None:
            raise NotFound(f"micromamba {explicit!r} is not an executable", INSTALL_HINT)
        return path
    if env.get("MAMBA_EXE") and os.access(env["MAMBA_EXE"], os.X_OK):
        return env["MAMBA_EXE"]
    return shutil.which("micromamba", path=env.get("PATH"))


def parse_env_list(text: str) -> dict[str, Path]:
    """``micromamba env list --json`` -> ``{name: prefix}``. Environments live in ``ROOT/envs/NAME``;
    the root prefix itself is ``base``. Other prefixes (``-p`` environments) go by their last part."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"micromamba env list --json did not print JSON: {e}") from None
    prefixes = data.get("envs") if isinstance(data, dict) else None
    if not isinstance(prefixes, list):
        raise ValueError("micromamba env list --json has no 'envs' list")
    found: dict[str, Path] = {}
    paths = [Path(str(p)) for p in prefixes]
    roots = {p.parent.parent for p in paths if p.parent.name == "envs"}
    for p in paths:
        name = "base" if p in roots else p.name
        found.setdefault(name, p)
    return found


class Micromamba:
    def __init__(self, exe: str) -> None:
        self.exe = exe

    def _run(self, *args: str, timeout: float = 3600, capture: bool = True) -> str:
        try:
            done = subprocess.run(
                [self.exe, *args], capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise LlmdockError(f"micromamba {' '.join(args[:2])} failed: {e}", INSTALL_HINT) from e
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-800:]
            raise LlmdockError(
                f"`micromamba {' '.join(args)}` failed (exit {done.returncode}): {tail}",
                "read micromamba's message above; `micromamba info` shows its root prefix and channels",
            )
        return done.stdout

    def version(self) -> str:
        return self._run("--version", timeout=30).strip()

    def envs(self) -> dict[str, Path]:
        return parse_env_list(self._run("env", "list", "--json", timeout=60))

    def create(self, name: str, python: str) -> Path:
        self._run("create", "-y", "-n", name, f"python={python}")
        prefix = self.envs().get(name)
        if prefix is None:
            raise LlmdockError(
                f"micromamba created {name!r} but does not list it", "see `micromamba env list`"
            )
        return prefix

    def run(self, name: str, argv: list[str]) -> str:
        return self._run("run", "-n", name, *argv)

    def remove(self, name: str) -> None:
        self._run("env", "remove", "-y", "-n", name)
