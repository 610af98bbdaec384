"""The gateway's Coalescing transport over a real loopback socket: one write per loop turn, in order."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from llmdock.gateway.server import Coalescing


class Counting:
    """The real transport, with its ``write`` calls counted."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


async def pair() -> tuple[Coalescing, Counting, socket.socket]:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
    counting = Counting(transport)  # type: ignore[arg-type]
    b.setblocking(False)
    return Coalescing(counting), counting, b  # type: ignore[arg-type]


async def read_all(peer: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    out = b""
    while chunk := await loop.sock_recv(peer, 65536):
        out += chunk
    return out


def test_writes_in_one_turn_leave_as_one_and_turns_stay_apart() -> None:
    async def main() -> None:
        coalescing, counting, peer = await pair()
        coalescing.write(b"HTTP/1.1 200 OK\r\n\r\n")
        coalescing.write(b"")
        coalescing.write(b"5\r\nhello\r\n")
        assert counting.writes == []  # nothing before the turn ends
        await asyncio.sleep(0)
        assert counting.writes == [b"HTTP/1.1 200 OK\r\n\r\n5\r\nhello\r\n"]
        coalescing.write(b"1\r\na\r\n")
        await asyncio.sleep(0)
        coalescing.write(b"1\r\nb\r\n")
        coalescing.write(b"0\r\n\r\n")
        coalescing.close()  # flushes what is pending, then closes
        assert counting.writes[1:] == [b"1\r\na\r\n", b"1\r\nb\r\n0\r\n\r\n"]
        got = await read_all(peer)
        assert got == b"HTTP/1.1 200 OK\r\n\r\n5\r\nhello\r\n1\r\na\r\n1\r\nb\r\n0\r\n\r\n"
        peer.close()

    asyncio.run(main())


def test_abort_drops_what_is_pending() -> None:
    async def main() -> None:
        coalescing, counting, peer = await pair()
        coalescing.write(b"never sent")
        coalescing.abort()
        await asyncio.sleep(0.01)
        assert counting.writes == []
        assert coalescing.is_closing()
        assert await read_all(peer) == b""
        peer.close()

    asyncio.run(main())
