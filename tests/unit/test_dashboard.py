"""The dashboard's pure parts: memory split by deployment, usage series (real SQLite), the language
from Accept-Language, the create/plan body, and its strings (one dict per language, the same keys,
every key the page and script use defined)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from llmdock.errors import InvalidSpec
from llmdock.gateway.dashboard import Share, inventory_view, series, spec_from_body, split_gpu
from llmdock.gateway.keystore import KeyStore, Usage
from llmdock.gateway.ui import language
from llmdock.planning.inventory import Gpu
from llmdock.runtimes.base import Deployment
from llmdock.state import Store
from llmdock.states import State

GiB = 2**30
STATIC = Path(__file__).parents[2] / "src" / "llmdock" / "gateway" / "static"


def dep(name: str, gpus: tuple[int, ...] = (0,), state: str = "running", **spec: Any) -> Deployment:
    return Deployment(name, state, gpus=gpus, spec=spec)


H100 = Gpu(0, name="H100", total_bytes=80 * GiB, free_bytes=8 * GiB)  # 72 GiB used


@pytest.mark.parametrize(
    ("holders", "shares", "other"),
    [
        ([], [], 72 * GiB),  # used by no deployment: all "other processes"
        ([dep("a", gpu_memory_utilization=0.5)], [Share("a", 40 * GiB)], 32 * GiB),  # vLLM's reserve
        ([dep("a"), dep("b")], [Share("a", 36 * GiB), Share("b", 36 * GiB)], 0),  # unknown: even split
        (
            [dep("a", gpu_memory_utilization=0.5), dep("b")],
            [Share("a", 40 * GiB), Share("b", 32 * GiB)],
            0,
        ),
        (  # claims above what is used are scaled down to it
            [dep("a", gpu_memory_utilization=0.9), dep("b", gpu_memory_utilization=0.9)],
            [Share("a", 36 * GiB), Share("b", 36 * GiB)],
            0,
        ),
    ],
)
def test_split_gpu(holders: list[Deployment], shares: list[Share], other: int) -> None:
    assert split_gpu(H100, holders) == (shares, other)


def test_inventory_view_counts_holders_per_gpu_and_host_memory_by_deployment() -> None:
    gpus = [H100, Gpu(1, name="H100", total_bytes=80 * GiB, free_bytes=80 * GiB)]
    deps = [dep("a", (0,)), dep("b", (0, 1)), dep("gone", (1,), state="exited")]
    view = inventory_view(gpus, deps, (24 * GiB, 20 * GiB), {"a": 1 * GiB})
    assert [s["deployment"] for s in view["gpus"][0]["deployments"]] == ["a", "b"]
    assert view["gpus"][1]["deployments"] == [{"deployment": "b", "bytes": 0}]  # nothing used on it
    assert view["host"] == {
        "total": 24 * GiB,
        "available": 20 * GiB,
        "deployments": [{"deployment": "a", "bytes": GiB}],
        "other": 3 * GiB,
    }


def test_usage_series_buckets_per_key_and_model(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    ks = KeyStore(store)
    minute = 29_000_000  # an epoch minute, divisible by 5
    ks.add_usage(
        {
            ("ci", "qwen", minute): Usage(2, 0, 10, 20),
            ("ci", "qwen", minute + 4): Usage(1, 1, 5, 0),
            ("ci", "qwen", minute + 5): Usage(3, 0, 1, 1),
            ("ops", "llama", minute + 1): Usage(1, 0, 7, 7),
            ("ops", "llama", minute - 10): Usage(9, 0, 9, 9),  # before `since`
        }
    )
    got = series(store.db, since=minute * 60, step_s=300)
    assert got["step"] == 300 and got["columns"][0] == "t"
    assert got["series"] == [
        {
            "key": "ci",
            "model": "qwen",
            "points": [[minute * 60, 3, 1, 15, 20], [(minute + 5) * 60, 3, 0, 1, 1]],
        },
        {"key": "ops", "model": "llama", "points": [[minute * 60, 1, 0, 7, 7]]},
    ]
    assert series(store.db, since=minute * 60, step_s=1)["step"] == 60  # never finer than a minute
    store.close()


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        (None, "en"),
        ("", "en"),
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
        ("fr-FR,fr;q=0.9,zh;q=0.5", "zh"),  # French is not offered: the next the client takes
        ("de, en;q=0.1, zh-TW;q=0.2", "zh"),
        ("zh;q=bad, en", "en"),
    ],
)
def test_language_from_accept_language(header: str | None, lang: str) -> None:
    assert language(header) == lang


def test_spec_from_body_takes_ups_long_names_and_refuses_the_rest() -> None:
    spec = spec_from_body({"model": "/m/qwen", "engine": "transformers", "gpus": "", "wait": True})
    assert (spec.model, spec.engine, spec.name) == ("/m/qwen", "transformers", "qwen")
    with pytest.raises(InvalidSpec, match="`model`"):
        spec_from_body({"engine": "vllm"})
    with pytest.raises(InvalidSpec, match="unknown field"):
        spec_from_body({"model": "/m/qwen", "assume_gpus": "8xH100"})  # create takes no what-if GPUs
    assert spec_from_body({"model": "/m/qwen", "assume_gpus": "8xH100"}, also=("assume_gpus",)).name == "qwen"


def test_strings_one_dict_per_language_with_the_same_keys_and_every_used_key() -> None:
    strings = json.loads((STATIC / "i18n.json").read_text())
    assert set(strings) == {"en", "zh"}
    assert set(strings["en"]) == set(strings["zh"])
    assert all(v.strip() for lang in strings.values() for v in lang.values())
    html = (STATIC / "index.html").read_text()
    js = (STATIC / "app.js").read_text()
    used = set(re.findall(r'data-i18n(?:-placeholder)?="([^"]+)"', html))
    used |= set(re.findall(r'\bt\("([a-z_]+\.[a-z_0-9]+|[a-z_]+)"', js))
    # Keys the script builds: "confirm." + action, "usage." + metric, "mem." + column.
    used |= {"confirm.start", "confirm.stop", "confirm.rm", "done.stop", "done.start", "done.rm"}
    used |= {f"status.{state.value}" for state in State}  # every state derive() can give
    limits = re.search(r"const LIMITS = \[([^\]]+)\]", js)
    assert limits is not None
    used |= {f"keys.{n}" for n in re.findall(r'"(\w+)"', limits.group(1))}
    used |= {f"usage.{m}" for m in re.findall(r'<option value="(\w+)" data-i18n="usage\.\1"', html)}
    used |= {
        f"mem.{c}" for c in ("total", "budget", "weights", "kv_cache", "cuda_graph", "need", "available")
    }
    assert used and used <= set(strings["en"]), used - set(strings["en"])
    # Placeholders ({name}…) are the same in both languages.
    for key, text in strings["en"].items():
        assert set(re.findall(r"\{\w+\}", text)) == set(re.findall(r"\{\w+\}", strings["zh"][key])), key


def test_page_loads_nothing_from_elsewhere() -> None:
    for name in ("index.html", "app.js", "app.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"""(?:src|href)=["']?(?:https?:)?//""", text), name
        assert "@import" not in text and "fonts.googleapis" not in text, name
    assert "<script>" not in (STATIC / "index.html").read_text()  # no inline script: the CSP forbids it
