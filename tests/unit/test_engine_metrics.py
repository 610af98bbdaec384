"""The engines' /metrics re-exported by the gateway: parsed with prometheus_client, renamed per release."""

from __future__ import annotations

import pytest

from llmdock.gateway.engine_metrics import parse, render

V032 = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tq"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tq"} 5.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tq"} 0.25
# HELP vllm:prefix_cache_hits Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="tq"} 96.0
vllm:prefix_cache_hits_created{engine="0",model_name="tq"} 1.7963536151822164e+09
"""
V08 = """\
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 1.0
"""
TWO_ENGINES = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 1.0
vllm:num_requests_running{engine="1",model_name="m"} 3.0
"""


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (
            V032,
            {
                "vllm:num_requests_running": 2.0,
                "vllm:num_requests_waiting": 5.0,
                "vllm:kv_cache_usage_perc": 0.25,
                "vllm:prefix_cache_hits_total": 96.0,
            },
        ),
        (V08, {"vllm:kv_cache_usage_perc": 0.5, "vllm:num_requests_running": 1.0}),  # the old name
        (TWO_ENGINES, {"vllm:num_requests_running": 4.0}),  # summed over engine indices
        ("", {}),
    ],
)
def test_parse(text: str, want: dict[str, float]) -> None:
    assert parse(text) == want


def test_parse_refuses_what_is_not_prometheus_text() -> None:
    with pytest.raises(ValueError):
        parse('vllm:num_requests_running{engine="0" 1\n')


def test_render_labels_deployment_and_replica() -> None:
    out = render([("qwen", "http://127.0.0.1:8001", parse(V032))], errors=1)
    assert 'llmdock_engine_kv_cache_usage{deployment="qwen",replica="http://127.0.0.1:8001"} 0.25' in out
    assert "# TYPE llmdock_engine_prefix_cache_hits_total counter" in out
    assert "llmdock_engine_scrape_failed 1" in out
    assert "llmdock_engine_requests_waiting" not in render([("m", "u", parse(V08))], errors=0)
