"""The supervisor's tick goes on while lifecycle work runs (issue 12: a deploy that pulls weights froze
routing, probes, restarts and on-demand starts for its whole length)."""

from __future__ import annotations

import asyncio
import threading
import time

import aiohttp

from llmdock.gateway.metrics import Metrics
from llmdock.gateway.routing import Policy, RouteTable, Target
from llmdock.gateway.supervisor import Supervisor, SupervisorConfig
from llmdock.states import Event


class CountingSource:
    def __init__(self) -> None:
        self.listings = 0

    def targets(self) -> list[Target]:
        self.listings += 1
        return []


class SlowController:
    """One crashed deployment whose restart blocks until ``release`` is set."""

    def __init__(self, started: threading.Event, release: threading.Event) -> None:
        self.started, self.release = started, release

    def crashed(self) -> list[tuple[str, str, int | None]]:
        return [("d", "exited", 1)]

    def last_event(self, name: str) -> str | None:
        return None

    def record(self, name: str, kind: Event, detail: str = "") -> None:
        pass

    def start(self, name: str) -> None:
        self.started.set()
        self.release.wait(10)

    def stop(self, name: str) -> None:
        pass

    def policies(self) -> dict[str, Policy]:
        return {}


def test_the_tick_goes_on_while_a_restart_blocks_the_lifecycle_thread() -> None:
    started, release = threading.Event(), threading.Event()
    source = CountingSource()

    async def main() -> int:
        async with aiohttp.ClientSession() as session:
            sup = Supervisor(
                RouteTable(),
                Metrics(),
                [source],
                session,
                lambda: SlowController(started, release),
                SupervisorConfig(interval_s=0.02),
            )
            await sup.start()
            try:
                deadline = time.monotonic() + 5
                while not started.is_set():  # the restart is under way in the lifecycle thread
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
                before = source.listings
                await asyncio.sleep(0.5)
                ticks = source.listings - before
            finally:
                release.set()
                await sup.close()
            return ticks

    ticks = asyncio.run(main())
    assert ticks >= 5, f"{ticks} listings in 0.5 s while a restart ran"
