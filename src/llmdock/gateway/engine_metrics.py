"""The engines' own load figures in the gateway's ``/metrics``: read from each running replica's
``/metrics`` when the gateway's is scraped, and re-exported per deployment and replica.

vLLM names its series ``vllm:*`` and renamed some between releases (``gpu_cache_usage_perc`` became
``kv_cache_usage_perc`` in 0.9.2; :data:`llmdock.engines.versions.METRICS`); both names map to one
llmdock series, so a fleet of mixed versions reads as one. The Prometheus text is parsed by
``prometheus_client``; a replica that does not answer within the timeout is left out, counted in
``llmdock_engine_scrape_failed``. Routes given with ``serve --route`` (engines llmdock did not
start, often another team's API) are not scraped.

Example::

    text = await collect(session, table.routes.values(), timeout=1.0)
    # llmdock_engine_kv_cache_usage{deployment="qwen",replica="http://127.0.0.1:8001"} 0.12
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from llmdock.engines.versions import METRICS
from llmdock.gateway.routing import STATIC_KEY

if TYPE_CHECKING:
    import aiohttp

    from llmdock.gateway.routing import Route

# Today's engine sample name -> (llmdock series, type, help)
SERIES: dict[str, tuple[str, str, str]] = {
    "vllm:num_requests_running": (
        "llmdock_engine_requests_running",
        "gauge",
        "Requests the engine runs now.",
    ),
    "vllm:num_requests_waiting": (
        "llmdock_engine_requests_waiting",
        "gauge",
        "Requests queued in the engine.",
    ),
    "vllm:kv_cache_usage_perc": (
        "llmdock_engine_kv_cache_usage",
        "gauge",
        "Share of the engine's KV cache in use, 0 to 1.",
    ),
    "vllm:prefix_cache_hits_total": (
        "llmdock_engine_prefix_cache_hits_total",
        "counter",
        "Prefix-cache hits, in tokens.",
    ),
    "vllm:prefix_cache_queries_total": (
        "llmdock_engine_prefix_cache_queries_total",
        "counter",
        "Prefix-cache lookups, in tokens.",
    ),
}
# Older names of the same samples (from the version table), so every release reads the same.
ALIASES: dict[str, str] = {old: new for rows in METRICS.values() for old, new, _since, _gone in rows}


def parse(text: str) -> dict[str, float]:
    """Today's names of the samples in :data:`SERIES` found in ``text``, summed over their label sets
    (one engine process may report per engine index)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = ALIASES.get(sample.name, sample.name)
            if name in SERIES and not math.isnan(sample.value):
                found[name] = found.get(name, 0.0) + sample.value
    return found


def render(rows: Iterable[tuple[str, str, Mapping[str, float]]], errors: int) -> str:
    """``(deployment, replica URL, parsed samples)`` rows as Prometheus text."""
    from llmdock.gateway.metrics import _labels

    rows = list(rows)
    out: list[str] = []
    for engine_name, (series, kind, help_) in SERIES.items():
        values = [(d, r, v[engine_name]) for d, r, v in rows if engine_name in v]
        if values:
            out.append(f"# HELP {series} {help_}\n# TYPE {series} {kind}")
            out.extend(f"{series}{_labels(('deployment', 'replica'), (d, r))} {v:g}" for d, r, v in values)
    out.append("# HELP llmdock_engine_scrape_failed Replicas whose /metrics did not answer this scrape.")
    out.append("# TYPE llmdock_engine_scrape_failed gauge")
    out.append(f"llmdock_engine_scrape_failed {errors}")
    return "\n".join(out) + "\n"


async def collect(session: aiohttp.ClientSession, routes: Iterable[Route], timeout: float) -> str:
    """Scrape every running replica at once; return the re-exported series."""
    import aiohttp

    targets = [
        (route.name, r.url)
        for route in routes
        for r in route.replicas
        if r.target.running and not r.target.key.startswith(STATIC_KEY)
    ]

    async def one(url: str) -> dict[str, float] | None:
        try:
            async with session.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=timeout)) as reply:
                return parse(await reply.text()) if reply.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None

    results = await asyncio.gather(*(one(url) for _, url in targets))
    rows = [(d, url, r) for (d, url), r in zip(targets, results, strict=True) if r is not None]
    return render(rows, errors=results.count(None))
