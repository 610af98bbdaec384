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
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any
from urllib.parse import unquote

from llmdock.gateway.asgi import Request, Response, Stream
from llmdock.gateway.congestion import Gate
from llmdock.gateway.engine import Broken, EngineClient, Reply, Silent, Unreachable, UpstreamError
from llmdock.gateway.forwarding import ENGINE_ROUTES, MULTIPART, forward_target, multipart_model
from llmdock.gateway.keys import Authenticator, KeyRecord
from llmdock.gateway.keystore import Usage
from llmdock.gateway.limits import Limits, json_shape_error
from llmdock.gateway.metrics import Metrics
from llmdock.gateway.quotas import Quotas
from llmdock.gateway.routing import Replica, Route, RouteTable, pick
from llmdock.gateway.sse import UsageMeter, has_usage_event, strip_usage_event, wants_usage
from llmdock.gateway.wire import (
    BadRequest,
    GatewayError,
    MethodNotAllowed,
    ModelNotFound,
    NoReplica,
    NotFoundPath,
    UpstreamFailed,
    UpstreamTimeout,
    envelope,
    sse_error,
)

JSON_HEADERS = {"Content-Type": "application/json"}
SSE_HEADERS = [(b"cache-control", b"no-cache")]
JSON = "application/json"
STREAM_USAGE_PATHS = ("/v1/chat/completions", "/v1/completions")
TAG_RE = re.compile(r"<[^>]*>")  # an engine's HTML error page, read as text
CLIENT_GONE = 499  # nginx's code for a client that closed the connection before the answer ended


@dataclass(frozen=True)
class ProxyConfig:
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
    """The envelope; a refusal that knows when to come back (quotas, congestion) says it in Retry-After."""
    retry = getattr(e, "retry_after", None)
    headers = [(b"retry-after", b"%d" % max(1, round(retry)))] if retry is not None else None
    return Response(e.status, e.body(), headers=headers)


def engine_error(route: Route, status: int, data: bytes) -> Response:
    """An engine's error that is not JSON (an HTML 500 page, plain text) wrapped in the envelope."""
    text = " ".join(TAG_RE.sub(" ", data[:2000].decode("utf-8", "replace")).split())[:300]
    kind = "server_error" if status >= 500 else "invalid_request_error"
    message = f"the engine of {route.name!r} answered {status}" + (f": {text}" if text else "")
    return Response(status, envelope(message, kind, "upstream_error"))


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data).encode())


