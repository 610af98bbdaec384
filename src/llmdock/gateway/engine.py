"""The gateway's client to engines: aiohttp's pooled keep-alive client, with the failures the proxy
tells apart and a stream read one HTTP chunk at a time.

A chunk from :meth:`Reply.next_chunk` is exactly one HTTP chunk as the engine framed it (aiohttp's
parser marks where each ends), so SSE events that arrive together are never merged. Closing a reply
before its end closes the connection, which is how an engine learns that the client left.

Failures, each its own exception so the proxy can answer the right status:

    Unreachable   the connection could not be made (refused, no route, timed out): safe to try another replica
    Silent        connected, but nothing arrived for ``read_timeout`` seconds (before headers or between chunks)
    Broken        the engine closed the connection, sent something that is not HTTP, headers over the
                  limit, or ``101 Switching Protocols`` to a request that asked for no upgrade

Informational answers (``100 Continue``, ``103``) are skipped by aiohttp: the final answer is the one
returned. A keep-alive connection the engine closed while idle in the pool is noticed when reused (the
request gets no byte back) and the request goes once more on a fresh connection.

Example::

    client = EngineClient(session, connect_timeout=5, read_timeout=600)
    reply = await client.request("http://127.0.0.1:8001", "POST", "/v1/chat/completions", body)
    data = await reply.read()
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp
from yarl import URL

IDLE_S = 4.0  # pooled connections older than this are dropped: uvicorn (vLLM's server) closes them after 5 s


class UpstreamError(Exception):
    pass


class Unreachable(UpstreamError):
    pass


class Silent(UpstreamError):
    pass


class Broken(UpstreamError):
    pass


def session(engine_header_bytes: int = 64 * 1024) -> aiohttp.ClientSession:
    """The one pooled session to every engine: no cookies, no decompression, no default User-Agent,
    response headers bounded (a line and a field at most ``engine_header_bytes``, 128 fields)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=IDLE_S, ttl_dns_cache=None),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
        max_line_size=engine_header_bytes,
        max_field_size=engine_header_bytes,
        max_headers=128,
    )


class Reply:
    """An engine's answer: status and headers are in; the body is read with ``read`` or ``next_chunk``."""

    __slots__ = ("chunked", "headers", "read_timeout", "resp", "status")

    def __init__(self, resp: aiohttp.ClientResponse, read_timeout: float) -> None:
        self.resp = resp
        self.status = resp.status
        self.headers: Mapping[str, str] = {k.lower(): v for k, v in resp.headers.items()}
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self.read_timeout = read_timeout

    async def read(self) -> bytes:
        try:
            return await self.resp.read()
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise Silent(f"nothing arrived for {self.read_timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as e:
            raise Broken(str(e) or type(e).__name__) from None

    async def next_chunk(self) -> bytes | None:
        """The next HTTP chunk (a piece of the body when not chunked); None at the end."""
        content = self.resp.content
        parts: list[bytes] = []
        try:
            while True:
                data, end = await content.readchunk()
                if not data and not end:  # the end of the body
                    break
                if data:
                    parts.append(data)
                if parts and (end or not self.chunked):
                    break
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise Silent(f"nothing arrived for {self.read_timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as e:
            raise Broken(str(e) or type(e).__name__) from None
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        """Back to the pool when read to its end; else the connection is closed (the engine stops)."""
        if self.resp.content.at_eof() and not self.resp.closed:
            self.resp.release()
        else:
            self.resp.close()


class EngineClient:
    def __init__(self, http: aiohttp.ClientSession, connect_timeout: float, read_timeout: float) -> None:
        self.http = http
        self.read_timeout = read_timeout
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, connect=connect_timeout, sock_read=read_timeout
        )

    async def request(
        self,
        base: str,
        method: str,
        target: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send one request; return once the final status and headers are in."""
        url = URL(base + target, encoded=True)
        for attempt in range(2):
            try:
                resp = await self.http.request(
                    method,
                    url,
                    data=body if body or method in ("POST", "PUT", "PATCH") else None,
                    headers=headers,
                    timeout=self.timeout,
                    allow_redirects=False,
                )
            except aiohttp.ServerDisconnectedError as e:
                if attempt == 0:  # a pooled connection the engine had closed: once more, fresh
                    continue
                raise Broken(f"the engine closed the connection: {e}") from None
            except aiohttp.ConnectionTimeoutError:
                raise Unreachable("connecting timed out") from None
            except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
                raise Silent(f"nothing arrived for {self.read_timeout:g}s") from None
            except aiohttp.ClientConnectorError as e:
                raise Unreachable(e.strerror or str(e)) from None
            except (aiohttp.ClientError, OSError, ValueError) as e:
                raise Broken(str(e) or type(e).__name__) from None
            if resp.status == 101:
                resp.close()
                raise Broken("the engine answered 101 Switching Protocols to a request that asked for none")
            return Reply(resp, self.read_timeout)
        raise AssertionError("unreachable")
