"""Admin REST API (admin keys only), mirroring the CLI, and its OpenAPI schema.

    GET    /admin/v1/deployments                 list (with the gateway's view of replica health)
    POST   /admin/v1/deployments                 create: {"model": DIR, "name"?, "engine"?, "gpus"?, ...}
    POST   /admin/v1/deployments/{name}/stop     stop
    POST   /admin/v1/deployments/{name}/start    start (does not wait for readiness)
    DELETE /admin/v1/deployments/{name}          remove (``?force=true`` when running)
    GET    /admin/v1/deployments/{name}/logs     log lines as text (``?tail=N&follow=true``)
    GET    /admin/v1/models                      every model the gateway routes
    GET    /admin/v1/keys  POST /admin/v1/keys  DELETE /admin/v1/keys/{name}
    PATCH  /admin/v1/keys/{name}                 change limits in place: {"rpm": 60, "tpm": null}
    GET    /admin/v1/usage?since=EPOCH
    GET    /admin/v1/inventory  /phases  /usage/series   POST /admin/v1/plan   for the dashboard (dashboard.py)
    GET    /openapi.json

Who may call it: with keys configured, an admin key only. With none (the open, loopback-only gateway), a
caller on loopback whose ``Host`` is ``localhost``/``127.0.0.1``/``[::1]`` (a DNS-rebinding page sends its
own name) and whose ``Origin``, if any, is one of those too (a web page on another site sends its own;
``Sec-Fetch-Site: cross-site`` is refused as well). Calls that change state (POST, DELETE) must be
``Content-Type: application/json``, which a page can send cross-site only after a CORS preflight this
gateway never grants. The path is matched whole: ``/admin/v1/keys``, not ``/admin/anything/keys``.

Lifecycle calls run in the supervisor's lifecycle thread; errors become OpenAI envelopes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llmdock.errors import Conflict, InvalidSpec, LlmdockError, NotFound
from llmdock.gateway import dashboard
from llmdock.gateway.asgi import Request, Response, Stream
from llmdock.gateway.keys import Authenticator
from llmdock.gateway.keystore import KeyStore
from llmdock.gateway.proxy import error_response, json_response
from llmdock.gateway.quotas import Quota, Quotas, check_quota
from llmdock.gateway.routing import RouteTable
from llmdock.gateway.wire import (
    AdminOnly,
    BadRequest,
    GatewayError,
    NotFoundPath,
    UnsupportedMediaType,
    envelope,
)
from llmdock.states import LIFECYCLE, Event, derive, event

Act = Callable[[Callable[[Any], Any]], Awaitable[Any]]
BODY_LIMIT = 1024 * 1024
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def host_name(value: str) -> str:
    """``Host``/``Origin`` value -> the host name alone, lower case (``http://localhost:8000`` -> ``localhost``)."""
    value = value.strip().lower()
    if "://" in value:
        value = value.split("://", 1)[1]
    value = value.split("/", 1)[0]
    if value.startswith("["):
        return value.split("]", 1)[0] + "]"
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def local_caller(request: Request) -> bool:
    """A caller the open gateway trusts with admin: on loopback, addressed by a local name, not a page
    from another site (see the module docstring)."""
    from llmdock.gateway.app import is_loopback

    if not is_loopback(request.client):
        return False
    if host_name(request.header("host") or "") not in LOCAL_HOSTS:
        return False
    origin = request.header("origin")
    if origin is not None and host_name(origin) not in LOCAL_HOSTS:
        return False
    return (request.header("sec-fetch-site") or "").lower() != "cross-site"


def check_admin(auth: Authenticator, request: Request) -> None:
    """An admin key, or (no key configured) a local caller; 401/403 otherwise."""
    if auth.open and not auth.require_key:
        if not local_caller(request):
            raise AdminOnly(
                "with no API key configured, admin calls are taken only from this host, addressed as "
                "localhost or 127.0.0.1, and not from a web page of another site; or create an admin key"
            )
        return
    auth.admin(request.header("authorization"))


def check_metrics(auth: Authenticator, request: Request) -> None:
    """``/metrics``: an admin or metrics-scoped key, or (no key configured) a local caller."""
    if auth.open and not auth.require_key:
        check_admin(auth, request)
        return
    auth.metrics(request.header("authorization"))


def split_admin_path(path: str) -> list[str] | None:
    """``/admin/v1/keys/bob`` -> ``["keys", "bob"]``; None for anything not under ``/admin/v1/``."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "" or parts[1] != "admin" or parts[2] != "v1":
        return None
    rest = parts[3:]
    if rest and rest[-1] == "":
        rest = rest[:-1]
    if any(p in ("", ".", "..") for p in rest):
        return None
    return rest


def llmdock_error(e: LlmdockError) -> Response:
    status = (
        404
        if isinstance(e, NotFound)
        else 400
        if isinstance(e, InvalidSpec)
        else 409
        if isinstance(e, Conflict)
        else 500
    )
    message = f"{e.message} ({e.hint})" if e.hint else e.message
    return Response(
        status,
        envelope(message, "invalid_request_error" if status < 500 else "server_error", type(e).__name__),
    )


class Admin:
    def __init__(
        self,
        auth: Authenticator,
        keystore: KeyStore | None,
        table: RouteTable,
        act: Act | None,
        quotas: Quotas | None = None,
    ) -> None:
        self.quotas = quotas or Quotas()
        self.auth = auth
        self.keystore = keystore
        self.table = table
        self.act = act

    async def handle(self, request: Request) -> Response | Stream:
        try:
            if request.path == "/openapi.json":
                return json_response(OPENAPI)
            check_admin(self.auth, request)
            parts = split_admin_path(request.path)
            if parts is None or "%" in request.raw_path.decode("latin-1"):
                raise NotFoundPath(f"no admin endpoint {request.method} {request.path}; see /openapi.json")
            if request.method in CHANGES:
                ctype = (request.header("content-type") or "").split(";", 1)[0].strip().lower()
                if ctype != "application/json":
                    raise UnsupportedMediaType(
                        "admin calls that change state must be sent as Content-Type: application/json"
                    )
            return await self.route(request, request.method, parts)
        except (ValueError, TypeError) as e:  # a query or body field of the wrong kind
            return error_response(BadRequest(f"bad request: {e}"))
        except GatewayError as e:
            return error_response(e)
        except LlmdockError as e:
            return llmdock_error(e)

    async def route(self, request: Request, method: str, parts: list[str]) -> Response | Stream:
        q = request.query
        if parts and parts[0] in dashboard.ROUTES:
            answer = await dashboard.route(self, request, method, parts)
            if answer is not None:
                return answer
        if parts == ["models"] and method == "GET":
            return json_response(
                {"object": "list", "data": [self.model(r) for r in self.table.routes.values()]}
            )
        if parts and parts[0] == "keys" and self.keystore is not None:
            return await self.keys(request, method, parts[1:])
        if parts == ["usage"] and method == "GET" and self.keystore is not None:
            rows = self.keystore.usage(float(q.get("since", "0") or 0))
            return json_response([{"key": k, "model": m, **vars(u)} for k, m, u in rows])
        if not parts or parts[0] != "deployments" or self.act is None:
            raise NotFoundPath(f"no admin endpoint {method} {request.path}; see /openapi.json")
        act = self.act
        if len(parts) == 1 and method == "GET":
            deps, last = await act(lambda c: (c.lc.ps(), c.store.health((*LIFECYCLE, Event.IDLE_STOPPED))))
            return json_response([self.deployment(d, last) for d in deps])
        if len(parts) == 1 and method == "POST":
            body = await self.json(request)
            return json_response(await act(lambda c: c.create(body)), status=201)
        name = parts[1]
        if len(parts) == 2 and method == "DELETE":
            force = q.get("force", "") in ("1", "true", "yes")
            await act(lambda c: c.lc.rm(name, force=force))
            return json_response({"removed": name})
        if len(parts) == 3 and method == "POST" and parts[2] == "stop":
            await act(lambda c: c.lc.stop(name))
            return json_response({"stopped": name})
        if len(parts) == 3 and method == "POST" and parts[2] == "start":
            await act(lambda c: c.lc.start(name, wait=False))
            return json_response({"started": name})
        if len(parts) == 3 and method == "GET" and parts[2] == "logs":
            return await self.logs(request, name)
        raise NotFoundPath(f"no admin endpoint {method} {request.path}; see /openapi.json")

    async def json(self, request: Request) -> dict[str, Any]:
        import json

        from llmdock.gateway.limits import Limits, json_shape_error

        raw = await request.read(BODY_LIMIT)
        why = json_shape_error(raw, Limits())
        if why is not None:
            raise BadRequest(why)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise BadRequest("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return body

    async def keys(self, request: Request, method: str, rest: list[str]) -> Response:
        """Keys with their limits and what they used (live, from this gateway's counters)."""
        assert self.keystore is not None
        if not rest and method == "GET":
            return json_response([self.key(k) for k in self.keystore.list_keys()])
        if not rest and method == "POST":
            body = await self.json(request)
            models, scopes = body.get("models") or [], body.get("scopes") or ["api"]
            for field, value in (("models", models), ("scopes", scopes)):
                if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
                    raise BadRequest(f"`{field}` must be a list of names")
            key = self.keystore.create(
                str(body.get("name", "")),
                models=tuple(models),
                quota=self.quota(body),
                admin=bool(body.get("admin")),
                scopes=tuple(scopes),
            )
            return json_response({"name": body["name"], "key": key}, status=201)
        if len(rest) == 1 and method == "PATCH":  # change limits in place: {"rpm": 60, "tpm": null}
            body = await self.json(request)
            self.quota(body)
            changes = {n: body[n] for n in Quota.names() if n in body}
            unknown = set(body) - set(changes)
            if unknown:
                raise BadRequest(
                    f"unknown field {', '.join(sorted(unknown))}; limits: {', '.join(Quota.names())}"
                )
            return json_response(self.key(self.keystore.set_quota(rest[0], changes)))
        if len(rest) == 1 and method == "DELETE":
            self.keystore.revoke(rest[0])
            return json_response({"revoked": rest[0]})
        raise NotFoundPath(f"no admin endpoint {method} {request.path}; see /openapi.json")

    def quota(self, body: dict[str, Any]) -> Quota:
        try:
            return check_quota(body)
        except ValueError as e:
            raise BadRequest(str(e)) from None

    def key(self, k: Any) -> dict[str, Any]:
        return {**k.as_dict(), "usage": self.quotas.snapshot(k.name)}

    async def logs(self, request: Request, name: str) -> Stream:
        assert self.act is not None
        q = request.query
        tail = q.get("tail")
        follow = q.get("follow", "") in ("1", "true", "yes")
        lines = await self.act(
            lambda c: c.lc.runtime.logs(name, tail=int(tail) if tail else None, follow=follow)
        )
        out = await request.stream(200, "text/plain; charset=utf-8")
        loop = asyncio.get_running_loop()
        # Its own thread, not the shared pool: a follower of a quiet engine blocks in next() until the
        # next line. When the client leaves, the stream is closed right after that pending read.
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="admin-logs")
        try:
            while (line := await loop.run_in_executor(reader, next, lines, None)) is not None:
                await out.write(line.encode() + b"\n")
        finally:
            reader.submit(getattr(lines, "close", lambda: None))
            reader.shutdown(wait=False)
        return out

    def model(self, r: Any) -> dict[str, Any]:
        return {
            "id": r.name,
            "deployment": r.name,
            "aliases": list(r.aliases),
            "ready": r.ready,
            "on_demand": r.policy.on_demand,
            "idle_stop_s": r.policy.idle_stop_s,
            "replicas": [
                {"url": x.url, "healthy": x.usable, "outstanding": x.outstanding} for x in r.replicas
            ],
        }

    def deployment(self, d: Any, last: dict[str, tuple[str, int]]) -> dict[str, Any]:
        """A deployment as ``ps --json`` has it, with the gateway's health view and the state derived
        from both (``status``: ready, starting, unhealthy, stopped, failed…)."""
        data = {k: v for k, v in vars(d).items() if k != "spec"}
        route = self.table.routes.get(d.name)
        healthy = data["healthy"] = route.ready if route is not None else False
        lifecycle = event(last.get(d.name, ("", 0))[0])
        health = None
        if healthy:
            health = Event.HEALTHY
        elif route is not None and any(r.probed_at for r in route.replicas) and lifecycle is Event.READY:
            health = Event.UNHEALTHY  # it was ready, and the gateway's probe now fails
        data["status"] = derive(d.state, d.exit_code, lifecycle, health).value
        return data


def _op(summary: str, body: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {"200": {"description": "OK"}},
    }
    if body:
        op["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}
    return op


NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "llmdock gateway", "version": "1"},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "paths": {
        "/v1/models": {"get": _op("Models this key may use")},
        "/v1/chat/completions": {"post": _op("OpenAI chat completions, routed by `model`", True)},
        "/v1/completions": {"post": _op("OpenAI completions, routed by `model`", True)},
        "/v1/embeddings": {"post": _op("OpenAI embeddings, routed by `model`", True)},
        "/metrics": {"get": _op("Prometheus metrics (an admin key, or one with --scope metrics)")},
        "/admin/v1/deployments": {
            "get": _op("List deployments"),
            "post": {**_op("Create a deployment (fields of `llmdock up`; `model` required)", True)},
        },
        "/admin/v1/deployments/{name}": {
            "delete": {**_op("Remove a deployment (?force=true)"), "parameters": NAME}
        },
        "/admin/v1/deployments/{name}/stop": {"post": {**_op("Stop a deployment"), "parameters": NAME}},
        "/admin/v1/deployments/{name}/start": {"post": {**_op("Start a deployment"), "parameters": NAME}},
        "/admin/v1/deployments/{name}/logs": {
            "get": {**_op("Engine log (?tail=N&follow=true)"), "parameters": NAME}
        },
        "/admin/v1/models": {"get": _op("Every routed model with replica health")},
        "/admin/v1/keys": {
            "get": _op("List keys"),
            "post": _op(
                "Create a key: {name, models?, admin?, scopes? (api, metrics), tokens_per_day?, "
                "tokens_per_month?, rpm?, tpm?, max_concurrent?}",
                True,
            ),
        },
        "/admin/v1/keys/{name}": {
            "delete": {**_op("Revoke a key"), "parameters": NAME},
            "patch": {
                **_op("Change a key's limits in place ({rpm: 60, tpm: null})", True),
                "parameters": NAME,
            },
        },
        "/admin/v1/usage": {"get": _op("Usage per key and model (?since=EPOCH)")},
    },
}
OPENAPI["paths"].update(
    {p: {m: _op(s, m == "post") for m, s in ops.items()} for p, ops in dashboard.OPENAPI_PATHS.items()}
)
