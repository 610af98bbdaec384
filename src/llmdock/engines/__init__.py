"""Engines: one module each, the only place that knows an engine's flags."""

from __future__ import annotations

from llmdock.engines.base import Engine, Launch
from llmdock.errors import InvalidSpec


def get_engine(name: str) -> Engine:
    if name == "vllm":
        from llmdock.engines.vllm import Vllm

        return Vllm()
    if name == "sglang":
        from llmdock.engines.sglang import Sglang

        return Sglang()
    if name == "transformers":
        from llmdock.engines.transformers import Transformers

        return Transformers()
    raise InvalidSpec(f"unknown engine {name!r}", "choose --engine vllm|sglang|transformers")


__all__ = ["Engine", "Launch", "get_engine"]