class Proxy:
    def __init__(
        self,
        table: RouteTable,
        auth: Authenticator,
        metrics: Metrics,
        usage: UsageBuffer,
        engines: EngineClient,
        config: ProxyConfig,
        limits: Limits,
        hold: Hold | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        self.table = table
        self.auth = auth
        self.metrics = metrics
        self.usage = usage
        self.engines = engines
        self.config = config
        self.limits = limits
        self.hold = hold
        self.quotas = quotas or Quotas()
        self.gates: dict[str, Gate] = {}  # deployment name -> its concurrency bound and queue
        metrics.queued = lambda: ((name, len(g.waiters)) for name, g in self.gates.items())
        self.streams: set[Stream] = set()  # open streamed answers (shutdown ends them with an error event)

    async def handle(self, request: Request) -> Response | Stream:
        t0 = perf_counter()
        model, key = "-", "-"
        try:
            record = self.auth.api(request.header("authorization"))
            key = record.name
            path, query = forward_target(request.raw_path.decode("latin-1"), request.query_string)
            if path.startswith("/v1/models"):
                if request.method not in ("GET", "HEAD"):
                    raise MethodNotAllowed(f"{request.method} {path}: models are read with GET")
                if path in ("/v1/models", "/v1/models/"):
                    return self.models(record)
                if path.startswith("/v1/models/"):  # retrieve one; its id may hold a slash (Qwen/...)
                    return self.model(record, unquote(path[len("/v1/models/") :]))
            methods = ENGINE_ROUTES.get(path)
            if methods is None:
                raise NotFoundPath(f"no endpoint {path}; the gateway forwards the OpenAI API routes only")
            if request.method not in methods:
                raise MethodNotAllowed(f"{request.method} {path}: use {', '.join(sorted(methods))}")
            body = await request.read(self.limits.body_bytes)
            if path in MULTIPART:
                return await self.multipart(request, path, query, body, record, t0)
            payload = self.parse(body)
            if not isinstance(payload, dict) or not isinstance(payload.get("model"), str):
                raise BadRequest("the request body needs a string field `model`", param="model")
            route = self.route(record, payload["model"])
            model = route.served_name
            stream = payload.get("stream") is True
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
            target = path + ("?" + query if query else "")
            return await self.forward(request, route, target, body, JSON_HEADERS, record, injected, t0)
        except GatewayError as e:
            self.metrics.error(model, key, e.code, e.status)
            if key != "-" or self.auth.open:
                self.usage.add(key, model, True, 0, 0)
            return error_response(e)

    def parse(self, body: bytes) -> Any:
        why = json_shape_error(body, self.limits)
        if why is not None:
            raise BadRequest(why)
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise BadRequest("the request body is not valid JSON") from None

    def route(self, record: KeyRecord, name: str) -> Route:
        route = self.table.lookup(name)
        if route is None:
            raise ModelNotFound(
                f"the model {name!r} does not exist; list models with GET /v1/models", param="model"
            )
        self.auth.authorize(record, name, route.names)
        return route

    async def multipart(
        self, request: Request, path: str, query: str, body: bytes, record: KeyRecord, t0: float
    ) -> Response | Stream:
        """Audio: a multipart/form-data body, routed by its ``model`` field (rewritten for an alias)."""
        ctype = request.header("content-type") or ""
        if not ctype.lower().startswith("multipart/form-data"):
            raise BadRequest(f"{path} takes multipart/form-data", param="file")
        found = multipart_model(body)
        if found is None:
            raise BadRequest("the form needs a field `model`", param="model")
        name, start, end = found
        route = self.route(record, name)
        if name != route.served_name:
            body = body[:start] + route.served_name.encode() + body[end:]
        target = path + ("?" + query if query else "")
        return await self.forward(request, route, target, body, {"Content-Type": ctype}, record, False, t0)

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
        target: str,
        body: bytes,
        headers: dict[str, str],
        record: KeyRecord,
        injected: bool,
        t0: float,
    ) -> Response | Stream:
        route.last_used = time.monotonic()
        self.quotas.admit(record.name, record.quota)
        gate = self.gates.get(route.name)
        if gate is None:
            gate = self.gates[route.name] = Gate()
        try:
            limits = self.limits
            await gate.enter(route.name, self.capacity(route), limits.queue_length, limits.queue_wait_s)
        except BaseException:
            self.quotas.done(record.name, 0)
            raise
        route.outstanding += 1
        in_flight = self.metrics.in_flight
        in_flight[(route.name,)] += 1
        meter = UsageMeter()
        ttft: float | None = None
        status = 0  # stays 0 when a GatewayError is raised: handle() accounts for those
        try:
            reply, replica = await self.connect(request, route, target, body, headers)
            try:
                status = reply.status
                ctype = reply.headers.get("content-type", JSON)
                if not ctype.startswith("text/event-stream"):
                    data = await reply.read()
                    meter.feed(data)
                    if status >= 400 and not ctype.startswith(JSON):
                        return engine_error(route, status, data)
                    return Response(status, data, ctype)
                out = await request.stream(status, ctype, SSE_HEADERS)
                self.streams.add(out)
                try:
                    ttft, broken = await self.pump(reply, out, meter, injected, t0)
                except ConnectionResetError:
                    status = CLIENT_GONE
                    return out
                except asyncio.CancelledError:
                    status = CLIENT_GONE
                    raise
                finally:
                    self.streams.discard(out)
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
            gate.leave(self.capacity(route))
            self.quotas.done(record.name, meter.prompt_tokens + meter.completion_tokens)
            route.outstanding -= 1
            route.last_used = time.monotonic()
            in_flight[(route.name,)] -= 1
            if status:
                self.record(route, record, status, t0, ttft, meter)

    def capacity(self, route: Route) -> int:
        """Requests ``route`` takes at once: its replicas' bound times those usable (at least one)."""
        replicas = route.replicas
        per = (replicas[0].target.concurrency if replicas else None) or self.limits.replica_concurrency
        return per * max(1, sum(r.usable for r in replicas))

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

    async def connect(
        self, request: Request, route: Route, target: str, body: bytes, headers: dict[str, str]
    ) -> tuple[Reply, Replica]:
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
            try:
                if replica.target.api_key:  # an engine on another host checks its own key
                    headers = {**headers, "authorization": f"Bearer {replica.target.api_key}"}
                reply = await self.engines.request(replica.url, request.method, target, body, headers)
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
                if out.ended:  # ended by the gateway's shutdown
                    return ttft, "gateway_shutdown"
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
