"""Conformance and abuse suite against the real ``llmdock serve`` (a subprocess on a free port), driven by
raw sockets where the bytes matter: each of the 15 defects of issue 12 as a test that failed on the old
hand-written server and client, plus slowloris and pipelining floods that must leave other clients served,
``Date`` on answers, graceful shutdown and a taken port.

One gateway serves the module, with a key configured and short deadlines (1 s for headers, body and
sends), in front of the support upstream (``mock``) and of a raw engine written here that misbehaves on
purpose (``continue``, ``switch``, ``html``, ``bigheaders``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import Served, serve
from tests.support.upstream import Upstream, UpstreamThread

DEADLINE_S = 1.0  # header, body and send timeouts of the module's gateway
WAIT = 5.0


class RawEngine:
    """An engine answering exact bytes by the request's ``model``: ``continue`` sends ``100 Continue``
    before its answer, ``switch`` a ``101``, ``html`` an HTML 500 page, ``bigheaders`` a 100 KiB header."""

    MODELS = ("continue", "switch", "html", "bigheaders")

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RawEngine:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.connection, args=(conn,), daemon=True).start()

    def connection(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(rest) < length:
                    rest += conn.recv(65536)
                body, buf = rest[:length], rest[length:]
                path = head.split(b" ")[1]
                conn.sendall(self.answer(path, body))

    def answer(self, path: bytes, body: bytes) -> bytes:
        def ok(data: bytes, extra: bytes = b"") -> bytes:
            return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%b\r\n%b" % (
                len(data),
                extra,
                data,
            )

        if path == b"/health":
            return ok(b"{}")
        if path == b"/v1/models":
            return ok(json.dumps({"data": [{"id": m} for m in self.MODELS]}).encode())
        model = json.loads(body).get("model")
        if model == "continue":
            return b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b'{"answer": "final"}')
        if model == "switch":
            return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
        if model == "html":
            page = b"<html><body><h1>500 Internal Server Error</h1></body></html>"
            return (
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%b"
                % (
                    len(page),
                    page,
                )
            )
        return ok(b"{}", b"X-Big: " + b"b" * 100_000 + b"\r\n")


@dataclass
class Setup:
    gw: Served
    up: Upstream
    key: str
    home: Path

    def auth(self) -> bytes:
        return b"Authorization: Bearer %b\r\n" % self.key.encode()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("conformance")
    env = {"LLMDOCK_HOME": str(tmp / "home")}
    key = subprocess.run(
        [sys.executable, "-m", "llmdock.cli.main", "keys", "create", "tester", "--admin"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with UpstreamThread(chunks=64) as up, RawEngine() as raw:
        routes = ["--route", f"mock={up.url}"]
        for m in RawEngine.MODELS:
            routes += ["--route", f"{m}={raw.url}"]
        args = [
            "--no-docker",
            *routes,
            "--body-limit-mb",
            "1",
            "--header-timeout",
            str(DEADLINE_S),
            "--body-timeout",
            str(DEADLINE_S),
            "--send-timeout",
            str(DEADLINE_S),
            "--upstream-timeout",
            "5",
        ]
        with serve(tmp, *args, env=env) as gw:
            setup = Setup(gw, up, key, tmp / "home")
            deadline = time.monotonic() + 10
            while not all(m["llmdock"]["ready"] for m in models(setup)):  # health probes have run
                assert time.monotonic() < deadline, models(setup)
                time.sleep(0.05)
            yield setup


def models(s: Setup) -> list[dict[str, Any]]:
    r = httpx.get(s.gw.url + "/v1/models", headers={"Authorization": f"Bearer {s.key}"})
    return list(r.json()["data"])


def connect(s: Setup) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", s.gw.port), timeout=WAIT)
    return sock


def exchange(s: Setup, data: bytes, read_until_close: bool = True) -> bytes:
    """Send ``data`` on a fresh connection; what came back until the gateway closed it (or WAIT)."""
    with connect(s) as sock:
        sock.sendall(data)
        return read_all(sock) if read_until_close else read_one(sock)


def read_all(sock: socket.socket) -> bytes:
    got = b""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        got += data
    return got


def read_one(sock: socket.socket) -> bytes:
    """One whole answer framed by Content-Length."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int(header(head, b"content-length") or b"0")
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip()
    return None


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def envelope_of(answer: bytes) -> dict[str, Any]:
    body = answer.partition(b"\r\n\r\n")[2]
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


