"""The gateway's HTTP server: uvicorn with h11, and the limits of :mod:`llmdock.gateway.limits` on top.

HTTP/1.1 parsing, keep-alive, pipelining, chunked bodies, ``Expect: 100-continue``, HEAD, back-pressure
on writes and the ``Date`` header are uvicorn's and h11's (benchmarks/gateway/NOTES.md says why these
two). What this module adds is policy, in a subclass of uvicorn's h11 protocol that keeps to its hooks:

- connection caps, per gateway (503) and per client address (429), answered with an error envelope
  and a close;
- deadlines that uvicorn does not have: the request head (408), the body (408), a connection that never
  sends a request (closed), and a client that stops reading an answer (aborted, which cancels the
  handler and so the engine's request). One sweeper checks every connection twice a second;
- h11's refusals (431 header size, 501 transfer coding, 400 for the rest) as error envelopes;
- one socket write per loop iteration (:class:`Coalescing`): uvicorn writes an answer's head and body
  with two ``write`` calls, each a syscall and a wake-up of the client; they now leave together.

Example::

    server = Server(app, Limits())
    port = await server.start("127.0.0.1", 8000)
    ...
    await server.stop_accepting()
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import socket
import sys
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from llmdock.errors import LlmdockError
from llmdock.gateway.limits import Limits
from llmdock.gateway.wire import (
    BadRequest,
    GatewayError,
    HeadersTooLarge,
    NotImplementedCoding,
    RequestTimeout,
    TooManyConnections,
    Unavailable,
)

log = logging.getLogger("llmdock.gateway")
SWEEP_S = 0.5
REASON_CHARS = 120  # of h11's reason for a refusal, quoted back to the client
QUOTED = re.compile(r"""b(['"]).*""", re.S)

Refused = Callable[[GatewayError], None]


def refusal(e: GatewayError) -> bytes:
    """A whole HTTP/1.1 answer carrying ``e``'s envelope, for a connection that is then closed."""
    body = e.body()
    return (
        b"HTTP/1.1 %d %b\r\ndate: %b\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%b"
        % (e.status, e.phrase.encode(), formatdate(usegmt=True).encode(), len(body), body)
    )


class Guard:
    """State the connections of one server share: limits, counts per client address, the refusal hook."""

    def __init__(self, limits: Limits, refused: Refused | None) -> None:
        self.limits = limits
        self.refused = refused
        self.per_ip: dict[str, int] = {}
        self.count = 0

    def refuse(self, transport: asyncio.Transport, e: GatewayError) -> None:
        if self.refused is not None:
            self.refused(e)
        transport.write(refusal(e))
        transport.close()


class Coalescing:
    """A transport whose writes within one turn of the event loop reach the socket as one ``write``.

    Bytes are neither reordered nor held past the current turn (the flush is the next callback), and
    HTTP framing is untouched: two SSE events that arrive in one turn keep their own chunk each and
    share a syscall. ``close`` flushes first; ``abort`` drops what is pending, as the real one does.
    """

    __slots__ = ("loop", "parts", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self.parts:
            self.loop.call_soon(self.flush)
        self.parts.append(data)

    def flush(self) -> None:
        parts, self.parts = self.parts, []
        if parts and not self.transport.is_closing():
            self.transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.parts = []
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, …
        return getattr(self.transport, name)


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with the gateway's caps and deadlines (see the module docstring)."""

    guard: Guard  # set on the subclass :func:`protocol_class` makes

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        guard = self.guard
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if isinstance(peer, tuple) else "-"
        self.counted = False
        self.state: Any = h11.IDLE
        self.since = time.monotonic()  # when `state` began
        self.write_paused_at: float | None = None
        limits = guard.limits
        if guard.count >= limits.max_connections:
            self.transport = transport
            return guard.refuse(
                transport,
                Unavailable(f"the gateway holds its limit of {limits.max_connections} connections; retry"),
            )
        if guard.per_ip.get(self.ip, 0) >= limits.max_connections_per_ip:
            self.transport = transport
            return guard.refuse(
                transport,
                TooManyConnections(
                    f"{self.ip} holds {limits.max_connections_per_ip} connections, the most one address may"
                ),
            )
        self.counted = True
        guard.count += 1
        guard.per_ip[self.ip] = guard.per_ip.get(self.ip, 0) + 1
        super().connection_made(Coalescing(transport))  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.counted:
            return
        self.counted = False
        guard = self.guard
        guard.count -= 1
        left = guard.per_ip[self.ip] - 1
        if left:
            guard.per_ip[self.ip] = left
        else:
            del guard.per_ip[self.ip]
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.note_state()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.note_state()

    def note_state(self) -> None:
        state = self.conn.their_state
        if state is not self.state:
            self.state, self.since = state, time.monotonic()

    def pause_writing(self) -> None:
        self.write_paused_at = time.monotonic()
        if self.counted:  # a refused connection has no flow control
            super().pause_writing()

    def resume_writing(self) -> None:
        self.write_paused_at = None
        if self.counted:
            super().resume_writing()

    def send_400_response(self, msg: str) -> None:
        """h11 refused the request (uvicorn calls this inside its ``except``): answer why, and close."""
        exc = sys.exc_info()[1]
        hint = getattr(exc, "error_status_hint", 400)
        reason = str(exc) if exc is not None else msg
        # h11 quotes the offending bytes (b'…'), which may carry a key: say what, not the line
        reason = QUOTED.sub("", reason).rstrip(": ")[:REASON_CHARS] or "unparsable"
        error: GatewayError
        if hint == 431:
            error = HeadersTooLarge(
                f"the request line and headers exceed {self.guard.limits.header_bytes} bytes"
            )
        elif hint == 501:
            error = NotImplementedCoding(f"{reason}; send the body plainly or with chunked alone")
        else:
            error = BadRequest(f"malformed HTTP request: {reason}")
        self.guard.refuse(self.transport, error)

    def sweep(self, now: float) -> None:
        """Enforce the deadlines; called about twice a second for every connection."""
        limits = self.guard.limits
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.write_paused_at is not None and now - self.write_paused_at > limits.send_timeout_s:
            log.info("%s read nothing for %gs: connection aborted", self.ip, limits.send_timeout_s)
            transport.abort()
            return
        state, waited = self.state, now - self.since
        idle = self.conn.our_state is h11.IDLE or self.conn.our_state is h11.DONE
        if state is h11.IDLE and idle:
            if self.conn.trailing_data[0]:  # part of a request head is in
                if waited > limits.header_timeout_s:
                    self.guard.refuse(
                        transport,
                        RequestTimeout(
                            f"the request headers did not arrive within {limits.header_timeout_s:g}s"
                        ),
                    )
            elif waited > limits.idle_timeout_s:
                transport.close()
        elif state is h11.SEND_BODY and waited > limits.body_timeout_s:
            self.guard.refuse(
                transport,
                RequestTimeout(f"the request body did not arrive within {limits.body_timeout_s:g}s"),
            )


def protocol_class(guard: Guard) -> type[GuardedProtocol]:
    return type("Protocol", (GuardedProtocol,), {"guard": guard})


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or an LlmdockError that says what to do when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(4096)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise LlmdockError(
                f"port {port} on {host} is already in use",
                f"stop what listens there (`ss -ltnp 'sport = :{port}'`), or pick another with --port",
            ) from None
        raise LlmdockError(
            f"cannot listen on {host}:{port}: {e.strerror or e}", "check --host and --port"
        ) from None
    sock.setblocking(False)
    return sock


class Server:
    """uvicorn's server parts on the caller's event loop: no signal handling, no logging set-up, no
    lifespan (the gateway starts and stops its own parts). ``stop_accepting`` then ``close``."""

    def __init__(self, app: Any, limits: Limits, refused: Refused | None = None) -> None:
        self.guard = Guard(limits, refused)
        self.config = uvicorn.Config(
            app,
            http=protocol_class(self.guard),
            ws="none",
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_keep_alive=int(max(1, limits.idle_timeout_s)),
            h11_max_incomplete_event_size=limits.header_bytes,
            proxy_headers=False,
        )
        self.config.load()
        self.uvicorn = uvicorn.Server(self.config)
        self.state: ServerState = self.uvicorn.server_state
        self.servers: list[asyncio.base_events.Server] = []
        self.ticker: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> int:
        """Serve on ``sock`` (from :func:`bind`), or bind ``host:port`` now; the port it listens on."""
        sock = sock or bind(host, port)
        loop = asyncio.get_running_loop()
        config, state = self.config, self.state

        def make() -> asyncio.Protocol:
            return config.http_protocol_class(config=config, server_state=state, app_state={})  # type: ignore[call-arg]

        self.tick()
        self.servers = [await loop.create_server(make, sock=sock, backlog=4096)]
        self.ticker = asyncio.create_task(self.run_ticker())
        return int(sock.getsockname()[1])

    def tick(self) -> None:
        self.state.default_headers = [(b"date", formatdate(usegmt=True).encode())]

    async def run_ticker(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(SWEEP_S)
            ticks += 1
            if ticks % 2 == 0:
                self.tick()
            now = time.monotonic()
            for conn in list(self.state.connections):
                if isinstance(conn, GuardedProtocol):
                    try:
                        conn.sweep(now)
                    except Exception:  # one odd connection must not stop the deadlines of all
                        log.exception("sweeping a connection failed")

    @property
    def busy(self) -> int:
        """Requests being answered now."""
        return len(self.state.tasks)

    async def stop_accepting(self) -> None:
        """Close the listening socket and every idle connection; requests in flight go on."""
        for server in self.servers:
            server.close()
        for conn in list(self.state.connections):
            with contextlib.suppress(Exception):
                conn.shutdown()

    async def close(self) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.ticker
        for task in list(self.state.tasks):
            task.cancel()
        if self.state.tasks:
            await asyncio.wait(list(self.state.tasks), timeout=2)
        for conn in list(self.state.connections):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()
        for server in self.servers:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
