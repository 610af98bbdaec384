"""The gateway's pooled HTTP/1.1 client to engines (``llmdock.gateway.upstream``) against small raw
asyncio servers written here, each writing exact bytes: the three body framings, chunks passed one for one,
connection reuse and its failure modes, the three errors, aborting on close, and backpressure. Every test
runs on asyncio and on uvloop, which is what ``llmdock serve`` runs on."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any

import pytest

from llmdock.gateway import upstream
from llmdock.gateway.upstream import HIGH_WATER, Broken, Pool, Reply, Silent, Unreachable

Run = Callable[[Coroutine[Any, Any, None]], None]
WAIT = 2.0  # the longest any single step may take before the test fails
TIMEOUT = 0.3  # read_timeout of the pools that test silence
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
async def pooled(read_timeout: float = WAIT) -> AsyncIterator[Pool]:
    pool = Pool(connect_timeout=WAIT, read_timeout=read_timeout)
    try:
        yield pool
    finally:
        pool.close()


async def within(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, WAIT)


async def until(check: Callable[[], bool]) -> None:
    """Poll ``check`` on the running loop until it holds; fail after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def chunks_of(reply: Reply) -> list[bytes]:
    got = []
    while (c := await within(reply.next_chunk())) is not None:
        got.append(c)
    return got


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def length_answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


