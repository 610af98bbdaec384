"""Engine version table: what each vLLM and SGLang release llmdock claims accepts, as data.

Every row was read from the release's own files and is checked against the release's real argument
parser by ``scripts/check-engine-argv`` (results: ``benchmarks/engine-argv/RESULTS.md``). Versions
are compared as ``(major, minor, patch)``; a row holds from ``since`` (inclusive) to ``until``
(exclusive, None = still true).

- :data:`OPTIONS`: the option strings, aliases included, of each argparse destination llmdock sets
  itself. Repeating any of them after ``--`` would override the planned value, so it is refused.
- :data:`CHANGED`: flags a user may pass after ``--`` that a release does not know (removed, renamed,
  or not there yet), each with what to do instead.
- :data:`DEFAULT_MEMORY_FRACTION`: the engine's own default memory fraction.
- :data:`METRICS`: renamed Prometheus metrics.
- :func:`assumed_version`: the version llmdock assumes for an image it cannot probe.

Example::

    >>> owned_options("vllm", "0.32.0")["--device-memory-utilization"]
    '--gpu-memory-utilization'
    >>> assumed_version("vllm", "vllm/vllm-openai:v0.11.0")
    ('0.11.0', 'the tag of vllm/vllm-openai:v0.11.0')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Version = tuple[int, ...]

# The releases llmdock claims (and the check script installs); the last of each is the newest on PyPI
# when the table was checked.
CLAIMED: dict[str, tuple[str, ...]] = {
    "vllm": ("0.6.3", "0.7.2", "0.8.5", "0.11.0", "0.32.0", "0.34.0"),
    "sglang": ("0.5.4", "0.5.23"),
}


def parse_version(text: str | None) -> Version | None:
    """``0.8.5.post1`` -> (0, 8, 5); ``v0.11.0`` -> (0, 11, 0); None or garbage -> None."""
    if not text:
        return None
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not m:
        return None
    return tuple(int(p) for p in m.groups("0"))


@dataclass(frozen=True)
class Option:
    """Option strings of one destination llmdock sets, for a range of releases."""

    dest: str  # argparse destination; some releases name it differently, see ``aka``
    strings: tuple[str, ...]
    up_option: str  # what to give `llmdock up` instead
    since: Version = (0,)
    until: Version | None = None
    aka: tuple[str, ...] = ()  # other destination names releases use for it

    def holds(self, version: Version) -> bool:
        return self.since <= version and (self.until is None or version < self.until)


@dataclass(frozen=True)
class Change:
    """A flag a release does not accept after ``--``, and what to do instead."""

    flag: str
    since: Version  # the first release that refuses it
    hint: str
    until: Version | None = None  # the first release that accepts it again (a flag not there yet)

    def holds(self, version: Version) -> bool:
        return self.since <= version and (self.until is None or version < self.until)


_NEVER: Version = (0,)

OPTIONS: dict[str, tuple[Option, ...]] = {
    # vllm/engine/arg_utils.py (EngineArgs.add_cli_args) and vllm/entrypoints/openai/cli_args.py
    # (make_arg_parser; entrypoints/launchers/ in 0.32, entrypoints/common/ in 0.34). `vllm serve`
    # takes the model as the positional model_tag, which wins over --model.
    "vllm": (
        Option("model", ("--model",), "MODEL"),
        Option("host", ("--host",), "--expose"),
        Option("port", ("--port",), "--port"),
        Option("served_model_name", ("--served-model-name",), "--served-model-name"),
        Option("dtype", ("--dtype",), "--dtype"),
        Option("limit_mm_per_prompt", ("--limit-mm-per-prompt",), "--limit-mm-per-prompt"),
        Option("tensor_parallel_size", ("--tensor-parallel-size", "-tp"), "--tensor-parallel-size"),
        Option(
            "gpu_memory_utilization", ("--gpu-memory-utilization",), "--gpu-memory-utilization", until=(0, 31)
        ),
        # 0.31.0 added a device-neutral alias (CacheConfig.device_memory_utilization).
        Option(
            "gpu_memory_utilization",
            ("--gpu-memory-utilization", "--device-memory-utilization"),
            "--gpu-memory-utilization",
            since=(0, 31),
        ),
        Option("max_model_len", ("--max-model-len",), "--max-model-len"),
        Option("kv_cache_dtype", ("--kv-cache-dtype",), "--kv-cache-dtype"),
    ),
    # sglang/srt/server_args.py (ServerArgs.add_cli_args).
    "sglang": (
        Option("model_path", ("--model-path", "--model"), "MODEL"),
        Option("host", ("--host",), "--expose"),
        Option("port", ("--port",), "--port"),
        Option("served_model_name", ("--served-model-name",), "--served-model-name"),
        Option("dtype", ("--dtype",), "--dtype"),
        # 0.5.4 names the destination tensor_parallel_size (its first option string), 0.5.23 tp_size.
        Option(
            "tp_size",
            ("--tensor-parallel-size", "--tp-size"),
            "--tensor-parallel-size",
            aka=("tensor_parallel_size",),
        ),
        Option("mem_fraction_static", ("--mem-fraction-static",), "--gpu-memory-utilization"),
        Option("context_length", ("--context-length",), "--max-model-len"),
        Option("kv_cache_dtype", ("--kv-cache-dtype",), "--kv-cache-dtype"),
    ),
}

CHANGED: dict[str, tuple[Change, ...]] = {
    "vllm": (
        Change("--task", _NEVER, "this vLLM has no --task (0.6.4 added it); drop it", until=(0, 6, 4)),
        # --task: deprecated in 0.10.1 (for --runner/--convert, added then), gone from 0.13.0.
        Change(
            "--task",
            (0, 13),
            "this vLLM picks the task from the model; where needed use --runner (generate|pooling) "
            "or --convert (embed|classify|...)",
        ),
        # 0.10.1 made request logging opt-in: --enable-log-requests added, --disable-log-requests
        # deprecated; 0.17.0 removed --disable-log-requests. 0.33.0 pairs every --enable-x flag with a
        # --disable-x (EnableDisableAction in vllm/utils/argparse_utils.py), so it parses again there.
        Change(
            "--disable-log-requests",
            (0, 17),
            "request logging is off by default there; drop it",
            until=(0, 33),
        ),
        Change(
            "--enable-log-requests",
            _NEVER,
            "this vLLM logs requests by default and has no such flag; drop it",
            until=(0, 10, 1),
        ),
        Change("--no-enable-log-requests", _NEVER, "drop it (this vLLM has no such flag)", until=(0, 10, 1)),
        Change("--runner", _NEVER, "this vLLM has no --runner; use --task instead", until=(0, 10, 1)),
        Change("--convert", _NEVER, "this vLLM has no --convert; use --task instead", until=(0, 10, 1)),
    ),
    "sglang": (),
}

# The engine's own memory fraction when none is given. vLLM: gpu_memory_utilization's default in
# CacheConfig (vllm/config.py, vllm/config/cache.py); 0.34.0 has no fixed default (None: 1.0 with its
# extensible KV cache, on by default on CUDA/ROCm, else 0.92; CacheConfig.resolved_gpu_memory_utilization).
# SGLang: mem_fraction_static is derived from the GPU's memory (see sglang.memory_fraction).
DEFAULT_MEMORY_FRACTION: dict[str, tuple[tuple[Version, float | None], ...]] = {
    "vllm": (((0,), 0.9), ((0, 20), 0.92), ((0, 34), None)),
    "sglang": (((0,), None),),
}

# Renamed Prometheus metrics: (old, new, first release with new, first release without old).
# vllm:kv_cache_usage_perc appeared in 0.9.2 beside vllm:gpu_cache_usage_perc, which 0.11.0 shows only
# with --show-hidden-metrics-for-version and 0.12.0 removed (vllm/v1/metrics/loggers.py).
METRICS: dict[str, tuple[tuple[str, str, Version, Version], ...]] = {
    "vllm": (("vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc", (0, 9, 2), (0, 11)),),
    "sglang": (),
}

# vLLM's --limit-mm-per-prompt: key=value (image=5,video=5) up to 0.8.4; 0.8.5 takes JSON and still
# reads key=value (deprecated); 0.10.0 reads JSON only (vllm/engine/arg_utils.py parse_type).
VLLM_JSON_LIMIT_MM_SINCE: Version = (0, 8, 5)

# SGLang --kv-cache-dtype choices: "fp8" is not one of them (0.5.4: auto, fp8_e5m2, fp8_e4m3, bf16,
# bfloat16). vLLM's "fp8" means fp8_e4m3 (vllm/config/cache.py: "fp8 (=fp8_e4m3)").
SGLANG_KV_CACHE_DTYPES: dict[str, str] = {"fp8": "fp8_e4m3"}

# Images whose engine version llmdock assumes when it cannot probe them. Tags of the official images
# name the version; these do not.
KNOWN_IMAGES: dict[str, tuple[str, str, str]] = {
    # image -> (engine, version, why)
    "qwenllm/qwenvl:2.5-cu121": ("vllm", "0.6.3", "the Qwen2.5-VL image ships a vLLM older than 0.7.2"),
}
_TAGGED_IMAGES: dict[str, tuple[str, ...]] = {
    "vllm": ("vllm/vllm-openai",),
    "sglang": ("lmsysorg/sglang",),
}


def _version(engine: str, version: str | None) -> Version:
    """The version to look rows up with; an unknown or unparsable one is the newest claimed."""
    return parse_version(version) or parse_version(CLAIMED[engine][-1]) or (0,)


def options(engine: str, version: str | None) -> tuple[Option, ...]:
    v = _version(engine, version)
    return tuple(o for o in OPTIONS.get(engine, ()) if o.holds(v))


def owned_options(engine: str, version: str | None) -> dict[str, str]:
    """Every option string llmdock sets for ``engine`` at ``version`` -> the `up` option to use instead."""
    return {s: o.up_option for o in options(engine, version) for s in o.strings}


def changed_flag(engine: str, version: str | None, flag: str) -> Change | None:
    """The row saying ``flag`` is not accepted by ``version``, or None."""
    v = _version(engine, version)
    return next((c for c in CHANGED.get(engine, ()) if c.flag == flag and c.holds(v)), None)


def default_memory_fraction(engine: str, version: str | None) -> float | None:
    """The engine's own default fraction at ``version`` (None: it has no fixed one)."""
    v = _version(engine, version)
    found: float | None = None
    for since, fraction in DEFAULT_MEMORY_FRACTION.get(engine, ()):
        if since <= v:
            found = fraction
    return found


