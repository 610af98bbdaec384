"""The ``/v1/*`` pass-through: authenticate, route by ``model``, forward, stream back, account.

Hot-path rules: one JSON parse of the request body (none of the response), one dict lookup to route,
upstream connections pooled and kept alive, every upstream HTTP chunk written to the client as its own
chunk the moment it is complete (never merged, never held back). A client that goes away cancels this
handler (see http.py), and closing the engine's reply before its end aborts the engine's request. A
replica is retried only when the connection could not be made at all: once a request has reached an
engine, repeating it could run it twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any
from urllib.parse import unquote

from llmdock.gateway.http import Request, Response, Stream
from llmdock.gateway.keys import Authenticator, KeyRecord
from llmdock.gateway.keystore import Usage
from llmdock.gateway.metrics import Metrics
from llmdock.gateway.routing import Replica, Route, RouteTable, pick
from llmdock.gateway.sse import UsageMeter, has_usage_event, strip_usage_event, wants_usage
from llmdock.gateway.upstream import Broken, Pool, Reply, Silent, Unreachable, UpstreamError
from llmdock.gateway.wire import (
    BadRequest,
    GatewayError,
    ModelNotFound,
    NoReplica,
    UpstreamFailed,
    UpstreamTimeout,
    sse_error,
)

UPSTREAM_HEADERS = b"Content-Type: application/json\r\n"
SSE_HEADERS = b"Cache-Control: no-cache\r\n"
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


def model_object(r: Route) -> dict[str, Any]:
    """A route as an OpenAI model object, with llmdock's view of it under ``llmdock``."""
    return {
        "id": r.name,
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


def error_response(e: GatewayError) -> Response:
    return Response(e.status, e.body())


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data).encode())


