"""``llmdock demo``: the whole path on this machine with no GPU, no Docker and no model hub — an
engine environment, a tiny model built in it, a local deployment on the CPU, a chat answer.

Works from the base install: torch and transformers live in the engine environment only (the
tiny model is built by that environment's Python), and the chat goes through httpx.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

DEMO_NAME = "llmdock-demo"


@contextmanager
def step(what: str, estimate: str) -> Iterator[Callable[[str], None]]:
    """Say what starts and how long it should take (a line, so logs show it too), then keep a
    spinner with the seconds so far and the latest output line until it ends."""
    from rich.markup import escape

    from llmdock.cli.render import err

    err.print(f"[dim]…[/dim] {escape(what)} ({escape(estimate)})")
    started = time.monotonic()
    last = [""]
    done = threading.Event()
    collected = [0]

    def on_line(line: str) -> None:
        last[0] = line.strip()
        if err.is_terminal:
            return  # the spinner shows it
        # In a log (no spinner): pip's milestones, a line per ten packages, as scripts/ci-setup does.
        if line.startswith("Collecting"):
            collected[0] += 1
            if collected[0] % 10 != 1:
                return
        elif not line.startswith(("Installing collected packages", "Successfully installed")):
            return
        err.print(f"  {time.monotonic() - started:.0f}s  {escape(line.strip()[:100])}")

    with err.status(escape(what)) as status:

        def tick() -> None:
            while not done.wait(1.0):
                detail = f": {escape(last[0][:80])}" if last[0] else ""
                status.update(f"{escape(what)} — {time.monotonic() - started:.0f}s{detail}")

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield on_line
        finally:
            done.set()
            ticker.join()


def demo(
    rm: Annotated[bool, typer.Option("--rm", help="Remove the deployment afterwards.")] = False,
    prompt: Annotated[str, typer.Option(help="What to ask the model.")] = "Hello! Who are you?",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the engine.")] = 600.0,
) -> None:
    """Build a tiny model, deploy it on the CPU with the transformers engine (local runtime), chat.

    Steps: the engine environment llmdock-demo (torch + transformers, about a minute the first
    time), the tiny model built in it (seconds), the deployment (about half a minute), one chat.
    """
    from rich.markup import escape

    from llmdock.cli.deploy import lifecycle, phase_status
    from llmdock.cli.render import out
    from llmdock.demo.env import DEMO_ENV, ESTIMATE, ensure_demo_env, find_demo_env
    from llmdock.demo.tinymodel import ensure_tiny_model
    from llmdock.envs import Envs
    from llmdock.errors import SpecChanged
    from llmdock.spec import DeploymentSpec

    lc = lifecycle()
    envs = Envs(lc.settings.envs_dir)
    started = time.monotonic()
    env = find_demo_env(envs)
    if env is None:
        with step(f"creating the engine environment {DEMO_ENV}: torch (CPU) + transformers", ESTIMATE) as on:
            env = ensure_demo_env(envs, on_line=on)
        how = f"created in {time.monotonic() - started:.0f}s"
    else:
        how = "already there"
    versions = env.versions()
    out.print(
        f"engine  transformers {versions.get('transformers', '?')}, torch {versions.get('torch', '?')} "
        f"in {env.prefix} ({how})"
    )

    model_dir = lc.settings.models_dir / "demo" / "tiny-qwen"
    t0 = time.monotonic()
    if (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file():
        how = "already there"
    else:
        with step("building the tiny model (Qwen2, random weights) in the engine environment", "about 20 s"):
            ensure_tiny_model(model_dir, python=str(env.bin_dir / "python"))
        how = f"built offline in {time.monotonic() - t0:.0f}s"
    out.print(f"model   {model_dir} (tiny Qwen2, random weights, {how})")

    spec = DeploymentSpec.create(
        str(model_dir),
        name=DEMO_NAME,
        engine="transformers",
        gpus="none",
        runtime="local",
        engine_env=DEMO_ENV,
    )
    from llmdock.cli.render import err

    err.print(f"[dim]…[/dim] deploying {DEMO_NAME} on the CPU, local runtime (10 to 30 s)")
    with phase_status(True, DEMO_NAME) as on_phase:
        try:
            result = lc.up(spec, on_phase=on_phase, timeout=timeout)
        except SpecChanged:  # an older demo (e.g. in Docker): ours to replace
            result = lc.up(spec, on_phase=on_phase, timeout=timeout, replace=True)
    pid = result.deployment.id if result.deployment else "?"
    out.print(
        f"ready   {result.url} in {result.ready_after_s or 0:.1f}s ({result.action}, local process {pid})"
    )

    try:
        reply = chat(result.url, result.plan.served_name, prompt)
    except BaseException:
        if rm:  # --rm cleans up even when the chat fails
            lc.rm(DEMO_NAME, force=True)
        raise
    answer = reply["choices"][0]["message"]["content"] or ""
    usage = reply.get("usage") or {}
    out.print(f"you     {escape(prompt)}")
    out.print(
        f"model   {escape(repr(answer))}  [dim](random weights: the words are noise, the path is real)[/dim]"
    )
    out.print(f"tokens  {usage.get('prompt_tokens', '?')} in, {usage.get('completion_tokens', '?')} out")
    out.print(f"[dim]total   {time.monotonic() - started:.0f}s[/dim]")
    if rm:
        lc.rm(DEMO_NAME, force=True)
        out.print(f"removed {DEMO_NAME} (the model and the {DEMO_ENV} environment stay for next time)")
        return
    out.print("next    llmdock ps")
    out.print(f"        llmdock logs -f {DEMO_NAME}")
    out.print(f"        curl {result.url}/models")
    out.print(f"        llmdock stop {DEMO_NAME}   /   llmdock start {DEMO_NAME}")
    out.print(f"        llmdock rm -f {DEMO_NAME}   (or: scripts/demo --rm)")


def chat(base_url: str, model: str, prompt: str) -> dict[str, Any]:
    """One OpenAI chat completion (``POST {base_url}/chat/completions``) through httpx."""
    import httpx

    from llmdock.errors import EngineFailed

    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16}
    try:
        resp = httpx.post(f"{base_url}/chat/completions", json=body, timeout=120)
        resp.raise_for_status()
        reply: dict[str, Any] = resp.json()
        if not isinstance(reply["choices"][0]["message"], dict):  # the shape OpenAI clients rely on
            raise TypeError("choices[0].message is not an object")
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
        raise EngineFailed(
            f"the engine is up but the chat request to {base_url} failed: {e}",
            f"see `llmdock logs {DEMO_NAME}`; remove it with `llmdock rm -f {DEMO_NAME}` and run the demo again",
        ) from e
    return reply
