"""The real ``llmdock serve`` (subprocess) in front of the support upstream: every error status, streams,
cancellation, mid-stream death, balancing and retry, keys, usage, metrics."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import cli
from tests.support.gateway import Served, serve
from tests.support.upstream import Upstream, UpstreamThread


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with UpstreamThread() as up:
        yield up


@pytest.fixture
def gw(home: Path, tmp_path: Path, upstream: Upstream) -> Iterator[Served]:
    with serve(tmp_path, "--no-docker", "--route", f"mock={upstream.url}", "--body-limit-mb", "1") as served:
        yield served


def wait_for(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def healthy(client: httpx.Client, gw: Served) -> int:
    models = client.get(gw.url + "/admin/v1/models").json()["data"]
    return sum(r["healthy"] for m in models for r in m["replicas"])


def error(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def test_json_and_stream_through_the_openai_client(gw: Served, upstream: Upstream) -> None:
    from openai import NotFoundError, OpenAI

    with OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0) as client:
        assert [m.id for m in client.models.list()] == ["mock"]
        assert client.models.retrieve("mock").id == "mock"
        with pytest.raises(NotFoundError) as e:
            client.models.retrieve("nope")
        assert e.value.status_code == 404 and "does not exist" in e.value.message
        reply = client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi"}])
        assert reply.usage is not None and reply.usage.completion_tokens == 64
        chunks = list(
            client.chat.completions.create(
                model="mock", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
    # 64 content chunks; the usage chunk the gateway asked for itself is not shown to this client
    assert len(chunks) == 64 and all(c.choices for c in chunks)
    assert upstream.bodies[-1]["stream_options"] == {"include_usage": True}

    def usage() -> list[dict[str, Any]]:
        rows = [r for r in json.loads(cli("usage", "--json").stdout) if r["model"] == "mock"]
        return rows if rows and rows[0]["requests"] == 2 else []

    rows = wait_for(usage)
    assert rows == [
        {
            "key": "-",
            "model": "mock",
            "requests": 2,
            "errors": 0,
            "prompt_tokens": 10,
            "completion_tokens": 128,
        }
    ]


def test_chunks_are_passed_one_for_one(gw: Served) -> None:
    body = {
        "model": "mock",
        "stream": True,
        "stream_options": {"include_usage": True},
        "mock": {"delay": 0.002},
    }
    with httpx.Client() as client, client.stream("POST", gw.url + "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [e for e in r.iter_text() if e]
    text = "".join(events)
    assert text.count("data: ") == 66  # 64 content, usage (asked for by the client, so kept), [DONE]
    assert '"prompt_tokens": 5' in text and text.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"model": "nope", "messages": []}', 404, "model_not_found"),
        (b'{"model": "mock", "messa', 400, "invalid_request"),
        (b'{"messages": []}', 400, "invalid_request"),
        (b'{"model": "mock", "pad": "' + b"x" * 2_000_000 + b'"}', 413, "request_too_large"),
    ],
)
def test_request_errors(gw: Served, body: bytes, status: int, code: str) -> None:
    r = httpx.post(gw.url + "/v1/chat/completions", content=body)
    assert r.status_code == status and error(r)["code"] == code


def test_keys_401_403_429_and_revoke(home: Path, tmp_path: Path, upstream: Upstream) -> None:
    full = cli("keys", "create", "alice").stdout.strip()
    limited = cli("keys", "create", "bob", "--models", "other", "--rpm", "1").stdout.strip()
    slow = cli("keys", "create", "carol", "--rpm", "1").stdout.strip()
    admin = cli("keys", "create", "root", "--admin").stdout.strip()
    assert full.startswith("sk-llmdock-") and full not in cli("keys", "ls").stdout
    with serve(tmp_path, "--no-docker", "--route", f"mock={upstream.url}") as gw, httpx.Client() as c:
        url, body = gw.url + "/v1/chat/completions", {"model": "mock", "messages": []}
        assert c.post(url, json=body).status_code == 401
        assert c.post(url, json=body, headers={"Authorization": "Bearer sk-llmdock-wrong"}).status_code == 401
        assert c.post(url, json=body, headers={"Authorization": f"Bearer {full}"}).status_code == 200
        r = c.post(url, json=body, headers={"Authorization": f"Bearer {limited}"})
        assert r.status_code == 403 and error(r)["code"] == "model_not_allowed"
        assert (
            c.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {limited}"}).json()["data"] == []
        )
        r = c.get(gw.url + "/v1/models/mock", headers={"Authorization": f"Bearer {limited}"})
        assert (
            r.status_code == 404 and error(r)["code"] == "model_not_found"
        )  # not named to a key that may not use it
        assert c.post(url, json=body, headers={"Authorization": f"Bearer {slow}"}).status_code == 200
        r = c.post(url, json=body, headers={"Authorization": f"Bearer {slow}"})
        assert r.status_code == 429 and error(r)["type"] == "rate_limit_error"
        assert (
            c.get(gw.url + "/admin/v1/models", headers={"Authorization": f"Bearer {full}"}).status_code == 403
        )
        assert c.get(gw.url + "/metrics").status_code == 401  # with keys, metrics need one too
        # ... an admin one: they name every key and model (issue 12, defect 12)
        assert c.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {limited}"}).status_code == 403
        assert c.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
        assert cli("keys", "revoke", "alice").returncode == 0
        assert wait_for(
            lambda: c.post(url, json=body, headers={"Authorization": f"Bearer {full}"}).status_code == 401
        )


def test_no_replica_503_and_timeout_504(home: Path, tmp_path: Path, upstream: Upstream) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens here
    args = ["--no-docker", "--route", f"mock={upstream.url}", "--route", f"gone=http://127.0.0.1:{dead}"]
    with serve(tmp_path, *args, "--upstream-timeout", "0.5") as gw:
        r = httpx.post(gw.url + "/v1/chat/completions", json={"model": "gone", "messages": []})
        assert r.status_code == 503 and error(r)["code"] == "model_unavailable"
        r = httpx.post(gw.url + "/v1/chat/completions", json={"model": "mock", "mock": {"hang": True}})
        assert r.status_code == 504 and error(r)["code"] == "upstream_timeout"


def test_client_disconnect_cancels_upstream(gw: Served, upstream: Upstream) -> None:
    body = {"model": "mock", "stream": True, "mock": {"delay": 0.05}}
    with httpx.Client() as client, client.stream("POST", gw.url + "/v1/chat/completions", json=body) as r:
        first = next(r.iter_raw())
        assert first.startswith(b"data: ")
    assert wait_for(lambda: upstream.lost_streams == 1 and upstream.active_streams == 0)


def test_upstream_death_mid_stream_ends_with_error_event(gw: Served, upstream: Upstream) -> None:
    body = {"model": "mock", "stream": True, "mock": {"die_after": 10}}
    with httpx.Client() as client, client.stream("POST", gw.url + "/v1/chat/completions", json=body) as r:
        text = "".join(r.iter_text())
    assert text.count('"delta"') == 10
    last = json.loads(text.strip().split("\n\n")[-1].removeprefix("data: "))
    assert last["error"]["code"] == "upstream_error"
    assert httpx.post(gw.url + "/v1/chat/completions", json={"model": "mock"}).status_code == 200


def test_least_outstanding_and_retry_when_a_replica_refuses(home: Path, tmp_path: Path) -> None:
    with UpstreamThread() as a, UpstreamThread() as b:
        args = ["--no-docker", "--route", f"mock={a.url}", "--route", f"mock={b.url}"]
        with serve(tmp_path, *args) as gw, httpx.Client(timeout=30) as client:
            assert wait_for(lambda: healthy(client, gw) == 2)
            slow = {"model": "mock", "stream": True, "mock": {"delay": 0.05}}
            with client.stream("POST", gw.url + "/v1/chat/completions", json=slow) as r:
                chunks = r.iter_raw()  # held: a dropped iterator closes the response
                next(chunks)
                busy = a if a.active_streams else b
                idle = b if busy is a else a
                before = len(idle.bodies)
                for _ in range(4):
                    assert (
                        client.post(gw.url + "/v1/chat/completions", json={"model": "mock"}).status_code
                        == 200
                    )
                assert len(idle.bodies) == before + 4  # all went to the replica with nothing outstanding
    # b stops listening. With a 60 s health interval only the probe at start runs, so the health loop
    # cannot take b out: a request that picks b must be retried on a by the proxy itself.
    b_thread = UpstreamThread()
    with UpstreamThread() as a, b_thread as b:
        args = ["--no-docker", "--route", f"mock={a.url}", "--route", f"mock={b.url}"]
        with serve(tmp_path, *args, "--health-interval", "60") as gw, httpx.Client(timeout=30) as client:
            assert wait_for(lambda: healthy(client, gw) == 2)
            b_thread.close()
            codes = [
                client.post(gw.url + "/v1/chat/completions", json={"model": "mock"}).status_code
                for _ in range(6)
            ]
            assert codes == [200] * 6
            assert len(a.bodies) == 6
            # ties rotate, so one of the first two picks b, is refused, goes to a, and b is then out
            series = metrics(client.get(gw.url + "/metrics").text)
            assert series[("llmdock_upstream_retries_total", (("model", "mock"),))] == 1
            assert healthy(client, gw) == 1


def metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> ``{(name, ((label, value), …)): value}``; labels sorted, comments skipped.

    Example: ``metrics('a_total{model="m"} 2')`` is ``{("a_total", (("model", "m"),)): 2.0}``.
    """
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        assert m, f"not a Prometheus sample: {line!r}"
        labels = re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or "")
        key = (m.group(1), tuple(sorted(labels)))
        assert key not in out, f"sample given twice: {line!r}"
        out[key] = float(m.group(3))
    return out