def metric_name(engine: str, version: str | None, name: str) -> str:
    """A metric's name at ``version``: the new name once the engine has it, else the old one."""
    v = _version(engine, version)
    for old, new, since, _gone in METRICS.get(engine, ()):
        if name in (old, new):
            return new if v >= since else old
    return name


def assumed_version(engine: str, image: str) -> tuple[str, str] | None:
    """The engine version to assume for ``image`` when it cannot be probed, and why; None when the
    image says nothing (callers then assume the newest claimed release and say so).

    ``vllm/vllm-openai:v0.11.0`` -> ("0.11.0", "the tag of ..."); ``qwenllm/qwenvl:2.5-cu121`` -> ("0.6.3", ...).
    """
    repo, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    if image in KNOWN_IMAGES and KNOWN_IMAGES[image][0] == engine:
        return KNOWN_IMAGES[image][1], KNOWN_IMAGES[image][2]
    if repo in _TAGGED_IMAGES.get(engine, ()):
        m = re.fullmatch(r"v?(\d+\.\d+\.\d+(?:\.post\d+)?)(?:[-+].*)?", tag)
        if m:
            return m.group(1), f"the tag of {image}"
    return None


def extra_problem(engine: str, version: str | None, arg: str, underscores: bool) -> tuple[str, str] | None:
    """Why ``arg`` (one word after ``--``) must not reach the engine, as (message, hint), or None.

    Refused: an option string llmdock sets (aliases included), and an abbreviation of one (argparse
    takes any unambiguous prefix, so ``--gpu-memory 0.5`` would override ``--gpu-memory-utilization``);
    and a flag this release removed, renamed or does not have yet. ``underscores``: the engine reads
    ``--max_model_len`` as ``--max-model-len`` (vLLM's FlexibleArgumentParser does).
    """
    if not arg.startswith("-") or arg == "-" or _is_number(arg):
        return None
    given = arg.split("=", 1)[0]
    flag = given.replace("_", "-") if underscores and given.startswith("--") else given
    owned = owned_options(engine, version)
    target = owned.get(flag) or _abbreviated(flag, owned)
    shown = version or "unknown"
    if target:
        return (
            f"{given} after `--` would override what llmdock sets",
            f"give it to `llmdock up` as {target} instead",
        )
    change = changed_flag(engine, version, flag)
    if change:
        return f"{given} is not accepted by {engine} {shown}", change.hint
    return None


def _abbreviated(flag: str, owned: dict[str, str]) -> str | None:
    """The `up` option for an owned flag that ``flag`` abbreviates (argparse's allow_abbrev)."""
    if len(flag) < (4 if flag.startswith("--") else 2):
        return None
    hits = {up for s, up in owned.items() if s.startswith(flag) and s[:2].count("-") == flag[:2].count("-")}
    return sorted(hits)[0] if hits else None


def _is_number(arg: str) -> bool:
    try:
        float(arg)
    except ValueError:
        return False
    return True
