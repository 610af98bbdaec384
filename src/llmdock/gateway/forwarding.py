"""What the gateway forwards to an engine, and in what form. Pure.

Only the OpenAI routes an engine serves go through (:data:`ENGINE_ROUTES`, each with its methods);
everything else under ``/v1/`` is a 404 here, so an engine's own admin endpoints
(``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``, vLLM's ``/reset_prefix_cache``…) are out of a
client's reach. Paths are checked in their raw form: a dot segment, an encoded dot, slash or backslash,
or an empty segment is refused (400) rather than resolved, so ``/v1/../admin/v1/keys`` and
``/v1/%2e%2e/admin`` never reach anything. Query parameters that carry credentials (``api_key``,
``key``, ``token``…, or any value that looks like a key) are dropped before the request is forwarded,
so keys never land in an engine's access log.

Example::

    path, query = forward_target("/v1/chat/completions", b"api_key=sk-1&x=1")   # -> (…, "x=1")
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode

from llmdock.gateway.wire import BadRequest

# path -> methods the engine serves there; bodies are JSON unless named in MULTIPART
ENGINE_ROUTES: dict[str, frozenset[str]] = {
    "/v1/chat/completions": frozenset({"POST"}),
    "/v1/completions": frozenset({"POST"}),
    "/v1/embeddings": frozenset({"POST"}),
    "/v1/responses": frozenset({"POST"}),
    "/v1/audio/transcriptions": frozenset({"POST"}),
    "/v1/audio/translations": frozenset({"POST"}),
    "/v1/audio/speech": frozenset({"POST"}),
    "/v1/rerank": frozenset({"POST"}),
    "/v1/score": frozenset({"POST"}),
}
MULTIPART = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations"})
SECRET_PARAMS = frozenset(
    {"api_key", "apikey", "api-key", "key", "token", "access_token", "auth", "authorization"}
)
LOOKS_LIKE_KEY = re.compile(r"^(sk-|Bearer\s)", re.IGNORECASE)
BAD_ENCODED = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)


def check_path(raw_path: str) -> str:
    """``raw_path`` when it is a plain path; BadRequest when it climbs or hides a separator."""
    if not raw_path.startswith("/") or "\\" in raw_path or BAD_ENCODED.search(raw_path):
        raise BadRequest(
            f"the path {raw_path[:200]!r} is not allowed: no encoded dots, slashes or backslashes"
        )
    segments = raw_path.split("/")[1:]
    for i, segment in enumerate(segments):
        if segment in (".", "..") or (segment == "" and i != len(segments) - 1):
            raise BadRequest(f"the path {raw_path[:200]!r} is not allowed: no dot or empty segments")
    return raw_path


def scrub_query(query: str) -> str:
    """``query`` without the parameters that carry credentials."""
    if not query:
        return ""
    pairs = parse_qsl(query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k.lower() not in SECRET_PARAMS and not LOOKS_LIKE_KEY.match(v)]
    return "" if len(kept) == 0 else query if len(kept) == len(pairs) else urlencode(kept)


def forward_target(raw_path: str, query: bytes) -> tuple[str, str]:
    """The path (checked) and the query (scrubbed) to send to the engine."""
    return check_path(raw_path), scrub_query(query.decode("latin-1"))


MODEL_PART = re.compile(
    rb'Content-Disposition:[ \t]*form-data;[ \t]*name="model"[^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n]*)\r\n',
    re.IGNORECASE,
)


def multipart_model(body: bytes) -> tuple[str, int, int] | None:
    """The ``model`` field of a multipart/form-data body and where its value sits (start, end)."""
    m = MODEL_PART.search(body)
    if m is None:
        return None
    try:
        return m.group(1).decode(), m.start(1), m.end(1)
    except UnicodeDecodeError:
        return None
