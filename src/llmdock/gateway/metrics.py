"""Prometheus metrics in the text exposition format, kept in plain dicts.

prometheus_client costs a lock and a label lookup per update; the gateway updates half a dozen series per
request on one event loop thread, so plain dict arithmetic is enough and several times cheaper. Rendering
happens only when ``/metrics`` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Histogram:
    __slots__ = ("buckets", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """All gateway series. Update methods are called on the event loop thread only."""

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str, str], int] = defaultdict(int)  # model, key, status
        self.errors: defaultdict[tuple[str, str, str], int] = defaultdict(int)  # model, key, code
        self.tokens: defaultdict[tuple[str, str, str], int] = defaultdict(int)  # model, key, kind
        self.in_flight: defaultdict[tuple[str], int] = defaultdict(int)  # model
        self.latency: dict[tuple[str, str], Histogram] = {}
        self.ttft: dict[tuple[str, str], Histogram] = {}
        self.restarts: defaultdict[tuple[str], int] = defaultdict(int)
        self.retries: defaultdict[tuple[str], int] = defaultdict(int)  # model
        self.replicas: Callable[[], Iterable[tuple[str, str, bool, int]]] = lambda: ()
        self.queued: Callable[[], Iterable[tuple[str, int]]] = lambda: ()  # deployment, requests waiting

    def done(
        self,
        model: str,
        key: str,
        status: int,
        seconds: float,
        ttft: float | None,
        prompt: int,
        completion: int,
    ) -> None:
        self.requests[(model, key, str(status))] += 1
        h = self.latency.get((model, key))
        if h is None:
            h = self.latency[(model, key)] = Histogram(LATENCY_BUCKETS)
        h.observe(seconds)
        if ttft is not None:
            t = self.ttft.get((model, key))
            if t is None:
                t = self.ttft[(model, key)] = Histogram(LATENCY_BUCKETS)
            t.observe(ttft)
        if prompt:
            self.tokens[(model, key, "prompt")] += prompt
        if completion:
            self.tokens[(model, key, "completion")] += completion

    def error(self, model: str, key: str, code: str, status: int) -> None:
        self.errors[(model, key, code)] += 1
        self.requests[(model, key, str(status))] += 1

    def render(self) -> str:
        out: list[str] = []

        def counter(name: str, help_: str, labels: tuple[str, ...], data: Mapping[Any, int]) -> None:
            out.append(f"# HELP {name} {help_}\n# TYPE {name} counter")
            out.extend(f"{name}{_labels(labels, k)} {v}" for k, v in sorted(data.items()))

        def gauge(name: str, help_: str, labels: tuple[str, ...], data: Mapping[Any, int]) -> None:
            out.append(f"# HELP {name} {help_}\n# TYPE {name} gauge")
            out.extend(f"{name}{_labels(labels, k)} {v}" for k, v in sorted(data.items()))

        def histogram(name: str, help_: str, data: dict[tuple[str, str], Histogram]) -> None:
            out.append(f"# HELP {name} {help_}\n# TYPE {name} histogram")
            for k, h in sorted(data.items()):
                running = 0
                for bound, count in zip((*h.buckets, float("inf")), h.counts, strict=True):
                    running += count
                    le = "+Inf" if bound == float("inf") else repr(float(bound))
                    bucket = _labels(("model", "key"), k, 'le="' + le + '"')
                    out.append(f"{name}_bucket{bucket} {running}")
                out.append(f"{name}_sum{_labels(('model', 'key'), k)} {h.sum}")
                out.append(f"{name}_count{_labels(('model', 'key'), k)} {running}")

        counter(
            "llmdock_requests_total",
            "Requests by model, key and status.",
            ("model", "key", "status"),
            dict(self.requests),
        )
        counter(
            "llmdock_errors_total",
            "Error answers by model, key and code.",
            ("model", "key", "code"),
            dict(self.errors),
        )
        counter(
            "llmdock_tokens_total",
            "Tokens by model, key and kind.",
            ("model", "key", "kind"),
            dict(self.tokens),
        )
        gauge("llmdock_in_flight_requests", "Requests being proxied now.", ("model",), dict(self.in_flight))
        gauge(
            "llmdock_queued_requests",
            "Requests waiting because the deployment is at its concurrency bound.",
            ("model",),
            {(name,): n for name, n in self.queued()},
        )
        histogram("llmdock_request_duration_seconds", "Time from request to last byte.", self.latency)
        histogram(
            "llmdock_time_to_first_token_seconds", "Time from request to first stream chunk.", self.ttft
        )
        counter(
            "llmdock_upstream_retries_total",
            "Requests sent to another replica because a replica refused the connection.",
            ("model",),
            dict(self.retries),
        )
        counter(
            "llmdock_restarts_total", "Restarts of crashed deployments.", ("deployment",), dict(self.restarts)
        )
        healthy: dict[tuple[str, ...], int] = {}
        outstanding: dict[tuple[str, ...], int] = {}
        for deployment, url, ok, n in self.replicas():
            healthy[(deployment, url)] = int(ok)
            outstanding[(deployment, url)] = n
        gauge(
            "llmdock_replica_healthy",
            "1 when the replica answers its health check.",
            ("deployment", "replica"),
            healthy,
        )
        gauge(
            "llmdock_replica_outstanding",
            "Requests outstanding at the replica.",
            ("deployment", "replica"),
            outstanding,
        )
        return "\n".join(out) + "\n"
