"""The gateway's own HTTP/1.1 server (``llmdock.gateway.http``) on a real loopback port, driven by raw
client sockets so the exact bytes on the wire are checked: keep-alive, pipelining, chunked request
bodies, ``Expect: 100-continue``, HTTP/1.0, the body and header limits, malformed requests, a client that
leaves mid-request, streamed answers and failing handlers. Every test runs on asyncio and on uvloop,
which is what ``llmdock serve`` runs on."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from http import HTTPStatus
from typing import Any

import pytest

from llmdock.gateway.http import HEADER_LIMIT, Request, Response, Server, Stream
from llmdock.gateway.wire import BadRequest, BodyTooLarge, GatewayError, HeadersTooLarge

Run = Callable[[Coroutine[Any, Any, None]], None]
Handler = Callable[[Request], Awaitable["Response | Stream"]]
LIMIT = 1024  # body limit of every server here
WAIT = 2.0  # the longest any single step may take before the test fails


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    if request.param == "uvloop":
        import uvloop

        return uvloop.run  # type: ignore[no-any-return]
    return asyncio.run


@contextlib.asynccontextmanager
async def serving(
    handler: Handler, keepalive_s: float = 75.0
) -> AsyncIterator[tuple[int, list[GatewayError]]]:
    """A started :class:`Server` on a free port; yields the port and the list its ``refused`` hook fills."""
    refused: list[GatewayError] = []
    server = Server(handler, LIMIT, keepalive_s=keepalive_s, refused=refused.append)
    port = await server.start("127.0.0.1", 0)
    try:
        yield port, refused
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def within(aw: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(aw, WAIT)


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """The raw bytes of one whole response: framed by Content-Length, chunks, or the end of the connection."""

    async def read() -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        fields = dict(
            line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ": " in line
        )
        if "Content-Length" in fields:
            return head + await reader.readexactly(int(fields["Content-Length"]))
        if fields.get("Transfer-Encoding") == "chunked":
            body = b""
            while True:
                size = await reader.readuntil(b"\r\n")
                body += size + await reader.readexactly(int(size, 16) + 2)
                if int(size, 16) == 0:
                    return head + body
        return head + await reader.read()

    return await within(read())  # type: ignore[no-any-return]


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    return await within(reader.read())  # type: ignore[no-any-return]


def answer(body: bytes, content_type: str = "text/plain", close: bool = False) -> bytes:
    """What the server sends for ``Response(200, body, content_type)``, byte for byte."""
    return b"HTTP/1.1 200 OK\r\nContent-Type: %b\r\nContent-Length: %d\r\n%b\r\n%b" % (
        content_type.encode(),
        len(body),
        b"Connection: close\r\n" if close else b"",
        body,
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


async def echo(req: Request) -> Response:
    return Response(200, b"%b %b %b" % (req.method.encode(), req.target.encode(), req.body), "text/plain")


def test_two_requests_on_one_keep_alive_connection(run: Run) -> None:
    big = b"x" * 100_000  # large answers go out as two writes: head, then body
    seen: list[object] = []

    async def handler(req: Request) -> Response:
        seen.append(req.conn)
        return Response(200, big if req.path == "/big" else b"small", "text/plain")

    async def main() -> None:
        async with serving(handler) as (port, _), connect(port) as (reader, writer):
            writer.write(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await read_response(reader) == answer(b"small")
            writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await read_response(reader) == answer(big)
        assert len(seen) == 2 and seen[0] is seen[1]

    run(main())


@pytest.mark.parametrize("count", [2, 40])  # 40: more than PIPELINE_MAX, so reading pauses and resumes
def test_pipelined_requests_sent_in_one_write_are_answered_in_order(run: Run, count: int) -> None:
    active: list[int] = []
    overlapped = False

    async def handler(req: Request) -> Response:
        nonlocal overlapped
        overlapped = overlapped or bool(active)
        active.append(1)
        await asyncio.sleep(0)  # give a second handler the chance to start, were they run concurrently
        active.pop()
        return await echo(req)

    requests = b"".join(
        b"POST /%d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nb%02d" % (i, i) for i in range(count)
    )

    async def main() -> None:
        async with serving(handler) as (port, _), connect(port) as (reader, writer):
            writer.write(requests)
            got = [await read_response(reader) for _ in range(count)]
            writer.write(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")  # reading resumed, if it paused
            assert await read_response(reader) == answer(b"GET /after ")
        assert got == [answer(b"POST /%d b%02d" % (i, i)) for i in range(count)]
        assert not overlapped

    run(main())


@pytest.mark.parametrize(
    "writes",
    [
        [b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"],
        [b"5\r\nhel", b"lo\r\n1\r", b"\n \r\n5;ext=1\r\nworld\r\n0\r\n", b"X-Trailer: t\r\n\r\n"],
    ],
    ids=["one-write", "split-everywhere"],
)
def test_a_chunked_request_body_is_reassembled(run: Run, writes: list[bytes]) -> None:
    async def main() -> None:
        async with serving(echo) as (port, _), connect(port) as (reader, writer):
            writer.write(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            for data in writes:
                await writer.drain()
                writer.write(data)
            assert await read_response(reader) == answer(b"POST /c hello world")

    run(main())


def test_expect_100_continue_is_answered_before_the_body_is_sent(run: Run) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"

    async def main() -> None:
        async with serving(echo) as (port, _), connect(port) as (reader, writer):
            writer.write(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
            assert await within(reader.readexactly(len(interim))) == interim
            writer.write(b"body")
            assert await read_response(reader) == answer(b"POST /e body")

    run(main())


async def stream_a_bb(req: Request) -> Stream:
    out = req.stream(200, "text/plain")
    await out.write(b"a")
    await out.write(b"bb")
    return out


@pytest.mark.parametrize(
    ("request_bytes", "handler", "expected"),
    [
        (
            b"GET /s HTTP/1.0\r\n\r\n",
            stream_a_bb,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nabb",
        ),
        (  # a keep-alive HTTP/1.0 client still gets the connection closed: nothing else can end the body
            b"GET /s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            stream_a_bb,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nabb",
        ),
        (b"GET /w HTTP/1.0\r\n\r\n", echo, answer(b"GET /w ", close=True)),
    ],
    ids=["streamed", "streamed-keep-alive", "whole"],
)
def test_an_http10_client_gets_an_unframed_body_and_the_connection_closed(
    run: Run, request_bytes: bytes, handler: Handler, expected: bytes
) -> None:
    async def main() -> None:
        async with serving(handler) as (port, _), connect(port) as (reader, writer):
            writer.write(request_bytes)
            assert await read_to_eof(reader) == expected

    run(main())


@pytest.mark.parametrize(
    ("request_bytes", "error"),
    [
        (  # the body is never sent: the declared length alone is refused
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1),
            BodyTooLarge,
        ),
        (  # ... and no 100 Continue invites it
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (LIMIT + 1),
            BodyTooLarge,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunk(b"a" * (LIMIT // 2)) * 3
            + b"0\r\n\r\n",
            BodyTooLarge,
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"h" * HEADER_LIMIT + b"\r\n\r\n", HeadersTooLarge),
        (b"GET / HTTP/1.1\r\n" + b"X-Many: %s\r\n" % (b"h" * 1000) * 66 + b"\r\n", HeadersTooLarge),
        (b"NOT HTTP AT ALL\r\n\r\n", BadRequest),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n", BadRequest),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", BadRequest),
    ],
    ids=[
        "declared-length",
        "declared-length-expecting-continue",
        "chunks-growing",
        "one-big-header",
        "many-headers",
        "not-http",
        "bad-chunk-size",
        "two-lengths",
    ],
)
def test_requests_the_server_refuses_itself(
    run: Run, request_bytes: bytes, error: type[GatewayError]
) -> None:
    called: list[Request] = []

    async def handler(req: Request) -> Response:
        called.append(req)
        return await echo(req)

    async def main() -> None:
        async with serving(handler) as (port, refused), connect(port) as (reader, writer):
            writer.write(request_bytes)
            got = await read_to_eof(reader)  # the server closes the connection once it has answered
            assert [type(e) for e in refused] == [error]
        head, _, body = got.partition(b"\r\n\r\n")
        assert head == (
            b"HTTP/1.1 %d %b\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close"
            % (error.status, HTTPStatus(error.status).phrase.encode(), len(body))
        )
        envelope = json.loads(body)["error"]
        assert set(envelope) == {"message", "type", "param", "code"}
        assert (envelope["type"], envelope["code"]) == (error.type, error.code)
        assert called == []

    run(main())


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /" + b"u" * HEADER_LIMIT + b" HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: " + b"h" * 2 * HEADER_LIMIT,  # and the line goes on
    ],
    ids=["long-request-line", "unterminated-header"],
)
def test_the_header_limit_counts_every_byte_before_the_body(run: Run, request_bytes: bytes) -> None:
    async def main() -> None:
        async with serving(echo) as (port, refused), connect(port) as (reader, writer):
            writer.write(request_bytes)
            try:
                got = await asyncio.wait_for(reader.read(), 0.5)  # the server closes the connection
            except ConnectionResetError:  # refused while the client was still sending: the 431 may be lost
                got = b""
            assert got == b"" or got.startswith(b"HTTP/1.1 431 ")
            assert [type(e) for e in refused] == [HeadersTooLarge]

    run(main())


def test_the_answer_to_head_has_no_body(run: Run) -> None:
    async def main() -> None:
        async with serving(echo) as (port, _), connect(port) as (reader, writer):
            writer.write(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await within(reader.readuntil(b"\r\n\r\n")) == answer(b"HEAD /h ")[: -len(b"HEAD /h ")]
            writer.write(b"GET /g HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await read_response(reader) == answer(b"GET /g ")

    run(main())


def test_a_client_that_leaves_cancels_its_handler(run: Run) -> None:
    async def main() -> None:
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def handler(req: Request) -> Response:
            started.set()
            try:
                await asyncio.get_running_loop().create_future()  # waits until cancelled
            except asyncio.CancelledError:
                cancelled.set()
                raise
            raise AssertionError("unreachable")

        async with serving(handler) as (port, _):
            async with connect(port) as (_, writer):
                writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                await within(started.wait())
            await within(cancelled.wait())

    run(main())


def test_a_streamed_answer_sends_each_write_as_its_own_chunk_at_once(run: Run) -> None:
    async def main() -> None:
        proceed = asyncio.Event()

        async def handler(req: Request) -> Response | Stream:
            if req.path != "/stream":
                return await echo(req)
            out = req.stream(200, "text/event-stream", b"Cache-Control: no-cache\r\n")
            await out.write(b"data: 1\n\n")
            await proceed.wait()  # the client sees the first chunk before the second is written
            await out.write(b"data: 22\n\n")
            await out.write(b"")  # nothing: no chunk, and above all not the zero-length last chunk
            await out.write(b"data: 333\n\n")
            await out.end()
            return out

        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n"
        )
        first = head + b"9\r\ndata: 1\n\n\r\n"
        async with serving(handler) as (port, _), connect(port) as (reader, writer):
            writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await within(reader.readexactly(len(first))) == first
            proceed.set()
            rest = b"a\r\ndata: 22\n\n\r\nb\r\ndata: 333\n\n\r\n0\r\n\r\n"
            assert await within(reader.readexactly(len(rest))) == rest
            writer.write(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")  # the connection is kept
            assert await read_response(reader) == answer(b"GET /after ")

    run(main())


async def fail_before_answering(req: Request) -> Response:
    raise RuntimeError("boom")


async def fail_mid_stream(req: Request) -> Stream:
    out = req.stream(200, "text/plain")
    await out.write(b"part")
    raise RuntimeError("boom")


def test_a_handler_that_raises_gets_500_and_the_connection_serves_on(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(req: Request) -> Response | Stream:
        return await (fail_before_answering(req) if req.path == "/fail" else echo(req))

    async def main() -> None:
        async with serving(handler) as (port, _), connect(port) as (reader, writer):
            writer.write(b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
            got = await read_response(reader)
            head, _, body = got.partition(b"\r\n\r\n")
            assert head.startswith(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
            )
            assert json.loads(body)["error"]["code"] == "internal_error"
            writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await read_response(reader) == answer(b"GET /ok ")

    run(main())
    assert "handler failed on GET /fail" in caplog.text


def test_a_handler_that_raises_mid_stream_cuts_the_stream_and_the_server_serves_on(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(req: Request) -> Response | Stream:
        return await (fail_mid_stream(req) if req.path == "/fail" else echo(req))

    async def main() -> None:
        async with serving(handler) as (port, _):
            async with connect(port) as (reader, writer):
                writer.write(b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
                # no last chunk: the client can tell the body was cut short
                assert await read_to_eof(reader) == (
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + chunk(b"part")
                )
            async with connect(port) as (reader, writer):
                writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
                assert await read_response(reader) == answer(b"GET /ok ")

    run(main())
    assert "handler failed on GET /fail" in caplog.text


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/", "/", {}),
        ("/v1/models", "/v1/models", {}),
        ("/v1/models?", "/v1/models", {}),
        ("/admin/v1/usage?key=alice&since=1d", "/admin/v1/usage", {"key": "alice", "since": "1d"}),
        ("/q?name=a%20b&plus=c+d", "/q", {"name": "a b", "plus": "c d"}),
        ("/q?x=1&x=2", "/q", {"x": "2"}),
        ("/q?flag&empty=", "/q", {}),
        ("/q?a=1?b=2", "/q", {"a": "1?b=2"}),
    ],
)
def test_path_and_query(run: Run, target: str, path: str, query: dict[str, str]) -> None:
    seen: list[Request] = []

    async def handler(req: Request) -> Response:
        seen.append(req)
        return await echo(req)

    async def main() -> None:
        async with serving(handler) as (port, _), connect(port) as (reader, writer):
            writer.write(b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % target.encode())
            await read_response(reader)

    run(main())
    [req] = seen
    assert (req.target, req.path, req.query) == (target, path, query)


def test_headers_are_lower_cased_and_repeats_joined(run: Run) -> None:
    seen: list[Request] = []

    async def handler(req: Request) -> Response:
        seen.append(req)
        return await echo(req)

    async def main() -> None:
        async with serving(handler) as (port, _), connect(port) as (reader, writer):
            writer.write(
                b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nX-Tag: a\r\nx-tag: b\r\n\r\n"
            )
            await read_response(reader)

    run(main())
    [req] = seen
    assert req.headers == {"host": "x", "authorization": "Bearer k", "x-tag": "a, b"}
    assert (req.header("x-tag"), req.header("authorization"), req.header("expect")) == (
        "a, b",
        "Bearer k",
        None,
    )
    assert (req.method, req.version, req.keep_alive) == ("GET", "1.1", True)


def test_an_idle_keep_alive_connection_is_closed_after_keepalive_s(run: Run) -> None:
    async def main() -> None:
        async with serving(echo, keepalive_s=0.1) as (port, _), connect(port) as (reader, writer):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await read_response(reader) == answer(b"GET / ")
            assert await read_to_eof(reader) == b""  # within WAIT, so the sweeper closed it

    run(main())


def test_an_upgrade_request_is_answered_as_plain_http_then_the_connection_closes(run: Run) -> None:
    async def main() -> None:
        async with serving(echo) as (port, refused), connect(port) as (reader, writer):
            writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            writer.write(b"\x81\x05hello")  # what would follow in the other protocol: never parsed
            got = await read_to_eof(reader)
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"GET /ws ")
        assert refused == []  # nothing was refused: the request was served

    run(main())


def test_no_100_continue_inside_the_answer_to_a_pipelined_request(run: Run) -> None:
    release = asyncio.Event()

    async def handler(req: Request) -> Response | Stream:
        if req.path == "/slow":
            out = req.stream(200, "text/plain")
            await out.write(b"first")
            await release.wait()
            await out.write(b"second")
            return out
        return await echo(req)

    async def main() -> None:
        async with serving(handler) as (port, _), connect(port) as (reader, writer):
            writer.write(
                b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi"
            )
            head = await within(reader.readuntil(b"\r\n\r\n"))
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert await within(reader.readuntil(b"first\r\n")) == chunk(b"first")
            release.set()
            rest = await within(reader.readuntil(b"POST /p hi"))
            assert rest == chunk(b"second") + b"0\r\n\r\n" + answer(b"POST /p hi")  # no 100 in between

    run(main())