def chat(s: Setup, body: dict[str, Any] | None = None) -> bytes:
    data = json.dumps(body or {"model": "mock", "messages": []}).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n%b"
        b"Content-Length: %d\r\n\r\n%b" % (s.auth(), len(data), data)
    )


def served(s: Setup) -> bool:
    """Another client is served, now."""
    r = httpx.post(
        s.gw.url + "/v1/chat/completions",
        json={"model": "mock", "messages": []},
        headers={"Authorization": f"Bearer {s.key}"},
        timeout=WAIT,
    )
    return r.status_code == 200


# ---- 1. a pipelining client that never reads ------------------------------------------------------
def test_1_a_pipelining_client_that_never_reads_holds_bounded_memory(setup: Setup) -> None:
    before = setup.gw.rss_kib()
    request = b"GET /openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with connect(setup) as sock:
        sock.setblocking(False)
        sent, deadline = 0, time.monotonic() + 3
        while time.monotonic() < deadline:  # as fast as the gateway reads, for 3 s; it stops reading
            try:
                sent += sock.send(request * 64)
            except BlockingIOError:
                time.sleep(0.01)
            except (ConnectionResetError, BrokenPipeError):
                break  # the send timeout cut it off: also an answer
            grown_mib = (setup.gw.rss_kib() - before) / 1024
            assert grown_mib < 40, f"{grown_mib:.0f} MiB for one client that never reads"
        grown_mib = (setup.gw.rss_kib() - before) / 1024
        assert served(setup)
    assert sent > 0
    assert grown_mib < 40, f"{grown_mib:.0f} MiB for one client that never reads"


# ---- 2. slowloris, idle floods, connection caps ---------------------------------------------------
def test_2_slowloris_connections_get_408_and_others_are_served(setup: Setup) -> None:
    socks = [connect(setup) for _ in range(30)]
    try:
        for sock in socks:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
        t0 = time.monotonic()
        for _ in range(3):  # a byte now and then, never a whole head
            for sock in socks:
                sock.sendall(b"X")
            assert served(setup)
            time.sleep(0.3)
        answers = [read_all(sock) for sock in socks]
        assert time.monotonic() - t0 < DEADLINE_S + 3
        for answer in answers:
            assert status_of(answer) == 408 and envelope_of(answer)["code"] == "request_timeout"
    finally:
        for sock in socks:
            sock.close()


def test_2_a_slow_body_gets_408(setup: Setup) -> None:
    with connect(setup) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%bContent-Length: 100\r\n\r\n{" % setup.auth()
        )
        answer = read_all(sock)
    assert status_of(answer) == 408


