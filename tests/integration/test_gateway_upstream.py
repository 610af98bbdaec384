"""The gateway's client to engines (``llmdock.gateway.engine``, aiohttp underneath) against small raw
asyncio servers written here, each writing exact bytes: chunks passed one for one, informational
answers skipped, the three failures, a 101 refused, bounded response headers, and aborting on close.
Every test runs on asyncio and on uvloop, which is what ``llmdock serve`` runs on."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any

import pytest

from llmdock.gateway.engine import Broken, EngineClient, Reply, Silent, Unreachable, session

Run = Callable[[Coroutine[Any, Any, None]], None]
WAIT = 2.0  # the longest any single step may take before the test fails
TIMEOUT = 0.3  # read_timeout of the clients that test silence
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    if request.param == "uvloop":
        import uvloop

        return uvloop.run  # type: ignore[no-any-return]
    return asyncio.run


class Engine:
    """A raw HTTP server on a free loopback port: ``answer(engine, index, reader, writer)`` runs for each
    connection (``index`` counts them from 0) and writes exact bytes; the connection is closed after it."""

    def __init__(
        self,
        answer: Callable[[Engine, int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []  # each request as received, head and body
        self.tasks: set[asyncio.Task[Any]] = set()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Engine:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self.answer(self, index, reader, writer)
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass  # the test is over, or the client left: both are for the test to judge
        finally:
            writer.close()
            self.tasks.discard(task)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
        request = head + (await reader.readexactly(int(length[1])) if length else b"")
        self.requests.append(request)
        return request


@contextlib.asynccontextmanager
async def client(read_timeout: float = WAIT, header_bytes: int = 64 * 1024) -> AsyncIterator[EngineClient]:
    http = session(header_bytes)
    try:
        yield EngineClient(http, connect_timeout=WAIT, read_timeout=read_timeout)
    finally:
        await http.close()


async def within(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, WAIT)


async def chunks_of(reply: Reply) -> list[bytes]:
    got = []
    while (c := await within(reply.next_chunk())) is not None:
        got.append(c)
    return got


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def base(engine: Engine) -> str:
    return f"http://127.0.0.1:{engine.port}"


@pytest.mark.parametrize(
    ("first", "rest", "expected"),
    [
        (  # headers and every chunk in ONE write: still three chunks, not one
            CHUNKED + chunk(b"data: 1\n\n") + chunk(b"data: 22\n\n") + chunk(b"x") + b"0\r\n\r\n",
            b"",
            [b"data: 1\n\n", b"data: 22\n\n", b"x"],
        ),
        (CHUNKED, chunk(b"a") + chunk(b"bb") + b"0\r\n\r\n", [b"a", b"bb"]),
        (CHUNKED + b"a\r\nhello", b"world\r\n0\r\n\r\n", [b"helloworld"]),  # one chunk, two writes
        (CHUNKED + b"3;ext=1\r\nabc\r\n", b"0\r\nX-Trailer: t\r\n\r\n", [b"abc"]),
        (CHUNKED + b"0\r\n\r\n", b"", []),
    ],
    ids=["one-write", "after-headers", "split-chunk", "extension-and-trailer", "empty"],
)
def test_next_chunk_gives_each_http_chunk_as_the_engine_framed_it(
    run: Run, first: bytes, rest: bytes, expected: list[bytes]
) -> None:
    async def main() -> None:
        headers_in = asyncio.Event()

        async def answer(
            engine: Engine, _: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await engine.read_request(reader)
            writer.write(first)
            await headers_in.wait()
            writer.write(rest)
            await reader.read()

        async with Engine(answer) as engine, client() as c:
            reply = await within(c.request(base(engine), "POST", "/v1/completions", b"{}"))
            headers_in.set()
            assert await chunks_of(reply) == expected
            assert await reply.next_chunk() is None  # the end stays the end
            reply.close()

    run(main())


def test_an_informational_answer_is_skipped_and_the_connection_reused(run: Run) -> None:
    async def answer(
        engine: Engine, _: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        for n in range(2):
            await engine.read_request(reader)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" if n == 0 else b"")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nreply%d" % n)
        await reader.read()

    async def main() -> None:
        async with Engine(answer) as engine, client() as c:
            for n in range(2):
                reply = await within(c.request(base(engine), "POST", "/", b"{}"))
                assert (reply.status, await within(reply.read())) == (200, b"reply%d" % n)
                reply.close()
            assert engine.connections == 1

    run(main())


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (b"", Broken),  # closed at once
        (b"NOT HTTP AT ALL\r\n\r\n", Broken),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", Broken),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 5000 + b"\r\nContent-Length: 0\r\n\r\n", Broken),
    ],
    ids=["closed", "not-http", "switching-protocols", "header-over-the-limit"],
)
def test_an_engine_that_breaks_before_its_headers(run: Run, sent: bytes, error: type[Exception]) -> None:
    async def answer(
        engine: Engine, _: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await engine.read_request(reader)
        writer.write(sent)
        await writer.drain()

    async def main() -> None:
        async with Engine(answer) as engine, client(header_bytes=4096) as c:
            with pytest.raises(error):
                await within(c.request(base(engine), "GET", "/"))

    run(main())


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def test_a_refused_connection_is_unreachable(run: Run, closed_port: int) -> None:
    async def main() -> None:
        async with client() as c:
            with pytest.raises(Unreachable):
                await within(c.request(f"http://127.0.0.1:{closed_port}", "GET", "/"))

    run(main())


@pytest.mark.parametrize(
    ("sent", "received"),
    [(b"", None), (CHUNKED + chunk(b"first"), [b"first"])],
    ids=["before-headers", "between-chunks"],
)
def test_an_engine_that_stops_sending_is_silent(run: Run, sent: bytes, received: list[bytes] | None) -> None:
    async def answer(
        engine: Engine, _: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await engine.read_request(reader)
        writer.write(sent)
        await reader.read()

    async def main() -> None:
        async with Engine(answer) as engine, client(read_timeout=TIMEOUT) as c:
            t0 = time.monotonic()
            if received is None:
                with pytest.raises(Silent):
                    await within(c.request(base(engine), "GET", "/"))
            else:
                reply = await within(c.request(base(engine), "GET", "/"))
                got: list[bytes] = []
                with pytest.raises(Silent):
                    while (x := await within(reply.next_chunk())) is not None:
                        got.append(x)
                assert got == received
                reply.close()
            assert TIMEOUT * 0.9 <= time.monotonic() - t0 < TIMEOUT + 1.0

    run(main())


def test_an_engine_that_closes_mid_stream_is_broken_after_what_arrived(run: Run) -> None:
    async def main() -> None:
        read = asyncio.Event()

        async def answer(
            engine: Engine, _: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await engine.read_request(reader)
            writer.write(CHUNKED + chunk(b"one") + chunk(b"two"))
            await read.wait()
            writer.write(b"5\r\ntw")  # and close, mid-chunk

        async with Engine(answer) as engine, client() as c:
            reply = await within(c.request(base(engine), "GET", "/"))
            got = [await within(reply.next_chunk()), await within(reply.next_chunk())]
            read.set()
            with pytest.raises(Broken):
                await within(reply.next_chunk())
            assert got == [b"one", b"two"]
            reply.close()

    run(main())


def test_closing_a_reply_before_its_end_closes_the_engine_connection(run: Run) -> None:
    async def main() -> None:
        left = asyncio.Event()

        async def answer(
            engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await engine.read_request(reader)
            writer.write(CHUNKED + chunk(b"first"))
            with contextlib.suppress(ConnectionResetError):
                await reader.read()  # EOF: the client left
            left.set()

        async with Engine(answer) as engine, client() as c:
            reply = await within(c.request(base(engine), "GET", "/"))
            assert await within(reply.next_chunk()) == b"first"
            reply.close()
            await within(left.wait())

    run(main())


def test_the_request_goes_out_with_its_target_and_body(run: Run) -> None:
    async def answer(
        engine: Engine, _: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await engine.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.read()

    async def main() -> None:
        async with Engine(answer) as engine, client() as c:
            reply = await within(
                c.request(
                    base(engine), "POST", "/v1/x?a=%2F", b'{"m": 1}', {"Content-Type": "application/json"}
                )
            )
            assert await within(reply.read()) == b"ok"
            reply.close()
        [sent] = engine.requests
        assert sent.startswith(b"POST /v1/x?a=%2F HTTP/1.1\r\n")
        assert re.search(rb"\r\nContent-Type: application/json\r\n", sent)
        assert sent.endswith(b'\r\n\r\n{"m": 1}')

    run(main())
