"""Baseline: the barest aiohttp pass-through (no keys, routing, metrics, usage), with the aiohttp server and
client settings llmdock's gateway used before it had its own. ``python bare_aiohttp.py LISTEN UPSTREAM``."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import uvloop
from aiohttp import web


async def main(port: int, upstream: int) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
    )
    base = f"http://127.0.0.1:{upstream}"

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        async with session.post(
            base + request.raw_path, data=body, headers={"Content-Type": "application/json"}
        ) as r:
            if not r.headers.get("Content-Type", "").startswith("text/event-stream"):
                return web.Response(status=r.status, body=await r.read(), content_type="application/json")
            out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await out.prepare(request)
            async for chunk in r.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    server = web.Server(handle, access_log=None)
    await asyncio.get_running_loop().create_server(server, "127.0.0.1", port, backlog=4096)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
