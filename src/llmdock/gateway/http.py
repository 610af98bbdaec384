"""The gateway's HTTP/1.1 server: an asyncio protocol over httptools (llhttp), one worker task per
connection that answers its requests in order.

Why not aiohttp's server: on these 2-vCPU VMs a bare aiohttp pass-through costs about 380 µs of CPU per
request at concurrency 1, mostly in per-request objects and extra socket calls; this server reads a request
with one ``recv`` and answers with one ``send``, and the whole gateway (keys, routing, usage, metrics and
the engine client) costs less than that (benchmarks/gateway/).

What it does: keep-alive and pipelining (requests on a connection are answered in order), chunked request
bodies, ``Expect: 100-continue``, HTTP/1.0 clients, a body limit (413 as soon as it is known), a header
limit (431, counting every byte before the body), ``HEAD``, idle connections closed after ``keepalive_s``.
A request asking for an Upgrade is answered as plain HTTP and the connection then closes. A client that
disconnects cancels its connection's worker and so the handler, which is how the proxy aborts the
engine's request.

The handler gets a :class:`Request` (whole body read) and returns a :class:`Response`, or streams with
``request.stream(...)`` and returns the :class:`Stream`::

    async def handler(req: Request) -> Response | Stream:
        if req.path == "/ping":
            return Response(200, b"pong", "text/plain")
        out = req.stream(200, "text/event-stream")
        await out.write(b"data: 1\\n\\n")   # one HTTP chunk each
        await out.end()
        return out
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import httptools

from llmdock.gateway.wire import BadRequest, BodyTooLarge, GatewayError, HeadersTooLarge, envelope

log = logging.getLogger("llmdock.gateway")

HEADER_LIMIT = 64 * 1024
PIPELINE_MAX = 16  # requests queued on one connection before it stops reading
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self, status: int, body: bytes, content_type: str = "application/json", headers: bytes = b""
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers  # extra header lines, each ending in \r\n


def find_header(raw: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The value of header ``name`` (lower-case), repeated ones joined with ", "; None when absent."""
    n, found = len(name), None
    for k, v in raw:
        if len(k) == n and k.lower() == name:
            text = v.decode("latin-1")
            found = text if found is None else f"{found}, {text}"
    return found


class Request:
    __slots__ = (
        "body",
        "conn",
        "keep_alive",
        "method",
        "raw_headers",
        "streamed",
        "target",
        "version",
    )

    def __init__(
        self,
        conn: Connection,
        method: str,
        target: str,
        raw_headers: list[tuple[bytes, bytes]],
        body: bytes,
        version: str,
        keep_alive: bool,
    ) -> None:
        self.conn = conn
        self.method = method
        self.target = target  # path and query, as sent
        self.raw_headers = raw_headers  # as received; decoded when asked for
        self.body = body
        self.version = version
        self.keep_alive = keep_alive
        self.streamed = False

    def header(self, name: str) -> str | None:
        """One header by its lower-case name, without decoding the others (the hot path's way)."""
        return find_header(self.raw_headers, name.encode("latin-1"))

    @property
    def headers(self) -> dict[str, str]:
        """Every header, by lower-case name; repeated ones joined with ", "."""
        names = {k.lower() for k, _ in self.raw_headers}
        return {k.decode("latin-1"): find_header(self.raw_headers, k) or "" for k in names}

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.target.partition("?")[2]))

    def stream(self, status: int, content_type: str, headers: bytes = b"") -> Stream:
        """Send the status line and headers now; the body follows through :meth:`Stream.write`."""
        self.streamed = True
        return Stream(self.conn, self, status, content_type, headers)