def test_2_connections_beyond_the_cap_per_address_are_refused_with_429(home: Path, tmp_path: Path) -> None:
    with serve(tmp_path, "--no-docker", "--max-connections-per-ip", "5") as gw:
        held = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(5)]
        try:
            time.sleep(0.2)  # accepted by the gateway (no answer tells when; a margin, not a sync)
            with socket.create_connection(("127.0.0.1", gw.port), timeout=WAIT) as extra:
                answer = read_all(extra)
            assert status_of(answer) == 429 and envelope_of(answer)["code"] == "too_many_connections"
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + WAIT
        while True:  # the closed ones are counted out
            try:
                if httpx.get(gw.url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline


# ---- 3. a body is read only after the key --------------------------------------------------------
def test_3_a_keyless_request_is_refused_before_its_body_is_read(setup: Setup) -> None:
    with connect(setup) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 900000\r\n\r\n")
        answer = read_one(sock)  # without one byte of the body sent
    assert status_of(answer) == 401 and header(answer.partition(b"\r\n\r\n")[0], b"connection") == b"close"


def test_3_a_body_over_the_limit_is_413_and_many_containers_are_400(setup: Setup) -> None:
    big = b'{"model": "mock", "x": "' + b"a" * 1_100_000 + b'"}'
    r = httpx.post(
        setup.gw.url + "/v1/chat/completions", content=big, headers={"Authorization": f"Bearer {setup.key}"}
    )
    assert r.status_code == 413
    many = b'{"model": "mock", "x": [' + b"{}," * 300_000 + b"{}]}"
    r = httpx.post(
        setup.gw.url + "/v1/chat/completions", content=many, headers={"Authorization": f"Bearer {setup.key}"}
    )
    assert r.status_code == 400 and "arrays and objects" in r.json()["error"]["message"]


# ---- 4. admin safety -----------------------------------------------------------------------------
def test_4_the_open_admin_api_refuses_web_pages_and_plain_text(home: Path, tmp_path: Path) -> None:
    with serve(tmp_path, "--no-docker") as gw:
        url = gw.url + "/admin/v1/keys"
        body = json.dumps({"name": "pwn", "admin": True})
        cross = httpx.post(
            url, content=body, headers={"Content-Type": "text/plain", "Origin": "http://evil.example"}
        )
        assert cross.status_code == 403 and cross.json()["error"]["code"] == "admin_only"
        plain = httpx.post(url, content=body, headers={"Content-Type": "text/plain"})
        assert plain.status_code == 415
        rebound = httpx.get(url, headers={"Host": "evil.example:8000"})
        assert rebound.status_code == 403
        assert httpx.get(url).json() == []  # nothing was created
        assert httpx.post(url, json={"name": "ok"}).status_code == 201  # a local JSON call is fine


# ---- 5. an engine's 1xx --------------------------------------------------------------------------
def test_5_an_engines_100_continue_is_not_the_answer(setup: Setup) -> None:
    with connect(setup) as sock:
        sock.sendall(chat(setup, {"model": "continue"}))
        first = read_one(sock)
        sock.sendall(chat(setup))  # the next request on the connection gets its own answer
        second = read_one(sock)
    assert status_of(first) == 200 and first.endswith(b'{"answer": "final"}')
    assert status_of(second) == 200 and b'"object": "chat.completion"' in second


def test_5_an_engines_101_is_a_502(setup: Setup) -> None:
    answer = exchange(setup, chat(setup, {"model": "switch"}), read_until_close=False)
    assert status_of(answer) == 502 and envelope_of(answer)["code"] == "upstream_error"


# ---- 6. HEAD -------------------------------------------------------------------------------------
def test_6_head_is_answered_at_once_without_a_body(setup: Setup) -> None:
    with connect(setup) as sock:
        sock.sendall(b"HEAD /v1/models HTTP/1.1\r\nHost: x\r\n%b\r\n" % setup.auth())
        t0 = time.monotonic()
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        assert time.monotonic() - t0 < 1
        assert head.endswith(b"\r\n\r\n") and status_of(head) == 200
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # no body came between
        assert status_of(read_one(sock)) == 200


# ---- 7. pipelining -------------------------------------------------------------------------------
def test_7_two_thousand_pipelined_requests_in_one_write_are_all_answered(setup: Setup) -> None:
    with connect(setup) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 2000)
        got = 0
        buf = b""
        deadline = time.monotonic() + 30
        while got < 2000 and time.monotonic() < deadline:
            buf += sock.recv(1 << 20)
            got = buf.count(b"HTTP/1.1 200 OK")
    assert got == 2000 and b" 431 " not in buf


# ---- 8. a client that stops reading a stream -----------------------------------------------------
def test_8_a_stream_whose_client_stops_reading_is_cut_and_the_engine_told(home: Path, tmp_path: Path) -> None:
    with UpstreamThread(chunks=200_000) as up:
        args = ["--no-docker", "--route", f"mock={up.url}", "--send-timeout", "1"]
        with serve(tmp_path, *args) as gw, socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            body = json.dumps({"model": "mock", "stream": True}).encode()
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b"
                % (len(body), body)
            )
            deadline = time.monotonic() + 15
            while not up.lost_streams:  # never read: the gateway's send timeout ends it, and the engine's
                assert time.monotonic() < deadline, "the engine's stream was never aborted"
                time.sleep(0.05)
            assert served_by(gw)  # and others are served meanwhile


def served_by(gw: Served) -> bool:
    return (
        httpx.post(gw.url + "/v1/chat/completions", json={"model": "mock"}, timeout=WAIT).status_code == 200
    )


