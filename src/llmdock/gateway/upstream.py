"""The gateway's HTTP/1.1 client to engines: pooled keep-alive connections, httptools for parsing.

An answer is read whole (:meth:`Reply.read`) or chunk by chunk (:meth:`Reply.next_chunk`); a chunk is
exactly one HTTP chunk as the engine framed it, so SSE events that arrive together are never merged.
Closing a reply before its end aborts the connection, which is how an engine learns that the client left.

Failures, each its own exception so the proxy can answer the right status:

    Unreachable   the connection could not be made (refused, no route, timed out): safe to try another replica
    Silent        connected, but nothing arrived for ``read_timeout`` seconds (before headers or between chunks)
    Broken        the engine closed the connection or sent something that is not HTTP

A keep-alive connection the engine closed while it sat in the pool is noticed when reused (the request
gets no byte back) and the request goes once more on a fresh connection, as every HTTP client does.

Example::

    pool = Pool(connect_timeout=5, read_timeout=600)
    reply = await pool.request("127.0.0.1", 8001, "POST", "/v1/chat/completions", body)
    data = await reply.read()
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque

import httptools

Origin = tuple[str, int, bool]  # host, port, TLS
IDLE_MAX_S = 4.0  # older idle connections are dropped, not reused: uvicorn closes them after 5 s
HIGH_WATER = 64  # chunks queued for a slow client before the engine's connection stops being read


class UpstreamError(Exception):
    pass


class Unreachable(UpstreamError):
    pass


class Silent(UpstreamError):
    pass


class Broken(UpstreamError):
    pass


class Conn(asyncio.Protocol):
    """One connection to an engine, carrying one request at a time."""

    def __init__(self, pool: Pool, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.reset()
        self.failure: UpstreamError | None = None

    def reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: deque[bytes] = deque()
        self.partial: list[bytes] = []
        self.chunked = False
        self.keep_alive = False
        self.paused = False
        self.got_bytes = False
        self.has_headers = False
        self.done = False
        self.last_active = time.monotonic()

    # ---- asyncio protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self.last_active = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.fail(Broken(f"the engine's answer is not valid HTTP: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        if self.has_headers and not self.done and not self.chunked and "content-length" not in self.headers:
            self.done = True  # a body delimited by the end of the connection (HTTP/1.0 style)
            self.wake()
        elif not self.done:
            self.fail(Broken("the engine closed the connection" + (f" ({exc})" if exc else "")))

    # ---- httptools callbacks -------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self.keep_alive = self.parser.should_keep_alive()  # read now: llhttp forgets it at the message's end
        self.has_headers = True
        self.wake()

    def on_body(self, body: bytes) -> None:
        if self.chunked:
            self.partial.append(body)
        else:
            self.queue(body)

    def on_chunk_complete(self) -> None:
        if self.partial:
            self.queue(b"".join(self.partial))
            self.partial = []

    def queue(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        if len(self.chunks) >= HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True  # bounded memory for a client that reads slower than the engine writes
            self.transport.pause_reading()
        self.wake()

    def take_chunk(self) -> bytes:
        chunk = self.chunks.popleft()
        if self.paused and len(self.chunks) < HIGH_WATER // 4 and self.transport is not None:
            self.paused = False
            self.last_active = time.monotonic()  # the silence while paused was ours, not the engine's
            self.transport.resume_reading()
        return chunk

    def on_message_complete(self) -> None:
        self.done = True
        self.wake()

    # ---- the request ---------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.reset()
        self.transport.write(data)
        self.pool.watch(self)

    def fail(self, e: UpstreamError) -> None:
        if self.failure is None:
            self.failure = e
        self.abort()
        self.wake()

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self) -> None:
        if self.failure is not None:
            raise self.failure
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None
        if self.failure is not None and not self.chunks and not self.done:
            raise self.failure

    def finish(self) -> None:
        """The request is over: back to the pool when the engine's answer is complete, else abort.

        A paused connection is not pooled: the client left with chunks queued, and its socket is not read.
        """
        if self.done and self.failure is None and self.keep_alive and not self.paused:
            self.pool.busy.discard(self)
            self.pool.put(self)
        else:
            self.abort()

    def abort(self) -> None:
        self.pool.busy.discard(self)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


class Reply:
    """An engine's answer: status and headers are in; the body is read with ``read`` or ``next_chunk``."""

    __slots__ = ("conn", "headers", "status")

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.status = conn.status
        self.headers = conn.headers  # lower-case names

    async def read(self) -> bytes:
        conn = self.conn
        parts: list[bytes] = []
        while True:
            while conn.chunks:
                parts.append(conn.take_chunk())
            if conn.done:
                return b"".join(parts)
            await conn.wait()

    async def next_chunk(self) -> bytes | None:
        """The next HTTP chunk (a piece of the body when not chunked); None at the end."""
        conn = self.conn
        while not conn.chunks:
            if conn.done:
                return None
            await conn.wait()
        return conn.take_chunk()

    def close(self) -> None:
        self.conn.finish()