class Stream:
    """A response body sent as it is produced: each ``write`` is one HTTP chunk, sent at once."""

    __slots__ = ("chunked", "conn", "ended")

    def __init__(
        self, conn: Connection, req: Request, status: int, content_type: str, headers: bytes
    ) -> None:
        self.conn = conn
        self.chunked = req.version == "1.1"  # HTTP/1.0 has no chunks: the body ends when the connection does
        if not self.chunked:
            req.keep_alive = False
        framing = b"Transfer-Encoding: chunked\r\n" if self.chunked else b""
        conn.write(head(status, content_type, framing + headers, req.keep_alive))
        self.ended = req.method == "HEAD"  # a HEAD answer has no body: writes are dropped

    async def write(self, data: bytes) -> None:
        """Send ``data``; waits while the client's socket buffer is full; ConnectionResetError once it left."""
        conn = self.conn
        if conn.closed:
            raise ConnectionResetError("the client closed the connection")
        if data and not self.ended:
            conn.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)
        if conn.paused:
            await conn.drain()

    async def end(self) -> None:
        if not self.ended:
            self.ended = True
            if self.chunked and not self.conn.closed:
                self.conn.write(b"0\r\n\r\n")


Handler = Callable[[Request], Awaitable["Response | Stream"]]


def head(status: int, content_type: str, extra: bytes, keep_alive: bool) -> bytes:
    return b"HTTP/1.1 %d %b\r\nContent-Type: %b\r\n%b%b\r\n" % (
        status,
        REASONS.get(status, b"Unknown"),
        content_type.encode("latin-1"),
        extra,
        b"" if keep_alive else b"Connection: close\r\n",
    )


