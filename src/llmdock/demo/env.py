"""The demo's engine environment: a venv with CPU torch and ``transformers[serving]``, built once.

A venv of the Python running llmdock (rather than micromamba's 3.12) so the wheels the user's pip
already finds fit it. pip runs with ``--no-compile``: byte-compiling torch's files took longer than
fetching and unpacking them (about 70 s of a 115 s install on two cores); Python compiles the few
modules the engine imports when it first imports them. Reused while it exists and has its modules;
rebuilt when it is broken.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from llmdock.envs import Env, Envs

DEMO_ENV = "llmdock-demo"
MODULES = ["torch", "transformers", "tokenizers", "fastapi", "uvicorn"]
PIP_ARGS = ("--no-compile",)
# What a fresh machine took (benchmarks/core/RESULTS.md): ~45 s from a nearby index or wheel cache.
ESTIMATE = "about a minute from a nearby package index, several over a slow link: torch is ~200 MB"


def has_modules(env: Env, modules: list[str]) -> bool:
    """Whether the environment's Python finds ``modules``, without importing them (torch alone takes
    seconds to import)."""
    probe = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))"
    try:
        done = subprocess.run(
            [str(env.bin_dir / "python"), "-I", "-c", probe, *modules],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def find_demo_env(envs: Envs) -> Env | None:
    """The demo environment when it is built and usable, else None."""
    env = envs.get(DEMO_ENV)
    return env if env is not None and env.complete and has_modules(env, MODULES) else None


def ensure_demo_env(envs: Envs, on_line: Callable[[str], None] | None = None) -> Env:
    env = find_demo_env(envs)
    if env is not None:
        return env
    broken = envs.get(DEMO_ENV)
    if broken is not None and broken.kind == "venv":
        envs.remove(DEMO_ENV)
    return envs.create(DEMO_ENV, "transformers", on_line=on_line, kind="venv", pip_args=PIP_ARGS)
