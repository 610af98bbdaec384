"""``llmdock export k8s``: specs -> cluster plans -> manifests, with the facts gathered here.

The facts are what ``up`` would read: the weights' config.json and sizes (from the models dir, or the
hub's file list for a model not pulled yet; without them the defaults are said in a note), the engine
version (from the image's tag: a cluster's image cannot be probed from here). Everything is rendered
before anything is written, so a bad entry writes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmdock.errors import LlmdockError

if TYPE_CHECKING:
    from llmdock.modelfacts import ModelFacts
    from llmdock.planning.inventory import Gpu
    from llmdock.settings import Settings
    from llmdock.spec import DeploymentSpec
    from llmdock.weights import PullOptions

DEFAULT_NODE_GPUS = "8x80GiB"
OWN_IMAGES = "llmdock/engine-"  # images scripts/ci-setup and `llmdock demo` build (llmdock.demo.image)
# A Kubernetes quantity of bytes as a claim takes it: 500Gi, 1Ti, 800G.
QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


def check_storage(text: str | None) -> str | None:
    if text is not None and not QUANTITY_RE.match(text):
        from llmdock.errors import InvalidSpec

        raise InvalidSpec(f"--storage {text!r} is not a size", "write it as Kubernetes does: 500Gi, 1Ti")
    return text


@dataclass(frozen=True)
class Options:
    """The cluster as the user describes it (``export k8s`` flags)."""

    node_gpus: tuple[Gpu, ...]
    nodes: int = 1
    storage: str | None = None
    storage_class: str | None = None


@dataclass(frozen=True)
class Rendered:
    name: str  # the Kubernetes name: the file is NAME.yaml
    docs: list[dict[str, Any]]
    notes: tuple[str, ...]


def render_specs(
    specs: list[DeploymentSpec], settings: Settings, pull: PullOptions, opts: Options
) -> list[Rendered]:
    """Every spec rendered, or the first error (nothing is written by the caller then)."""
    out: list[Rendered] = []
    for spec in specs:
        try:
            out.append(render_spec(spec, settings, pull, opts))
        except LlmdockError as e:
            raise type(e)(f"{spec.name}: {e.message}", e.hint) from None
    names = [r.name for r in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        from llmdock.errors import InvalidSpec

        raise InvalidSpec(
            f"deployments become the same Kubernetes name {', '.join(twice)}",
            "rename one (Kubernetes names are lower-case letters, digits and '-')",
        )
    return out


def render_spec(spec: DeploymentSpec, settings: Settings, pull: PullOptions, opts: Options) -> Rendered:
    from llmdock.engines import get_engine
    from llmdock.engines.versions import CLAIMED, assumed_version
    from llmdock.k8s.plan import Cluster, for_cluster, plan_cluster
    from llmdock.k8s.render import manifests

    cpu = spec.gpus == "none" and get_engine(spec.engine).runs_on_cpu
    adapted, notes = for_cluster(spec, settings.image(spec.engine, cpu=cpu))
    image = adapted.image or ""
    found = assumed_version(spec.engine, image) or _own_image_version(spec.engine, image)
    version = found[0] if found else CLAIMED.get(spec.engine, (None,))[-1]
    if image.startswith(OWN_IMAGES):
        notes += (f"{image} is built on this host: push it to a registry the cluster pulls from",)
    sub_path, facts, where = locate_weights(spec.model, settings.models_dir, pull)
    cluster = Cluster(node_gpus=opts.node_gpus, image=image, engine_version=version, nodes=opts.nodes)
    kp = plan_cluster(adapted, cluster, facts=facts, model_path=sub_path)
    docs = manifests(kp, storage=opts.storage, storage_class=opts.storage_class)
    told = (
        f"{spec.engine} flags for version {version} ({found[1] if found else 'the newest llmdock knows'})",
        where,
    )
    return Rendered(kp.name, docs, (*notes, *kp.notes, *told, *kp.plan.notes))


def _own_image_version(engine: str, image: str) -> tuple[str, str] | None:
    """llmdock's own engine images carry the engine version in their tag: ``llmdock/engine-vllm:0.32.0-cpu``."""
    repo, _, tag = image.partition(":")
    m = re.fullmatch(r"(\d+\.\d+\.\d+)(?:-.*)?", tag)
    if repo == f"{OWN_IMAGES}{engine}" and m:
        return m.group(1), f"the tag of {image}"
    return None


def locate_weights(model: str, models_dir: Path, pull: PullOptions) -> tuple[str, ModelFacts | None, str]:
    """(path inside the models claim, facts or None, a note on where the claim must hold them).

    The claim is the models dir: a pulled or hub model lies where ``llmdock pull`` puts it; a folder
    elsewhere lies at the claim's top under its own name."""
    from llmdock.models.names import layout, parse_model_id
    from llmdock.weights import is_hub_id, locate

    if is_hub_id(model):
        sub = layout(models_dir, parse_model_id(model, pull.source, pull.revision)).weights
        try:
            weights = locate(model, models_dir, pull)
        except LlmdockError as e:  # the hub cannot be asked from here: plan without its facts
            note = f"weights: {e.message}; planned without their facts (claim size and start-up are defaults)"
            return sub.relative_to(models_dir).as_posix(), None, note
        path, pulled = weights.path or sub, f"`llmdock pull {model}` with the claim as models dir"
    else:
        weights = locate(model, models_dir, pull)  # a folder: raises when it holds no model
        path, pulled = weights.path or Path(model), f"as in {models_dir}"
    try:
        rel = path.relative_to(models_dir.resolve() if weights.path else models_dir).as_posix()
    except ValueError:
        rel = path.name
        return rel, weights.facts, f"weights: copy {path} into the claim as {rel}/"
    return rel, weights.facts, f"weights: the claim holds them at {rel} ({pulled})"


def write(rendered: list[Rendered], directory: Path) -> list[Path]:
    """``DIR/NAME.yaml`` for each deployment; the folder is made when missing."""
    from llmdock.k8s.render import dump

    try:
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for r in rendered:
            path = directory / f"{r.name}.yaml"
            path.write_text(dump(r.docs))
            paths.append(path)
    except OSError as e:
        raise LlmdockError(
            f"cannot write to {directory}: {e.strerror}", "give -o a folder you can write"
        ) from None
    return paths
