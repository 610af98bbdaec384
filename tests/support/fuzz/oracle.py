"""h11, as a server-side parser, is the fuzz's oracle: which requests of some bytes it accepts whole,
and what it parsed of each (method, target, body)."""

from __future__ import annotations

from dataclasses import dataclass

import h11

HEAD_BYTES = 64 * 1024  # the gateway's header limit, also h11's bound on an incomplete head here


@dataclass(frozen=True)
class Parsed:
    """One request as h11 parsed it."""

    method: str
    target: str
    body: bytes


@dataclass(frozen=True)
class Verdict:
    accepted: tuple[Parsed, ...]  # complete requests h11 accepts, in order
    error: str | None  # h11's reason for refusing what follows them
    incomplete: bool  # h11 waits for more bytes (a cut-off head or body)


def h11_verdict(data: bytes, max_head: int = HEAD_BYTES) -> Verdict:
    """What a strict HTTP/1.1 server parser accepts of ``data`` (no EOF: the client keeps the
    connection open). After each whole request an empty answer is "sent", so pipelining goes on
    where h11 allows it (not after ``Connection: close`` or an HTTP/1.0 request without keep-alive)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
    conn.receive_data(data)
    accepted: list[Parsed] = []
    request: h11.Request | None = None
    body = b""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as e:
            return Verdict(tuple(accepted), str(e) or type(e).__name__, False)
        if event is h11.NEED_DATA:
            return Verdict(tuple(accepted), None, request is not None or bool(conn.trailing_data[0]))
        if isinstance(event, h11.Request):
            request, body = event, b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            accepted.append(Parsed(request.method.decode("latin-1"), request.target.decode("latin-1"), body))
            request = None
            # a 404: a 2xx would switch protocols after CONNECT, and the framing is the same for any
            conn.send(h11.Response(status_code=404, headers=[("content-length", "0")]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return Verdict(tuple(accepted), None, False)  # the connection must close here
            conn.start_next_cycle()
        else:  # PAUSED, ConnectionClosed
            return Verdict(tuple(accepted), None, False)
