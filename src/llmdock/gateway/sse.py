"""Usage figures from OpenAI responses, JSON or SSE, without parsing every chunk. Pure.

Engines send ``"usage": null`` on every stream chunk when ``stream_options.include_usage`` is set and the
numbers only on the last, so a regular-expression scan for ``"prompt_tokens": N`` finds the figures at C
speed and a JSON parse happens only for the one event that needs removing (see :func:`strip_usage_event`).

Example::

    meter = UsageMeter()
    meter.feed(b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7}}\\n\\n')
    assert (meter.prompt_tokens, meter.completion_tokens) == (5, 7)
"""

from __future__ import annotations

import json
import re

PROMPT_RE = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
COMPLETION_RE = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
USAGE_OBJECT_RE = re.compile(rb'"usage"\s*:\s*\{')
TAIL = 96  # bytes of the previous chunk kept so figures split across chunks are still found


class UsageMeter:
    """Keeps the last usage figures seen in a response body or stream (they are cumulative)."""

    __slots__ = ("completion_tokens", "prompt_tokens", "tail")

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        data = self.tail + chunk if self.tail else chunk
        if b"_tokens" in data:  # the last figures in the data are the ones that count
            i = data.rfind(b'"prompt_tokens"')
            if i >= 0 and (m := PROMPT_RE.match(data, i)):
                self.prompt_tokens = int(m[1])
            i = data.rfind(b'"completion_tokens"')
            if i >= 0 and (m := COMPLETION_RE.match(data, i)):
                self.completion_tokens = int(m[1])
        self.tail = data[-TAIL:]


def wants_usage(payload: dict[str, object]) -> bool:
    opts = payload.get("stream_options")
    return isinstance(opts, dict) and bool(opts.get("include_usage"))


def has_usage_event(chunk: bytes) -> bool:
    return USAGE_OBJECT_RE.search(chunk) is not None


def strip_usage_event(chunk: bytes) -> bytes:
    """Drop the usage-only event (``"choices": []`` with usage) that the gateway asked for itself.

    A client that did not ask for ``include_usage`` must not see that extra event: some index
    ``choices[0]`` on every chunk. Other events in the chunk pass unchanged, in order.
    """
    events = chunk.split(b"\n\n")
    kept = []
    for event in events:
        if USAGE_OBJECT_RE.search(event) and _is_usage_only(event):
            continue
        kept.append(event)
    return b"\n\n".join(kept)


def _is_usage_only(event: bytes) -> bool:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                obj = json.loads(line[5:])
            except ValueError:
                return False
            return isinstance(obj, dict) and obj.get("choices") == [] and obj.get("usage") is not None
    return False
