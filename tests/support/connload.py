"""Many connections held against a real gateway at once, with its memory, descriptors and a health
request's time measured before, during and after. Used by ``benchmarks/gateway/conns.py`` (1,000
streams and 5,000 idle connections) and by a scaled-down slow test in test_gateway_load.py.

Streams are ``POST /v1/chat/completions`` with ``"stream": true`` held open by the support upstream
(:class:`tests.support.upstream.Upstream`, ``{"mock": {"hold": true}}``) after their first event;
idle connections are connected and send nothing. Both come from their own loopback source addresses
(127.0.1.x for idle, 127.0.2.x for streams, at most ``PER_ADDRESS`` each), so the gateway's per-address
cap (1,000 by default) stays as shipped; the health and "other client" requests come from 127.0.0.1.
Raw sockets throughout: a client costs little, so the figures are the gateway's::

    report = asyncio.run(hold(port, pid, up, streams=1000, idle=5000))
    report["during"]["rss_mib"], report["during"]["health_ms"], report["served_during"]
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

from tests.support.upstream import Upstream

PER_ADDRESS = 900  # below the gateway's default cap per client address (1,000)
STREAM_BODY = json.dumps({"model": "mock", "stream": True, "mock": {"hold": True}}).encode()
CHAT_BODY = json.dumps({"model": "mock", "messages": []}).encode()


def raise_fd_limit(want: int) -> int:
    """Raise this process's descriptor limit (children inherit it) towards ``want``; the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(soft, target)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def request(path: str, body: bytes | None = None) -> bytes:
    if body is None:
        return b"GET %b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode()
    return (
        b"POST %b HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
        % (path.encode(), len(body), body)
    )


async def timed(port: int, data: bytes, timeout: float = 30) -> tuple[float, int]:
    """Milliseconds for one request on a fresh connection from 127.0.0.1 until its whole answer; status."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(data)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            ),
            0,
        )
        await asyncio.wait_for(reader.readexactly(length), timeout)
    finally:
        writer.close()
    return (time.perf_counter() - t0) * 1000, int(head.split(b" ", 2)[1])


async def snapshot(pid: int, port: int, samples: int = 5) -> dict[str, Any]:
    """RSS, descriptors, and the median time of ``samples`` sequential ``GET /health``."""
    times = []
    for _ in range(samples):
        ms, status = await timed(port, request("/health"))
        assert status == 200, f"/health answered {status}"
        times.append(ms)
    times.sort()
    return {
        "rss_mib": round(rss_mib(pid), 1),
        "fds": fds(pid),
        "health_ms": round(times[len(times) // 2], 2),
        "health_max_ms": round(times[-1], 2),
    }


async def open_idle(port: int, count: int) -> list[asyncio.StreamWriter]:
    """``count`` connections that send nothing, opened 100 at a time."""
    writers: list[asyncio.StreamWriter] = []
    for start in range(0, count, 100):
        batch = range(start, min(count, start + 100))
        opened = await asyncio.gather(
            *(
                asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.1.{1 + i // PER_ADDRESS}", 0))
                for i in batch
            )
        )
        writers += [w for _, w in opened]
    return writers


async def one_stream(port: int, source: str, opened: list[int]) -> str:
    """A held stream: sent, its first event read (counted in ``opened``), then read to its end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(request("/v1/chat/completions", STREAM_BODY))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        first = await reader.readuntil(b"\n\n")
        opened[0] += 1
        rest = await reader.readuntil(b"0\r\n\r\n")  # the last chunk
        return (first + rest).decode("latin-1")
    finally:
        writer.close()


async def hold(
    port: int, pid: int, up: Upstream, streams: int, idle: int, open_timeout: float = 120
) -> dict[str, Any]:
    """Hold ``idle`` idle connections and ``streams`` streams at once; measure before, during, after.

    ``served_during``: a chat completion from another address was answered 200 while all were held.
    """
    loop = asyncio.get_running_loop()
    report: dict[str, Any] = {"streams": streams, "idle": idle, "before": await snapshot(pid, port)}
    t0 = loop.time()
    writers = await open_idle(port, idle)
    report["idle_open_s"] = round(loop.time() - t0, 2)
    opened = [0]
    t0 = loop.time()
    tasks = [
        asyncio.ensure_future(one_stream(port, f"127.0.2.{1 + i // PER_ADDRESS}", opened))
        for i in range(streams)
    ]
    try:
        while not (opened[0] == streams and up.held_streams == streams):
            ended = next((t for t in tasks if t.done()), None)
            if ended is not None:
                raise AssertionError(f"a stream ended while held: {ended.exception() or ended.result()!r}")
            if loop.time() - t0 > open_timeout:
                raise AssertionError(f"after {open_timeout:g}s {opened[0]} of {streams} streams were open")
            await asyncio.sleep(0.05)  # polling, with the deadline above
        report["streams_open_s"] = round(loop.time() - t0, 2)
        report["during"] = await snapshot(pid, port)
        chat_ms, status = await timed(port, request("/v1/chat/completions", CHAT_BODY))
        report["served_during"] = status == 200
        report["chat_during_ms"] = round(chat_ms, 2)
        report["idle_alive"] = sum(1 for w in writers if not w.transport.is_closing())
    finally:
        up.release()
    texts = await asyncio.gather(*tasks)
    report["streams_complete"] = sum(1 for t in texts if t.count('"delta"') == 64 and "data: [DONE]" in t)
    for w in writers:
        w.close()
    t0 = loop.time()
    while fds(pid) > report["before"]["fds"] + 10 and loop.time() - t0 < 20:
        await asyncio.sleep(0.2)  # the closes are noticed; pooled engine connections idle out (4-8 s)
    report["fds_settled_s"] = round(loop.time() - t0, 1)
    report["after"] = await snapshot(pid, port)
    return report


