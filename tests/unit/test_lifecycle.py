"""Lifecycle decisions over the in-memory runtime: idempotency, replace, adoption, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmdock import settings
from llmdock.errors import ImageMissing, LlmdockError, NotFound, PortTaken, SpecChanged
from llmdock.lifecycle import Lifecycle
from llmdock.spec import DeploymentSpec
from llmdock.state import Store
from tests.support.memruntime import MemoryRuntime, memory_lifecycle

IMAGE = settings.KEYS["image.transformers"].default


@pytest.fixture
def lc(tmp_path: Path) -> Lifecycle:
    return memory_lifecycle(tmp_path / "home", IMAGE)


def spec(model: str, **kw: object) -> DeploymentSpec:
    return DeploymentSpec.create(model, name="t", engine="transformers", **kw)  # type: ignore[arg-type]


def test_up_then_same_spec_is_a_no_op(lc: Lifecycle, model: str) -> None:
    first = lc.up(spec(model), wait=False)
    assert first.action == "created" and first.plan.port >= 8001
    again = lc.up(spec(model), wait=False)
    assert again.action == "unchanged"
    assert len(lc.runtime.deployments()) == 1
    assert [k for _, k, _ in lc.store.events("t")] == ["created"]


def test_engine_version_probed_once_per_image_and_never_in_a_dry_run(lc: Lifecycle, model: str) -> None:
    lc.up(spec(model), dry_run=True)
    assert lc.runtime.probes == []  # type: ignore[attr-defined]
    lc.up(DeploymentSpec.create(model, name="a", engine="transformers"), wait=False)
    lc.up(DeploymentSpec.create(model, name="b", engine="transformers"), wait=False)
    assert lc.runtime.probes == [IMAGE]  # type: ignore[attr-defined]
    assert lc.store.engine_version("sha256:abc", "transformers") == "5.24.0"


def test_different_spec_needs_replace(lc: Lifecycle, model: str) -> None:
    lc.up(spec(model), wait=False)
    with pytest.raises(SpecChanged) as e:
        lc.up(spec(model, dtype="float32"), wait=False)
    assert "--replace" in e.value.hint and e.value.changed == ("dtype: None -> 'float32'",)
    assert "dtype: None -> 'float32'" in e.value.message
    result = lc.up(spec(model, dtype="float32"), wait=False, replace=True)
    assert result.action == "replaced"
    assert lc.runtime.get("t").spec["dtype"] == "float32"  # type: ignore[union-attr]


def test_stopped_same_spec_is_started(lc: Lifecycle, model: str) -> None:
    lc.up(spec(model), wait=False)
    lc.stop("t")
    assert lc.up(spec(model), wait=False).action == "started"
    assert lc.runtime.get("t").running  # type: ignore[union-attr]


def test_refusals_change_nothing(lc: Lifecycle, model: str) -> None:
    lc.up(spec(model, port="8123"), wait=False)
    with pytest.raises(PortTaken):
        lc.up(DeploymentSpec.create(model, name="u", engine="transformers", port="8123"), wait=False)
    with pytest.raises(ImageMissing):
        lc.up(DeploymentSpec.create(model, name="v", engine="transformers", image="nope:1"), wait=False)
    with pytest.raises(NotFound):
        lc.up(DeploymentSpec.create(model + "-missing", name="w", engine="transformers"), wait=False)
    assert [d.name for d in lc.runtime.deployments()] == ["t"]
    assert lc.store.deployment_names() == ["t"]


def test_auto_ports_skip_held_ones(lc: Lifecycle, model: str) -> None:
    a = lc.up(DeploymentSpec.create(model, name="a", engine="transformers"), wait=False)
    b = lc.up(DeploymentSpec.create(model, name="b", engine="transformers"), wait=False)
    assert a.plan.port != b.plan.port


def test_lost_database_is_readopted(lc: Lifecycle, model: str, tmp_path: Path) -> None:
    lc.up(spec(model), wait=False)
    lc.store.delete_deployment("t")
    assert lc.up(spec(model), wait=False).action == "unchanged"
    assert lc.store.deployment("t") is not None
    assert "adopted" in [k for _, k, _ in lc.store.events("t")]


def test_rm_running_needs_force(lc: Lifecycle, model: str) -> None:
    lc.up(spec(model), wait=False)
    with pytest.raises(LlmdockError, match="is running"):
        lc.rm("t")
    lc.rm("t", force=True)
    assert lc.runtime.deployments() == [] and lc.store.deployment("t") is None
    with pytest.raises(NotFound):
        lc.rm("t")


def test_dry_run_creates_nothing(lc: Lifecycle, model: str) -> None:
    result = lc.up(spec(model), dry_run=True)
    assert result.action == "dry-run" and result.to_dict()["docker_run"].startswith("docker run -d --name t")
    assert lc.runtime.deployments() == [] and lc.store.deployment_names() == []


def test_a_failed_create_leaves_no_record(lc: Lifecycle, model: str) -> None:
    from llmdock.errors import Conflict

    def refuse(cfg: object) -> None:
        raise Conflict("Docker refused: name in use", "docker rm it")

    lc.runtime.create = refuse  # type: ignore[method-assign, assignment]
    with pytest.raises(Conflict):
        lc.up(spec(model), wait=False)
    assert lc.store.deployment_names() == []


def test_bad_model_config_is_refused_or_reported(lc: Lifecycle, model: str) -> None:
    from llmdock.errors import InvalidSpec

    (Path(model) / "config.json").write_text("{not json")
    with pytest.raises(InvalidSpec, match="not valid JSON"):
        lc.up(spec(model), wait=False)
    dry = lc.up(spec(model), dry_run=True)
    assert any("not valid JSON" in p for p in dry.plan.problems)
    assert lc.runtime.deployments() == []


def test_dry_run_of_a_missing_model_says_so(lc: Lifecycle) -> None:
    dry = lc.up(spec("../../etc/nowhere"), dry_run=True)
    assert any("neither a local directory" in p for p in dry.plan.problems)


def test_replicas_get_their_own_ports_and_act_as_one(lc: Lifecycle, model: str) -> None:
    result = lc.up(DeploymentSpec.create(model, name="r", engine="transformers", replicas=3), wait=False)
    names = [m.plan.spec.name for m in result.members]
    assert names == ["r-1", "r-2", "r-3"]
    assert len({m.plan.port for m in result.members}) == 3
    assert {d.group for d in lc.runtime.deployments()} == {"r"}
    assert lc.names("r") == names and lc.names("r-2") == ["r-2"]
    again = lc.up(DeploymentSpec.create(model, name="r", engine="transformers", replicas=3), wait=False)
    assert [m.action for m in again.members] == ["unchanged"] * 3
    lc.stop("r")
    assert all(not d.running for d in lc.runtime.deployments())
    lc.rm("r")
    assert lc.runtime.deployments() == [] and lc.store.deployment_names() == []


def qwen72b_dir(tmp_path: Path) -> str:
    import json

    from tests.support.modelconfigs import config

    d = tmp_path / "Qwen2.5-72B-Instruct"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config("Qwen--Qwen2.5-72B-Instruct")))
    return str(d)


def test_a_dry_run_plans_every_replica_against_the_ones_before_it(lc: Lifecycle, tmp_path: Path) -> None:
    from llmdock.gpuinfo import parse_assume_gpus

    model = qwen72b_dir(tmp_path)  # 72B, bf16: 4 × 80 GiB per copy
    spec = DeploymentSpec.create(model, name="q", engine="vllm", replicas=3, image=IMAGE)
    result = lc.up(spec, dry_run=True, assume_gpus=parse_assume_gpus("8x80GiB"))
    plans = [m.plan for m in result.members]
    assert [p.spec.name for p in plans] == ["q-1", "q-2", "q-3"]
    assert plans[0].gpus == (0, 1, 2, 3) and plans[1].gpus == (4, 5, 6, 7)
    assert len({p.port for p in plans}) == 3  # each replica its own port
    assert not plans[0].blocking and not plans[1].blocking and plans[2].blocking  # no GPUs left for it
    assert lc.runtime.deployments() == []


class DockerDown(MemoryRuntime):
    def _down(self) -> None:
        from llmdock.errors import RuntimeUnavailable

        raise RuntimeUnavailable("the Docker daemon is not reachable at unix:///nope", "start it")

    def image_id(self, image: str) -> str | None:
        self._down()
        return None

    def has_gpu_runtime(self) -> bool:
        self._down()
        return False


def test_a_what_if_plan_needs_no_docker_and_says_what_it_could_not_see(tmp_path: Path) -> None:
    from llmdock.errors import RuntimeUnavailable
    from llmdock.gpuinfo import parse_assume_gpus

    s = settings.load({"LLMDOCK_HOME": str(tmp_path / "home")})
    lc = Lifecycle(s, DockerDown(), Store(s.db_path))
    spec = DeploymentSpec.create(qwen72b_dir(tmp_path), name="q", engine="vllm")
    plan = lc.up(spec, dry_run=True, assume_gpus=parse_assume_gpus("8x80GiB")).plan
    assert plan.fit is not None and plan.fit.tp == 4 and not plan.blocking
    assert any("not reachable" in n and "not checked" in n for n in plan.notes)
    with pytest.raises(RuntimeUnavailable):  # a real `up` still needs the daemon
        lc.up(DeploymentSpec.create(qwen72b_dir(tmp_path / "x"), name="r", engine="vllm"), wait=False)


def test_up_says_what_it_does_before_the_engine_has_phases(lc: Lifecycle, model: str) -> None:
    seen: list[str] = []
    lc.up(spec(model), wait=False, on_phase=seen.append)
    assert seen == ["creating the container"]
