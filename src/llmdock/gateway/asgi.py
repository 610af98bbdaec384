"""The gateway's wire types over ASGI: :class:`Request` in, :class:`Response` or :class:`Stream` out.

A handler gets a Request whose body is not read yet (``await request.read(limit)`` reads it, so a key can
be checked first and a keyless client never costs its body's memory) and returns a Response, or streams::

    async def handler(req: Request) -> Response | Stream:
        if req.path == "/ping":
            return Response(200, b"pong", "text/plain")
        out = await req.stream(200, "text/event-stream")
        await out.write(b"data: 1\\n\\n")   # one HTTP chunk each, never merged
        return out

:class:`App` is the ASGI callable: it refuses what h11 lets through and RFC 9112 does not (an HTTP
version other than 1.0/1.1, ``Transfer-Encoding`` on HTTP/1.0 or beside ``Content-Length``), and
``CONNECT`` (not a forward proxy); a client that disconnects cancels its handler, which is how the
proxy aborts the engine's request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from llmdock.gateway.wire import (
    BadRequest,
    BodyTooLarge,
    GatewayError,
    HeadersTooLarge,
    MethodNotAllowed,
    VersionNotSupported,
    envelope,
)

log = logging.getLogger("llmdock.gateway")
Headers = list[tuple[bytes, bytes]]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ClientGone(Exception):
    """The client closed its connection before the request was read."""


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self, status: int, body: bytes, content_type: str = "application/json", headers: Headers | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or []


class Request:
    __slots__ = (
        "body",
        "client",
        "disconnected",
        "finishing",
        "method",
        "path",
        "query_string",
        "raw_headers",
        "raw_path",
        "read_all",
        "receive",
        "response",
        "send",
        "task",
        "version",
        "watcher",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]  # percent-decoded by the server
        self.raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        self.query_string: bytes = scope["query_string"]
        self.raw_headers: Headers = scope["headers"]  # lower-case names
        self.version: str = scope["http_version"]
        client = scope.get("client")
        self.client: str = client[0] if client else "-"
        self.receive = receive
        self.send = send
        self.body = b""
        self.read_all = False
        self.response: Stream | None = None
        self.disconnected = False
        self.finishing = False  # the last write of the answer is under way
        self.task = asyncio.current_task()
        self.watcher: asyncio.Task[None] | None = None

    def header(self, name: str) -> str | None:
        """One header by lower-case name, repeated ones joined with ", "; None when absent."""
        key = name.encode("latin-1")
        values = [v for k, v in self.raw_headers if k == key]
        if not values:
            return None
        return b", ".join(values).decode("latin-1")

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode("latin-1"): self.header(k.decode("latin-1")) or "" for k, _ in self.raw_headers}

    @property
    def target(self) -> str:
        """Path and query as sent (percent-encoding kept)."""
        raw = self.raw_path.decode("latin-1")
        return raw + "?" + self.query_string.decode("latin-1") if self.query_string else raw

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string.decode("latin-1")))

    @property
    def has_body(self) -> bool:
        length = self.header("content-length")
        return (length is not None and length.strip() != "0") or self.header("transfer-encoding") is not None

    async def read(self, limit: int) -> bytes:
        """The whole body; BodyTooLarge past ``limit`` bytes (declared or as it arrives)."""
        if self.read_all:
            return self.body
        declared = self.header("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"the request body is {declared} bytes; the limit is {limit}")
        parts: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                raise ClientGone("the client left before its request was read")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"the request body exceeds the limit of {limit} bytes")
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        self.body = b"".join(parts)
        self.read_all = True
        self.watch()
        return self.body

    def watch(self) -> None:
        """From now on a client that disconnects cancels the handler (the body is in: ``receive`` now
        returns only ``http.disconnect``, when the client leaves or the answer is complete)."""
        if self.watcher is None and self.task is not None:
            self.watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        if self.finishing or (self.response is not None and self.response.ended):
            return  # the answer is complete: that is why receive() returned
        if self.task is not None and not self.task.done():
            self.disconnected = True
            self.task.cancel()

    async def stream(self, status: int, content_type: str, headers: Headers | None = None) -> Stream:
        """Send the status line and headers now; the body follows through :meth:`Stream.write`."""
        out = Stream(self.send)
        self.response = out
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type.encode("latin-1")), *(headers or [])],
            }
        )
        return out


class Stream:
    """A response body sent as it is produced: each ``write`` is one HTTP chunk, sent at once, and waits
    while the client's socket buffer is full (back-pressure)."""

    __slots__ = ("ended", "send")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.ended = False

    async def write(self, data: bytes) -> None:
        if data and not self.ended:
            await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> None:
        if not self.ended:
            self.ended = True  # before the send: the watcher then knows the disconnect is the end
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})