async def answer_every_request(
    engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Keep-alive: answer each request on the connection with the connection's index, until EOF."""
    while not reader.at_eof():
        with contextlib.suppress(asyncio.IncompleteReadError):
            await engine.read_request(reader)
            writer.write(length_answer(b"conn %d" % index))


@pytest.mark.parametrize(
    ("method", "target", "body", "extra", "sent"),
    [
        ("GET", "/v1/models", b"", b"", b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
        (
            "POST",
            "/v1/chat/completions?x=1",
            b'{"model": "m"}',
            b"Content-Type: application/json\r\n",
            b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 14\r\n"
            b'Content-Type: application/json\r\n\r\n{"model": "m"}',
        ),
        (
            "POST",
            "/empty",
            b"",
            b"",
            b"POST /empty HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n",
        ),
    ],
    ids=["get", "post", "post-empty"],
)
def test_a_request_goes_out_as_exact_bytes_and_a_length_body_is_read(
    run: Run, method: str, target: str, body: bytes, extra: bytes, sent: bytes
) -> None:
    async def answer(
        engine: Engine, _: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await engine.read_request(reader)
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-Request-ID: abc\r\n\r\nhello")
        await reader.read()

    async def main() -> None:
        async with Engine(answer) as engine, pooled() as pool:
            reply = await within(pool.request("127.0.0.1", engine.port, method, target, body, extra))
            assert (reply.status, reply.headers) == (201, {"content-length": "5", "x-request-id": "abc"})
            assert await within(reply.read()) == b"hello"
            reply.close()
            assert engine.requests == [sent.replace(b"{port}", b"%d" % engine.port)]

    run(main())


@pytest.mark.parametrize(
    ("first", "rest", "expected"),
    [
        (  # headers and every chunk in ONE write: still three chunks, not one
            CHUNKED + chunk(b"data: 1\n\n") + chunk(b"data: 22\n\n") + chunk(b"x") + b"0\r\n\r\n",
            b"",
            [b"data: 1\n\n", b"data: 22\n\n", b"x"],
        ),
        (CHUNKED, chunk(b"a") + chunk(b"bb") + b"0\r\n\r\n", [b"a", b"bb"]),
        (  # one chunk split over two writes is one chunk
            CHUNKED + b"a\r\nhello",
            b"world\r\n0\r\n\r\n",
            [b"helloworld"],
        ),
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
            await headers_in.wait()  # `first` has been read by the client: `rest` comes separately
            writer.write(rest)
            await reader.read()

        async with Engine(answer) as engine, pooled() as pool:
            reply = await within(pool.request("127.0.0.1", engine.port, "POST", "/v1/completions", b"{}"))
            headers_in.set()
            assert await chunks_of(reply) == expected
            assert await reply.next_chunk() is None  # the end stays the end
            reply.close()

    run(main())


@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
@pytest.mark.parametrize("whole", [True, False], ids=["read", "next_chunk"])
def test_a_body_ended_by_closing_the_connection(run: Run, version: bytes, whole: bool) -> None:
    async def main() -> None:
        headers_in = asyncio.Event()

        async def answer(
            engine: Engine, _: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await engine.read_request(reader)
            writer.write(version + b" 200 OK\r\nContent-Type: text/plain\r\n\r\nsome")
            await headers_in.wait()
            writer.write(b"more")  # then the connection closes: that is the end of the body

        async with Engine(answer) as engine, pooled() as pool:
            reply = await within(pool.request("127.0.0.1", engine.port, "GET", "/"))
            headers_in.set()
            if whole:
                assert await within(reply.read()) == b"somemore"
            else:
                assert await chunks_of(reply) == [b"some", b"more"]
            reply.close()
            assert not pool.idle.get(("127.0.0.1", engine.port, False))

    run(main())


@pytest.mark.parametrize(
    ("framing", "idle_max_s", "connections"),
    [
        ("length", upstream.IDLE_MAX_S, 1),
        ("chunked", upstream.IDLE_MAX_S, 1),
        ("length", 0.0, 2),  # idle longer than IDLE_MAX_S: dropped, not reused
    ],
)
def test_a_connection_is_reused_for_the_next_request(
    run: Run, monkeypatch: pytest.MonkeyPatch, framing: str, idle_max_s: float, connections: int
) -> None:
    monkeypatch.setattr(upstream, "IDLE_MAX_S", idle_max_s)

    async def answer(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while not reader.at_eof():
            with contextlib.suppress(asyncio.IncompleteReadError):
                await engine.read_request(reader)
                body = b"conn %d" % index
                writer.write(
                    CHUNKED + chunk(body) + b"0\r\n\r\n" if framing == "chunked" else length_answer(body)
                )

    async def main() -> None:
        async with Engine(answer) as engine, pooled() as pool:
            for _ in range(2):
                reply = await within(pool.request("127.0.0.1", engine.port, "GET", "/"))
                assert await within(reply.read()) == b"conn %d" % (engine.connections - 1)
                reply.close()
            assert (engine.connections, len(engine.requests)) == (connections, 2)

    run(main())


@pytest.mark.parametrize(
    "when",
    [
        "after-answering",  # the client may notice while the connection sits in the pool
        "on-the-next-request",  # the request goes out on a dead connection, which the engine then closes
    ],
)
def test_a_pooled_connection_the_engine_closed_is_not_an_error(run: Run, when: str) -> None:
    async def answer(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await engine.read_request(reader)
        writer.write(length_answer(b"conn %d" % index))
        if index == 0:
            if when == "on-the-next-request":
                await engine.read_request(reader)  # ... and close without a byte of answer
            return
        await reader.read()

    async def main() -> None:
        async with Engine(answer) as engine, pooled() as pool:
            first = await within(pool.request("127.0.0.1", engine.port, "POST", "/", b"1"))
            assert await within(first.read()) == b"conn 0"
            first.close()
            second = await within(pool.request("127.0.0.1", engine.port, "POST", "/", b"2"))
            assert await within(second.read()) == b"conn 1"
            second.close()
            sent = [r[-1:] for r in engine.requests]
            assert sent == ([b"1", b"2", b"2"] if when == "on-the-next-request" else [b"1", b"2"])

    run(main())


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening, so connecting to it is refused for as long as it is held."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def test_a_refused_connection_is_unreachable(run: Run, closed_port: int) -> None:
    async def main() -> None:
        async with pooled() as pool:
            with pytest.raises(Unreachable):
                await within(pool.request("127.0.0.1", closed_port, "GET", "/"))
            assert not pool.idle.get(("127.0.0.1", closed_port, False))

    run(main())


@pytest.mark.parametrize(
    ("sent", "received"),
    [
        (b"", None),  # accepted, never answered: request() itself is Silent
        (CHUNKED + chunk(b"first"), [b"first"]),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcd", [b"abcd"]),
    ],
    ids=["before-headers", "between-chunks", "mid-length-body"],
)
def test_an_engine_that_stops_sending_is_silent_after_read_timeout(
    run: Run, sent: bytes, received: list[bytes] | None
) -> None:
    async def answer(
        engine: Engine, _: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await engine.read_request(reader)
        writer.write(sent)
        await reader.read()  # says nothing more until the client leaves

    async def main() -> None:
        async with Engine(answer) as engine, pooled(read_timeout=TIMEOUT) as pool:
            t0 = time.monotonic()
            if received is None:
                with pytest.raises(Silent):
                    await within(pool.request("127.0.0.1", engine.port, "GET", "/"))
            else:
                reply = await within(pool.request("127.0.0.1", engine.port, "GET", "/"))
                got: list[bytes] = []
                with pytest.raises(Silent):
                    while (c := await within(reply.next_chunk())) is not None:
                        got.append(c)
                assert got == received
                reply.close()
            assert TIMEOUT * 0.95 <= time.monotonic() - t0 < TIMEOUT + 1.0

    run(main())


def test_silence_is_judged_per_connection_by_one_timer(run: Run) -> None:
    """Three requests at once: one engine keeps sending past the timeout, one stops after a while, one
    finishes at once. Only the one that stopped fails, a timeout after its last chunk; once none is in
    flight the timer stops coming back, so an idle gateway is not woken."""

    async def answer(
        engine: Engine, _: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        request = await engine.read_request(reader)
        if b"/done" in request:
            writer.write(length_answer(b"ok"))
            await reader.read()
            return
        writer.write(CHUNKED)
        ticks = 8 if b"/steady" in request else 3
        for i in range(ticks):  # an event every TIMEOUT / 2: never silent for a whole TIMEOUT
            writer.write(chunk(b"tick %d" % i))
            await asyncio.sleep(TIMEOUT / 2)
        if b"/steady" in request:
            writer.write(b"0\r\n\r\n")
        await reader.read()

    async def main() -> None:
        async with Engine(answer) as engine, pooled(read_timeout=TIMEOUT) as pool:
            steady, stops, done = [
                await within(pool.request("127.0.0.1", engine.port, "GET", path))
                for path in ("/steady", "/stops", "/done")
            ]
            assert await within(done.read()) == b"ok"
            done.close()
            assert await chunks_of(steady) == [b"tick %d" % i for i in range(8)]  # 4 × TIMEOUT, no failure
            steady.close()
            got: list[bytes] = []
            with pytest.raises(Silent):
                while (c := await within(stops.next_chunk())) is not None:
                    got.append(c)
            stops.close()
            assert got == [b"tick 0", b"tick 1", b"tick 2"]  # not failed before its last chunk came
            assert not pool.busy
            await until(lambda: pool.watcher is None)  # it fires once more and finds nothing to watch

    run(main())


@pytest.mark.parametrize(
    "sent",
    [b"", b"NOT HTTP AT ALL\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Le"],
    ids=["closed-at-once", "not-http", "closed-mid-headers"],
)
def test_an_engine_that_breaks_before_its_headers(run: Run, sent: bytes) -> None:
    async def answer(
        engine: Engine, _: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await engine.read_request(reader)
        writer.write(sent)

    async def main() -> None:
        async with Engine(answer) as engine, pooled() as pool:
            with pytest.raises(Broken):
                await within(pool.request("127.0.0.1", engine.port, "GET", "/"))
            assert engine.connections == 1  # a fresh connection's failure is not retried

    run(main())


@pytest.mark.parametrize(
    ("sent", "delivered"),
    [
        (CHUNKED + chunk(b"one") + chunk(b"two"), [b"one", b"two"]),
        (CHUNKED + chunk(b"one") + b"5\r\ntw", [b"one"]),  # a chunk cut in half is not delivered
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcd", [b"abcd"]),
    ],
    ids=["chunked", "chunked-mid-chunk", "length"],
)
@pytest.mark.parametrize("whole", [True, False], ids=["read", "next_chunk"])
def test_an_engine_that_closes_mid_body_is_broken_after_what_arrived(
    run: Run, sent: bytes, delivered: list[bytes], whole: bool
) -> None:
    async def answer(
        engine: Engine, _: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await engine.read_request(reader)
        writer.write(sent)  # and close

    async def main() -> None:
        async with Engine(answer) as engine, pooled() as pool:
            reply = await within(pool.request("127.0.0.1", engine.port, "GET", "/"))
            got: list[bytes] = []
            with pytest.raises(Broken):
                if whole:
                    await within(reply.read())
                while (c := await within(reply.next_chunk())) is not None:
                    got.append(c)
            assert got == ([] if whole else delivered)
            reply.close()

    run(main())


def test_closing_a_reply_before_its_end_aborts_the_connection(run: Run) -> None:
    async def main() -> None:
        left = asyncio.Event()
        after_close: list[bytes] = []

        async def answer(
            engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            if index > 0:
                return await answer_every_request(engine, index, reader, writer)
            await engine.read_request(reader)
            writer.write(CHUNKED + chunk(b"first"))
            try:
                after_close.append(await reader.read())  # b"": EOF
            except ConnectionResetError:
                after_close.append(b"reset")
            left.set()

        async with Engine(answer) as engine, pooled() as pool:
            reply = await within(pool.request("127.0.0.1", engine.port, "GET", "/"))
            assert await within(reply.next_chunk()) == b"first"
            reply.close()
            await within(left.wait())
            assert after_close in ([b""], [b"reset"])
            assert not pool.idle.get(("127.0.0.1", engine.port, False))
            again = await within(pool.request("127.0.0.1", engine.port, "GET", "/"))
            assert await within(again.read()) == b"conn 1"  # a new connection
            again.close()

    run(main())


def test_a_slow_reader_pauses_the_engine_connection_and_reading_resumes_it(run: Run) -> None:
    first = [b"event %d" % i for i in range(HIGH_WATER + 36)]
    second = [b"event %d" % i for i in range(len(first), 2 * len(first))]

    async def main() -> None:
        resumed = asyncio.Event()

        async def answer(
            engine: Engine, _: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await engine.read_request(reader)
            writer.write(CHUNKED + b"".join(map(chunk, first)))  # more than HIGH_WATER in one write
            await resumed.wait()
            writer.write(b"".join(map(chunk, second)) + b"0\r\n\r\n")
            await reader.read()

        async with Engine(answer) as engine, pooled() as pool:
            reply = await within(pool.request("127.0.0.1", engine.port, "POST", "/", b"{}"))
            conn = reply.conn
            await until(lambda: conn.paused)
            assert conn.transport is not None and not conn.transport.is_reading()
            resumed.set()
            assert await chunks_of(reply) == first + second
            assert not conn.paused and conn.done
            reply.close()

    run(main())


def test_a_reader_slower_than_read_timeout_is_not_the_engine_being_silent(run: Run) -> None:
    first = [b"event %d" % i for i in range(HIGH_WATER + 36)]

    async def main() -> None:
        paused = asyncio.Event()

        async def answer(
            engine: Engine, _: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await engine.read_request(reader)
            writer.write(CHUNKED + b"".join(map(chunk, first)))
            await paused.wait()
            writer.write(chunk(b"last") + b"0\r\n\r\n")
            await reader.read()

        async with Engine(answer) as engine, pooled(read_timeout=TIMEOUT) as pool:
            reply = await within(pool.request("127.0.0.1", engine.port, "GET", "/"))
            await until(lambda: reply.conn.paused)
            paused.set()
            await asyncio.sleep(2 * TIMEOUT)  # the scenario itself: a reader that takes longer than that
            assert await chunks_of(reply) == [*first, b"last"]
            reply.close()

    run(main())


def test_a_reply_closed_early_with_chunks_still_queued_leaves_no_stalled_connection(run: Run) -> None:
    """The engine finished while the reader lagged (reading paused); the reader leaves. The next request
    must not go out on a connection that is still not being read."""
    events = [chunk(b"event %d" % i) for i in range(HIGH_WATER + 36)]

    async def answer(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while not reader.at_eof():
            with contextlib.suppress(asyncio.IncompleteReadError):
                await engine.read_request(reader)
                writer.write(CHUNKED + b"".join(events) + b"0\r\n\r\n")

    async def main() -> None:
        async with Engine(answer) as engine, pooled(read_timeout=TIMEOUT) as pool:
            reply = await within(pool.request("127.0.0.1", engine.port, "GET", "/"))
            await until(lambda: reply.conn.done)
            assert reply.conn.paused
            reply.close()
            again = await within(pool.request("127.0.0.1", engine.port, "GET", "/"))
            assert len(await chunks_of(again)) == len(events)
            again.close()

    run(main())
