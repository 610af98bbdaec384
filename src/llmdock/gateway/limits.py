"""The gateway's limits, as one policy object with its defaults. Pure.

Every limit below is on in ``llmdock serve``; each refusal the client can still be told about is an
OpenAI error envelope ``{"error": {"message", "type", "param", "code"}}``:

=========================  ==========  ===================================================  ======
limit                      default     what happens past it                                 status
=========================  ==========  ===================================================  ======
``header_timeout_s``       10 s        request line and headers not complete in time         408
``body_timeout_s``         60 s        the body not complete this long after the headers    408
``idle_timeout_s``         75 s        a keep-alive connection with no request: closed      —
``send_timeout_s``         60 s        the client reads nothing of the answer for this long: the
                                       connection is aborted and the engine's request with it  —
``max_connections``        10,000      connections beyond it get an answer, then a close     503
``max_connections_per_ip`` 1,000       the same, per client address                          429
``header_bytes``           64 KiB      request line and headers (the current request only)   431
``body_bytes``             32 MiB      request body, read only after the key was accepted    413
``admin_body_bytes``       1 MiB       an admin request's body                               413
``json_depth``             64          nesting of arrays and objects in a request body       400
``json_containers``        200,000     arrays and objects in a request body                  400
``engine_header_bytes``    64 KiB      one engine response header line (and 128 of them)     502
``drain_s``                30 s        on SIGTERM, how long live streams may go on; then they
                                       end with an SSE error event                          —
``replica_concurrency``    1,024       requests one replica takes at once, unless its engine
                                       flags say (``--max-num-seqs``); beyond it they queue  —
``queue_length``           1,024       requests queued per deployment beyond its bound      429
``queue_wait_s``           30 s        longest wait in that queue                           429
=========================  ==========  ===================================================  ======

Per-key quotas (tokens per day and month, requests and tokens per minute, requests at once) are in
:mod:`llmdock.gateway.quotas`; the congestion queue in :mod:`llmdock.gateway.congestion`.

Back-pressure on every write: an answer is written only as fast as the client reads it (the server
waits on the socket's buffer), and an engine's stream is read only as fast as it is forwarded, so a
client that pipelines and never reads holds one answer's worth of memory, not every answer.

Example::

    limits = Limits(body_bytes=8 * 1024 * 1024)
    json_shape_error(b'[[[[1]]]]', Limits(json_depth=3))   # -> "nested deeper than 3 levels"
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    idle_timeout_s: float = 75.0
    send_timeout_s: float = 60.0
    max_connections: int = 10_000
    max_connections_per_ip: int = 1_000
    header_bytes: int = 64 * 1024
    body_bytes: int = 32 * 1024 * 1024
    admin_body_bytes: int = 1024 * 1024
    json_depth: int = 64
    json_containers: int = 200_000
    engine_header_bytes: int = 64 * 1024
    drain_s: float = 30.0
    replica_concurrency: int = 1024  # see congestion.py
    queue_length: int = 1024
    queue_wait_s: float = 30.0


STRING_RE = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
PAIR_RE = re.compile(rb"\[\]|\{\}")  # one scan removes only the pairs innermost before it
NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_shape_error(body: bytes, limits: Limits) -> str | None:
    """Why ``body`` is refused before it is parsed (too deep, too many containers), or None.

    Runs at C speed: strings are blanked by one regular expression, everything but brackets deleted by
    ``bytes.translate``, and each pass of one ``re.sub`` removes one level of innermost pairs, so a body
    ``depth`` levels deep takes ``depth`` passes. Parsing first would cost what the check saves: a
    31 MiB ``[{},{},…]`` is 800 MiB of Python objects, and deep nesting a RecursionError.
    """
    if b"[" not in body and b"{" not in body:
        return None
    brackets = STRING_RE.sub(b"", body).translate(None, NOT_BRACKETS)
    if len(brackets) // 2 > limits.json_containers:
        return f"the request body holds more than {limits.json_containers} arrays and objects"
    for _ in range(limits.json_depth):
        shorter = PAIR_RE.sub(b"", brackets)
        if len(shorter) == len(brackets):
            return None  # nothing left to remove: unbalanced, which the JSON parser reports
        brackets = shorter
        if not brackets:
            return None
    return f"the request body is nested deeper than {limits.json_depth} levels"
