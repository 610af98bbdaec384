"""Wires the gateway together and runs it: ``Gateway(settings, options).run()``.

Our own HTTP/1.1 server (http.py: no router, no middlewares; the dispatch below is three string checks;
a client that disconnects cancels its handler) and one pool of keep-alive connections to every engine
(upstream.py). Health probes use an aiohttp client session, off the hot path. Background tasks: the
supervisor's tick, the usage flush and the key reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import sqlite3
import sys
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from llmdock.errors import LlmdockError
from llmdock.gateway.admin import Admin
from llmdock.gateway.http import Request, Response, Server, Stream
from llmdock.gateway.keys import Authenticator
from llmdock.gateway.keystore import KeyStore
from llmdock.gateway.metrics import Metrics
from llmdock.gateway.proxy import Proxy, ProxyConfig, UsageBuffer, error_response, json_response
from llmdock.gateway.routing import Policy, RouteTable
from llmdock.gateway.supervisor import (
    DockerSource,
    Source,
    StaticSource,
    Supervisor,
    SupervisorConfig,
    static_target,
)
from llmdock.gateway.upstream import Pool
from llmdock.gateway.wire import GatewayError, NotFoundPath
from llmdock.settings import Settings
from llmdock.state import Store

log = logging.getLogger("llmdock.gateway")
FLUSH_S = 1.0
KEYS_RELOAD_S = 2.0
ENGINE_SCRAPE_TIMEOUT_S = 1.0  # a replica slower than this to answer its /metrics is left out of one scrape


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    insecure: bool = False
    docker: bool = True
    routes: tuple[tuple[str, str], ...] = ()  # (model, base URL) served without Docker
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, insecure: bool, has_keys: bool) -> None:
    """Refuse to serve beyond loopback with no key configured, unless told ``--insecure``."""
    if not is_loopback(host) and not has_keys and not insecure:
        raise LlmdockError(
            f"refusing to serve on {host} without any API key: anyone who can reach it could use every model",
            "create a key first (`llmdock keys create NAME`), or add --insecure if the network is trusted",
        )


class LifecycleController:
    """The supervisor's and admin API's hands: a Lifecycle with its own Docker client and SQLite connection.

    Built inside the lifecycle thread (SQLite connections belong to the thread that opens them).
    """

    def __init__(self, settings: Settings) -> None:
        from llmdock.lifecycle import Lifecycle
        from llmdock.runtimes.multi import default_members

        self.store = Store(settings.db_path)
        self.lc = Lifecycle(settings, default_members(settings), self.store)
        self.keystore = KeyStore(self.store)

    def crashed(self) -> list[tuple[str, str, int | None]]:
        return [
            (d.name, d.state, d.exit_code)
            for d in self.lc.runtime.deployments()
            if d.state in ("exited", "dead")
        ]

    def last_event(self, name: str) -> str | None:
        events = self.store.events(name, limit=1)
        return events[-1][1] if events else None

    def record(self, name: str, kind: str, detail: str = "") -> None:
        self.store.record(name, kind, detail)

    def start(self, name: str) -> None:
        self.lc.start(name, wait=False)

    def stop(self, name: str) -> None:
        self.lc.stop(name)

    def policies(self) -> dict[str, Policy]:
        return self.keystore.policies()

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        from llmdock.errors import InvalidSpec
        from llmdock.spec import DeploymentSpec

        body = dict(body)
        model = body.pop("model", None)
        wait = bool(body.pop("wait", False))
        on_demand, idle = body.pop("on_demand", False), body.pop("idle_stop_s", None)
        if not isinstance(model, str):
            raise InvalidSpec("`model` (a weights directory) is required", 'send {"model": "/data/models/X"}')
        try:
            spec = DeploymentSpec.create(model, **body)
        except TypeError as e:
            raise InvalidSpec(f"unknown field: {e}", "use the long names of `llmdock up`'s flags") from None
        result = self.lc.up(spec, wait=wait)
        if on_demand or idle:
            self.keystore.set_policy(spec.name, Policy(bool(on_demand), float(idle) if idle else None))
        return result.to_dict()


class Gateway:
    def __init__(self, settings: Settings, options: ServeOptions, store: Store | None = None) -> None:
        self.settings = settings
        self.options = options
        self.store = store
        self.keystore = KeyStore(store) if store is not None else None
        if store is not None:
            # This connection is used on the event loop: never wait long for another writer's lock
            # (flush retries next tick), or every stream would stall with it.
            store.db.execute("PRAGMA busy_timeout=100")
        self.auth = Authenticator(self.keystore.active() if self.keystore else ())
        self.table = RouteTable()
        self.metrics = Metrics()
        self.usage = UsageBuffer()
        self.session: aiohttp.ClientSession | None = None
        self.pool: Pool | None = None
        self.server: Server | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.port = options.port

    async def start(self) -> None:
        opts = self.options
        check_exposure(opts.host, opts.insecure, not self.auth.open)
        self.auth.require_key = not is_loopback(opts.host) and not opts.insecure
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=None)
        self.session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        sources: list[Source] = []
        if opts.routes:
            sources.append(StaticSource([static_target(m, u) for m, u in opts.routes]))
        controller = None
        if opts.docker:
            from llmdock.runtimes.multi import Runtimes, default_members

            # Deployments of every runtime: Docker containers and local processes alike.
            sources.append(DockerSource(Runtimes(default_members(self.settings))))
            settings = self.settings

            def controller() -> LifecycleController:
                return LifecycleController(settings)

        self.supervisor = Supervisor(
            self.table, self.metrics, sources, self.session, controller, opts.supervisor
        )
        self.pool = Pool(opts.proxy.connect_timeout, opts.proxy.upstream_timeout)
        self.proxy = Proxy(
            self.table, self.auth, self.metrics, self.usage, self.pool, opts.proxy, self.supervisor.hold
        )
        self.admin = Admin(self.auth, self.keystore, self.table, self.supervisor.act if opts.docker else None)
        await self.supervisor.start()
        self.server = Server(self.dispatch, opts.proxy.body_limit, refused=self.refused)
        self.port = await self.server.start(opts.host, opts.port)
        self.tasks = [asyncio.create_task(self.housekeeping())]

    async def dispatch(self, request: Request) -> Response | Stream:
        path = request.path
        if path.startswith("/v1/"):
            return await self.proxy.handle(request)
        if path == "/metrics":
            if not self.auth.open or self.auth.require_key:  # it names keys and models: keys see it
                try:
                    self.auth.check(request.header("authorization"))
                except GatewayError as e:
                    return error_response(e)
            from llmdock.gateway.engine_metrics import collect

            assert self.session is not None
            engines = await collect(self.session, self.table.routes.values(), ENGINE_SCRAPE_TIMEOUT_S)
            body = (self.metrics.render() + engines).encode()
            return Response(200, body, "text/plain; version=0.0.4; charset=utf-8")
        if path == "/health":
            return json_response({"status": "ok", "models": len(self.table.routes)})
        if path.startswith("/admin/") or path == "/openapi.json":
            return await self.admin.handle(request)
        return error_response(NotFoundPath(f"no endpoint {path}; the API is under /v1/"))

    def refused(self, e: GatewayError) -> None:
        """The server answered ``e`` before a handler saw the request (body or headers over the limit)."""
        self.metrics.error("-", "-", e.code, e.status)

    async def housekeeping(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(FLUSH_S)
            ticks += 1
            try:
                self.flush()
                if self.keystore is not None and ticks % int(KEYS_RELOAD_S / FLUSH_S) == 0:
                    self.auth.replace(self.keystore.active())
            except Exception:
                log.exception("housekeeping failed")

    def flush(self) -> None:
        if self.keystore is None:
            return
        batch = self.usage.take()
        try:
            self.keystore.add_usage(batch)
        except sqlite3.OperationalError:  # locked by another writer: keep the counts for next tick
            self.usage.restore(batch)
            raise

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.supervisor.close()
        self.flush()
        if self.pool is not None:
            self.pool.close()
        if self.session is not None:
            await self.session.close()

    async def serve_forever(self) -> None:
        import signal

        await self.start()
        import gc

        gc.freeze()  # what start-up made lives as long as the process: keep it out of every collection
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(
            f"llmdock gateway on http://{self.options.host}:{self.port}/v1 "
            f"({len(self.table.routes)} deployments, keys {'off' if self.auth.open else 'on'})",
            file=sys.stderr,
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            await self.close()


def run(settings: Settings, options: ServeOptions, store: Store | None) -> None:
    """Run until SIGINT/SIGTERM, on uvloop when it is installed."""
    gateway = Gateway(settings, options, store)
    try:
        import uvloop
    except ImportError:
        asyncio.run(gateway.serve_forever())
    else:
        uvloop.run(gateway.serve_forever())
