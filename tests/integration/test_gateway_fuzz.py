"""Differential fuzz of the real ``llmdock serve``: 2,000 mutated HTTP/1.1 requests over raw sockets, in
front of an engine that records every request it receives, with h11 (as a server) as the oracle.

Asserted, for every case (tests/support/fuzz.py builds them; the seed makes them the same each run):

- nothing reaches the engine that h11 does not accept whole, and what does reach it has the method,
  target (less the query parameters that carry keys) and body h11 parsed, once;
- every connection gets its answers or a close within ``ANSWER_S``; answers parse as HTTP/1.1, and
  each answer the engine made is for the request in its place (the engine echoes a request's id);
- every refusal is a 4xx/5xx with an OpenAI error envelope, and none is the gateway's own 500;
- the gateway stays up: ``/health`` answers after every ``BATCH`` cases, no traceback in its log.

Only the wire is looked at, so the same test holds for any HTTP parser under the gateway. Another seed
or more cases: ``LLMDOCK_FUZZ_SEED=7 LLMDOCK_FUZZ_CASES=20000 pytest tests/integration/test_gateway_fuzz.py``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from llmdock.gateway.forwarding import scrub_query
from tests.support.fuzz import ID_RE, Case, Outcome, Parsed, Verdict, cases, exchange, h11_verdict
from tests.support.gateway import Served, serve
from tests.support.recorder import Recorder, RecorderThread

SEED = int(os.environ.get("LLMDOCK_FUZZ_SEED", "12"))
COUNT = int(os.environ.get("LLMDOCK_FUZZ_CASES", "2000"))
CONCURRENCY = 48
BATCH = 100
TIMEOUT_S = 1.0  # the gateway's header, body and send timeouts here (idle: twice that)
ANSWER_S = 5.0  # TIMEOUT_S, the deadline sweep (0.5 s) and a margin for a busy CI host
PROBES = {("GET", "/health"), ("GET", "/v1/models")}  # the gateway's own health probes


@dataclass
class Gateway:
    served: Served
    rec: Recorder
    key: str


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("fuzz")
    env = {"LLMDOCK_HOME": str(tmp / "home")}
    key = subprocess.run(
        [sys.executable, "-m", "llmdock.cli.main", "keys", "create", "fuzz"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    args = ["--no-docker", "--body-limit-mb", "1", "--upstream-timeout", "5"]
    for flag in ("--header-timeout", "--body-timeout", "--send-timeout"):
        args += [flag, str(TIMEOUT_S)]
    args += ["--idle-timeout", str(2 * TIMEOUT_S)]  # longer: a head begun after an answer gets its 408
    with RecorderThread() as rec, serve(tmp, *args, "--route", f"mock={rec.url}", env=env) as served:
        served.wait_ready(key)
        yield Gateway(served, rec, key)


async def health(port: int) -> str | None:
    """None when ``GET /health`` answers 200 within 5 s on a fresh connection; else what happened."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (OSError, asyncio.TimeoutError) as e:
        return f"/health: cannot connect: {type(e).__name__} {e}"
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
    except (OSError, asyncio.TimeoutError) as e:
        return f"/health: {type(e).__name__} {e}"
    finally:
        writer.close()
    return None if data.startswith(b"HTTP/1.1 200 ") else f"/health answered {data[:100]!r}"


async def run(port: int, todo: list[tuple[Case, Verdict]]) -> tuple[list[Outcome], list[str]]:
    outcomes: list[Outcome | None] = [None] * len(todo)
    down: list[str] = []
    queue = collections.deque(range(len(todo)))
    done = 0

    async def worker() -> None:
        nonlocal done
        while queue:
            i = queue.popleft()
            case, verdict = todo[i]
            outcomes[i] = await exchange(port, case, verdict, ANSWER_S)
            done += 1
            if done % BATCH == 0 and (why := await health(port)) is not None:
                down.append(f"after {done} cases: {why}")

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return [o for o in outcomes if o is not None], down