Handler = Callable[[Request], Awaitable["Response | Stream"]]


def framing_error(req: Request, header_bytes: int) -> GatewayError | None:
    """What h11 accepts and RFC 9112 (or our header limit) does not, checked before any handler runs.

    h11 bounds a head that is still arriving; one that arrived whole in a single read is measured here.
    """
    size = len(req.raw_path) + len(req.query_string) + sum(len(k) + len(v) + 4 for k, v in req.raw_headers)
    if size > header_bytes:
        return HeadersTooLarge(f"the request line and headers exceed {header_bytes} bytes")
    if req.version not in ("1.0", "1.1"):
        return VersionNotSupported(f"HTTP/{req.version} is not served here; use HTTP/1.1")
    te = req.header("transfer-encoding")
    if te is not None and req.version == "1.0":
        return BadRequest("Transfer-Encoding is not allowed in an HTTP/1.0 request (RFC 9112 §6.1)")
    if te is not None and req.header("content-length") is not None:
        return BadRequest("a request may not carry both Transfer-Encoding and Content-Length")
    if req.method == "CONNECT":  # a 2xx to it would switch protocols (h11), leaving the answer cut
        return MethodNotAllowed("CONNECT is not served here: the gateway is no forward proxy")
    return None


class App:
    """The ASGI callable around one handler; unexpected exceptions become a 500 envelope."""

    def __init__(self, handler: Handler, header_bytes: int = 64 * 1024) -> None:
        self.handler = handler
        self.header_bytes = header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        req = Request(scope, receive, send)
        try:
            error = framing_error(req, self.header_bytes)
            if error is not None:
                return await self.answer(req, Response(error.status, error.body()), close=True)
            try:
                answer = await self.handler(req)
            except ClientGone:
                return
            except asyncio.CancelledError:
                if not req.disconnected:
                    raise
                task = asyncio.current_task()
                if task is not None and hasattr(task, "uncancel"):
                    task.uncancel()  # our own watcher's cancel: the client left, nothing more to do
                return
            except Exception:
                log.exception("handler failed on %s %s", req.method, req.path)
                if req.response is not None:
                    raise  # the status went out already: uvicorn closes the connection, cutting the body
                answer = Response(500, envelope("internal gateway error", "server_error", "internal_error"))
            if isinstance(answer, Response):
                await self.answer(req, answer, close=req.has_body and not req.read_all)
            else:
                await answer.end()
        finally:
            if req.watcher is not None:
                req.watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await req.watcher

    async def answer(self, req: Request, r: Response, close: bool = False) -> None:
        """Send a whole answer; ``close``: the body was not read, so the connection cannot go on."""
        headers = [
            (b"content-type", r.content_type.encode("latin-1")),
            (b"content-length", b"%d" % len(r.body)),
            *r.headers,
        ]
        if close:
            headers.append((b"connection", b"close"))
        req.finishing = True
        await req.send({"type": "http.response.start", "status": r.status, "headers": headers})
        await req.send({"type": "http.response.body", "body": r.body})
