"""Wires the gateway together and runs it: ``Gateway(settings, options).run()``.

uvicorn with h11 serves the ASGI app (server.py adds the limits; the dispatch below is a few string
checks; a client that disconnects cancels its handler), and one aiohttp session carries every request
to engines (engine.py), health probes and metrics scrapes. Background tasks: the supervisor's tick, the
usage flush and the key reload.

Shutdown (SIGTERM, SIGINT): the listening socket closes and idle connections with it; requests in
flight go on for up to ``Limits.drain_s``; streams still open then get an SSE error event
(``gateway_shutdown``) and their end, and what is left is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from llmdock.errors import LlmdockError
from llmdock.gateway.admin import Admin, check_metrics
from llmdock.gateway.asgi import App, Request, Response, Stream
from llmdock.gateway.engine import EngineClient
from llmdock.gateway.engine import session as engine_session
from llmdock.gateway.keys import Authenticator
from llmdock.gateway.keystore import KeyStore
from llmdock.gateway.limits import Limits
from llmdock.gateway.metrics import Metrics
from llmdock.gateway.proxy import Proxy, ProxyConfig, UsageBuffer, error_response, json_response
from llmdock.gateway.quotas import Quotas
from llmdock.gateway.routing import Policy, RouteTable
from llmdock.gateway.server import Server, bind
from llmdock.gateway.supervisor import (
    DockerSource,
    Source,
    StaticSource,
    Supervisor,
    SupervisorConfig,
    static_target,
)
from llmdock.gateway.wire import GatewayError, NotFoundPath, sse_error
from llmdock.settings import Settings
from llmdock.state import Store
from llmdock.states import Event

log = logging.getLogger("llmdock.gateway")
FLUSH_S = 1.0
KEYS_RELOAD_S = 2.0
ENGINE_SCRAPE_TIMEOUT_S = 2.0  # a replica slower than this to answer its /metrics is left out of one scrape


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    insecure: bool = False
    docker: bool = True
    routes: tuple[tuple[str, str], ...] = ()  # (model, base URL) served without Docker
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    limits: Limits = field(default_factory=Limits)
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

    def record(self, name: str, kind: Event, detail: str = "") -> None:
        self.store.record(name, kind, detail)

    def start(self, name: str) -> None:
        self.lc.start(name, wait=False)

    def stop(self, name: str) -> None:
        self.lc.stop(name)

    def policies(self) -> dict[str, Policy]:
        return self.keystore.policies()

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        from llmdock.gateway.dashboard import spec_from_body

        spec = spec_from_body(body)
        wait = bool(body.get("wait", False))
        on_demand, idle = body.get("on_demand", False), body.get("idle_stop_s")
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
        self.quotas = Quotas()
        if self.keystore is not None:  # token quotas go on from what the database recorded today
            self.quotas.seed(self.keystore.token_totals(time.time()))
        self.table = RouteTable()
        self.metrics = Metrics()
        self.usage = UsageBuffer()
        self.session: aiohttp.ClientSession | None = None
        self.server: Server | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.port = options.port

    async def start(self) -> None:
        opts = self.options
        check_exposure(opts.host, opts.insecure, not self.auth.open)
        self.auth.require_key = not is_loopback(opts.host) and not opts.insecure
        sock = bind(opts.host, opts.port)  # first: a taken port fails before anything is started
        self.session = engine_session(opts.limits.engine_header_bytes)
        sources: list[Source] = []
        if opts.routes:
            sources.append(StaticSource([static_target(m, u) for m, u in opts.routes]))
        controller = None
        if opts.docker:
            from llmdock.hosts.keys import EngineKeys
            from llmdock.runtimes.multi import Runtimes, default_members

            # Deployments of every runtime (Docker containers, local processes, other hosts'
            # containers); the engines on other hosts are called with their keys.
            keys = EngineKeys(self.settings.home / "engine-keys")
            sources.append(DockerSource(Runtimes(default_members(self.settings)), keys))
            settings = self.settings

            def controller() -> LifecycleController:
                return LifecycleController(settings)

        self.supervisor = Supervisor(
            self.table, self.metrics, sources, self.session, controller, opts.supervisor
        )
        engines = EngineClient(self.session, opts.proxy.connect_timeout, opts.proxy.upstream_timeout)
        self.proxy = Proxy(
            self.table,
            self.auth,
            self.metrics,
            self.usage,
            engines,
            opts.proxy,
            opts.limits,
            self.supervisor.hold,
            self.quotas,
        )
        act = self.supervisor.act if opts.docker else None
        self.admin = Admin(self.auth, self.keystore, self.table, act, self.quotas)
        self.server = Server(App(self.dispatch, opts.limits.header_bytes), opts.limits, refused=self.refused)
        await self.supervisor.start()
        self.port = await self.server.start(opts.host, opts.port, sock)
        self.tasks = [asyncio.create_task(self.housekeeping())]

    async def dispatch(self, request: Request) -> Response | Stream:
        path = request.path
        if path.startswith("/v1/"):
            answer = await self.proxy.handle(request)
        elif path == "/metrics":
            try:  # it names keys and models: admin or metrics-scoped keys (a local caller when no key)
                check_metrics(self.auth, request)
            except GatewayError as e:
                return error_response(e)
            from llmdock.gateway.engine_metrics import collect

            assert self.session is not None
            engines = await collect(self.session, self.table.routes.values(), ENGINE_SCRAPE_TIMEOUT_S)
            body = (self.metrics.render() + engines).encode()
            return Response(200, body, "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/health":
            return json_response({"status": "ok", "models": len(self.table.routes)})
        elif path.startswith("/admin/") or path == "/openapi.json":
            answer = await self.admin.handle(request)
        elif path == "/ui" or path.startswith("/ui/"):
            from llmdock.gateway.ui import serve_ui

            return serve_ui(self.auth, request)
        else:
            return error_response(NotFoundPath(f"no endpoint {path}; the API is under /v1/"))
        return answer

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
                    self.quotas.forget({r.name for r in self.auth.by_hash.values()})
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

    async def drain(self) -> None:
        """Stop accepting; let requests in flight finish for up to ``drain_s``; then end open streams
        with an error event."""
        if self.server is None:
            return
        await self.server.stop_accepting()
        deadline = time.monotonic() + self.options.limits.drain_s
        while self.server.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.server.busy:
            event = sse_error(
                f"the gateway is shutting down; the stream was cut after {self.options.limits.drain_s:g}s",
                "gateway_shutdown",
            )
            for out in list(self.proxy.streams):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(out.write(event), 1.0)
                    await asyncio.wait_for(out.end(), 1.0)

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.supervisor.close()
        self.flush()
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
            await self.drain()
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
