"""Candidates for the gateway's HTTP server: the barest ASGI pass-through (no keys, routing, metrics, usage)
with the aiohttp engine client, under a chosen server. ``python bare_asgi.py SERVER LISTEN UPSTREAM`` with
SERVER one of ``uvicorn-httptools``, ``uvicorn-h11``, ``granian`` (needs granian importable)."""

from __future__ import annotations

import os
import sys
from typing import Any

import aiohttp

UPSTREAM = int(os.environ.get("BARE_UPSTREAM", "9301"))
session: aiohttp.ClientSession | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global session
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if session is None:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )
    body = b""
    more = True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    url = f"http://127.0.0.1:{UPSTREAM}{scope['path']}"
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        ctype = r.headers.get("Content-Type", "application/json").encode()
        if not ctype.startswith(b"text/event-stream"):
            data = await r.read()
            await send(
                {
                    "type": "http.response.start",
                    "status": r.status,
                    "headers": [(b"content-type", ctype), (b"content-length", b"%d" % len(data))],
                }
            )
            await send({"type": "http.response.body", "body": data})
            return
        await send({"type": "http.response.start", "status": r.status, "headers": [(b"content-type", ctype)]})
        buf = b""
        async for data, end in r.content.iter_chunks():
            buf += data
            if end:
                await send({"type": "http.response.body", "body": buf, "more_body": True})
                buf = b""
        await send({"type": "http.response.body", "body": buf})


def main() -> None:
    server, port, upstream = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    os.environ["BARE_UPSTREAM"] = upstream
    global UPSTREAM
    UPSTREAM = int(upstream)
    if server.startswith("uvicorn"):
        import uvicorn

        uvicorn.run(
            app,
            host="127.0.0.1",
            port=port,
            http=server.split("-")[1],
            loop="uvloop",
            access_log=False,
            log_level="warning",
            lifespan="off",
            timeout_keep_alive=300,  # the side-by-side rounds leave a path's connection idle for seconds
        )
    else:
        os.execvp(
            sys.executable,
            [
                sys.executable,
                "-m",
                "granian",
                "--interface",
                "asgi",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--loop",
                "uvloop",
                "--workers",
                "1",
                "--no-ws",
                "--log-level",
                "warning",
                "bare_asgi:app",
            ],
        )


if __name__ == "__main__":
    main()