def test_metrics_and_admin_schema(gw: Served) -> None:
    httpx.post(gw.url + "/v1/chat/completions", json={"model": "mock"})
    httpx.post(gw.url + "/v1/chat/completions", json={"model": "mock", "stream": True}).read()
    text = httpx.get(gw.url + "/metrics").text
    for series in (
        'llmdock_requests_total{model="mock",key="-",status="200"} 2',
        'llmdock_tokens_total{model="mock",key="-",kind="completion"} 128',
        'llmdock_time_to_first_token_seconds_count{model="mock",key="-"} 1',
        'llmdock_in_flight_requests{model="mock"} 0',
        "llmdock_replica_healthy{",
        "llmdock_request_duration_seconds_bucket{",
    ):
        assert series in text
    schema = httpx.get(gw.url + "/openapi.json").json()
    assert "/admin/v1/deployments/{name}/logs" in schema["paths"]
    assert httpx.get(gw.url + "/admin/v1/models").json()["data"][0]["id"] == "mock"
    for bad in ({"name": "k", "rpm": "5"}, {"name": "k", "models": "abc"}):
        r = httpx.post(gw.url + "/admin/v1/keys", json=bad)
        assert r.status_code == 400 and error(r)["type"] == "invalid_request_error"
    r = httpx.get(gw.url + "/admin/v1/usage?since=abc")
    assert r.status_code == 400 and "bad request" in error(r)["message"]


