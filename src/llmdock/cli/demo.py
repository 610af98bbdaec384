"""``llmdock demo``: the whole path on this machine with no GPU, no Docker and no model hub — a tiny
model built into the store, an engine environment, a local deployment on the CPU, a chat answer."""

from __future__ import annotations

from typing import Annotated

import typer

DEMO_NAME = "llmdock-demo"


def demo(
    rm: Annotated[bool, typer.Option("--rm", help="Remove the deployment afterwards.")] = False,
    prompt: Annotated[str, typer.Option(help="What to ask the model.")] = "Hello! Who are you?",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the engine.")] = 600.0,
) -> None:
    """Build a tiny model, deploy it on the CPU with the transformers engine (local runtime), chat."""
    from rich.markup import escape

    from llmdock.cli.deploy import lifecycle, phase_status
    from llmdock.cli.render import err, out
    from llmdock.demo.env import DEMO_ENV, ensure_demo_env
    from llmdock.demo.tinymodel import ensure_tiny_model
    from llmdock.envs import Envs
    from llmdock.errors import SpecChanged
    from llmdock.spec import DeploymentSpec

    lc = lifecycle()
    model_dir = ensure_tiny_model(lc.settings.models_dir / "demo" / "tiny-qwen")
    out.print(f"model   {model_dir} (tiny Qwen2, random weights, built offline)")
    with err.status(f"engine environment {DEMO_ENV}") as status:
        env = ensure_demo_env(
            Envs(lc.settings.envs_dir),
            on_line=lambda line: status.update(f"creating {DEMO_ENV}: {escape(line[:90])}"),
        )
    versions = env.versions()
    out.print(f"engine  transformers {versions.get('transformers', '?')} in {env.prefix} ({env.kind})")
    spec = DeploymentSpec.create(
        str(model_dir),
        name=DEMO_NAME,
        engine="transformers",
        gpus="none",
        runtime="local",
        engine_env=DEMO_ENV,
    )
    with phase_status(True, DEMO_NAME) as on_phase:
        try:
            result = lc.up(spec, on_phase=on_phase, timeout=timeout)
        except SpecChanged:  # an older demo (e.g. in Docker): ours to replace
            result = lc.up(spec, on_phase=on_phase, timeout=timeout, replace=True)
    pid = result.deployment.id if result.deployment else "?"
    out.print(
        f"ready   {result.url} in {result.ready_after_s or 0:.1f}s ({result.action}, local process {pid})"
    )

    from openai import OpenAI

    try:
        with OpenAI(base_url=result.url, api_key="none", max_retries=0, timeout=120) as client:
            reply = client.chat.completions.create(
                model=result.plan.served_name, messages=[{"role": "user", "content": prompt}], max_tokens=16
            )
    except Exception:
        if rm:  # --rm cleans up even when the chat fails
            lc.rm(DEMO_NAME, force=True)
        raise
    answer = reply.choices[0].message.content or ""
    out.print(f"you     {escape(prompt)}")
    out.print(
        f"model   {escape(repr(answer))}  [dim](random weights: the words are noise, the path is real)[/dim]"
    )
    out.print(
        f"tokens  {reply.usage.prompt_tokens if reply.usage else '?'} in, "
        f"{reply.usage.completion_tokens if reply.usage else '?'} out"
    )
    if rm:
        lc.rm(DEMO_NAME, force=True)
        out.print(f"removed {DEMO_NAME} (the model and the {DEMO_ENV} environment stay for next time)")
        return
    out.print("next    llmdock ps")
    out.print(f"        llmdock logs -f {DEMO_NAME}")
    out.print(f"        curl {result.url}/models")
    out.print(f"        llmdock stop {DEMO_NAME}   /   llmdock start {DEMO_NAME}")
    out.print(f"        llmdock rm -f {DEMO_NAME}   (or: scripts/demo --rm)")
