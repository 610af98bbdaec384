"""``llmdock serve`` end to end: real containers (the CPU engine image, tiny model), the real gateway
process and the real ``openai`` client — routing, streaming, usage, restart after a kill, on-demand
start and idle stop."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import cli
from tests.support.gateway import Served, serve


def up(tiny_model: Path, name: str) -> str:
    done = cli("up", str(tiny_model), "--engine", "transformers", "--name", name, "--json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["served_model_name"])


def chat(gw: Served, model: str, stream: bool = False, timeout: float = 120) -> Any:
    from openai import OpenAI

    with OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0, timeout=timeout) as client:
        messages = [{"role": "user", "content": "hello"}]
        if stream:
            return list(
                client.chat.completions.create(model=model, messages=messages, max_tokens=4, stream=True)
            )
        return client.chat.completions.create(model=model, messages=messages, max_tokens=4)


def events(name: str) -> list[str]:
    return [e["kind"] for e in json.loads(cli("inspect", name).stdout)["events"]]


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def ready(gw: Served, model: str) -> bool:
    import httpx

    data = httpx.get(gw.url + "/v1/models").json()["data"]
    return any(m["id"] == model and m["llmdock"]["ready"] for m in data)


@pytest.mark.docker
def test_serve_routes_streams_and_restarts_a_killed_container(
    home: Path, tmp_path: Path, engine_image: str, tiny_model: Path, name: str, docker_client: Any
) -> None:
    served = up(tiny_model, name)
    with serve(tmp_path) as gw:
        wait_until(lambda: ready(gw, name), 30, "the gateway to see the deployment")  # listed by name
        reply = chat(gw, name)
        assert reply.usage.completion_tokens > 0
        assert chat(gw, served).choices  # the engine's served name routes too
        chunks = chat(gw, served, stream=True)
        assert len(chunks) >= 2 and all(c.choices for c in chunks)

        docker_client.containers.get(name).kill()
        wait_until(lambda: not ready(gw, name), 30, "the gateway to notice the kill")
        wait_until(lambda: ready(gw, name), 180, "the deployment to come back")
        assert chat(gw, served).choices
    kinds = events(name)
    row = next(r for r in json.loads(cli("ps", "--json").stdout) if r["name"] == name)
    assert row["health"] in ("healthy", "restarted", "ready", "started", None)  # ps shows the gateway's marks
    if "unhealthy" in kinds:
        assert "healthy" in kinds[kinds.index("unhealthy") :]  # its recovery is recorded too
    restarted_by_docker = docker_client.containers.get(name).attrs["RestartCount"] > 0
    assert restarted_by_docker or ("crashed" in kinds and "restarted" in kinds), kinds
    usage = [u for u in json.loads(cli("usage", "--json").stdout) if u["model"] == name]
    assert usage[0]["model"] == name and usage[0]["requests"] >= 4 and usage[0]["completion_tokens"] > 0


@pytest.mark.docker
def test_on_demand_start_and_idle_stop(
    home: Path, tmp_path: Path, engine_image: str, tiny_model: Path, name: str, docker_client: Any
) -> None:
    from llmdock import settings
    from llmdock.gateway.keystore import KeyStore
    from llmdock.gateway.routing import Policy
    from llmdock.state import Store

    served = up(tiny_model, name)
    store = Store(settings.load().db_path)
    KeyStore(store).set_policy(name, Policy(on_demand=True, idle_stop_s=4.0))
    store.close()
    assert cli("stop", name, "--timeout", "5").returncode == 0
    with serve(tmp_path) as gw:
        import httpx

        listed = httpx.get(gw.url + "/v1/models").json()["data"]
        assert [
            (m["id"], m["llmdock"]["ready"], m["llmdock"]["on_demand"]) for m in listed if m["id"] == name
        ] == [(name, False, True)]
        t0 = time.monotonic()
        assert chat(gw, served, timeout=300).choices  # held until the engine is ready
        held_s = time.monotonic() - t0
        assert held_s > 1
        assert docker_client.containers.get(name).status == "running"
        wait_until(lambda: docker_client.containers.get(name).status == "exited", 60, "the idle stop")
    assert "on-demand" in events(name) and "idle-stopped" in events(name)


@pytest.mark.docker
def test_replicas_share_one_name_and_the_gateway_balances(
    home: Path, tmp_path: Path, engine_image: str, tiny_model: Path, name: str, docker_client: Any
) -> None:
    done = cli("up", str(tiny_model), "--engine", "transformers", "--name", name, "--replicas", "2", "--json")
    try:
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        replicas = [r["name"] for r in result["replicas"]]
        assert replicas == [f"{name}-1", f"{name}-2"]
        assert len({r["url"] for r in result["replicas"]}) == 2  # each its own port
        with serve(tmp_path) as gw:
            wait_until(lambda: ready(gw, name), 30, "the gateway to see the replicas")
            for _ in range(6):
                assert chat(gw, name).choices  # the group name routes to both
            logs = httpx.get(f"{gw.url}/admin/v1/deployments/{name}-1/logs?tail=20", timeout=30)
            assert logs.status_code == 200 and "/v1/chat/completions" in logs.text
            with httpx.stream(
                "GET", f"{gw.url}/admin/v1/deployments/{name}-2/logs?follow=1", timeout=30
            ) as r:
                assert r.status_code == 200 and next(r.iter_lines())  # then the client leaves mid-follow
            assert chat(gw, name).choices  # the gateway is unharmed
        for replica in replicas:
            logs = docker_client.containers.get(replica).logs().decode()
            assert "/v1/chat/completions" in logs, f"{replica} got no request"
        assert cli("stop", name, "--timeout", "5").returncode == 0
        assert {docker_client.containers.get(r).status for r in replicas} == {"exited"}
        assert cli("rm", name).returncode == 0
        assert docker_client.containers.list(all=True, filters={"label": f"io.llmdock.group={name}"}) == []
    finally:
        cli("rm", "-f", name)