def test_refuses_public_bind_without_keys(home: Path) -> None:
    done = cli("serve", "--host", "0.0.0.0", "--port", "0", "--no-docker", timeout=30)
    assert done.returncode == 1 and "without any API key" in done.stderr and "--insecure" in done.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--route", "mock"], "is not MODEL=URL"),
        (["--route", "mock=127.0.0.1:8001"], "is not MODEL=URL"),
        (["--route", "=http://127.0.0.1:8001"], "is not MODEL=URL"),
        (["--route", "mock=http://h:port"], "is not MODEL=URL"),
        (["--health-interval", "0"], "is not a positive number"),
        (["--health-interval", "nan"], "is not a positive number"),
        (["--replica-concurrency", "0"], "--replica-concurrency 0 is too small"),
        (["--queue-length", "-1"], "--queue-length -1 is too small"),
        (["--queue-wait", "nan"], "is not a number of seconds"),
    ],
)
def test_bad_serve_flags_are_refused_before_listening(home: Path, args: list[str], says: str) -> None:
    done = cli("serve", "--port", "0", "--no-docker", *args, timeout=30)
    assert done.returncode == 1 and says in done.stderr, done.stderr
    assert "gateway on" not in done.stderr


def test_revoking_the_last_key_does_not_open_a_public_gateway(
    home: Path, tmp_path: Path, upstream: Upstream
) -> None:
    only = cli("keys", "create", "only", "--admin").stdout.strip()
    with serve(tmp_path, "--host", "0.0.0.0", "--no-docker", "--route", f"mock={upstream.url}") as gw:
        url, body = gw.url + "/v1/chat/completions", {"model": "mock", "messages": []}
        with httpx.Client() as c:
            assert c.post(url, json=body, headers={"Authorization": f"Bearer {only}"}).status_code == 200
            assert cli("keys", "revoke", "only").returncode == 0
            assert wait_for(lambda: c.post(url, json=body).status_code == 401)
            assert c.get(gw.url + "/admin/v1/keys").status_code == 401
            r = c.post(gw.url + "/admin/v1/keys", json={"name": "pwn", "admin": True})
            assert r.status_code == 401 and error(r)["type"] == "invalid_request_error"
