"""Minimal HTTP/1.1 clients for the gateway benchmark: a blocking one for latency at concurrency 1, and an
open-loop asyncio one for rate ladders. Both keep connections alive and parse just enough HTTP."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field


def request_bytes(port: int, path: str, body: bytes, key: str | None) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _complete(buf: bytes) -> int:
    """Length of the first complete response in ``buf``, or 0."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return 0
    head = buf[:end].lower()
    i = head.find(b"content-length:")
    if i >= 0:
        n = int(head[i + 15 :].split(b"\r\n", 1)[0])
        return end + 4 + n if len(buf) >= end + 4 + n else 0
    j = buf.find(b"\r\n0\r\n\r\n", end)
    return j + 7 if j >= 0 else 0


@dataclass
class Reply:
    status: int
    total_s: float
    first_s: float  # to the first body byte after the headers
    http_chunks: list[bytes] = field(default_factory=list)


class SyncClient:
    """One keep-alive connection; ``send`` returns timing and, for chunked bodies, each HTTP chunk."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self.sock.close()

    def send(self, raw: bytes) -> Reply:
        t0 = time.perf_counter()
        self.sock.sendall(raw)
        buf = b""
        first = 0.0
        while True:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("closed")
            buf += data
            end = buf.find(b"\r\n\r\n")
            if not first and end >= 0 and len(buf) > end + 4:
                first = time.perf_counter() - t0
            n = _complete(buf)
            if n:
                break
        total = time.perf_counter() - t0
        status = int(buf[9:12])
        head_end = buf.find(b"\r\n\r\n") + 4
        chunks: list[bytes] = []
        if b"transfer-encoding: chunked" in buf[:head_end].lower():
            pos = head_end
            while True:
                line_end = buf.find(b"\r\n", pos)
                size = int(buf[pos:line_end], 16)
                if size == 0:
                    break
                chunks.append(buf[line_end + 2 : line_end + 2 + size])
                pos = line_end + 2 + size + 2
        return Reply(status, total, first or total, chunks)


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = _complete(self.buf)
        if n and self.waiter is not None and not self.waiter.done():
            status = int(self.buf[9:12])
            self.buf = self.buf[n:]
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("lost"))


async def open_loop(
    port: int, raw: bytes, rate: float, seconds: float, max_conns: int = 2000
) -> dict[str, float]:
    """Fire ``rate`` requests a second for ``seconds``; latency counts from each request's scheduled time."""
    loop = asyncio.get_running_loop()
    idle: list[_Conn] = []
    latencies: list[float] = []
    errors = 0
    conns = 0
    pending: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        nonlocal errors, conns
        if idle:
            conn = idle.pop()
        else:
            conns += 1
            _, conn = await loop.create_connection(_Conn, "127.0.0.1", port)
        conn.waiter = loop.create_future()
        assert conn.transport is not None
        conn.transport.write(raw)
        try:
            status = await asyncio.wait_for(conn.waiter, 10)
        except (asyncio.TimeoutError, ConnectionError):
            errors += 1
            conn.transport.abort()
            return
        idle.append(conn)
        if status != 200:
            errors += 1
            return
        latencies.append(time.perf_counter() - scheduled)

    total = int(rate * seconds)
    t0 = time.perf_counter()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)
        while sent < due:
            if conns - len(idle) >= max_conns and not idle:
                break
            task = asyncio.ensure_future(one(t0 + sent / rate))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        await asyncio.sleep(0.0005)
    if pending:
        await asyncio.wait(pending, timeout=15)
    for c in idle:
        if c.transport is not None:
            c.transport.close()
    latencies.sort()
    n = len(latencies)
    return {
        "rate": rate,
        "sent": total,
        "ok": n,
        "errors": total - n,
        "p50_ms": latencies[n // 2] * 1000 if n else float("inf"),
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else float("inf"),
        "achieved": n / (time.perf_counter() - t0),
    }