class Connection(asyncio.Protocol):
    """One client connection: parses requests, runs the handler for one at a time, writes answers."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url: list[bytes] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.pending: deque[Request] = deque()  # complete requests not yet answered, in order
        # One worker task per connection answers its requests one at a time and, between them, waits on
        # ``wakeup``: cheaper than a task per request on keep-alive connections.
        self.worker: asyncio.Task[None] | None = None
        self.wakeup: asyncio.Future[None] | None = None
        self.busy = False  # a request is being answered
        self.closed = False
        self.paused = False
        self.reading = True
        self.drained: asyncio.Future[None] | None = None
        self.refused = False  # answered an error mid-request: ignore what follows, close when written
        self.in_head = False  # between the first byte of a request and the end of its headers
        self.head_bytes = 0
        self.last_active = time.monotonic()

    # ---- asyncio protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.server.conns.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.refused:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request was answered as plain HTTP (a server may ignore Upgrade); what follows on this
            # connection is another protocol, so nothing more is read and it closes after the answers.
            self.refused = True
            if not self.busy and not self.pending:
                self.close()
            return
        except httptools.HttpParserError as e:
            if not self.refused:  # a limit refused it from a callback already
                self.refuse(BadRequest(f"malformed HTTP request: {e}"))
            return
        if self.in_head:  # headers still incomplete: llhttp holds a partial line without telling us
            self.head_bytes += len(data)
            if self.head_bytes > HEADER_LIMIT:
                self.refuse(HeadersTooLarge(f"the request line and headers exceed {HEADER_LIMIT} bytes"))

    def eof_received(self) -> bool:
        return False  # a client that stops sending is gone: close, which cancels its handler

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.conns.discard(self)
        self.pending.clear()
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()
        if self.drained is not None and not self.drained.done():
            self.drained.set_exception(ConnectionResetError("the client closed the connection"))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    # ---- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_bytes = 0
        self.url = []
        self.headers = []
        self.body = []
        self.size = 0

    def on_url(self, url: bytes) -> None:
        self.size += len(url)
        if self.size > HEADER_LIMIT:
            self.refuse(HeadersTooLarge(f"the request line and headers exceed {HEADER_LIMIT} bytes"))
            raise httptools.HttpParserError("request line too long")
        self.url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.size += len(name) + len(value)
        if self.size > HEADER_LIMIT:
            self.refuse(HeadersTooLarge(f"the request line and headers exceed {HEADER_LIMIT} bytes"))
            raise httptools.HttpParserError("headers too large")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        limit = self.server.body_limit
        declared = find_header(self.headers, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            self.refuse(BodyTooLarge(f"the request body is {declared} bytes; the limit is {limit}"))
            raise httptools.HttpParserError("body too large")
        self.size = 0
        self.in_head = False
        # Only for a request answered next: behind a pipelined one, the 100 would land inside its answer
        # (clients send the body anyway after a short wait).
        if (
            not self.busy
            and not self.pending
            and self.transport is not None
            and (find_header(self.headers, b"expect") or "").lower() == "100-continue"
        ):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.server.body_limit:
            self.refuse(BodyTooLarge(f"the request body exceeds the limit of {self.server.body_limit} bytes"))
            raise httptools.HttpParserError("body too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        req = Request(
            self,
            parser.get_method().decode("latin-1"),
            b"".join(self.url).decode("latin-1"),
            self.headers,
            b"".join(self.body),
            parser.get_http_version(),
            parser.should_keep_alive(),
        )
        self.pending.append(req)
        if self.worker is None:
            self.worker = self.server.loop.create_task(self.run())
        elif self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)
        if len(self.pending) >= PIPELINE_MAX and self.transport is not None:
            self.transport.pause_reading()  # pipelined too far ahead of the answers
            self.reading = False

    # ---- answering -----------------------------------------------------------------------------
    async def run(self) -> None:
        """The connection's worker: answers pending requests in order until the connection ends."""
        try:
            while not self.closed:
                if not self.pending:
                    if self.refused:  # nothing more will be read (an error or an upgrade): done
                        self.close()
                        return
                    self.wakeup = self.server.loop.create_future()
                    await self.wakeup
                    continue
                req = self.pending.popleft()
                if not self.reading and self.transport is not None:
                    self.transport.resume_reading()
                    self.reading = True
                self.busy = True
                if not await self.answer(req):
                    return
                self.busy = False
        except asyncio.CancelledError:
            return  # the client left: connection_lost cancelled the worker (and so the handler)

    async def answer(self, req: Request) -> bool:
        """Run the handler for ``req`` and send its answer; False when the connection is done after it."""
        try:
            answer = await self.server.handler(req)
        except Exception:
            log.exception("handler failed on %s %s", req.method, req.path)
            if req.streamed:  # the status went out already: cutting the stream short is all that is left
                self.close()
                return False
            answer = Response(500, envelope("internal gateway error", "server_error", "internal_error"))
        if self.closed:
            return False
        if isinstance(answer, Response):
            body = answer.body
            data = head(
                answer.status,
                answer.content_type,
                b"Content-Length: %d\r\n%b" % (len(body), answer.headers),
                req.keep_alive,
            )
            if req.method == "HEAD":  # the length of the body that GET would get, and no body
                self.write(data)
            elif len(body) < 65536:
                self.write(data + body)
            else:
                self.write(data)
                self.write(body)
        else:
            await answer.end()
        self.last_active = time.monotonic()
        if not req.keep_alive:
            self.close()
            return False
        return True

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.paused and not self.closed:
            self.drained = self.server.loop.create_future()
            await self.drained

    def refuse(self, e: GatewayError) -> None:
        """Answer ``e`` and close: what is left of the request cannot be read reliably."""
        self.refused = True
        self.pending.clear()
        if self.server.refused is not None:
            self.server.refused(e)
        if not self.busy:  # else the answer in progress comes first; then the worker closes the connection
            self.write(head(e.status, "application/json", b"Content-Length: %d\r\n" % len(e.body()), False))
            self.write(e.body())
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class Server:
    """Listens and sweeps idle keep-alive connections; ``await Server(handler).start(host, port)``."""

    def __init__(
        self,
        handler: Handler,
        body_limit: int,
        keepalive_s: float = 75.0,
        refused: Callable[[GatewayError], None] | None = None,
    ) -> None:
        self.handler = handler
        self.refused = refused  # told of each request answered by the server itself (413, 431, 400)
        self.body_limit = body_limit
        self.keepalive_s = keepalive_s
        self.conns: set[Connection] = set()
        self.server: asyncio.base_events.Server | None = None
        self.sweeper: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop  # set by start(), which runs on it

    async def start(self, host: str, port: int, **kwargs: Any) -> int:
        loop = self.loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: Connection(self), host, port, backlog=4096, reuse_address=True, **kwargs
        )
        self.sweeper = asyncio.create_task(self.sweep())
        return int(self.server.sockets[0].getsockname()[1])

    async def sweep(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.keepalive_s))
            quiet = time.monotonic() - self.keepalive_s
            for conn in list(self.conns):
                if not conn.busy and not conn.pending and conn.last_active < quiet:
                    conn.close()

    async def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sweeper
        if self.server is not None:
            self.server.close()
            for conn in list(self.conns):
                conn.close()
            await self.server.wait_closed()
