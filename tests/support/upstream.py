"""A small, fast OpenAI-compatible upstream for gateway load and fault tests (raw asyncio, HTTP/1.1).

It answers ``GET /health``, ``GET /v1/models`` and ``POST /v1/*``: JSON, or with ``"stream": true`` an SSE
stream of ``chunks`` events, each written as its own HTTP chunk. A request steers faults with an extra
body field the gateway passes through untouched::

    {"model": "mock", "stream": true, "mock": {"delay": 0.01, "die_after": 10, "hang": true,
                                              "first_delay": 2, "status": 500, "hold": true}}

``delay``: seconds between chunks; ``die_after``: abort the connection after N chunks; ``hang``: never
answer; ``first_delay``: wait before the headers; ``status``: answer with that error status; ``hold``: a
stream sends its first chunk, then waits until :meth:`Upstream.release` and sends the rest at once (no
``delay``), so a test decides how long streams stay open instead of guessing from their pace::

    with UpstreamThread() as up:
        ...                                   # start streams with {"mock": {"hold": true}}
        # poll until up.held_streams == N: all of them are open and have sent their first chunk
        up.release()                          # from any thread; streams held later wait for the next one

Use :class:`UpstreamThread` in tests (``with UpstreamThread() as up: up.url``), or run it as a program for
benchmarks: ``python -m tests.support.upstream --port 9001``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from typing import Any, Generic, Protocol, TypeVar

CHUNKS = 64


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Upstream:
    def __init__(self, models: tuple[str, ...] = ("mock",), chunks: int = CHUNKS) -> None:
        self.models = models
        self.chunks = chunks
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []  # request targets (path and query) of the POSTs, as received
        self.keep_bodies = True
        self.api_key: str | None = None  # set: /v1/* needs `Authorization: Bearer KEY`, as vLLM's --api-key
        self.active_streams = 0
        self.held_streams = 0  # streams waiting (after their first chunk) for release()
        self.lost_streams = 0  # streams whose client went away before the end
        self.server: asyncio.base_events.Server | None = None
        self.conns: set[_Conn] = set()
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._release = asyncio.Event()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _Conn(self), host, port, backlog=4096, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in list(self.conns):
                if conn.transport is not None:
                    conn.transport.abort()
            await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def release(self) -> None:
        """Let every held stream go on. Safe from any thread: it is done on the upstream's own loop."""
        assert self.loop is not None, "start() first"
        self.loop.call_soon_threadsafe(self._release_now)

    def _release_now(self) -> None:
        self._release.set()
        self._release = asyncio.Event()  # streams held from now on wait for the next release()


class _Conn(asyncio.Protocol):
    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.up.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.up.conns.discard(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.parse()

    def parse(self) -> None:
        if self.task is not None and not self.task.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].decode("latin-1").split("\r\n")
        method, path, _ = head[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        length = int(headers.get("content-length", "0"))
        if len(self.buf) < end + 4 + length:
            return
        body = self.buf[end + 4 : end + 4 + length]
        self.buf = self.buf[end + 4 + length :]
        key = self.up.api_key
        if key and path.startswith("/v1") and headers.get("authorization") != f"Bearer {key}":
            self.send(401, b'{"error": "Unauthorized"}')
            return self.parse()
        self.task = asyncio.ensure_future(self.respond(method, path, body))
        self.task.add_done_callback(lambda _: self.parse())

    def send(self, status: int, body: bytes, ctype: bytes = b"application/json") -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (status, ctype, len(body), body)
        )

    async def respond(self, method: str, path: str, raw: bytes) -> None:
        up = self.up
        if path == "/health":
            return self.send(200, b"{}")
        if path == "/v1/models":
            return self.send(
                200, json.dumps({"data": [{"id": m, "object": "model"} for m in up.models]}).encode()
            )
        if up.keep_bodies:
            up.paths.append(path)
        try:
            body = json.loads(raw)
        except ValueError:
            return self.send(400, b'{"error": {"message": "bad json"}}')
        if up.keep_bodies:
            up.bodies.append(body)
        mock = body.get("mock") or {}
        if mock.get("hang"):
            await asyncio.Event().wait()
        if mock.get("first_delay"):
            await asyncio.sleep(mock["first_delay"])
        if mock.get("status"):
            return self.send(int(mock["status"]), b'{"error": {"message": "mock failure", "type": "x"}}')
        model = body.get("model", "mock")
        if not body.get("stream"):
            return self.send(200, _completion(model, up.chunks))
        await self.stream(model, body, mock)

    async def stream(self, model: str, body: dict[str, Any], mock: dict[str, Any]) -> None:
        t = self.transport
        assert t is not None
        up = self.up
        up.active_streams += 1
        done = False
        try:
            t.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            delay = float(mock.get("delay", 0))
            die_after = mock.get("die_after")
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            for i in range(up.chunks):
                if die_after is not None and i >= die_after:
                    t.abort()
                    return
                event = {"id": "c1", "object": "chat.completion.chunk", "model": model}
                event["choices"] = [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]
                if usage:
                    event["usage"] = None
                t.write(_chunk(b"data: " + json.dumps(event).encode() + b"\n\n"))
                if i == 0 and mock.get("hold"):
                    await self.hold()
                    delay = 0.0
                elif delay:
                    await asyncio.sleep(delay)
                elif i % 16 == 15:
                    await asyncio.sleep(0)
                    while t.get_write_buffer_size() > 1 << 20 and not self.closed:
                        await asyncio.sleep(0.005)  # a reader that lags: wait, as an engine does
                if self.closed:
                    return
            if usage:
                u = {
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 5,
                        "completion_tokens": up.chunks,
                        "total_tokens": 5 + up.chunks,
                    },
                }
                t.write(_chunk(b"data: " + json.dumps(u).encode() + b"\n\n"))
            t.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            done = True
        finally:
            up.active_streams -= 1
            if not done and self.closed:
                up.lost_streams += 1

    async def hold(self) -> None:
        up = self.up
        up.held_streams += 1
        try:
            await up._release.wait()
        finally:
            up.held_streams -= 1


def _completion(model: str, n: int) -> bytes:
    return json.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n},
        }
    ).encode()


class Served(Protocol):
    """A loopback server run by :class:`ServerThread`: started and stopped on its loop."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


S = TypeVar("S", bound=Served)


class ServerThread(Generic[S]):
    """Run a loopback server on its own event loop in a daemon thread (for tests)."""

    def __init__(self, server: S) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> S:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self.server

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening, drop every connection and end the thread; again is a no-op.

        Call it inside the ``with`` block to take a replica away while the test goes on.
        """
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class UpstreamThread(ServerThread[Upstream]):
    """Run an :class:`Upstream` on its own event loop in a daemon thread (for tests)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(Upstream(**kwargs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--chunks", type=int, default=CHUNKS)
    args = parser.parse_args()

    async def serve() -> None:
        up = Upstream(chunks=args.chunks)
        up.keep_bodies = False
        await up.start(port=args.port)
        print(f"upstream on {up.url}", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())


if __name__ == "__main__":
    main()
