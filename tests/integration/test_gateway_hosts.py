"""The gateway and engines on other hosts: each remote engine gets its own key, sent upstream.

The real gateway (in this process, on a free port) routes by the runtimes' listing; here the listing of
host ``b`` comes from a Docker in memory (the fleet e2e test has the real SSH path), and the engine is
the loopback test upstream checking a key as vLLM's ``--api-key`` does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from llmdock import settings
from llmdock.gateway.app import Gateway, ServeOptions
from llmdock.hosts.keys import EngineKeys
from llmdock.runtimes.base import Deployment
from llmdock.state import Store
from tests.support.memruntime import MemoryRuntime
from tests.support.upstream import UpstreamThread


def test_the_gateway_sends_each_remote_engine_its_own_key(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings.load()
    keys = EngineKeys(s.home / "engine-keys")
    with UpstreamThread(models=("mock",)) as engine:
        engine.api_key = keys.issue("keyed")
        b = MemoryRuntime()
        for name in ("keyed", "keyless"):  # the same engine: one route knows its key, one does not
            b.items[name] = Deployment(
                name, "running", engine="vllm", port=engine.port, served_name="mock", id=f"c-{name}"
            )
        monkeypatch.setattr("llmdock.runtimes.multi.default_members", lambda _s: {"docker@b": b})

        async def main() -> tuple[int, int, bool]:
            gw = Gateway(s, ServeOptions(port=0), Store(s.db_path))
            await gw.start()
            try:
                url = f"http://127.0.0.1:{gw.port}"
                async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                    for _ in range(200):  # ready once its health probe (with the key) has run
                        listed = (await client.get("/v1/models")).json()["data"]
                        if any(m["id"] == "keyed" and m["llmdock"]["ready"] for m in listed):
                            break
                        await asyncio.sleep(0.05)
                    keyless_ready = any(m["id"] == "keyless" and m["llmdock"]["ready"] for m in listed)
                    body = {"model": "keyed", "messages": [{"role": "user", "content": "hi"}]}
                    keyed = (await client.post("/v1/chat/completions", json=body)).status_code
                    route = gw.table.routes["keyless"]
                    for r in route.replicas:  # force it: the engine itself must refuse it
                        r.healthy = True
                    body["model"] = "keyless"
                    keyless = (await client.post("/v1/chat/completions", json=body)).status_code
                    return keyed, keyless, keyless_ready
            finally:
                await gw.close()

        keyed, keyless, keyless_ready = asyncio.run(main())
    assert keyed == 200
    assert not keyless_ready and keyless == 401  # without its key the engine refuses the gateway too
