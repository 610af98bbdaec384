"""``llmdock demo``: the whole path on this machine, no GPU and no hub — a tiny model deployed and answering."""

from __future__ import annotations

from typing import Annotated

import typer

DEMO_NAME = "llmdock-demo"


def demo(
    rm: Annotated[bool, typer.Option("--rm", help="Remove the deployment afterwards.")] = False,
    prompt: Annotated[str, typer.Option(help="What to ask the model.")] = "Hello! Who are you?",
) -> None:
    """Build a tiny model, deploy it on the CPU with the transformers engine, and chat with it."""
    from llmdock.cli.deploy import lifecycle, phase_status
    from llmdock.cli.render import err, out
    from llmdock.demo.image import ensure_engine_image
    from llmdock.demo.tinymodel import ensure_tiny_model
    from llmdock.spec import DeploymentSpec

    lc = lifecycle()
    model_dir = ensure_tiny_model(lc.settings.models_dir / "demo" / "tiny-qwen")
    for f in model_dir.iterdir():
        f.chmod(0o644)
    out.print(f"model   {model_dir} (tiny Qwen2, random weights, built offline)")
    image = ensure_engine_image(lc.runtime.client, lc.settings.image("transformers"), log=err.print)  # type: ignore[attr-defined]
    spec = DeploymentSpec.create(str(model_dir), name=DEMO_NAME, engine="transformers", image=image)
    with phase_status(True, DEMO_NAME) as on_phase:
        result = lc.up(spec, on_phase=on_phase)
    out.print(f"ready   {result.url} in {result.ready_after_s or 0:.1f}s ({result.action})")

    from openai import OpenAI

    with OpenAI(base_url=result.url, api_key="none", max_retries=0, timeout=120) as client:
        reply = client.chat.completions.create(
            model=result.plan.served_name, messages=[{"role": "user", "content": prompt}], max_tokens=16
        )
    answer = reply.choices[0].message.content or ""
    out.print(f"you     {prompt}")
    out.print(f"model   {answer!r}  [dim](random weights: the words are noise, the path is real)[/dim]")
    out.print(
        f"tokens  {reply.usage.prompt_tokens if reply.usage else '?'} in, "
        f"{reply.usage.completion_tokens if reply.usage else '?'} out"
    )
    if rm:
        lc.rm(DEMO_NAME, force=True)
        out.print(f"removed {DEMO_NAME}")
        return
    out.print("next    llmdock ps")
    out.print(f"        llmdock logs -f {DEMO_NAME}")
    out.print(f"        curl {result.url}/models")
    out.print(f"        llmdock rm -f {DEMO_NAME}   (or: scripts/demo --rm)")