# ---- 9. Upgrade on a POST ------------------------------------------------------------------------
def test_9_an_upgrade_offer_on_a_post_is_ignored_and_the_body_kept(setup: Setup) -> None:
    data = json.dumps({"model": "mock", "messages": []}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Type: application/json\r\n"
        b"%bContent-Length: %d\r\n\r\n%b" % (setup.auth(), len(data), data)
    )
    answer = exchange(setup, request, read_until_close=False)
    assert status_of(answer) == 200 and b"chat.completion" in answer


# ---- 10. deep JSON -------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/admin/v1/keys"])
def test_10_deeply_nested_json_is_a_400(setup: Setup, path: str) -> None:
    deep = b'{"model": "mock", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(
        setup.gw.url + path,
        content=deep,
        headers={"Authorization": f"Bearer {setup.key}", "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "nested deeper" in r.json()["error"]["message"]
    assert "Traceback" not in setup.gw.log.read_text()


# ---- 11. forwarding rules ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "status"),
    [
        (b"/v1/../admin/v1/keys", 400),
        (b"/v1/%2e%2e/admin/v1/keys", 400),
        (b"/v1/%2E%2E/admin/v1/keys", 400),
        (b"/v1//chat/completions", 400),
        (b"/v1/chat/completions/..", 400),
        (b"/v1/load_lora_adapter", 404),
        (b"/v1/unload_lora_adapter", 404),
    ],
)
def test_11_paths_that_climb_or_reach_engine_admin_are_refused(
    setup: Setup, target: bytes, status: int
) -> None:
    before = len(setup.up.paths)
    data = b'{"model": "mock", "lora_name": "x", "lora_path": "/etc"}'
    request = b"POST %b HTTP/1.1\r\nHost: x\r\n%bContent-Length: %d\r\n\r\n%b" % (
        target,
        setup.auth(),
        len(data),
        data,
    )
    answer = exchange(setup, request, read_until_close=False)
    assert status_of(answer) == status, answer
    assert envelope_of(answer)["type"] == "invalid_request_error"
    assert len(setup.up.paths) == before  # nothing reached the engine


def test_11_keys_in_the_query_string_never_reach_the_engine(setup: Setup) -> None:
    r = httpx.post(
        setup.gw.url + "/v1/chat/completions?api_key=sk-secret&token=t0k&keep=1",
        json={"model": "mock", "messages": []},
        headers={"Authorization": f"Bearer {setup.key}"},
    )
    assert r.status_code == 200
    assert setup.up.paths[-1] == "/v1/chat/completions?keep=1"


# ---- 12. /metrics is for admins: test_gateway_proxy.py::test_keys_401_403_429_and_revoke ----------


# ---- 13. framing looser than RFC 9112 ------------------------------------------------------------
@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (b"POST /v1/chat/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /health\r\n\r\n", 400),
        (b"GET /health HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
            400,
        ),
        (
            b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"GET /health HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: a\r\nX-Big: " + b"h" * 70_000 + b"\r\n\r\n", 431),
    ],
    ids=[
        "te-gzip-chunked",
        "te-on-http10",
        "no-host",
        "two-hosts",
        "no-version",
        "http2-version",
        "two-lengths",
        "cl-and-te",
        "nul",
        "huge-header",
    ],
)
def test_13_framing_refused_per_rfc_9112(setup: Setup, request_bytes: bytes, status: int) -> None:
    answer = exchange(setup, request_bytes)
    assert status_of(answer) == status, answer[:300]
    assert envelope_of(answer)["message"]
    assert header(answer.partition(b"\r\n\r\n")[0], b"connection") == b"close"


def test_13_a_refusal_does_not_quote_a_whole_malformed_line_back(setup: Setup) -> None:
    secret = b"sk-" + b"s" * 200
    answer = exchange(
        setup, b"GET /health HTTP/1.1\r\nHost: a\r\nAuthorization : Bearer " + secret + b"\r\n\r\n"
    )
    assert status_of(answer) == 400
    message = envelope_of(answer)["message"]
    assert "malformed HTTP request" in message and len(message) < 200
    assert "sk-" not in message and "Bearer" not in message  # what is wrong, never the line itself


