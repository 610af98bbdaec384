"""The fuzz's client: a case over a raw TCP connection, and the answers read back, framed by h11 as a
client (a malformed answer is reported, not guessed around)."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

import h11

from tests.support.fuzz.cases import Case
from tests.support.fuzz.oracle import Verdict


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Outcome:
    answers: list[Answer] = field(default_factory=list)
    closed: bool = False  # the server closed the connection (EOF or reset)
    reset: bool = False  # by a reset (which may have discarded an answer not yet read)
    hung: bool = False  # neither the expected answers nor a close before the deadline
    malformed: str | None = None  # an answer h11 (as a client) could not parse
    waited_s: float = 0.0


async def exchange(port: int, case: Case, verdict: Verdict, deadline_s: float) -> Outcome:
    """Send ``case`` on a fresh connection; read answers until ``case.requests`` are in, the server
    closes, or ``deadline_s`` after the last write. A plain non-blocking socket, written and read at
    once: after a reset the kernel still hands over what arrived before it (an asyncio transport
    would drop it on the failed write)."""
    loop = asyncio.get_running_loop()
    out = Outcome()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        t0 = loop.time()
        reading = asyncio.ensure_future(read_answers(sock, case, verdict, out, t0 + deadline_s))
        try:
            start = 0
            for cut in (*case.writes, len(case.data)):
                if start and case.pause_s:
                    await asyncio.sleep(case.pause_s)  # shaping the traffic, not waiting for anything
                if reading.done():
                    break
                await loop.sock_sendall(sock, case.data[start:cut])
                start = cut
        except OSError:
            pass  # refused mid-write: what it answered is still read
        await reading
        out.waited_s = loop.time() - t0
    finally:
        sock.close()
    return out


async def read_answers(
    sock: socket.socket, case: Case, verdict: Verdict, out: Outcome, deadline: float
) -> None:
    loop = asyncio.get_running_loop()
    framings = answer_framings(case, verdict)
    raw = b""
    while True:
        for methods in framings:
            answers, complete, error = parse_answers(raw, methods, out.closed)
            if error is None:
                break
        out.answers = answers
        if error is not None:
            out.malformed = f"{error} after {len(answers)} answers"
            return
        if complete or out.closed:
            return
        left = deadline - loop.time()
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), left) if left > 0 else None
        except OSError:
            data, out.reset = b"", True
        except asyncio.TimeoutError:
            data = None
        if data is None:
            out.hung = True
            return
        if not data:
            out.closed = True
        raw += data


def answer_framings(case: Case, verdict: Verdict) -> list[list[str]]:
    """The methods the answers are framed by (a HEAD's has no body), the likeliest first: for what h11
    does not accept whole, the server may still know it began as HEAD, or may not."""
    methods = [
        verdict.accepted[i].method if i < len(verdict.accepted) else case.methods[i].decode("latin-1")
        for i in range(case.requests)
    ]
    plain = ["GET" if i >= len(verdict.accepted) and m == "HEAD" else m for i, m in enumerate(methods)]
    return [methods] if plain == methods else [methods, plain]


def parse_answers(raw: bytes, methods: list[str], eof: bool) -> tuple[list[Answer], bool, str | None]:
    """The whole answers in ``raw`` to requests of ``methods``; whether all are in (or the connection
    ended cleanly); h11's complaint, if any. ``eof``: ``raw`` is all there will be."""
    client = h11.Connection(h11.CLIENT)
    answers: list[Answer] = []
    answer: Answer | None = None

    def arm(method: str) -> None:
        head = h11.Request(method="HEAD" if method == "HEAD" else "GET", target="/", headers=[("host", "x")])
        client.send(head)
        client.send(h11.EndOfMessage())

    arm(methods[0])
    if raw:
        client.receive_data(raw)  # (b"" would be the end)
    if eof:
        client.receive_data(b"")
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError as e:
            if eof and answer is None and not client.trailing_data[0]:
                return answers, True, None  # closed between answers, none begun
            return answers, False, str(e)
        if event is h11.NEED_DATA:
            return answers, False, None
        if isinstance(event, h11.Response):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
            answer = Answer(event.status_code, headers, b"")
        elif isinstance(event, h11.Data) and answer is not None:
            answer.body += event.data
        elif isinstance(event, h11.EndOfMessage) and answer is not None:
            answers.append(answer)
            answer = None
            if len(answers) == len(methods):
                return answers, True, None
            if client.our_state is h11.DONE and client.their_state is h11.DONE:
                client.start_next_cycle()
                arm(methods[len(answers)])
        elif isinstance(event, h11.ConnectionClosed):
            return answers, True, None
        # InformationalResponse (100 Continue): the final answer follows