async def slowloris(port: int, source: str, patience: float) -> bytes:
    """A request head sent a byte every half second, never finished, for at most ``patience`` seconds
    after connecting; what the gateway answered (b"" for nothing, b"reset" for a reset)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    give_up = asyncio.get_running_loop().time() + patience
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        answer = asyncio.ensure_future(reader.read(65536))  # not read(): a reset would discard it
        while not answer.done() and asyncio.get_running_loop().time() < give_up:
            await asyncio.wait([answer], timeout=0.5)
            if not answer.done() and not writer.transport.is_closing():
                writer.write(b"x")
        if not answer.done():
            answer.cancel()
            return b""
        return answer.result()
    except ConnectionError:
        return b"reset"
    finally:
        writer.close()


async def flood(port: int, source: str, stop: asyncio.Event) -> int:
    """Pipelined ``GET /openapi.json`` written as fast as the gateway takes them, never reading."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    burst = b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 64
    sent = 0
    try:
        while not stop.is_set() and not writer.transport.is_closing():
            writer.write(burst)
            sent += len(burst)
            while not stop.is_set():
                try:  # the gateway stops reading while we do not read: wait, and see
                    await asyncio.wait_for(writer.drain(), 0.5)
                    break
                except asyncio.TimeoutError:
                    continue
    except ConnectionError:
        pass  # cut off by the send timeout
    finally:
        writer.transport.abort()  # a close would wait for the gateway to take what is still buffered
    return sent


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def hostile(port: int, pid: int, slow: int, floods: int, header_timeout_s: float) -> dict[str, Any]:
    """``slow`` slowloris connections and ``floods`` pipelining floods at once, until every slowloris
    connection was answered (or ``header_timeout_s`` + 5 s after it connected), while another client
    sends a chat completion and a ``/health`` every half second. Reports their slowest times and
    failures, the gateway's RSS and CPU, and how the slowloris connections were answered."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    report: dict[str, Any] = {"slowloris": slow, "floods": floods, "header_timeout_s": header_timeout_s}
    report["before"] = await snapshot(pid, port)
    cpu0, mine0, t0 = cpu_s(pid), cpu_s(os.getpid()), loop.time()
    slows = [
        asyncio.ensure_future(slowloris(port, f"127.0.3.{1 + i // PER_ADDRESS}", header_timeout_s + 5))
        for i in range(slow)
    ]
    flooding = [asyncio.ensure_future(flood(port, f"127.0.4.{1 + i}", stop)) for i in range(floods)]
    worst = {"health_ms": 0.0, "chat_ms": 0.0, "rss_mib": 0.0}
    samples = []  # (seconds since the start, /health ms, chat ms)
    failed = 0
    while not all(t.done() for t in slows):
        sample = [round(loop.time() - t0, 2)]
        for data in (request("/health"), request("/v1/chat/completions", CHAT_BODY)):
            try:
                ms, status = await timed(port, data, timeout=5)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                ms, status = 5000.0, 0
            failed += status != 200
            key = "health_ms" if data.startswith(b"GET") else "chat_ms"
            worst[key] = max(worst[key], ms)
            sample.append(round(ms, 1))
        samples.append(sample)
        worst["rss_mib"] = max(worst["rss_mib"], rss_mib(pid))
        await asyncio.sleep(0.5)
    stop.set()
    answers = await asyncio.gather(*slows)
    sent = await asyncio.gather(*flooding)
    took = loop.time() - t0
    report["seconds"] = round(took, 1)
    report["gateway_cpu"] = round((cpu_s(pid) - cpu0) / took, 2)  # of one core
    report["client_cpu"] = round((cpu_s(os.getpid()) - mine0) / took, 2)  # this process: the load
    report["during_worst"] = {k: round(v, 2) for k, v in worst.items()}
    report["others_failed"] = failed
    report["samples"] = samples
    report["slowloris_408"] = sum(1 for a in answers if a.startswith(b"HTTP/1.1 408 "))
    report["slowloris_reset"] = answers.count(b"reset")
    report["slowloris_unanswered"] = answers.count(b"")
    report["flood_mib_sent"] = round(sum(sent) / 2**20, 1)
    await asyncio.sleep(1)
    report["after"] = await snapshot(pid, port)
    return report
