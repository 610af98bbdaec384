"""The demo's engine environment: a venv with CPU torch and ``transformers[serving]``, built once.

A venv of the Python running llmdock (rather than micromamba's 3.12) so the wheels the user's pip
already finds fit it: offline-friendly and about 40 s from a local wheel cache. Reused while it
exists and imports; rebuilt when it is broken.
"""

from __future__ import annotations

from collections.abc import Callable

from llmdock.envs import Env, Envs

DEMO_ENV = "llmdock-demo"
MODULES = ["torch", "transformers", "fastapi", "uvicorn"]


def ensure_demo_env(envs: Envs, on_line: Callable[[str], None] | None = None) -> Env:
    env = envs.get(DEMO_ENV)
    if env is not None and env.complete and env.imports(MODULES):
        return env
    if env is not None and env.kind == "venv":
        envs.remove(DEMO_ENV)
    return envs.create(DEMO_ENV, "transformers", on_line=on_line, kind="venv")
