"""The ``/v1/*`` pass-through: authenticate, route by ``model``, forward, stream back, account.

Hot-path rules: one JSON parse of the request body (none of the response), one dict lookup to route,
upstream connections pooled and kept alive, every upstream HTTP chunk written to the client as its own
chunk the moment it is complete (never merged, never held back). A client that goes away cancels this
handler (the server runs with ``handler_cancellation``) and closing the upstream response aborts the
engine's request. A replica is retried only when the connection could not be made at all: once a
request has reached an engine, repeating it could run it twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import aiohttp
from aiohttp import web

from llmdock.gateway.keys import Authenticator, KeyRecord
from llmdock.gateway.keystore import Usage
from llmdock.gateway.metrics import Metrics
from llmdock.gateway.routing import Replica, Route, RouteTable, pick
from llmdock.gateway.sse import UsageMeter, has_usage_event, strip_usage_event, wants_usage
from llmdock.gateway.wire import (
    BadRequest,
    BodyTooLarge,
    GatewayError,
    ModelNotFound,
    NoReplica,
    UpstreamFailed,
    UpstreamTimeout,
    sse_error,
)

UPSTREAM_HEADERS = {"Content-Type": "application/json"}
JSON = "application/json"
STREAM_USAGE_PATHS = ("/v1/chat/completions", "/v1/completions")
CLIENT_GONE = 499  # nginx's code for a client that closed the connection before the answer ended


@dataclass(frozen=True)
class ProxyConfig:
    body_limit: int = 32 * 1024 * 1024
    connect_timeout: float = 5.0
    upstream_timeout: float = 600.0  # longest silence from an engine: before headers, or between chunks


class UsageBuffer:
    """Usage accumulated in memory per (key, model, minute); flushed to SQLite about once a second."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, str, int], Usage] = {}

    def add(self, key: str, model: str, error: bool, prompt: int, completion: int) -> None:
        slot = (key, model, int(time.time() // 60))
        u = self.pending.get(slot)
        if u is None:
            u = self.pending[slot] = Usage()
        u.requests += 1
        u.errors += error
        u.prompt_tokens += prompt
        u.completion_tokens += completion

    def take(self) -> dict[tuple[str, str, int], Usage]:
        batch, self.pending = self.pending, {}
        return batch

    def restore(self, batch: dict[tuple[str, str, int], Usage]) -> None:
        """Put back a batch that could not be written, adding what arrived meanwhile."""
        for slot, u in batch.items():
            mine = self.pending.setdefault(slot, Usage())
            mine.requests += u.requests
            mine.errors += u.errors
            mine.prompt_tokens += u.prompt_tokens
            mine.completion_tokens += u.completion_tokens


Hold = Callable[[Route], Awaitable[Replica]]


def error_response(e: GatewayError) -> web.Response:
    return web.Response(status=e.status, body=e.body(), content_type=JSON)


class Proxy:
    def __init__(
        self,
        table: RouteTable,
        auth: Authenticator,
        metrics: Metrics,
        usage: UsageBuffer,
        session: aiohttp.ClientSession,
        config: ProxyConfig,
        hold: Hold | None = None,
    ) -> None:
        self.table = table
        self.auth = auth
        self.metrics = metrics
        self.usage = usage
        self.session = session
        self.config = config
        self.hold = hold
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, sock_read=config.upstream_timeout
        )

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        t0 = perf_counter()
        model, key = "-", "-"
        try:
            record = self.auth.check(request.headers.get("Authorization"))
            key = record.name
            if request.method == "GET" and request.path in ("/v1/models", "/v1/models/"):
                return self.models(record)
            body = await read_body(request, self.config.body_limit)
            try:
                payload = json.loads(body)
            except ValueError:
                raise BadRequest("the request body is not valid JSON") from None
            if not isinstance(payload, dict) or not isinstance(payload.get("model"), str):
                raise BadRequest("the request body needs a string field `model`", param="model")
            route = self.table.lookup(payload["model"])
            if route is None:
                raise ModelNotFound(
                    f"the model {payload['model']!r} does not exist; list models with GET /v1/models",
                    param="model",
                )
            model = route.served_name
            self.auth.authorize(record, payload["model"], (route.served_name, route.name, *route.aliases))
            stream = payload.get("stream") is True
            injected = rewrite = False
            if payload["model"] != route.served_name:  # an alias: the engine knows only its served name
                payload["model"] = route.served_name
                rewrite = True
            if stream and not wants_usage(payload) and request.path in STREAM_USAGE_PATHS:
                opts = payload.get("stream_options")
                payload["stream_options"] = {
                    **(opts if isinstance(opts, dict) else {}),
                    "include_usage": True,
                }
                injected = rewrite = True
            if rewrite:
                body = json.dumps(payload).encode()
            return await self.forward(request, route, body, record, injected, t0)
        except GatewayError as e:
            self.metrics.error(model, key, e.code, e.status)
            if key != "-" or self.auth.open:
                self.usage.add(key, model, True, 0, 0)
            return error_response(e)

    def models(self, record: KeyRecord) -> web.Response:
        data = [
            {
                "id": r.served_name,
                "object": "model",
                "created": 0,
                "owned_by": "llmdock",
                "llmdock": {
                    "deployment": r.name,
                    "ready": r.ready,
                    "on_demand": r.policy.on_demand,
                    "replicas": len(r.replicas),
                    "aliases": list(r.aliases),
                },
            }
            for r in self.table.servable()
            if record.allows((r.served_name, r.name, *r.aliases))
        ]
        return web.Response(body=json.dumps({"object": "list", "data": data}).encode(), content_type=JSON)

    async def forward(
        self,
        request: web.BaseRequest,
        route: Route,
        body: bytes,
        record: KeyRecord,
        injected: bool,
        t0: float,
    ) -> web.StreamResponse:
        route.last_used = time.monotonic()
        route.outstanding += 1
        in_flight = self.metrics.in_flight
        in_flight[(route.served_name,)] += 1
        meter = UsageMeter()
        ttft: float | None = None
        status = 0  # stays 0 when a GatewayError is raised: handle() accounts for those
        try:
            upstream, replica = await self.connect(request, route, body)
            try:
                status = upstream.status
                ctype = upstream.headers.get("Content-Type", JSON)
                if not ctype.startswith("text/event-stream"):
                    data = await upstream.read()
                    meter.feed(data)
                    return web.Response(status=status, body=data, headers={"Content-Type": ctype})
                out = web.StreamResponse(
                    status=status, headers={"Content-Type": ctype, "Cache-Control": "no-cache"}
                )
                await out.prepare(request)
                try:
                    ttft, broken = await self.pump(upstream, out, meter, injected, t0)
                    await out.write_eof()
                except ConnectionResetError:
                    status = CLIENT_GONE
                    return out
                except asyncio.CancelledError:
                    status = CLIENT_GONE
                    raise
                if broken:
                    status = 502
                    self.metrics.errors[(route.served_name, record.name, broken)] += 1
                return out
            except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
                status = 0
                raise UpstreamTimeout(
                    f"the replica of {route.served_name!r} did not answer within "
                    f"{self.config.upstream_timeout:g}s"
                ) from None
            except aiohttp.ClientError as e:
                status = 0
                raise UpstreamFailed(f"the replica of {route.served_name!r} failed: {e}") from None
            finally:
                upstream.close()  # a response read to the end has released its connection already
                replica.outstanding -= 1
        finally:
            route.outstanding -= 1
            route.last_used = time.monotonic()
            in_flight[(route.served_name,)] -= 1
            if status:
                self.record(route, record, status, t0, ttft, meter)

    def record(
        self, route: Route, record: KeyRecord, status: int, t0: float, ttft: float | None, meter: UsageMeter
    ) -> None:
        self.metrics.done(
            route.served_name,
            record.name,
            status,
            perf_counter() - t0,
            ttft,
            meter.prompt_tokens,
            meter.completion_tokens,
        )
        self.usage.add(
            record.name, route.served_name, status >= 400, meter.prompt_tokens, meter.completion_tokens
        )

    async def connect(
        self, request: web.BaseRequest, route: Route, body: bytes
    ) -> tuple[aiohttp.ClientResponse, Replica]:
        """Send to the least busy usable replica; on a refused connection try the next one."""
        tried: set[int] = set()
        while True:
            replica = pick(route.replicas, frozenset(tried))
            if replica is None:
                if tried or self.hold is None:
                    raise NoReplica(
                        f"no ready replica serves {route.served_name!r}"
                        + (" (every replica refused the connection)" if tried else ""),
                    )
                replica = await self.hold(route)
            replica.outstanding += 1
            try:
                upstream = await self.session.request(
                    request.method,
                    replica.url + request.raw_path,
                    data=body,
                    headers=UPSTREAM_HEADERS,
                    timeout=self.timeout,
                )
            except aiohttp.ClientConnectorError:
                replica.outstanding -= 1
                replica.healthy = False  # the health loop brings it back
                tried.add(id(replica))
                self.metrics.retries[(route.served_name,)] += 1
                continue
            except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
                replica.outstanding -= 1
                raise UpstreamTimeout(
                    f"the replica of {route.served_name!r} did not answer within "
                    f"{self.config.upstream_timeout:g}s"
                ) from None
            except aiohttp.ClientError as e:
                replica.outstanding -= 1
                raise UpstreamFailed(f"the replica of {route.served_name!r} failed: {e}") from None
            return upstream, replica

    async def pump(
        self,
        upstream: aiohttp.ClientResponse,
        out: web.StreamResponse,
        meter: UsageMeter,
        injected: bool,
        t0: float,
    ) -> tuple[float | None, str | None]:
        """Copy upstream HTTP chunks to the client one for one; end with an error event on failure.

        Returns the time to the first chunk and, when the stream broke off, the error code sent.
        """
        ttft: float | None = None
        content = upstream.content
        chunked = "chunked" in upstream.headers.get("Transfer-Encoding", "").lower()
        partial = b""
        try:
            while True:
                if chunked:
                    data, end = await content.readchunk()
                    if not end:
                        if not data:
                            break  # EOF
                        partial += data
                        continue
                    if partial:
                        data, partial = partial + data, b""
                else:
                    data = await content.readany()
                    if not data:
                        break
                if not data:
                    continue
                if ttft is None:
                    ttft = perf_counter() - t0
                meter.feed(data)
                if injected and has_usage_event(data):
                    data = strip_usage_event(data)
                    if not data:
                        continue
                await out.write(data)
            if partial:
                await out.write(partial)
        except ConnectionResetError:
            raise  # the client went away: nothing to tell it
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            await out.write(sse_error("the model stopped sending in time", "upstream_timeout"))
            return ttft, "upstream_timeout"
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as e:
            await out.write(sse_error(f"the model's stream broke off: {e}"))
            return ttft, "upstream_error"
        return ttft, None


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``limit`` (before reading it when declared)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"the request body is {declared} bytes; the limit is {limit}")
    if declared is not None:
        return await request.content.readexactly(declared) if declared else b""
    parts: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body exceeds the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(data).encode(), content_type=JSON)
