"""`llmdock export k8s` through the real CLI: a spec file in, manifests out (valid for Kubernetes), and bad
input refused with one line, nothing written. Docker is pointed at a socket that does not exist: the
export needs none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llmdock.k8s.validate import VERSIONS, problems
from tests.conftest import cli
from tests.support.modelconfigs import config

NO_DOCKER = "unix:///nonexistent/llmdock-k8s-test.sock"


@pytest.fixture
def spec_file(home: Path, tmp_path: Path) -> Path:
    """Two deployments of real model configs (folders holding config.json): one GPU, one CPU."""
    for name in ("Qwen--Qwen2.5-7B-Instruct", "Qwen--Qwen2.5-0.5B-Instruct", "Qwen--Qwen2.5-72B-Instruct"):
        folder = tmp_path / name.split("--")[1]
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config(name)))
    f = tmp_path / "llmdock.yaml"
    f.write_text(
        f"""deployments:
  - name: qwen7b
    model: {tmp_path}/Qwen2.5-7B-Instruct
    image: vllm/vllm-openai:v0.11.0
    max_model_len: 32768
    env: {{HF_TOKEN: hf_not_in_the_manifest}}
  - name: small_cpu
    model: {tmp_path}/Qwen2.5-0.5B-Instruct
    gpus: none
  - name: qwen72b
    model: {tmp_path}/Qwen2.5-72B-Instruct
    max_model_len: 32768
"""
    )
    return f


def export(*args: str) -> tuple[int, str, str]:
    done = cli("export", "k8s", *args, env={"LLMDOCK_DOCKER_HOST": NO_DOCKER})
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout, done.stderr


def test_a_spec_file_becomes_valid_manifests_one_file_each(spec_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    code, stdout, stderr = export("-f", str(spec_file), "-o", str(out), "--node-gpus", "8x80GiB")
    assert code == 0, stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == ["qwen72b.yaml", "qwen7b.yaml", "small-cpu.yaml"]
    assert stdout.split() == [str(out / n) for n in ("qwen7b.yaml", "small-cpu.yaml", "qwen72b.yaml")]
    assert "qwen7b: weights: copy" in stderr  # where the claim must hold the weights
    for name in written:
        docs = list(yaml.safe_load_all((out / name).read_text()))
        assert [d["kind"] for d in docs] == ["PersistentVolumeClaim", "Deployment", "Service"]
        assert problems(docs, VERSIONS[-1]) == []
    assert "hf_not_in_the_manifest" not in (out / "qwen7b.yaml").read_text()


def test_one_entry_on_stdout_and_a_model_bigger_than_a_node_on_two(spec_file: Path) -> None:
    code, stdout, stderr = export("qwen72b", "-f", str(spec_file), "--node-gpus", "8x16GiB")
    assert code == 1 and "does not fit" in stderr and "--nodes 2" in stderr and stdout == ""
    code, stdout, stderr = export("qwen72b", "-f", str(spec_file), "--node-gpus", "8x16GiB", "--nodes", "2")
    assert code == 0, stderr
    docs = list(yaml.safe_load_all(stdout))
    assert [d["kind"] for d in docs] == ["PersistentVolumeClaim", "LeaderWorkerSet", "Service"]
    assert problems(docs, VERSIONS[0]) == []
    assert "tensor parallel 8, pipeline parallel 2 over Ray" in stderr


def test_a_hub_model_the_hub_cannot_tell_about_is_planned_with_defaults(home: Path, tmp_path: Path) -> None:
    f = tmp_path / "hub.yaml"
    f.write_text("deployments:\n  - name: hub\n    model: Qwen/Qwen3-8B\n")
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once
    done = cli(
        "export",
        "k8s",
        "-f",
        str(f),
        env={"LLMDOCK_DOCKER_HOST": NO_DOCKER, "MODELSCOPE_ENDPOINT": closed, "HF_ENDPOINT": closed},
    )
    assert done.returncode == 0, done.stderr
    assert "cannot reach ModelScope" in done.stderr and "planned without their facts" in done.stderr
    claim, deployment, _ = yaml.safe_load_all(done.stdout)
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert (
        container["volumeMounts"][0]["subPath"] == "modelscope/Qwen/Qwen3-8B@master"
    )  # where `pull` puts it
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] == 1800


def test_a_deployment_known_to_the_state_db_is_exported_by_name(home: Path, tmp_path: Path) -> None:
    from llmdock.spec import DeploymentSpec
    from llmdock.state import Store

    folder = tmp_path / "Qwen2.5-7B-Instruct"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config("Qwen--Qwen2.5-7B-Instruct")))
    spec = DeploymentSpec.create(str(folder), name="saved", gpus="2", tensor_parallel_size=2)
    home.mkdir(parents=True, exist_ok=True)
    store = Store(home / "state.db")
    store.save_deployment("saved", spec.to_dict(), spec.hash())
    store.close()
    code, stdout, stderr = export("saved")
    assert code == 0, stderr
    deployment = list(yaml.safe_load_all(stdout))[1]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["args"][container["args"].index("--tensor-parallel-size") + 1] == "2"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["nope"], "error: no deployment named 'nope'"),
        (["nope", "-f", "{file}"], "has no deployment 'nope'"),
        ([], "give a deployment NAME or -f llmdock.yaml"),
        (["-f", "{bad}"], "tensor_parallel_size: Input should be greater than or equal to 1"),
        (["-f", "{file}", "--nodes", "2", "--node-gpus", "lots"], "--node-gpus 'lots': unknown GPU"),
        (["-f", "{file}", "--storage", "big"], "--storage 'big' is not a size"),
        (["-f", "{file}", "--nodes", "2"], "qwen7b: tensor parallel size 8 does not divide the model's 28"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    spec_file: Path, tmp_path: Path, args: list[str], fragment: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("deployments:\n  - name: x\n    model: /m\n    tensor_parallel_size: 0\n")
    out = tmp_path / "k8s"
    argv = [a.format(file=spec_file, bad=bad) for a in args]
    code, stdout, stderr = export(*argv, "-o", str(out))
    assert code == 1 and fragment in stderr, stderr
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [stderr.splitlines()[-2]]
    assert stderr.splitlines()[-1].startswith("hint:")
    assert not out.exists() and stdout == ""


def test_a_folder_that_cannot_be_made_is_one_line(spec_file: Path) -> None:
    code, stdout, stderr = export("-f", str(spec_file), "-o", str(spec_file / "k8s"))  # under a file
    assert code == 1 and f"error: cannot write to {spec_file / 'k8s'}: Not a directory" in stderr, stderr
    assert stderr.splitlines()[-1] == "hint: give -o a folder you can write" and stdout == ""


def test_export_without_k8s_still_writes_the_apply_file(home: Path) -> None:
    done = cli("export", env={"LLMDOCK_DOCKER_HOST": NO_DOCKER})
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout) == {"version": 1, "deployments": [], "keys": []}