class Pool:
    """Idle connections per (host, port, TLS), most recently used first; and the connections carrying a
    request, watched for silence by one timer (not one per request: a cancelled timer costs uvloop a
    handle close and the loop an extra poll)."""

    def __init__(self, connect_timeout: float = 5.0, read_timeout: float = 600.0) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle: dict[Origin, list[Conn]] = {}
        self.busy: set[Conn] = set()
        self.watcher: asyncio.TimerHandle | None = None
        self.tls: ssl.SSLContext | None = None  # made on first use: it loads the system's CA store

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        body: bytes = b"",
        extra: bytes = b"",
        tls: bool = False,
    ) -> Reply:
        """Send one request and wait for the answer's status and headers. ``extra``: header lines."""
        origin = (host, port, tls)
        length = b"Content-Length: %d\r\n" % len(body) if body or method in ("POST", "PUT", "PATCH") else b""
        data = b"%b %b HTTP/1.1\r\nHost: %b:%d\r\n%b%b\r\n%b" % (
            method.encode(),
            target.encode("latin-1"),
            (f"[{host}]" if ":" in host else host).encode(),
            port,
            length,
            extra,
            body,
        )
        while True:
            conn = self.take(origin)
            reused = conn is not None
            if conn is None:
                conn = await self.connect(origin)
            conn.send(data)
            try:
                while not conn.has_headers:
                    await conn.wait()
            except Broken:
                if reused and not conn.got_bytes:
                    continue  # it had closed while idle in the pool: once more on a fresh connection
                raise
            except asyncio.CancelledError:
                conn.abort()
                raise
            return Reply(conn)

    async def connect(self, origin: Origin) -> Conn:
        loop = asyncio.get_running_loop()
        host, port, tls = origin
        if tls and self.tls is None:
            self.tls = ssl.create_default_context()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Conn(self, origin, loop),
                    host,
                    port,
                    ssl=self.tls if tls else None,
                    server_hostname=host if tls else None,
                ),
                self.connect_timeout,
            )
        except asyncio.TimeoutError:
            # Never connected, so the request was not sent: as safe to try elsewhere as a refusal.
            raise Unreachable(f"connecting took longer than {self.connect_timeout:g}s") from None
        except ssl.SSLError as e:
            raise Broken(f"TLS failed: {e}") from None
        except OSError as e:
            raise Unreachable(e.strerror or str(e)) from None
        return conn

    def watch(self, conn: Conn) -> None:
        """``conn`` sent a request: it fails Silent once nothing arrives for ``read_timeout``."""
        self.busy.add(conn)
        if self.watcher is None:  # else it fires no later than this request's deadline
            self.watcher = conn.loop.call_later(self.read_timeout, self.check_silence, conn.loop)

    def check_silence(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the connections silent for too long; come back at the next deadline while any is busy."""
        self.watcher = None
        now, timeout = time.monotonic(), self.read_timeout
        deadlines = []
        for conn in list(self.busy):
            if conn.done:  # the whole answer is in: nothing more is awaited from the engine
                continue
            if conn.paused:  # we stopped reading for a slow client: the engine is not the one being silent
                deadlines.append(now + timeout)
            elif now - conn.last_active >= timeout:
                conn.fail(Silent(f"nothing arrived for {timeout:g}s"))
            else:
                deadlines.append(conn.last_active + timeout)
        if deadlines:
            self.watcher = loop.call_later(min(deadlines) - now, self.check_silence, loop)

    def take(self, origin: Origin) -> Conn | None:
        idle = self.idle.get(origin)
        fresh = time.monotonic() - IDLE_MAX_S
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                if conn.last_active > fresh:
                    return conn
                conn.abort()
        return None

    def put(self, conn: Conn) -> None:
        self.idle.setdefault(conn.origin, []).append(conn)

    def forget(self, conn: Conn) -> None:
        idle = self.idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None
        for idle in self.idle.values():
            for conn in idle:
                conn.abort()
        self.idle.clear()