def answer_problems(case: Case, verdict: Verdict, out: Outcome) -> list[str]:
    problems = []
    for i, a in enumerate(out.answers):  # the engine echoes a request's id: each answer is its own
        got = ID_RE.search(a.body) if a.status == 200 else None  # (a 400 may quote the request)
        want = ID_RE.search(verdict.accepted[i].body) if i < len(verdict.accepted) else None
        if got is not None and (want is None or got.group() != want.group()):
            problems.append(f"answer {i + 1} is for {got.group()!r}, not {want and want.group()!r}")
    if out.hung:
        problems.append(f"no answer and no close within {ANSWER_S:g}s")
    if out.malformed:
        problems.append(f"malformed answer: {out.malformed}")
    if not out.answers and out.closed and not out.reset and case.data.strip(b"\r\n"):
        problems.append("closed with no answer")
    for a in out.answers:
        if not (200 <= a.status < 300 or 400 <= a.status < 600):
            problems.append(f"status {a.status}")
        if a.status >= 400 and a.body:  # a HEAD's refusal has no body to carry it
            try:
                error = json.loads(a.body)["error"]
                assert set(error) == {"message", "type", "param", "code"}
            except (ValueError, KeyError, TypeError, AssertionError):
                problems.append(f"{a.status} without an error envelope: {a.body[:200]!r}")
            else:
                if error["code"] == "internal_error":
                    problems.append(f"the gateway's own 500: {error['message']}")
    return [f"{case.show()}\n    -> {p}" for p in problems]


def expected_target(target: str) -> str:
    path, _, query = target.partition("?")
    query = scrub_query(query)
    return path + ("?" + query if query else "")


def engine_problems(rec: Recorder, todo: list[tuple[Case, Verdict]]) -> tuple[list[str], int]:
    """What reached the engine that h11 did not accept, or not as h11 parsed it; and how many arrived."""
    accepted: dict[bytes, Parsed] = {}
    for _, verdict in todo:
        for one in verdict.accepted:
            accepted[one.body] = one
    problems = [f"the engine got bytes that are not HTTP ({why}): {raw[:300]!r}" for why, raw in rec.garbage]
    counts: collections.Counter[bytes] = collections.Counter()
    arrived = 0
    for seen in list(rec.seen):
        if (seen.method, seen.target) in PROBES and not seen.body:
            continue
        arrived += 1
        counts[seen.body] += 1
        parsed = accepted.get(seen.body)
        m = ID_RE.search(seen.body)
        origin = todo[int(m.group(1))][0].show() if m and int(m.group(1)) < len(todo) else "no case id"
        if parsed is None:
            problems.append(
                f"reached the engine though h11 accepts no such request: {seen.method} {seen.target} "
                f"{seen.body[:200]!r}\n    from {origin}"
            )
        elif (seen.method, seen.target) != (parsed.method, expected_target(parsed.target)):
            problems.append(
                f"the engine got {seen.method} {seen.target}, h11 parsed {parsed.method} {parsed.target}"
                f"\n    from {origin}"
            )
        if counts[seen.body] == 2:
            problems.append(f"reached the engine more than once\n    from {origin}")
    return problems, arrived


@pytest.mark.slow
def test_differential_fuzz(gateway: Gateway) -> None:
    todo = [(case, h11_verdict(case.data)) for case in cases(SEED, COUNT, gateway.key)]
    t0 = time.monotonic()
    outcomes, down = asyncio.run(run(gateway.served.port, todo))
    took = time.monotonic() - t0
    problems = list(down)
    for (case, verdict), out in zip(todo, outcomes, strict=True):
        problems += answer_problems(case, verdict, out)
    engine, arrived = engine_problems(gateway.rec, todo)
    problems += engine
    log = gateway.served.log.read_text()
    if "Traceback" in log:
        problems.append(f"a traceback in the gateway's log:\n{log[log.index('Traceback') :][:3000]}")
    statuses = collections.Counter(a.status for o in outcomes for a in o.answers)
    whole = sum(len(v.accepted) for _, v in todo)
    print(
        f"{len(todo)} cases in {took:.1f}s; h11 accepts {whole} requests, {arrived} reached the engine; "
        f"answers by status {dict(sorted(statuses.items()))}; "
        f"closed unanswered {sum(1 for o in outcomes if o.closed and not o.answers)}"
    )
    assert gateway.served.proc.poll() is None, "the gateway exited"
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])
    assert arrived >= COUNT // 5, f"only {arrived} requests reached the engine: the fuzz tests little"


@pytest.mark.parametrize("target", [b"/health", b"/openapi.json", b"127.0.0.1:443"])
def test_connect_is_a_405_not_a_switch_of_protocols(gateway: Gateway, target: bytes) -> None:
    """Found by the fuzz (LLMDOCK_FUZZ_SEED=9): a 2xx to CONNECT switches protocols in h11, so
    ``CONNECT /health`` got its headers, no body, and a traceback in the log."""
    with socket.create_connection(("127.0.0.1", gateway.served.port), timeout=5) as sock:
        sock.sendall(b"CONNECT %b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % target)
        answer = b""
        while data := sock.recv(65536):  # to the close
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 ") and b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "method_not_allowed"
    assert "Traceback" not in gateway.served.log.read_text()
