"""The dashboard at ``/ui``: one HTML page, one script, one stylesheet and the strings, from package data.

The page holds no data: everything it shows comes from the admin API and ``/v1`` through ``fetch``,
with the admin key the user types in (kept in ``sessionStorage``) as ``Authorization``. So the files
follow the admin rules this way: on the open, loopback-only gateway only a local caller gets them
(:func:`~llmdock.gateway.admin.local_caller`, the same test as for admin calls); with keys configured
anyone may load the page, and every call it makes needs an admin key.

Every answer carries a Content-Security-Policy of this origin only (no inline script or style, no
frames, nothing from elsewhere: servers are often offline and nothing is fetched from a CDN). The
page's language comes from ``Accept-Language`` (English or Chinese) until the user picks one.
"""

from __future__ import annotations

import functools
from importlib import resources

from llmdock.gateway.admin import local_caller
from llmdock.gateway.asgi import Request, Response
from llmdock.gateway.keys import Authenticator
from llmdock.gateway.proxy import error_response
from llmdock.gateway.wire import AdminOnly, GatewayError, NotFoundPath

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "i18n.json": "application/json",
}
LANGUAGES = ("en", "zh")


def headers() -> list[tuple[bytes, bytes]]:
    return [
        (b"content-security-policy", CSP.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"cache-control", b"no-cache"),
    ]


def language(accept: str | None) -> str:
    """``zh-CN,zh;q=0.9,en;q=0.8`` -> ``zh``: the first of :data:`LANGUAGES` by the client's weights."""
    best, weight = "en", 0.0
    for i, item in enumerate((accept or "").split(",")):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        lang = tag.strip().lower().split("-", 1)[0]
        score = q - i * 1e-6  # equal weights: the one listed first
        if lang in LANGUAGES and score > weight:
            best, weight = lang, score
    return best


@functools.lru_cache(maxsize=len(FILES))
def asset(name: str) -> bytes:
    return resources.files("llmdock.gateway").joinpath("static").joinpath(name).read_bytes()


def serve_ui(auth: Authenticator, request: Request) -> Response:
    """``GET /ui`` (the page), ``/ui/NAME`` (its files); 404 for anything else."""
    try:
        if auth.open and not auth.require_key and not local_caller(request):
            raise AdminOnly(
                "the dashboard of a gateway without API keys is served only to this host, addressed as "
                "localhost or 127.0.0.1; or create an admin key and open it with that"
            )
        name = request.path.removeprefix("/ui").lstrip("/") or "index.html"
        if request.method not in ("GET", "HEAD") or name not in FILES:
            raise NotFoundPath(f"no dashboard file {request.path}; open /ui")
    except GatewayError as e:
        answer = error_response(e)
        answer.headers = headers()
        return answer
    body = asset(name)
    if name == "index.html":
        body = body.replace(
            b'<html lang="en"', f'<html lang="{language(request.header("accept-language"))}"'.encode()
        )
    return Response(200, body, FILES[name], headers())
