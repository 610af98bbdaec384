"""A loopback OpenAI-compatible engine that records every request it receives.

For tests that must know exactly what the gateway let through to an engine (the differential fuzz in
``tests/integration/test_gateway_fuzz.py``): each request is kept as a :class:`Seen` (method, target,
headers and body as parsed here); bytes that are not a valid HTTP/1.1 request end up in
:attr:`Recorder.garbage` with h11's reason instead of being dropped, so a gateway that forwards
something malformed is caught too. It answers ``GET /health``, ``GET /v1/models`` (``mock``) and any
POST: a chat completion, or with ``"stream": true`` three SSE events, each its own HTTP chunk, whose
``id`` is the ``fz-NNNNN-N`` id found in the request body (the fuzz's), so answers can be matched::

    with RecorderThread() as rec:
        ...                                  # --route mock=rec.url
        posts = [s for s in rec.seen if s.method == "POST"]

h11 parses here so that this engine is strict about what it is sent; the fuzz's oracle is a separate
h11 connection in the test process.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

import h11

from tests.support.upstream import ServerThread


@dataclass(frozen=True)
class Seen:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


ID = re.compile(rb"fz-\d{5}-\d")
COMPLETION = {
    "object": "chat.completion",
    "created": 0,
    "model": "mock",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.garbage: list[tuple[str, bytes]] = []  # (h11's reason, the connection's bytes so far)
        self.port = 0
        self.server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.connection, "127.0.0.1", 0, backlog=1024)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        raw = b""
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    raw += data
                    conn.receive_data(data)
                    continue
                if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                        conn.start_next_cycle()
                        continue
                    return
                if isinstance(event, h11.Request):
                    await self.request(conn, reader, writer, event)
        except h11.RemoteProtocolError as e:
            self.garbage.append((str(e), raw))
        except (ConnectionError, h11.LocalProtocolError):
            pass
        finally:
            writer.close()

    async def request(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        req: h11.Request,
    ) -> None:
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), 30)
                if not data:
                    raise ConnectionError("closed mid-body")
                conn.receive_data(data)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in req.headers)
        self.seen.append(Seen(req.method.decode(), req.target.decode("latin-1"), headers, body))
        writer.write(answer(conn, req.target.split(b"?")[0], body))
        await writer.drain()


def answer(conn: h11.Connection, path: bytes, body: bytes) -> bytes:
    """The bytes of the answer to ``path``: health, models, or a completion (streamed if asked)
    whose ``id`` is the request's ``fz-…`` id, so a client can tell which request it answers."""
    if path in (b"/health", b"/v1/models"):
        payload = b"{}" if path == b"/health" else b'{"object": "list", "data": [{"id": "mock"}]}'
        return json_answer(conn, payload)
    found = ID.search(body)
    rid = found.group().decode() if found else "r1"
    try:
        stream = json.loads(body).get("stream") is True
    except (ValueError, AttributeError):
        stream = False
    if not stream:
        return json_answer(conn, json.dumps({**COMPLETION, "id": rid}).encode())
    out = conn.send(h11.Response(status_code=200, headers=[("content-type", "text/event-stream")]))
    for i in range(3):
        delta = {"index": 0, "delta": {"content": f"t{i}"}}
        event = {"id": rid, "object": "chat.completion.chunk", "model": "mock", "choices": [delta]}
        out += conn.send(h11.Data(data=b"data: " + json.dumps(event).encode() + b"\n\n"))
    return out + conn.send(h11.Data(data=b"data: [DONE]\n\n")) + conn.send(h11.EndOfMessage())


def json_answer(conn: h11.Connection, payload: bytes) -> bytes:
    headers = [("content-type", "application/json"), ("content-length", str(len(payload)))]
    return (
        conn.send(h11.Response(status_code=200, headers=headers))
        + conn.send(h11.Data(data=payload))
        + conn.send(h11.EndOfMessage())
    )


class RecorderThread(ServerThread[Recorder]):
    """Run a :class:`Recorder` on its own event loop in a daemon thread."""

    def __init__(self) -> None:
        super().__init__(Recorder())