def test_13_authorization_in_a_chunked_trailer_is_not_honoured(setup: Setup) -> None:
    data = b'{"model": "mock", "messages": []}'
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n%b\r\n0\r\n%b\r\n" % (len(data), data, setup.auth())
    )
    answer = exchange(setup, request, read_until_close=False)
    assert status_of(answer) == 401


# ---- 14. an engine's headers and error pages -----------------------------------------------------
def test_14_an_engines_huge_headers_are_a_502(setup: Setup) -> None:
    answer = exchange(setup, chat(setup, {"model": "bigheaders"}), read_until_close=False)
    assert status_of(answer) == 502 and envelope_of(answer)["code"] == "upstream_error"


def test_14_an_engines_html_500_is_wrapped_in_the_envelope(setup: Setup) -> None:
    answer = exchange(setup, chat(setup, {"model": "html"}), read_until_close=False)
    error = envelope_of(answer)
    assert status_of(answer) == 500 and error["type"] == "server_error"
    assert "500 Internal Server Error" in error["message"] and "<html>" not in error["message"]


# ---- 15. admin paths are matched whole -----------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["/admin/anything/keys", "/admin/v2/keys", "/admin//v1/keys", "/admin/v1/x/../keys"]
)
def test_15_only_admin_v1_reaches_the_admin_api(setup: Setup, path: str) -> None:
    answer = exchange(
        setup, b"GET %b HTTP/1.1\r\nHost: x\r\n%b\r\n" % (path.encode(), setup.auth()), read_until_close=False
    )
    assert status_of(answer) == 404, answer


# ---- also ----------------------------------------------------------------------------------------
def test_answers_carry_date(setup: Setup) -> None:
    r = httpx.get(setup.gw.url + "/health")
    assert r.headers["date"].endswith(" GMT")
    answer = exchange(setup, b"GET /health HTTP/1.1\r\n\r\n")  # refused by the server itself
    assert header(answer.partition(b"\r\n\r\n")[0], b"date") is not None


def test_a_multipart_transcription_is_routed_by_its_model_field(setup: Setup) -> None:
    r = httpx.post(
        setup.gw.url + "/v1/audio/transcriptions",
        files={"file": ("a.wav", b"RIFF....", "audio/wav")},
        data={"model": "mock"},
        headers={"Authorization": f"Bearer {setup.key}"},
    )
    # the support upstream answers JSON bodies only: a 400 from it shows the form reached the engine
    assert r.status_code == 400 and setup.up.paths[-1] == "/v1/audio/transcriptions"


def test_a_taken_port_is_one_line_and_exit_1(home: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "llmdock.cli.main", "serve", "--no-docker", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1
    assert f"port {port}" in done.stderr and "already in use" in done.stderr and "--port" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 2  # the error and its hint: no traceback, no warnings


def test_sigterm_lets_streams_finish_then_ends_the_rest_with_an_error_event(
    home: Path, tmp_path: Path
) -> None:
    async def stream(url: str, results: list[str]) -> None:
        import aiohttp

        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json={"model": "mock", "stream": True, "mock": {"hold": True}}) as r,
        ):
            results.append((await r.read()).decode())

    with UpstreamThread() as up:
        for drain, release in ((5.0, True), (0.5, False)):
            args = ["--no-docker", "--route", f"mock={up.url}", "--drain", str(drain)]
            with serve(tmp_path, *args) as gw:
                results: list[str] = []
                url = gw.url + "/v1/chat/completions"

                async def main(
                    gw: Served = gw, url: str = url, results: list[str] = results, release: bool = release
                ) -> None:
                    tasks = [asyncio.create_task(stream(url, results)) for _ in range(3)]
                    while up.held_streams < 3:
                        await asyncio.sleep(0.02)
                    gw.proc.send_signal(signal.SIGTERM)
                    await asyncio.sleep(0.3)
                    if release:
                        up.release()
                    await asyncio.wait_for(asyncio.gather(*tasks), 15)

                asyncio.run(main())
                assert gw.proc.wait(15) == 0
            assert len(results) == 3
            for text in results:
                if release:  # finished within the deadline: every event
                    assert text.count('"delta"') == 64 and text.endswith("data: [DONE]\n\n")
                else:
                    last = json.loads(text.strip().split("\n\n")[-1].removeprefix("data: "))
                    assert last["error"]["code"] == "gateway_shutdown"
            up.release()