class Proxy:
    def __init__(
        self,
        table: RouteTable,
        auth: Authenticator,
        metrics: Metrics,
        usage: UsageBuffer,
        pool: Pool,
        config: ProxyConfig,
        hold: Hold | None = None,
    ) -> None:
        self.table = table
        self.auth = auth
        self.metrics = metrics
        self.usage = usage
        self.pool = pool
        self.config = config
        self.hold = hold

    async def handle(self, request: Request) -> Response | Stream:
        t0 = perf_counter()
        model, key = "-", "-"
        try:
            record = self.auth.check(request.header("authorization"))
            key = record.name
            path = request.path
            if request.method == "GET" and path.startswith("/v1/models"):
                if path in ("/v1/models", "/v1/models/"):
                    return self.models(record)
                if path.startswith("/v1/models/"):  # retrieve one; its id may hold a slash (Qwen/...)
                    return self.model(record, unquote(path[len("/v1/models/") :]))
            try:
                payload = json.loads(request.body)
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
            self.auth.authorize(record, payload["model"], route.names)
            stream = payload.get("stream") is True
            body = request.body
            injected = rewrite = False
            if payload["model"] != route.served_name:  # an alias: the engine knows only its served name
                payload["model"] = route.served_name
                rewrite = True
            if stream and not wants_usage(payload) and path in STREAM_USAGE_PATHS:
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

    def models(self, record: KeyRecord) -> Response:
        data = [model_object(r) for r in self.table.servable() if record.allows(r.names)]
        return json_response({"object": "list", "data": data})

    def model(self, record: KeyRecord, name: str) -> Response:
        """One model by its served name or an alias; 404 also when this key may not use it."""
        route = self.table.lookup(name)
        if route is None or route not in self.table.servable() or not record.allows(route.names):
            raise ModelNotFound(f"the model {name!r} does not exist; list models with GET /v1/models")
        return json_response(model_object(route))

    async def forward(
        self,
        request: Request,
        route: Route,
        body: bytes,
        record: KeyRecord,
        injected: bool,
        t0: float,
    ) -> Response | Stream:
        route.last_used = time.monotonic()
        route.outstanding += 1
        in_flight = self.metrics.in_flight
        in_flight[(route.name,)] += 1
        meter = UsageMeter()
        ttft: float | None = None
        status = 0  # stays 0 when a GatewayError is raised: handle() accounts for those
        try:
            reply, replica = await self.connect(request, route, body)
            try:
                status = reply.status
                ctype = reply.headers.get("content-type", JSON)
                if not ctype.startswith("text/event-stream"):
                    data = await reply.read()
                    meter.feed(data)
                    return Response(status, data, ctype)
                out = request.stream(status, ctype, SSE_HEADERS)
                try:
                    ttft, broken = await self.pump(reply, out, meter, injected, t0)
                except ConnectionResetError:
                    status = CLIENT_GONE
                    return out
                except asyncio.CancelledError:
                    status = CLIENT_GONE
                    raise
                if broken:
                    status = 502
                    self.metrics.errors[(route.name, record.name, broken)] += 1
                return out
            except UpstreamError as e:
                status = 0
                raise self.failure(route, e) from None
            finally:
                reply.close()  # back to the pool when read to its end; aborted (the engine stops) if not
                replica.outstanding -= 1
        finally:
            route.outstanding -= 1
            route.last_used = time.monotonic()
            in_flight[(route.name,)] -= 1
            if status:
                self.record(route, record, status, t0, ttft, meter)

    def failure(self, route: Route, e: UpstreamError) -> GatewayError:
        if isinstance(e, Silent):
            return UpstreamTimeout(
                f"the replica of {route.name!r} did not answer within {self.config.upstream_timeout:g}s"
            )
        return UpstreamFailed(f"the replica of {route.name!r} failed: {e}")

    def record(
        self, route: Route, record: KeyRecord, status: int, t0: float, ttft: float | None, meter: UsageMeter
    ) -> None:
        self.metrics.done(
            route.name,
            record.name,
            status,
            perf_counter() - t0,
            ttft,
            meter.prompt_tokens,
            meter.completion_tokens,
        )
        self.usage.add(record.name, route.name, status >= 400, meter.prompt_tokens, meter.completion_tokens)

    async def connect(self, request: Request, route: Route, body: bytes) -> tuple[Reply, Replica]:
        """Send to the least busy usable replica; on a refused connection try the next one."""
        tried: set[int] = set()
        while True:
            replica = pick(route.replicas, frozenset(tried))
            if replica is None:
                if tried or self.hold is None:
                    raise NoReplica(
                        f"no ready replica serves {route.name!r}"
                        + (" (every replica refused the connection)" if tried else ""),
                    )
                replica = await self.hold(route)
            replica.outstanding += 1
            host, port, tls, prefix = replica.origin
            try:
                reply = await self.pool.request(
                    host, port, request.method, prefix + request.target, body, UPSTREAM_HEADERS, tls
                )
            except Unreachable:
                replica.outstanding -= 1
                replica.healthy = False  # the health loop brings it back
                tried.add(id(replica))
                self.metrics.retries[(route.name,)] += 1
                continue
            except UpstreamError as e:
                replica.outstanding -= 1
                raise self.failure(route, e) from None
            except BaseException:
                replica.outstanding -= 1
                raise
            return reply, replica

    async def pump(
        self, reply: Reply, out: Stream, meter: UsageMeter, injected: bool, t0: float
    ) -> tuple[float | None, str | None]:
        """Copy the engine's HTTP chunks to the client one for one; end with an error event on failure.

        Returns the time to the first chunk and, when the stream broke off, the error code sent.
        """
        ttft: float | None = None
        try:
            while (data := await reply.next_chunk()) is not None:
                if ttft is None:
                    ttft = perf_counter() - t0
                meter.feed(data)
                if injected and has_usage_event(data):
                    data = strip_usage_event(data)
                    if not data:
                        continue
                await out.write(data)
        except Silent:
            await out.write(sse_error("the model stopped sending in time", "upstream_timeout"))
            return ttft, "upstream_timeout"
        except Broken as e:
            await out.write(sse_error(f"the model's stream broke off: {e}"))
            return ttft, "upstream_error"
        return ttft, None
